"""The stream-learn pipeline learns exactly what the daemon's learner learns from the same events.

Streaming runs use the bundle-based DirectRunner with a ``TestStream`` (never Prism); the
portable path runs ``python -m pipelines.stream_learn`` against a local job service in a
subprocess, with the bounded files source.
"""

from __future__ import annotations

import copy
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.beam

beam = pytest.importorskip("apache_beam")

import orjson  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402
from apache_beam.testing import test_pipeline, test_stream  # noqa: E402
from apache_beam.testing.util import assert_that, equal_to  # noqa: E402
from river import datasets, evaluate, linear_model, metrics, preprocessing  # noqa: E402

from online.checkpoints.store import CheckpointStore  # noqa: E402
from online.config import ConsumeJobConfig  # noqa: E402
from online.events import EventError  # noqa: E402
from online.learning.learner import Learner  # noqa: E402
from online.checkpoints.persistence import restore_learner  # noqa: E402
from pipelines import stream_learn  # noqa: E402
from pipelines.stream_learn import (  # noqa: E402
    GLOBAL_KEY,
    LearnSettings,
    LearnStateFn,
    StreamLearnOptions,
    build_stream_learn,
    checkpoint_uri,
    parse_event,
    to_json,
)
from core.configuration import parse_config  # noqa: E402
from core.errors import UsageError  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
MODEL = {"pipeline": [{"preprocessing.StandardScaler": {}}, {"linear_model.LogisticRegression": {}}], "metrics": ["Accuracy", "LogLoss"]}


def job_config(checkpoints: Path | str, batch: int | None = None, **events) -> ConsumeJobConfig:
    """The daemon's configuration: the same YAML sections the consumer reads (mini-batches of `batch` events when given)."""
    model = {**MODEL, "batch": {"size": batch}} if batch else MODEL
    return parse_config(
        {"model": model, "events": {"target": "label", **events}, "kafka": {"topic": "events"}, "checkpoint": {"uri": str(checkpoints)}},
        ConsumeJobConfig,
        environ={},
    )


def phishing(n: int = 300, key=None) -> list[dict]:
    """The first `n` Phishing events as dicts; `key(i)` adds a ``user`` field."""
    events = []
    for i, (x, y) in enumerate(itertools.islice(datasets.Phishing(), n)):
        event = {**x, "label": y}
        if key is not None:
            event["user"] = key(i)
        events.append(event)
    return events


def daemon_predictions(learner: Learner, events: list[dict]) -> list[dict]:
    """What the daemon's core says about each event (through the pipeline's JSON round trip)."""
    out = []
    for event in copy.deepcopy(events):
        try:
            out.append(orjson.loads(to_json(learner.process(event).record())))
        except EventError:
            pass
    return out


def reason_of(config: ConsumeJobConfig, event: dict) -> str:
    """The daemon's reader's reason for refusing `event` (the dead letter must carry the same)."""
    with pytest.raises(EventError) as refused:
        Learner(config.model, config.events).reader.split(dict(event))
    return str(refused.value)


def streaming_pipeline() -> test_pipeline.TestPipeline:
    return test_pipeline.TestPipeline(options=PipelineOptions(["--runner=BundleBasedDirectRunner", "--streaming"]), blocking=True)


def virtual_clock() -> float:
    """The DirectRunner's processing-time clock under TestStream starts at 0."""
    return 0.0


def settings(every_events: int = 10_000, every_seconds: float = 60.0, from_checkpoint: bool = True, cached_learners: int = 1000) -> LearnSettings:
    return LearnSettings(every_seconds, every_events, from_checkpoint, clock=virtual_clock, cached_learners=cached_learners)


def decoded(pcoll, label: str):
    return pcoll | label >> beam.Map(orjson.loads)


def latest_learner(uri: str, config: ConsumeJobConfig) -> Learner:
    checkpoint = CheckpointStore(uri).load_latest()
    assert checkpoint is not None, f"no checkpoint at {uri}"
    return restore_learner(checkpoint, config.model, config.events, features=config.features)  # the bridge checks the hash


def payloads(events: list[dict]) -> list[bytes]:
    return [orjson.dumps(event) for event in events]


# ---------------------------------------------------------------------------------------------
# A global model: the daemon's learner and River's progressive validation
# ---------------------------------------------------------------------------------------------


def test_global_model_equals_daemon_and_progressive_validation(tmp_path):
    config = job_config(tmp_path / "ckpt")
    events = phishing(300)
    reference = Learner(config.model, config.events)
    expected = daemon_predictions(reference, events)
    halfway = Learner(config.model, config.events)
    halfway.process_many(copy.deepcopy(events[:150]))

    stream = (
        test_stream.TestStream()
        .advance_watermark_to(0)
        .add_elements(payloads(events[:150]))
        .advance_processing_time(61)  # the checkpoint timer (60 s) fires between the halves
        .add_elements(payloads(events[150:]))
        .advance_watermark_to_infinity()  # end of input: the final checkpoint
    )
    with streaming_pipeline() as pipeline:
        outputs = build_stream_learn(pipeline, config, settings(), stream)
        assert_that(decoded(outputs["predictions"], "Decode"), equal_to(expected), label="Predictions")
        assert_that(outputs["dead_letters"], equal_to([]), label="NoDeadLetters")
        # the end-of-input checkpoint's record is emitted at the end of the global window, after
        # assert_that has closed it: that one is checked in the store below
        seen = outputs["checkpoints"] | beam.Map(lambda c: (c["key"], c["uri"], c["events_seen"], c["events_learned"]))
        uri = str(tmp_path / "ckpt")
        assert_that(seen | beam.Filter(lambda c: c[2] < 300), equal_to([(GLOBAL_KEY, uri, 150, 150)]), label="Checkpoints")

    store = CheckpointStore(str(tmp_path / "ckpt"))
    assert [(m["events_seen"], m["events_learned"]) for m in store.list()] == [(300, 300), (150, 150)]
    first, last = [Learner.restore(store.load(m["id"]).state, config.model, config.events) for m in reversed(store.list())]
    assert first.report() == halfway.report()
    restored = latest_learner(str(tmp_path / "ckpt"), config)
    assert restored.report() == reference.report()
    assert restored.state.events_seen == 300

    score = evaluate.progressive_val_score(
        itertools.islice(datasets.Phishing(), 300),
        preprocessing.StandardScaler() | linear_model.LogisticRegression(),
        metrics.Accuracy() + metrics.LogLoss(),
    )
    assert restored.metric_values() == {type(m).__name__: m.get() for m in score}
    manifest = store.list()[0]
    assert manifest["metrics"] == reference.metric_values()
    assert manifest["extra"]["pipeline"] == "stream-learn"


@pytest.mark.parametrize("batch", [None, 7])
def test_the_learner_leaves_its_input_elements_as_they_were(tmp_path, batch):
    """Beam elements are read-only: another transform given the same objects (both consumers of a fused
    collection on the FnApiRunner are) must see every event whole. The DoFn used to pop the label and the
    source position from the element itself."""
    config = job_config(tmp_path / "ckpt", batch=batch)
    events = phishing(30)
    sourced = [{**event, stream_learn.SOURCE_FIELD: ("/data/a.jsonl", i + 1)} for i, event in enumerate(events)]
    elements = [(GLOBAL_KEY, dict(event)) for event in sourced]
    fn = LearnStateFn(config, settings())
    fn.setup()
    fn.start_bundle()
    state = new_state()
    outputs = [value for element in elements for value in fn.process(element, **state)]
    assert [event for _, event in elements] == sourced
    assert len([value for value in outputs if isinstance(value, bytes)]) == (30 if batch is None else 28)  # the last 2 are held


def test_a_new_job_continues_from_the_latest_checkpoint(tmp_path):
    """A restarted job starts each key from object storage: 300 + 100 events learn like 400 in a row."""
    config = job_config(tmp_path / "ckpt")
    events = phishing(400)
    reference = Learner(config.model, config.events)
    expected = daemon_predictions(reference, events)[300:]
    first = Learner(config.model, config.events)
    first.process_many(copy.deepcopy(events[:300]))
    CheckpointStore(str(tmp_path / "ckpt")).save(first.snapshot(), events_seen=300, events_learned=300, positions={})

    stream = test_stream.TestStream().advance_watermark_to(0).add_elements(payloads(events[300:])).advance_watermark_to_infinity()
    with streaming_pipeline() as pipeline:
        outputs = build_stream_learn(pipeline, config, settings(), stream)
        assert_that(decoded(outputs["predictions"], "Decode"), equal_to(expected))
    assert latest_learner(str(tmp_path / "ckpt"), config).report() == reference.report()


def test_config_and_checkpoints_on_gcs(gcs_client, gcs_prefix, beam_gcs):
    """The job's YAML is read from gs:// and each key's checkpoints land on gs:// (the GCS emulator)."""
    bucket, _, prefix = gcs_prefix[len("gs://"):].partition("/")
    yaml_text = ("model:\n  pipeline: [{preprocessing.StandardScaler: {}}, {linear_model.LogisticRegression: {}}]\n"
                 f"events: {{target: label, key: user}}\nkafka: {{topic: events}}\ncheckpoint: {{uri: '{gcs_prefix}/ckpt'}}\n")
    gcs_client.bucket(bucket).blob(f"{prefix}/job.yaml").upload_from_string(yaml_text)
    config = stream_learn.read_job_config(f"{gcs_prefix}/job.yaml")
    events = phishing(60, key=lambda i: "ab"[i % 2])

    stream = test_stream.TestStream().advance_watermark_to(0).add_elements(payloads(events)).advance_watermark_to_infinity()
    with streaming_pipeline() as pipeline:
        build_stream_learn(pipeline, config, settings(), stream)
    for key in "ab":
        alone = Learner(config.model, config.events)
        alone.process_many(copy.deepcopy([e for e in events if e["user"] == key]))
        assert latest_learner(checkpoint_uri(f"{gcs_prefix}/ckpt", key), config).report() == alone.report()


# ---------------------------------------------------------------------------------------------
# Keyed models
# ---------------------------------------------------------------------------------------------


def test_keyed_models_equal_the_daemon_per_key(tmp_path):
    config = job_config(tmp_path / "ckpt", key="user")
    keys = ["ann", "bob", 7]  # an integer key stays an integer
    events = phishing(300, key=lambda i: keys[i % 3])
    expected = daemon_predictions(Learner(config.model, config.events), events)

    stream = test_stream.TestStream().advance_watermark_to(0).add_elements(payloads(events)).advance_watermark_to_infinity()
    with streaming_pipeline() as pipeline:
        outputs = build_stream_learn(pipeline, config, settings(every_events=40, cached_learners=2), stream)  # 3 keys, 2 cached
        assert_that(decoded(outputs["predictions"], "Decode"), equal_to(expected), label="Predictions")
        seen = outputs["checkpoints"] | beam.Map(lambda c: (c["key"], c["events_seen"])) | beam.Filter(lambda c: c[1] < 100)
        assert_that(seen, equal_to([(k, n) for k in ("ann", "bob", "7") for n in (40, 80)]), label="Checkpoints")

    assert {record["key"] for record in expected} == set(keys)
    for key in keys:
        alone = Learner(config.model, config.events)
        alone.process_many(copy.deepcopy([e for e in events if e["user"] == key]))
        uri = checkpoint_uri(str(tmp_path / "ckpt"), str(key))
        assert [m["events_seen"] for m in CheckpointStore(uri).list()] == [100, 80, 40]  # every 40, and the rest at the end
        restored = latest_learner(uri, config)
        assert restored.state.events_seen == 100
        assert restored.report() == alone.report()
        assert list(restored.state.models) == [key]


# ---------------------------------------------------------------------------------------------
# Dead letters
# ---------------------------------------------------------------------------------------------


def test_bad_events_reach_the_dead_letter_output_with_reasons(tmp_path):
    config = job_config(tmp_path / "ckpt", key="user")
    good = phishing(20, key=lambda i: "ann")
    bad = {
        b"not json": parse_event(b"not json", "user")[1],
        b"[1, 2]": "event is not a JSON object but an array",
        b'{"empty_server_form_handler": 1, "label": true}': "model key field 'user' is missing",
        b'{"user": 1.5, "label": true}': "model key field 'user' must be a string or an integer, got 1.5",
        b'{"user": "ann", "empty_server_form_handler": "x", "label": true}': "feature 'empty_server_form_handler' is not a number: 'x'",
        b'{"user": "ann", "empty_server_form_handler": 1, "label": 2.5}': reason_of(config, {"user": "ann", "empty_server_form_handler": 1, "label": 2.5}),
    }
    stages = {payload: ("learn" if b'"user": "ann"' in payload else "parse") for payload in bad}
    mixed = payloads(good[:10]) + list(bad) + payloads(good[10:])
    expected = daemon_predictions(Learner(config.model, config.events), good)

    stream = test_stream.TestStream().advance_watermark_to(0).add_elements(mixed).advance_watermark_to_infinity()
    with streaming_pipeline() as pipeline:
        outputs = build_stream_learn(pipeline, config, settings(), stream)
        assert_that(decoded(outputs["predictions"], "Decode"), equal_to(expected), label="Predictions")
        letters = outputs["dead_letters"] | beam.Map(lambda d: (d["stage"], d["reason"], orjson.loads(d["value"]) if d["stage"] == "learn" else d["value"].encode()))
        want = [(stages[p], reason, orjson.loads(p) if stages[p] == "learn" else p) for p, reason in bad.items()]
        assert_that(letters, equal_to(want), label="DeadLetters")
    restored = latest_learner(checkpoint_uri(str(tmp_path / "ckpt"), "ann"), config)
    assert (restored.state.events_seen, restored.state.events_rejected) == (20, 2)


def test_fitted_transforms_apply_before_the_model(tmp_path):
    """With ``features.transform_output`` the learner sees the fitted features, as in the daemon."""
    from transforms.fitted import FORMAT, FittedTransform

    (tmp_path / "preprocess").mkdir()
    document = {"format": FORMAT, "label": None, "features": [
        {"name": "empty_server_form_handler", "type": "float", "transform": "z_score", "mean": 0.5, "var": 0.25},
        {"name": "popup_window", "type": "float", "transform": "bucketize", "boundaries": [0.25, 0.75]},
        {"name": "age_of_domain", "type": "int", "transform": "identity"},
    ]}
    (tmp_path / "preprocess" / "fitted_transforms.json").write_text(orjson.dumps(document).decode())
    base = job_config(tmp_path / "ckpt")
    config = base.model_copy(update={"features": base.features.model_copy(update={"transform_output": str(tmp_path / "preprocess")})})
    events = phishing(120)
    daemon = Learner(config.model, config.events, transform=FittedTransform.load(str(tmp_path / "preprocess")).apply)
    expected = daemon_predictions(daemon, events)
    broken = {"popup_window": 0.0, "age_of_domain": 1, "label": True}  # no empty_server_form_handler

    stream = test_stream.TestStream().advance_watermark_to(0).add_elements(payloads(events) + [orjson.dumps(broken)]).advance_watermark_to_infinity()
    with streaming_pipeline() as pipeline:
        outputs = build_stream_learn(pipeline, config, settings(), stream)
        assert_that(decoded(outputs["predictions"], "Decode"), equal_to(expected), label="Predictions")
        reasons = outputs["dead_letters"] | beam.Map(lambda d: (d["stage"], d["reason"]))
        assert_that(reasons, equal_to([("learn", "feature transform failed: empty_server_form_handler: missing value")]), label="DeadLetters")
    restored = latest_learner(str(tmp_path / "ckpt"), config)
    assert restored.report() == {**daemon.report(), "events_rejected": 1}
    assert set(restored.state.models[None]["StandardScaler"].means) == {"empty_server_form_handler", "popup_window", "age_of_domain"}


# ---------------------------------------------------------------------------------------------
# Retries: the per-key cache never double-learns
# ---------------------------------------------------------------------------------------------


class ValueState:
    """Beam's ReadModifyWrite state, in memory (a failed bundle's writes are thrown away by copying)."""

    def __init__(self):
        self.value = None

    def read(self):
        return self.value

    def write(self, value):
        self.value = value

    def clear(self):
        self.value = None


class BagState(ValueState):
    def read(self):
        return list(self.value or [])

    def add(self, value):
        self.value = [*(self.value or []), value]


class Timer:
    def set(self, timestamp):
        self.timestamp = timestamp


def new_state() -> dict:
    return {"snapshot_state": ValueState(), "log_state": BagState(), "version_state": ValueState(), "timer_due": ValueState(),
            "checkpoint_timer": Timer(), "flush_timer": Timer(), "positions_state": ValueState()}


def run_bundle(fn: LearnStateFn, state: dict, events: list[dict]) -> list[dict]:
    fn.start_bundle()
    out = []
    for event in copy.deepcopy(events):
        for value in fn.process((GLOBAL_KEY, event), **state):
            if isinstance(value, bytes):
                out.append(orjson.loads(value))
    return out


def test_a_retried_bundle_or_a_moved_key_learns_each_event_once(tmp_path):
    """State commits with the bundle, the DoFn's cache does not: the cache is checked against it."""
    config = job_config(tmp_path / "ckpt")
    events = phishing(250)
    expected = daemon_predictions(Learner(config.model, config.events), events)
    fn = LearnStateFn(config, settings(every_events=120))
    fn.setup()
    committed = new_state()

    assert run_bundle(fn, committed, events[:100]) == expected[:100]
    attempt = copy.deepcopy(committed)
    run_bundle(fn, attempt, events[100:150])  # this bundle fails: the runner drops `attempt`
    assert run_bundle(fn, committed, events[100:150]) == expected[100:150]  # the retry (crosses a checkpoint at 120)
    assert committed["version_state"].read()[1] == 30 and len(committed["log_state"].read()) == 30

    other = LearnStateFn(config, settings(every_events=120))  # the key moves to another worker
    other.setup()
    assert run_bundle(other, committed, events[150:200]) == expected[150:200]
    assert run_bundle(fn, committed, events[200:]) == expected[200:]  # and back: the stale cache is rebuilt


def test_file_positions_survive_a_key_move_and_a_new_job_skips_them(tmp_path):
    """The files source's positions ride in Beam state (snapshot + log): a rebuilt learner knows them too."""
    config = job_config(tmp_path / "ckpt")
    events = phishing(100)
    sourced = [{**e, stream_learn.SOURCE_FIELD: ("/data/a.jsonl", i + 1)} for i, e in enumerate(events)]
    expected = daemon_predictions(Learner(config.model, config.events), events)
    first = LearnStateFn(config, settings(every_events=30))
    first.setup()
    committed = new_state()
    assert run_bundle(first, committed, sourced[:50]) == expected[:50]  # a checkpoint at 30, 20 logged since
    other = LearnStateFn(config, settings(every_events=30))  # the key moves: rebuilt from snapshot + log
    other.setup()
    assert run_bundle(other, committed, sourced[50:70]) == expected[50:70]  # a checkpoint at 60
    assert CheckpointStore(str(tmp_path / "ckpt")).load_latest().positions == {"files": {"/data/a.jsonl": 60}}

    rerun = LearnStateFn(config, settings(every_events=30))  # a new job over the same file: no Beam state
    rerun.setup()
    assert run_bundle(rerun, new_state(), sourced) == expected[60:]  # lines 1-60 are in the checkpoint already
    assert CheckpointStore(str(tmp_path / "ckpt")).load_latest().positions == {"files": {"/data/a.jsonl": 90}}


def test_the_checkpoint_uploads_the_snapshot_kept_in_beam_state(tmp_path, monkeypatch):
    """A key's unit checkpoints with the DoFn's snapshot (`LearningUnit.checkpoint`'s state): taken once, the same
    bytes in Beam state and in object storage."""
    config = job_config(tmp_path / "ckpt")
    events = phishing(50)
    taken = []
    snapshot = Learner.snapshot
    monkeypatch.setattr(Learner, "snapshot", lambda self: taken.append(1) or snapshot(self))
    fn = LearnStateFn(config, settings(every_events=30))
    fn.setup()
    committed = new_state()
    assert run_bundle(fn, committed, events) == daemon_predictions(Learner(config.model, config.events), events)
    latest = CheckpointStore(str(tmp_path / "ckpt")).load_latest()
    assert latest.manifest["events_seen"] == 30 and len(committed["log_state"].read()) == 20
    assert latest.state == committed["snapshot_state"].read()
    assert len(taken) == 2  # the new key's starting snapshot, then one per checkpoint


def test_a_checkpoint_timer_fired_inside_a_bundle_is_set_again_by_the_next_event(tmp_path):
    """The DoFn remembers per bundle that a key's checkpoint timer is set (no state read per event); the timer firing
    in that bundle forgets it, so the next event sets it again."""
    config = job_config(tmp_path / "ckpt")
    events = phishing(20)
    fn = LearnStateFn(config, settings(every_events=1000))
    fn.setup()
    state = new_state()
    fn.start_bundle()
    for event in copy.deepcopy(events[:10]):
        list(fn.process((GLOBAL_KEY, event), **state))
    assert state["timer_due"].read() == 1
    names = ("snapshot_state", "log_state", "version_state", "timer_due", "positions_state")
    records = [v.value for v in fn.on_checkpoint_timer(key=GLOBAL_KEY, **{n: state[n] for n in names})]
    assert [r["events_seen"] for r in records] == [10] and state["timer_due"].read() is None
    state["checkpoint_timer"] = Timer()
    for event in copy.deepcopy(events[10:]):
        list(fn.process((GLOBAL_KEY, event), **state))
    assert state["timer_due"].read() == 1 and getattr(state["checkpoint_timer"], "timestamp", None) is not None


# ---------------------------------------------------------------------------------------------
# Options, configuration and errors
# ---------------------------------------------------------------------------------------------


def test_options_and_user_errors(tmp_path):
    config_path = tmp_path / "job.yaml"
    config_path.write_text("model:\n  pipeline: [{linear_model.LogisticRegression: {}}]\nevents: {target: label}\n"
                           "kafka: {topic: events}\ncheckpoint: {uri: /tmp/x, every_seconds: 5}\n")
    view = PipelineOptions([f"--learn_config={config_path}", "--learn_source=pubsub", "--checkpoint_every_events=7"]).view_as(StreamLearnOptions)
    config = stream_learn.read_job_config(view.learn_config)
    chosen = stream_learn.learn_settings(config, view)
    assert (chosen.every_seconds, chosen.every_events, chosen.from_checkpoint) == (5.0, 7, True)  # flag over config
    with pytest.raises(UsageError, match="--learn_config"):
        stream_learn.run(["--learn_source=files"])
    with pytest.raises(UsageError, match="--runner=DataflowRunner"):
        stream_learn.run([f"--learn_config={config_path}"])  # kafka cannot run locally
    with pytest.raises(UsageError, match="--learn_subscription"):
        stream_learn.ReadEvents(config, "pubsub")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {pipeline: [{linear_model.LogisticRegression: {}}]}\nkafka: {topic: t}\ncheckpoint: {uri: /x, keep: zero}\n")
    with pytest.raises(UsageError, match="checkpoint.keep"):
        stream_learn.read_job_config(str(bad))


# ---------------------------------------------------------------------------------------------
# The portable runner (local job service, LOOPBACK workers), in a subprocess
# ---------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"job service exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"job service not listening on {port}")


@pytest.fixture
def job_service(tmp_path):
    """``local_job_service_main`` on a free port; stopped (by its own pid) after the test."""
    port = free_port()
    env = {**os.environ, "NO_GCE_CHECK": "true"}
    log = open(tmp_path / "job-service.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main", f"--port={port}", f"--staging_dir={tmp_path / 'staging'}"],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    try:
        wait_for_port(port, process)
        yield f"localhost:{port}"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def test_portable_runner_with_bounded_files(tmp_path, job_service):
    keys = ["ann", "bob"]
    events = phishing(200, key=lambda i: keys[i % 2])
    (tmp_path / "events.jsonl").write_bytes(b"\n".join(payloads(events) + [b"{broken"]) + b"\n")
    ckpt = tmp_path / "ckpt"
    (tmp_path / "job.yaml").write_text(
        "model:\n  pipeline:\n    - preprocessing.StandardScaler: {}\n    - linear_model.LogisticRegression: {}\n"
        "  metrics: [Accuracy, LogLoss]\nevents: {target: label, key: user}\nkafka: {topic: events}\n"
        f"checkpoint: {{uri: '{ckpt}', every_events: 60}}\n"
    )
    config = job_config(ckpt, key="user")
    argv = [
        sys.executable, "-m", "pipelines.stream_learn", "--runner=PortableRunner", f"--job_endpoint={job_service}",
        "--environment_type=LOOPBACK", f"--learn_config={tmp_path / 'job.yaml'}", "--learn_source=files",
        f"--learn_input={tmp_path / 'events.jsonl'}", f"--learn_output={tmp_path / 'out'}",
    ]
    done = subprocess.run(argv, cwd=REPO, env={**os.environ, "NO_GCE_CHECK": "true"}, capture_output=True, text=True, timeout=240)
    # Known: the LOOPBACK path may abort at interpreter exit (rc 134) after the job is DONE.
    assert done.returncode == 0 or (done.returncode in (134, -signal.SIGABRT) and "state DONE" in done.stderr), done.stderr[-3000:]
    assert "Job state changed to DONE" in done.stderr

    predictions = [orjson.loads(line) for f in sorted((tmp_path / "out").glob("predictions-*")) for line in f.read_bytes().splitlines()]
    letters = [orjson.loads(line) for f in sorted((tmp_path / "out").glob("dead_letter-*")) for line in f.read_bytes().splitlines()]
    expected = daemon_predictions(Learner(config.model, config.events), events)
    assert sorted(map(orjson.dumps, predictions)) == sorted(map(orjson.dumps, expected))
    assert [(d["stage"], d["value"]) for d in letters] == [("parse", "{broken")]
    for key in keys:
        alone = Learner(config.model, config.events)
        alone.process_many(copy.deepcopy([e for e in events if e["user"] == key]))
        store = CheckpointStore(checkpoint_uri(str(ckpt), key))
        assert [m["events_seen"] for m in store.list()] == [100, 60]
        assert latest_learner(store.uri, config).report() == alone.report()


# ---------------------------------------------------------------------------------------------
# Reruns over bounded files: the checkpoint's file positions are honoured
# ---------------------------------------------------------------------------------------------


def run_files_job(tmp_path: Path, name: str, pattern: Path, key: str | None = None) -> None:
    events = "{target: label" + (f", key: {key}" if key else "") + "}"
    config = tmp_path / "job.yaml"
    config.write_text(
        "model:\n  pipeline: [{preprocessing.StandardScaler: {}}, {linear_model.LogisticRegression: {}}]\n"
        f"  metrics: [Accuracy, LogLoss]\nevents: {events}\nkafka: {{topic: events}}\n"
        f"checkpoint: {{uri: '{tmp_path / 'ckpt'}', every_events: 300}}\n"
    )
    stream_learn.run([f"--learn_config={config}", "--learn_source=files", f"--learn_input={pattern}",
                      f"--learn_output={tmp_path / name}", "--runner=FnApiRunner"])


def test_a_rerun_over_the_same_files_learns_each_line_once(tmp_path):
    """Run twice over the same 1,250 events: events_seen is 1,250, not 2,500; appended lines are learned once."""
    config = job_config(tmp_path / "ckpt")
    events = phishing(1250)
    source = tmp_path / "events.jsonl"
    source.write_bytes(b"\n".join(payloads(events[:1000]) + [b"{broken"]) + b"\n")
    store = CheckpointStore(str(tmp_path / "ckpt"))

    run_files_job(tmp_path, "first", source)
    first = store.load_latest()
    assert first.manifest["events_seen"] == 1000 and first.positions == {"files": {str(source): 1000}}
    run_files_job(tmp_path, "second", source)  # the same files again: nothing new
    assert store.load_latest().id == first.id
    assert all(not f.read_bytes() for f in (tmp_path / "second").glob("predictions-*"))

    with open(source, "ab") as handle:  # lines appended after the bad line 1001
        handle.write(b"\n".join(payloads(events[1000:])) + b"\n")
    run_files_job(tmp_path, "third", source)
    latest = store.load_latest()
    alone = Learner(config.model, config.events)
    alone.process_many(copy.deepcopy(events))
    assert latest.manifest["events_seen"] == 1250 and latest.positions == {"files": {str(source): 1251}}
    assert restore_learner(latest, config.model, config.events).report() == alone.report()
    third = [orjson.loads(line) for f in (tmp_path / "third").glob("predictions-*") for line in f.read_bytes().splitlines()]
    assert len(third) == 250


def test_a_keyed_rerun_skips_per_key(tmp_path):
    events = phishing(300, key=lambda i: "ab"[i % 2])
    source = tmp_path / "events.jsonl"
    source.write_bytes(b"\n".join(payloads(events)) + b"\n")
    run_files_job(tmp_path, "first", source, key="user")
    run_files_job(tmp_path, "second", source, key="user")
    config = job_config(tmp_path / "ckpt", key="user")
    for key, last in (("a", 299), ("b", 300)):
        latest = CheckpointStore(checkpoint_uri(str(tmp_path / "ckpt"), key)).load_latest()
        assert latest.manifest["events_seen"] == 150 and latest.positions == {"files": {str(source): last}}
        alone = Learner(config.model, config.events)
        alone.process_many(copy.deepcopy([e for e in events if e["user"] == key]))
        assert restore_learner(latest, config.model, config.events).report() == alone.report()
