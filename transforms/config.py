"""Typed configuration of ``riverbeam preprocess``: features, label, input, output.

>>> from core.configuration import parse_config
>>> job = parse_config({
...     "features": [{"name": "x", "type": "float", "transform": "z_score"}],
...     "label": {"name": "y", "type": "int"},
...     "input": {"pattern": "data/*.csv", "format": "csv"},
...     "output": {"dir": "out", "split": {"eval_fraction": 0.2}},
... }, PreprocessJobConfig, environ={})
>>> job.output.formats, job.output.split.eval_fraction, job.max_bad_rows
(['tfrecord'], 0.2, 0)
>>> parse_config({"features": [], "input": {"pattern": "a.csv"}, "output": {"dir": "o"}},
...              PreprocessJobConfig, environ={})
Traceback (most recent call last):
...
core.errors.ConfigError: features: List should have at least 1 item after validation, not 0
"""

from __future__ import annotations

from typing import Literal

import pydantic

from core.configuration import Section
from transforms.spec import FeatureSpec, LabelSpec, check_unique_names

INPUT_FORMATS = ("csv", "jsonl", "parquet", "tfrecord")
OUTPUT_FORMATS = ("tfrecord", "parquet")


class InputConfig(Section):
    """Files to read: a local, ``gs://`` or ``s3://`` glob and their format.

    CSV files start with a header row naming the columns; JSON lines hold one object per line;
    TFRecord files hold ``tf.train.Example`` records.
    """

    pattern: str = pydantic.Field(min_length=1)
    format: Literal["csv", "jsonl", "parquet", "tfrecord"] = "csv"


class SplitConfig(Section):
    """Deterministic train/eval split by a fingerprint of each row; analysis uses train only."""

    eval_fraction: float = pydantic.Field(default=0.0, ge=0.0, lt=1.0)

    @pydantic.field_validator("eval_fraction", mode="before")
    @classmethod
    def _int_is_a_number(cls, value):
        return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


class OutputConfig(Section):
    """Where the transformed data, the errors and the fitted transform go."""

    dir: str = pydantic.Field(min_length=1)
    formats: list[Literal["tfrecord", "parquet"]] = pydantic.Field(default=["tfrecord"], min_length=1)
    split: SplitConfig = SplitConfig()


class PreprocessJobConfig(Section):
    """``riverbeam preprocess``: analyse and transform historical data with tensorflow-transform."""

    features: list[FeatureSpec] = pydantic.Field(min_length=1)
    label: LabelSpec | None = None
    input: InputConfig
    output: OutputConfig
    max_bad_rows: int = pydantic.Field(default=0, ge=0)
    passthrough: bool = False
    """What happens online to an event's fields the spec does not name: with ``false`` they are
    dropped (a warning names them, once), with ``true`` they reach the model unchanged. The
    batch outputs hold the spec's columns and the label only (declare a field ``identity`` to keep it)."""

    @pydantic.model_validator(mode="after")
    def _unique_names(self) -> "PreprocessJobConfig":
        check_unique_names(self.features, self.label)
        return self
