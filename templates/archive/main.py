"""Flex template entry point of the archive pipeline (FLEX_TEMPLATE_PYTHON_PY_FILE).

The launcher runs this file with the template's parameters as flags; the pipeline itself is the
installed `pipelines.archive` module, so classes are imported by name on the workers too.
"""

import logging

from pipelines.archive import run

if __name__ == "__main__":
    logging.getLogger().setLevel(logging.INFO)
    run()
