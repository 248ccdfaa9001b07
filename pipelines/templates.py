"""Dataflow templates of the riverbeam pipelines: metadata, flex specs, classic templates, launches.

A pipeline is templatable when its module exposes a `PipelineOptions` subclass
(`PIPELINES` names it as ``"module:Class"``; modules are imported only when asked for).
The template metadata is *derived* from that class's ``_add_argparse_args``, so the checked-in
``templates/<name>/metadata.json`` and the flags cannot drift apart:

* name: the flag without its dashes; label: the name in words; helpText: the flag's ``help``;
* isOptional: false for flags added with `add_required_argument` (or argparse ``required=True``);
* regexes: from ``choices`` and ``type=int`` / ``type=float``.

Flags are global in Beam: every imported `PipelineOptions` subclass is parsed together on
every run, so a flag name must be defined by one class only, and argparse ``required=True``
would break every *other* pipeline in the process. Required flags are therefore added with
`add_required_argument` and enforced by `check_required` in the pipeline's ``run``.

>>> import argparse
>>> parser = argparse.ArgumentParser()
>>> add_required_argument(parser, "--archive_output", help="Where files go.")
>>> parser.parse_args([]).archive_output is None   # not an argparse error: checked in run()
True
>>> label_of("kafka_bootstrap_servers")
'Kafka bootstrap servers'
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import ipaddress
import json
import re
from pathlib import Path
from typing import Any, Iterable, Mapping
from urllib.parse import urlencode, urlsplit

from core.errors import RiverbeamError, UsageError

# pipeline name -> "module:OptionsClass"; imported lazily, a missing module means "not built yet"
PIPELINES = {
    "preprocess": "pipelines.preprocess:PreprocessOptions",
    "stream-learn": "pipelines.stream_learn:StreamLearnOptions",
    "archive": "pipelines.archive:ArchiveOptions",
}
TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
LAUNCHER_BASE_IMAGE = "gcr.io/dataflow-templates-base/python311-template-launcher-base"
DATAFLOW_ENDPOINT = "https://dataflow.googleapis.com"
CONSOLE_URL = "https://console.cloud.google.com/dataflow/jobs/{region}/{job_id}?project={project}"

_REQUIRED_MARK = "riverbeam_required"


class PipelineUnavailable(UsageError):
    """The pipeline is registered but its module does not exist (yet) in this installation."""


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
# Options classes and their flags
# ---------------------------------------------------------------------------------------------


def add_required_argument(parser, *flags: str, value_provider: bool = False, **kwargs) -> None:
    """Add a flag that must be set for the pipeline to run (marked for metadata and `check_required`).

    With ``value_provider=True`` the flag is a classic-template value provider: it may be left
    unset when the classic template is created and given when the template is launched.
    """
    if kwargs.get("required"):
        raise ValueError("use add_required_argument instead of argparse's required=True")
    if value_provider:
        parser.add_value_provider_argument(*flags, **kwargs)
    else:
        parser.add_argument(*flags, **kwargs)
    setattr(parser._actions[-1], _REQUIRED_MARK, True)


def options_class(pipeline: str) -> type:
    """The `PipelineOptions` subclass of a registered pipeline, imported on demand.

    Raises `UsageError` for an unknown name and `PipelineUnavailable` when its module is missing.
    """
    if pipeline not in PIPELINES:
        raise UsageError(f"unknown pipeline {pipeline!r} (expected one of: {', '.join(sorted(PIPELINES))})")
    module_name, class_name = PIPELINES[pipeline].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name:
            raise
        raise PipelineUnavailable(f"pipeline {pipeline!r}: module {module_name} is not available in this installation") from None
    return getattr(module, class_name)


def pipeline_module(pipeline: str):
    """The module of a registered pipeline (it has ``run(argv)``)."""
    return importlib.import_module(options_class(pipeline).__module__)


def label_of(name: str) -> str:
    """A human label for a flag name: ``archive_window_seconds`` -> ``Archive window seconds``."""
    words = re.split(r"[_\-]+", name.strip("-"))
    text = " ".join(word for word in words if word)
    return text[:1].upper() + text[1:]


@dataclasses.dataclass(frozen=True)
class TemplateParameter:
    """One templated flag as the Dataflow template metadata describes it."""

    name: str
    label: str
    help_text: str
    optional: bool
    regexes: tuple[str, ...] = ()
    value_provider: bool = False

    def to_metadata(self) -> dict[str, Any]:
        """The parameter entry of a flex or classic template ``metadata.json``."""
        entry: dict[str, Any] = {"name": self.name, "label": self.label, "helpText": self.help_text, "isOptional": self.optional}
        if self.regexes:
            entry["regexes"] = list(self.regexes)
        return entry


def _recording_parser() -> argparse.ArgumentParser:
    from apache_beam.options.pipeline_options import _BeamArgumentParser

    return _BeamArgumentParser(add_help=False, allow_abbrev=False)


def _own_actions(options_cls: type) -> list[argparse.Action]:
    """The argparse actions `options_cls` (and its bases below PipelineOptions) define, as Beam's view_as does."""
    from apache_beam.options.pipeline_options import PipelineOptions

    if not (isinstance(options_cls, type) and issubclass(options_cls, PipelineOptions)):
        raise UsageError(f"{options_cls!r} is not a PipelineOptions subclass")
    parser = _recording_parser()
    for cls in reversed(options_cls.mro()):
        if cls is not PipelineOptions and issubclass(cls, PipelineOptions) and "_add_argparse_args" in cls.__dict__:
            cls._add_argparse_args(parser)
    return [action for action in parser._actions if action.option_strings]


def _regexes(action: argparse.Action, value_type) -> tuple[str, ...]:
    if action.choices:
        return ("^(" + "|".join(re.escape(str(choice)) for choice in action.choices) + ")$",)
    if value_type is int:
        return (r"^-?[0-9]+$",)
    if value_type is float:
        return (r"^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$",)
    return ()


def describe_parameters(options_cls: type) -> list[TemplateParameter]:
    """The template parameters of an options class, in the order its flags are defined.

    Raises `RiverbeamError` when a flag has no help text (the template UI would show nothing).
    """
    from apache_beam.options.value_provider import RuntimeValueProvider

    parameters = []
    for action in _own_actions(options_cls):
        long_flags = [flag for flag in action.option_strings if flag.startswith("--")]
        name = (long_flags or action.option_strings)[0].lstrip("-")
        value_provider = isinstance(action.default, RuntimeValueProvider)
        default = action.default.default_value if value_provider else action.default
        value_type = action.default.value_type if value_provider else action.type
        if not action.help or action.help == argparse.SUPPRESS:
            raise RiverbeamError(f"{options_cls.__module__}.{options_cls.__name__}: flag --{name} has no help text")
        help_text = " ".join(action.help.split())
        if "%(" in help_text:
            help_text = help_text % {**vars(action), "default": default, "prog": "riverbeam"}
        required = bool(action.required or getattr(action, _REQUIRED_MARK, False))
        parameters.append(TemplateParameter(name, label_of(name), help_text, not required, _regexes(action, value_type), value_provider))
    return parameters


def template_metadata(pipeline: str, options_cls: type | None = None) -> dict[str, Any]:
    """The flex template metadata of a pipeline, derived from its options class.

    The description is the first paragraph of the options class docstring.
    """
    options_cls = options_cls or options_class(pipeline)
    doc = inspect.getdoc(options_cls) or ""
    description = " ".join(doc.split("\n\n")[0].split())
    if not description:
        raise RiverbeamError(f"{options_cls.__module__}.{options_cls.__name__} has no docstring to describe the template")
    return {
        "name": pipeline,
        "description": description,
        "parameters": [parameter.to_metadata() for parameter in describe_parameters(options_cls)],
    }


def metadata_text(metadata: Mapping[str, Any]) -> str:
    """The canonical text of a metadata file (sorted keys are not used: order follows the flags)."""
    return json.dumps(metadata, indent=2, ensure_ascii=False) + "\n"


def write_metadata_file(pipeline: str, root: Path | str = TEMPLATES_DIR) -> Path:
    """Write ``<root>/<pipeline>/metadata.json`` from the options class; returns its path."""
    path = Path(root) / pipeline / "metadata.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(metadata_text(template_metadata(pipeline)))
    return path


def check_required(options, options_cls: type) -> None:
    """Raise `UsageError` naming every required flag of `options_cls` that is not set.

    A value-provider flag left for launch time counts as set while a classic template is
    created (``--template_location``), and as missing otherwise.
    """
    from apache_beam.options.pipeline_options import GoogleCloudOptions
    from apache_beam.options.value_provider import RuntimeValueProvider

    view = options.view_as(options_cls)
    creating_template = bool(options.view_as(GoogleCloudOptions).template_location)
    missing = []
    for parameter in describe_parameters(options_cls):
        value = getattr(view, parameter.name.replace("-", "_"), None)
        if parameter.optional or (creating_template and isinstance(value, RuntimeValueProvider)):
            continue
        if isinstance(value, RuntimeValueProvider):
            value = value.default_value
        if hasattr(value, "get"):
            value = value.get()
        if value is None or value == "" or value == []:
            missing.append(f"--{parameter.name}")
    if missing:
        raise UsageError(f"{options_cls.__name__}: missing required flag(s): {', '.join(missing)}")


# ---------------------------------------------------------------------------------------------
# Storage (gs:// through google-cloud-storage, anything else is a local path)
# ---------------------------------------------------------------------------------------------


def _split_gcs(uri: str) -> tuple[str, str]:
    bucket, _, name = uri[len("gs://"):].partition("/")
    if not bucket or not name:
        raise UsageError(f"{uri!r} is not a gs://bucket/object URI")
    return bucket, name


def write_text(uri: str, text: str, content_type: str = "application/json") -> None:
    """Write `text` to ``gs://bucket/object`` or a local path (parent directories are created)."""
    if uri.startswith("gs://"):
        from google.cloud import storage

        bucket, name = _split_gcs(uri)
        storage.Client().bucket(bucket).blob(name).upload_from_string(text, content_type=content_type)
    else:
        path = Path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def read_text(uri: str) -> str:
    """Read ``gs://bucket/object`` or a local path as text."""
    if uri.startswith("gs://"):
        from google.cloud import storage

        bucket, name = _split_gcs(uri)
        return storage.Client().bucket(bucket).blob(name).download_as_text()
    return Path(uri).read_text()


# ---------------------------------------------------------------------------------------------
# Flex templates
# ---------------------------------------------------------------------------------------------


def flex_template_spec(pipeline: str, image: str) -> dict[str, Any]:
    """The flex template spec file: the launcher image, the Python SDK and the metadata."""
    if not image or any(ch.isspace() for ch in image):
        raise UsageError(f"--image: {image!r} is not a container image reference")
    return {"image": image, "sdkInfo": {"language": "PYTHON"}, "metadata": template_metadata(pipeline)}


def build_flex_template(pipeline: str, image: str, spec_path: str) -> dict[str, Any]:
    """Write the flex template spec of `pipeline` to `spec_path` (gs:// or local); returns the spec."""
    spec = flex_template_spec(pipeline, image)
    write_text(spec_path, json.dumps(spec, indent=2) + "\n")
    return spec


# ---------------------------------------------------------------------------------------------
# Launching through the Dataflow REST API
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LaunchedJob:
    """A job the Dataflow API accepted."""

    job_id: str
    console_url: str


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
        parameters[key.strip()] = value
    return parameters


def console_url(project: str, region: str, job_id: str) -> str:
    """The Cloud console page of a Dataflow job.

    >>> console_url("p", "europe-west1", "2024-01-01_00_00_00-123")
    'https://console.cloud.google.com/dataflow/jobs/europe-west1/2024-01-01_00_00_00-123?project=p'
    """
    return CONSOLE_URL.format(region=region, job_id=job_id, project=project)


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


def _check_launch_args(project: str, region: str, job_name: str) -> None:
    if not project:
        raise UsageError("--project is required")
    if not region:
        raise UsageError("--region is required")
    if not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", job_name or ""):
        raise UsageError(f"--job-name: {job_name!r} must be lower-case letters, digits and '-', starting with a letter")


def launch_flex_template(
    spec_path: str,
    project: str,
    region: str,
    job_name: str,
    parameters: Mapping[str, str] | None = None,
    *,
    endpoint: str | None = None,
    dry_run: bool = False,
) -> LaunchedJob | dict[str, Any]:
    """Launch a flex template (``flexTemplates:launch``); with `dry_run`, return the request instead.

    >>> request = launch_flex_template("gs://b/archive.json", "p", "r", "archive-1", {"a": "1"}, dry_run=True)
    >>> request["url"]
    'https://dataflow.googleapis.com/v1b3/projects/p/locations/r/flexTemplates:launch'
    >>> request["body"]["launchParameter"]["containerSpecGcsPath"]
    'gs://b/archive.json'
    """
    from google.cloud import dataflow_v1beta3 as dataflow

    _check_launch_args(project, region, job_name)
    launch_parameter = dataflow.LaunchFlexTemplateParameter(
        job_name=job_name, container_spec_gcs_path=spec_path, parameters=dict(parameters or {})
    )
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
    endpoint: str | None = None,
    dry_run: bool = False,
) -> LaunchedJob | dict[str, Any]:
    """Launch a classic template (``templates:launch?gcsPath=``); with `dry_run`, return the request.

    >>> launch_classic_template("gs://b/t/archive", "p", "r", "a-1", dry_run=True)["url"]
    'https://dataflow.googleapis.com/v1b3/projects/p/locations/r/templates:launch?gcsPath=gs%3A%2F%2Fb%2Ft%2Farchive'
    """
    from google.cloud import dataflow_v1beta3 as dataflow

    _check_launch_args(project, region, job_name)
    launch_parameters = dataflow.LaunchTemplateParameters(job_name=job_name, parameters=dict(parameters or {}))
    request = dataflow.LaunchTemplateRequest(
        project_id=project, location=region, gcs_path=gcs_path, launch_parameters=launch_parameters
    )
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
    options_cls = options_class(pipeline)
    metadata = template_metadata(pipeline, options_cls)
    launchable = {p.name for p in describe_parameters(options_cls) if p.value_provider}
    metadata["parameters"] = [entry for entry in metadata["parameters"] if entry["name"] in launchable]
    return metadata


def create_classic_template(pipeline: str, template_location: str, beam_args: list[str]) -> str:
    """Build `pipeline` on the DataflowRunner with ``--template_location`` (no job runs).

    The pipeline's own ``run(argv)`` builds the graph; Dataflow stages the job description at
    `template_location` and ``<template_location>_metadata`` (the launch-time parameters) is
    written next to it. Returns `template_location`.
    """
    if not template_location.startswith("gs://"):
        raise UsageError(f"--template-location: expected gs://bucket/path, got {template_location!r}")
    for arg in beam_args:
        if arg.split("=", 1)[0] in ("--runner", "--template_location"):
            raise UsageError(f"{arg.split('=', 1)[0]} is set by create-classic; remove it")
    module = pipeline_module(pipeline)
    module.run([*beam_args, "--runner=DataflowRunner", f"--template_location={template_location}"])
    write_text(template_location + "_metadata", metadata_text(classic_template_metadata(pipeline)))
    return template_location
