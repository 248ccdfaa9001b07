"""The shared core: every configuration mistake at once, one exit-code mapping, one event-time parser."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from core.errors import ConfigError, ConfigErrors, run_main
from core.eventtime import event_time

ENV = dict(os.environ, NO_GCE_CHECK="true")


def riverbeam(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "riverbeam.cli", *args], capture_output=True, text=True, env=ENV, cwd=cwd, timeout=120)


FIVE_MISTAKES = textwrap.dedent("""\
    kafka: {bootstrap_servers: 9092, topic: t, bogus: 1}
    model:
      pipeline: [{preprocessing.StandardScaler: {}}, {linear_model.LogisticRegresion: {}}]
      metrics: [Accuracy]
    events: {target: 3}
    checkpoint: {uri: ckpt, every_events: many}
    """)


def test_config_check_reports_every_mistake_of_a_file_at_once(tmp_path):
    path = tmp_path / "consumer.yaml"
    path.write_text(FIVE_MISTAKES)
    result = riverbeam("config", "check", str(path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert sorted(lines) == sorted([
        f"riverbeam: error: {path}: kafka.bootstrap_servers: expected a string, got 9092",
        f"riverbeam: error: {path}: kafka.bogus: unknown key",
        f"riverbeam: error: {path}: events.target: expected a string, got 3",
        f"riverbeam: error: {path}: checkpoint.every_events: expected an integer, got 'many'",
        f"riverbeam: error: {path}: model.pipeline[1]: river has no linear_model.LogisticRegresion (did you mean LogisticRegression?)",
    ])


def test_config_check_reports_every_river_name_mistake_and_the_search_section(tmp_path):
    path = tmp_path / "replay.yaml"
    path.write_text(textwrap.dedent("""\
        models:
          - {pipeline: [{linear_model.LogisticRegresion: {}}], metrics: [Accuracy]}
          - {pipeline: [{linear_model.LogisticRegression: {lr: 1}}], metrics: [Accuracy]}
        search:
          model: 1
          params: {LogisticRegression.l3: {low: 0.0, high: 1.0}}
        """))
    result = riverbeam("config", "check", str(path))
    assert result.returncode == 2, result.stderr
    text = result.stderr
    assert "models[0].pipeline[0]: river has no linear_model.LogisticRegresion (did you mean LogisticRegression?)" in text
    assert "models[1].pipeline[0].lr: linear_model.LogisticRegression has no parameter lr" in text
    assert len(text.strip().splitlines()) >= 2 and "Traceback" not in text


def test_config_check_refuses_a_wrong_search_section_that_replay_would_refuse(tmp_path):
    path = tmp_path / "replay.yaml"
    path.write_text("model: {pipeline: [{linear_model.LogisticRegression: {}}], metrics: [Accuracy]}\n"
                    "search: {params: {LogisticRegression.l3: {low: 0.0, high: 1.0}}}\n")
    checked = riverbeam("config", "check", str(path))
    replayed = riverbeam("replay", "--config", str(path), "--input", str(path), "--dry-run")
    assert checked.returncode == replayed.returncode == 2
    assert "search.params.LogisticRegression.l3" in checked.stderr
    assert checked.stderr.splitlines()[-1] == replayed.stderr.splitlines()[-1]


def test_config_errors_group_flattens_and_locates():
    group = ConfigErrors([ConfigError("a", "x"), ConfigErrors([ConfigError("b", "y"), ConfigError("c", "z")])])
    assert [e.path for e in group.errors] == ["a", "b", "c"]
    assert str(group.at(source="f.yaml", prefix="kafka")).splitlines() == ["f.yaml: kafka.a: x", "f.yaml: kafka.b: y", "f.yaml: kafka.c: z"]


def test_run_main_maps_errors_to_exit_codes(capsys):
    from core.errors import RiverbeamError, UsageError

    def fail(error):
        def job():
            raise error
        return job

    assert run_main(lambda: 0, prog="p") == 0
    assert run_main(lambda: object(), prog="p") == 0  # a pipeline result is success
    assert run_main(fail(UsageError("bad flag")), prog="p") == 2
    assert run_main(fail(RiverbeamError("storage down")), prog="p") == 1
    assert run_main(fail(KeyboardInterrupt()), prog="p") == 130
    assert capsys.readouterr().err.splitlines() == ["p: error: bad flag", "p: error: storage down", "p: interrupted"]


def test_a_closed_output_pipe_ends_quietly():
    command = f"{sys.executable} -m riverbeam.cli models list | head -1"
    result = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, env=ENV, timeout=120)
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr
    assert result.stdout.strip() and result.returncode == 0


def test_pipeline_entry_points_use_the_same_error_lines(tmp_path):
    missing = tmp_path / "missing.yaml"
    result = subprocess.run([sys.executable, "-m", "pipelines.preprocess", f"--config={missing}"],
                            capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"preprocess: error: {missing}: cannot read")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("value", "seconds"), [
    ("2024-05-01T13:45:00Z", 1714571100.0),
    ("2024-05-01T13:45:00z", 1714571100.0),
    ("2024-05-01T13:45:00", 1714571100.0),  # naive = UTC, everywhere
    ("2024-05-01T15:45:00+02:00", 1714571100.0),
    (1714571100, 1714571100.0),
    (1714571100.5, 1714571100.5),
])
def test_event_time_is_one_rule(value, seconds):
    assert event_time(value) == seconds


@pytest.mark.parametrize("value", [True, None, "yesterday", "", 1714571100000, float("nan"), [1]])
def test_event_time_refuses_what_is_not_a_time(value):
    with pytest.raises(ValueError):
        event_time(value)


def test_the_learner_and_the_readers_read_a_naive_time_alike(tmp_path):
    from online.config import EventsConfig, ModelConfig
    from online.learning.learner import Learner
    from online.readers import expand_inputs, read_inputs

    events_config = EventsConfig(target="y", time="t", id="id")
    learner = Learner(ModelConfig(pipeline=[{"linear_model.LinearRegression": {}}], metrics=["MAE"]), events_config)
    event = {"x": 1.0, "y": 2.0, "t": "2024-05-01T13:45:00", "id": "a"}
    assert learner._meta(event)[1] == 1714571100.0
    path = tmp_path / "e.jsonl"
    path.write_text('{"x": 1.0, "y": 2.0, "t": "2024-05-01T13:45:00"}\n{"x": 1.0, "y": 2.0, "t": "2024-05-01T13:46:00Z"}\n')
    records = list(read_inputs(expand_inputs([str(path)]), None, "t"))
    assert len(records) == 2  # both times parse, in order


def test_config_check_knows_every_job_kind(tmp_path):
    serve = tmp_path / "serve.yaml"
    serve.write_text("checkpoint: {uri: ckpt}\nserve: {port: 8080, lern: true}\n")
    result = riverbeam("config", "check", str(serve))
    assert result.returncode == 2 and f"{serve}: serve.lern: unknown key" in result.stderr
    serve.write_text("checkpoint: {uri: ckpt}\nserve: {port: 8080}\n")
    assert riverbeam("config", "check", str(serve)).stdout.strip() == f"{serve}: valid serve configuration"


def test_a_job_file_may_live_in_a_bucket(gcs_prefix, s3_prefix):
    """read_yaml goes through core.storage: every job reads its YAML from a path, gs:// or s3:// alike."""
    from core import storage
    from core.configuration import load_config
    from online.config import ReplayJobConfig

    text = b"model: {pipeline: [{linear_model.LinearRegression: {}}], metrics: [MAE]}\nevents: {target: 7}\n"
    for prefix in (gcs_prefix, s3_prefix):
        uri = f"{prefix}/job.yaml"
        storage.write_bytes(uri, text)
        with pytest.raises(ConfigError, match=f"{uri}: events.target: expected a string, got 7"):
            load_config(uri, ReplayJobConfig)
        with pytest.raises(ConfigError, match="cannot read"):
            load_config(f"{prefix}/missing.yaml", ReplayJobConfig)
