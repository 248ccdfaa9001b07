"""Every writer's checkpoint resumes in every reader: the checkpoint bridge's promise, tested pair by pair.

Writers: the daemon (real local broker), ``replay --mode learn``, stream-learn on the
BundleBasedDirectRunner. Readers: the same three (they continue learning from the checkpoint on
their own source), ``riverbeam predict`` and ``replay --mode evaluate --checkpoint-uri``. Each
writer learns the first half of the events; each reader continues with (or predicts) the second
half. Whatever the pair, the metrics and the predictions equal one learner over both halves —
with a signing key set, so every writer signs and every reader verifies. And with a key set,
every reader refuses an unsigned checkpoint in one line naming its URI.
"""

from __future__ import annotations

import copy
import itertools
import json
import shutil
import uuid
from pathlib import Path

import orjson
import pytest
from river import datasets

from online.checkpoints.store import CheckpointStore, SignatureError
from online.config import ConsumeJobConfig, EventsConfig, KafkaConfig, ModelConfig, ReplayJobConfig
from online.consume.daemon import run_daemon
from online.kafka_clients import create_topic, make_producer
from online.learning.learner import Learner
from online.checkpoints.persistence import restore_learner
from online.serving.predict import prediction_record
from online.replay.engine import ReplayOptions, evaluate, learn
from online.readers import expand_inputs
from core.configuration import parse_config

MODEL = {"pipeline": [{"preprocessing.StandardScaler": {}}, {"linear_model.LogisticRegression": {}}], "metrics": ["Accuracy", "LogLoss"]}
EVENTS = [{**x, "label": y} for x, y in itertools.islice(datasets.Phishing(), 520)]
HEAD, TAIL, PROBE = EVENTS[:240], EVENTS[240:480], EVENTS[480:]
KEY = "matrix-signing-key"
WRITERS = ("daemon", "replay", "stream-learn")
READERS = ("daemon", "replay", "stream-learn", "predict", "evaluate")


def learner_over(*parts: list[dict]) -> Learner:
    learner = Learner(ModelConfig(**MODEL), EventsConfig(target="label"))
    for part in parts:
        learner.process_many(copy.deepcopy(part))
    return learner


def answers(learner: Learner, events: list[dict]) -> list[dict]:
    """What `riverbeam predict` answers for each event (without the checkpoint id)."""
    return [{k: v for k, v in prediction_record(learner, dict(e), None).items() if k != "checkpoint"} for e in events]


def produced_topics(bootstrap: str, prefix: str, parts: dict, partitions: int = 1, user_key: bool = False) -> dict:
    """Each part's events on a topic of its own (`partitions` partitions; keyed by ``user``, its partition `by_partition`)."""
    names = {}
    for part, events in parts.items():
        name = names[part] = f"{prefix}-{part}-{uuid.uuid4().hex[:8]}"
        create_topic(bootstrap, name, partitions=partitions)
        producer = make_producer(KafkaConfig(bootstrap_servers=bootstrap, topic=name))
        for event, partition in zip(events, by_partition(events) if user_key else [0] * len(events)):
            producer.send(name, orjson.dumps(event), key=event["user"].encode() if user_key else None, partition=partition)
        producer.flush()
        producer.close()
    return names


@pytest.fixture(scope="module")
def topics(kafka_bootstrap):
    """The head and the tail of the events, each on its own one-partition topic."""
    return produced_topics(kafka_bootstrap, "matrix", {"head": HEAD, "tail": TAIL})


def jsonl(path: Path, events: list[dict]) -> str:
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    return str(path)


def consume_config(uri: str, bootstrap: str, topic: str) -> ConsumeJobConfig:
    return parse_config(
        {
            "kafka": {"bootstrap_servers": bootstrap, "topic": topic, "group_id": f"g-{uuid.uuid4().hex[:8]}",
                      "consumer": {"session_timeout_ms": 2000, "heartbeat_interval_ms": 300, "max_poll_interval_ms": 4000}},
            "model": MODEL, "events": {"target": "label"}, "metrics": {"port": None},
            "checkpoint": {"uri": uri, "every_events": 100, "lease_seconds": 3},
        },
        ConsumeJobConfig, environ={},
    )


def replay_job(uri: str) -> ReplayJobConfig:
    return parse_config({"model": MODEL, "events": {"target": "label"}, "checkpoint": {"uri": uri, "every_events": 100}}, ReplayJobConfig, environ={})


# -- the jobs ----------------------------------------------------------------------------------


def daemon_learns(uri: str, topic: str, bootstrap: str, tmp_path: Path) -> None:
    summary = run_daemon(consume_config(uri, bootstrap, topic), until_caught_up=True, progress=False)
    assert summary["events_seen"] == 240


def replay_learns(uri: str, events: list[dict], folder: Path, name: str = "events-1-head") -> None:
    """Replay `events` from ``folder/name-*.jsonl`` (a replay resumes with files that sort after its last one)."""
    path = jsonl(folder / f"{name}-{uuid.uuid4().hex[:6]}.jsonl", events)
    result = learn(replay_job(uri), expand_inputs([path]), ReplayOptions([path], checkpoint_uri=uri, progress=False))
    assert result.events == 240


def stream_learn_learns(uri: str, events: list[dict], tmp_path: Path) -> None:
    beam = pytest.importorskip("apache_beam")
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.testing import test_pipeline, test_stream

    from pipelines.stream_learn import LearnSettings, build_stream_learn

    config = consume_config(uri, "localhost:1", "unused")
    stream = test_stream.TestStream().advance_watermark_to(0).add_elements([orjson.dumps(e) for e in events]).advance_watermark_to_infinity()
    options = PipelineOptions(["--runner=BundleBasedDirectRunner", "--streaming"])
    with test_pipeline.TestPipeline(options=options, blocking=True) as pipeline:
        build_stream_learn(pipeline, config, LearnSettings(60.0, 100, True, clock=lambda: 0.0), stream)
    assert beam is not None


def write(writer: str, uri: str, topics: dict, bootstrap: str, tmp_path: Path) -> None:
    if writer == "daemon":
        daemon_learns(uri, topics["head"], bootstrap, tmp_path)
    elif writer == "replay":
        replay_learns(uri, HEAD, tmp_path)
    else:
        stream_learn_learns(uri, HEAD, tmp_path)


def signed_checkpoints(root: Path, writers: tuple, write_one) -> dict:
    """One signed checkpoint per writer below `root` (``write_one(writer, uri)``); their URIs and the folder."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RIVERBEAM_CHECKPOINT_KEY", KEY)
        uris = {writer: str(root / writer) for writer in writers}
        for writer, uri in uris.items():
            write_one(writer, uri)
        return {**uris, "folder": str(root)}


@pytest.fixture(scope="module")
def written(tmp_path_factory, topics, kafka_bootstrap):
    """One signed checkpoint per writer, each over the head of the events."""
    root = tmp_path_factory.mktemp("written")
    return signed_checkpoints(root, WRITERS, lambda writer, uri: write(writer, uri, topics, kafka_bootstrap, root))


def copy_checkpoints(source: str, target: Path) -> str:
    """The checkpoints and the LATEST pointer (not the writer's lease)."""
    shutil.copytree(Path(source) / "checkpoints", target / "checkpoints")
    shutil.copy(Path(source) / "LATEST", target / "LATEST")
    return str(target)


# -- the matrix --------------------------------------------------------------------------------


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("writer", WRITERS)
def test_every_writer_resumes_in_every_reader(writer, reader, written, topics, kafka_bootstrap, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RIVERBEAM_CHECKPOINT_KEY", KEY)
    uri = copy_checkpoints(written[writer], tmp_path / "ckpt")
    head = CheckpointStore(uri, signing_key=KEY.encode()).load_latest()
    assert head.manifest["events_seen"] == 240 and head.manifest["state"]["hmac_sha256"]
    whole = learner_over(HEAD, TAIL)

    if reader == "predict":
        from riverbeam.cli import main

        assert main(["predict", "--checkpoint", uri, "--input", jsonl(tmp_path / "tail.jsonl", TAIL)]) == 0
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        got = [{k: v for k, v in line.items() if k not in ("line", "checkpoint")} for line in lines]
        assert got == json.loads(json.dumps(answers(learner_over(HEAD), TAIL)))  # the head's model, nothing learned
        assert {line["checkpoint"] for line in lines} == {head.id}
        return
    if reader == "evaluate":
        path = jsonl(tmp_path / "tail.jsonl", TAIL)
        result = evaluate(replay_job(uri), expand_inputs([path]), ReplayOptions([path], mode="evaluate", checkpoint_uri=uri, progress=False))
        assert result.leaderboard[0]["metrics"] == whole.metric_values()
        assert CheckpointStore(uri, signing_key=KEY.encode()).load_latest().id == head.id  # read, never written
        return

    if reader == "daemon":
        daemon_learns(uri, topics["tail"], kafka_bootstrap, tmp_path)
    elif reader == "replay":
        replay_learns(uri, TAIL, Path(written["folder"]), "events-2-tail")
    else:
        stream_learn_learns(uri, TAIL, tmp_path)
    latest = CheckpointStore(uri, signing_key=KEY.encode()).load_latest()
    assert (latest.manifest["events_seen"], latest.manifest["events_learned"]) == (480, 480)
    assert latest.manifest["metrics"] == whole.metric_values()
    continued = restore_learner(latest)  # from the recorded configuration, as predict and serve do
    assert continued.report() == whole.report()
    assert answers(continued, PROBE) == answers(whole, PROBE)
    assert set(head.positions) <= set(latest.positions)  # the writer's positions are kept (or advanced by a reader of its kind)
    if writer != reader:
        assert {k: latest.positions[k] for k in head.positions} == head.positions


# -- signing: every reader refuses an unsigned checkpoint --------------------------------------


@pytest.fixture
def unsigned(tmp_path, monkeypatch):
    monkeypatch.delenv("RIVERBEAM_CHECKPOINT_KEY", raising=False)
    uri = str(tmp_path / "unsigned")
    replay_learns(uri, HEAD, tmp_path)
    assert not CheckpointStore(uri).load_latest().manifest["state"]["hmac_sha256"]
    monkeypatch.setenv("TEAM_KEY", KEY)
    return uri


def one_line_refusal(error: BaseException | str, uri: str) -> None:
    text = str(error)
    assert "\n" not in text.strip() and uri in text and "not signed" in text, text


def test_with_a_key_every_reader_refuses_an_unsigned_checkpoint(unsigned, topics, kafka_bootstrap, tmp_path, capsys):
    from riverbeam.cli import main

    with pytest.raises(SignatureError) as refused:  # the daemon
        run_daemon(consume_config(unsigned, kafka_bootstrap, topics["tail"]).model_copy(
            update={"checkpoint": consume_config(unsigned, kafka_bootstrap, topics["tail"]).checkpoint.model_copy(update={"signing_key_env": "TEAM_KEY"})}),
            until_caught_up=True, progress=False)
    one_line_refusal(refused.value, unsigned)
    job = replay_job(unsigned)
    signed_job = job.model_copy(update={"checkpoint": job.checkpoint.model_copy(update={"signing_key_env": "TEAM_KEY"})})
    path = jsonl(tmp_path / "tail.jsonl", TAIL)
    with pytest.raises(SignatureError) as refused:  # replay learn, key from checkpoint.signing_key_env
        learn(signed_job, expand_inputs([path]), ReplayOptions([path], progress=False))
    one_line_refusal(refused.value, unsigned)
    bare = parse_config({"model": MODEL, "events": {"target": "label"}}, ReplayJobConfig, environ={})
    with pytest.raises(SignatureError) as refused:  # replay evaluate --checkpoint-uri, key by --signing-key-env
        evaluate(bare, expand_inputs([path]), ReplayOptions([path], mode="evaluate", checkpoint_uri=unsigned, signing_key_env="TEAM_KEY", progress=False))
    one_line_refusal(refused.value, unsigned)
    pytest.importorskip("apache_beam")
    from pipelines.stream_learn import LearnSettings, LearnStateFn

    config = consume_config(unsigned, "localhost:1", "unused")
    config = config.model_copy(update={"checkpoint": config.checkpoint.model_copy(update={"signing_key_env": "TEAM_KEY"})})
    fn = LearnStateFn(config, LearnSettings(60.0, 100))
    fn.setup()
    with pytest.raises(SignatureError) as refused:  # stream-learn, when a key starts from the checkpoint
        fn.new_learner("")
    one_line_refusal(refused.value, unsigned)
    for argv in (["predict", "--checkpoint", unsigned, "--input", path, "--signing-key-env", "TEAM_KEY"],
                 ["checkpoints", "show", unsigned, "--signing-key-env", "TEAM_KEY"]):
        capsys.readouterr()
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        one_line_refusal(err, unsigned)


def test_with_the_default_variable_set_the_clis_refuse_too(unsigned, tmp_path, monkeypatch, capsys):
    from riverbeam.cli import main

    monkeypatch.setenv("RIVERBEAM_CHECKPOINT_KEY", KEY)
    assert main(["predict", "--checkpoint", unsigned, "--input", jsonl(tmp_path / "tail.jsonl", TAIL)]) == 1
    one_line_refusal(capsys.readouterr().err, unsigned)
    assert main(["checkpoints", "list", unsigned]) == 0  # manifests only: listed, marked unsigned, nothing unpickled
    assert capsys.readouterr().out.split()[-1] == "unsigned"


# -- what a checkpoint must hold: every writer carries the daemon's Kafka context ----------------


def serve_learns(uri: str, events: list[dict]) -> None:
    """A learning ``riverbeam serve`` (``serve.learn: true``) learns `events` over HTTP's path and checkpoints when it stops."""
    from online.config import ServeJobConfig
    from online.serving.metrics import ServeMetrics
    from online.serving.reload import ModelSlot
    from online.serving.writer import LearningWriter

    config = parse_config({"checkpoint": {"uri": uri, "every_events": 100, "lease_seconds": 3}, "serve": {"learn": True},
                           "model": MODEL, "events": {"target": "label"}}, ServeJobConfig, environ={})
    writer = LearningWriter(config, ServeMetrics(), ModelSlot())
    assert writer.start()
    writer.learn(copy.deepcopy(events))
    writer.stop()


@pytest.mark.parametrize("writer", ["replay", "serve", "stream-learn"])
def test_after_any_writer_the_daemon_still_tells_a_recreated_topic(writer, kafka_bootstrap, tmp_path, monkeypatch):
    """The daemon checkpoints a topic, another job continues the model, the topic is recreated with more events.

    The other job's checkpoint keeps the daemon's offsets, so it must keep what the daemon recorded
    about them (topic ids, output offsets, outputs ahead): without them the daemon restored it, saw
    no gap under ``on_offset_gap: fail`` and silently skipped the new topic's first 240 events.
    """
    from online.consume.daemon import DaemonError
    from tests.online.consume.test_daemon import produce, recreate_topic

    monkeypatch.setenv("RIVERBEAM_CHECKPOINT_KEY", KEY)
    topic = f"matrix-recreated-{uuid.uuid4().hex[:8]}"
    produce(kafka_bootstrap, topic, [orjson.dumps(e) for e in HEAD])
    uri = str(tmp_path / "ckpt")
    daemon_learns(uri, topic, kafka_bootstrap, tmp_path)
    store = CheckpointStore(uri, signing_key=KEY.encode())
    recorded = store.load_latest().manifest["extra"]
    assert recorded["topic_ids"][topic] and "outputs" in recorded and "outputs_ahead" in recorded

    if writer == "replay":
        replay_learns(uri, TAIL, tmp_path, "events-2-tail")
    elif writer == "serve":
        serve_learns(uri, TAIL)
    else:
        stream_learn_learns(uri, TAIL, tmp_path)
    continued = CheckpointStore(uri, signing_key=KEY.encode()).load_latest().manifest
    assert continued["events_seen"] == 480 and continued["positions"][f"{topic}/0"] == 240
    assert {name: continued["extra"].get(name) for name in ("topic_ids", "outputs", "outputs_ahead")} == \
        {name: recorded[name] for name in ("topic_ids", "outputs", "outputs_ahead")}

    recreate_topic(kafka_bootstrap, topic, [orjson.dumps(e) for e in EVENTS[:300]])
    with pytest.raises(DaemonError, match="the topic was recreated") as refused:
        run_daemon(consume_config(uri, kafka_bootstrap, topic), until_caught_up=True, progress=False)
    assert "\n" not in str(refused.value) and f"offset gap on {topic}[0]: the checkpoint resumes at offset 240" in str(refused.value)


def test_the_daemon_refuses_in_one_line_a_checkpoint_with_kafka_offsets_and_no_topic_ids(written, kafka_bootstrap, topics, tmp_path, monkeypatch):
    """A checkpoint written before writers carried the Kafka context: one line, never 'nothing to check'."""
    from online.checkpoints.store import CheckpointError

    monkeypatch.setenv("RIVERBEAM_CHECKPOINT_KEY", KEY)
    uri = copy_checkpoints(written["daemon"], tmp_path / "ckpt")
    store = CheckpointStore(uri, signing_key=KEY.encode())
    latest = store.load_latest()
    extra = {k: v for k, v in latest.manifest["extra"].items() if k != "topic_ids"}  # what replay and serve wrote until now
    store.save(latest.state, events_seen=240, events_learned=240, positions=latest.positions, metrics=latest.manifest["metrics"],
               model=latest.manifest["model"], config_hash=latest.manifest["config_hash"], extra={**extra, "source": "replay"})
    with pytest.raises(CheckpointError) as refused:
        run_daemon(consume_config(uri, kafka_bootstrap, topics["head"]), until_caught_up=True, progress=False)
    message = str(refused.value)
    assert "\n" not in message and "(written by replay) holds Kafka offsets but not extra.topic_ids" in message, message

# -- keyed checkpoints: one layout of units, every writer x every reader ----------------------
#
# Per-key models (events.key) split into units (online.checkpoints.units): the daemon writes one per
# partition, stream-learn one per key, replay and a learning serve one each. Each writer learns the
# head of the keyed events; each reader continues with the tail (daemon, replay, stream-learn) or
# predicts (predict, serve). Whatever the pair, every key's model equals River's model learned
# directly on that key's events: its predictions on probe events are the same.

USERS = ("ann", "bob", "cid")
KEYED_EVENTS = [{**x, "label": y, "user": USERS[i % 3]} for i, (x, y) in enumerate(itertools.islice(datasets.Phishing(), 150))]
KEYED_HEAD, KEYED_TAIL, KEYED_PROBE = KEYED_EVENTS[:60], KEYED_EVENTS[60:120], KEYED_EVENTS[120:]
KEYED_EVENTS_CONFIG = {"target": "label", "key": "user"}
KEYED_WRITERS = ("daemon", "replay", "stream-learn", "serve")
WRITER_UNITS = {  # the units each writer's head leaves (online.checkpoints.units)
    "daemon": lambda topic: [f"partition={topic}.0", f"partition={topic}.1"],
    "replay": lambda topic: ["replay"],
    "stream-learn": lambda topic: [f"key={user}" for user in USERS],
    "serve": lambda topic: ["serve"],
}
KEYED_READERS = ("daemon", "replay", "stream-learn", "predict", "serve")


def river_per_key(*parts: list[dict]) -> dict:
    """River's own pipelines, one per key, learned on that key's events in order."""
    from river import compose, linear_model, preprocessing

    models = {}
    for part in parts:
        for event in part:
            x = {k: v for k, v in event.items() if k not in ("label", "user")}
            model = models.setdefault(event["user"], compose.Pipeline(preprocessing.StandardScaler(), linear_model.LogisticRegression()))
            model.learn_one(x, event["label"])
    return models


def river_answers(models: dict, events: list[dict]) -> list[dict]:
    return [models[e["user"]].predict_proba_one({k: v for k, v in e.items() if k not in ("label", "user")}) for e in events]


def keyed_answers(learner: Learner, events: list[dict]) -> list[dict]:
    """The probabilities the checkpointed per-key models give (through `riverbeam predict`'s record)."""
    return [prediction_record(learner, dict(e), None)["probabilities"] for e in events]


def by_partition(events: list[dict]) -> list[int]:
    return [USERS.index(e["user"]) % 2 for e in events]  # ann, cid -> 0; bob -> 1: a key stays on its partition


@pytest.fixture(scope="module")
def keyed_topics(kafka_bootstrap):
    """The keyed head and tail, each on its own two-partition topic, a key always on the same partition."""
    return produced_topics(kafka_bootstrap, "keyed", {"head": KEYED_HEAD, "tail": KEYED_TAIL}, partitions=2, user_key=True)


def keyed_consume_config(uri: str, bootstrap: str, topic: str) -> ConsumeJobConfig:
    config = consume_config(uri, bootstrap, topic)
    return config.model_copy(update={"events": EventsConfig(**KEYED_EVENTS_CONFIG)})


def keyed_daemon_learns(uri: str, topic: str, bootstrap: str) -> None:
    summary = run_daemon(keyed_consume_config(uri, bootstrap, topic), until_caught_up=True, progress=False)
    assert summary["events_seen"] == 60


def keyed_replay_learns(uri: str, events: list[dict], folder: Path, name: str) -> None:
    job = parse_config({"model": MODEL, "events": KEYED_EVENTS_CONFIG, "checkpoint": {"uri": uri, "every_events": 25}}, ReplayJobConfig, environ={})
    path = jsonl(folder / f"{name}-{uuid.uuid4().hex[:6]}.jsonl", events)
    assert learn(job, expand_inputs([path]), ReplayOptions([path], checkpoint_uri=uri, progress=False)).events == 60


def keyed_stream_learn_learns(uri: str, events: list[dict]) -> None:
    """Stream-learn on the FnApiRunner (batch), one Beam key per model key."""
    beam = pytest.importorskip("apache_beam")
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipelines.stream_learn import LearnSettings, build_stream_learn

    config = keyed_consume_config(uri, "localhost:1", "unused")
    with beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"])) as pipeline:
        build_stream_learn(pipeline, config, LearnSettings(3600.0, 25), beam.Create([orjson.dumps(e) for e in events]))


def keyed_serve_learns(uri: str, events: list[dict]) -> None:
    from online.config import ServeJobConfig
    from online.serving.metrics import ServeMetrics
    from online.serving.reload import ModelSlot
    from online.serving.writer import LearningWriter

    config = parse_config({"checkpoint": {"uri": uri, "every_events": 25, "lease_seconds": 3}, "serve": {"learn": True},
                           "model": MODEL, "events": KEYED_EVENTS_CONFIG}, ServeJobConfig, environ={})
    writer = LearningWriter(config, ServeMetrics(), ModelSlot())
    assert writer.start()
    records = writer.learn(copy.deepcopy(events))
    assert not [r for r in records if "error" in r]
    writer.stop()


def keyed_learns(job: str, uri: str, part: str, topics: dict, bootstrap: str, folder: Path) -> None:
    events = KEYED_HEAD if part == "head" else KEYED_TAIL
    if job == "daemon":
        keyed_daemon_learns(uri, topics[part], bootstrap)
    elif job == "replay":
        keyed_replay_learns(uri, events, folder, f"events-{1 if part == 'head' else 2}-{part}")
    elif job == "stream-learn":
        keyed_stream_learn_learns(uri, events)
    else:
        keyed_serve_learns(uri, events)


@pytest.fixture(scope="module")
def keyed_written(tmp_path_factory, keyed_topics, kafka_bootstrap):
    """One signed keyed checkpoint per writer, each over the keyed head."""
    root = tmp_path_factory.mktemp("keyed")
    return signed_checkpoints(root, KEYED_WRITERS, lambda writer, uri: keyed_learns(writer, uri, "head", keyed_topics, kafka_bootstrap, root))


def served(uri: str) -> Learner:
    """What ``riverbeam serve`` (no configuration: the one the checkpoint recorded) loads and serves."""
    import functools

    from online.checkpoints.persistence import checkpoint_store, restore_model
    from online.serving.metrics import ServeMetrics
    from online.serving.reload import CheckpointWatcher, ModelSlot

    slot = ModelSlot()
    watcher = CheckpointWatcher(checkpoint_store(uri), slot, ServeMetrics(), restore=functools.partial(restore_model, name=None))
    assert watcher.load_initial() is not None, f"serve found no checkpoint at {uri}"
    return slot.current.learner


@pytest.mark.parametrize("reader", KEYED_READERS)
@pytest.mark.parametrize("writer", KEYED_WRITERS)
def test_every_keyed_writer_resumes_in_every_reader(writer, reader, keyed_written, keyed_topics, kafka_bootstrap, tmp_path, monkeypatch, capsys):
    from online.checkpoints.persistence import checkpoint_store
    from online.checkpoints.units import units_of
    from online.serving.predict import latest_model

    monkeypatch.setenv("RIVERBEAM_CHECKPOINT_KEY", KEY)
    uri = str(tmp_path / "ckpt")
    shutil.copytree(keyed_written[writer], uri, ignore=shutil.ignore_patterns("lease*", ".riverbeam-*"))
    assert units_of(uri) == WRITER_UNITS[writer](keyed_topics["head"])  # the one keyed layout

    if reader == "predict":
        from riverbeam.cli import main

        assert main(["predict", "--checkpoint", uri, "--input", jsonl(tmp_path / "probe.jsonl", KEYED_PROBE)]) == 0
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        expected = json.loads(json.dumps(keyed_answers_of(river_per_key(KEYED_HEAD))))
        assert [line["probabilities"] for line in lines] == expected  # the head's per-key models, nothing learned
        return
    if reader == "serve":
        assert keyed_answers(served(uri), KEYED_PROBE) == keyed_answers_of(river_per_key(KEYED_HEAD))
        return

    keyed_learns(reader, uri, "tail", keyed_topics, kafka_bootstrap, Path(keyed_written["folder"]))
    found = latest_model(checkpoint_store(uri))  # every unit, merged: what predict and serve read
    assert found is not None
    assert keyed_answers(found[1], KEYED_PROBE) == keyed_answers_of(river_per_key(KEYED_HEAD, KEYED_TAIL))


def keyed_answers_of(models: dict) -> list[dict]:
    """River's per-key probabilities as `prediction_record` writes them."""
    from online.learning.learner import probabilities_record

    return [probabilities_record(p) for p in river_answers(models, KEYED_PROBE)]
