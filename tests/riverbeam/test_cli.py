"""The `riverbeam` command: help, version, exit codes, configuration errors, the demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from riverbeam import __version__
from riverbeam.cli import build_parser, main

ENV = dict(os.environ, NO_GCE_CHECK="true")


def riverbeam(*args: str, cwd=None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "riverbeam.cli", *args], capture_output=True, text=True, env=ENV, cwd=cwd, timeout=timeout)


def test_version_and_help_everywhere(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"riverbeam {__version__}"
    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    assert {"config", "local", "consume", "demo", "replay", "preprocess", "templates", "stream-learn", "archive"} <= set(commands)
    for command in commands:
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0, command
        assert "usage: riverbeam" in capsys.readouterr().out


def test_help_does_not_import_beam_or_tensorflow():
    probe = "import sys; from riverbeam.cli import build_parser; build_parser(); import online.consume.daemon; print(sorted(m for m in ('apache_beam', 'tensorflow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=ENV, timeout=60).stdout
    assert out.strip() == "[]"


def test_usage_error_exits_2():
    result = riverbeam("consume")
    assert result.returncode == 2 and "--config" in result.stderr


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("kafka: {bootstrap_servers: 9092, topic: t}\nmodel: {pipeline: [{linear_model.LogisticRegression: {}}]}\ncheckpoint: {uri: x}\n",
         "kafka.bootstrap_servers: expected a string, got 9092"),
        ("kafka: {topic: t, bogus: 1}\nmodel: {pipeline: [{linear_model.LogisticRegression: {}}]}\ncheckpoint: {uri: x}\n",
         "kafka.bogus: unknown key"),
        ("kafka: {topic: t}\nmodel: {pipeline: [{preprocessing.StandardScaler: {}}, {linear_model.LogisticRegresion: {}}]}\ncheckpoint: {uri: x}\n",
         "model.pipeline[1]: river has no linear_model.LogisticRegresion (did you mean LogisticRegression?)"),
        ("kafka: {topic: t}\nmodel: {pipeline: [{linear_model.LogisticRegression: {lr: 1}}]}\ncheckpoint: {uri: x}\n",
         "model.pipeline[0].lr: linear_model.LogisticRegression has no parameter lr"),
        ("kafka: {topic: t}\nmodel: {pipeline: [{linear_model.LinearRegression: {}}], metrics: [Accuracy]}\ncheckpoint: {uri: x}\n",
         "model.metrics[0]: Accuracy does not work with a LinearRegression"),
        ("kafka: [unclosed\n", "invalid YAML"),
    ],
)  # fmt: skip
def test_bad_configuration_is_one_line_and_exit_2(tmp_path, yaml_text, message):
    path = tmp_path / "job.yaml"
    path.write_text(yaml_text)
    result = riverbeam("config", "check", str(path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"riverbeam: error: {path}: ") and message in lines[0]


def test_config_check_accepts_a_good_file_and_env_overrides(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("kafka: {topic: t, bootstrap_servers: '${BROKER:-localhost:9092}'}\nmodel: {pipeline: [{linear_model.LogisticRegression: {}}]}\ncheckpoint: {uri: x}\n")
    assert riverbeam("config", "check", str(path)).returncode == 0
    from online.config import ConsumeJobConfig
    from core.configuration import load_config

    job = load_config(path, ConsumeJobConfig, environ={"BROKER": "b:1", "RIVERBEAM__CHECKPOINT__EVERY_EVENTS": "7"})
    assert job.kafka.bootstrap_servers == "b:1" and job.checkpoint.every_events == 7


def test_demo_runs_end_to_end_and_stops_what_it_started(tmp_path):
    result = riverbeam("demo", "--events", "3000", "--dir", str(tmp_path / "demo"), timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "events_seen 3,000 · events_learned 3,000 · events_dead_lettered 0" in result.stdout and "  Accuracy 0." in result.stdout
    shown = riverbeam("checkpoints", "show", str(tmp_path / "demo" / "checkpoints"), "--json")
    assert json.loads(shown.stdout)["events_seen"] == 3000
    for name in ("kafka", "gcs"):
        assert not (tmp_path / "demo" / "stack" / f"{name}.pid").exists()


def test_predict_from_a_checkpoint(tmp_path):
    from river import datasets

    from online.checkpoints.store import CheckpointStore
    from online.config import EventsConfig, ModelConfig
    from online.learning.learner import Learner
    from online.checkpoints.persistence import save_learner

    learner = Learner(ModelConfig(pipeline=[{"preprocessing.StandardScaler": {}}, {"linear_model.LogisticRegression": {}}]), EventsConfig(target="y"))
    rows = list(datasets.Phishing())
    learner.process_many([{**x, "y": y} for x, y in rows])
    save_learner(CheckpointStore(str(tmp_path / "ck")), learner, positions={})
    lines = [json.dumps(rows[0][0]), "not json", json.dumps({**rows[1][0], "url_length": "long"})]
    result = subprocess.run([sys.executable, "-m", "riverbeam.cli", "predict", "--checkpoint", str(tmp_path / "ck")], input="\n".join(lines), capture_output=True, text=True, env=ENV, timeout=60)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    expected = learner.state.models[None].predict_proba_one(dict(rows[0][0]))
    assert records[0]["probabilities"] == {"true" if k is True else "false": v for k, v in expected.items()}  # JSON-typed label keys
    assert records[0]["prediction"] == max(expected, key=expected.get)
    assert records[1]["error"].startswith("not JSON") and records[2]["error"] == "feature 'url_length' is not a number: 'long'"


@pytest.mark.parametrize("example", ["deploy/consumer.yaml", "transforms/examples/preprocess.yaml"])
def test_shipped_example_configurations_stay_valid(example):
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    result = riverbeam("config", "check", str(root / example))
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout


def test_an_environment_override_with_a_typo_is_blamed_on_the_variable_not_the_file(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("kafka: {topic: t, bootstrap_servers: 'localhost:9092'}\nmodel: {pipeline: [{linear_model.LogisticRegression: {}}]}\ncheckpoint: {uri: x}\n")
    env = dict(ENV, RIVERBEAM__KAFKA__BOOTSTRAP_SERVER="broker:9092")  # the S is missing
    result = subprocess.run([sys.executable, "-m", "riverbeam.cli", "config", "check", str(path)], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["riverbeam: error: environment variable RIVERBEAM__KAFKA__BOOTSTRAP_SERVER: kafka.bootstrap_server: unknown key"]


def test_checkpoints_list_json(tmp_path, capsys):
    from online.checkpoints.store import CheckpointStore
    from online.config import EventsConfig, ModelConfig
    from online.learning.learner import Learner
    from online.checkpoints.persistence import save_learner

    store = CheckpointStore(str(tmp_path / "ck"))
    learner = Learner(ModelConfig(pipeline=[{"linear_model.LogisticRegression": {}}], metrics=["Accuracy"]), EventsConfig(target="y"))
    learner.process_many([{"x": 1.0, "y": True}, {"x": -1.0, "y": False}])
    first = save_learner(store, learner, positions={})
    learner.process_many([{"x": 2.0, "y": True}])
    second = save_learner(store, learner, positions={})
    assert main(["checkpoints", "list", str(tmp_path / "ck"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["id"], r["events_learned"]) for r in rows] == [(second["id"], 3), (first["id"], 2)]  # newest first
    assert set(rows[0]) == {"id", "created_at", "events_seen", "events_learned", "metrics", "signature"} and rows[0]["signature"] == "unsigned"
    assert main(["checkpoints", "list", str(tmp_path / "none"), "--json"]) == 0 and json.loads(capsys.readouterr().out) == []


MODEL_YAML = "model: {pipeline: [{linear_model.LogisticRegression: {}}], batch: {size: 8}}\n"


def test_config_check_refuses_what_the_sections_mean_together_at_once_and_so_does_the_start(tmp_path):
    """Each mistake the runtime refuses or gets wrong is one line naming its key path, all of them at once, at check time and at start."""
    path = tmp_path / "consumer.yaml"
    path.write_text(
        "kafka: {topic: events, dead_letter_topic: events, predictions_topic: events, bootstrap_servers: '127.0.0.1:9'}\n"
        + MODEL_YAML
        + "events: {target: label, key: label, id: event_id}\n"
        + f"features: {{transform_output: {tmp_path / 'no-such-output'}}}\n"
        + f"checkpoint: {{uri: {tmp_path / 'ck'}}}\n"
    )
    expected = [
        f"riverbeam: error: {path}: events.key: is the label (events.target = 'label'): each label would pick its own model, which never sees another label",
        f"riverbeam: error: {path}: model.batch: mini-batch learning does not join delayed labels (events.id): unset one of them",
        f"riverbeam: error: {path}: kafka.dead_letter_topic: 'events' is the source topic: the job would read its own dead letters back (and nest them for ever)",
        f"riverbeam: error: {path}: kafka.predictions_topic: 'events' is the source topic: the job would read its own predictions back (and nest them for ever)",
        f"riverbeam: error: {path}: features.transform_output: {tmp_path / 'no-such-output'} does not exist (expected the output of riverbeam preprocess)",
    ]
    for command in (["config", "check", str(path)], ["consume", "--config", str(path), "--until-caught-up"]):
        result = riverbeam(*command)
        assert result.returncode == 2 and result.stderr.splitlines() == expected, result.stderr[-3000:]
    replay = tmp_path / "replay.yaml"
    replay.write_text(MODEL_YAML + "events: {target: label, key: label, id: event_id}\n")
    result = riverbeam("config", "check", str(replay))
    assert result.returncode == 2 and [line.split(": ")[3] for line in result.stderr.splitlines()] == ["events.key", "model.batch"], result.stderr


def test_empty_names_are_refused_where_they_are(tmp_path):
    path = tmp_path / "consumer.yaml"
    path.write_text("kafka: {topic: '', group_id: ' '}\n" + MODEL_YAML.replace(", batch: {size: 8}", "") + "checkpoint: {uri: ''}\n")
    result = riverbeam("config", "check", str(path))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert sorted(line.split(": ")[3] for line in result.stderr.splitlines()) == ["checkpoint.uri", "kafka.group_id", "kafka.topic"], result.stderr
    assert f"riverbeam: error: {path}: checkpoint.uri: is empty: checkpoints would be written into the working directory; give a folder or a gs:// or s3:// URI" in result.stderr


@pytest.mark.parametrize("scheme", ["gs", "s3"])
def test_a_checkpoint_bucket_that_does_not_exist_is_refused_at_check_time(tmp_path, local_stack, scheme):
    path = tmp_path / "consumer.yaml"
    path.write_text("kafka: {topic: events}\n" + MODEL_YAML.replace(", batch: {size: 8}", "") + f"checkpoint: {{uri: '{scheme}://no-such-bucket-h6/ck'}}\n")
    env = dict(os.environ, NO_GCE_CHECK="true")  # the local stack's emulator settings, set by its fixture
    result = subprocess.run([sys.executable, "-m", "riverbeam.cli", "config", "check", str(path)], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert f"checkpoint.uri: cannot list {scheme}://no-such-bucket-h6/ck" in result.stderr and "does not exist" in result.stderr


def test_kafka_python_options_of_the_wrong_type_or_name_are_refused_at_check_time(tmp_path):
    path = tmp_path / "consumer.yaml"
    path.write_text(
        "kafka: {topic: events, consumer: {session_timeout_ms: abc, check_crcs: 1, session.timeout.ms: 2000}, producer: {acks: banana, linger_ms: 5}}\n"
        + MODEL_YAML.replace(", batch: {size: 8}", "")
        + f"checkpoint: {{uri: {tmp_path / 'ck'}}}\n"
    )
    result = riverbeam("config", "check", str(path))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert [line.split(f"{path}: ")[1] for line in result.stderr.splitlines()] == [
        "kafka.consumer.session_timeout_ms: expected an integer, got 'abc'",
        "kafka.consumer.check_crcs: expected true or false, got 1",
        "kafka.consumer.session.timeout.ms: unknown option for kafka-python (did you mean session_timeout_ms?)",
        "kafka.producer.acks: riverbeam always produces with acks=all",
    ]


def test_a_signed_store_checked_with_its_key_variable_unset_is_refused(tmp_path):
    from online.checkpoints.store import CheckpointStore
    from online.config import EventsConfig, ModelConfig
    from online.learning.learner import Learner
    from online.checkpoints.persistence import save_learner

    uri = str(tmp_path / "ck")
    learner = Learner(ModelConfig(pipeline=[{"linear_model.LogisticRegression": {}}]), EventsConfig(target="label"))
    save_learner(CheckpointStore(uri, signing_key=b"the key"), learner, positions={})
    path = tmp_path / "serve.yaml"
    path.write_text(f"checkpoint: {{uri: {uri}, signing_key_env: MY_CHECKPOINT_KEY}}\nserve: {{port: 8080}}\n")
    env = {k: v for k, v in ENV.items() if k != "MY_CHECKPOINT_KEY"}
    result = subprocess.run([sys.executable, "-m", "riverbeam.cli", "config", "check", str(path)], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2 and result.stderr.splitlines() == [
        f"riverbeam: error: {path}: checkpoint.signing_key_env: MY_CHECKPOINT_KEY is not set, but the checkpoints at {uri} are signed: set it to their key"
    ], result.stderr
    result = subprocess.run([sys.executable, "-m", "riverbeam.cli", "config", "check", str(path)], capture_output=True, text=True,
                            env=dict(env, MY_CHECKPOINT_KEY="the key"), timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
