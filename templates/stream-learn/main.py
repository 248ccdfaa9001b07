"""Flex template entry point of the stream-learn pipeline (FLEX_TEMPLATE_PYTHON_PY_FILE).

The launcher runs this file with the template's parameters as flags; the pipeline itself is the
installed `pipelines.stream_learn` module, so classes are imported by name on the workers too.
"""

import logging

from pipelines.stream_learn import run

if __name__ == "__main__":
    logging.getLogger().setLevel(logging.INFO)
    run()
