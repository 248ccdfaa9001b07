"""Turning one decoded event into features, a label and a model key — or a reason to reject it.

An event is a JSON object (a `dict`). `EventReader` splits it according to `events` in the
job's configuration and checks, before anything learns from it, that the features are finite
numbers (or strings for fields listed in `categorical`) and that the label fits the model.
A rejected event raises `EventError` with the reason; it is never half-learned.

>>> from online.config import EventsConfig
>>> reader = EventReader(EventsConfig(target="label", exclude=["id"]), label_kind="class")
>>> reader.split({"id": 7, "a": 1.5, "b": 2, "label": True})
({'a': 1.5, 'b': 2}, True, None)
>>> reader.split({"a": "x", "label": True})
Traceback (most recent call last):
...
online.events.EventError: feature 'a' is not a number: 'x'
"""

from __future__ import annotations

import math
from typing import Any, Callable

from core.errors import ConfigError, RiverbeamError

_LABEL_TYPES = {"class": (str, int, bool), "binary": (int, bool), "number": (int, float)}


class EventError(ValueError):
    """An event that cannot be learned from; the message is the reason (dead-letter records carry it)."""


class EventReader:
    """Splits events into ``(features, label, key)`` for one `online.config.EventsConfig`.

    `label_kind` is ``"class"`` for classifiers (labels are strings, integers or booleans),
    ``"binary"`` for binary classifiers (``True``/``False``/``1``/``0`` only: River learns ``2``
    or ``-1`` silently and fails inside ``learn_one`` on a string), ``"number"`` for regressors
    (finite numbers) or ``None`` (any label, not checked). With `max_abs_value` (from
    ``events.max_abs_value``), a feature or numeric label beyond it in absolute value is refused:
    a finite ``1e308`` would overflow the model's arithmetic and ruin it for good.

    `events.categorical` names fields that may hold strings. `transform` (a fitted
    `transforms.fitted.FittedTransform`, or any callable ``dict -> dict``) is applied to the
    features before they are checked.

    >>> from online.config import EventsConfig
    >>> reader = EventReader(EventsConfig(target="y", max_abs_value=1e9), label_kind="binary")
    >>> reader.split({"a": 1e308, "y": True})
    Traceback (most recent call last):
    ...
    online.events.EventError: feature 'a' is beyond events.max_abs_value (1e+09): 1e+308
    >>> reader.split({"a": 1.0, "y": 2})
    Traceback (most recent call last):
    ...
    online.events.EventError: label 'y' cannot be learned by this model (a binary classifier takes true/false or 1/0): 2
    """

    def __init__(self, events, label_kind: str | None = None, transform=None):
        self.target = events.target
        self.key_field = events.key
        self.id_field = events.id
        self.features = tuple(events.features) if events.features is not None else None
        self.drop = tuple(
            f for f in {events.target, events.key, events.id, events.time, *events.exclude} if f is not None
        )
        self.label_types = _LABEL_TYPES.get(label_kind) if label_kind else None
        self.binary = label_kind == "binary"
        self.max_abs = getattr(events, "max_abs_value", None)
        # a fitted transform declares the string columns it emits (category encodings)
        self.categorical = frozenset(events.categorical) | frozenset(getattr(getattr(transform, "__self__", None), "categorical_outputs", ()))
        self.transform = transform
        if self.features is None and self.key_field is None and transform is None:
            self.split = self._plain_split()  # the common case, with its attributes bound once

    def _plain_split(self):
        """`split` for events whose features are all fields but the dropped ones (no key, no transform)."""
        target, label_types, check, label_error = self.target, self.label_types, self._check_types, self._label_error
        others = tuple(f for f in self.drop if f != target)
        bound = self.max_abs
        binary = self.binary

        def split(event: Any) -> tuple[dict, Any, Any]:
            if type(event) is not dict:
                raise EventError(f"event is not a JSON object but {json_type(event)}")
            y = event.pop(target, None) if target is not None else None
            for name in others:
                event.pop(name, None)
            try:  # sum() is C-fast and refuses strings, null, arrays and objects: the slow check names the culprit
                total = sum(event.values())
            except TypeError:
                check(event)
            else:
                if total - total != 0 or (bound is not None and event and (max(event.values()) > bound or min(event.values()) < -bound)):
                    check(event)  # NaN, infinity or a value beyond events.max_abs_value somewhere
            if y is not None and label_types is not None and (type(y) not in label_types or (type(y) is float and y - y != 0) or (binary and y not in (0, 1))):
                label_error(y)
            if bound is not None and type(y) in (int, float) and not -bound <= y <= bound:
                label_error(y)
            return event, y, None

        return split

    def split_chunk(self, events: list) -> tuple[Any, list] | None:
        """A mini-batch chunk split at once: ``(features as a pandas.DataFrame, labels)``, or None when
        `split` must look at its events one by one.

        The table is what ``pandas.DataFrame(features)`` makes of the events' features (the same
        columns in the same order, the same dtypes and values: float64, int64, bool, and float64 for
        integers mixed with floats), built column by column from the events instead of from one
        feature dict per event; the events are not changed. A mini-batch learner takes it whole
        (`online.learning.learner.Learner.process_many`), skipping `split` and ``pandas.DataFrame``'s
        own inference, which cost about as much as River's learning of the chunk (issue 30).
        It is answered only where `split` would take every event as it is: plain events (no
        ``features`` list, key or transform), every one a JSON object with the same fields, the label
        among them; every feature a boolean or a finite number (within ``max_abs_value``), every label
        one `split` takes, or null. Anything else (a string, a null feature, an array, a NaN, a field
        missing or extra, a bad label) answers None: `split` then reads the events one by one and
        names each culprit.

        >>> from online.config import EventsConfig
        >>> reader = EventReader(EventsConfig(target="y", exclude=["id"]), label_kind="binary")
        >>> frame, labels = reader.split_chunk([{"id": 1, "a": 1.5, "b": 2, "y": True}, {"id": 2, "a": 0.5, "b": 3, "y": False}])
        >>> frame.to_dict("list"), [str(dtype) for dtype in frame.dtypes], labels
        ({'a': [1.5, 0.5], 'b': [2, 3]}, ['float64', 'int64'], [True, False])
        >>> reader.split_chunk([{"a": 1.5, "b": 2, "y": True}, {"a": "x", "b": 3, "y": False}]) is None
        True
        """
        if self.features is not None or self.key_field is not None or self.transform is not None or not events:
            return None
        first, target = events[0], self.target
        if type(first) is not dict or target is None or target not in first or len(first) < 2:
            return None
        names = tuple(first)
        if set(map(type, events)) != {dict} or set(map(len, events)) != {len(names)}:
            return None
        import operator

        import numpy as np
        import pandas as pd

        try:  # every event holds the first one's fields (with as many: no other): else KeyError
            labels = list(map(operator.itemgetter(target), events))
            if not self._labels_taken(labels):
                return None
            dropped, bound, table = set(self.drop), self.max_abs, {}
            for name in names:
                if name in dropped:
                    continue
                values = list(map(operator.itemgetter(name), events))
                kinds = set(map(type, values))
                if kinds == {float}:
                    column = np.array(values, dtype=np.float64)
                    if not np.isfinite(column).all():
                        return None
                elif kinds == {int}:
                    column = np.array(values, dtype=np.int64)  # OverflowError beyond int64, which pandas keeps as objects
                elif kinds == {bool}:
                    table[name] = np.array(values, dtype=np.bool_)
                    continue
                elif kinds == {int, float} and -(2**63) <= min(values) and max(values) < 2**63:  # pandas: float64 (beyond int64, objects)
                    column = np.array(values, dtype=np.float64)
                    if not np.isfinite(column).all():
                        return None
                else:  # a string, null, array or object, or booleans among numbers
                    return None
                if bound is not None and (column.max().item() > bound or column.min().item() < -bound):
                    return None
                table[name] = column
        except (KeyError, OverflowError):
            return None
        return (pd.DataFrame(table, copy=False), labels) if table else None

    def _labels_taken(self, labels: list) -> bool:
        """Whether `split` takes every one of `labels` (`split_chunk`)."""
        kinds = set(map(type, labels))
        kinds.discard(type(None))
        if self.label_types is not None:
            if not kinds.issubset(self.label_types):
                return False
            if float in kinds and not all(math.isfinite(y) for y in labels if type(y) is float):
                return False
            if self.binary and not set(labels).issubset((0, 1, None)):
                return False
        if self.max_abs is not None and kinds & {int, float}:
            numbers = [y for y in labels if type(y) in (int, float)]
            if max(numbers) > self.max_abs or min(numbers) < -self.max_abs:
                return False
        return True

    def split(self, event: Any) -> tuple[dict, Any, Any]:
        """Return ``(x, y, key)``; `y` is None when the event has no label. Consumes `event`."""
        if type(event) is not dict:
            raise EventError(f"event is not a JSON object but {json_type(event)}")
        y = event.get(self.target) if self.target is not None else None
        key = None
        if self.key_field is not None:
            key = event.get(self.key_field)
            if key is None:
                raise EventError(f"model key field '{self.key_field}' is missing")
            if type(key) not in (str, int):
                raise EventError(f"model key field '{self.key_field}' must be a string or an integer, got {key!r}")
        if self.features is not None:
            try:
                x = {name: event[name] for name in self.features}
            except KeyError as missing:
                raise EventError(f"feature {missing} is missing") from None
        else:
            x = event
            for name in self.drop:
                x.pop(name, None)
        if self.transform is not None:
            try:
                x = self.transform(x)
            except (KeyError, TypeError, ValueError, RiverbeamError) as error:
                raise EventError(f"feature transform failed: {error}") from None
        try:  # see _plain_split
            total = sum(x.values())
        except TypeError:
            self._check_types(x)
        else:
            bound = self.max_abs
            if total - total != 0 or (bound is not None and x and (max(x.values()) > bound or min(x.values()) < -bound)):
                self._check_types(x)
        if y is not None and self.label_types is not None:
            if type(y) not in self.label_types or (type(y) is float and not math.isfinite(y)) or (self.binary and y not in (0, 1)):
                self._label_error(y)
            if self.max_abs is not None and type(y) in (int, float) and type(y) is not bool and abs(y) > self.max_abs:
                self._label_error(y)
        return x, y, key

    def _label_error(self, y: Any) -> None:
        if self.binary and type(y) in (int, bool, str, float):
            raise EventError(f"label '{self.target}' cannot be learned by this model (a binary classifier takes true/false or 1/0): {y!r}")
        if self.max_abs is not None and type(y) in (int, float) and abs(y) > self.max_abs:
            raise EventError(f"label '{self.target}' is beyond events.max_abs_value ({self.max_abs:g}): {y!r}")
        raise EventError(f"label '{self.target}' cannot be learned by this model: {y!r}")

    def _check_types(self, x: dict) -> None:
        for name, value in x.items():
            kind = type(value)
            if kind is bool:
                continue
            if kind in (int, float):
                if kind is float and not math.isfinite(value):
                    raise EventError(f"feature '{name}' is not finite: {value!r}")
                if self.max_abs is not None and abs(value) > self.max_abs:
                    raise EventError(f"feature '{name}' is beyond events.max_abs_value ({self.max_abs:g}): {value!r}")
                continue
            if kind is str and name in self.categorical:
                continue
            if value is None:
                raise EventError(f"feature '{name}' is null")
            raise EventError(f"feature '{name}' is not a number: {value!r}")


def record_event(payload: bytes | str, decode=None, topic: str = "") -> tuple[dict | None, str | None]:
    """One raw record as an event dict, or the reason it is not one, in the daemon's words.

    JSON, or with `decode` (an `online.formats.RegistryDecoder`: ``kafka.format`` avro, protobuf or
    json_schema) the schema-registry wire format, decoded and flattened as the daemon does; `topic`
    names the subject in its reasons. The Beam pipelines' parsers (archive, stream-learn) use it.

    >>> record_event(b'{"a": 1}'), record_event(b"[1]"), record_event(b"{oops")[1][:9]
    (({'a': 1}, None), (None, 'event is not a JSON object but an array'), 'not JSON:')
    """
    import orjson

    if decode is not None:
        events, reasons = decode([payload if isinstance(payload, bytes) else str(payload).encode("utf-8")], topic)
        if events[0] is None:
            return None, reasons[0]
        event = events[0]
    else:
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError as error:
            return None, f"not JSON: {error}"  # as online.learning.loop.decode says it
    if type(event) is not dict:
        return None, f"event is not a JSON object but {json_type(event)}"
    return event, None


def json_type(value: Any) -> str:
    """What a decoded JSON value is, in the words of a rejection reason ("not a JSON object but ...").

    >>> json_type([1, 2]), json_type("a"), json_type(1.5), json_type(True), json_type(None)
    ('an array', 'a string', 'a number', 'a boolean', 'null')
    """
    return {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def load_feature_function(features, modules: tuple[str, ...] | list[str] = ()) -> Callable[[dict], dict] | None:
    """The user's feature function named by ``features.function`` (``module:function``), or None.

    The function must be defined in a module listed in ``model.custom_modules`` (`modules`; with
    several models, any of theirs): the rule for every piece of the user's code a configuration
    names (`online.models.resolve_function`). A failing import, an unlisted module, or a missing
    or non-callable name is a one-line `ConfigError` naming ``features.function``.

    >>> from online.config import FeaturesConfig
    >>> load_feature_function(FeaturesConfig(function="json:dumps"), modules=["json"]).__name__
    'dumps'
    >>> load_feature_function(FeaturesConfig(function="subprocess:run"))
    Traceback (most recent call last):
    ...
    core.errors.ConfigError: features.function: subprocess is not listed in model.custom_modules (functions are named module:function, defined in a module listed in model.custom_modules)
    """
    if not features.function:
        return None
    from online.models import resolve_function

    return resolve_function(features.function, "features.function", modules)


class FeaturePipeline:
    """The user's feature function, then the fitted transform: one callable ``dict -> dict``.

    `__self__` is the fitted transform's, so its declared string columns and its document (the
    checkpoint hash covers it) stay visible to the event reader and the checkpoint bridge.
    """

    def __init__(self, function: Callable[[dict], dict], fitted: Callable[[dict], dict] | None):
        self.function = function
        self.fitted = fitted
        self.__self__ = getattr(fitted, "__self__", None)
        self.__qualname__ = f"{function.__module__}.{function.__qualname__}"

    def __call__(self, x: dict) -> dict:
        try:
            x = self.function(x)
        except Exception as error:  # the user's code failing on one event fails that event only
            raise ValueError(f"features.function {self.__qualname__} failed: {type(error).__name__}: {error}") from None
        if type(x) is not dict:
            raise ValueError(f"features.function {self.__qualname__} returned {type(x).__name__}, not a dict")
        return self.fitted(x) if self.fitted is not None else x


def load_feature_transform(features, modules: tuple[str, ...] | list[str] = ()) -> Any:
    """What ``features`` (`online.config.FeaturesConfig`) applies to every event, or None.

    The user's ``features.function`` runs first (`FeaturePipeline`; it must be defined in one of
    `modules`, the models' ``custom_modules``, see `load_feature_function`), then the fitted
    transform named by ``features.transform_output``.

    It is applied to every event's features before the model sees them (see `EventReader`): the
    raw event in the types the preprocess configuration declares is what it accepts (text that
    reads as them too); a value it refuses makes the event a dead letter with the reason. The
    result is the bound ``apply`` of a `transforms.fitted.FittedTransform` (its ``__self__``
    names the string columns it emits, ``categorical_outputs``).
    """
    fitted = None
    if features.transform_output:
        try:
            from transforms.fitted import FittedTransform
        except ImportError as error:
            raise ConfigError("features.transform_output", f"fitted feature transforms are not available: {error}") from None
        fitted = FittedTransform.load(features.transform_output).apply
    function = load_feature_function(features, modules)
    return fitted if function is None else FeaturePipeline(function, fitted)
