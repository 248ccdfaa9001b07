"""Fitted transforms applied online, one event at a time, without TensorFlow.

``riverbeam preprocess`` writes ``fitted_transforms.json`` next to the ``TFTransformOutput``
layout (``transform_fn/``, ``transformed_metadata/``): the constants TFT bound into its graph
(means, variances, minima and maxima, quantile boundaries), the vocabularies from its asset files
and the hash bucket counts. `FittedTransform` applies them with the same arithmetic as the graph:
float64 on the 32-bit float (or 64-bit int) input, each float output rounded to float32, quantile
buckets compared in float32, and FarmHash ``Fingerprint64`` for hashing and out-of-vocabulary
buckets, as ``tf.strings.to_hash_bucket_fast`` does.

>>> fitted = FittedTransform.from_document({
...     "format": FORMAT,
...     "label": {"name": "y", "type": "int"},
...     "features": [
...         {"name": "x", "type": "float", "transform": "z_score", "mean": 2.0, "var": 4.0},
...         {"name": "n", "type": "float", "transform": "bucketize", "boundaries": [0.0, 10.0]},
...         {"name": "c", "type": "string", "transform": "vocabulary", "vocabulary": ["a", "b"],
...          "num_oov_buckets": 0},
...     ]})
>>> fitted.apply({"x": 3, "n": 10.0, "c": "b", "y": 1})
{'x': 0.5, 'n': 2, 'c': 1, 'y': 1}
>>> fitted.apply({"x": 3, "n": 10.0, "c": "zzz"})["c"]
-1
"""

from __future__ import annotations

import json
import math
import struct
from bisect import bisect_right
from typing import Any, Callable, Iterable

import farmhash

from core import storage
from core.errors import RiverbeamError
from transforms.spec import FeatureSpec, InvalidFeatureError, LabelSpec, coerce_value

FORMAT = "riverbeam.fitted_transforms/1"
FITTED_FILENAME = "fitted_transforms.json"

_F32 = struct.Struct("<f")
_pack, _unpack = _F32.pack, _F32.unpack


def to_float32(x: float) -> float:
    """Round a Python float to the nearest 32-bit float (overflow gives infinity), as ``tf.cast``.

    >>> to_float32(0.1)
    0.10000000149011612
    """
    try:
        return _F32.unpack(_F32.pack(x))[0]
    except OverflowError:
        return math.copysign(math.inf, x)


def fingerprint64(text: str) -> int:
    """FarmHash ``Fingerprint64`` of the UTF-8 bytes, the hash of ``tft.hash_strings``.

    >>> fingerprint64("riverbeam") % 16 == fingerprint64("riverbeam") % 16
    True
    """
    return farmhash.fingerprint64(text.encode("utf-8"))


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def _log1p(x: float) -> float:
    if x > -1.0:
        return math.log1p(x)
    return -math.inf if x == -1.0 else math.nan


def _compile(entry: dict) -> Callable[[Any], Any]:
    """One feature's ``raw value -> transformed value`` function."""
    name, kind, transform = entry["name"], entry["type"], entry["transform"]

    def read(value):
        if kind == "float":
            if type(value) is float and value - value == 0.0:  # fast path: a finite Python float
                return _unpack(_pack(value))[0] if -3.4e38 < value < 3.4e38 else to_float32(value)
            return to_float32(coerce_value(name, kind, value))  # TFT reads float features as float32
        if type(value) is (int if kind == "int" else str):
            return value
        return coerce_value(name, kind, value)

    if transform == "identity":
        return read
    if transform == "hash":
        buckets = int(entry["hash_buckets"])
        return lambda value: fingerprint64(read(value) if kind == "string" else str(read(value))) % buckets
    if transform == "vocabulary":
        index = {token: i for i, token in enumerate(entry["vocabulary"])}
        size, oov = len(index), int(entry.get("num_oov_buckets") or 0)

        def lookup(value):
            token = read(value)
            token = token if isinstance(token, str) else str(token)
            found = index.get(token)
            if found is not None:
                return found
            return size + fingerprint64(token) % oov if oov else -1

        return lookup
    if transform == "bucketize":
        boundaries = [float(b) for b in entry["boundaries"]]
        last = len(boundaries)

        def bucket(value):
            x = to_float32(float(read(value)))
            return last if math.isnan(x) else bisect_right(boundaries, x)

        return bucket
    if transform == "log1p":
        return lambda value: to_float32(_log1p(float(read(value))))
    if transform == "z_score":
        mean, std = float(entry["mean"]), math.sqrt(float(entry["var"]))
        if std != 0.0:
            return lambda value: to_float32((float(read(value)) - mean) / std)
        return lambda value: to_float32(float(read(value)) - mean)
    if transform == "min_max":
        low, high = float(entry["min"]), float(entry["max"])
        spread = high - low
        if low < high:
            return lambda value: to_float32((float(read(value)) - low) / spread)
        return lambda value: to_float32(_sigmoid(float(read(value))))
    raise FittedTransformError(f"feature {name!r}: unknown transform {transform!r}")


_CONSTANTS = {
    "z_score": ("mean", "var"),
    "min_max": ("min", "max"),
    "bucketize": ("boundaries",),
    "vocabulary": ("vocabulary",),
    "hash": ("hash_buckets",),
    "log1p": (),
    "identity": (),
}


class FittedTransformError(RiverbeamError):
    """A fitted transform output cannot be read (missing, unreadable or not ours)."""


def fitted_document(
    features: list[FeatureSpec],
    label: LabelSpec | None,
    constants: dict[int, dict[str, Any]],
    vocabularies: dict[int, list[str]],
) -> dict:
    """The JSON document of a fitted transform: the spec plus, per feature, its fitted constants.

    `constants` maps a feature's index to the analyzer results read from the ``transform_fn``;
    `vocabularies` maps it to the tokens of its vocabulary asset, most frequent first.

    >>> doc = fitted_document([FeatureSpec(name="x", type="float", transform="z_score")],
    ...                       None, {0: {"mean": 1.5, "var": 0.25}}, {})
    >>> doc["features"]
    [{'name': 'x', 'type': 'float', 'transform': 'z_score', 'mean': 1.5, 'var': 0.25}]
    """
    entries = []
    for i, feature in enumerate(features):
        entry = {"name": feature.name, "type": feature.type, "transform": feature.transform}
        fitted = constants.get(i, {})
        if feature.transform == "z_score":
            entry.update(mean=fitted["mean"], var=fitted["var"])
        elif feature.transform == "min_max":
            entry.update(min=fitted["min"], max=fitted["max"])
        elif feature.transform == "bucketize":
            entry.update(boundaries=list(fitted["boundaries"]))
        elif feature.transform == "vocabulary":
            entry.update(vocabulary=list(vocabularies[i]), num_oov_buckets=feature.num_oov_buckets or 0)
        elif feature.transform == "hash":
            entry.update(hash_buckets=feature.hash_buckets)
        entries.append(entry)
    return {
        "format": FORMAT,
        "label": None if label is None else {"name": label.name, "type": label.type},
        "features": entries,
    }


def _read_uri(uri: str) -> bytes:
    """The bytes at `uri` (local, ``file://``, ``gs://``, ``s3://``), failures as `FittedTransformError`."""
    try:
        return storage.read_bytes(uri)
    except storage.ObjectNotFound:
        raise FittedTransformError(f"{uri}: cannot read: it does not exist (is it the output directory of 'riverbeam preprocess'?)") from None
    except storage.StorageError as error:
        raise FittedTransformError(f"{uri}: cannot read: {error}") from None


class FittedTransform:
    """The fitted feature transforms of one ``riverbeam preprocess`` run, applied to events.

    `apply` maps one event (a dict of raw values) to the transformed features, named like the
    inputs, plus the label when the event has it; a missing or unreadable feature raises
    `transforms.spec.InvalidFeatureError` naming it. Other keys of the event are ignored.
    """

    def __init__(self, document: dict):
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise FittedTransformError(f"not a fitted transform document (expected format {FORMAT!r})")
        self.document = document
        label = document.get("label")
        self.label = label["name"] if label else None
        self._label_type = label["type"] if label else None
        self._steps: list[tuple[str, Callable[[Any], Any]]] = []
        for entry in document["features"]:
            missing = [key for key in _CONSTANTS.get(entry.get("transform"), ()) if key not in entry]
            if missing:
                raise FittedTransformError(f"feature {entry.get('name')!r}: fitted constants missing: {', '.join(missing)}")
            self._steps.append((entry["name"], _compile(entry)))

    @classmethod
    def from_document(cls, document: dict) -> "FittedTransform":
        """Build from the parsed ``fitted_transforms.json`` document."""
        return cls(document)

    @classmethod
    def load(cls, uri: str) -> "FittedTransform":
        """Load from a preprocess output directory (or the JSON file itself): local, ``gs://`` or ``s3://``."""
        target = uri if uri.endswith(".json") else uri.rstrip("/") + "/" + FITTED_FILENAME
        try:
            document = json.loads(_read_uri(target))
        except ValueError as error:
            raise FittedTransformError(f"{target}: invalid JSON: {error}") from None
        return cls(document)

    @property
    def feature_names(self) -> list[str]:
        """Names of the transformed features, in spec order."""
        return [name for name, _ in self._steps]

    def apply(self, event: dict) -> dict:
        """Transform one event's features exactly as the fitted TFT graph does."""
        try:
            out = {name: step(event[name]) for name, step in self._steps}
        except KeyError as error:
            raise InvalidFeatureError(str(error.args[0]), "missing value") from None
        if self.label is not None and self.label in event:
            label = coerce_value(self.label, self._label_type, event[self.label])
            out[self.label] = to_float32(label) if self._label_type == "float" else label
        return out

    def apply_many(self, events: Iterable[dict]) -> list[dict]:
        """Transform a micro-batch of events; same results as `apply` on each."""
        apply = self.apply
        return [apply(event) for event in events]

    def __repr__(self) -> str:
        steps = ", ".join(f"{e['name']}:{e['transform']}" for e in self.document["features"])
        return f"FittedTransform({steps})"

