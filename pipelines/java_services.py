"""Beam's Java parts for the pipelines: the embedded Flink job server and Kafka's expansion service.

``--runner=FlinkRunner`` without ``--flink_master`` (or with ``[local]``/``[auto]``) starts an
embedded Flink from a job server jar, and ``ReadFromKafka``/``WriteToKafka`` need a Java expansion
service. Left alone, Beam downloads both from Maven Central at run time (then from a Google mirror
when that fails), and Maven Central, as these machines reach it, serves neither jar. So riverbeam
brings its own:

* the jars come from the POM riverbeam ships (``core/java/beam-java-pom.xml``: Beam's Flink 1.19
  runner, expansion service, Kafka IO and Java SDK harness, pinned), fetched and cached by
  `core.maven.resolve_classpath` (``riverbeam`` never downloads them any other way);
* Beam starts a job server or an expansion service with ``java -jar JAR``: `launcher_jar` writes
  a jar holding only a manifest (the main class and a ``Class-Path`` of the cached jars);
* `runner_args` completes a Beam command line for an embedded Flink: the job server jar and
  ``--environment_type=LOOPBACK`` (Beam's own choice for an embedded Flink, made explicit so that
  riverbeam waits for the job: its workers and its job server live in this process);
* `kafka_expansion_service` is the expansion service of the Kafka transforms on that Flink: Java
  transforms run inside the job server's JVM (environment ``EMBEDDED``; there is no Docker).

On Dataflow, a remote Flink or any other runner nothing changes: Beam's own defaults apply.

>>> runner_args(["--runner=DataflowRunner", "--project=p"])
['--runner=DataflowRunner', '--project=p']
>>> embedded_flink(["--runner=FlinkRunner", "--flink_master=flink.example:8081"])
False
>>> embedded_flink(["--runner=FlinkRunner", "--flink_master=[local]"])
True
"""

from __future__ import annotations

import inspect
import os
import tempfile
import typing
from pathlib import Path
from typing import Any

BEAM_JAVA_POM = "beam-java-pom.xml"
FLINK_JOB_SERVER_MAIN = "org.apache.beam.runners.flink.FlinkJobServerDriver"
EXPANSION_SERVICE_MAIN = "org.apache.beam.sdk.expansion.service.ExpansionService"
EMBEDDED_FLINK_MASTERS = ("[local]", "[auto]")
# The fields of ReadFromKafka's configuration the pinned Java Kafka IO (2.62) has setters for; the 2.77
# SDK sends three more (dynamic partition discovery, a consumer factory), which 2.62 refuses.
PINNED_KAFKA_READ_FIELDS = (
    "consumer_config", "topics", "key_deserializer", "value_deserializer", "start_read_time", "max_num_records", "max_read_time",
    "commit_offset_in_finalize", "timestamp_policy", "consumer_polling_timeout", "redistribute", "redistribute_num_keys", "allow_duplicates",
)  # fmt: skip
MANIFEST_LINE_BYTES = 72  # the jar manifest's limit; longer values continue on lines starting with a space


def beam_java_classpath() -> list[Path]:
    """The cached jars of riverbeam's Beam Java parts (fetched with Maven on first use; `core.maven.JavaToolError` otherwise)."""
    from core.maven import java_executable, resolve_classpath, shipped_pom

    java_executable()
    return resolve_classpath(shipped_pom(BEAM_JAVA_POM))


def manifest(main_class: str, classpath: list[str]) -> bytes:
    """A jar manifest naming `main_class` and a ``Class-Path`` (relative URLs), lines wrapped at 72 bytes.

    >>> print(manifest("a.Main", ["lib/x.jar"]).decode(), end="")
    Manifest-Version: 1.0
    Main-Class: a.Main
    Class-Path: lib/x.jar
    """
    lines = []
    for header in ("Manifest-Version: 1.0", f"Main-Class: {main_class}", "Class-Path: " + " ".join(classpath)):
        data = header.encode("utf-8")
        lines.append(data[: MANIFEST_LINE_BYTES - 2])
        data = data[MANIFEST_LINE_BYTES - 2 :]
        while data:
            lines.append(b" " + data[: MANIFEST_LINE_BYTES - 3])
            data = data[MANIFEST_LINE_BYTES - 3 :]
    return b"\r\n".join(lines) + b"\r\n"


def launcher_jar(main_class: str, jars: list[Path]) -> Path:
    """A jar that only starts `main_class` with `jars` on its class path (for Beam's ``java -jar``).

    It is written once, beside the folder of `jars` (all in one folder: ``Class-Path`` entries are
    relative to the launcher), and reused.
    """
    import zipfile

    folder = jars[0].parent
    if any(jar.parent != folder for jar in jars):
        raise ValueError("the jars of a launcher must be in one folder")
    path = folder.parent / f"{folder.name}-{main_class.rsplit('.', 1)[-1]}.jar"
    if path.is_file():
        return path
    handle, scratch = tempfile.mkstemp(dir=folder.parent, prefix=f".{path.name}-")
    os.close(handle)
    try:
        with zipfile.ZipFile(scratch, "w") as launcher:
            launcher.writestr("META-INF/MANIFEST.MF", manifest(main_class, [f"{folder.name}/{jar.name}" for jar in jars]))
        os.replace(scratch, path)
    finally:
        if os.path.exists(scratch):
            os.unlink(scratch)
    return path


def flink_job_server_jar() -> Path:
    """The launcher of Beam's Flink job server (embedded Flink 1.19) from the cached jars."""
    return launcher_jar(FLINK_JOB_SERVER_MAIN, beam_java_classpath())


def expansion_service_jar() -> Path:
    """The launcher of Beam's Java expansion service (with Kafka IO) from the cached jars."""
    return launcher_jar(EXPANSION_SERVICE_MAIN, beam_java_classpath())


def _options(options_or_argv: Any):
    from apache_beam.options.pipeline_options import PipelineOptions

    return options_or_argv if isinstance(options_or_argv, PipelineOptions) else PipelineOptions(list(options_or_argv))


def embedded_flink(options_or_argv: Any) -> bool:
    """Whether the runner is ``FlinkRunner`` starting its own Flink (no ``--flink_master``, ``[local]`` or ``[auto]``)."""
    from apache_beam.options.pipeline_options import FlinkRunnerOptions, PortableOptions, StandardOptions

    options = _options(options_or_argv)
    runner = options.view_as(StandardOptions).runner
    name = runner if isinstance(runner, str) else type(runner).__name__
    if name.rsplit(".", 1)[-1] != "FlinkRunner" or options.view_as(PortableOptions).job_endpoint:
        return False
    return (options.view_as(FlinkRunnerOptions).flink_master or "[auto]").strip() in EMBEDDED_FLINK_MASTERS


def runner_args(argv: list[str]) -> list[str]:
    """`argv` completed for an embedded Flink: riverbeam's job server jar and LOOPBACK workers, unless given.

    Any other runner's arguments come back unchanged.
    """
    if not embedded_flink(argv):
        return list(argv)
    from apache_beam.options.pipeline_options import FlinkRunnerOptions, PortableOptions

    options = _options(argv)
    extra = []
    if not options.view_as(FlinkRunnerOptions).flink_job_server_jar:
        extra.append(f"--flink_job_server_jar={flink_job_server_jar()}")
    if not options.view_as(PortableOptions).environment_type:
        extra.append("--environment_type=LOOPBACK")
    return [*argv, *extra]


def kafka_expansion_service(options) -> Any:
    """The expansion service for ``ReadFromKafka``/``WriteToKafka`` under `options`: None (Beam's default) except
    on an embedded Flink running riverbeam's job server, where riverbeam's expansion service puts the
    Java transforms in the job server's JVM."""
    from apache_beam.options.pipeline_options import FlinkRunnerOptions

    if not embedded_flink(options):
        return None
    jar = options.view_as(FlinkRunnerOptions).flink_job_server_jar
    if jar and Path(jar).resolve() != flink_job_server_jar().resolve():
        return None  # a job server of the user's own: Beam's defaults
    from apache_beam.transforms.external import JavaJarExpansionService

    return JavaJarExpansionService(str(expansion_service_jar()), append_args=["--defaultEnvironmentType=EMBEDDED"])


def read_from_kafka(options, **kwargs) -> Any:
    """Beam's ``ReadFromKafka(**kwargs)`` for a pipeline with `options`: the one way riverbeam's pipelines read Kafka.

    On an embedded Flink with riverbeam's job server it expands through `kafka_expansion_service`,
    and its configuration carries only the fields the pinned Java Kafka IO knows
    (``PINNED_KAFKA_READ_FIELDS``; one outside them is a `core.errors.UsageError`). Elsewhere it is
    Beam's ``ReadFromKafka`` unchanged.
    """
    from apache_beam.io.kafka import ReadFromKafka, ReadFromKafkaSchema
    from apache_beam.transforms.external import ExternalTransform, NamedTupleBasedPayloadBuilder

    service = kafka_expansion_service(options)
    if service is None:
        return ReadFromKafka(**kwargs)
    from core.errors import UsageError

    parameters = inspect.signature(ReadFromKafka.__init__).parameters
    values = {name: p.default for name, p in parameters.items() if p.default is not inspect.Parameter.empty}
    values.update(kwargs)
    newer = sorted(name for name, value in kwargs.items() if name not in PINNED_KAFKA_READ_FIELDS and name != "with_metadata"
                   and value != parameters[name].default)
    if newer:
        raise UsageError(f"ReadFromKafka: {', '.join(newer)} needs a newer Beam Java Kafka IO than riverbeam's embedded Flink runs")
    schema = typing.NamedTuple("PinnedReadFromKafkaSchema", [(name, ReadFromKafkaSchema.__annotations__[name]) for name in PINNED_KAFKA_READ_FIELDS])
    payload = schema(**{name: values[name] for name in PINNED_KAFKA_READ_FIELDS})
    urn = ReadFromKafka.URN_WITH_METADATA if values.get("with_metadata") else ReadFromKafka.URN_WITHOUT_METADATA
    return ExternalTransform(urn, NamedTupleBasedPayloadBuilder(payload), service)
