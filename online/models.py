"""Build River objects from the declarative model specification.

Names resolve only inside the `river` package, to public classes deriving from
`river.base.Base` (estimators, optimizers, schedulers, initializers, metrics, drift detectors):
no arbitrary imports and no user-supplied pickles.

>>> model = build_pipeline([
...     {"preprocessing.StandardScaler": {}},
...     {"linear_model.LogisticRegression": {"optimizer": {"optim.SGD": {"lr": 0.1}}}},
... ])
>>> list(model.steps)
['StandardScaler', 'LogisticRegression']
>>> model["LogisticRegression"].optimizer.lr.learning_rate
0.1
>>> build_pipeline([{"linear_model.LogisticRegresion": {}}])
Traceback (most recent call last):
...
core.errors.ConfigError: model.pipeline[0]: river has no linear_model.LogisticRegresion (did you mean LogisticRegression?)
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import pkgutil
from functools import lru_cache
from typing import Any, Callable

from river import base, compose, metrics, utils

from core.errors import ConfigError

_RIVER_METRICS_MODULE = "metrics"


def _public_classes(module) -> dict[str, type]:
    return {
        name: obj
        for name, obj in vars(module).items()
        if not name.startswith("_") and inspect.isclass(obj) and issubclass(obj, base.Base)
    }


def resolve_river_class(name: str, path: str) -> type:
    """Resolve ``"module.Class"`` inside `river`, or raise `ConfigError` with a suggestion.

    >>> resolve_river_class("optim.SGD", "x").__name__
    'SGD'
    >>> resolve_river_class("os.system", "x")
    Traceback (most recent call last):
    ...
    core.errors.ConfigError: x: river has no module os (names are river modules such as linear_model.LogisticRegression, or classes of the modules listed in model.custom_modules)
    """
    module_name, _, class_name = name.rpartition(".")
    if not module_name or not class_name or module_name.startswith((".", "_")) or "._" in name:
        raise ConfigError(path, f"{name!r} is not of the form module.Class (for example linear_model.LogisticRegression)")
    try:
        module = importlib.import_module(f"river.{module_name}")
    except ImportError:
        suggestion = difflib.get_close_matches(module_name, river_modules(), n=1)
        hint = f" (did you mean {suggestion[0]}?)" if suggestion else " (names are river modules such as linear_model.LogisticRegression, or classes of the modules listed in model.custom_modules)"
        raise ConfigError(path, f"river has no module {module_name}{hint}") from None
    classes = _public_classes(module)
    if class_name not in classes:
        suggestion = difflib.get_close_matches(class_name, list(classes), n=1)
        hint = f" (did you mean {suggestion[0]}?)" if suggestion else ""
        raise ConfigError(path, f"river has no {name}{hint}")
    return classes[class_name]


@lru_cache(maxsize=1)
def river_modules() -> list[str]:
    """The public submodules of `river` (dotted, without the ``river.`` prefix)."""
    import river

    names = []
    for info in pkgutil.walk_packages(river.__path__, prefix=""):
        if any(part.startswith("_") for part in info.name.split(".")) or ".test" in info.name or info.name.startswith("test"):
            continue
        names.append(info.name)
    return sorted(names)


def _is_object_spec(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(next(iter(value)), str) and "." in next(iter(value))


def resolve_class(name: str, path: str, modules: tuple[str, ...] | list[str] = ()) -> type:
    """Resolve ``"module.Class"`` in one of the user's listed `modules` (``custom_modules``), else in `river`.

    A user's class must derive from `river.base.Base` (an estimator, transformer, optimizer...),
    exactly as River's own do; nothing outside `river` and the listed modules is importable.

    >>> resolve_class("collections.Counter", "x", modules=["collections"])
    Traceback (most recent call last):
    ...
    core.errors.ConfigError: x: collections.Counter is not a River object (it must derive from river.base.Base)
    """
    module_name = name.rpartition(".")[0]
    listed = next((m for m in modules if module_name == m or module_name.startswith(m + ".")), None)
    if listed is None:
        return resolve_river_class(name, path)
    class_name = name.rpartition(".")[2]
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # the user's module failed to import: say so in one line
        raise ConfigError(path, f"cannot import {module_name} (listed in custom_modules): {type(error).__name__}: {error}") from None
    cls = getattr(module, class_name, None)
    if cls is None or class_name.startswith("_"):
        public = [n for n, c in vars(module).items() if inspect.isclass(c) and not n.startswith("_")]
        suggestion = difflib.get_close_matches(class_name, public, n=1)
        hint = f" (did you mean {suggestion[0]}?)" if suggestion else ""
        raise ConfigError(path, f"{module_name} has no {class_name}{hint}")
    if not (inspect.isclass(cls) and issubclass(cls, base.Base)):
        raise ConfigError(path, f"{name} is not a River object (it must derive from river.base.Base)")
    return cls


def build_object(spec: dict, path: str, modules: tuple[str, ...] | list[str] = ()) -> Any:
    """Build one River object from ``{"module.Class": {param: value}}``; parameters may nest.

    Names resolve inside `river`, or in the user's `modules` (see `resolve_class`).
    """
    (name, params), = spec.items()
    cls = resolve_class(name, path, modules)
    params = params or {}
    if not isinstance(params, dict):
        raise ConfigError(path, f"parameters of {name} must be a mapping, got {params!r}")
    accepted = inspect.signature(cls).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    kwargs = {}
    for key, value in params.items():
        if key not in accepted and not takes_any:
            suggestion = difflib.get_close_matches(key, list(accepted), n=1)
            hint = f" (did you mean {suggestion[0]}?)" if suggestion else f" (it takes: {', '.join(accepted) or 'nothing'})"
            raise ConfigError(f"{path}.{key}", f"{name} has no parameter {key}{hint}")
        kwargs[key] = _build_value(value, f"{path}.{key}", modules)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        raise ConfigError(path, f"{name}: {error}") from None


def _build_value(value: Any, path: str, modules: tuple[str, ...] | list[str] = ()) -> Any:
    if _is_object_spec(value):
        return build_object(value, path, modules)
    if isinstance(value, list):
        return [_build_value(v, f"{path}[{i}]", modules) for i, v in enumerate(value)]
    return value


def build_pipeline(steps: list[dict], path: str = "model.pipeline", modules: tuple[str, ...] | list[str] = ()) -> base.Estimator:
    """Compose the steps with `compose.Pipeline` (a single step is returned as it is).

    `modules` are the user's ``custom_modules``: their River-compatible classes may be named too.
    """
    built = []
    for i, step in enumerate(steps):
        where = f"{path}[{i}]"
        if not isinstance(step, dict) or len(step) != 1:
            raise ConfigError(where, "each step is a one-key mapping such as {preprocessing.StandardScaler: {}}")
        obj = build_object(step, where, modules)
        if not isinstance(obj, base.Estimator):
            raise ConfigError(where, f"{next(iter(step))} is not an estimator")
        built.append(obj)
    return built[0] if len(built) == 1 else compose.Pipeline(*built)


def metric_factory(name: str, path: str) -> Callable[[], metrics.base.Metric]:
    """Return a callable making fresh instances of the `river.metrics` class `name`."""
    classes = {n: c for n, c in _public_classes(metrics).items() if issubclass(c, metrics.base.Metric)}
    if name not in classes:
        suggestion = difflib.get_close_matches(name, list(classes), n=1)
        hint = f" (did you mean {suggestion[0]}?)" if suggestion else ""
        raise ConfigError(path, f"river.metrics has no {name}{hint}")
    return classes[name]


ROLLING = "Rolling"
_METRIC_SPEC_HELP = "a metric is a river.metrics name such as Accuracy, or {Rolling: {metric: Accuracy, window_size: 500}}"


def build_metric(spec: str | dict, path: str) -> metrics.base.Metric:
    """One fresh metric from its spec: a `river.metrics` class name, or a window over the last
    ``window_size`` events, built as River's ``utils.Rolling(cls, window_size, **kwargs)`` (further
    keys are the metric's own parameters).

    >>> build_metric("MAE", "m")
    MAE: 0.
    >>> rolling = build_metric({"Rolling": {"metric": "Accuracy", "window_size": 2}}, "m")
    >>> for y, p in [(True, False), (True, True), (False, False)]:
    ...     rolling.update(y, p)
    >>> metric_name(rolling), rolling.get()
    ('Rolling(Accuracy, 2)', 1.0)
    >>> build_metric({"Rolling": {"metric": "Acuracy", "window_size": 2}}, "model.metrics[1]")
    Traceback (most recent call last):
    ...
    core.errors.ConfigError: model.metrics[1].Rolling.metric: river.metrics has no Acuracy (did you mean Accuracy?)
    """
    if isinstance(spec, str):
        return metric_factory(spec, path)()
    if not (isinstance(spec, dict) and len(spec) == 1):
        raise ConfigError(path, _METRIC_SPEC_HELP)
    (kind, params), = spec.items()
    if kind == "TimeRolling":
        raise ConfigError(path, "TimeRolling is not supported (metrics are updated without the event's time): use "
                                "{Rolling: {metric: ..., window_size: N}}, a window over the last N events")
    if kind != ROLLING:
        raise ConfigError(path, f"unknown metric wrapper {kind!r}: {_METRIC_SPEC_HELP}")
    where = f"{path}.{ROLLING}"
    if not isinstance(params, dict):
        raise ConfigError(where, "give {metric: Accuracy, window_size: 500}")
    params = dict(params)
    inner, window = params.pop("metric", None), params.pop("window_size", None)
    if not isinstance(inner, str):
        raise ConfigError(f"{where}.metric", "name the river.metrics class to roll, e.g. metric: Accuracy")
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ConfigError(f"{where}.window_size", f"a positive whole number of events, e.g. window_size: 500 (got {window!r})")
    cls = metric_factory(inner, f"{where}.metric")
    accepted = inspect.signature(cls).parameters
    for key in params:
        if key not in accepted:
            suggestion = difflib.get_close_matches(key, [*accepted, "metric", "window_size"], n=1)
            hint = f" (did you mean {suggestion[0]}?)" if suggestion else " (Rolling takes metric, window_size and the metric's parameters)"
            raise ConfigError(f"{where}.{key}", f"{inner} has no parameter {key}{hint}")
    try:
        return utils.Rolling(cls, window_size=window, **params)
    except (TypeError, ValueError) as error:
        raise ConfigError(where, f"{inner}: {error}") from None


def metric_name(metric: metrics.base.Metric) -> str:
    """The name a metric's values are keyed by everywhere (reports, checkpoints, /metrics):
    its class name, and ``Rolling(<name>, <window_size>)`` for a rolling window.

    >>> metric_name(metrics.Accuracy()), metric_name(utils.Rolling(metrics.MAE, window_size=500))
    ('Accuracy', 'Rolling(MAE, 500)')
    """
    if isinstance(metric, utils.Rolling):
        return f"{ROLLING}({metric_name(metric.obj)}, {metric.window_size})"
    return type(metric).__name__


def metric_spec_name(spec: str | dict, path: str = "metrics") -> str:
    """The name (see `metric_name`) of the metric a spec builds.

    >>> metric_spec_name({"Rolling": {"metric": "Accuracy", "window_size": 500}})
    'Rolling(Accuracy, 500)'
    """
    return metric_name(build_metric(spec, path))


def build_metrics(specs: list[str | dict], model: base.Estimator, path: str = "model.metrics") -> metrics.base.Metrics:
    """A `river.metrics.base.Metrics` over fresh instances, checked against the model; names (`metric_name`) are unique."""
    built = metrics.base.Metrics([build_metric(spec, f"{path}[{i}]") for i, spec in enumerate(specs)])
    names: list[str] = []
    for i, metric in enumerate(built):
        name = metric_name(metric)
        if not metric.works_with(model):
            raise ConfigError(f"{path}[{i}]", f"{name} does not work with a {type(_final_step(model)).__name__}")
        if name in names:
            raise ConfigError(f"{path}[{i}]", f"{name} is listed twice (metric values are keyed by name)")
        names.append(name)
    return built


def _final_step(model):
    return list(model.steps.values())[-1] if isinstance(model, compose.Pipeline) else model


def build_model(config, path: str = "model") -> base.Estimator:
    """Build and check a `online.config.ModelConfig`: the pipeline, its metrics and drift detector."""
    prefix = f"{path}." if path else ""
    model = build_pipeline(config.pipeline, f"{prefix}pipeline", config.custom_modules)
    build_metrics(config.metrics, model, f"{prefix}metrics")
    if config.drift is not None:
        build_object({config.drift.detector: config.drift.params}, f"{prefix}drift.detector")
    return model


def list_models() -> dict[str, list[str]]:
    """Names usable in a model spec, by kind: ``{"estimators": [...], "optimizers": [...], "metrics": [...], ...}``."""
    kinds: dict[str, set[str]] = {"estimators": set(), "optimizers": set(), "metrics": set(), "drift": set(), "other": set()}
    for module_name in river_modules():
        try:
            module = importlib.import_module(f"river.{module_name}")
        except Exception:  # optional dependencies of some river modules
            continue
        for name, cls in _public_classes(module).items():
            if cls.__module__.split(".")[1] != module_name.split(".")[0]:
                continue  # re-exported from elsewhere
            dotted = f"{module_name}.{name}"
            if issubclass(cls, metrics.base.Metric):
                kinds["metrics"].add(name)
            elif issubclass(cls, base.Estimator):
                kinds["estimators"].add(dotted)
            elif module_name.startswith("optim"):
                kinds["optimizers"].add(dotted)
            elif module_name.startswith("drift"):
                kinds["drift"].add(dotted)
            else:
                kinds["other"].add(dotted)
    return {kind: sorted(names) for kind, names in kinds.items()}


def describe_model(model: base.Estimator) -> tuple[list[dict], list[str]]:
    """A River model object as a model spec: ``(pipeline, custom_modules)``.

    The spec is what River's own `clone()` rebuilds the model from (its ``_get_params()``), so
    `build_pipeline` on it makes a fresh model equal to ``model.clone()``. Classes outside
    `river` are named by their full module path and their top-level module is listed in
    `custom_modules`. A parameter that a spec cannot hold (a function, an arbitrary object) is a
    `ConfigError` naming it.

    >>> from river import linear_model, optim, preprocessing
    >>> pipeline, modules = describe_model(preprocessing.StandardScaler() | linear_model.LogisticRegression(optimizer=optim.SGD(0.1)))
    >>> pipeline[1]["linear_model.LogisticRegression"]["optimizer"]
    {'optim.SGD': {'lr': {'optim.schedulers.Constant': {'learning_rate': 0.1}}}}
    >>> modules
    []
    """
    steps = list(model.steps.values()) if isinstance(model, compose.Pipeline) else [model]
    modules: list[str] = []
    pipeline = []
    for i, step in enumerate(steps):
        if isinstance(step, compose.Pipeline):
            raise ConfigError(f"pipeline[{i}]", "a pipeline inside a pipeline cannot be described: flatten it")
        pipeline.append({_public_name(type(step), modules, f"pipeline[{i}]"): _describe_params(step._get_params(), modules, f"pipeline[{i}]")})
    return pipeline, modules


def _describe_params(params: dict, modules: list[str], path: str) -> dict:
    return {name: _describe_value(value, modules, f"{path}.{name}") for name, value in params.items()}


def _describe_value(value: Any, modules: list[str], path: str) -> Any:
    if isinstance(value, tuple) and len(value) == 2 and inspect.isclass(value[0]) and isinstance(value[1], dict):
        return {_public_name(value[0], modules, path): _describe_params(value[1], modules, path)}
    if isinstance(value, list):
        return [_describe_value(v, modules, f"{path}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, base.Base):
        return {_public_name(type(value), modules, path): _describe_params(value._get_params(), modules, path)}
    raise ConfigError(path, f"a {type(value).__name__} cannot be written in a model spec (only River objects, numbers, text and lists)")


def _public_name(cls: type, modules: list[str], path: str) -> str:
    """``module.Class`` as a spec names `cls`: the shortest public river path, or the user's module path."""
    parts = cls.__module__.split(".")
    if parts[0] == "river":
        for end in range(2, len(parts) + 1):
            name = ".".join(parts[1:end]) + "." + cls.__name__
            try:
                if resolve_river_class(name, path) is cls:
                    return name
            except ConfigError:
                continue
        raise ConfigError(path, f"{cls.__module__}.{cls.__name__} is not a public river class")
    if parts[0] not in modules:
        modules.append(parts[0])
    return f"{cls.__module__}.{cls.__name__}"
