"""Pinned Java artifacts from Maven Central, fetched with Maven itself and cached outside the repository.

The one home for riverbeam's Java parts (Apache Kafka's broker for the local stack and the tests,
Beam's job server and expansion service jars for the pipelines): Maven (``mvn``, 3.8+) resolves
them with its dependency plugin, pinned below, and they land in riverbeam's cache directory,
``$RIVERBEAM_CACHE_DIR`` or else ``$XDG_CACHE_HOME/riverbeam`` (``~/.cache/riverbeam``), never in
the repository. A cached artifact or class path is used without running Maven again, so a machine
that fetched once (``riverbeam local fetch``) works offline.

Two surfaces:

- `fetch_artifact` copies one artifact ``group:artifact:version[:classifier]`` (no dependencies)
  into a directory and returns the jar's path.
- `resolve_classpath` copies the runtime dependencies of a POM (a small pinned POM the project
  ships under ``core/java/``) into a directory of its own and returns the jars.

Anything missing or failing (no ``mvn``, no ``java``, Maven Central unreachable, an unknown
version) is one `JavaToolError` line naming what to do; Maven's own output goes to a log file
beside the cache, named in that line.

>>> Artifact.parse("org.apache.beam:beam-runners-flink-2.2-job-server:2.77.0").file_name
'beam-runners-flink-2.2-job-server-2.77.0.jar'
>>> Artifact.parse("org.example:thing:1.0:tests").maven_spec
'org.example:thing:1.0:jar:tests'
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from core.errors import RiverbeamError, UsageError

CACHE_DIR_ENV = "RIVERBEAM_CACHE_DIR"
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
JAVA_DIR = Path(__file__).parent / "java"
FETCH_TIMEOUT_S = 900.0


class JavaToolError(RiverbeamError):
    """Java or Maven is missing, or Maven could not fetch an artifact."""


def cache_dir() -> Path:
    """riverbeam's cache directory: ``$RIVERBEAM_CACHE_DIR``, else ``$XDG_CACHE_HOME/riverbeam``, else ``~/.cache/riverbeam``.

    >>> import os
    >>> os.environ["RIVERBEAM_CACHE_DIR"] = "/tmp/rb-cache"
    >>> str(cache_dir())
    '/tmp/rb-cache'
    >>> del os.environ["RIVERBEAM_CACHE_DIR"]
    """
    explicit = os.environ.get(CACHE_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "riverbeam"


def shipped_pom(name: str) -> Path:
    """Path of a POM riverbeam ships as package data (``core/java/<name>``)."""
    path = JAVA_DIR / name
    if not path.is_file():
        raise JavaToolError(f"riverbeam's POM {name} is missing from {JAVA_DIR} (a broken install?)")
    return path


@dataclass(frozen=True)
class Artifact:
    """A Maven coordinate ``group:artifact:version[:classifier]`` of a jar."""

    group: str
    artifact: str
    version: str
    classifier: str | None = None
    packaging: str = "jar"  # another file type a project publishes, e.g. "tar.gz" (a distribution)

    @classmethod
    def parse(cls, text: str) -> "Artifact":
        """Parse ``group:artifact:version[:classifier]``; a `UsageError` names what is wrong."""
        parts = text.strip().split(":")
        if len(parts) not in (3, 4) or not all(re.fullmatch(r"[A-Za-z0-9_.+-]+", p) for p in parts):
            raise UsageError(f"{text!r} is not a Maven coordinate group:artifact:version[:classifier]")
        return cls(*parts)

    @property
    def file_name(self) -> str:
        suffix = f"-{self.classifier}" if self.classifier else ""
        return f"{self.artifact}-{self.version}{suffix}.{self.packaging}"

    @property
    def maven_spec(self) -> str:
        """The coordinate as the dependency plugin's ``-Dartifact`` wants it (packaging included)."""
        spec = f"{self.group}:{self.artifact}:{self.version}:{self.packaging}"
        return f"{spec}:{self.classifier}" if self.classifier else spec

    def __str__(self) -> str:
        return ":".join(p for p in (self.group, self.artifact, self.version, self.classifier) if p)


def java_executable(min_version: int = 17) -> str:
    """Path of ``java`` (``$JAVA_HOME/bin/java`` first, else PATH), checked to be at least `min_version`."""
    java_home = os.environ.get("JAVA_HOME")
    candidate = os.path.join(java_home, "bin", "java") if java_home else None
    java = candidate if candidate and os.access(candidate, os.X_OK) else shutil.which("java")
    if not java:
        raise JavaToolError(f"Java {min_version}+ is needed and 'java' is not on PATH (nor in $JAVA_HOME): install a JDK {min_version}")
    version = java_major_version(java)
    if version is not None and version < min_version:
        raise JavaToolError(f"Java {min_version}+ is needed; {java} is Java {version}")
    return java


def java_major_version(java: str) -> int | None:
    """The major version ``java -version`` reports (``17`` for 17.0.15, ``8`` for 1.8.0), or None if unreadable."""
    try:
        output = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60).stderr
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', output)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def maven_executable() -> str:
    """Path of ``mvn`` on PATH, or a `JavaToolError` saying how to get it."""
    mvn = shutil.which("mvn")
    if not mvn:
        raise JavaToolError("Maven ('mvn', 3.8+) is needed to fetch riverbeam's Java parts and is not on PATH: install Maven and Java 17")
    return mvn


def fetch_artifact(coordinate: str | Artifact, directory: str | os.PathLike | None = None) -> Path:
    """Copy one jar (without its dependencies) from Maven Central into `directory`; return its path.

    `directory` defaults to ``<cache>/jars``. A jar already there is returned without running
    Maven, so a fetched artifact works offline. The copy appears whole or not at all (a
    concurrent fetch of the same jar is harmless).

    Example (Beam's Flink job server where Beam looks for it)::

        jar = fetch_artifact("org.apache.beam:beam-runners-flink-2.2-job-server:2.77.0",
                             Path.home() / ".apache_beam" / "cache" / "jars")
    """
    artifact = coordinate if isinstance(coordinate, Artifact) else Artifact.parse(coordinate)
    target = Path(directory) if directory is not None else cache_dir() / "jars"
    path = target / artifact.file_name
    if path.is_file():
        return path
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target, prefix=".fetch-") as scratch:
        _run_maven(
            [f"{DEPENDENCY_PLUGIN}:copy", f"-Dartifact={artifact.maven_spec}", f"-DoutputDirectory={scratch}"],
            what=str(artifact),
        )
        fetched = Path(scratch) / artifact.file_name
        if not fetched.is_file():
            raise JavaToolError(f"Maven reported success for {artifact} but {artifact.file_name} is not where it should be")
        os.replace(fetched, path)
    return path


def resolve_classpath(pom: str | os.PathLike, directory: str | os.PathLike | None = None) -> list[Path]:
    """Copy the runtime dependencies of `pom` into a directory of their own; return the jars, sorted.

    `directory` defaults to ``<cache>/classpath/<pom name>-<hash of the POM>``, so a changed POM
    gets a fresh class path and an unchanged one is reused without running Maven. The directory
    appears whole or not at all.

    Example (Apache Kafka's broker)::

        jars = resolve_classpath(shipped_pom("kafka-pom.xml"))
        classpath = os.pathsep.join(map(str, jars))
    """
    pom = Path(pom)
    try:
        content = pom.read_bytes()
    except OSError as error:
        raise JavaToolError(f"cannot read POM {pom}: {error.strerror}") from None
    if directory is None:
        directory = cache_dir() / "classpath" / f"{pom.stem}-{hashlib.sha256(content).hexdigest()[:12]}"
    directory = Path(directory)
    if directory.is_dir():
        jars = sorted(directory.glob("*.jar"))
        if jars:
            return jars
    directory.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}-"))
    try:
        _run_maven(
            ["-f", str(pom), f"{DEPENDENCY_PLUGIN}:copy-dependencies", f"-DoutputDirectory={scratch}", "-DincludeScope=runtime"],
            what=f"the dependencies of {pom.name}",
        )
        if not any(scratch.glob("*.jar")):
            raise JavaToolError(f"Maven copied no jars for {pom}")
        try:
            os.rename(scratch, directory)
        except OSError:
            if not any(directory.glob("*.jar")):  # not a concurrent fetch that finished first
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return sorted(directory.glob("*.jar"))


def _run_maven(goals: list[str], what: str) -> None:
    """Run Maven in batch mode with riverbeam's own local repository; one line on failure."""
    mvn = maven_executable()
    java_executable()
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    log = cache / "maven.log"
    command = [mvn, "-B", "-ntp", f"-Dmaven.repo.local={cache / 'maven-repository'}", *goals]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=FETCH_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise JavaToolError(f"fetching {what} with Maven took more than {FETCH_TIMEOUT_S:.0f} s; is Maven Central reachable?") from None
    except OSError as error:
        raise JavaToolError(f"cannot run Maven ({mvn}): {error.strerror}") from None
    with open(log, "a") as out:
        out.write(f"$ {' '.join(command)}\n{result.stdout}{result.stderr}\n")
    if result.returncode != 0:
        raise JavaToolError(f"fetching {what} with Maven failed: {_first_error(result.stdout + result.stderr)} (full output: {log})")


def _first_error(output: str) -> str:
    """Maven's first ``[ERROR]`` line, shortened, or its last line."""
    for line in output.splitlines():
        if line.startswith("[ERROR]") and line[7:].strip():
            message = line[7:].strip()
            return message if len(message) <= 300 else message[:297] + "..."
    lines = [line for line in output.splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"
