"""core.maven: pinned Java artifacts from Maven Central through Maven itself, cached, one-line errors.

The fetching tests reach Maven Central through ``mvn`` (into riverbeam's own cache, so a second
run is offline); they skip, with the reason, where Maven or Java is missing.
"""

from __future__ import annotations

import shutil

import pytest

from core.errors import RiverbeamError, UsageError
from core.maven import Artifact, JavaToolError, fetch_artifact, java_executable, resolve_classpath, shipped_pom

SMALL_JAR = "org.slf4j:slf4j-api:2.0.17"  # ~70 kB, no dependencies needed

needs_maven = pytest.mark.skipif(
    shutil.which("mvn") is None or shutil.which("java") is None, reason="Maven (mvn) and Java 17 are needed to fetch from Maven Central"
)


def without_maven(monkeypatch, tmp_path):
    """PATH without mvn or java (an empty directory), JAVA_HOME unset."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("JAVA_HOME", raising=False)


def test_a_coordinate_parses_into_its_parts_and_a_broken_one_is_a_usage_error():
    artifact = Artifact.parse("org.apache.beam:beam-sdks-java-io-expansion-service:2.77.0")
    assert (artifact.group, artifact.artifact, artifact.version, artifact.classifier) == (
        "org.apache.beam", "beam-sdks-java-io-expansion-service", "2.77.0", None,
    )  # fmt: skip
    assert str(Artifact.parse("g:a:1:shaded")) == "g:a:1:shaded"
    for broken in ("g:a", "g:a:1:c:extra", "g::1", "g:a:1 ; rm"):
        with pytest.raises(UsageError, match="not a Maven coordinate"):
            Artifact.parse(broken)


def test_without_maven_a_fetch_is_one_line_naming_what_to_install(monkeypatch, tmp_path):
    without_maven(monkeypatch, tmp_path)
    with pytest.raises(JavaToolError) as error:
        fetch_artifact(SMALL_JAR, tmp_path / "jars")
    assert "'mvn'" in str(error.value) and "\n" not in str(error.value)
    assert isinstance(error.value, RiverbeamError)
    with pytest.raises(JavaToolError, match="'java' is not on PATH"):
        java_executable()


@needs_maven
def test_an_artifact_is_fetched_once_then_served_from_the_directory_without_maven(monkeypatch, tmp_path):
    jar = fetch_artifact(SMALL_JAR, tmp_path / "jars")
    assert jar == tmp_path / "jars" / "slf4j-api-2.0.17.jar"
    assert jar.read_bytes()[:2] == b"PK"  # a jar (zip), not an error page
    assert [p.name for p in (tmp_path / "jars").iterdir()] == ["slf4j-api-2.0.17.jar"]  # no scratch left behind
    without_maven(monkeypatch, tmp_path)
    assert fetch_artifact(SMALL_JAR, tmp_path / "jars") == jar


@needs_maven
def test_an_unknown_version_is_one_line_with_mavens_reason(tmp_path):
    with pytest.raises(JavaToolError) as error:
        fetch_artifact("org.slf4j:slf4j-api:0.0.404", tmp_path / "jars")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("fetching org.slf4j:slf4j-api:0.0.404 with Maven failed:")
    assert "0.0.404" in message.split("failed:", 1)[1]
    assert not list((tmp_path / "jars").iterdir())


@needs_maven
def test_the_kafka_pom_resolves_to_a_broker_class_path_reused_without_maven(monkeypatch, tmp_path):
    jars = resolve_classpath(shipped_pom("kafka-pom.xml"), tmp_path / "kafka")
    names = {jar.name for jar in jars}
    assert "kafka_2.13-4.4.0.jar" in names and "kafka-clients-4.4.0.jar" in names
    assert "log4j-slf4j2-impl-2.25.5.jar" in names  # the broker's logs go somewhere
    without_maven(monkeypatch, tmp_path)
    assert resolve_classpath(shipped_pom("kafka-pom.xml"), tmp_path / "kafka") == jars
