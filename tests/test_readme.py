"""The README's quick starts run as written: one story, executed block by block in a fresh directory.

Every fenced ``bash`` block between ``<!-- story:begin -->`` and ``<!-- story:end -->`` runs, in
order, in one ``bash -euo pipefail`` script (``pip install`` lines are skipped: the suite runs in
the installed checkout). The story checks its own claims (for example that the daemon's metrics
equal replay's), so a README that drifts from the code fails here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCK = re.compile(r"^```bash\n(.*?)^```", re.S | re.M)


def story_blocks(text: str) -> list[str]:
    """The bash blocks of the README's story, in order.

    >>> story_blocks("x\\n<!-- story:begin -->\\n```bash\\necho 1\\n```\\n```python\\nno\\n```\\n<!-- story:end -->\\n```bash\\nno\\n```\\n")
    ['echo 1\\n']
    """
    begin, end = text.find("<!-- story:begin -->"), text.find("<!-- story:end -->")
    if begin < 0 or end < begin:
        return []
    return BLOCK.findall(text[begin:end])


def runnable(block: str) -> str:
    """The block as the test runs it: ``pip install`` lines become no-ops (the checkout is installed)."""
    return "\n".join(":  # (installed)" if line.lstrip().startswith("pip install") else line for line in block.splitlines())


def test_the_readme_has_a_story():
    blocks = story_blocks(README.read_text())
    assert len(blocks) >= 3
    assert any("riverbeam local up" in b for b in blocks) and any("riverbeam local down" in b for b in blocks)


@pytest.mark.slow
def test_the_readme_story_runs_as_written(tmp_path):
    script = "\n".join(runnable(block) for block in story_blocks(README.read_text()))
    env = dict(os.environ, NO_GCE_CHECK="true", PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    for name in ("STORAGE_EMULATOR_HOST", "AWS_ENDPOINT_URL"):
        env.pop(name, None)  # the story sets what it needs itself
    try:
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=600)
    finally:  # never leave the story's servers running, whatever happened
        subprocess.run([sys.executable, "-m", "riverbeam.cli", "local", "down"], cwd=tmp_path, env=env, capture_output=True, timeout=60)
    assert result.returncode == 0, f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
    assert "Traceback" not in result.stderr
