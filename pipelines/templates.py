"""Dataflow templates of the riverbeam pipelines: metadata, flex specs, classic templates, launches.

`PIPELINES` registers each templatable pipeline: its module, its `PipelineOptions` subclass
and the streaming modes it supports. Modules are imported only when asked for (``riverbeam
--help`` never loads Beam); this module imports the pipelines, never the reverse: what the
pipelines share about their flags lives in `pipelines.options`.

The template metadata is *derived* from the options class (`pipelines.options.describe_parameters`),
so the checked-in ``templates/<name>/metadata.json`` and the flags cannot drift apart, plus the
pipeline's ``streaming`` flag and streaming modes from `PIPELINES`.

A flex template has two images (``templates/README.md``): the **launcher**
(``templates/Dockerfile``) runs the pipeline's ``main.py`` to build and submit the job, and the
**worker** SDK container (``templates/worker.Dockerfile``: Beam's SDK image with ``riverbeam[beam]``
installed at build time) runs its DoFns. The spec names the worker image as the job's default
``sdkContainerImage``.

>>> parse_parameters(["archive_output=gs://b/a"])
{'archive_output': 'gs://b/a'}
>>> metadata = {"name": "archive", "parameters": [
...     {"name": "archive_output", "isOptional": False},
...     {"name": "archive_format", "isOptional": True, "regexes": ["^(jsonl|parquet)$"], "enumOptions": [{"value": "jsonl"}, {"value": "parquet"}]}]}
>>> validate_parameters(metadata, {"archive_output": "gs://b/a", "archive_format": "parquet"})
{'archive_output': 'gs://b/a', 'archive_format': 'parquet'}
>>> validate_parameters(metadata, {"archive_ouput": "gs://b/a"})
Traceback (most recent call last):
...
core.errors.UsageError: --parameter archive_ouput: the archive template has no such parameter (did you mean archive_output?)
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import ipaddress
import json
import os
import re
from typing import Any, Iterable, Mapping
from urllib.parse import urlencode, urlsplit

from core.errors import RiverbeamError, UsageError
from pipelines.options import describe_parameters

LAUNCHER_BASE_IMAGE = "gcr.io/dataflow-templates-base/python311-template-launcher-base"
WORKER_BASE_IMAGE = "apache/beam_python3.11_sdk"  # tagged with the pinned Beam version
DATAFLOW_ENDPOINT = "https://dataflow.googleapis.com"
CONSOLE_URL = "https://console.cloud.google.com/dataflow/jobs/{region}/{job_id}?project={project}"
EXACTLY_ONCE, AT_LEAST_ONCE = "EXACTLY_ONCE", "AT_LEAST_ONCE"

# Google Cloud naming rules, checked before any request so a placeholder fails at once
_PROJECT_ID = re.compile(r"([a-z0-9][-a-z0-9.]*:)?[a-z][-a-z0-9]{4,28}[a-z0-9]")
_REGION = re.compile(r"[a-z]+-[a-z]+[0-9]+")
_BUCKET = re.compile(r"[a-z0-9][-a-z0-9_.]{1,220}[a-z0-9]")
_JOB_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


@dataclasses.dataclass(frozen=True)
class PipelineTemplate:
    """A templatable pipeline: its module, its options class and its streaming modes (none: batch)."""

    module: str
    options: str
    streaming_modes: tuple[str, ...] = ()
    default_streaming_mode: str | None = None

    @property
    def streaming(self) -> bool:
        return bool(self.streaming_modes)


PIPELINES = {
    "preprocess": PipelineTemplate("pipelines.preprocess", "PreprocessOptions"),
    # learner state is exactly-once (Beam state, rebuilt on retries): at-least-once would learn twice
    "stream-learn": PipelineTemplate("pipelines.stream_learn", "StreamLearnOptions", (EXACTLY_ONCE,)),
    # at-least-once is cheaper and may archive an event twice (replay would then learn it twice)
    "archive": PipelineTemplate("pipelines.archive", "ArchiveOptions", (EXACTLY_ONCE, AT_LEAST_ONCE), EXACTLY_ONCE),
}


class DataflowApiError(RiverbeamError):
    """The Dataflow API refused a request; `status` is the HTTP status, `message` the API's text.

    >>> str(DataflowApiError(403, "Permission denied on project p", reason="PERMISSION_DENIED"))
    'Dataflow API error 403 PERMISSION_DENIED: Permission denied on project p'
    """

    def __init__(self, status: int | None, message: str, reason: str = ""):
        self.status = status
        self.message = message
        self.reason = reason
        head = " ".join(str(part) for part in ("Dataflow API error", status, reason) if part)
        super().__init__(f"{head}: {message}")


# ---------------------------------------------------------------------------------------------
# Pipelines and their metadata
# ---------------------------------------------------------------------------------------------


def pipeline_template(pipeline: str) -> PipelineTemplate:
    """The registered template of `pipeline`; `UsageError` for an unknown name.

    >>> pipeline_template("archive").streaming_modes, pipeline_template("preprocess").streaming
    (('EXACTLY_ONCE', 'AT_LEAST_ONCE'), False)
    """
    if pipeline not in PIPELINES:
        raise UsageError(f"unknown pipeline {pipeline!r} (expected one of: {', '.join(sorted(PIPELINES))})")
    return PIPELINES[pipeline]


def pipeline_module(pipeline: str):
    """The module of a registered pipeline (it has ``run(argv)``), imported on demand."""
    module_name = pipeline_template(pipeline).module
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] in ("apache_beam", "tensorflow", "tensorflow_transform", "tfx_bsl"):
            raise UsageError(f"the {pipeline} template needs the beam extra: pip install 'riverbeam[beam]' ({error.name} is missing)") from None
        raise


def options_class(pipeline: str) -> type:
    """The `PipelineOptions` subclass of a registered pipeline, imported on demand."""
    return getattr(pipeline_module(pipeline), pipeline_template(pipeline).options)


def template_metadata(pipeline: str) -> dict[str, Any]:
    """The flex template metadata of a pipeline, derived from its options class and its streaming modes.

    The description is the first paragraph of the options class docstring. A streaming pipeline
    says which streaming modes it supports, and its default when it supports both.
    """
    template = pipeline_template(pipeline)
    options_cls = options_class(pipeline)
    doc = inspect.getdoc(options_cls) or ""
    description = " ".join(doc.split("\n\n")[0].split())
    if not description:
        raise RiverbeamError(f"{options_cls.__module__}.{options_cls.__name__} has no docstring to describe the template")
    metadata: dict[str, Any] = {
        "name": pipeline,
        "description": description,
        "parameters": [parameter.to_metadata() for parameter in describe_parameters(options_cls)],
        "streaming": template.streaming,
    }
    if template.streaming:
        metadata["supportsExactlyOnce"] = EXACTLY_ONCE in template.streaming_modes
        metadata["supportsAtLeastOnce"] = AT_LEAST_ONCE in template.streaming_modes
        if template.default_streaming_mode:
            metadata["defaultStreamingMode"] = template.default_streaming_mode
    return metadata


def metadata_text(metadata: Mapping[str, Any]) -> str:
    """The canonical text of a metadata file (keys in the order written: parameters follow the flags).

    >>> metadata_text({"name": "x", "parameters": []})
    '{\\n  "name": "x",\\n  "parameters": []\\n}\\n'
    """
    return json.dumps(metadata, indent=2, ensure_ascii=False) + "\n"


def write_metadata_file(pipeline: str, root: str) -> str:
    """Write ``<root>/<pipeline>/metadata.json`` (a local folder or a bucket) from the options class; returns its path."""
    target = _parse_uri(root).child(f"{pipeline}/metadata.json").uri
    write_text(target, metadata_text(template_metadata(pipeline)))
    return target


# ---------------------------------------------------------------------------------------------
# Storage: through core.storage; missing Google credentials become one line
# ---------------------------------------------------------------------------------------------


def _parse_uri(uri: str):
    """`core.storage.parse_uri` (the one URI parser), its errors as usage errors."""
    from core.storage import StorageError, parse_uri as parse

    try:
        return parse(uri)
    except StorageError as error:
        raise UsageError(str(error)) from None


def _storage(operation, uri: str):
    from google.auth import exceptions as auth_exceptions

    try:
        return operation()
    except auth_exceptions.DefaultCredentialsError:
        raise RiverbeamError(f"{uri}: no Google credentials: run 'gcloud auth application-default login' or set GOOGLE_APPLICATION_CREDENTIALS") from None
    except auth_exceptions.GoogleAuthError as error:
        raise RiverbeamError(f"{uri}: Google authentication failed: {error}") from None


def write_text(uri: str, text: str) -> None:
    """Write `text` to a local path, ``gs://`` or ``s3://`` object (through `core.storage`).

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "templates", "spec.json")
    >>> write_text(path, "{}")
    >>> read_text(path)
    '{}'
    """
    from core.storage import write_bytes

    _storage(lambda: write_bytes(uri, text.encode("utf-8")), uri)


def read_text(uri: str) -> str:
    """The text of a local path, ``gs://`` or ``s3://`` object (through `core.storage`)."""
    from core.storage import read_bytes

    return _storage(lambda: read_bytes(uri), uri).decode("utf-8")


# ---------------------------------------------------------------------------------------------
# Flex templates
# ---------------------------------------------------------------------------------------------


def _check_image(flag: str, image: str) -> None:
    if not image or any(ch.isspace() for ch in image) or image != image.strip("/:@"):
        raise UsageError(f"{flag}: {image!r} is not a container image reference")


def flex_template_spec(pipeline: str, image: str, worker_image: str) -> dict[str, Any]:
    """The flex template spec file: the launcher image, the Python SDK, the metadata and the worker image.

    `worker_image` (``templates/worker.Dockerfile``) becomes the job's default
    ``sdkContainerImage``: Dataflow workers start from it, with riverbeam and tensorflow-transform
    already installed, instead of installing anything at launch.
    """
    _check_image("--image", image)
    _check_image("--worker-image", worker_image)
    return {
        "image": image,
        "sdkInfo": {"language": "PYTHON"},
        "metadata": template_metadata(pipeline),
        "defaultEnvironment": {"sdkContainerImage": worker_image},
    }


def build_flex_template(pipeline: str, image: str, worker_image: str, spec_path: str) -> dict[str, Any]:
    """Write the flex template spec of `pipeline` to `spec_path` (gs:// or local); returns the spec."""
    if _parse_uri(spec_path).scheme == "gs":
        _check_bucket_uri("--spec-path", spec_path)
    spec = flex_template_spec(pipeline, image, worker_image)
    write_text(spec_path, json.dumps(spec, indent=2) + "\n")
    return spec


def launcher_argv(argv: list[str]) -> list[str]:
    """The flags a flex template's ``main.py`` runs its pipeline with: the launcher's, plus
    ``--sdk_location=container`` unless given (the worker image has Beam: nothing to stage or download).

    >>> launcher_argv(["--archive_output=gs://b/a"])
    ['--archive_output=gs://b/a', '--sdk_location=container']
    >>> launcher_argv(["--sdk_location", "default"])
    ['--sdk_location', 'default']
    """
    if any(arg == "--sdk_location" or arg.startswith("--sdk_location=") for arg in argv):
        return list(argv)
    return [*argv, "--sdk_location=container"]


# ---------------------------------------------------------------------------------------------
# Launch parameters, checked against the template's metadata
# ---------------------------------------------------------------------------------------------


def parse_parameters(items: Iterable[str]) -> dict[str, str]:
    """Turn ``KEY=VALUE`` strings into a mapping (the value may contain ``=``).

    >>> parse_parameters(["archive_output=gs://b/a", "kafka_consumer_config={\\"a\\": 1}"])
    {'archive_output': 'gs://b/a', 'kafka_consumer_config': '{"a": 1}'}
    >>> parse_parameters(["oops"])
    Traceback (most recent call last):
    ...
    core.errors.UsageError: --parameter: expected KEY=VALUE, got 'oops'
    """
    parameters: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--parameter: expected KEY=VALUE, got {item!r}")
        if key.strip() in parameters:
            raise UsageError(f"--parameter {key.strip()}: given twice")
        parameters[key.strip()] = value
    return parameters


def validate_parameters(metadata: Mapping[str, Any], parameters: Mapping[str, str]) -> dict[str, str]:
    """Check launch parameters as Dataflow will: known names, required ones present, values
    matching the parameter's regexes and enum options. Returns them; raises `UsageError`
    naming the first parameter at fault (with a suggestion for a misspelled name).

    >>> metadata = {"name": "t", "parameters": [{"name": "n", "regexes": ["^-?[0-9]+$"], "isOptional": True}]}
    >>> validate_parameters(metadata, {"n": "1.5"})
    Traceback (most recent call last):
    ...
    core.errors.UsageError: --parameter n='1.5': does not match ^-?[0-9]+$ (the t template's rule for n)
    """
    name = metadata.get("name", "?")
    known = {entry["name"]: entry for entry in metadata.get("parameters", [])}
    for key, value in parameters.items():
        entry = known.get(key)
        if entry is None:
            close = difflib.get_close_matches(key, list(known), n=1)
            hint = f"did you mean {close[0]}?" if close else f"expected one of: {', '.join(known) or 'none'}"
            raise UsageError(f"--parameter {key}: the {name} template has no such parameter ({hint})")
        options = [option["value"] for option in entry.get("enumOptions", [])]
        if options and value not in options:
            raise UsageError(f"--parameter {key}={value!r}: must be one of {', '.join(options)}")
        for regex in entry.get("regexes", []):
            if not re.fullmatch(regex, value):
                raise UsageError(f"--parameter {key}={value!r}: does not match {regex} (the {name} template's rule for {key})")
        if entry.get("paramType") == "BOOLEAN" and value not in ("true", "false"):
            raise UsageError(f"--parameter {key}={value!r}: must be true or false")
    missing = [key for key, entry in known.items() if not entry.get("isOptional", False) and key not in parameters]
    if missing:
        raise UsageError(f"the {name} template needs --parameter {', '.join(f'{key}=...' for key in missing)}")
    return dict(parameters)


def read_template_metadata(spec_path: str, classic: bool = False) -> dict[str, Any]:
    """The metadata a template was built with: the flex spec's ``metadata``, or a classic
    template's ``<location>_metadata`` file."""
    path = spec_path + "_metadata" if classic else spec_path
    if _parse_uri(path).scheme == "gs":
        _check_bucket_uri("--spec-path", path)
    try:
        document = json.loads(read_text(path))
    except ValueError as error:
        raise RiverbeamError(f"{path}: not a JSON template file ({error})") from None
    metadata = document if classic else document.get("metadata") if isinstance(document, dict) else None
    if not isinstance(metadata, dict) or "parameters" not in metadata:
        raise RiverbeamError(f"{path}: no template metadata in it (build it with 'riverbeam templates build')")
    return metadata


# ---------------------------------------------------------------------------------------------
# Launching through the Dataflow REST API
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LaunchedJob:
    """A job the Dataflow API accepted."""

    job_id: str
    console_url: str


def console_url(project: str, region: str, job_id: str) -> str:
    """The Cloud console page of a Dataflow job.

    >>> console_url("my-project", "europe-west1", "2024-01-01_00_00_00-123")
    'https://console.cloud.google.com/dataflow/jobs/europe-west1/2024-01-01_00_00_00-123?project=my-project'
    """
    return CONSOLE_URL.format(region=region, job_id=job_id, project=project)


def _dataflow_types():
    """`google.cloud.dataflow_v1beta3` (google-cloud-dataflow-client, in the beam extra)."""
    try:
        from google.cloud import dataflow_v1beta3
    except ModuleNotFoundError:
        raise UsageError("launching templates needs the beam extra: pip install 'riverbeam[beam]' (google-cloud-dataflow-client)") from None
    return dataflow_v1beta3


def _is_loopback(endpoint: str) -> bool:
    host = urlsplit(endpoint).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _client(client_cls, endpoint: str | None):
    """A REST client; anonymous only for an http:// loopback endpoint (a local stand-in API)."""
    from google.api_core.client_options import ClientOptions

    credentials = None  # application-default credentials
    if endpoint:
        if endpoint.startswith("http://"):
            if not _is_loopback(endpoint):
                raise UsageError(f"--dataflow-endpoint: plain http is only allowed to a loopback address, got {endpoint}")
            from google.auth.credentials import AnonymousCredentials

            credentials = AnonymousCredentials()
        elif not endpoint.startswith("https://"):
            raise UsageError(f"--dataflow-endpoint: expected an http(s):// URL, got {endpoint!r}")
    # the REST transport keeps an explicit scheme in the endpoint ("http://127.0.0.1:8080" stays http)
    options = ClientOptions(api_endpoint=endpoint.rstrip("/")) if endpoint else None
    return client_cls(credentials=credentials, transport="rest", client_options=options)


def _message_dict(message) -> dict[str, Any]:
    from google.protobuf import json_format

    return json_format.MessageToDict(type(message).pb(message), use_integers_for_enums=True)


def _dry_run(endpoint: str | None, path: str, query: Mapping[str, str], body: dict[str, Any]) -> dict[str, Any]:
    url = (endpoint or DATAFLOW_ENDPOINT).rstrip("/") + path + (f"?{urlencode(query)}" if query else "")
    return {"method": "POST", "url": url, "body": body}


def _call(method, request, project: str, region: str) -> LaunchedJob:
    from google.api_core import exceptions as api_exceptions
    from google.auth import exceptions as auth_exceptions

    try:
        response = method(request=request)
    except api_exceptions.GoogleAPICallError as error:
        raise _api_error(error) from None
    except auth_exceptions.DefaultCredentialsError as error:
        raise RiverbeamError(f"no Google credentials: run 'gcloud auth application-default login' ({error})") from None
    except auth_exceptions.GoogleAuthError as error:
        raise RiverbeamError(f"Google authentication failed: {error}") from None
    except OSError as error:  # requests' connection errors are OSErrors
        raise RiverbeamError(f"cannot reach the Dataflow API: {error}") from None
    job_id = response.job.id
    if not job_id:
        raise DataflowApiError(None, "the launch response names no job")
    return LaunchedJob(job_id, console_url(project, region, job_id))


def _api_error(error) -> DataflowApiError:
    """The status, reason and message of an API error, from its JSON body when there is one."""
    message, reason = error.message or str(error), getattr(error, "reason", None) or ""
    try:
        body = error.response.json()["error"]
        message, reason = body.get("message") or message, body.get("status") or reason
    except (AttributeError, ValueError, KeyError, TypeError):
        pass
    return DataflowApiError(error.code, message, reason)


def check_project_and_region(project: str | None, region: str | None) -> None:
    """`UsageError` unless `project` and `region` look like Google Cloud names (so ``PROJECT`` fails at once).

    >>> check_project_and_region("my-project", "europe-west1")
    >>> check_project_and_region("PROJECT", "europe-west1")
    Traceback (most recent call last):
    ...
    core.errors.UsageError: --project: 'PROJECT' is not a Google Cloud project ID (6-30 lower-case letters, digits or '-', starting with a letter)
    """
    if not project:
        raise UsageError("--project is required")
    if not _PROJECT_ID.fullmatch(project):
        raise UsageError(f"--project: {project!r} is not a Google Cloud project ID (6-30 lower-case letters, digits or '-', starting with a letter)")
    if not region:
        raise UsageError("--region is required")
    if not _REGION.fullmatch(region):
        raise UsageError(f"--region: {region!r} is not a Google Cloud region (e.g. europe-west1)")


def _check_launch_args(project: str, region: str, job_name: str, update: bool = False, mappings: Mapping | None = None) -> None:
    check_project_and_region(project, region)
    if not _JOB_NAME.fullmatch(job_name or ""):
        raise UsageError(f"--job-name: {job_name!r} must be lower-case letters, digits and '-', starting with a letter")
    if mappings and not update:
        raise UsageError("--transform-name-mapping only applies with --update")


STREAMING_MODES = {"exactly-once": EXACTLY_ONCE, "at-least-once": AT_LEAST_ONCE}


def check_streaming_mode(metadata: Mapping[str, Any], mode: str | None) -> str | None:
    """The Dataflow ``StreamingMode`` name for `mode` (``exactly-once`` / ``at-least-once``), if the
    template supports it; None when `mode` is None (the template's default).

    >>> check_streaming_mode({"name": "archive", "streaming": True, "supportsExactlyOnce": True, "supportsAtLeastOnce": True}, "at-least-once")
    'STREAMING_MODE_AT_LEAST_ONCE'
    >>> check_streaming_mode({"name": "stream-learn", "streaming": True, "supportsExactlyOnce": True}, "at-least-once")
    Traceback (most recent call last):
    ...
    core.errors.UsageError: --streaming-mode at-least-once: the stream-learn template supports exactly-once only
    """
    if mode is None:
        return None
    name = metadata.get("name", "?")
    if mode not in STREAMING_MODES:
        raise UsageError(f"--streaming-mode: expected one of {', '.join(STREAMING_MODES)}, got {mode!r}")
    if not metadata.get("streaming"):
        raise UsageError(f"--streaming-mode: the {name} template is a batch pipeline")
    supported = [text for text, key in STREAMING_MODES.items() if metadata.get(f"supports{key.title().replace('_', '')}")]
    if mode not in supported:
        raise UsageError(f"--streaming-mode {mode}: the {name} template supports {' and '.join(supported) or 'no streaming mode'} only")
    return f"STREAMING_MODE_{STREAMING_MODES[mode]}"


def parse_name_mappings(items: Iterable[str]) -> dict[str, str]:
    """``OLD=NEW`` transform renames for an in-place update (``--transform-name-mapping``).

    >>> parse_name_mappings(["Learn=LearnStateful"])
    {'Learn': 'LearnStateful'}
    """
    mappings = {}
    for item in items:
        old, sep, new = item.partition("=")
        if not sep or not old.strip() or not new.strip():
            raise UsageError(f"--transform-name-mapping: expected OLD=NEW, got {item!r}")
        mappings[old.strip()] = new.strip()
    return mappings


def launch_flex_template(
    spec_path: str,
    project: str,
    region: str,
    job_name: str,
    parameters: Mapping[str, str] | None = None,
    *,
    metadata: Mapping[str, Any] | None = None,
    endpoint: str | None = None,
    dry_run: bool = False,
    update: bool = False,
    transform_name_mappings: Mapping[str, str] | None = None,
    streaming_mode: str | None = None,
) -> LaunchedJob | dict[str, Any]:
    """Launch a flex template (``flexTemplates:launch``); with `dry_run`, return the request instead.

    The parameters (and the streaming mode) are checked against `metadata` (default: the
    metadata in the spec at `spec_path`) before any request. With `update`, the running job
    named `job_name` is replaced in place (its state kept; `transform_name_mappings` renames steps).

    >>> metadata = {"name": "archive", "parameters": [{"name": "a", "isOptional": True}]}
    >>> request = launch_flex_template("gs://b/archive.json", "my-project", "europe-west1", "archive-1", {"a": "1"},
    ...                                metadata=metadata, dry_run=True)
    >>> request["url"]
    'https://dataflow.googleapis.com/v1b3/projects/my-project/locations/europe-west1/flexTemplates:launch'
    >>> request["body"]["launchParameter"]["containerSpecGcsPath"]
    'gs://b/archive.json'
    """
    dataflow = _dataflow_types()
    _check_launch_args(project, region, job_name, update, transform_name_mappings)
    metadata = metadata if metadata is not None else read_template_metadata(spec_path)
    checked = validate_parameters(metadata, parameters or {})
    mode = check_streaming_mode(metadata, streaming_mode)
    launch_parameter = dataflow.LaunchFlexTemplateParameter(
        job_name=job_name, container_spec_gcs_path=spec_path, parameters=checked, update=update,
        transform_name_mappings=dict(transform_name_mappings or {}),
        environment=dataflow.FlexTemplateRuntimeEnvironment(streaming_mode=mode) if mode else None,
    )  # fmt: skip
    request = dataflow.LaunchFlexTemplateRequest(project_id=project, location=region, launch_parameter=launch_parameter)
    if dry_run:
        path = f"/v1b3/projects/{project}/locations/{region}/flexTemplates:launch"
        return _dry_run(endpoint, path, {}, {"launchParameter": _message_dict(launch_parameter)})
    client = _client(dataflow.FlexTemplatesServiceClient, endpoint)
    return _call(client.launch_flex_template, request, project, region)


def launch_classic_template(
    gcs_path: str,
    project: str,
    region: str,
    job_name: str,
    parameters: Mapping[str, str] | None = None,
    *,
    metadata: Mapping[str, Any] | None = None,
    endpoint: str | None = None,
    dry_run: bool = False,
    update: bool = False,
    transform_name_mappings: Mapping[str, str] | None = None,
    streaming_mode: str | None = None,
) -> LaunchedJob | dict[str, Any]:
    """Launch a classic template (``templates:launch?gcsPath=``); with `dry_run`, return the request.

    The parameters are checked against `metadata` (default: ``<gcs_path>_metadata``); `update`,
    `transform_name_mappings` and `streaming_mode` as for `launch_flex_template`.

    >>> launch_classic_template("gs://b/t/archive", "my-project", "europe-west1", "a-1", metadata={"parameters": []},
    ...                         dry_run=True)["url"]  # doctest: +ELLIPSIS
    'https://dataflow.googleapis.com/v1b3/projects/my-project/locations/europe-west1/templates:launch?gcsPath=gs%3A%2F%2Fb%2Ft%2Farchive'
    """
    dataflow = _dataflow_types()
    _check_launch_args(project, region, job_name, update, transform_name_mappings)
    metadata = metadata if metadata is not None else read_template_metadata(gcs_path, classic=True)
    checked = validate_parameters(metadata, parameters or {})
    mode = check_streaming_mode(metadata, streaming_mode)
    launch_parameters = dataflow.LaunchTemplateParameters(
        job_name=job_name, parameters=checked, update=update, transform_name_mapping=dict(transform_name_mappings or {}),
        environment=dataflow.RuntimeEnvironment(streaming_mode=mode) if mode else None,
    )  # fmt: skip
    request = dataflow.LaunchTemplateRequest(project_id=project, location=region, gcs_path=gcs_path, launch_parameters=launch_parameters)
    if dry_run:
        path = f"/v1b3/projects/{project}/locations/{region}/templates:launch"
        return _dry_run(endpoint, path, {"gcsPath": gcs_path}, _message_dict(launch_parameters))
    client = _client(dataflow.TemplatesServiceClient, endpoint)
    return _call(client.launch_template, request, project, region)


# ---------------------------------------------------------------------------------------------
# Classic templates
# ---------------------------------------------------------------------------------------------


def classic_template_metadata(pipeline: str) -> dict[str, Any]:
    """Metadata of a classic template: only value-provider flags can be given at launch."""
    metadata = template_metadata(pipeline)
    launchable = {p.name for p in describe_parameters(options_class(pipeline)) if p.value_provider}
    metadata["parameters"] = [entry for entry in metadata["parameters"] if entry["name"] in launchable]
    return metadata


def _check_bucket_uri(flag: str, uri: str | None, required: bool = False) -> None:
    if not uri:
        if required:
            raise UsageError(f"{flag} is required (gs://bucket/path)")
        return
    location = _parse_uri(uri)
    if location.scheme != "gs":
        raise UsageError(f"{flag}: expected gs://bucket/path, got {uri!r}")
    if not _BUCKET.fullmatch(location.bucket) or ".." in location.bucket:
        raise UsageError(f"{flag}: {location.bucket!r} is not a Cloud Storage bucket name (lower-case letters, digits, '-', '_', '.')")


def _check_credentials() -> None:
    """Fail at once, in one line, when no Google credentials can be found (the emulator needs none)."""
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        return
    import google.auth
    from google.auth import exceptions as auth_exceptions

    try:
        google.auth.default()
    except auth_exceptions.DefaultCredentialsError as error:
        first = str(error).splitlines()[0] if str(error) else "none found"
        raise RiverbeamError(f"no Google credentials ({first}): run 'gcloud auth application-default login' or set GOOGLE_APPLICATION_CREDENTIALS") from None


def create_classic_template(pipeline: str, template_location: str, beam_args: list[str]) -> str:
    """Build `pipeline` on the DataflowRunner with ``--template_location`` (no job runs).

    The pipeline's own ``run(argv)`` builds the graph; Dataflow stages the job description at
    `template_location` and ``<template_location>_metadata`` (the launch-time parameters) is
    written next to it. Returns `template_location`.

    Before Beam starts, the project, region, bucket names and credentials are checked, so a
    placeholder (``PROJECT``, ``gs://BUCKET``) or a machine without credentials fails in one
    line instead of retrying against Google Cloud.
    """
    from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions

    _check_bucket_uri("--template-location", template_location, required=True)
    for arg in beam_args:
        if arg.split("=", 1)[0] in ("--runner", "--template_location"):
            raise UsageError(f"{arg.split('=', 1)[0]} is set by create-classic; remove it")
    cloud = PipelineOptions(beam_args).view_as(GoogleCloudOptions)
    check_project_and_region(cloud.project, cloud.region)
    _check_bucket_uri("--temp_location", cloud.temp_location, required=not cloud.staging_location)
    _check_bucket_uri("--staging_location", cloud.staging_location)
    _check_credentials()
    module = pipeline_module(pipeline)
    try:
        module.run([*beam_args, "--runner=DataflowRunner", f"--template_location={template_location}"])
    except ValueError as error:  # Beam's option validation ("Missing required option: ...")
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        raise UsageError(f"Beam refused the flags: {'; '.join(lines) or error!r}") from None
    write_text(template_location + "_metadata", metadata_text(classic_template_metadata(pipeline)))
    return template_location
