"""Flex template entry point of the preprocess pipeline (FLEX_TEMPLATE_PYTHON_PY_FILE).

The launcher runs this file with the template's parameters as flags; the pipeline itself is the
installed `pipelines.preprocess` module, so classes are imported by name on the workers too.
"""

import logging

from pipelines.preprocess import run

if __name__ == "__main__":
    logging.getLogger().setLevel(logging.INFO)
    run()
