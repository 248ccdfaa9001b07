"""Typed errors shared by every layer, and the one mapping from an error to an exit code.

A `UsageError` (configuration, arguments) is the user's to fix: one line per problem, exit code 2.
Any other `RiverbeamError` is a runtime failure: one line, exit code 1. `run_main` is how every
entry point (the `riverbeam` command, ``python -m pipelines.<name>``, template launchers) turns
errors into that line and code, so no traceback reaches a user.

>>> def job():
...     raise ConfigError("kafka.topic", "required key is missing", source="job.yaml")
>>> import contextlib, sys
>>> with contextlib.redirect_stderr(sys.stdout):
...     code = run_main(job, prog="riverbeam")
riverbeam: error: job.yaml: kafka.topic: required key is missing
>>> code
2
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Callable, Iterable, Iterator

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class RiverbeamError(Exception):
    """Base class of the errors riverbeam reports to users as one line."""


class RunFailed(RiverbeamError):
    """A run that went through but whose counts show it did not do its job (learned nothing, refused
    most events): the summary is printed, then this one line, exit 1 (`core.summary.learning_failure`)."""


class UsageError(RiverbeamError):
    """The user asked for something that cannot be done as written (exit code 2)."""


class ConfigError(UsageError):
    """A configuration value is wrong.

    `source` names the file (or other origin), `path` the key path inside it.

    >>> str(ConfigError("kafka.bootstrap_servers", "expected a string, got 9092", source="job.yaml"))
    'job.yaml: kafka.bootstrap_servers: expected a string, got 9092'
    >>> str(ConfigError("lr", "expected a number").at(source="job.yaml", prefix="model"))
    'job.yaml: model.lr: expected a number'
    """

    def __init__(self, path: str, message: str, source: str | None = None):
        self.path = path
        self.message = message
        self.source = source
        parts = [p for p in (source, path, message) if p]
        super().__init__(": ".join(parts))

    @property
    def errors(self) -> list["ConfigError"]:
        """Every single error this one stands for (itself, or the members of a `ConfigErrors`)."""
        return [self]

    def at(self, source: str | None = None, prefix: str | None = None) -> "ConfigError":
        """The same error located in `source` (unless it names one already), its path below `prefix`."""
        path = self.path
        if prefix:
            path = f"{prefix}{'' if not path or path.startswith('[') else '.'}{path}"
        return ConfigError(path, self.message, source=self.source or source)


class ConfigErrors(ConfigError):
    """Several configuration errors of one file, reported together, one line each.

    >>> error = ConfigErrors([ConfigError("a", "unknown key"), ConfigError("b.c", "expected a number, got 'x'")])
    >>> print(error.at(source="job.yaml"))
    job.yaml: a: unknown key
    job.yaml: b.c: expected a number, got 'x'
    """

    def __init__(self, errors: Iterable[ConfigError]):
        self._errors = [single for error in errors for single in error.errors]
        if not self._errors:
            raise ValueError("ConfigErrors needs at least one error")
        first = self._errors[0]
        super().__init__(first.path, first.message, first.source)
        self.args = ("\n".join(str(e) for e in self._errors),)

    def __str__(self) -> str:
        return self.args[0]

    @property
    def errors(self) -> list[ConfigError]:
        return list(self._errors)

    def at(self, source: str | None = None, prefix: str | None = None) -> "ConfigErrors":
        return ConfigErrors([e.at(source, prefix) for e in self._errors])


def config_error(errors: list[ConfigError]) -> ConfigError:
    """One error for `errors`: the error itself when there is one, a `ConfigErrors` otherwise."""
    flat = [single for error in errors for single in error.errors]
    return flat[0] if len(flat) == 1 else ConfigErrors(flat)


class ConfigErrorCollector:
    """Runs independent checks and reports every `ConfigError` they raise at once.

    >>> collect = ConfigErrorCollector(source="job.yaml")
    >>> with collect.check(prefix="model"):
    ...     raise ConfigError("lr", "expected a number")
    >>> with collect.check():
    ...     raise ConfigError("kafka", "required key is missing")
    >>> collect.raise_if_any()
    Traceback (most recent call last):
    ...
    core.errors.ConfigErrors: job.yaml: model.lr: expected a number
    job.yaml: kafka: required key is missing
    """

    def __init__(self, source: str | None = None):
        self.source = source
        self.errors: list[ConfigError] = []

    @contextlib.contextmanager
    def check(self, prefix: str | None = None) -> Iterator[None]:
        try:
            yield
        except ConfigError as error:
            self.errors.extend(error.at(self.source, prefix).errors)

    def raise_if_any(self) -> None:
        if self.errors:
            raise config_error(self.errors)


def exit_code(error: BaseException) -> int:
    """The exit code for an error that ends a command.

    >>> exit_code(UsageError("x")), exit_code(RiverbeamError("x")), exit_code(KeyboardInterrupt())
    (2, 1, 130)
    """
    if isinstance(error, UsageError):
        return EXIT_USAGE
    if isinstance(error, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    return EXIT_FAILURE


def error_lines(error: BaseException, prog: str) -> list[str]:
    """What the user reads for `error`: one line per problem, prefixed by the program's name."""
    if isinstance(error, KeyboardInterrupt):
        return [f"{prog}: interrupted"]
    return [f"{prog}: error: {line}" for line in (str(error) or type(error).__name__).splitlines()]


def run_main(function: Callable[[], object], prog: str) -> int:
    """Call an entry point's `function` and return its exit code, reporting errors as one line each.

    `function` returns its exit code (anything but an int, such as a pipeline result, means 0).

    A closed output pipe (``riverbeam checkpoints show URI | head``) ends the command quietly.
    """
    try:
        result = function()
        return result if isinstance(result, int) else EXIT_OK
    except (RiverbeamError, KeyboardInterrupt) as error:
        for line in error_lines(error, prog):
            print(line, file=sys.stderr)
        return exit_code(error)
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_OK


def _silence_stdout() -> None:
    """After a closed pipe, point stdout at /dev/null so the interpreter's final flush stays quiet."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
