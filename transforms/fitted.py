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
import logging
import math
import struct
import types
from bisect import bisect_right
from typing import Any, Callable, Iterable

import farmhash

from core import storage
from core.errors import RiverbeamError
from transforms.spec import FeatureSpec, InvalidFeatureError, LabelSpec, coerce_value

logger = logging.getLogger(__name__)

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


def _read_float(name: str, value: Any) -> float:
    """A float feature's value as TFT reads it: a finite number rounded to float32."""
    return to_float32(coerce_value(name, "float", value))


_CONSTANTS = {
    "z_score": ("mean", "var"),
    "min_max": ("min", "max"),
    "bucketize": ("boundaries",),
    "vocabulary": ("vocabulary",),
    "hash": ("hash_buckets",),
    "log1p": (),
    "identity": (),
    "pca": ("inputs", "matrix"),
}


class FittedTransformError(RiverbeamError):
    """A fitted transform output cannot be read (missing, unreadable or not ours)."""


def fitted_document(
    features: list[FeatureSpec],
    label: LabelSpec | None,
    constants: dict[int, dict[str, Any]],
    vocabularies: dict[int, list[str]],
    passthrough: bool = False,
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
        elif feature.transform == "pca":
            entry.update(inputs=list(feature.inputs), k=feature.k, center=feature.center, scale=feature.scale)
            if feature.center or feature.scale:
                entry["mean"] = list(fitted["mean"])
            if feature.scale:
                entry["var"] = list(fitted["var"])
            entry["matrix"] = [list(row) for row in fitted["matrix"]]
        if feature.encoding != "index":
            entry.update(encoding=feature.encoding, width=feature.width)
        entries.append(entry)
    document = {
        "format": FORMAT,
        "label": None if label is None else {"name": label.name, "type": label.type},
        "features": entries,
    }
    if passthrough:
        document["passthrough"] = True
    return document


class _Compiler:
    """Writes the straight-line Python function of a fitted transform document.

    The function reads each raw column once, rounds all float inputs to float32 in one
    ``struct`` call (TFT reads float features as float32), computes every feature in float64 with
    its constants bound (finite floats as literals, vocabularies and one-hot rows as dicts,
    boundaries as a list for `bisect`), rounds all float outputs in one more call, and builds
    the output dict. Anything off the fast path (text, integers in a float column, values beyond
    float32) takes the exact path of `transforms.spec.coerce_value` and `to_float32`.
    """

    def __init__(self, document: dict):
        self.document = document
        self.lines: list[str] = []
        self.namespace: dict[str, Any] = {
            "_f32": to_float32, "_read_float": _read_float, "_coerce": coerce_value, "_bisect": bisect_right,
            "_fp": farmhash.fingerprint64, "_lg": math.log1p, "_log1p": _log1p, "_sigmoid": _sigmoid, "_missing": InvalidFeatureError,
        }
        self.raw: dict[str, str] = {}  # raw column -> its variable
        self.outputs: list[tuple[str, str]] = []  # (column name, or "" for a dict of one-hot columns; expression)
        self.categorical: list[str] = []
        self.names: list[str] = []  # the output columns, in spec order
        self.consumed: dict[str, str] = {}  # feature consumed by a pca -> the variable of its value

    def constant(self, value: Any) -> str:
        if type(value) in (int, float) and math.isfinite(value):
            return repr(value)
        name = f"K{len(self.namespace)}"
        self.namespace[name] = value
        return name

    def emit(self, line: str) -> None:
        self.lines.append("        " + line)

    def round_float32(self, variables: list[str], exact: Callable[[str], str], verify: str | None = None) -> None:
        """Round `variables` to float32 in one ``struct`` call; `exact(var)` is the per-variable fallback.

        `verify`, a statement, runs only when the one call succeeded.
        """
        if not variables:
            return
        codec = struct.Struct(f"<{len(variables)}f")
        pack, unpack = self.constant(codec.pack), self.constant(codec.unpack)
        group = ", ".join(variables)
        self.emit("try:")
        self.emit(f"    {group}{',' if len(variables) == 1 else ''} = {unpack}({pack}({group}))")
        self.emit("except (OverflowError, struct_error):")
        self.emit(f"    {group} = {', '.join(exact(v) for v in variables)}")
        if verify:
            self.emit("else:")
            self.emit(f"    {verify}")

    def read_all(self, columns: list[tuple[str, str]]) -> None:
        """Read every raw column once: floats rounded together, ints and strings checked."""
        floats = []
        for name, kind in columns:
            var = self.raw[name] = f"r{len(self.raw)}"
            self.emit(f"{var} = event[{name!r}]")
            if kind == "float":
                floats.append((name, var))
            elif kind == "int":
                self.emit(f"if type({var}) is not int: {var} = _coerce({name!r}, 'int', {var})")
            else:
                self.emit(f"if type({var}) is not str: {var} = str({var}) if type({var}) is int else _coerce({name!r}, 'string', {var})")
        if not floats:
            return
        names = {var: name for name, var in floats}
        variables = [var for _, var in floats]
        exact = lambda var: f"_read_float({names[var]!r}, {var})"  # noqa: E731
        self.emit("if " + " and ".join(f"type({v}) is float" for v in variables) + ":")
        self.lines, outer = [], self.lines
        total = " + ".join(variables)  # NaN or infinity anywhere makes it NaN: then the exact path names the culprit
        self.round_float32(variables, exact, f"if ({total}) - ({total}) != 0.0: {', '.join(variables)} = "
                           + ", ".join(exact(v) for v in variables))
        inner, self.lines = self.lines, outer
        self.lines += ["    " + line for line in inner]
        self.emit("else:")
        self.emit(f"    {', '.join(variables)} = {', '.join(exact(v) for v in variables)}")

    def feature(self, i: int, entry: dict, rounded: list[str]) -> str:
        """Statements computing feature `i`'s value (before encoding); float64 results join `rounded`."""
        name, kind, transform = entry["name"], entry["type"], entry["transform"]
        x, out = self.raw[name], f"o{i}"
        if transform == "identity":
            return x
        if transform in ("hash", "vocabulary"):
            token = x if kind == "string" else f"str({x})"
            if transform == "hash":
                self.emit(f"{out} = _fp({token}) % {int(entry['hash_buckets'])}")
                return out
            index = {token: j for j, token in enumerate(entry["vocabulary"])}
            size, oov = len(index), int(entry.get("num_oov_buckets") or 0)
            self.emit(f"{out} = {self.constant(index)}.get({token})")
            self.emit(f"if {out} is None: {out} = {f'{size} + _fp({token}) % {oov}' if oov else '-1'}")
            return out
        if transform == "bucketize":  # float inputs are float32 already; int64 inputs are cast to float32
            boundaries = [float(b) for b in entry["boundaries"]]
            self.emit(f"{out} = _bisect({self.constant(boundaries)}, {x if kind == 'float' else f'_f32({x})'})")
            return out
        if transform == "log1p":
            self.emit(f"{out} = _lg({x}) if {x} > -1.0 else _log1p({x})")
        elif transform == "z_score":
            mean, std = float(entry["mean"]), math.sqrt(float(entry["var"]))
            self.emit(f"{out} = ({x} - {self.constant(mean)}) / {self.constant(std)}" if std != 0.0 else f"{out} = {x} - {self.constant(mean)}")
        elif transform == "min_max":
            low, high = float(entry["min"]), float(entry["max"])
            self.emit(f"{out} = ({x} - {self.constant(low)}) / {self.constant(high - low)}" if low < high else f"{out} = _sigmoid({x})")
        else:
            raise FittedTransformError(f"feature {name!r}: unknown transform {transform!r}")
        rounded.append(out)
        return out

    def pca(self, i: int, entry: dict, rounded: list[str]) -> None:
        matrix = [[float(w) for w in row] for row in entry["matrix"]]
        inputs, k = entry["inputs"], int(entry.get("k") or len(matrix[0]))
        if len(matrix) != len(inputs) or any(len(row) < k for row in matrix):
            raise FittedTransformError(f"feature {entry['name']!r}: the pca matrix is not {len(inputs)} x {k}")
        mean = [float(m) for m in entry["mean"]] if "mean" in entry else None
        std = [math.sqrt(float(v)) or 1.0 for v in entry["var"]] if entry.get("scale") else None
        terms = []
        for d, source in enumerate(inputs):
            x = self.consumed.get(source) or self.raw[source]
            expression = x if mean is None else f"{x} - {self.constant(mean[d])}"
            if std is not None:
                expression = f"({expression}) / {self.constant(std[d])}"
            self.emit(f"d{i}_{d} = {expression}")
            terms.append(f"d{i}_{d}")
        for j in range(k):
            self.emit(f"o{i}_{j} = " + " + ".join(f"{t} * {self.constant(matrix[d][j])}" for d, t in enumerate(terms)))
            rounded.append(f"o{i}_{j}")
            self.outputs.append((f"{entry['name']}_{j}", f"o{i}_{j}"))
            self.names.append(f"{entry['name']}_{j}")

    def encode(self, entry: dict, var: str) -> None:
        name, encoding = entry["name"], entry.get("encoding", "index")
        if encoding == "one_hot":
            width = int(entry["width"])
            rows = {j: {f"{name}_{c}": float(c == j) for c in range(width)} for j in range(width)}
            self.outputs.append(("", f"{self.constant(rows)}.get({var}, {self.constant(dict.fromkeys(rows[0], 0.0))})"))
            self.names += list(rows[0])
            return
        self.names.append(name)
        if encoding == "category":
            self.outputs.append((name, f"str({var})"))
            self.categorical.append(name)
        else:
            self.outputs.append((name, var))
            if entry["transform"] == "identity" and entry["type"] == "string":
                self.categorical.append(name)

    def compile(self) -> tuple[Callable[[dict], dict], str]:
        document = self.document
        entries = document["features"]
        columns: dict[str, str] = {}
        earlier: dict[str, int] = {}
        consumed_index: set[int] = set()
        for i, entry in enumerate(entries):
            if entry["transform"] == "pca":
                for source in entry["inputs"]:
                    if source in earlier:
                        consumed_index.add(earlier[source])
                    else:
                        columns.setdefault(source, entry["type"])
            else:
                columns[entry["name"]] = entry["type"]
            earlier[entry["name"]] = i
        self.read_all(list(columns.items()))
        rounded: list[str] = []
        values: dict[int, str] = {}
        for i, entry in enumerate(entries):
            if entry["transform"] != "pca":
                values[i] = self.feature(i, entry, rounded)
        self.round_float32(rounded, lambda var: f"_f32({var})")
        rounded = []
        for i, entry in enumerate(entries):
            if entry["transform"] == "pca":
                self.pca(i, entry, rounded)
            elif i in consumed_index:
                self.consumed[entry["name"]] = values[i]
            else:
                self.encode(entry, values[i])
        self.round_float32(rounded, lambda var: f"_f32({var})")
        self.assemble(document, columns)
        source = "\n".join(
            ["def apply(self, event):", "    try:", *self.lines,
             "    except KeyError as error:", "        raise _missing(str(error.args[0]), 'missing value') from None"]
        )
        self.namespace["struct_error"] = struct.error
        exec(compile(source, "<fitted transform>", "exec"), self.namespace)  # noqa: S102 - our own generated code
        return self.namespace["apply"], source

    def assemble(self, document: dict, columns: dict[str, str]) -> None:
        """The output dict (spec order), pass-through fields or the dropped-fields warning, the label."""
        literal: list[str] | None = []  # the leading plain columns form the dict literal; the rest are assignments
        ordered = self.outputs
        for column, expression in ordered:
            if column and literal is not None:
                literal.append(f"{column!r}: {expression}")
                continue
            if literal is not None:
                self.emit("out = {" + ", ".join(literal) + "}")
                literal = None
            self.emit(f"out[{column!r}] = {expression}" if column else f"out.update({expression})")
        if literal is not None:
            self.emit("out = {" + ", ".join(literal) + "}")
        label = document.get("label")
        known = set(columns) | ({label["name"]} if label else set())
        self.namespace["_KNOWN"] = frozenset(known)
        if document.get("passthrough"):
            self.emit(f"if len(event) > {len(columns)}:")
            self.emit("    for key in event:")
            self.emit("        if key not in _KNOWN: out[key] = event[key]")
        else:
            self.namespace["_dropping"] = _DroppedFields(known)
            self.emit(f"if len(event) > {len(columns)} and _dropping.armed: _dropping.check(event)")
        if label:
            self.namespace["_label"] = lambda value, n=label["name"], t=label["type"]: (
                to_float32(coerce_value(n, t, value)) if t == "float" else coerce_value(n, t, value)
            )
            self.emit(f"if {label['name']!r} in event: out[{label['name']!r}] = _label(event[{label['name']!r}])")
        self.emit("return out")


class _DroppedFields:
    """Warns once when events carry fields the spec does not name (``passthrough: false`` drops them)."""

    def __init__(self, known: set[str]):
        self.known, self.armed = frozenset(known), True

    def check(self, event: dict) -> None:
        dropped = [key for key in event if key not in self.known]
        if dropped:
            self.armed = False
            logger.warning(
                "fitted transform: dropping %d event field(s) the feature spec does not name: %s "
                "(set passthrough: true in the preprocess configuration to keep them)",
                len(dropped), ", ".join(map(str, dropped[:20])),
            )


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

    `apply` (also the instance itself, as a callable) maps one event (a dict of raw values in the
    declared types, or text that reads as them) to the transformed columns (`output_names`),
    plus the label when the event has it; a missing or unreadable input raises
    `transforms.spec.InvalidFeatureError` naming it. Fields the spec does not name are dropped
    (with one warning) or, with ``passthrough``, passed on unchanged.

    At load time the document is compiled into one straight-line function (`source_code`): the
    per-event cost is what the arithmetic costs, not walking the spec.
    """

    def __init__(self, document: dict, source: str | None = None):
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise FittedTransformError(f"not a fitted transform document (expected format {FORMAT!r})")
        self.document = document
        self.source = source
        label = document.get("label")
        self.label = label["name"] if label else None
        self.passthrough = bool(document.get("passthrough"))
        for entry in document["features"]:
            missing = [key for key in _CONSTANTS.get(entry.get("transform"), ()) if key not in entry]
            if entry.get("transform") == "pca" and (entry.get("center", True) or entry.get("scale")) and "mean" not in entry:
                missing.append("mean")
            if entry.get("transform") == "pca" and entry.get("scale") and "var" not in entry:
                missing.append("var")
            if entry.get("encoding", "index") == "one_hot" and "width" not in entry:
                missing.append("width")
            if missing:
                raise FittedTransformError(f"feature {entry.get('name')!r}: fitted constants missing: {', '.join(missing)}")
        compiler = _Compiler(document)
        function, self.source_code = compiler.compile()
        self.apply = types.MethodType(function, self)  # a bound method, as the class attribute would give
        self.output_names = compiler.names
        self.categorical_outputs = frozenset(compiler.categorical)
        self.raw_columns = list(compiler.raw)

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
        return cls(document, source=uri)

    @property
    def feature_names(self) -> list[str]:
        """Names of the transformed columns, in spec order (one-hot and pca columns expanded)."""
        return list(self.output_names)

    def apply(self, event: dict) -> dict:  # replaced per instance by the compiled function
        """Transform one event's features exactly as the fitted TFT graph does."""
        raise NotImplementedError  # pragma: no cover

    def __call__(self, event: dict) -> dict:
        return self.apply(event)

    def apply_many(self, events: Iterable[dict]) -> list[dict]:
        """Transform a micro-batch of events; same results as `apply` on each."""
        apply = self.apply
        return [apply(event) for event in events]

    def __getstate__(self) -> dict:
        return {"document": self.document, "source": self.source}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["document"], state["source"])

    def __repr__(self) -> str:
        steps = ", ".join(f"{e['name']}:{e['transform']}" for e in self.document["features"])
        return f"FittedTransform({steps})"

