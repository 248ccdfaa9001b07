"""The Beam commands (stream-learn, archive, preprocess): flags in --help, unknown flags refused with a
suggestion (Beam's own flags accepted), a summary after a real run."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import orjson
import pytest
import yaml
from river import datasets

from riverbeam.cli import main

pytestmark = pytest.mark.beam

COMMANDS = {
    "stream-learn": "pipelines.stream_learn:StreamLearnOptions",
    "archive": "pipelines.archive:ArchiveOptions",
    "preprocess": "pipelines.preprocess:PreprocessOptions",
}
# a sample of flags defined by Beam's own PipelineOptions subclasses, with values
BEAM_FLAGS = [
    "--runner=DataflowRunner", "--project=p", "--region=europe-west1", "--temp_location=gs://b/tmp", "--staging_location=gs://b/s",
    "--setup_file=./setup.py", "--streaming", "--job_name=j", "--max_num_workers=3", "--sdk_container_image=img",
    "--experiments=use_runner_v2", "--experiments=x", "--flink_master=h:8081", "--environment_type=LOOPBACK", "--job_endpoint=h:1",
    "--s3_endpoint_url=http://127.0.0.1:1", "--direct_num_workers=2", "--save_main_session", "--service_account_email=a@b",
]  # fmt: skip


def options_flags(target: str) -> list[str]:
    from pipelines.options import describe_parameters
    from riverbeam.commands.beam_flags import options_class

    return [f"--{parameter.name}" for parameter in describe_parameters(options_class(target))]


def run_cli(argv, capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_lists_every_pipeline_flag(command, capsys):
    code, out, _ = run_cli([command, "--help"], capsys)
    assert code == 0
    flags = options_flags(COMMANDS[command])
    assert len(flags) >= 5
    section = out[out.index("pipeline flags ("):]
    for flag in flags:
        assert flag in (section if flag != "--config" else out), flag
    assert "Beam's own flags are accepted too: --runner" in out


def test_the_top_level_help_does_not_import_beam():
    code = ("import sys\nfrom riverbeam.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('apache_beam' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip().splitlines()[-1] == "False", done.stderr[-2000:]


@pytest.mark.parametrize("command, argv, message", [
    ("stream-learn", ["--learn_sourse=files"], "stream-learn: unknown flag --learn_sourse (did you mean --learn_source?): see riverbeam stream-learn --help"),
    ("stream-learn", ["--runer", "FnApiRunner", "--learn_config=x.yaml"], "unknown flag --runer (did you mean --runner?)"),
    ("archive", ["--archive_outptu=gs://b/a", "--temp_locaton=gs://b/t"],
     "archive: unknown flags --archive_outptu (did you mean --archive_output?), --temp_locaton (did you mean --temp_location?)"),
    ("archive", ["--learn_config=x.yaml"], "archive: unknown flag --learn_config"),  # another pipeline's flag
    ("archive", ["--archive_window_seconds=ten"], "archive: argument --archive_window_seconds: invalid int value: 'ten'"),
    ("stream-learn", ["--learn_source=file"], "argument --learn_source: invalid choice: 'file'"),
    ("stream-learn", ["files"], "stream-learn: unknown flag 'files' (flags take the form --name=value)"),
])  # fmt: skip
def test_unknown_flags_are_refused_in_one_line_with_a_suggestion(command, argv, message, capsys, tmp_path):
    import pipelines.archive  # noqa: F401 - another pipeline's options class is imported: its flags stay refused
    import pipelines.stream_learn  # noqa: F401

    code, out, err = run_cli([command, *argv, f"--learn_output={tmp_path / 'out'}"] if command == "stream-learn" else [command, *argv], capsys)
    assert code == 2
    assert err.strip().splitlines() == [f"riverbeam: error: {err.strip().split('riverbeam: error: ', 1)[1]}"]
    assert message in err and "Traceback" not in err and out == ""
    assert not (tmp_path / "out").exists()


def test_preprocess_refuses_a_misspelled_flag_before_running(tmp_path, capsys):
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({"features": [{"name": "a", "type": "float", "transform": "z_score"}], "label": {"name": "y", "type": "string"},
                                      "input": {"pattern": str(tmp_path / "in.csv"), "format": "csv"}, "output": {"dir": str(tmp_path / "out")}}))
    code, _, err = run_cli(["preprocess", "--config", str(config), "--output_dri", str(tmp_path / "x")], capsys)
    assert code == 2 and "preprocess: unknown flag --output_dri (did you mean --output_dir?)" in err and len(err.strip().splitlines()) == 1


def test_beams_own_flags_are_accepted():
    from riverbeam.commands.beam_flags import check_beam_args, options_class

    from pipelines.options import describe_parameters

    for command, target in COMMANDS.items():
        text_flag = next(p.name for p in describe_parameters(options_class(target)) if p.param_type != "NUMBER" and not p.enum_options)
        argv = [*BEAM_FLAGS, "--", f"--{text_flag}", "v"]
        assert check_beam_args(argv, options_class(target), command) == [a for a in argv if a != "--"]


def write_stream_job(tmp_path) -> str:
    events = [orjson.dumps({**x, "label": y}) for x, y in itertools.islice(datasets.Phishing(), 200)]
    events[10:10] = [b"not json", b'{"label": "maybe"}']  # a parse dead letter and a learn dead letter
    (tmp_path / "events.jsonl").write_bytes(b"\n".join(events) + b"\n")
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"pipeline": [{"preprocessing.StandardScaler": {}}, {"linear_model.LogisticRegression": {}}], "metrics": ["Accuracy"]},
        "events": {"target": "label"}, "kafka": {"topic": "events"}, "checkpoint": {"uri": str(tmp_path / "ckpt"), "every_events": 50},
    }))  # fmt: skip
    return str(config)


def test_stream_learn_prints_a_summary_of_a_real_run(tmp_path, capsys):
    config = write_stream_job(tmp_path)
    argv = ["stream-learn", f"--learn_config={config}", "--learn_source=files", f"--learn_input={tmp_path / 'events.jsonl'}",
            f"--learn_output={tmp_path / 'out'}", "--runner=FnApiRunner"]
    code, out, _ = run_cli([*argv, "--json"], capsys)
    assert code == 0
    summary = json.loads(out)
    assert {k: summary[k] for k in ("job", "mode", "events_seen", "events_learned", "events_predicted", "events_dead_lettered")} == {
        "job": "stream-learn", "mode": "done", "events_seen": 202, "events_learned": 200, "events_predicted": 200, "events_dead_lettered": 2}
    assert summary["state"] == "DONE" and summary["runner"] == "FnApiRunner" and summary["checkpoints_written"] >= 4
    assert summary["predictions"] == f"{tmp_path / 'out'}/predictions*"
    predictions = [line for path in (tmp_path / "out").glob("predictions*") for line in path.read_bytes().splitlines()]
    letters = [orjson.loads(line) for path in (tmp_path / "out").glob("dead_letter*") for line in path.read_bytes().splitlines()]
    assert len(predictions) == summary["events_predicted"] and len(letters) == summary["events_dead_lettered"]
    # a rerun over the same file learns nothing twice, and says so in the text summary
    code, out, _ = run_cli(argv, capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("stream-learn done: 202 events in ")
    assert lines[1] == "  events_seen 202 · events_learned 0 · events_predicted 0 · events_dead_lettered 1"
    assert "  events_already_checkpointed: 201" in lines  # 200 learned and the one refused by the learner


def test_preprocess_prints_a_summary_of_a_real_run(tmp_path, capsys):
    rows = [{**x, "class": y} for x, y in itertools.islice(datasets.ImageSegments(), 120)]
    with open(tmp_path / "segment.csv", "w") as handle:
        handle.write("intensity-mean,hue-mean,class\n")
        handle.writelines(f"{r['intensity-mean']},{r['hue-mean']},{r['class']}\n" for r in rows)
        handle.write("oops,1.0,x\n")
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({
        "features": [{"name": "intensity-mean", "type": "float", "transform": "z_score"}, {"name": "hue-mean", "type": "float", "transform": "min_max"}],
        "label": {"name": "class", "type": "string"}, "input": {"pattern": str(tmp_path / "segment.csv"), "format": "csv"},
        "output": {"dir": str(tmp_path / "out"), "formats": ["parquet"]}, "max_bad_rows": 1,
    }))  # fmt: skip
    code, out, _ = run_cli(["preprocess", "--config", str(config), "--runner=FnApiRunner", "--json"], capsys)
    assert code == 0
    summary = json.loads(out)
    assert (summary["job"], summary["events_seen"], summary["events_dead_lettered"], summary["state"]) == ("preprocess", 121, 1, "DONE")
    assert summary["output"] == str(tmp_path / "out") and summary["fitted_transform"] == str(tmp_path / "out" / "fitted_transforms.json")
    assert (tmp_path / "out" / "fitted_transforms.json").exists()


def test_a_job_submitted_elsewhere_is_summarised_by_where_it_went():
    """Archive reads Kafka or Pub/Sub on Dataflow or Flink only (nothing here runs it): the summary of a
    submitted job, built from a stand-in for Dataflow's result, names the runner, state, job id and output."""
    from types import SimpleNamespace

    from riverbeam.commands.beam_jobs import beam_job_summary

    result = SimpleNamespace(state="RUNNING", job_id=lambda: "2026-12-01_01_02_03-123", metrics=lambda: pytest.fail("no counts while running"))
    argv = ["--runner=DataflowRunner", "--archive_output=gs://bucket/archive", "--pubsub_subscription=projects/p/subscriptions/s"]
    summary = beam_job_summary("archive", result, argv, 2.5).to_json()
    assert summary == {"job": "archive", "mode": "submitted", "metrics": {}, "seconds": 2.5, "runner": "DataflowRunner", "state": "RUNNING",
                       "job_id": "2026-12-01_01_02_03-123", "output": "gs://bucket/archive"}


def test_preprocess_is_quiet_unless_verbose_and_a_missing_input_is_one_line(tmp_path):
    """TensorFlow's and Beam's own lines (native absl logging on fd 2 included) stay out of a user's terminal."""
    import os
    import subprocess
    import sys

    rows = [{**x, "class": y} for x, y in itertools.islice(datasets.ImageSegments(), 60)]
    (tmp_path / "segment.csv").write_text("intensity-mean,class\n" + "".join(f"{r['intensity-mean']},{r['class']}\n" for r in rows))
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({
        "features": [{"name": "intensity-mean", "type": "float", "transform": "z_score"}],
        "label": {"name": "class", "type": "string"}, "input": {"pattern": str(tmp_path / "segment.csv"), "format": "csv"},
        "output": {"dir": str(tmp_path / "out"), "formats": ["parquet"]},
    }))  # fmt: skip
    env = dict(os.environ, NO_GCE_CHECK="true")
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    base = [sys.executable, "-m", "riverbeam.cli", "preprocess", "--config", str(config)]
    quiet = subprocess.run(base, capture_output=True, text=True, env=env, timeout=300)
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert quiet.stderr == "" and quiet.stdout.startswith("preprocess: 60 events")
    missing = subprocess.run([*base, "--input_pattern", str(tmp_path / "none-*.csv")], capture_output=True, text=True, env=env, timeout=300)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [f"riverbeam: error: input.pattern '{tmp_path / 'none-*.csv'}' matches no files"]
