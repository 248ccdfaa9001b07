"""The learning unit (online/learning/unit.py): one step, one checkpoint in numbered steps, sinks committed only once durable."""

from __future__ import annotations

import concurrent.futures
import threading

import orjson
import pytest

from online.checkpoints.persistence import Cadence, Checkpointer, LearnerSpec
from online.checkpoints.store import CheckpointStore
from online.config import EventsConfig, ModelConfig
from online.learning.learner import Learner
from online.learning.unit import LearningUnit
from online.sources import FedSource, KafkaBatch

MODEL = ModelConfig(pipeline=[{"linear_model.LinearRegression": {}}], metrics=["MAE"])
EVENTS = EventsConfig(target="y")


def batch(first: int, count: int, partition: int = 0) -> KafkaBatch:
    return KafkaBatch(("events", partition), [orjson.dumps({"x": float(i), "y": 2.0 * i}) for i in range(first, first + count)],
                      list(range(first, first + count)))


class Recorded:
    """Sinks that write down what the unit asks of them, in order."""

    def __init__(self):
        self.calls: list = []

    def dead_letter(self, batch, index, reason, model=None):
        self.calls.append(("dead_letter", batch.offsets[index]))

    def predictions(self, batch, outcomes):
        self.calls.append(("predictions", len(outcomes)))

    def flush(self, positions):
        self.calls.append(("flush", dict(positions)))
        return {"outputs": {"out/0": 7}}

    def commit(self, durable):
        self.calls.append(("commit", dict(durable.positions)))


def unit_over(tmp_path, every_events: int, uploader=None, sinks=None, retry: bool = False):
    learner = Learner(MODEL, EVENTS)
    store = CheckpointStore(str(tmp_path / "ckpt"))
    checkpointer = Checkpointer(store, learner, LearnerSpec(MODEL, EVENTS), Cadence(every_events=every_events), uploader=uploader)
    source = FedSource()
    unit = LearningUnit("events.0", source, [("lr", learner)], sinks or Recorded(), checkpointer, retry_failed_checkpoints=retry)
    return unit, source, store


def test_a_due_checkpoint_flushes_the_sinks_first_records_their_positions_and_commits_only_once_durable(tmp_path):
    uploader = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    gate = threading.Event()
    real_save = CheckpointStore.save

    def held_save(self, *args, **kwargs):
        gate.wait(30)  # storage slow: the upload is in flight until the test lets it go
        return real_save(self, *args, **kwargs)

    try:
        unit, source, store = unit_over(tmp_path, every_events=5, uploader=uploader)
        sinks = unit.sinks
        CheckpointStore.save = held_save
        source.push(batch(0, 5))
        stepped = unit.step()
        assert tuple(stepped) == (5, 5, 0)
        assert sinks.calls == [("flush", {("events", 0): 5})]  # step 3 ran; nothing committed while the upload is in flight
        unit.collect()
        assert [c for c in sinks.calls if c[0] == "commit"] == []
        gate.set()
        unit.collect(wait=True)
        assert sinks.calls[-1] == ("commit", {"events/0": 5})  # step 5, with the checkpoint's own positions
        manifest = store.load_latest().manifest
        assert manifest["positions"] == {"events/0": 5} and manifest["extra"]["outputs"] == {"out/0": 7}
        assert manifest["events_learned"] == 5 and unit.checkpoints_written == 1
    finally:
        CheckpointStore.save = real_save
        gate.set()
        uploader.shutdown(wait=True)


def test_a_failed_upload_is_counted_and_retried_or_raised(tmp_path, monkeypatch):
    real_save = CheckpointStore.save
    failing = [True]

    def flaky(self, *args, **kwargs):
        if failing[0]:
            raise OSError("storage unreachable")
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(CheckpointStore, "save", flaky)
    unit, source, store = unit_over(tmp_path / "retry", every_events=2, retry=True)
    source.push(batch(0, 2))
    unit.step()  # due: the upload fails, the unit goes on
    assert unit.failed_checkpoints == 1 and [c for c in unit.sinks.calls if c[0] == "commit"] == []
    failing[0] = False
    unit.checkpoint(wait=True)  # the next checkpoint holds the whole state, though nothing new came
    assert store.load_latest().manifest["positions"] == {"events/0": 2}
    assert unit.sinks.calls[-1] == ("commit", {"events/0": 2})

    failing[0] = True
    strict, source, _ = unit_over(tmp_path / "strict", every_events=2)
    source.push(batch(0, 2))
    with pytest.raises(OSError, match="storage unreachable"):
        strict.step()


def test_seek_moves_the_positions_and_drops_what_was_queued_for_them(tmp_path):
    unit, source, store = unit_over(tmp_path, every_events=10**9)
    source.push(batch(0, 3))
    unit.seek({("events", 0): 10})
    assert unit.step() is None  # the queued batch was before the seek
    source.push(batch(10, 2))
    unit.step()
    assert unit.checkpoint_positions() == {"events/0": 12} and unit.learner.state.events_learned == 2
