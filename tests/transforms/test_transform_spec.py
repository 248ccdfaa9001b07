"""Feature specs and the preprocess configuration: errors name the feature and the field."""

from __future__ import annotations

import pytest

from core.configuration import load_config, parse_config
from core.errors import ConfigError
from transforms.config import PreprocessJobConfig
from transforms.spec import FeatureSpec, InvalidFeatureError, coerce_value

BASE = {"input": {"pattern": "data.csv"}, "output": {"dir": "out"}}


def job(*features, **extra):
    return parse_config({"features": list(features), **BASE, **extra}, PreprocessJobConfig, environ={})


def error_of(*features, **extra) -> str:
    with pytest.raises(ConfigError) as caught:
        job(*features, **extra)
    return str(caught.value)


def test_every_transform_parses_with_its_parameters():
    config = job(
        {"name": "a", "type": "float", "transform": "z_score"},
        {"name": "b", "type": "int", "transform": "min_max"},
        {"name": "c", "type": "float", "transform": "bucketize", "num_buckets": 4},
        {"name": "d", "type": "string", "transform": "vocabulary", "top_k": 10, "frequency_threshold": 2, "num_oov_buckets": 1},
        {"name": "e", "type": "int", "transform": "hash", "hash_buckets": 16},
        {"name": "f", "type": "float", "transform": "log1p"},
        {"name": "g", "type": "string", "transform": "identity"},
        label={"name": "y", "type": "int"},
    )
    assert [f.transform for f in config.features] == ["z_score", "min_max", "bucketize", "vocabulary", "hash", "log1p", "identity"]
    assert [f.output_kind for f in config.features] == ["float", "float", "int", "int", "int", "float", "string"]
    assert config.features[3].top_k == 10 and config.label.name == "y"
    assert config.output.formats == ["tfrecord"] and config.output.split.eval_fraction == 0.0


def test_wrong_parameter_type_names_feature_and_field():
    message = error_of(
        {"name": "a", "type": "float", "transform": "z_score"},
        {"name": "b", "type": "float", "transform": "log1p"},
        {"name": "c", "type": "float", "transform": "bucketize", "num_buckets": 2.5},
    )
    assert message == "features[2].num_buckets: expected an integer, got 2.5"


def test_missing_and_foreign_parameters_are_errors():
    assert error_of({"name": "c", "type": "float", "transform": "bucketize"}) == "features[0].num_buckets: required by transform bucketize"
    assert error_of({"name": "h", "type": "string", "transform": "hash"}) == "features[0].hash_buckets: required by transform hash"
    assert error_of({"name": "x", "type": "float", "transform": "z_score", "top_k": 3}) == (
        "features[0].top_k: applies only to transform vocabulary, not z_score"
    )
    assert error_of({"name": "x", "type": "float", "transform": "bucketize", "num_buckets": 1}) == "features[0].num_buckets: must be at least 2, got 1"
    assert error_of({"name": "x", "type": "float", "transform": "z_score", "colour": 1}) == "features[0].colour: unknown key"


def test_transform_must_fit_the_type():
    assert error_of({"name": "s", "type": "string", "transform": "log1p"}) == "features[0].transform: log1p needs a float or int feature, not string"
    assert error_of({"name": "x", "type": "float", "transform": "hash", "hash_buckets": 3}) == (
        "features[0].transform: hash needs a string or int feature, not float"
    )
    assert error_of({"name": "x", "type": "double", "transform": "identity"}).startswith("features[0].type: ")


def test_names_are_unique_and_the_label_is_not_a_feature():
    assert "features[1].name: 'a' is also features[0].name" in error_of(
        {"name": "a", "type": "float", "transform": "log1p"}, {"name": "a", "type": "float", "transform": "z_score"}
    )
    assert "label name 'a'" in error_of({"name": "a", "type": "float", "transform": "log1p"}, label={"name": "a", "type": "int"})


def test_input_output_and_limits_are_checked():
    assert error_of({"name": "a", "type": "float", "transform": "log1p"}, max_bad_rows=-1).startswith("max_bad_rows: ")
    with pytest.raises(ConfigError, match=r"^input.format: "):
        parse_config({"features": [{"name": "a", "type": "float", "transform": "log1p"}], "input": {"pattern": "x", "format": "xml"},
                      "output": {"dir": "o"}}, PreprocessJobConfig, environ={})
    with pytest.raises(ConfigError, match=r"^output.split.eval_fraction: "):
        job({"name": "a", "type": "float", "transform": "log1p"}, output={"dir": "o", "split": {"eval_fraction": 1.5}})


def test_example_configuration_is_valid():
    config = load_config("transforms/examples/preprocess.yaml", PreprocessJobConfig, environ={})
    assert config.label.name == "class" and len(config.features) == 7 and config.output.formats == ["tfrecord", "parquet"]
    assert config.passthrough is True and {f.encoding for f in config.features if f.transform == "bucketize"} == {"one_hot"}


def test_config_check_detects_a_preprocess_job(capsys):
    from riverbeam.cli import main

    assert main(["config", "check", "transforms/examples/preprocess.yaml"]) == 0
    assert "valid preprocess configuration" in capsys.readouterr().out


@pytest.mark.parametrize(
    "kind, raw, expected",
    [("float", "1.25", 1.25), ("float", 3, 3.0), ("int", "7", 7), ("int", 7.0, 7), ("int", "8.0", 8), ("string", 42, "42"), ("string", "", "")],
)
def test_coercion_reads_text_and_numbers(kind, raw, expected):
    assert coerce_value("f", kind, raw) == expected


@pytest.mark.parametrize(
    "kind, raw, reason",
    [("float", "abc", "expected a number"), ("float", float("inf"), "finite"), ("int", "1.5", "expected an int"),
     ("int", True, "expected an int"), ("string", 1.5, "expected a string"), ("float", None, "missing"), ("int", "", "missing")],
)
def test_coercion_errors_name_the_feature(kind, raw, reason):
    with pytest.raises(InvalidFeatureError, match=rf"^f: .*{reason}"):
        FeatureSpec(name="f", type=kind, transform="identity").coerce(raw)


def test_passthrough_defaults_to_false():
    assert job({"name": "a", "type": "float", "transform": "log1p"}).passthrough is False
    assert job({"name": "a", "type": "float", "transform": "log1p"}, passthrough=True).passthrough is True


def test_encoding_applies_to_index_transforms_only():
    config = job({"name": "c", "type": "float", "transform": "bucketize", "num_buckets": 3, "encoding": "one_hot"},
                 {"name": "h", "type": "string", "transform": "hash", "hash_buckets": 2, "encoding": "category"},
                 {"name": "v", "type": "int", "transform": "vocabulary", "top_k": 2, "num_oov_buckets": 1, "encoding": "one_hot"})
    assert [f.output_names for f in config.features] == [["c_0", "c_1", "c_2"], ["h"], ["v_0", "v_1", "v_2"]]
    assert [f.output_kind for f in config.features] == ["float", "string", "float"]
    assert error_of({"name": "x", "type": "float", "transform": "z_score", "encoding": "one_hot"}) == (
        "features[0]: encoding applies only to transforms bucketize, vocabulary, hash, not z_score"
    )
    assert error_of({"name": "v", "type": "string", "transform": "vocabulary", "encoding": "one_hot"}) == (
        "features[0]: encoding one_hot of a vocabulary needs top_k (the width of the one-hot columns)"
    )
    assert error_of({"name": "x", "type": "int", "transform": "hash", "hash_buckets": 2, "encoding": "binary"}).startswith("features[0].encoding: ")


def test_one_hot_columns_must_not_collide():
    assert "output column 'c_0' is also written by another feature" in error_of(
        {"name": "c", "type": "float", "transform": "bucketize", "num_buckets": 2, "encoding": "one_hot"},
        {"name": "c_0", "type": "float", "transform": "log1p"},
    )


def test_pca_parameters_and_inputs_are_checked():
    config = job({"name": "a", "type": "float", "transform": "z_score"},
                 {"name": "p", "type": "float", "transform": "pca", "inputs": ["a", "b"], "k": 2, "scale": True})
    assert config.features[1].output_names == ["p_0", "p_1"] and config.features[1].center is True
    assert error_of({"name": "p", "type": "float", "transform": "pca", "k": 1}) == "features[0].inputs: required by transform pca"
    assert error_of({"name": "p", "type": "float", "transform": "pca", "inputs": ["a", "b"]}) == "features[0].k: required by transform pca"
    assert error_of({"name": "p", "type": "float", "transform": "pca", "inputs": ["a"], "k": 1}) == "features[0].inputs: pca needs at least 2 inputs, got 1"
    assert error_of({"name": "p", "type": "float", "transform": "pca", "inputs": ["a", "b"], "k": 3}) == (
        "features[0]: k: at most the number of inputs (2), got 3"
    )
    assert error_of({"name": "p", "type": "string", "transform": "pca", "inputs": ["a", "b"], "k": 1}) == (
        "features[0].transform: pca needs a float or int feature, not string"
    )
    assert error_of({"name": "x", "type": "float", "transform": "z_score", "scale": True}) == "features[0]: center and scale apply only to transform pca"
    assert error_of({"name": "x", "type": "float", "transform": "z_score", "inputs": ["a", "b"]}) == (
        "features[0].inputs: applies only to transform pca, not z_score"
    )
    assert "'s' (features[0]) must have one float output, not vocabulary" in error_of(
        {"name": "s", "type": "string", "transform": "vocabulary"},
        {"name": "p", "type": "float", "transform": "pca", "inputs": ["s", "b"], "k": 1},
    )
    assert "'a' is already consumed by features[1]" in error_of(
        {"name": "a", "type": "float", "transform": "z_score"},
        {"name": "p", "type": "float", "transform": "pca", "inputs": ["a", "b"], "k": 1},
        {"name": "q", "type": "float", "transform": "pca", "inputs": ["a", "c"], "k": 1},
    )
    assert "'z' is features[1] or the label, which comes later" in error_of(
        {"name": "p", "type": "float", "transform": "pca", "inputs": ["z", "b"], "k": 1},
        {"name": "z", "type": "float", "transform": "log1p"},
    )


def test_analysis_phases_count_successive_passes():
    from transforms.spec import analysis_phases

    specs = lambda *fs: [FeatureSpec(**f) for f in fs]  # noqa: E731
    assert analysis_phases(specs({"name": "a", "type": "float", "transform": "log1p"})) == 0
    assert analysis_phases(specs({"name": "a", "type": "float", "transform": "z_score"},
                                 {"name": "v", "type": "string", "transform": "vocabulary"})) == 1
    assert analysis_phases(specs({"name": "p", "type": "float", "transform": "pca", "inputs": ["a", "b"], "k": 1})) == 1
    assert analysis_phases(specs({"name": "p", "type": "float", "transform": "pca", "inputs": ["a", "b"], "k": 1, "scale": True})) == 2
    assert analysis_phases(specs({"name": "a", "type": "float", "transform": "log1p"},
                                 {"name": "p", "type": "float", "transform": "pca", "inputs": ["a", "b"], "k": 1})) == 1
    assert analysis_phases(specs({"name": "a", "type": "float", "transform": "min_max"},
                                 {"name": "p", "type": "float", "transform": "pca", "inputs": ["a", "b"], "k": 1})) == 2
