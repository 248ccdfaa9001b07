"""Flex template entry point of the stream-learn pipeline (FLEX_TEMPLATE_PYTHON_PY_FILE).

The launcher runs this file with the template's parameters as flags; it builds the job, submits it
and returns (Dataflow runs it on the worker image). The pipeline is the installed
`pipelines.stream_learn` module, so the workers import its DoFns by the same names.
"""

import logging
import sys

from core.errors import run_main
from pipelines.stream_learn import run
from pipelines.templates import launcher_argv

if __name__ == "__main__":
    logging.getLogger().setLevel(logging.INFO)
    sys.exit(run_main(lambda: run(launcher_argv(sys.argv[1:])), prog="stream-learn template"))
