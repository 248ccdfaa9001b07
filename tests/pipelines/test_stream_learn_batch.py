"""Stream-learn in mini-batch mode (``model.batch``): the shared learner's chunks across bundles, retries, key moves and checkpoints."""

from __future__ import annotations

import copy

import pytest

beam = pytest.importorskip("apache_beam")

import orjson  # noqa: E402

from online.checkpoints.store import CheckpointStore  # noqa: E402
from online.config import ConsumeJobConfig  # noqa: E402
from online.learning.learner import Learner  # noqa: E402
from pipelines.stream_learn import GLOBAL_KEY, LearnStateFn, to_json  # noqa: E402
from river import linear_model, metrics, preprocessing  # noqa: E402

from tests.online.learning.test_batch import bare_minibatch  # noqa: E402
from tests.pipelines.test_stream_learn import job_config, new_state, phishing, run_bundle, settings  # noqa: E402


def batch_config(checkpoints, size: int) -> ConsumeJobConfig:
    return job_config(checkpoints, batch=size)


def flush(fn: LearnStateFn, state: dict) -> list[dict]:
    names = ("snapshot_state", "log_state", "version_state", "positions_state")
    return [orjson.loads(v) for v in fn.on_flush_timer(key=GLOBAL_KEY, **{n: state[n] for n in names}) if isinstance(v, bytes)]


def test_chunks_survive_retried_bundles_key_moves_and_checkpoints_and_equal_the_bare_loop(tmp_path):
    config = batch_config(tmp_path / "ckpt", 40)
    events = phishing(250)
    reference = Learner(config.model, config.events)
    outcomes: list = []
    reference.process_many(copy.deepcopy(events), predictions=outcomes)
    expected = [orjson.loads(to_json(p.record())) for _, p in outcomes]
    fn = LearnStateFn(config, settings(every_events=120))
    fn.setup()
    committed = new_state()

    out = run_bundle(fn, committed, events[:100])
    assert out == expected[:80]  # two chunks learned, 20 events held (logged, not learned)
    assert committed["version_state"].read()[1] == 100 and len(committed["log_state"].read()) == 100
    attempt = copy.deepcopy(committed)
    run_bundle(fn, attempt, events[100:150])  # fails: the runner drops `attempt`
    out += run_bundle(fn, committed, events[100:150])  # the retry: chunk 120 complete -> checkpoint (120 learned), 30 held
    assert out == expected[:120]
    assert committed["version_state"].read()[1] == 30 and len(committed["log_state"].read()) == 30  # the held ones stay logged
    assert CheckpointStore(str(tmp_path / "ckpt")).load_latest().manifest["events_seen"] == 120  # at a chunk boundary

    other = LearnStateFn(config, settings(every_events=120))  # the key moves: the held events come back from the log
    other.setup()
    out += run_bundle(other, committed, events[150:200])
    out += run_bundle(fn, committed, events[200:])  # and back: the stale cache is rebuilt
    assert out == expected[:240]
    out += flush(fn, committed)  # end of input: the last, short chunk
    assert out == expected

    latest = CheckpointStore(str(tmp_path / "ckpt")).load_latest().manifest
    assert latest["events_seen"] == 250
    data = [({k: v for k, v in e.items() if k != "label"}, e["label"]) for e in events]
    bare = bare_minibatch(data, 40, preprocessing.StandardScaler() | linear_model.LogisticRegression(), metrics.Accuracy() + metrics.LogLoss(), proba=True)
    assert latest["metrics"] == bare == reference.metric_values()  # River's own mini-batch loop, bit for bit


def test_a_files_job_in_batch_mode_and_its_rerun_equal_the_bare_loop(tmp_path):
    from pipelines import stream_learn
    from tests.pipelines.test_stream_learn import payloads

    events = phishing(1250)
    source = tmp_path / "events.jsonl"
    source.write_bytes(b"\n".join(payloads(events[:1000])) + b"\n")
    config = tmp_path / "job.yaml"
    config.write_text(
        "model:\n  pipeline: [{preprocessing.StandardScaler: {}}, {linear_model.LogisticRegression: {}}]\n"
        f"  metrics: [Accuracy, LogLoss]\n  batch: {{size: 100}}\nevents: {{target: label}}\nkafka: {{topic: events}}\n"
        f"checkpoint: {{uri: '{tmp_path / 'ckpt'}', every_events: 300}}\n"
    )

    def run(name: str) -> list[dict]:
        stream_learn.run([f"--learn_config={config}", "--learn_source=files", f"--learn_input={source}",
                          f"--learn_output={tmp_path / name}", "--runner=FnApiRunner"])
        return [orjson.loads(line) for f in (tmp_path / name).glob("predictions-*") for line in f.read_bytes().splitlines()]

    assert len(run("first")) == 1000
    store = CheckpointStore(str(tmp_path / "ckpt"))
    assert store.load_latest().manifest["events_seen"] == 1000
    with open(source, "ab") as handle:
        handle.write(b"\n".join(payloads(events[1000:])) + b"\n")
    assert len(run("second")) == 250  # the rerun learns the appended lines only, in chunks 100, 100, 50
    latest = store.load_latest()
    assert latest.manifest["events_seen"] == 1250 and latest.positions == {"files": {str(source): 1250}}
    data = [({k: v for k, v in e.items() if k != "label"}, e["label"]) for e in events]
    bare = bare_minibatch(data, 100, preprocessing.StandardScaler() | linear_model.LogisticRegression(), metrics.Accuracy() + metrics.LogLoss(), proba=True)
    assert latest.manifest["metrics"] == bare
