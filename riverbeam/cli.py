"""The `riverbeam` command: one entry point for every job.

Each command group lives in `riverbeam.commands.<group>` and exposes ``register(subparsers)``;
handlers parse, load configuration and call one function of `online`, `transforms` or
`pipelines`. Heavy modules (apache_beam, tensorflow) are imported only inside the handlers
that need them, so ``riverbeam --help`` and the daemon start fast.

Exit codes (`core.errors.run_main`): 0 success; 2 usage or configuration error (one line per
problem); 1 runtime failure (one line); a closed output pipe ends quietly.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from riverbeam import __version__
from core.errors import RiverbeamError, run_main

COMMAND_GROUPS = (
    "config",
    "local",
    "models",
    "checkpoints",
    "predict",
    "serve",
    "consume",
    "demo",
    "replay",
    "preprocess",
    "templates",
    "beam_jobs",
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # usage errors: one line, exit 2
        self.print_usage(sys.stderr)
        self.exit(2, f"riverbeam: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="riverbeam",
        description="Preprocess data with Apache Beam and learn River models online from Kafka.",
    )
    parser.add_argument("--version", action="version", version=f"riverbeam {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for group in COMMAND_GROUPS:
        importlib.import_module(f"riverbeam.commands.{group}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the `riverbeam` command line and return its exit code."""
    if os.environ.get("STORAGE_EMULATOR_HOST"):  # an emulator never needs the GCE metadata probe
        os.environ.setdefault("NO_GCE_CHECK", "true")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    return run_main(lambda: _with_credentials_errors(args.handler, args), prog="riverbeam")


def _with_credentials_errors(handler, args):
    """Run a handler; missing cloud credentials become one line saying what is missing (never a traceback)."""
    try:
        return handler(args)
    except Exception as error:
        if type(error).__module__.startswith(("google.auth", "botocore")) and "Credential" in type(error).__name__:
            raise RiverbeamError(
                f"no cloud credentials: {type(error).__name__}. For gs:// run `gcloud auth application-default login` or set "
                "GOOGLE_APPLICATION_CREDENTIALS (STORAGE_EMULATOR_HOST for the local emulator); for s3:// set AWS credentials"
            ) from None
        raise

if __name__ == "__main__":
    sys.exit(main())
