"""Feature specifications: which input feature gets which fitted transform.

A spec is a list of features, each with a name, a type (``float``, ``int``, ``string``) and a
transform; the label, if any, passes through unchanged. Parameters that a transform does not
take are errors, and so are missing ones, each naming the feature's position and the field:

>>> from core.configuration import parse_config
>>> class Job(Section):
...     features: list[FeatureSpec]
>>> parse_config({"features": [{"name": "x", "type": "float", "transform": "bucketize",
...                             "num_buckets": "four"}]}, Job, environ={})
Traceback (most recent call last):
...
core.errors.ConfigError: features[0].num_buckets: expected an integer, got 'four'
>>> parse_config({"features": [{"name": "x", "type": "string", "transform": "z_score"}]}, Job, environ={})
Traceback (most recent call last):
...
core.errors.ConfigError: features[0].transform: z_score needs a float or int feature, not string

The same coercion rules hold in the batch pipeline (a value that fails them makes a bad row) and
online (`FittedTransform.apply` raises `InvalidFeatureError`):

>>> FeatureSpec(name="n", type="int", transform="identity").coerce("12")
12
>>> FeatureSpec(name="s", type="string", transform="hash", hash_buckets=8).coerce(7)
'7'
"""

from __future__ import annotations

import math
from typing import Any, Callable, Literal

import pydantic

from core.configuration import Section
from core.errors import RiverbeamError

FeatureType = Literal["float", "int", "string"]
TransformName = Literal["z_score", "min_max", "bucketize", "vocabulary", "hash", "log1p", "identity", "pca"]
Encoding = Literal["index", "one_hot", "category"]

NUMERIC_TRANSFORMS = ("z_score", "min_max", "bucketize", "log1p", "pca")
CATEGORICAL_TRANSFORMS = ("vocabulary", "hash")
INDEX_TRANSFORMS = ("bucketize", "vocabulary", "hash")  # outputs an index: `encoding` applies

# parameter -> the transform that takes it
_PARAMETERS = {
    "num_buckets": "bucketize",
    "top_k": "vocabulary",
    "frequency_threshold": "vocabulary",
    "num_oov_buckets": "vocabulary",
    "hash_buckets": "hash",
    "inputs": "pca",
    "k": "pca",
}
_REQUIRED = {"num_buckets": "bucketize", "hash_buckets": "hash", "inputs": "pca", "k": "pca"}


class InvalidFeatureError(RiverbeamError):
    """A feature value is missing or cannot be read as its declared type.

    >>> str(InvalidFeatureError("age", "expected an int, got 'x'"))
    "age: expected an int, got 'x'"
    """

    def __init__(self, feature: str, message: str):
        self.feature = feature
        self.message = message
        super().__init__(f"{feature}: {message}")


def coerce_value(name: str, kind: str, value: Any) -> float | int | str:
    """Read `value` as a ``float``, ``int`` or ``string`` feature; raise `InvalidFeatureError`.

    Text (as CSV gives) is parsed; floats must be finite; a string feature accepts integers
    (identifiers such as store numbers) and reads them in decimal.

    >>> coerce_value("x", "float", "2.5"), coerce_value("n", "int", 3.0)
    (2.5, 3)
    >>> coerce_value("x", "float", "nan")
    Traceback (most recent call last):
    ...
    transforms.spec.InvalidFeatureError: x: expected a finite number, got 'nan'
    """
    if value is None or (isinstance(value, str) and value == "" and kind != "string"):
        raise InvalidFeatureError(name, "missing value")
    if kind == "string":
        if isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, bytes):
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidFeatureError(name, "expected UTF-8 text") from None
        raise InvalidFeatureError(name, f"expected a string, got {value!r}")
    if isinstance(value, bool):
        raise InvalidFeatureError(name, f"expected {'an int' if kind == 'int' else 'a number'}, got {value!r}")
    if kind == "float":
        if isinstance(value, (int, float)):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                raise InvalidFeatureError(name, f"expected a number, got {value!r}") from None
        else:
            try:  # numpy scalars
                number = float(value)
            except (TypeError, ValueError):
                raise InvalidFeatureError(name, f"expected a number, got {value!r}") from None
        if not math.isfinite(number):
            raise InvalidFeatureError(name, f"expected a finite number, got {value!r}")
        return number
    # int
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        raise InvalidFeatureError(name, f"expected an int, got {value!r}")
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            try:
                number = float(value)
            except ValueError:
                number = math.nan
            if math.isfinite(number) and number.is_integer():
                return int(number)
            raise InvalidFeatureError(name, f"expected an int, got {value!r}") from None
    try:  # numpy integers
        return int(value.__index__())
    except (AttributeError, TypeError):
        raise InvalidFeatureError(name, f"expected an int, got {value!r}") from None


def value_reader(name: str, kind: str) -> Callable[[Any], float | int | str]:
    """`coerce_value` for one column, with a fast path for the usual types: the same values, the same errors.

    >>> read = value_reader("x", "float")
    >>> read("2.5"), read(3), read("1e3")
    (2.5, 3.0, 1000.0)
    >>> read("")
    Traceback (most recent call last):
    ...
    transforms.spec.InvalidFeatureError: x: missing value
    """
    if kind == "float":

        def read(value: Any) -> float | int | str:
            kind_of = type(value)
            if kind_of is str or kind_of is float or kind_of is int:
                try:
                    number = float(value)
                except (ValueError, OverflowError):
                    return coerce_value(name, kind, value)
                if number - number == 0.0:
                    return number
            return coerce_value(name, kind, value)

    elif kind == "int":

        def read(value: Any) -> float | int | str:
            if type(value) is int:
                return value
            if type(value) is str:
                try:
                    return int(value)
                except ValueError:
                    pass
            return coerce_value(name, kind, value)

    else:

        def read(value: Any) -> float | int | str:
            return value if type(value) is str else coerce_value(name, kind, value)

    return read


class FeatureSpec(Section):
    """One input feature and its transform.

    Transforms and their parameters:

    * ``z_score``: (x - mean) / std over the analysed data (x - mean when std is 0);
    * ``min_max``: (x - min) / (max - min) (sigmoid(x) when max == min);
    * ``bucketize``: the index of x's quantile bucket; ``num_buckets`` (required);
    * ``vocabulary``: the index of x in a vocabulary sorted by frequency; ``top_k``,
      ``frequency_threshold``, ``num_oov_buckets`` (unknown values hash into that many extra
      indices; with 0 they map to -1);
    * ``hash``: FarmHash fingerprint of x modulo ``hash_buckets`` (required);
    * ``log1p``: log(1 + x);
    * ``identity``: x as read;
    * ``pca``: the first ``k`` principal components of the numeric features ``inputs`` (each the
      raw column read as ``type``, or the output of an earlier feature of the spec, which it then
      consumes), centred first (``center``, default true) and scaled to unit variance first
      (``scale``, default false); written as ``<name>_0`` ... ``<name>_<k-1>``.

    ``encoding`` says how an index (``bucketize``, ``vocabulary``, ``hash``) reaches the model:
    ``index`` (an integer, TFT's own output; right for trees, wrong for linear models, which read
    it as a magnitude), ``one_hot`` (one 0/1 float column ``<name>_<i>`` per index: dense, for
    linear models; a vocabulary needs ``top_k`` to fix its width) or ``category`` (the index as a
    string, for River's ``OneHotEncoder`` and other categorical learners).

    Numeric transforms take ``float`` or ``int`` features, ``vocabulary`` and ``hash`` take
    ``string`` or ``int`` ones (integers in decimal). Float outputs are 32-bit, as TFT writes them.

    >>> FeatureSpec(name="c", type="int", transform="hash", hash_buckets=3, encoding="one_hot").output_names
    ['c_0', 'c_1', 'c_2']
    """

    name: str = pydantic.Field(min_length=1)
    type: FeatureType
    transform: TransformName
    num_buckets: int | None = pydantic.Field(default=None, validate_default=True)
    top_k: int | None = pydantic.Field(default=None, validate_default=True)
    frequency_threshold: int | None = pydantic.Field(default=None, validate_default=True)
    num_oov_buckets: int | None = pydantic.Field(default=None, validate_default=True)
    hash_buckets: int | None = pydantic.Field(default=None, validate_default=True)
    inputs: list[str] | None = pydantic.Field(default=None, validate_default=True)
    k: int | None = pydantic.Field(default=None, validate_default=True)
    center: bool = True
    scale: bool = False
    encoding: Encoding = "index"

    @pydantic.field_validator("transform")
    @classmethod
    def _transform_fits_type(cls, transform: str, info: pydantic.ValidationInfo) -> str:
        kind = info.data.get("type")
        if kind == "string" and transform in NUMERIC_TRANSFORMS:
            raise ValueError(f"{transform} needs a float or int feature, not string")
        if kind == "float" and transform in CATEGORICAL_TRANSFORMS:
            raise ValueError(f"{transform} needs a string or int feature, not float")
        return transform

    @pydantic.field_validator("num_buckets", "top_k", "frequency_threshold", "num_oov_buckets", "hash_buckets", "k")
    @classmethod
    def _parameter_fits_transform(cls, value: int | None, info: pydantic.ValidationInfo) -> int | None:
        transform = info.data.get("transform")
        owner = _PARAMETERS[info.field_name]
        if transform is None:
            return value
        if value is None:
            if transform == _REQUIRED.get(info.field_name):
                raise ValueError(f"required by transform {transform}")
            return value
        if transform != owner:
            raise ValueError(f"applies only to transform {owner}, not {transform}")
        minimum = 0 if info.field_name in ("frequency_threshold", "num_oov_buckets") else 1
        if info.field_name == "num_buckets":
            minimum = 2
        if value < minimum:
            raise ValueError(f"must be at least {minimum}, got {value}")
        return value

    @pydantic.field_validator("inputs")
    @classmethod
    def _inputs_fit_transform(cls, value: list[str] | None, info: pydantic.ValidationInfo) -> list[str] | None:
        transform = info.data.get("transform")
        if transform is None:
            return value
        if value is None:
            if transform == "pca":
                raise ValueError("required by transform pca")
            return value
        if transform != "pca":
            raise ValueError(f"applies only to transform pca, not {transform}")
        if len(value) < 2:
            raise ValueError(f"pca needs at least 2 inputs, got {len(value)}")
        if len(set(value)) != len(value):
            raise ValueError("names an input twice")
        return value

    @pydantic.model_validator(mode="after")
    def _options_fit_transform(self) -> "FeatureSpec":
        if self.transform != "pca" and (not self.center or self.scale):
            raise ValueError("center and scale apply only to transform pca")
        if self.transform == "pca" and self.k is not None and self.inputs is not None and self.k > len(self.inputs):
            raise ValueError(f"k: at most the number of inputs ({len(self.inputs)}), got {self.k}")
        if self.encoding != "index" and self.transform not in INDEX_TRANSFORMS:
            raise ValueError(f"encoding applies only to transforms {', '.join(INDEX_TRANSFORMS)}, not {self.transform}")
        if self.encoding == "one_hot" and self.transform == "vocabulary" and self.top_k is None:
            raise ValueError("encoding one_hot of a vocabulary needs top_k (the width of the one-hot columns)")
        return self

    @property
    def width(self) -> int:
        """How many indices an index transform has (the one-hot width); 1 for the others.

        >>> FeatureSpec(name="v", type="string", transform="vocabulary", top_k=5, num_oov_buckets=2).width
        7
        """
        if self.transform == "bucketize":
            return self.num_buckets
        if self.transform == "hash":
            return self.hash_buckets
        if self.transform == "vocabulary":
            return (self.top_k or 0) + (self.num_oov_buckets or 0)
        return self.k if self.transform == "pca" else 1

    @property
    def output_names(self) -> list[str]:
        """Names of the transformed columns: the feature's name, or ``<name>_<i>`` for one-hot and pca."""
        if self.transform == "pca" or self.encoding == "one_hot":
            return [f"{self.name}_{i}" for i in range(self.width)]
        return [self.name]

    @property
    def output_kind(self) -> str:
        """Type of the transformed value(s): ``float``, ``int`` or ``string``.

        >>> FeatureSpec(name="x", type="int", transform="z_score").output_kind
        'float'
        """
        if self.transform in ("z_score", "min_max", "log1p", "pca") or self.encoding == "one_hot":
            return "float"
        if self.transform == "identity":
            return self.type
        return "string" if self.encoding == "category" else "int"

    def coerce(self, value: Any) -> float | int | str:
        """Read one raw value as this feature's type (see `coerce_value`)."""
        return coerce_value(self.name, self.type, value)


class LabelSpec(Section):
    """The label column: read with its type and written unchanged next to the features."""

    name: str = pydantic.Field(min_length=1)
    type: FeatureType

    def coerce(self, value: Any) -> float | int | str:
        """Read one raw label value as the label's type."""
        return coerce_value(self.name, self.type, value)


def raw_columns(features: list[FeatureSpec], label: LabelSpec | None = None) -> list[tuple[str, str]]:
    """The raw columns a spec reads, ``(name, type)`` in order: features, pca inputs, the label.

    A pca input that names an earlier feature reads nothing new; any other is a raw column read
    as the pca feature's type.

    >>> raw_columns([FeatureSpec(name="a", type="float", transform="z_score"),
    ...              FeatureSpec(name="p", type="float", transform="pca", inputs=["a", "b"], k=1)])
    [('a', 'float'), ('b', 'float')]
    """
    columns: dict[str, str] = {}
    for feature in features:
        if feature.transform == "pca":
            for name in feature.inputs:
                columns.setdefault(name, feature.type)
        else:
            columns[feature.name] = feature.type
    if label is not None:
        columns[label.name] = label.type
    return list(columns.items())


def pca_sources(features: list[FeatureSpec]) -> dict[int, list[int | None]]:
    """For each pca feature (by index): per input, the index of the earlier feature it consumes, or None (a raw column).

    >>> pca_sources([FeatureSpec(name="a", type="float", transform="z_score"),
    ...              FeatureSpec(name="p", type="float", transform="pca", inputs=["b", "a"], k=1)])
    {1: [None, 0]}
    """
    found: dict[int, list[int | None]] = {}
    for i, feature in enumerate(features):
        if feature.transform == "pca":
            earlier = {f.name: j for j, f in enumerate(features[:i])}
            found[i] = [earlier.get(name) for name in feature.inputs]
    return found


def consumed_features(features: list[FeatureSpec]) -> set[int]:
    """Indices of features whose output a pca feature consumes (they are not written themselves).

    >>> consumed_features([FeatureSpec(name="a", type="float", transform="z_score"),
    ...                    FeatureSpec(name="p", type="float", transform="pca", inputs=["a", "b"], k=1)])
    {0}
    """
    return {j for sources in pca_sources(features).values() for j in sources if j is not None}


ANALYZED = ("z_score", "min_max", "bucketize", "vocabulary")  # transforms that need an analysis pass over the data


def analysis_phases(features: list[FeatureSpec]) -> int:
    """How many successive analysis passes tensorflow-transform makes for a spec.

    A z-score, min-max, bucketize or vocabulary is one pass over the raw data; a pca is one more
    after the features it consumes (two with ``scale``: the variances first, then the matrix).

    >>> analysis_phases([FeatureSpec(name="a", type="float", transform="z_score"),
    ...                  FeatureSpec(name="p", type="float", transform="pca", inputs=["a", "b"], k=1, scale=True)])
    3
    """
    phases: dict[int, int] = {}
    for i, feature in enumerate(features):
        if feature.transform == "pca":
            before = max((phases[j] for j in pca_sources(features)[i] if j is not None), default=0)
            phases[i] = before + 1 + (1 if feature.scale else 0)
        else:
            phases[i] = 1 if feature.transform in ANALYZED else 0
    return max(phases.values(), default=0)


def check_unique_names(features: list[FeatureSpec], label: LabelSpec | None) -> None:
    """Raise ``ValueError`` naming a feature (or the label) whose name is taken twice.

    Also checks what the spec writes (one-hot and pca columns) and what pca consumes: an earlier
    feature with a float output, consumed once.

    >>> check_unique_names([FeatureSpec(name="a", type="float", transform="log1p")],
    ...                    LabelSpec(name="a", type="int"))
    Traceback (most recent call last):
    ...
    ValueError: label name 'a' is also features[0].name
    """
    seen: dict[str, int] = {}
    for i, feature in enumerate(features):
        if feature.name in seen:
            raise ValueError(f"features[{i}].name: {feature.name!r} is also features[{seen[feature.name]}].name")
        seen[feature.name] = i
    if label is not None and label.name in seen:
        raise ValueError(f"label name {label.name!r} is also features[{seen[label.name]}].name")
    consumed: dict[int, int] = {}
    for i, sources in pca_sources(features).items():
        for name, j in zip(features[i].inputs, sources):
            if j is None:
                if name in seen or (label is not None and name == label.name):
                    raise ValueError(f"features[{i}].inputs: {name!r} is features[{seen.get(name)}] or the label, which comes later")
                continue
            if features[j].output_kind != "float" or len(features[j].output_names) != 1:
                raise ValueError(f"features[{i}].inputs: {name!r} (features[{j}]) must have one float output, not {features[j].transform}")
            if j in consumed:
                raise ValueError(f"features[{i}].inputs: {name!r} is already consumed by features[{consumed[j]}]")
            consumed[j] = i
    written: dict[str, str] = {}
    for i, feature in enumerate(features):
        if i in consumed:
            continue
        for column in feature.output_names:
            if column in written or (column != feature.name and column in seen):
                raise ValueError(f"features[{i}]: output column {column!r} is also written by {written.get(column, 'another feature')}")
            written[column] = f"features[{i}]"
    if label is not None and label.name in written:
        raise ValueError(f"label name {label.name!r} is also an output column of {written[label.name]}")
