"""Replay reports: the default report step, every metric plotted, rolling metrics, search's best.yaml and leaderboard."""

from __future__ import annotations

import json
import struct

import pytest
import yaml
from river import datasets, evaluate, linear_model, metrics, optim, preprocessing, utils

from online.config import ReplayJobConfig
from online.learning.learner import Learner
from online.replay.job import ReplayOptions, load_replay_job, run_replay
from riverbeam.cli import main
from core.configuration import parse_config
from tests.online.test_readers import phishing_events, write_jsonl

LOGREG = [{"preprocessing.StandardScaler": {}}, {"linear_model.LogisticRegression": {"optimizer": {"optim.SGD": {"lr": 0.1}}}}]
ROLLING = {"Rolling": {"metric": "Accuracy", "window_size": 200}}
JOB = {"model": {"pipeline": LOGREG, "metrics": ["Accuracy", "LogLoss", ROLLING]}, "events": {"target": "label"}}


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def river_model(lr=0.1):
    return preprocessing.StandardScaler() | linear_model.LogisticRegression(optimizer=optim.SGD(lr))


@pytest.fixture(scope="module")
def phishing(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "phishing.jsonl"
    write_jsonl(path, phishing_events())
    return str(path)


def test_default_report_has_about_100_points_and_report_every_overrides(tmp_path, phishing, capsys):
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(JOB))
    assert main(["replay", "--config", str(config), "--input", phishing, "--mode", "evaluate", "--report", str(tmp_path / "r")]) == 0
    rows = json.loads((tmp_path / "r" / "metrics.json").read_text())["rows"]
    # 1,250 records counted once: a row every ceil(1250 / 100) = 13 events, and the last one
    assert [row["events"] for row in rows] == list(range(13, 1250, 13)) + [1250]
    assert main(["replay", "--config", str(config), "--input", phishing, "--mode", "evaluate", "--report", str(tmp_path / "k"),
                 "--report-every", "400"]) == 0
    assert [row["events"] for row in json.loads((tmp_path / "k" / "metrics.json").read_text())["rows"]] == [400, 800, 1200, 1250]
    capsys.readouterr()


def test_rolling_metric_equals_rivers_utils_rolling_along_the_curve(tmp_path, phishing):
    job = parse_config(JOB, ReplayJobConfig, environ={})
    result = run_replay(job, ReplayOptions([phishing], mode="evaluate", report_dir=str(tmp_path / "r"), report_every=250))
    rows = result.rows
    assert [r["events"] for r in rows] == [250, 500, 750, 1000, 1250]
    # River by hand: predict, update every metric (Metrics.update: labels or probabilities as each needs), learn
    scores = metrics.base.Metrics([metrics.Accuracy(), metrics.LogLoss(), utils.Rolling(metrics.Accuracy, window_size=200)])
    model, want = river_model(), {}
    for n, (x, y) in enumerate(datasets.Phishing(), start=1):
        scores.update(y, model.predict_proba_one(x))
        model.learn_one(x, y)
        if n % 250 == 0:
            want[n] = [m.get() for m in scores]
    assert [[r["Accuracy"], r["LogLoss"], r["Rolling(Accuracy, 200)"]] for r in rows] == [want[r["events"]] for r in rows]
    assert rows[-1]["Rolling(Accuracy, 200)"] != rows[-1]["Accuracy"]  # a window really is a window
    assert result.leaderboard[0]["metrics"]["Rolling(Accuracy, 200)"] == want[1250][2]
    header = (tmp_path / "r" / "metrics.csv").read_text().splitlines()[0]
    assert header == 'events,lines,model,Accuracy,LogLoss,"Rolling(Accuracy, 200)"'


def test_learning_curve_has_a_panel_per_metric(tmp_path, phishing):
    one = {**JOB, "model": {**JOB["model"], "metrics": ["Accuracy"]}}
    run_replay(parse_config(one, ReplayJobConfig, environ={}), ReplayOptions([phishing], mode="evaluate", report_dir=str(tmp_path / "one")))
    run_replay(parse_config(JOB, ReplayJobConfig, environ={}), ReplayOptions([phishing], mode="evaluate", report_dir=str(tmp_path / "three")))
    width, height = png_size(tmp_path / "one" / "learning_curve.png")
    assert png_size(tmp_path / "three" / "learning_curve.png") == (width, height + 2 * 260)  # 2.6 in per extra panel at 100 dpi


def test_rolling_metric_is_checkpointed_under_its_name_in_learn_mode(tmp_path, phishing):
    job = parse_config({**JOB, "checkpoint": {"uri": str(tmp_path / "ckpt")}}, ReplayJobConfig, environ={})
    result = run_replay(job, ReplayOptions([phishing], mode="learn"))
    assert list(result.checkpoint["metrics"]) == ["Accuracy", "LogLoss", "Rolling(Accuracy, 200)"]
    learner = Learner(job.model, job.events)
    for event in phishing_events():
        learner.process(event)
    assert result.checkpoint["metrics"] == learner.metric_values()


@pytest.mark.parametrize("metric, message", [
    ({"Rolling": {"metric": "Acuracy", "window_size": 5}}, "model.metrics[1].Rolling.metric: river.metrics has no Acuracy (did you mean Accuracy?)"),
    ({"Rolling": {"metric": "Accuracy", "window_size": 0}}, "model.metrics[1].Rolling.window_size: a positive whole number of events"),
    ({"Rolling": {"metric": "Accuracy"}}, "model.metrics[1].Rolling.window_size: a positive whole number of events"),
    ({"Rolling": {"metric": "F1", "window_size": 5, "pos_vall": True}}, "model.metrics[1].Rolling.pos_vall: F1 has no parameter pos_vall (did you mean pos_val?)"),
    ({"TimeRolling": {"metric": "Accuracy", "period": 60}}, "model.metrics[1]: TimeRolling is not supported"),
    ({"Expanding": {"metric": "Accuracy"}}, "model.metrics[1]: unknown metric wrapper 'Expanding'"),
    ({"Rolling": {"metric": "MAE", "window_size": 5}}, "model.metrics[1]: Rolling(MAE, 5) does not work with a LogisticRegression"),
    ("Accuracy", "model.metrics[1]: Accuracy is listed twice"),
])
def test_bad_metric_specs_are_one_line_usage_errors(tmp_path, capsys, metric, message):
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({**JOB, "model": {"pipeline": LOGREG, "metrics": ["Accuracy", metric]}}))
    (tmp_path / "p.jsonl").write_text("{}\n")
    assert main(["replay", "--config", str(config), "--input", str(tmp_path / "p.jsonl"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_search_writes_a_best_yaml_that_runs_as_is_and_a_leaderboard_picture(tmp_path, phishing, capsys):
    data = {"models": [{"name": "logreg", "pipeline": LOGREG, "metrics": ["Accuracy", ROLLING]},
                       {"name": "tree", "pipeline": [{"tree.HoeffdingTreeClassifier": {}}]}],
            "events": {"target": "label"}, "checkpoint": {"uri": str(tmp_path / "ckpt")},
            "search": {"model": "logreg", "metric": "Rolling(Accuracy, 200)", "seed": 3, "parallel": 3,
                       "params": {"LogisticRegression.optimizer.lr": {"low": 0.01, "high": 1.0, "log": True},
                                  "LogisticRegression.l2": {"choices": [0.0, 0.001]}}}}
    config = tmp_path / "search.yaml"
    config.write_text(yaml.safe_dump(data))
    report = tmp_path / "search"
    assert main(["replay", "--config", str(config), "--input", phishing, "--mode", "evaluate", "--search", "6", "--report", str(report)]) == 0
    summary = json.loads((report / "search.json").read_text())
    best = summary["best"]
    assert summary["metric"] == "Rolling(Accuracy, 200)" and len(summary["trials"]) == 6
    assert best["value"] == max(t["value"] for t in summary["trials"])
    assert png_size(report / "leaderboard.png")[1] > 300
    written = yaml.safe_load((report / "best.yaml").read_text())
    assert "search" not in written and "models" not in written and written["checkpoint"]["uri"] == str(tmp_path / "ckpt")
    lr, l2 = best["params"]["LogisticRegression.optimizer.lr"], best["params"]["LogisticRegression.l2"]
    assert written["model"]["pipeline"][1] == {"linear_model.LogisticRegression": {"optimizer": {"optim.SGD": {"lr": lr}}, "l2": l2}}
    assert written["model"]["metrics"] == ["Accuracy", ROLLING]  # the configured order, not the search's
    capsys.readouterr()
    # as is: evaluate gives the trial's score, and learn mode checkpoints with the same configuration
    assert main(["replay", "--config", str(report / "best.yaml"), "--input", phishing, "--mode", "evaluate", "--report", str(tmp_path / "b")]) == 0
    final = json.loads((tmp_path / "b" / "metrics.json").read_text())["leaderboard"][0]["metrics"]
    assert final["Rolling(Accuracy, 200)"] == best["value"]
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression(optimizer=optim.SGD(lr), l2=l2)
    assert final["Accuracy"] == evaluate.progressive_val_score(datasets.Phishing(), model, metrics.Accuracy()).get()
    assert main(["replay", "--config", str(report / "best.yaml"), "--input", phishing]) == 0
    job, search = load_replay_job(str(report / "best.yaml"))
    assert search is None and job.model.pipeline == written["model"]["pipeline"]


def test_learn_mode_report_has_about_100_points_too(tmp_path, phishing):
    job = parse_config({**JOB, "checkpoint": {"uri": str(tmp_path / "ckpt"), "every_events": 500}}, ReplayJobConfig, environ={})
    run_replay(job, ReplayOptions([phishing], mode="learn", report_dir=str(tmp_path / "r")))
    rows = json.loads((tmp_path / "r" / "metrics.json").read_text())["rows"]
    assert [row["events"] for row in rows] == list(range(13, 1250, 13)) + [1250]
    assert set(rows[-1]) >= {"Accuracy", "LogLoss", "Rolling(Accuracy, 200)"}


def test_report_without_matplotlib_is_one_line_before_any_work(tmp_path, phishing):
    """A fresh `pip install riverbeam` has no matplotlib: --report says which extra to install, exit 2,
    and writes nothing (it used to learn everything, then die in a traceback leaving an empty report)."""
    import subprocess
    import sys

    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(JOB))
    blocker = "import sys; sys.modules['matplotlib'] = None; from riverbeam.cli import main; sys.exit(main())"
    result = subprocess.run([sys.executable, "-c", blocker, "replay", "--config", str(config), "--input", phishing, "--mode", "evaluate",
                             "--report", str(tmp_path / "report"), "--json"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == ["riverbeam: error: --report draws its learning curve with matplotlib, which is not installed: pip install 'riverbeam[reports]' (or leave out --report)"]
    assert result.stdout == "" and not (tmp_path / "report").exists()
