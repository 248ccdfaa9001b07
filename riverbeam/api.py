"""riverbeam from Python: what the commands do, for notebooks and for embedding.

Everything is reachable from ``import riverbeam`` (lazily: importing it costs nothing until a
name is used). A model is a River object, a YAML-like spec or an `online.config.ModelConfig`;
a River object is turned into the spec River's own ``clone()`` rebuilds it from, so it is
recorded in checkpoints like a YAML model and restored by any job.

Learn event by event, River's progressive validation order (predict, score, then learn):

>>> import riverbeam
>>> from river import datasets, evaluate, linear_model, metrics, preprocessing
>>> model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
>>> learner = riverbeam.learner(model, metrics=["Accuracy", "LogLoss"], target="label")
>>> for x, y in datasets.Phishing():
...     _ = learner.process({**x, "label": y})
>>> learner.metric_values()
{'Accuracy': 0.8928, 'LogLoss': 0.3301...}
>>> evaluate.progressive_val_score(datasets.Phishing(), model.clone(), metrics.Accuracy())
Accuracy: 89.28%

Replay history from files, with progress rows like River's ``iter_progressive_val_score``:

>>> import pathlib, tempfile, orjson
>>> path = pathlib.Path(tempfile.mkdtemp()) / "phishing.jsonl"
>>> _ = path.write_bytes(b"".join(orjson.dumps({**x, "label": y}) + b"\\n" for x, y in datasets.Phishing()))
>>> for row in riverbeam.iter_replay(model, [str(path)], target="label", every=500):
...     print(row["events"], round(row["Accuracy"], 4))
500 0.868
1000 0.891
1250 0.8928
>>> riverbeam.replay(model, [str(path)], target="label").metrics
{'Accuracy': 0.8928}
"""

from __future__ import annotations

import threading
from typing import Any, Iterator

from river.base import Estimator as RiverEstimator

from core.configuration import load_config as _load_config
from core.configuration import parse_config
from core.errors import UsageError
from core.summary import JobSummary
from online.config import ConsumeJobConfig, EventsConfig, ModelConfig, ReplayJobConfig
from online.learning.learner import Learner
from online.models import describe_model

__all__ = ["model_config", "learner", "replay_job", "iter_replay", "replay", "consume", "load_config"]


def model_config(model: Any, metrics: list | tuple = ("Accuracy",), name: str | None = None) -> ModelConfig:
    """A `ModelConfig` from a River model object, a pipeline spec (list of steps) or a `ModelConfig`.

    >>> from river import linear_model
    >>> model_config(linear_model.LinearRegression(), metrics=["MAE"]).pipeline[0]["linear_model.LinearRegression"]["l2"]
    0.0
    """
    if isinstance(model, ModelConfig):
        return model
    if isinstance(model, dict):
        config = parse_config(model, ModelConfig, environ={})
        config.check_semantics()
        return config
    if isinstance(model, list):
        pipeline, modules = model, []
    else:
        pipeline, modules = describe_model(model)
    config = ModelConfig(name=name, custom_modules=modules, pipeline=pipeline, metrics=list(metrics))
    config.check_semantics()
    return config


def learner(model: Any, metrics: list | tuple = ("Accuracy",), *, transform=None, **events: Any) -> Learner:
    """A `online.learning.learner.Learner` for `model`; `events` are the ``events:`` settings (``target``, ``key``, ``id``, ``time``...).

    Given a River object and no ``key``, the learner learns **that object**, as ``model.learn_one``
    would (``learner.model is model``); with a ``key`` each key learns its own fresh copy. A
    checkpoint (`Learner.snapshot`) continues with a compact copy: `Learner.model` is always the one
    that learns. No call changes the caller's events.

    >>> from river import linear_model
    >>> model = linear_model.LogisticRegression()
    >>> learned = learner(model, target="y")
    >>> _ = learned.process({"x": 1.0, "y": True})
    >>> learned.model is model, model.weights
    (True, {'x': 0.005})
    """
    built = Learner(model_config(model, metrics), EventsConfig(**events), transform=transform)
    if isinstance(model, RiverEstimator) and built.events_config.key is None:
        built.state.models[None] = model
    return built


def replay_job(job: Any, **events: Any) -> ReplayJobConfig:
    """A `ReplayJobConfig` from a YAML path, a mapping, a `ReplayJobConfig`, or a model (with `events` settings)."""
    if isinstance(job, ReplayJobConfig):
        return job
    if isinstance(job, str):
        from online.replay.job import load_replay_job

        return load_replay_job(job)[0]
    if isinstance(job, dict) and ("model" in job or "models" in job):
        config = parse_config(job, ReplayJobConfig, environ={})
        config.check_semantics()
        return config
    metrics = events.pop("metrics", ("Accuracy",))
    return ReplayJobConfig(model=model_config(job, metrics), events=EventsConfig(**events))


def iter_replay(job: Any, inputs: list[str], *, every: int | None = None, **events: Any) -> Iterator[dict]:
    """Progressive validation over files, yielding a row per candidate every `every` events.

    Each row holds ``events``, ``lines``, ``model``, every metric by name and ``elapsed`` seconds
    (the same rows as ``riverbeam replay --mode evaluate --report``); about 100 rows by default.
    """
    from online.readers import expand_inputs
    from online.replay.engine import Evaluation, ReplayOptions

    config = replay_job(job, **events)
    options = ReplayOptions(inputs=list(inputs), mode="evaluate", report_every=every, progress=False)
    yield from Evaluation(config, expand_inputs(options.inputs, options.input_format), options)


def replay(job: Any, inputs: list[str], *, mode: str = "evaluate", **settings: Any) -> JobSummary:
    """Run ``riverbeam replay`` from Python and return its summary (`core.summary.JobSummary`).

    `settings` are `online.replay.engine.ReplayOptions` fields (``checkpoint_uri``, ``report_dir``,
    ``errors_path``, ``max_errors``, ...) and, for a model given as an object, the ``events:``
    settings (``target``, ...).
    """
    from online.replay.engine import ReplayOptions
    from online.replay.job import run_replay

    option_names = set(ReplayOptions.__dataclass_fields__)
    options = {k: v for k, v in settings.items() if k in option_names}
    events = {k: v for k, v in settings.items() if k not in option_names}
    options.setdefault("progress", False)
    summary = run_replay(replay_job(job, **events), ReplayOptions(inputs=list(inputs), mode=mode, **options)).job_summary()
    summary.raise_for_failure()
    return summary


def consume(config: Any, *, until_caught_up: bool = False, stop: threading.Event | None = None,
            allow_model_change: bool = False) -> dict:
    """Run the consumer daemon in this process (any thread) until `stop` is set or, with
    `until_caught_up`, the end of the topic; return its summary. `config` is a YAML path, a mapping
    or a `ConsumeJobConfig`. Signals are left to the embedding program. With ``consume.workers`` above 1
    (per-key models), the workers run as child processes under a supervisor in this process
    (`online.consume.workers`) and the summary merges theirs."""
    from online.consume.daemon import Daemon

    if isinstance(config, str):
        config = _load_config(config, ConsumeJobConfig)
    elif isinstance(config, dict):
        config = parse_config(config, ConsumeJobConfig, environ={})
        config.check_semantics()
    elif not isinstance(config, ConsumeJobConfig):
        raise UsageError(f"consume takes a YAML path, a mapping or a ConsumeJobConfig, not {type(config).__name__}")
    if config.consume.workers > 1:
        from online.consume.workers import run_workers

        return run_workers(config, config.consume.workers, until_caught_up=until_caught_up, stop=stop, allow_model_change=allow_model_change)
    daemon = Daemon(config, until_caught_up=until_caught_up, progress=False, allow_model_change=allow_model_change)
    if stop is not None:
        daemon.stopping = stop
    return daemon.run()


def load_config(path: str, kind: str = "consume"):
    """A job's configuration file validated into its typed object (``consume``, ``replay``, ``preprocess``, ``serve``)."""
    from online.config import job_config_class

    if kind == "replay":
        return replay_job(path)
    return _load_config(path, job_config_class(kind))
