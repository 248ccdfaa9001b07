"""The flags of the Beam commands (``stream-learn``, ``archive``, ``preprocess``).

* ``--help`` lists the pipeline's own flags, read from its `PipelineOptions` subclass; the
  pipeline module is imported only when that help is shown or the command runs, so
  ``riverbeam --help`` never pays for Beam's import.
* Every argument riverbeam does not parse itself goes to Beam (``beam_args``) once
  `check_beam_args` has parsed it as Beam does, with the pipeline's options class and Beam's own
  (``--runner``, ``--project``, ``--region``, ``--temp_location``, ...). Beam only warns about the
  rest and runs without them; here they are refused: exit 2, one line, the closest flag suggested.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib
import logging
import os
import re
import sys
import threading
from typing import Iterator

from core.errors import UsageError

BEAM_FLAGS_NOTE = (
    "Beam's own flags are accepted too: --runner, --project, --region, "
    "--temp_location, --staging_location, --setup_file, --streaming, --job_name, --flink_master, --environment_type, ... "
    "(every flag of Beam's PipelineOptions). Any other flag is refused."
)


def options_class(target: str) -> type:
    """The `PipelineOptions` subclass named ``"module:Class"`` (the module is imported now).

    >>> options_class("apache_beam.options.pipeline_options:StandardOptions").__name__
    'StandardOptions'
    """
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def accepted_flags_parser(options_cls: type | None) -> argparse.ArgumentParser:
    """A parser of what Beam parses for this pipeline: Beam's own options classes and the pipeline's.

    Beam parses with every `PipelineOptions` subclass imported in the process; other pipelines'
    classes are left out here, so a flag of another pipeline is refused as Beam would ignore it.
    """
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipelines.options import beam_argument_parser, flag_classes

    classes: dict[str, type] = {}
    for cls in PipelineOptions.__subclasses__():  # as PipelineOptions.get_all_options does
        if cls.__module__.startswith("apache_beam."):
            classes.setdefault(f"{cls.__module__}.{cls.__qualname__}", cls)
    for cls in flag_classes(options_cls) if options_cls is not None else []:
        classes.setdefault(f"{cls.__module__}.{cls.__qualname__}", cls)
    parser = beam_argument_parser(exit_on_error=False)
    for cls in classes.values():
        cls._add_argparse_args(parser)  # pylint: disable=protected-access
    return parser


def check_beam_args(argv: list[str], options_cls: type | None, command: str = "COMMAND") -> list[str]:
    """`argv` for Beam (without ``--`` separators), after checking that Beam parses every argument.

    For an embedded Flink (``--runner=FlinkRunner`` without ``--flink_master``) or a local Spark
    (``--runner=SparkRunner``) riverbeam's job server jar and LOOPBACK workers are added unless given
    (`pipelines.java_services.runner_args`). On Flink the Flink runner's own flags are accepted too
    (``--checkpointing_interval``: `pipelines.java_services.add_runner_flags`).

    Raises `UsageError` (exit 2) naming every flag neither the pipeline nor Beam defines, each with
    the closest known flag, or a known flag's bad value.

    >>> check_beam_args(["--runner=FnApiRunner", "--", "--temp_location", "/tmp"], None)
    ['--runner=FnApiRunner', '--temp_location', '/tmp']
    >>> check_beam_args(["--runer=FnApiRunner", "--streamingg"], None, "archive")
    Traceback (most recent call last):
    ...
    core.errors.UsageError: archive: unknown flags --runer (did you mean --runner?), --streamingg (did you mean --streaming?): see riverbeam archive --help
    """
    argv = [arg for arg in argv if arg != "--"]
    parser = accepted_flags_parser(options_cls)
    from pipelines.java_services import add_runner_flags

    add_runner_flags(parser, argv)  # on Flink, the Flink runner's own flags (--checkpointing_interval ...), passed to its job server
    try:
        _, unknown = parser.parse_known_args(argv)
    except argparse.ArgumentError as error:  # a known flag with a bad value (a wrong choice, not a number)
        raise UsageError(f"{command}: {error}") from None
    if not unknown:
        from pipelines.java_services import runner_args

        return runner_args(argv)  # an embedded Flink gets riverbeam's job server jar, never Beam's download
    known = [flag for action in parser._actions for flag in action.option_strings if flag.startswith("--")]
    problems = []
    for arg in unknown:
        if arg.startswith("-"):
            name = arg.split("=", 1)[0]
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
            problems.append(f"{name} (did you mean {close[0]}?)" if close else name)
        elif not problems:  # a stray value, not the value of a refused flag
            problems.append(f"{arg!r} (flags take the form --name=value)")
    noun = "unknown flag" if len(problems) == 1 else "unknown flags"
    raise UsageError(f"{command}: {noun} {', '.join(problems)}: see riverbeam {command} --help")


def with_beam_flags(parser_class: type, options: str | None = None) -> type:
    """The parser class of a Beam command: arguments it does not know are kept as ``beam_args``,
    and its help lists the flags of the pipeline's options class `options` (``"module:Class"``)."""

    class BeamFlagsParser(parser_class):
        def parse_known_args(self, args=None, namespace=None):
            namespace, unknown = super().parse_known_args(args, namespace)
            namespace.beam_args = list(getattr(namespace, "beam_args", None) or []) + list(unknown)
            return namespace, []

        def format_help(self) -> str:
            text = super().format_help()
            if options is None:
                return text
            from pipelines.options import flag_actions

            options_cls = options_class(options)
            own = [a for a in flag_actions(options_cls) if not any(f in self._option_string_actions for f in a.option_strings)]
            formatter = self._get_formatter()
            formatter.start_section(f"pipeline flags ({options_cls.__name__}; also as --name=value)")
            formatter.add_arguments(own)
            formatter.end_section()
            formatter.add_text(BEAM_FLAGS_NOTE)
            return text.rstrip("\n") + "\n\n" + formatter.format_help()

    return BeamFlagsParser


# Lines TensorFlow's and gRPC's native code (absl logging) writes straight to file descriptor 2.
NATIVE_LOG_LINE = re.compile(rb"^(?:[IWEF]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ \S+:\d+\]|WARNING: All log messages before absl::InitializeLog|"
                             rb"To enable the following instructions:)")
QUIET_LOGGERS = ("apache_beam", "tensorflow", "tensorflow_transform", "tfx_bsl", "absl", "root")


@contextlib.contextmanager
def quiet_beam_and_tensorflow(verbose: bool = False) -> Iterator[None]:
    """Silence Beam's and TensorFlow's chatter (Python logging below ERROR, native absl lines) unless `verbose`.

    The native lines are written by C++ straight to file descriptor 2, so stderr is passed
    through a filter for the duration: every other line (riverbeam's own, a warning a user needs,
    a crash) goes through unchanged, and the real stderr is back before the summary or an error
    is printed.

    >>> bool(NATIVE_LOG_LINE.match(b"I0000 00:00:1796125438.014165   30324 port.cc:153] oneDNN custom operations are on."))
    True
    >>> bool(NATIVE_LOG_LINE.match(b"preprocess: error: no file matches x"))
    False
    """
    if verbose:
        yield
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    levels = {name: logging.getLogger(None if name == "root" else name).level for name in QUIET_LOGGERS}
    for name in QUIET_LOGGERS:
        logging.getLogger(None if name == "root" else name).setLevel(logging.ERROR)
    sys.stderr.flush()
    real_stderr = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward() -> None:
        with os.fdopen(read_end, "rb") as lines:
            for line in lines:
                if not NATIVE_LOG_LINE.match(line):
                    os.write(real_stderr, line)

    pump = threading.Thread(target=forward, name="stderr-filter", daemon=True)
    pump.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(real_stderr, 2)  # the pipe's last writer is gone: the filter reads to the end and stops
        pump.join(timeout=5)
        os.close(real_stderr)
        for name, level in levels.items():
            logging.getLogger(None if name == "root" else name).setLevel(level)
