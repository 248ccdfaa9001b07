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
from typing import Any, Literal

import pydantic

from core.configuration import Section
from core.errors import RiverbeamError

FeatureType = Literal["float", "int", "string"]
TransformName = Literal["z_score", "min_max", "bucketize", "vocabulary", "hash", "log1p", "identity"]

NUMERIC_TRANSFORMS = ("z_score", "min_max", "bucketize", "log1p")
CATEGORICAL_TRANSFORMS = ("vocabulary", "hash")

# parameter -> the transform that takes it
_PARAMETERS = {
    "num_buckets": "bucketize",
    "top_k": "vocabulary",
    "frequency_threshold": "vocabulary",
    "num_oov_buckets": "vocabulary",
    "hash_buckets": "hash",
}
_REQUIRED = {"num_buckets": "bucketize", "hash_buckets": "hash"}


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
    * ``identity``: x as read.

    Numeric transforms take ``float`` or ``int`` features, ``vocabulary`` and ``hash`` take
    ``string`` or ``int`` ones (integers in decimal). Float outputs are 32-bit, as TFT writes them.
    """

    name: str = pydantic.Field(min_length=1)
    type: FeatureType
    transform: TransformName
    num_buckets: int | None = pydantic.Field(default=None, validate_default=True)
    top_k: int | None = pydantic.Field(default=None, validate_default=True)
    frequency_threshold: int | None = pydantic.Field(default=None, validate_default=True)
    num_oov_buckets: int | None = pydantic.Field(default=None, validate_default=True)
    hash_buckets: int | None = pydantic.Field(default=None, validate_default=True)

    @pydantic.field_validator("transform")
    @classmethod
    def _transform_fits_type(cls, transform: str, info: pydantic.ValidationInfo) -> str:
        kind = info.data.get("type")
        if kind == "string" and transform in NUMERIC_TRANSFORMS:
            raise ValueError(f"{transform} needs a float or int feature, not string")
        if kind == "float" and transform in CATEGORICAL_TRANSFORMS:
            raise ValueError(f"{transform} needs a string or int feature, not float")
        return transform

    @pydantic.field_validator("num_buckets", "top_k", "frequency_threshold", "num_oov_buckets", "hash_buckets")
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

    @property
    def output_kind(self) -> str:
        """Type of the transformed value: ``float``, ``int`` or ``string``.

        >>> FeatureSpec(name="x", type="int", transform="z_score").output_kind
        'float'
        """
        if self.transform in ("z_score", "min_max", "log1p"):
            return "float"
        if self.transform == "identity":
            return self.type
        return "int"

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


def check_unique_names(features: list[FeatureSpec], label: LabelSpec | None) -> None:
    """Raise ``ValueError`` naming a feature (or the label) whose name is taken twice.

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
