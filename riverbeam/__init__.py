"""riverbeam: Apache Beam preprocessing and online River learning from event streams.

The package at the top of riverbeam's layers: the `riverbeam` command (`riverbeam.cli`) and the
Python API (`riverbeam.api`, whose names are reachable from here). The shared lowest layer is
the `core` package; see its docstring for the layering. Names are imported on first use, so
``riverbeam --help`` stays fast.

>>> import riverbeam
>>> sorted(riverbeam.__all__)[:4]
['CheckpointStore', 'JobSummary', 'Learner', 'RunFailed']
"""

from __future__ import annotations

import importlib

from core import __version__

_LAZY = {
    "Learner": "online.learning.learner",
    "CheckpointStore": "online.checkpoints.store",
    "open_checkpoint_store": "online.checkpoints.persistence",
    "checkpoint_store": "online.checkpoints.persistence",
    "restore_learner": "online.checkpoints.persistence",
    "JobSummary": "core.summary",
    "RunFailed": "core.errors",
    **{name: "riverbeam.api" for name in ("model_config", "learner", "replay_job", "iter_replay", "replay", "consume", "load_config")},
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'riverbeam' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
