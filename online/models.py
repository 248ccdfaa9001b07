"""Build River objects from the declarative model specification, and describe them back as one.

Class names resolve inside the `river` package, to public classes deriving from `river.base.Base`
(estimators, optimizers, schedulers, initializers, metrics, drift detectors), or in a module the
user lists in ``model.custom_modules``. A function (``compose.FuncTransformer``'s ``func``,
``features.function``) is named ``module:function`` and must be defined in such a listed module.
No other imports, no user-supplied pickles.

River's composition is written with River's own names: a class taking ``*args`` gets them as a
list under that parameter's name (``compose.Select: {keys: [a, b]}``, ``compose.TransformerUnion:
{transformers: [...]}`` for ``+``, ``compose.Pipeline: {steps: [...]}`` for a pipeline inside a
step); `describe_model` writes a River object in the same form.

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
import os
import pkgutil
import re
import sys
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


def is_listed(module_name: str, modules: tuple[str, ...] | list[str]) -> bool:
    """Whether `module_name` is one of the user's listed `modules` or inside one of them.

    >>> is_listed("myproject.features", ["myproject"]), is_listed("myprojects", ["myproject"])
    (True, False)
    """
    return any(module_name == m or module_name.startswith(m + ".") for m in modules)


def import_user_module(module_name: str, path: str) -> Any:
    """Import one of the user's listed modules, with the working directory on the import path.

    The working directory is searched as ``python -m`` would search it, but after the installed
    packages (appended to `sys.path`, never first), so a file there cannot shadow a library that
    riverbeam imports later. A module that fails to import is a `ConfigError` naming `path`.
    """
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)
    try:
        return importlib.import_module(module_name)
    except Exception as error:  # the user's module failed to import: say so in one line
        raise ConfigError(path, f"cannot import {module_name} (listed in custom_modules): {type(error).__name__}: {error}") from None


_FUNCTION_REFERENCE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
_FUNCTION_HELP = "functions are named module:function, defined in a module listed in model.custom_modules"


def resolve_function(reference: str, path: str, modules: tuple[str, ...] | list[str] = ()) -> Callable:
    """The function named ``module:function``, defined in one of the user's listed `modules`.

    This is the one rule for every function a configuration names (``features.function``,
    ``compose.FuncTransformer``'s ``func``...): the module must be listed in
    ``model.custom_modules`` and the function defined there (not imported into it from elsewhere).

    >>> resolve_function("json:dumps", "features.function", modules=["json"]).__name__
    'dumps'
    >>> resolve_function("subprocess:run", "features.function")
    Traceback (most recent call last):
    ...
    core.errors.ConfigError: features.function: subprocess is not listed in model.custom_modules (functions are named module:function, defined in a module listed in model.custom_modules)
    >>> resolve_function("json:JSONDecodeError", "f", modules=["json"])
    Traceback (most recent call last):
    ...
    core.errors.ConfigError: f: json has no function JSONDecodeError
    """
    if not isinstance(reference, str) or not _FUNCTION_REFERENCE.fullmatch(reference):
        raise ConfigError(path, f"expected module:function, got {reference!r} ({_FUNCTION_HELP})")
    module_name, _, name = reference.partition(":")
    if not is_listed(module_name, modules):
        raise ConfigError(path, f"{module_name} is not listed in model.custom_modules ({_FUNCTION_HELP})")
    module = import_user_module(module_name, path)
    function = getattr(module, name, None)
    if name.startswith("_") or function is None or inspect.isclass(function) or not callable(function):
        public = [n for n, f in vars(module).items() if callable(f) and not inspect.isclass(f) and not n.startswith("_")]
        suggestion = difflib.get_close_matches(name, public, n=1)
        hint = f" (did you mean {suggestion[0]}?)" if suggestion else ""
        raise ConfigError(path, f"{module_name} has no function {name}{hint}")
    defined_in = getattr(function, "__module__", None) or "an unknown module"
    if not is_listed(defined_in, modules):
        own_name = getattr(function, "__qualname__", None) or getattr(function, "__name__", None) or name
        raise ConfigError(path, f"{reference} is {defined_in}.{own_name}, imported into {module_name}; {defined_in} is not listed in model.custom_modules")
    return function


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
    if not is_listed(module_name, modules):
        return resolve_river_class(name, path)
    class_name = name.rpartition(".")[2]
    module = import_user_module(module_name, path)
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

    Names resolve inside `river`, or in the user's `modules` (see `resolve_class`). A class that
    takes ``*args`` gets them as a list under that parameter's name, and a function parameter is
    ``module:function`` from a listed module (`resolve_function`):

    >>> sorted(build_object({"compose.Select": {"keys": ["a", "b"]}}, "s").transform_one({"a": 1, "b": 2, "c": 3}))
    ['a', 'b']
    >>> union = build_object({"compose.TransformerUnion": {"transformers": [
    ...     {"compose.Select": {"keys": ["a"]}}, {"compose.Pipeline": {"steps": [{"compose.Select": {"keys": ["b"]}}]}}]}}, "u")
    >>> sorted(union.transform_one({"a": 1, "b": 2, "c": 3}).items())
    [('a', 1), ('b', 2)]
    >>> build_object({"compose.FuncTransformer": {"func": "os:system"}}, "model.pipeline[0]")
    Traceback (most recent call last):
    ...
    core.errors.ConfigError: model.pipeline[0].func: os is not listed in model.custom_modules (functions are named module:function, defined in a module listed in model.custom_modules)
    """
    (name, params), = spec.items()
    cls = resolve_class(name, path, modules)
    params = params or {}
    if not isinstance(params, dict):
        raise ConfigError(path, f"parameters of {name} must be a mapping, got {params!r}")
    accepted = inspect.signature(cls).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    varargs = next((p.name for p in accepted.values() if p.kind is inspect.Parameter.VAR_POSITIONAL), None)
    if varargs in _UNWRITABLE_VARARGS.get(cls, ()):
        raise ConfigError(path, _UNWRITABLE_VARARGS[cls][varargs])
    args: list = []
    kwargs = {}
    for key, value in params.items():
        if key not in accepted and not takes_any:
            suggestion = difflib.get_close_matches(key, list(accepted), n=1)
            hint = f" (did you mean {suggestion[0]}?)" if suggestion else f" (it takes: {', '.join(accepted) or 'nothing'})"
            raise ConfigError(f"{path}.{key}", f"{name} has no parameter {key}{hint}")
        if key == varargs:
            if not isinstance(value, list):
                raise ConfigError(f"{path}.{key}", f"{name} takes its {key} as a list (for example {key}: [...]), got {value!r}")
            args = _build_value(value, f"{path}.{key}", modules)
            continue
        kwargs[key] = _build_value(value, f"{path}.{key}", modules)
        if isinstance(kwargs[key], str) and key in accepted and "Callable" in str(accepted[key].annotation):
            resolve_function(kwargs[key], f"{path}.{key}", modules)  # raises: a function, but not a listed one
    try:
        return cls(*args, **kwargs)
    except Exception as error:  # River refuses the parameters (TypeError, ValueError, RuntimeError...): one line
        raise ConfigError(path, f"{name}: {error}") from None


# Classes whose *args a spec cannot hold (they are Python types), with what to use instead.
_UNWRITABLE_VARARGS: dict[type, dict[str, str]] = {
    compose.SelectType: {"types": "compose.SelectType takes Python types, which a model spec cannot hold: select the features by name with compose.Select"},
}


def _build_value(value: Any, path: str, modules: tuple[str, ...] | list[str] = ()) -> Any:
    if _is_object_spec(value):
        return build_object(value, path, modules)
    if isinstance(value, list):
        return [_build_value(v, f"{path}[{i}]", modules) for i, v in enumerate(value)]
    if isinstance(value, str) and _FUNCTION_REFERENCE.fullmatch(value) and is_listed(value.partition(":")[0], modules):
        return resolve_function(value, path, modules)
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
        try:
            return metric_factory(spec, path)()
        except TypeError as error:  # FBeta and the like need parameters
            raise ConfigError(path, f"{spec} cannot be named without parameters ({error}); choose a metric that takes none, e.g. F1") from None
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
    """Names usable in a model spec, by kind: ``{"estimators": [...], "optimizers": [...], "metrics": [...], ...}``.

    Only what `build_object` can build is offered: abstract classes (``base.Classifier``...),
    classes whose ``*args`` a spec cannot hold (``compose.SelectType``) and classes this Python
    cannot make (``misc.ZstdClassifier`` before Python 3.14) are left out.

    >>> names = list_models()["estimators"]
    >>> "compose.Select" in names, "compose.SelectType" in names, "base.Classifier" in names
    (True, False, False)
    """
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
            if not _can_be_built(cls):
                continue
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


def spec_form(name: str) -> str:
    """How a listed name is written in a spec when its class takes ``*args`` (else the name itself).

    >>> spec_form("compose.TransformerUnion"), spec_form("linear_model.LogisticRegression")
    ('compose.TransformerUnion: {transformers: [...]}', 'linear_model.LogisticRegression')
    """
    try:
        parameters = inspect.signature(resolve_river_class(name, name)).parameters.values()
    except (ConfigError, TypeError, ValueError):
        return name
    varargs = next((p.name for p in parameters if p.kind is inspect.Parameter.VAR_POSITIONAL), None)
    return f"{name}: {{{varargs}: [...]}}" if varargs else name


def _can_be_built(cls: type) -> bool:
    """Whether a model spec can build `cls`: not abstract, its ``*args`` writable, and River's test parameters make one."""
    if inspect.isabstract(cls) or cls.__module__.startswith("river.base") or cls in _UNWRITABLE_VARARGS:
        return False
    try:
        params = next(iter(cls._unit_test_params()), {}) if hasattr(cls, "_unit_test_params") else {}
        cls(**params)
    except TypeError:  # it needs parameters that River's tests do not give (compose.Grouper's transformer...): a spec gives
        return not issubclass(cls, metrics.base.Metric)  # them, but a metric is named without parameters (build_metric)
    except Exception:  # refused on this Python or install (misc.ZstdClassifier needs Python 3.14)
        return False
    return True


def describe_model(model: base.Estimator) -> tuple[list[dict], list[str]]:
    """A River model object as a model spec: ``(pipeline, custom_modules)``.

    The spec holds what River's own `clone()` rebuilds the model from (its ``_get_params()``),
    so `build_pipeline` on it makes a fresh model equal to ``model.clone()``. Composition is
    written as `build_object` reads it: ``*args`` as a list under their parameter's name (a set,
    such as `compose.Select`'s keys, sorted), a pipeline inside a step or a union (``+``) as
    ``compose.Pipeline: {steps: [...]}``, ``compose.TransformerUnion: {transformers: [...]}``
    (step names are River's defaults, inferred again on build). Classes and functions outside
    `river` are named by their full module path, and their modules are listed in
    `custom_modules`. A parameter that a spec cannot hold (a lambda, an arbitrary object) is a
    `ConfigError` naming it.

    A class's module is listed by its top-level package, a function's by its own module.

    >>> from river import compose, linear_model, optim, preprocessing
    >>> pipeline, modules = describe_model(preprocessing.StandardScaler() | linear_model.LogisticRegression(optimizer=optim.SGD(0.1)))
    >>> pipeline[1]["linear_model.LogisticRegression"]["optimizer"]
    {'optim.SGD': {'lr': {'optim.schedulers.Constant': {'learning_rate': 0.1}}}}
    >>> modules
    []
    >>> describe_model((compose.Select("b", "a") | compose.Discard("a")) + compose.Discard("c"))[0]
    [{'compose.TransformerUnion': {'transformers': [{'compose.Pipeline': {'steps': [{'compose.Select': {'keys': ['a', 'b']}}, {'compose.Discard': {'keys': ['a']}}]}}, {'compose.Discard': {'keys': ['c']}}]}}]
    """
    steps = list(model.steps.values()) if type(model) is compose.Pipeline else [model]
    modules: list[str] = []
    pipeline = [_describe_object(step, modules, f"pipeline[{i}]") for i, step in enumerate(steps)]
    return pipeline, modules


def _describe_object(obj: base.Base, modules: list[str], path: str) -> dict:
    """``{"module.Class": {param: value}}`` for one River object (see `describe_model`)."""
    name = _public_name(type(obj), modules, path)
    signature = inspect.signature(type(obj)).parameters
    varargs = next((p.name for p in signature.values() if p.kind is inspect.Parameter.VAR_POSITIONAL), None)
    held = getattr(obj, varargs, None) if varargs else None
    if isinstance(held, dict):  # named steps (compose.Pipeline, compose.TransformerUnion): _get_params drops their classes
        return {name: {varargs: [_describe_object(step, modules, f"{path}.{varargs}[{i}]") for i, step in enumerate(held.values())]}}
    if varargs in _UNWRITABLE_VARARGS.get(type(obj), ()):
        raise ConfigError(path, _UNWRITABLE_VARARGS[type(obj)][varargs])
    params = dict(obj._get_params())
    positional = params.pop("_POSITIONAL_ARGS", None)
    keywords = next((p.name for p in signature.values() if p.kind is inspect.Parameter.VAR_KEYWORD), None)
    for key, value in params.items():
        if _is_class_pair(value):  # River's (class, params) for a nested object: the object itself, so composition inside it is described too
            actual = getattr(obj, key, None) if key in signature else (getattr(obj, keywords, None) or {}).get(key) if keywords else None
            if isinstance(actual, value[0]):
                params[key] = actual
    described = {}
    for key, value in params.items():
        try:
            described[key] = _describe_value(value, modules, f"{path}.{key}")
        except ConfigError:
            default = signature[key].default if key in signature else inspect.Parameter.empty
            if default is inspect.Parameter.empty:
                raise
            if _equal(default, value):
                continue  # the class's own default (Binarizer's dtype=bool): left out, the build takes it again
            if not _equal(obj.clone({key: default})._get_params().get(key), value):
                raise
            described[key] = _describe_value(default, modules, f"{path}.{key}")  # what River derived from its default (a defaultdict, a deque...)
    if varargs is not None and positional is not None:
        described = {varargs: _describe_value(_ordered(positional), modules, f"{path}.{varargs}"), **described}
    return {name: described}


def _equal(a: Any, b: Any) -> bool:
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:  # an object without a usable equality
        return False


def _is_class_pair(value: Any) -> bool:
    return isinstance(value, tuple) and len(value) == 2 and inspect.isclass(value[0]) and isinstance(value[1], dict)


def _ordered(values: Any) -> list:
    """A set as a sorted list (the spec, its hash and the next process agree), other sequences as they are."""
    if isinstance(values, (set, frozenset)):
        try:
            return sorted(values, key=lambda v: (type(v).__name__, v))
        except TypeError:  # members that do not compare (objects): by their text, still the same in every process
            return sorted(values, key=repr)
    return list(values)


def _describe_params(params: dict, modules: list[str], path: str) -> dict:
    return {name: _describe_value(value, modules, f"{path}.{name}") for name, value in params.items()}


def _describe_value(value: Any, modules: list[str], path: str) -> Any:
    if _is_class_pair(value):  # a nested object that _describe_object could not reach as an attribute
        return {_public_name(value[0], modules, path): _describe_params(value[1], modules, path)}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_describe_value(v, modules, f"{path}[{i}]") for i, v in enumerate(_ordered(value))]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if type(value) is dict and all(isinstance(k, (bool, int, str)) for k in value) and not _is_object_spec(value):
        return {k: _describe_value(v, modules, f"{path}.{k}") for k, v in value.items()}
    if isinstance(value, base.Base):
        return _describe_object(value, modules, path)
    if callable(value) and not inspect.isclass(value):
        return _function_name(value, modules, path)
    raise ConfigError(path, f"a {type(value).__name__} cannot be written in a model spec (only River objects, functions of a module, numbers, text and lists)")


def _function_name(function: Callable, modules: list[str], path: str) -> str:
    """``module:function`` for a function defined at the top of a module (which is added to `modules`)."""
    module, name = getattr(function, "__module__", None), getattr(function, "__qualname__", None) or getattr(function, "__name__", None)
    if not module or not name or not name.isidentifier() or getattr(importlib.import_module(module), name, None) is not function:
        raise ConfigError(path, f"a function cannot be written in a model spec unless it is defined at the top of a module ({name or repr(function)} is not)")
    if module not in modules:
        modules.append(module)
    return f"{module}:{name}"


def _public_name(cls: type, modules: list[str], path: str) -> str:
    """``module.Class`` as a spec names `cls`: the shortest public river path, or the user's module path (added to `modules`)."""
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
    if parts[0] not in modules:  # the top-level package, as checkpoints written before recorded it (their hash stays)
        modules.append(parts[0])
    return f"{cls.__module__}.{cls.__name__}"
