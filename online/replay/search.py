"""Hyperparameter search for replay: the ``search:`` section and Optuna trials scored by progressive validation.

A `SearchConfig` names parameters of one candidate model by step and path
(``LogisticRegression.optimizer.lr``) with a range or choices; `search_trials` asks Optuna for
values, builds each trial's model with `trial_model` and evaluates the trials in shared passes
over the data (`online.replay.engine.evaluate`). With a report directory it writes ``search.json``
(every trial), ``best.yaml`` (the replay configuration with the best trial's parameters: it runs
as is with ``riverbeam replay --config best.yaml``) and ``leaderboard.png``.
"""

from __future__ import annotations

import copy
import os
import time
from typing import TYPE_CHECKING, Any

import orjson
import pydantic

from online.config import ModelConfig, ReplayJobConfig
from online.learning.leaderboard import leaderboard
from online.models import build_metric, build_model, metric_name
from online.replay.engine import CHUNK_EVENTS, ReplayOptions, ReplayResult, evaluate
from online.replay.report import plot_search_leaderboard
from core.configuration import Section
from core.errors import ConfigError, ConfigErrorCollector, UsageError

if TYPE_CHECKING:
    from online.readers import InputFile


class SearchRange(Section):
    """The values one parameter may take: ``low``..``high`` (``log`` scale, ``step``; integers when
    both bounds are integers) or a list of ``choices``."""

    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: list[Any] | None = None

    @pydantic.model_validator(mode="after")
    def _range_or_choices(self) -> "SearchRange":
        if self.choices is not None:
            if self.low is not None or self.high is not None or not self.choices:
                raise ValueError("give either non-empty choices or low and high")
        elif self.low is None or self.high is None or not self.low < self.high:
            raise ValueError("give low < high (or choices)")
        elif self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self


class SearchConfig(Section):
    """``search:`` in a replay configuration: which candidate to tune and the ranges of its parameters.

    A parameter is named by the step's class then the parameter, descending through nested
    objects by their parameter names: ``LogisticRegression.optimizer.lr`` is the ``lr`` of the
    optimizer of the ``LogisticRegression`` step (``{optim.SGD: {lr: ...}}`` in the pipeline).

    >>> SearchConfig(params={"LogisticRegression.l2": {"low": 0.0, "high": 0.1}}).params["LogisticRegression.l2"].high
    0.1
    """

    model: int | str = 0
    metric: str | None = None
    parallel: int | None = pydantic.Field(default=None, gt=0)
    seed: int = 0
    params: dict[str, SearchRange] = pydantic.Field(min_length=1)


def search_model(job: ReplayJobConfig, search: SearchConfig) -> ModelConfig:
    """The candidate `search.model` names (index or name)."""
    candidates = job.candidates
    if isinstance(search.model, int):
        if not 0 <= search.model < len(candidates):
            raise ConfigError("search.model", f"there are {len(candidates)} candidate model(s), no index {search.model}")
        return candidates[search.model]
    for candidate in candidates:
        if candidate.name == search.model:
            return candidate
    raise ConfigError("search.model", f"no candidate is named {search.model!r}")


def check_search(job: ReplayJobConfig, search: SearchConfig) -> None:
    """Check that every searched parameter exists on the tuned model (each wrong one named).

    >>> job = ReplayJobConfig.model_validate({"model": {"pipeline": [{"linear_model.LinearRegression": {}}], "metrics": ["MAE"]}})
    >>> check_search(job, SearchConfig(params={"LinearRegression.l3": {"low": 0.0, "high": 1.0}}))
    Traceback (most recent call last):
    ...
    core.errors.ConfigError: search.params.LinearRegression.l3: ...
    """
    target = search_model(job, search)
    collect = ConfigErrorCollector()
    for name, spec in search.params.items():
        value = spec.choices[0] if spec.choices is not None else spec.low
        with collect.check():
            try:
                build_model(trial_model(target, {name: value}))
            except ConfigError as error:
                where = error.path if error.path.startswith("search.") else f"search.params.{name}"
                raise ConfigError(where, error.message) from None
    collect.raise_if_any()


def trial_model(model: ModelConfig, values: dict[str, Any], name: str | None = None) -> ModelConfig:
    """A copy of `model` with parameters set by search names (see `SearchConfig`).

    >>> base = ModelConfig(pipeline=[{"preprocessing.StandardScaler": {}},
    ...                              {"linear_model.LogisticRegression": {"optimizer": {"optim.SGD": {"lr": 0.1}}}}])
    >>> trial_model(base, {"LogisticRegression.optimizer.lr": 0.5}).pipeline[1]
    {'linear_model.LogisticRegression': {'optimizer': {'optim.SGD': {'lr': 0.5}}}}
    """
    pipeline = copy.deepcopy(model.pipeline)
    for dotted, value in values.items():
        step_name, *params = dotted.split(".")
        path = f"search.params.{dotted}"
        if not params:
            raise ConfigError(path, "name a step and a parameter, e.g. LogisticRegression.l2")
        steps = [step for step in pipeline if next(iter(step)).rpartition(".")[2] == step_name]
        if len(steps) != 1:
            raise ConfigError(path, f"{'no' if not steps else 'more than one'} pipeline step is a {step_name}")
        (class_name, node), = steps[0].items()
        if node is None:
            node = steps[0][class_name] = {}
        for i, param in enumerate(params[:-1]):
            child = node.get(param)
            if not (isinstance(child, dict) and len(child) == 1 and "." in next(iter(child))):
                raise ConfigError(path, f"{'.'.join([step_name, *params[: i + 1]])} is not set to an object in the pipeline")
            (inner, params_of), = child.items()
            if params_of is None:
                params_of = child[inner] = {}
            node = params_of
        node[params[-1]] = value
    return model.model_copy(update={"pipeline": pipeline, "name": name or model.name})


def search_trials(job: ReplayJobConfig, search: SearchConfig, files: list[InputFile], options: ReplayOptions) -> ReplayResult:
    """Optuna trials over `search.params`; `search.parallel` trials (default: all) learn in one pass.

    The objective is the trial's final progressive-validation value of `search.metric` (default:
    the model's headline metric), maximised or minimised as the River metric says.
    """

    try:
        import optuna
    except ImportError:
        raise UsageError("--search needs optuna (pip install 'riverbeam[reports]')") from None

    started = time.monotonic()
    target = base = search_model(job, search)
    names = [metric_name(build_metric(spec, f"metrics[{i}]")) for i, spec in enumerate(base.metrics)]
    metric = search.metric or names[0]
    if metric not in names:
        raise ConfigError("search.metric", f"{metric} is not among the model's metrics {names}")
    first = names.index(metric)
    base = base.model_copy(update={"metrics": [base.metrics[first]] + [m for i, m in enumerate(base.metrics) if i != first]})
    headline = build_metric(base.metrics[0], "search.metric")
    maximise = headline.bigger_is_better
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if maximise else "minimize", sampler=optuna.samplers.TPESampler(seed=search.seed))
    per_pass = search.parallel or options.search
    trials_done: list[dict] = []
    lines = events = bad = 0
    errors_path = options.errors_path
    # Trials are ranked on their final values: no report rows are written, so no records are counted for them.
    pass_options = {**options.__dict__, "report_every": options.report_every or CHUNK_EVENTS}
    while len(trials_done) < options.search:
        batch = [study.ask() for _ in range(min(per_pass, options.search - len(trials_done)))]
        models = [trial_model(base, {name: _suggest(trial, name, spec) for name, spec in search.params.items()}, name=f"trial {trial.number}")
                  for trial in batch]
        result = evaluate(job, files, ReplayOptions(**{**pass_options, "errors_path": errors_path}), models=models, write_report=False)
        errors_path = None  # bad lines are the same on every pass: report them once
        lines, events, bad = result.lines, result.events, max(bad, result.bad_lines)
        by_name = {row["model"]: row for row in result.leaderboard}
        for trial, model in zip(batch, models):
            value = by_name[model.name]["metrics"].get(metric)
            study.tell(trial, value if value is not None else float("nan"), state=None if value is not None else optuna.trial.TrialState.FAIL)
            trials_done.append({"trial": trial.number, "params": trial.params, "value": value})
    trials_by_name = {f"trial {t['trial']}": t for t in trials_done}
    board = leaderboard({name: {"events_seen": lines, "events_learned": events, "metrics": {metric: t["value"]}} for name, t in trials_by_name.items()}, headline)
    ranked = [trials_by_name[row["model"]] for row in board]
    for row in board:
        row["params"] = trials_by_name[row["model"]]["params"]
    summary = {"metric": metric, "direction": "maximize" if maximise else "minimize", "best": ranked[0], "trials": ranked}
    out = ReplayResult("search", len(files), lines, events, bad, seconds=time.monotonic() - started, leaderboard=board, search=summary)
    if options.report_dir:
        os.makedirs(options.report_dir, exist_ok=True)
        with open(os.path.join(options.report_dir, "search.json"), "wb") as handle:
            handle.write(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
        if ranked[0]["value"] is not None:
            with open(os.path.join(options.report_dir, "best.yaml"), "w") as handle:
                handle.write(best_config_yaml(job, trial_model(target, ranked[0]["params"]), ranked[0], metric, len(trials_done)))
        plot_search_leaderboard(board, metric, maximise, os.path.join(options.report_dir, "leaderboard.png"))
        out.report_dir = options.report_dir
    return out


def best_config_yaml(job: ReplayJobConfig, model: ModelConfig, best: dict, metric: str, trials: int) -> str:
    """The replay configuration of `job` with `model` as its one model, as YAML that runs as is.

    The ``events``, ``features`` and ``checkpoint`` sections are kept as the job has them; ``kafka``
    (backfill's target, unrelated to the model and possibly holding credentials resolved from the
    environment) and ``search`` are left out.

    >>> import yaml
    >>> job = ReplayJobConfig.model_validate({"models": [{"pipeline": [{"linear_model.LinearRegression": {}}], "metrics": ["MAE"]}],
    ...                                       "events": {"target": "y"}})
    >>> model = trial_model(job.candidates[0], {"LinearRegression.l2": 0.5})
    >>> text = best_config_yaml(job, model, {"trial": 3, "value": 1.25, "params": {"LinearRegression.l2": 0.5}}, "MAE", 8)
    >>> print(text.splitlines()[0])
    # riverbeam replay search: best of 8 trials is trial 3, MAE = 1.25
    >>> loaded = yaml.safe_load(text)
    >>> loaded["model"]["pipeline"], loaded["events"]["target"], "models" in loaded
    ([{'linear_model.LinearRegression': {'l2': 0.5}}], 'y', False)
    """
    import yaml

    data = {"model": model.model_dump(mode="json", exclude_defaults=True)}
    for section in ("events", "features", "checkpoint"):
        value = getattr(job, section)
        dumped = value.model_dump(mode="json", exclude_defaults=True) if value is not None else None
        if dumped:  # a section left at its defaults is left out
            data[section] = dumped
    params = ", ".join(f"{name}={value!r}" for name, value in best["params"].items())
    header = (f"# riverbeam replay search: best of {trials} trials is trial {best['trial']}, {metric} = {best['value']:.6g}\n"
              f"# parameters: {params}\n")
    return header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def _suggest(trial, name: str, spec: SearchRange):
    if spec.choices is not None:
        return trial.suggest_categorical(name, spec.choices)
    if isinstance(spec.low, int) and isinstance(spec.high, int) and (spec.step is None or isinstance(spec.step, int)):
        return trial.suggest_int(name, spec.low, spec.high, step=spec.step or 1, log=spec.log)
    return trial.suggest_float(name, float(spec.low), float(spec.high), step=spec.step, log=spec.log)
