"""`FittedTransform` without TensorFlow: the arithmetic, the lookups, loading and errors."""

from __future__ import annotations

import json
import math
import struct
import sys

import farmhash
import pytest

from transforms.fitted import FITTED_FILENAME, FORMAT, FittedTransform, FittedTransformError, to_float32
from transforms.spec import InvalidFeatureError

DOCUMENT = {
    "format": FORMAT,
    "label": {"name": "y", "type": "float"},
    "features": [
        {"name": "z", "type": "float", "transform": "z_score", "mean": 1.5, "var": 4.0},
        {"name": "flat", "type": "int", "transform": "z_score", "mean": 3.0, "var": 0.0},
        {"name": "m", "type": "float", "transform": "min_max", "min": -1.0, "max": 3.0},
        {"name": "same", "type": "float", "transform": "min_max", "min": 2.0, "max": 2.0},
        {"name": "b", "type": "float", "transform": "bucketize", "boundaries": [0.0, 1.0, 2.5]},
        {"name": "v", "type": "string", "transform": "vocabulary", "vocabulary": ["red", "blue"], "num_oov_buckets": 3},
        {"name": "v0", "type": "int", "transform": "vocabulary", "vocabulary": ["7"], "num_oov_buckets": 0},
        {"name": "h", "type": "string", "transform": "hash", "hash_buckets": 10},
        {"name": "l", "type": "float", "transform": "log1p"},
        {"name": "i", "type": "int", "transform": "identity"},
    ],
}
EVENT = {"z": 2.5, "flat": 5, "m": 0.0, "same": 0.0, "b": 1.0, "v": "blue", "v0": 7, "h": "abc", "l": 1.0, "i": "12", "y": 0.1, "extra": 1}


def f32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


def test_apply_matches_the_formulas():
    out = FittedTransform.from_document(DOCUMENT).apply(EVENT)
    assert out == {
        "z": 0.5, "flat": 2.0, "m": 0.25, "same": 0.5, "b": 2, "v": 1, "v0": 0,
        "h": farmhash.fingerprint64(b"abc") % 10, "l": f32(math.log1p(1.0)), "i": 12, "y": f32(0.1),
    }


def test_inputs_are_read_as_float32_like_tft():
    fitted = FittedTransform.from_document(DOCUMENT)
    assert fitted.apply({**EVENT, "z": 0.1})["z"] == f32((f32(0.1) - 1.5) / 2.0)
    # a value just below a float32 boundary rounds onto it, as TFT's float32 input does
    assert fitted.apply({**EVENT, "b": 2.5 - 1e-9})["b"] == 3


def test_out_of_vocabulary_values_hash_into_extra_buckets():
    fitted = FittedTransform.from_document(DOCUMENT)
    assert fitted.apply({**EVENT, "v": "green"})["v"] == 2 + farmhash.fingerprint64(b"green") % 3
    assert fitted.apply({**EVENT, "v0": 8})["v0"] == -1


def test_bad_events_raise_errors_naming_the_feature():
    fitted = FittedTransform.from_document(DOCUMENT)
    with pytest.raises(InvalidFeatureError, match="^z: missing value$"):
        fitted.apply({k: v for k, v in EVENT.items() if k != "z"})
    with pytest.raises(InvalidFeatureError, match="^b: expected a number"):
        fitted.apply({**EVENT, "b": "high"})


def test_apply_many_equals_apply():
    fitted = FittedTransform.from_document(DOCUMENT)
    events = [{**EVENT, "z": float(i), "v": ["red", "blue", "x"][i % 3]} for i in range(5)]
    assert fitted.apply_many(events) == [fitted.apply(e) for e in events]


def test_load_from_a_directory_or_the_file(tmp_path):
    (tmp_path / FITTED_FILENAME).write_text(json.dumps(DOCUMENT))
    assert FittedTransform.load(str(tmp_path)).feature_names == [f["name"] for f in DOCUMENT["features"]]
    assert FittedTransform.load(str(tmp_path / FITTED_FILENAME)).label == "y"


def test_load_errors_are_one_line(tmp_path):
    with pytest.raises(FittedTransformError, match="cannot read"):
        FittedTransform.load(str(tmp_path / "missing"))
    (tmp_path / FITTED_FILENAME).write_text(json.dumps({"format": "other"}))
    with pytest.raises(FittedTransformError, match="not a fitted transform document"):
        FittedTransform.load(str(tmp_path))
    broken = {**DOCUMENT, "features": [{"name": "z", "type": "float", "transform": "z_score", "mean": 1.0}]}
    (tmp_path / FITTED_FILENAME).write_text(json.dumps(broken))
    with pytest.raises(FittedTransformError, match="'z': fitted constants missing: var"):
        FittedTransform.load(str(tmp_path))


def test_float32_rounding_and_overflow():
    assert to_float32(1e39) == math.inf and to_float32(-1e39) == -math.inf
    assert to_float32(16777217.0) == 16777216.0


def test_online_side_does_not_import_tensorflow_or_beam():
    import subprocess  # other tests may have imported them: check a fresh process

    code = "import transforms.fitted, transforms.config, sys; print('tensorflow' in sys.modules, 'apache_beam' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False False"
