"""riverbeam: Apache Beam preprocessing and online River learning from event streams.

The package at the top of riverbeam's layers: the `riverbeam` command (`riverbeam.cli`) and
the Python API. The shared lowest layer is the `core` package; see its docstring for the layering.
"""

from core import __version__

__all__ = ["__version__"]
