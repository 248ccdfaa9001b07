"""The keyed checkpoint layout (`online.checkpoints.units`): old layouts refused in one line, units listed, served and reloaded.

The writer x reader matrix of keyed checkpoints is in test_checkpoint_matrix.py.
"""

from __future__ import annotations

import functools
import itertools

import orjson
import pytest
from river import datasets

from core.configuration import parse_config
from online.checkpoints.persistence import LearnerSpec, checkpoint_store, restore_model, save_learner
from online.checkpoints.store import CheckpointError
from online.checkpoints.units import partition_unit, unit_store, unit_uri
from online.config import EventsConfig, ModelConfig, ReplayJobConfig
from online.readers import expand_inputs
from online.replay.engine import ReplayOptions, learn
from online.serving.metrics import ServeMetrics
from online.serving.reload import CheckpointWatcher, ModelSlot

MODEL = {"pipeline": [{"preprocessing.StandardScaler": {}}, {"linear_model.LogisticRegression": {}}], "metrics": ["Accuracy"]}
EVENTS = {"target": "label", "key": "user"}
SPEC = LearnerSpec(ModelConfig(**MODEL), EventsConfig(**EVENTS))
PHISHING = [{**x, "label": y} for x, y in itertools.islice(datasets.Phishing(), 40)]


def learned(users: str, events: list[dict] = PHISHING):
    learner = SPEC.new_learner()
    learner.process_many([{**e, "user": users[i % len(users)]} for i, e in enumerate(events)])
    return learner


@pytest.fixture(params=["daemon", "stream-learn"])
def old_layout(request, tmp_path):
    """Keyed checkpoints where the daemon (``partitions/<topic>.<partition>``) or stream-learn (``key=<key>``) put them before units."""
    uri = str(tmp_path / "ckpt")
    where = "partitions/events.0" if request.param == "daemon" else "key=ann"
    save_learner(checkpoint_store(f"{uri}/{where}"), learned("ab"), {"events/0": 40})
    return uri, where


def test_every_keyed_job_stops_in_one_line_on_an_old_layout(old_layout, tmp_path, kafka_bootstrap, capsys, monkeypatch):
    from online.consume.daemon import run_daemon
    from riverbeam.cli import main
    from tests.online.checkpoints.test_checkpoint_matrix import consume_config

    monkeypatch.delenv("RIVERBEAM_CHECKPOINT_KEY", raising=False)
    uri, where = old_layout

    def one_line(text: str) -> None:
        assert "\n" not in text.strip() and "layout before units" in text and where in text and "units/" in text, text

    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(orjson.dumps({**e, "user": "ann"}) + b"\n" for e in PHISHING))
    job = parse_config({"model": MODEL, "events": EVENTS, "checkpoint": {"uri": uri}}, ReplayJobConfig, environ={})
    with pytest.raises(CheckpointError) as refused:  # replay --mode learn
        learn(job, expand_inputs([str(path)]), ReplayOptions([str(path)], progress=False))
    one_line(str(refused.value))
    config = consume_config(uri, kafka_bootstrap, "never-read")
    config = config.model_copy(update={"events": EventsConfig(**EVENTS)})
    with pytest.raises(CheckpointError) as refused:  # the daemon, before it consumes
        run_daemon(config, until_caught_up=True, progress=False)
    one_line(str(refused.value))
    pytest.importorskip("apache_beam")
    import apache_beam as beam

    from pipelines.stream_learn import LearnSettings, build_stream_learn

    with pytest.raises(CheckpointError) as refused:  # stream-learn, when the pipeline is built
        build_stream_learn(beam.Pipeline(), config, LearnSettings(60.0, 100), beam.Create([]))
    one_line(str(refused.value))
    from online.config import ServeJobConfig
    from online.serving.writer import LearningWriter

    serve = parse_config({"model": MODEL, "events": EVENTS, "checkpoint": {"uri": uri, "lease_seconds": 3}, "serve": {"learn": True}}, ServeJobConfig, environ={})
    writer = LearningWriter(serve, ServeMetrics(), ModelSlot())
    with pytest.raises(CheckpointError) as refused:  # a learning serve, when it starts learning: not in a request
        writer.start()
    one_line(str(refused.value))
    assert writer.unit is None and not writer.active and writer.lease.try_acquire()  # not learning, the lease given back
    writer.lease.release()
    capsys.readouterr()
    assert main(["predict", "--checkpoint", uri, "--input", str(path)]) == 1  # predict (and serve: the same reader)
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    one_line(err)


def test_checkpoints_list_and_show_at_a_keyed_uri_name_the_units(tmp_path, capsys, monkeypatch):
    from riverbeam.cli import main

    monkeypatch.delenv("RIVERBEAM_CHECKPOINT_KEY", raising=False)
    uri = str(tmp_path / "ckpt")
    root = checkpoint_store(uri)
    for partition, users in ((0, "ab"), (1, "c")):
        save_learner(unit_store(root, partition_unit("events", partition)), learned(users), {f"events/{partition}": 40})
    assert main(["checkpoints", "list", uri]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["unit=partition=events.0", "unit=partition=events.1"]
    assert main(["checkpoints", "show", uri]) == 1
    err = capsys.readouterr().err.strip()
    assert "2 units (partition=events.0, partition=events.1)" in err and unit_uri(uri, "partition=events.0") in err
    assert main(["checkpoints", "show", unit_uri(uri, "partition=events.1")]) == 0


def test_serve_reloads_when_a_unit_checkpoints_again(tmp_path, monkeypatch):
    """Serve merges every unit, and swaps in the merged models again when any unit writes a newer checkpoint."""
    monkeypatch.delenv("RIVERBEAM_CHECKPOINT_KEY", raising=False)
    root = checkpoint_store(str(tmp_path / "ckpt"))
    save_learner(unit_store(root, partition_unit("events", 0)), learned("ab"), {"events/0": 40})
    save_learner(unit_store(root, partition_unit("events", 1)), learned("c"), {"events/1": 40})
    slot = ModelSlot()
    watcher = CheckpointWatcher(checkpoint_store(root.uri), slot, ServeMetrics(), restore=functools.partial(restore_model, name=None), interval=0.1)
    assert watcher.load_initial() is not None
    assert sorted(slot.current.learner.state.models) == ["a", "b", "c"]
    assert watcher.poll() is None  # nothing new
    save_learner(unit_store(root, partition_unit("events", 1)), learned("cd"), {"events/1": 80})
    newest = watcher.poll()
    assert newest is not None and slot.current.checkpoint_id == newest
    assert sorted(slot.current.learner.state.models) == ["a", "b", "c", "d"]
