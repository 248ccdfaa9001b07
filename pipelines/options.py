"""What the pipelines share about their flags: required flags, their description as template
parameters, and which runners a pipeline waits for.

Every pipeline module (`pipelines.preprocess`, `pipelines.stream_learn`, `pipelines.archive`)
defines a `PipelineOptions` subclass and imports its helpers from here; `pipelines.templates`
imports the pipelines and this module, never the reverse.

Flags are global in Beam: every imported `PipelineOptions` subclass is parsed together on every
run, so a flag name must be defined by one class only, and argparse ``required=True`` would break
every *other* pipeline in the process. Required flags are therefore added with
`add_required_argument` and enforced by `check_required` in the pipeline's ``run``.

A flag's template parameter is derived from the flag itself:

* name: the flag without its dashes; label: the name in words; helpText: the flag's ``help``;
* isOptional: false for flags added with `add_required_argument`;
* paramType: ``ENUM`` (with its ``enumOptions``) for ``choices``, ``NUMBER`` for ``type=int`` /
  ``type=float``, ``BOOLEAN`` for ``store_true`` / ``store_false``; other flags are ``TEXT`` unless
  the options class names their type in ``TEMPLATE_PARAM_TYPES`` (a ``gs://`` file to read, a
  folder to write, a Pub/Sub topic ...: the Dataflow console then offers the matching picker);
* regexes: from ``choices`` and numbers, checked by Dataflow and by ``riverbeam templates launch``.

>>> import argparse
>>> parser = argparse.ArgumentParser()
>>> add_required_argument(parser, "--archive_output", help="Where files go.")
>>> parser.parse_args([]).archive_output is None   # not an argparse error: checked in run()
True
>>> label_of("kafka_bootstrap_servers")
'Kafka bootstrap servers'
>>> waits_for_result("FnApiRunner"), waits_for_result("DataflowRunner")
(True, False)
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from typing import Any

from core.errors import RiverbeamError, UsageError

_REQUIRED_MARK = "riverbeam_required"

# Runners that execute the job in this process: run() waits for them (and must, or the job dies
# with the process). Any other runner (Dataflow, Flink, Spark ...) has the job run elsewhere: run()
# returns once it is submitted, as a Dataflow flex template launcher must.
LOCAL_RUNNERS = frozenset({
    "DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner", "FnApiRunner", "TestDirectRunner",
    "PrismRunner", "InteractiveRunner",
})  # fmt: skip

# Dataflow ParameterType names riverbeam uses (google.cloud.dataflow_v1beta3.ParameterType)
PARAM_TYPES = frozenset({
    "TEXT", "NUMBER", "BOOLEAN", "ENUM", "GCS_READ_FILE", "GCS_READ_FOLDER", "GCS_WRITE_FILE", "GCS_WRITE_FOLDER",
    "PUBSUB_TOPIC", "PUBSUB_SUBSCRIPTION", "KAFKA_READ_TOPIC", "KAFKA_WRITE_TOPIC",
})  # fmt: skip

INTEGER_REGEX = r"^-?[0-9]+$"
NUMBER_REGEX = r"^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$"


def waits_for_result(runner: Any, environment_type: str | None = None) -> bool:
    """Whether ``run()`` waits for the job: a local runner, or workers in this process (``LOOPBACK``).

    `runner` is the ``--runner`` value (a name, a dotted path or None for Beam's default).

    >>> waits_for_result(None), waits_for_result("apache_beam.runners.direct.DirectRunner")
    (True, True)
    >>> waits_for_result("FlinkRunner"), waits_for_result("PortableRunner", "LOOPBACK")
    (False, True)
    """
    if runner is None:
        return True
    name = runner if isinstance(runner, str) else type(runner).__name__
    return name.rsplit(".", 1)[-1] in LOCAL_RUNNERS or (environment_type or "").upper() == "LOOPBACK"


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


def label_of(name: str) -> str:
    """A human label for a flag name: ``archive_window_seconds`` -> ``Archive window seconds``."""
    words = re.split(r"[_\-]+", name.strip("-"))
    text = " ".join(word for word in words if word)
    return text[:1].upper() + text[1:]


@dataclasses.dataclass(frozen=True)
class TemplateParameter:
    """One flag as a Dataflow template parameter (``ParameterMetadata``).

    >>> TemplateParameter("archive_format", "Archive format", "File format.", True, ("^(jsonl|parquet)$",),
    ...                   param_type="ENUM", enum_options=("jsonl", "parquet"), default="jsonl").to_metadata()
    ... # doctest: +NORMALIZE_WHITESPACE
    {'name': 'archive_format', 'label': 'Archive format', 'helpText': 'File format.', 'isOptional': True,
     'regexes': ['^(jsonl|parquet)$'], 'paramType': 'ENUM', 'enumOptions': [{'value': 'jsonl'}, {'value': 'parquet'}],
     'defaultValue': 'jsonl'}
    """

    name: str
    label: str
    help_text: str
    optional: bool
    regexes: tuple[str, ...] = ()
    value_provider: bool = False
    param_type: str = "TEXT"
    enum_options: tuple[str, ...] = ()
    default: str | None = None

    def to_metadata(self) -> dict[str, Any]:
        """The parameter entry of a flex or classic template ``metadata.json``."""
        entry: dict[str, Any] = {"name": self.name, "label": self.label, "helpText": self.help_text, "isOptional": self.optional}
        if self.regexes:
            entry["regexes"] = list(self.regexes)
        entry["paramType"] = self.param_type
        if self.enum_options:
            entry["enumOptions"] = [{"value": option} for option in self.enum_options]
        if self.default is not None:
            entry["defaultValue"] = self.default
        return entry


def beam_argument_parser(exit_on_error: bool = True) -> argparse.ArgumentParser:
    """An empty parser of the kind Beam parses pipeline flags with (it knows ``add_value_provider_argument``).

    Beam offers no public one: `PipelineOptions` builds its private ``_BeamArgumentParser``
    itself. This is riverbeam's only use of it (the template metadata, `check_required` and the
    CLI's flag checks all come here), so a Beam release that renames it breaks one function.
    """
    from apache_beam.options.pipeline_options import _BeamArgumentParser

    return _BeamArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=exit_on_error)


def flag_classes(options_cls: type) -> list[type]:
    """`options_cls` and its bases below `PipelineOptions` that define flags, base first: the classes
    whose flags ``options.view_as(options_cls)`` has.

    >>> from apache_beam.options.pipeline_options import StandardOptions
    >>> class Mine(StandardOptions):
    ...     pass
    >>> [cls.__name__ for cls in flag_classes(Mine)]
    ['StandardOptions']
    """
    from apache_beam.options.pipeline_options import PipelineOptions

    if not (isinstance(options_cls, type) and issubclass(options_cls, PipelineOptions)):
        raise UsageError(f"{options_cls!r} is not a PipelineOptions subclass")
    return [cls for cls in reversed(options_cls.mro())
            if cls is not PipelineOptions and isinstance(cls, type) and issubclass(cls, PipelineOptions) and "_add_argparse_args" in vars(cls)]


def flag_actions(options_cls: type) -> list[argparse.Action]:
    """The argparse actions of the flags `options_cls` (and its bases below PipelineOptions) define, in order.

    >>> from apache_beam.options.pipeline_options import StandardOptions
    >>> [a.option_strings[0] for a in flag_actions(StandardOptions)][:2]
    ['--runner', '--streaming']
    """
    parser = beam_argument_parser()
    for cls in flag_classes(options_cls):
        cls._add_argparse_args(parser)  # pylint: disable=protected-access
    return [action for action in parser._actions if action.option_strings]


def _regexes(action: argparse.Action, value_type) -> tuple[str, ...]:
    if action.choices:
        return ("^(" + "|".join(re.escape(str(choice)) for choice in action.choices) + ")$",)
    if value_type is int:
        return (INTEGER_REGEX,)
    if value_type is float:
        return (NUMBER_REGEX,)
    return ()


def _param_type(action: argparse.Action, value_type, declared: str | None, where: str) -> str:
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)) or value_type is bool:
        inferred = "BOOLEAN"
    elif action.choices:
        inferred = "ENUM"
    elif value_type in (int, float):
        inferred = "NUMBER"
    else:
        inferred = None
    if declared is not None:
        if declared not in PARAM_TYPES:
            raise RiverbeamError(f"{where}: TEMPLATE_PARAM_TYPES names {declared!r}, not one of {', '.join(sorted(PARAM_TYPES))}")
        if inferred is not None and declared != inferred:
            raise RiverbeamError(f"{where}: TEMPLATE_PARAM_TYPES says {declared}, the flag itself is {inferred}")
        return declared
    return inferred or "TEXT"


def _default_text(default: Any) -> str | None:
    if default is None or default == argparse.SUPPRESS:
        return None
    if isinstance(default, bool):
        return "true" if default else "false"
    return str(default)


def describe_parameters(options_cls: type) -> list[TemplateParameter]:
    """The template parameters of an options class, in the order its flags are defined.

    Raises `RiverbeamError` when a flag has no help text (the template UI would show nothing) or
    ``TEMPLATE_PARAM_TYPES`` names a flag the class does not define or a type it cannot have.
    """
    from apache_beam.options.value_provider import RuntimeValueProvider

    declared: dict[str, str] = dict(getattr(options_cls, "TEMPLATE_PARAM_TYPES", {}) or {})
    owner = f"{options_cls.__module__}.{options_cls.__name__}"
    parameters = []
    for action in flag_actions(options_cls):
        long_flags = [flag for flag in action.option_strings if flag.startswith("--")]
        name = (long_flags or action.option_strings)[0].lstrip("-")
        value_provider = isinstance(action.default, RuntimeValueProvider)
        default = action.default.default_value if value_provider else action.default
        value_type = action.default.value_type if value_provider else action.type
        if not action.help or action.help == argparse.SUPPRESS:
            raise RiverbeamError(f"{owner}: flag --{name} has no help text")
        help_text = " ".join(action.help.split())
        if "%(" in help_text:
            help_text = help_text % {**vars(action), "default": default, "prog": "riverbeam"}
        required = bool(action.required or getattr(action, _REQUIRED_MARK, False))
        param_type = _param_type(action, value_type, declared.pop(name, None), f"{owner} --{name}")
        choices = tuple(str(choice) for choice in action.choices) if action.choices else ()
        parameters.append(TemplateParameter(
            name, label_of(name), help_text, not required, _regexes(action, value_type), value_provider,
            param_type, choices, None if required else _default_text(default),
        ))  # fmt: skip
    if declared:
        raise RiverbeamError(f"{owner}: TEMPLATE_PARAM_TYPES names flag(s) it does not define: {', '.join(sorted(declared))}")
    return parameters


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
