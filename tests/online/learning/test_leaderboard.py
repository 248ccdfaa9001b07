"""The one leaderboard (online.learning.leaderboard): replay, the daemon's model set and `riverbeam checkpoints show`
rank the same models the same way, in the direction River's metric object gives, not its name."""

from __future__ import annotations

import json

from core.configuration import parse_config
from online.checkpoints.persistence import ModelsSpec, checkpoint_store, resume
from online.config import EventsConfig, ModelConfig, ReplayJobConfig
from online.replay.job import ReplayOptions, run_replay
from riverbeam.cli import main

ROLLING_MAE = {"Rolling": {"metric": "MAE", "window_size": 50}}  # lower is better; its name is no river.metrics class
MODELS = {
    "mean": {"pipeline": [{"dummy.StatisticRegressor": {"statistic": {"stats.Mean": {}}}}], "metrics": [ROLLING_MAE]},
    "linear": {"pipeline": [{"preprocessing.StandardScaler": {}}, {"linear_model.LinearRegression": {}}], "metrics": [ROLLING_MAE]},
}
EVENTS = [{"x": float(i % 10), "y": 3.0 * (i % 10) + 1.0} for i in range(300)]


def test_a_rolling_error_ranks_the_smaller_error_first_in_replay_the_model_set_and_checkpoints_show(tmp_path, capsys):
    models = {name: ModelConfig(**spec) for name, spec in MODELS.items()}
    spec = ModelsSpec(models, EventsConfig(target="y"))
    store = checkpoint_store(str(tmp_path / "ck"))
    learners, _ = resume(store, spec)
    for event in EVENTS:
        learners.process(dict(event))
    errors = {name: learner.metric_values()["Rolling(MAE, 50)"] for name, learner in learners.items()}
    assert errors["linear"] < errors["mean"]  # the linear model fits y = 3x + 1; the mean does not

    daemon = learners.leaderboard()
    assert [(row["rank"], row["model"]) for row in daemon] == [(1, "linear"), (2, "mean")]

    store.save(learners.snapshot(), events_seen=len(EVENTS), events_learned=len(EVENTS), metrics=learners.metric_values(), model="", positions={},
               config_hash=spec.hash, extra={"learning": spec.recorded(), "report": learners.report()})
    assert main(["checkpoints", "show", str(tmp_path / "ck"), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)["leaderboard"]
    assert shown == daemon

    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in EVENTS))
    job = parse_config({"models": [{**spec, "name": name} for name, spec in MODELS.items()], "events": {"target": "y"}}, ReplayJobConfig, environ={})
    replayed = run_replay(job, ReplayOptions([str(tmp_path / "events.jsonl")], mode="evaluate", progress=False)).leaderboard
    assert [(row["rank"], row["model"], row["metrics"]) for row in replayed] == [(row["rank"], row["model"], row["metrics"]) for row in daemon]
