"""`FittedTransform` without TensorFlow: the arithmetic, the lookups, loading and errors."""

from __future__ import annotations

import json
import math
import re
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


# -- encodings, passthrough, pca, the compiled function --------------------------------------

ENCODED = {
    "format": FORMAT,
    "label": {"name": "y", "type": "string"},
    "features": [
        {"name": "b", "type": "float", "transform": "bucketize", "boundaries": [0.0, 1.0], "encoding": "one_hot", "width": 3},
        {"name": "h", "type": "int", "transform": "hash", "hash_buckets": 4, "encoding": "category", "width": 4},
        {"name": "v", "type": "string", "transform": "vocabulary", "vocabulary": ["a", "b"], "num_oov_buckets": 0,
         "encoding": "one_hot", "width": 2},
        {"name": "x", "type": "float", "transform": "log1p"},
    ],
}


def test_one_hot_and_category_encodings():
    fitted = FittedTransform.from_document(ENCODED)
    out = fitted.apply({"b": 0.5, "h": 12, "v": "b", "x": 0.0, "y": "yes"})
    assert out == {"b_0": 0.0, "b_1": 1.0, "b_2": 0.0, "h": str(farmhash.fingerprint64(b"12") % 4),
                   "v_0": 0.0, "v_1": 1.0, "x": 0.0, "y": "yes"}
    assert fitted.feature_names == ["b_0", "b_1", "b_2", "h", "v_0", "v_1", "x"]
    assert fitted.categorical_outputs == {"h"}
    # an unknown token without OOV buckets (index -1) is all zeros, as tf.one_hot gives
    assert [fitted.apply({"b": 9.0, "h": 1, "v": "zz", "x": 0.0})[k] for k in ("b_2", "v_0", "v_1")] == [1.0, 0.0, 0.0]


def test_passthrough_keeps_unnamed_fields_in_event_order():
    fitted = FittedTransform.from_document({**ENCODED, "passthrough": True})
    out = fitted.apply({"q": 1.5, "b": 0.5, "h": 1, "v": "a", "x": 1.0, "s": "text", "y": "no"})
    assert list(out)[-3:] == ["q", "s", "y"] and out["q"] == 1.5 and out["s"] == "text"
    assert fitted.apply({"b": 0.5, "h": 1, "v": "a", "x": 1.0}).keys() == set(fitted.feature_names)


def test_dropping_unnamed_fields_warns_once(caplog):
    fitted = FittedTransform.from_document(ENCODED)
    event = {"b": 0.5, "h": 1, "v": "a", "x": 1.0}
    with caplog.at_level("WARNING", logger="transforms.fitted"):
        fitted.apply(event)
        fitted.apply({**event, "y": "label only"})  # the label is not dropped
        assert not caplog.records
        fitted.apply({**event, "q": 1.0, "r": 2.0})
        fitted.apply({**event, "q": 1.0})
    assert len(caplog.records) == 1 and "dropping 2 event field(s) the feature spec does not name: q, r" in caplog.text
    assert "passthrough: true" in caplog.text


PCA = {
    "format": FORMAT,
    "label": None,
    "features": [
        {"name": "a", "type": "float", "transform": "z_score", "mean": 1.0, "var": 4.0},
        {"name": "p", "type": "float", "transform": "pca", "inputs": ["a", "b", "c"], "k": 2, "center": True, "scale": True,
         "mean": [0.5, -1.0, 2.0], "var": [1.0, 0.25, 0.0], "matrix": [[0.6, 0.0], [0.8, 0.0], [0.0, 1.0]]},
        {"name": "n", "type": "int", "transform": "identity"},
    ],
}


def test_pca_projects_centred_scaled_inputs_and_consumes_earlier_features():
    fitted = FittedTransform.from_document(PCA)
    a, b, c = (f32(3.0) - 1.0) / 2.0, f32(0.1), f32(7.0)
    centred = [(f32(a) - 0.5) / 1.0, (b + 1.0) / 0.5, (c - 2.0) / 1.0]  # variance 0: not scaled
    out = fitted.apply({"a": 3.0, "b": 0.1, "c": 7, "n": 4})
    assert out == {"p_0": f32(centred[0] * 0.6 + centred[1] * 0.8 + centred[2] * 0.0),
                   "p_1": f32(centred[0] * 0.0 + centred[1] * 0.0 + centred[2] * 1.0), "n": 4}
    assert fitted.feature_names == ["p_0", "p_1", "n"] and fitted.raw_columns == ["a", "b", "c", "n"]


def test_bad_or_missing_pca_inputs_are_dead_letters_with_the_reason():
    from online.config import EventsConfig, ModelConfig
    from online.events import EventError
    from online.learning.learner import Learner

    fitted = FittedTransform.from_document(PCA)
    learner = Learner(ModelConfig(pipeline=[{"linear_model.LinearRegression": {}}], metrics=["MAE"]), EventsConfig(target="y"),
                      transform=fitted.apply)
    good = {"a": 1.0, "b": 2.0, "c": 3.0, "n": 1, "y": 0.5}
    learner.process(dict(good))
    cases = [({k: v for k, v in good.items() if k != "c"}, "feature transform failed: c: missing value"),
             ({**good, "b": "high"}, "feature transform failed: b: expected a number, got 'high'"),
             ({**good, "b": float("nan")}, "feature transform failed: b: expected a finite number, got nan"),
             ({**good, "n": 1.5}, "feature transform failed: n: expected an int, got 1.5")]
    for event, reason in cases:
        with pytest.raises(EventError) as caught:
            learner.process(event)
        assert str(caught.value) == reason
    assert learner.report()["events_learned"] == 1


def test_a_wrong_pca_matrix_is_refused():
    bad = {**PCA, "features": [PCA["features"][0], {**PCA["features"][1], "matrix": [[1.0, 0.0]]}]}
    with pytest.raises(FittedTransformError, match="'p': the pca matrix is not 3 x 2"):
        FittedTransform.from_document(bad)
    with pytest.raises(FittedTransformError, match="'p': fitted constants missing: var"):
        FittedTransform.from_document({**PCA, "features": [{k: v for k, v in PCA["features"][1].items() if k != "var"}]})


def test_raw_events_in_the_declared_types_and_their_text_are_read_alike():
    fitted = FittedTransform.from_document(DOCUMENT)
    as_text = {k: (str(v) if k != "extra" else v) for k, v in EVENT.items()}
    assert fitted.apply(as_text) == fitted.apply(EVENT)
    assert fitted.apply({**EVENT, "v0": "7"})["v0"] == fitted.apply(EVENT)["v0"] == 0


def test_compiled_function_is_straight_line_and_bound():
    fitted = FittedTransform.from_document(DOCUMENT)
    assert "for " not in fitted.source_code.split("if len(event)")[0]  # no loop over the spec per event
    assert "1.5" in fitted.source_code and "_bisect(" in fitted.source_code  # constants bound as literals
    assert fitted.apply.__self__ is fitted and fitted(EVENT) == fitted.apply(EVENT)


def test_pickles_and_reloads_the_same_function():
    import pickle

    fitted = FittedTransform.from_document({**ENCODED, "passthrough": True})
    event = {"b": 0.5, "h": 12, "v": "b", "x": 0.0, "extra": 3}
    assert pickle.loads(pickle.dumps(fitted)).apply(event) == fitted.apply(event)
    assert pickle.loads(pickle.dumps(fitted.apply))(event) == fitted.apply(event)


def test_event_reader_accepts_category_outputs_of_the_transform():
    from online.config import EventsConfig
    from online.events import EventError, EventReader

    fitted = FittedTransform.from_document(ENCODED)
    reader = EventReader(EventsConfig(target="y"), label_kind="class", transform=fitted.apply)
    x, y, _ = reader.split({"b": 0.5, "h": 12, "v": "b", "x": 0.0, "y": "yes"})
    assert isinstance(x["h"], str) and y == "yes"
    passing = EventReader(EventsConfig(target="y"), label_kind="class", transform=FittedTransform.from_document({**ENCODED, "passthrough": True}).apply)
    with pytest.raises(EventError, match="feature 'note' is not a number: 'free text'"):  # passed-through strings are still checked
        passing.split({"b": 0.5, "h": 12, "v": "b", "x": 0.0, "note": "free text", "y": "yes"})


def test_fast_and_exact_paths_agree_at_the_edges():
    """The compiled function rounds float inputs together; values off that path take the exact one, with the same results."""
    fitted = FittedTransform.from_document(DOCUMENT)
    huge = fitted.apply({**EVENT, "z": 3.5e38})  # finite, beyond float32: read as infinity, as TFT's float32 input
    assert huge["z"] == math.inf and huge["m"] == 0.25
    assert fitted.apply({**EVENT, "z": 2}) == fitted.apply({**EVENT, "z": 2.0})  # an integer in a float column
    assert fitted.apply({**EVENT, "b": "2.4999999999"})["b"] == 3  # text, then float32
    for bad, reason in ((float("inf"), "expected a finite number, got inf"), (True, "expected a number, got True"), ("x", "expected a number, got 'x'")):
        with pytest.raises(InvalidFeatureError, match=f"^m: {re.escape(reason)}$"):
            fitted.apply({**EVENT, "m": bad})
    assert fitted.apply({**EVENT, "z": 1e30})["z"] == to_float32((to_float32(1e30) - 1.5) / 2.0)
    # an output beyond float32 becomes infinity, as tf.cast does
    wide = FittedTransform.from_document({**DOCUMENT, "features": [{"name": "z", "type": "float", "transform": "z_score", "mean": 0.0, "var": 1e-80}]})
    assert wide.apply({"z": 1.0})["z"] == math.inf
