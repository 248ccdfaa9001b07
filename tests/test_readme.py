"""The README runs as written, on what a new user has: a fresh copy of the repository and a fresh venv.

Every fenced ``bash`` block of the README either belongs to a *story* or says why it is not run:

* ``<!-- story:begin NAME -->`` ... ``<!-- story:end -->``: the bash blocks between run in order, in
  one ``bash -euo pipefail`` script, **``pip install`` lines included**, in a fresh copy of the
  repository's files with a fresh venv of its own (nothing of the test's environment leaks in: the
  story installs what it uses, or fails as a new user's would). Stories check their own claims (the
  daemon's metrics equal replay's, a prediction equals serve's answer), so a README that drifts from
  the code fails here.
* ``<!-- not run: REASON -->`` right before a block: why no test runs it here.

The "Test it" command is .ci/run's own (checked to be the same words), so CI runs it on every submission.

The stories' pip installs read a local wheelhouse of exactly the pinned versions (``PIP_FIND_LINKS``
and ``PIP_NO_INDEX``, built once per constraints.txt and setup.py into ``~/.cache/riverbeam``): the
same files the index serves, without its ~1 min of round trips per install (measured: the main
story's two installs 120 s and 138 s from the index, 54 s and 99 s from the wheelhouse). A story
that leaves out an extra still fails: pip installs only what the line asks for. .ci/run's own
install still asks the index, as a new user's does.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCK = re.compile(r"^```bash\n(.*?)^```", re.S | re.M)
MARK = re.compile(r"<!-- (story:begin (?P<story>[\w-]+)|story:end|not run: (?P<reason>.+?)) -->")


def command_blocks(text: str) -> list[tuple[str | None, str | None, str]]:
    """Every bash block of a README as ``(story, not_run_reason, block)``, in order.

    >>> text = '''<!-- story:begin a -->
    ... ```bash
    ... echo 1
    ... ```
    ... <!-- story:end -->
    ... <!-- not run: needs a cloud -->
    ... ```bash
    ... gcloud x
    ... ```
    ... ```bash
    ... echo orphan
    ... ```
    ... '''
    >>> command_blocks(text)
    [('a', None, 'echo 1\\n'), (None, 'needs a cloud', 'gcloud x\\n'), (None, None, 'echo orphan\\n')]
    """
    blocks = []
    story, reason, position = None, None, 0
    events = sorted([(m.start(), "mark", m) for m in MARK.finditer(text)] + [(m.start(), "block", m) for m in BLOCK.finditer(text)], key=lambda e: e[0])
    for start, kind, match in events:
        if kind == "mark":
            if match.group("story"):
                story = match.group("story")
            elif match.group("reason"):
                reason, position = match.group("reason"), match.end()
            else:
                story = None
            continue
        said = reason if reason is not None and not text[position:start].strip() else None
        blocks.append((story, said, match.group(1)))
        reason = None
    return blocks


def stories(text: str) -> dict[str, str]:
    """Each story's script: its blocks joined in order."""
    scripts: dict[str, list[str]] = {}
    for story, _, block in command_blocks(text):
        if story:
            scripts.setdefault(story, []).append(block)
    return {name: "\n".join(blocks) for name, blocks in scripts.items()}


def fresh_copy(destination: Path) -> Path:
    """The repository's files as a clone has them (tracked, plus new files git does not ignore)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination


@pytest.fixture(scope="module")
def story_wheelhouse() -> Path | None:
    from tests.wheelhouse import pinned_wheelhouse

    return pinned_wheelhouse()


def new_user_environment(venv: Path, wheels: Path | None = None) -> dict[str, str]:
    """This process's environment less its venv and the local stack it started: a fresh venv first on PATH
    (and pip reading `wheels` alone, when given)."""
    ours = str(Path(sys.executable).parent)
    path = [str(venv / "bin")] + [p for p in os.environ["PATH"].split(os.pathsep) if p != ours]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RIVERBEAM", "PYTEST")) and k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    for name in ("STORAGE_EMULATOR_HOST", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_REGION"):
        env.pop(name, None)  # the story sets what it needs itself
    from tests.wheelhouse import wheelhouse_environment

    env.update(wheelhouse_environment(wheels))
    return dict(env, PATH=os.pathsep.join(path), VIRTUAL_ENV=str(venv), NO_GCE_CHECK="true", PIP_DISABLE_PIP_VERSION_CHECK="1")


def test_every_command_block_runs_in_a_story_or_says_why_not():
    orphans = [block.splitlines()[0] for story, reason, block in command_blocks(README.read_text()) if story is None and reason is None]
    assert orphans == [], f"README bash blocks neither in a story nor marked '<!-- not run: why -->': {orphans}"
    assert {"run-it", "main"} <= stories(README.read_text()).keys()


def test_the_readme_test_command_is_what_ci_runs():
    [(_, reason, block)] = [b for b in command_blocks(README.read_text()) if "python -m pytest" in b[2]]
    ci = (ROOT / ".ci" / "run").read_text()
    [ci_command] = re.findall(r'^test_command="(.*)"$', ci, re.M)
    assert block.strip() == ci_command, "README's 'Test it' and .ci/run must be the same command"
    assert reason and ".ci/run" in reason


def test_the_main_story_starts_and_stops_the_local_stack():
    script = stories(README.read_text())["main"]
    assert "riverbeam local up" in script and "riverbeam local down" in script


STORY_PORTS = (9092, 8080, 8081)  # Kafka, serve, the schema registry: the README's defaults
STORIES_RUN: list[tuple[str, Path, float]] = []  # this worker's finished stories: (name, clone, ended at time.time())


def uses_default_ports(script: str) -> bool:
    """Whether a story starts the local stack or names a default port: those stories run one at a time
    (one xdist group), the others (replay, the Python API, the demo on free ports) beside them.

    >>> uses_default_ports("riverbeam local up"), uses_default_ports("serve --port 8080"), uses_default_ports("riverbeam demo")
    (True, True, False)
    """
    return "local up" in script or any(str(port) in script for port in STORY_PORTS)


def wait_for_story_ports(name: str, timeout: float = 60.0) -> None:
    """Wait until the stories' default ports are free; warn naming who held one (a previous test's leftover, or not ours)."""
    from riverbeam.local_stack import port_holder, port_is_taken

    started = time.monotonic()
    deadline = started + timeout
    for port in STORY_PORTS:
        holder = port_holder(port) if port_is_taken(port) else None
        while port_is_taken(port) and time.monotonic() < deadline:
            time.sleep(0.5)
        if holder is not None:
            earlier = "; ".join(f"{story} in {clone} ended {time.time() - ended:.0f} s ago" for story, clone, ended in STORIES_RUN)
            warnings.warn(f"story {name}: port {port} was held ({holder or 'no socket seen'}); "
                          f"{'still taken' if port_is_taken(port) else 'free again'} {time.monotonic() - started:.0f} s later; "
                          f"earlier stories here: {earlier or 'none'}")


def processes_in(directory: Path) -> list[tuple[int, str]]:
    """Processes whose working directory is `directory` or below it: (pid, command)."""
    from riverbeam.local_stack import process_command

    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
            if cwd == directory or directory in cwd.parents:
                found.append((int(pid), process_command(int(pid))))
        except OSError:
            continue
    return found


@pytest.mark.slow
@pytest.mark.timeout(1500)
@pytest.mark.parametrize("name", [pytest.param(name, marks=[pytest.mark.xdist_group("readme-default-ports")] if uses_default_ports(script) else [])
                                  for name, script in sorted(stories(README.read_text()).items())])  # fmt: skip
def test_the_readme_story_runs_as_written(name, tmp_path, story_wheelhouse):
    script = stories(README.read_text())[name]
    clone = fresh_copy(tmp_path / "riverbeam")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    if uses_default_ports(script):
        wait_for_story_ports(name)
    env = new_user_environment(venv, story_wheelhouse)
    story = subprocess.Popen(["bash", "-euo", "pipefail", "-c", script], cwd=clone, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)
    try:
        stdout, stderr = story.communicate(timeout=1400)
        result = subprocess.CompletedProcess(story.args, story.returncode, stdout, stderr)
    finally:  # never leave the story's servers running, whatever happened: what it left in the background, then the stack
        try:
            os.killpg(story.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        riverbeam = shutil.which("riverbeam", path=env["PATH"]) or shutil.which("riverbeam", path=str(clone / ".venv" / "bin"))
        if riverbeam and (clone / ".riverbeam").exists():
            subprocess.run([riverbeam, "local", "down"], cwd=clone, env=env, capture_output=True, timeout=60)
        left = processes_in(clone)  # nothing of the story may outlive it: the next story needs its ports
        for pid, _ in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if left:
            warnings.warn(f"story {name}: still running after the story and 'riverbeam local down' (killed now): {left}")
        STORIES_RUN.append((name, clone, time.time()))
    assert result.returncode == 0, f"story {name}: exit {result.returncode}\nstdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-6000:]}"
    assert "Traceback" not in result.stderr, result.stderr[-6000:]
