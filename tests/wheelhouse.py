"""A local wheelhouse of every pinned distribution, for the tests that install riverbeam into a fresh venv.

Those installs (the README stories, the worker image's install step) then read the same files the
index serves, without the index's round trips: about a minute per install here, most of a story's
install time. See `pinned_wheelhouse`.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ".[beam,dev,fast,local,registry,reports]"  # every extra of setup.py: each test's own line picks its part


def pinned_wheelhouse() -> Path | None:
    """Wheels of every pinned distribution the extras name, and pip's build backend (setuptools, wheel),
    built once per constraints.txt and setup.py into ``~/.cache/riverbeam/wheelhouse-<digest>``.

    None, with a warning, where building them fails: the caller then installs from the index. One
    process builds at a time (a lock file beside it); riverbeam's own wheel is left out (each test
    installs its own copy of the repository).
    """
    digest = hashlib.sha256((ROOT / "constraints.txt").read_bytes() + (ROOT / "setup.py").read_bytes()).hexdigest()[:12]
    built = Path.home() / ".cache" / "riverbeam" / f"wheelhouse-{digest}"
    built.parent.mkdir(parents=True, exist_ok=True)
    with open(built.with_name(f"{built.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if built.is_dir():
            return built
        building = built.with_name(f"{built.name}.{os.getpid()}.tmp")
        shutil.rmtree(building, ignore_errors=True)
        result = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "-w", str(building), "-c", "constraints.txt", EXTRAS, "setuptools", "wheel"],
                                cwd=ROOT, capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            shutil.rmtree(building, ignore_errors=True)
            warnings.warn(f"no wheelhouse (installing from the index instead): {result.stderr.strip()[-500:]}")
            return None
        for own in building.glob("riverbeam-*.whl"):
            own.unlink()
        building.rename(built)
        return built


def wheelhouse_environment(wheels: Path | None) -> dict[str, str]:
    """The pip settings that install from `wheels` alone (nothing without a wheelhouse).

    >>> wheelhouse_environment(Path("/w"))
    {'PIP_NO_INDEX': '1', 'PIP_FIND_LINKS': '/w'}
    >>> wheelhouse_environment(None)
    {}
    """
    return {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels)} if wheels is not None else {}
