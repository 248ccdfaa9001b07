"""Beam's Java parts for the pipelines: the embedded Flink and local Spark job servers, and Kafka's expansion service.

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
  transforms run inside the job server's JVM (environment ``EMBEDDED``; there is no Docker), and
  Kafka IO expands to Beam's ``UnboundedSource`` read (``--experiments=use_deprecated_read``), which
  the Flink runner translates into a native Flink source with event-time watermarks. Its default,
  a splittable DoFn, reads records on the portable Flink runner of 2.62, but its watermark never
  advances there (apache/beam#19637), so no event-time window ever fires (the archive wrote nothing).

``--runner=SparkRunner`` with a local master (Beam's default, ``local[4]``) likewise gets the launcher
of Beam's Spark job server from its own pinned POM (``core/java/beam-spark-pom.xml``: Beam 2.62's
Spark 3 runner on Spark 3.5) and LOOPBACK workers (`local_spark`, `runner_args`).

On Dataflow, a remote Flink or Spark, or any other runner nothing changes: Beam's own defaults apply.

>>> runner_args(["--runner=DataflowRunner", "--project=p"])
['--runner=DataflowRunner', '--project=p']
>>> embedded_flink(["--runner=FlinkRunner", "--flink_master=flink.example:8081"])
False
>>> embedded_flink(["--runner=FlinkRunner", "--flink_master=[local]"])
True
>>> local_spark(["--runner=SparkRunner"]), local_spark(["--runner=SparkRunner", "--spark_master_url=spark://host:7077"])
(True, False)
"""

from __future__ import annotations

import inspect
import os
import re
import tempfile
import typing
from pathlib import Path
from typing import Any

BEAM_JAVA_POM = "beam-java-pom.xml"
BEAM_SPARK_POM = "beam-spark-pom.xml"
FLINK_JOB_SERVER_MAIN = "org.apache.beam.runners.flink.FlinkJobServerDriver"
SPARK_JOB_SERVER_MAIN = "org.apache.beam.runners.spark.SparkJobServerDriver"
LOCAL_SPARK_MASTER = re.compile(r"^local(\[.+\])?$")  # Beam's SparkRunner starts such a master in its job server
EXPANSION_SERVICE_MAIN = "org.apache.beam.sdk.expansion.service.ExpansionService"
EMBEDDED_FLINK_MASTERS = ("[local]", "[auto]")
# The fields of ReadFromKafka's configuration the pinned Java Kafka IO (2.62) has setters for; the 2.77
# SDK sends three more (dynamic partition discovery, a consumer factory), which 2.62 refuses.
PINNED_KAFKA_READ_FIELDS = (
    "consumer_config", "topics", "key_deserializer", "value_deserializer", "start_read_time", "max_num_records", "max_read_time",
    "commit_offset_in_finalize", "timestamp_policy", "consumer_polling_timeout", "redistribute", "redistribute_num_keys", "allow_duplicates",
)  # fmt: skip
# Kafka IO expands to Beam's UnboundedSource read, which the Flink runner translates natively (offsets in Flink's
# state, event-time watermarks), instead of the splittable DoFn, whose watermark the portable Flink runner of 2.62
# never advances (apache/beam#19637): records are read, but no event-time window ever fires.
EXPANSION_EXPERIMENTS = ("--experiments=use_deprecated_read",)
# The Flink runner's own options (the getters of Java's FlinkPipelineOptions in the pinned 2.62 runner, in Beam's
# snake case): a Python job passes them through (Beam's portable runner asks the job server for them when it
# submits the job), so riverbeam's flag check accepts them on Flink (`add_runner_flags`). tests/pipelines/test_flink.py
# compares this list with the cached jar.
FLINK_JAVA_FLAGS = (
    "flink_master", "parallelism", "max_parallelism", "checkpointing_interval", "checkpointing_mode", "checkpoint_timeout_millis",
    "min_pause_between_checkpoints", "num_concurrent_checkpoints", "fail_on_checkpointing_errors", "finish_bundle_before_checkpointing",
    "unaligned_checkpoint_enabled", "force_unaligned_checkpoint_enabled", "shutdown_sources_after_idle_ms", "number_of_execution_retries",
    "job_check_interval_in_secs", "attached_mode", "execution_retry_delay", "object_reuse", "operator_chaining", "state_backend_factory",
    "state_backend", "state_backend_storage_path", "disable_metrics", "retain_externalized_checkpoints_on_cancellation", "max_bundle_size",
    "max_bundle_time_mills", "latency_tracking_interval", "auto_watermark_interval", "execution_mode_for_batch", "savepoint_path",
    "allow_non_restored_state", "report_checkpoint_duration", "re_iterable_group_by_key_result", "faster_copy", "flink_conf_dir",
    "file_input_split_max_size_m_b", "enable_stable_input_drain",
)  # fmt: skip
MANIFEST_LINE_BYTES = 72  # the jar manifest's limit; longer values continue on lines starting with a space


def beam_java_classpath() -> list[Path]:
    """The cached jars of riverbeam's Beam Java parts (fetched with Maven on first use; `core.maven.JavaToolError` otherwise)."""
    from core.maven import java_executable, resolve_classpath, shipped_pom

    java_executable()
    return resolve_classpath(shipped_pom(BEAM_JAVA_POM))


def beam_spark_classpath() -> list[Path]:
    """The cached jars of riverbeam's Beam Spark job server (fetched with Maven on first use; `core.maven.JavaToolError` otherwise)."""
    from core.maven import java_executable, resolve_classpath, shipped_pom

    java_executable()
    return resolve_classpath(shipped_pom(BEAM_SPARK_POM))


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


def spark_job_server_jar() -> Path:
    """The launcher of Beam's Spark job server (Spark 3.5, a local master) from the cached jars."""
    return launcher_jar(SPARK_JOB_SERVER_MAIN, beam_spark_classpath())


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


def local_spark(options_or_argv: Any) -> bool:
    """Whether the runner is ``SparkRunner`` starting its own job server with a local master (``local``, ``local[N]``)."""
    from apache_beam.options.pipeline_options import PortableOptions, SparkRunnerOptions, StandardOptions

    options = _options(options_or_argv)
    runner = options.view_as(StandardOptions).runner
    name = runner if isinstance(runner, str) else type(runner).__name__
    spark = options.view_as(SparkRunnerOptions)
    if name.rsplit(".", 1)[-1] != "SparkRunner" or options.view_as(PortableOptions).job_endpoint or spark.spark_submit_uber_jar:
        return False
    return bool(LOCAL_SPARK_MASTER.match((spark.spark_master_url or "").strip()))


def add_runner_flags(parser, argv: list[str]) -> None:
    """Add to `parser` the Flink runner's own flags (`FLINK_JAVA_FLAGS`) when `argv` runs on Flink: Beam passes them to
    the job server, so a check of the flags must accept them (``--checkpointing_interval=2000``, ``--object_reuse``).

    >>> import argparse
    >>> parser = argparse.ArgumentParser()
    >>> add_runner_flags(parser, ["--runner=FlinkRunner"])
    >>> parser.parse_known_args(["--checkpointing_interval=2000", "--object_reuse"])[1]
    []
    >>> parser = argparse.ArgumentParser()
    >>> add_runner_flags(parser, ["--runner", "FnApiRunner"])
    >>> parser.parse_known_args(["--checkpointing_interval=2000"])[1]
    ['--checkpointing_interval=2000']
    """
    import argparse

    from apache_beam.options.pipeline_options import StandardOptions

    runner_argv = [arg for i, arg in enumerate(argv) if arg.startswith("--runner") or (i and argv[i - 1] == "--runner")]
    runner = _options(runner_argv).view_as(StandardOptions).runner  # only --runner: no warning about the other flags
    if not isinstance(runner, str) or runner.rsplit(".", 1)[-1] != "FlinkRunner":
        return
    for name in FLINK_JAVA_FLAGS:
        try:
            parser.add_argument(f"--{name}", nargs="?", help=argparse.SUPPRESS)
        except argparse.ArgumentError:
            pass  # Beam's Python options define it already (--flink_master, --parallelism ...)


def runner_args(argv: list[str]) -> list[str]:
    """`argv` completed for an embedded Flink or a local Spark: riverbeam's job server jar and LOOPBACK workers, unless given.

    Any other runner's arguments come back unchanged.
    """
    flink, spark = embedded_flink(argv), local_spark(argv)
    if not (flink or spark):
        return list(argv)
    from apache_beam.options.pipeline_options import FlinkRunnerOptions, PortableOptions, SparkRunnerOptions

    options = _options(argv)
    extra = []
    if flink and not options.view_as(FlinkRunnerOptions).flink_job_server_jar:
        extra.append(f"--flink_job_server_jar={flink_job_server_jar()}")
    if spark and not options.view_as(SparkRunnerOptions).spark_job_server_jar:
        extra.append(f"--spark_job_server_jar={spark_job_server_jar()}")
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

    return JavaJarExpansionService(str(expansion_service_jar()), append_args=["--defaultEnvironmentType=EMBEDDED", *EXPANSION_EXPERIMENTS])


def java_consumer_key(name: str, client: str) -> str:
    """A ``kafka.consumer`` setting's name for Java's Kafka consumer: kafka-python's are Java's with underscores.

    >>> java_consumer_key("auto_offset_reset", "kafka-python"), java_consumer_key("auto.offset.reset", "confluent-kafka")
    ('auto.offset.reset', 'auto.offset.reset')
    """
    return name.replace("_", ".") if client == "kafka-python" else name


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
