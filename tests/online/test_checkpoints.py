"""Checkpoints on a local directory, the GCS emulator and the S3 server: the same tests on all three."""

from __future__ import annotations

import json

import pytest

from online.checkpoints import CheckpointError, CheckpointStore, FencingError, IntegrityError
from core.storage import open_store


@pytest.fixture(params=["local", "gcs", "s3"])
def uri(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "ckpt")
    return request.getfixturevalue(f"{request.param}_prefix")


def save(store, n, state=None):
    return store.save(state or b"state-%d" % n, events_seen=n, events_learned=n, positions={"events/0": n}, metrics={"Accuracy": n / 10})


def test_save_and_load_latest(uri):
    store = CheckpointStore(uri)
    assert store.load_latest() is None
    manifest = save(store, 5)
    loaded = CheckpointStore(uri).load_latest()
    assert loaded.state == b"state-5" and loaded.id == manifest["id"]
    assert loaded.manifest["positions"] == {"events/0": 5} and loaded.manifest["metrics"] == {"Accuracy": 0.5}
    assert set(loaded.manifest["versions"]) == {"riverbeam", "river", "python"}


def test_retention_keeps_last_n(uri):
    store = CheckpointStore(uri, keep=3)
    for n in range(6):
        save(store, n)
    assert [m["events_seen"] for m in store.list()] == [5, 4, 3]
    assert len(store.ids()) == 3


def test_corrupt_latest_falls_back_to_previous(uri, caplog):
    store = CheckpointStore(uri)
    save(store, 1)
    latest = save(store, 2)
    open_store(uri).write(f"checkpoints/{latest['id']}/state.bin", b"state-X")  # same size, other bytes
    loaded = CheckpointStore(uri).load_latest()
    assert loaded.state == b"state-1"
    assert "corrupt (SHA-256 mismatch)" in caplog.text and "fell back" in caplog.text


def test_truncated_blob_falls_back(uri):
    store = CheckpointStore(uri)
    save(store, 1)
    latest = save(store, 2, state=b"x" * 1000)
    open_store(uri).write(f"checkpoints/{latest['id']}/state.bin", b"x" * 10)
    with pytest.raises(IntegrityError, match="truncated"):
        store.load(latest["id"])
    assert CheckpointStore(uri).load_latest().state == b"state-1"


def test_missing_blob_and_no_good_checkpoint_is_an_error(uri):
    store = CheckpointStore(uri)
    latest = save(store, 1)
    open_store(uri).delete(f"checkpoints/{latest['id']}/state.bin")
    with pytest.raises(CheckpointError, match="none of the checkpoints"):
        CheckpointStore(uri).load_latest()


def test_signed_checkpoints_refuse_unsigned_and_tampered(uri):
    unsigned = CheckpointStore(uri)
    save(unsigned, 1)
    signed = CheckpointStore(uri, signing_key=b"secret")
    with pytest.raises(CheckpointError):
        signed.load_latest()  # the only checkpoint is unsigned
    with pytest.raises(IntegrityError, match="not signed"):
        signed.load(unsigned.list()[0]["id"])
    good = save(signed, 2)
    assert CheckpointStore(uri, signing_key=b"secret").load_latest().state == b"state-2"
    # tamper: change the blob and recompute the plain checksum, but not the HMAC
    import hashlib

    blob = b"state-3"
    store = open_store(uri)
    manifest = json.loads(store.read(f"checkpoints/{good['id']}/manifest.json"))
    manifest["state"]["sha256"] = hashlib.sha256(blob).hexdigest()
    store.write(f"checkpoints/{good['id']}/state.bin", blob)
    store.write(f"checkpoints/{good['id']}/manifest.json", json.dumps(manifest).encode())
    with pytest.raises(IntegrityError, match="wrong signature"):
        CheckpointStore(uri, signing_key=b"secret").load(good["id"])
    with pytest.raises(IntegrityError, match="wrong signature"):
        CheckpointStore(uri, signing_key=b"other").load(good["id"])


def test_two_concurrent_writers_one_is_fenced(uri):
    first, second = CheckpointStore(uri), CheckpointStore(uri)
    save(first, 1)
    assert first.load_latest().state == b"state-1" and second.load_latest().state == b"state-1"
    save(second, 2)  # the second writer moves LATEST
    with pytest.raises(FencingError, match="another writer"):
        save(first, 3)  # the first writer's view is stale
    assert CheckpointStore(uri).load_latest().state == b"state-2"
    assert len(CheckpointStore(uri).ids()) == 2  # the loser's orphan was removed
    save(second, 4)  # the winner goes on
    assert CheckpointStore(uri).load_latest().state == b"state-4"


def test_first_writers_race_on_empty_store(uri):
    first, second = CheckpointStore(uri), CheckpointStore(uri)
    assert first.load_latest() is None and second.load_latest() is None
    save(first, 1)
    with pytest.raises(FencingError):
        save(second, 1)


def test_two_writers_racing_on_one_pointer_one_is_fenced(uri):
    """Both writers read the same LATEST, then save at the same moment: exactly one wins."""
    import threading

    save(CheckpointStore(uri), 0)
    writers = [CheckpointStore(uri) for _ in range(2)]
    for writer in writers:
        writer.load_latest()
    start, outcomes = threading.Barrier(2), {}

    def race(i):
        start.wait()
        try:
            outcomes[i] = save(writers[i], 10 + i)["id"]
        except FencingError:
            outcomes[i] = "fenced"

    threads = [threading.Thread(target=race, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes.values()).count("fenced") == 1
    winner = next(v for v in outcomes.values() if v != "fenced")
    assert CheckpointStore(uri).load_latest().id == winner


# ---------------------------------------------------------------------------------------------
# Signing: refused without fall-back, one line naming the URI; unverified reads warn once
# ---------------------------------------------------------------------------------------------


def test_an_unsigned_latest_is_refused_not_skipped_for_an_older_signed_one(uri):
    from online.checkpoints import SignatureError

    signed = CheckpointStore(uri, signing_key=b"secret")
    save(signed, 1)
    save(CheckpointStore(uri), 2)  # an intruder (or a misconfigured writer) moves LATEST to an unsigned blob
    with pytest.raises(SignatureError) as refused:
        CheckpointStore(uri, signing_key=b"secret").load_latest()
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"{CheckpointStore(uri).uri}: checkpoint ") and "is not signed" in message
    save(CheckpointStore(uri, signing_key=b"other"), 3)
    with pytest.raises(SignatureError, match="wrong signature"):
        CheckpointStore(uri, signing_key=b"secret").load_latest()


def test_reading_without_a_key_warns_once_per_process(tmp_path, caplog, monkeypatch):
    import online.checkpoints as checkpoints

    monkeypatch.setattr(checkpoints, "_warned_unverified", False)
    store = CheckpointStore(str(tmp_path / "ckpt"))
    save(store, 1)
    with caplog.at_level("WARNING", logger="online.checkpoints"):
        store.load_latest()
        CheckpointStore(str(tmp_path / "ckpt")).load_latest()
    warnings = [r.getMessage() for r in caplog.records if "not verified" in r.getMessage()]
    assert len(warnings) == 1 and str(tmp_path / "ckpt") in warnings[0] and "pickle" in warnings[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="online.checkpoints"):
        CheckpointStore(str(tmp_path / "ckpt"), signing_key=b"k").list()  # manifests only: nothing unpickled, no warning
    assert not caplog.records


def test_stores_take_the_key_from_the_configured_variable_or_the_default(tmp_path, monkeypatch):
    from online.config import CheckpointConfig
    from online.persistence import checkpoint_store, open_checkpoint_store

    monkeypatch.setenv("RIVERBEAM_CHECKPOINT_KEY", "default-key")
    monkeypatch.setenv("TEAM_KEY", "team-key")
    monkeypatch.delenv("UNSET_KEY", raising=False)
    where = str(tmp_path / "ckpt")
    assert open_checkpoint_store(CheckpointConfig(uri=where)).signing_key == b"default-key"
    assert open_checkpoint_store(CheckpointConfig(uri=where, signing_key_env="TEAM_KEY", keep=4)).signing_key == b"team-key"
    assert open_checkpoint_store(CheckpointConfig(uri=where, keep=4), uri=f"{where}/x").uri == f"{where}/x"
    assert open_checkpoint_store(CheckpointConfig(uri=where, signing_key_env="UNSET_KEY")).signing_key is None
    assert checkpoint_store(where).signing_key == b"default-key"
    assert checkpoint_store(where, "TEAM_KEY").signing_key == b"team-key"
    monkeypatch.setenv("TEAM_KEY", "")  # empty is unset
    assert checkpoint_store(where, "TEAM_KEY").signing_key is None


# ---------------------------------------------------------------------------------------------
# The configuration hash: what changes the model, and only that
# ---------------------------------------------------------------------------------------------


def spec_for(**events):
    from online.config import EventsConfig, ModelConfig
    from online.persistence import LearnerSpec

    model = ModelConfig(pipeline=[{"preprocessing.StandardScaler": {}}, {"linear_model.LogisticRegression": {}}])
    return LearnerSpec(model, EventsConfig(target="label", **events))


def fitted_output(folder, mean: float):
    from transforms.fitted import FORMAT

    folder.mkdir(parents=True)
    document = {"format": FORMAT, "label": None, "features": [{"name": "x", "type": "float", "transform": "z_score", "mean": mean, "var": 1.0}]}
    (folder / "fitted_transforms.json").write_text(json.dumps(document))
    return str(folder)


def test_the_hash_covers_the_fitted_transform_content_not_its_location(tmp_path):
    from core.errors import ConfigError
    from online.config import FeaturesConfig
    from online.persistence import LearnerSpec, save_learner

    base = spec_for()
    here = LearnerSpec.load(base.model, base.events, FeaturesConfig(transform_output=fitted_output(tmp_path / "a", 0.5)))
    moved = LearnerSpec.load(base.model, base.events, FeaturesConfig(transform_output=fitted_output(tmp_path / "b", 0.5)))
    refit = LearnerSpec.load(base.model, base.events, FeaturesConfig(transform_output=fitted_output(tmp_path / "c", 0.7)))
    assert here.hash == moved.hash != refit.hash != base.hash
    learner = here.new_learner()
    learner.process({"x": 1.0, "label": True})
    store = CheckpointStore(str(tmp_path / "ckpt"))
    save_learner(store, learner, positions={}, features=here.features)
    checkpoint = store.load_latest()
    assert moved.restore(checkpoint).report() == learner.report()
    with pytest.raises(ConfigError, match="fitted feature transform differs"):
        refit.restore(checkpoint)
    with pytest.raises(ConfigError, match="fitted feature transform differs"):
        base.restore(checkpoint)  # the transform left out
    with pytest.raises(ConfigError, match="the configuration differs"):
        LearnerSpec(spec_for(exclude=["id"]).model, spec_for(exclude=["id"]).events, here.features, here.transform).restore(checkpoint)
    recorded = LearnerSpec.from_checkpoint(checkpoint)  # predict and serve: the transform comes back with the model
    assert recorded.hash == here.hash and recorded.features.transform_output == here.features.transform_output


def test_a_setting_at_its_default_does_not_change_the_hash_and_old_hashes_are_accepted(tmp_path):
    from online.checkpoints import Checkpoint, config_hash

    implicit, explicit = spec_for(), spec_for(exclude=[], categorical=[])
    assert implicit.hash == explicit.hash != spec_for(exclude=["id"]).hash
    learner = implicit.new_learner()
    legacy = {"id": "x", "config_hash": config_hash(implicit.model, implicit.events)}  # before this scheme
    assert implicit.restore(Checkpoint(legacy, learner.snapshot())).report() == learner.report()
    stream_legacy = {"id": "y", "config_hash": config_hash(implicit.model, implicit.events, implicit.features)}
    assert implicit.restore(Checkpoint(stream_legacy, learner.snapshot())).report() == learner.report()


# ---------------------------------------------------------------------------------------------
# The cadence and the Checkpointer: one object, used by the daemon, replay and stream-learn
# ---------------------------------------------------------------------------------------------


def test_cadence_is_due_by_events_or_by_seconds_with_at_least_one_event():
    from online.config import CheckpointConfig
    from online.persistence import Cadence

    now = [100.0]
    cadence = Cadence(every_events=5, every_seconds=2.0, clock=lambda: now[0])
    now[0] += 10
    assert not cadence.due()  # time alone: nothing to write
    cadence.add(1)
    assert cadence.due()
    cadence.reset()
    cadence.add(4)
    assert not cadence.due()
    cadence.add(1)
    assert cadence.due()
    configured = Cadence.from_config(CheckpointConfig(uri="x", every_events=7, every_seconds=3))
    assert (configured.every_events, configured.every_seconds) == (7, 3)
    assert Cadence.from_config(CheckpointConfig(uri="x", every_events=7), every_events=2).every_events == 2
    assert (Cadence.from_config(None).every_events, Cadence.from_config(None).every_seconds) == (10_000, 60.0)
    with pytest.raises(ValueError):
        Cadence(every_events=0)


class SlowStore(CheckpointStore):
    """A store whose saves wait for `release`: an upload that takes its time."""

    def __init__(self, uri):
        import threading

        super().__init__(uri)
        self.release = threading.Event()
        self.started = threading.Event()

    def save(self, state, **fields):
        self.started.set()
        assert self.release.wait(10)
        return super().save(state, **fields)


def test_checkpointer_one_upload_in_flight_and_offsets_only_once_durable(tmp_path):
    import concurrent.futures
    import threading

    from online.persistence import Cadence, Checkpointer

    spec = spec_for()
    learner = spec.new_learner()
    store = SlowStore(str(tmp_path / "ckpt"))
    committed = []
    uploader = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    checkpointer = Checkpointer(store, learner, spec, Cadence(every_events=2), uploader=uploader,
                                on_durable=lambda durable: committed.append(durable.positions))
    learner.process({"x": 1.0, "label": True})
    checkpointer.add(1)
    assert not checkpointer.due()
    learner.process({"x": 2.0, "label": False})
    checkpointer.add(1)
    assert checkpointer.due()
    checkpointer.checkpoint({"events/0": 2})
    assert store.started.wait(5) and not checkpointer.due()
    assert checkpointer.collect() is None and committed == []  # not durable yet: nothing committed
    learner.process({"x": 3.0, "label": True})
    checkpointer.add(1)
    second = threading.Thread(target=lambda: checkpointer.checkpoint({"events/0": 3}, wait=True))
    second.start()
    second.join(0.3)
    assert second.is_alive() and committed == []  # the next checkpoint waits for the one in flight
    store.release.set()
    second.join(10)
    assert committed == [{"events/0": 2}, {"events/0": 3}]  # in order, each after its upload returned
    assert [m["events_seen"] for m in CheckpointStore(store.uri).list()] == [3, 2]
    assert checkpointer.checkpoint({"events/0": 3}, wait=True) is None and checkpointer.written == 2  # nothing new
    uploader.shutdown()


def test_checkpointer_keeps_other_jobs_positions_and_surfaces_upload_errors(tmp_path):
    import concurrent.futures

    from online.persistence import Cadence, Checkpointer, resume

    spec = spec_for()
    writer = CheckpointStore(str(tmp_path / "ckpt"))
    learner = spec.new_learner()
    Checkpointer(writer, learner, spec).checkpoint({"replay": {"file": "a.jsonl", "line": 9}}, wait=True)
    store = CheckpointStore(str(tmp_path / "ckpt"))
    learner, restored = resume(store, spec)
    committed = []
    uploader = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    checkpointer = Checkpointer(store, learner, spec, Cadence(), uploader=uploader, restored=restored, on_durable=committed.append)
    assert not checkpointer.has_news({})
    learner.process({"x": 1.0, "label": True})
    checkpointer.add(1)
    checkpointer.checkpoint({"events/0": 1}, wait=True)
    assert store.load_latest().positions == {"replay": {"file": "a.jsonl", "line": 9}, "events/0": 1}
    assert committed[0].positions == {"events/0": 1}  # only the writer's own positions are committed
    Checkpointer(CheckpointStore(store.uri), learner, spec).checkpoint({"events/0": 1}, wait=True)  # another writer moves LATEST
    learner.process({"x": 2.0, "label": True})
    checkpointer.add(1)
    checkpointer.checkpoint({"events/0": 2})
    with pytest.raises(FencingError):
        checkpointer.collect(wait=True)
    assert len(committed) == 1  # a failed upload never commits
    uploader.shutdown()


def test_a_failed_upload_is_written_again_at_the_next_checkpoint(tmp_path):
    from core.storage import StorageError
    from online.persistence import Cadence, Checkpointer

    class FailingOnce(CheckpointStore):
        failed = False

        def save(self, state, **fields):
            if not self.failed:
                self.failed = True
                raise StorageError("storage unreachable")
            return super().save(state, **fields)

    spec = spec_for()
    learner = spec.new_learner()
    learner.process({"x": 1.0, "label": True})
    checkpointer = Checkpointer(FailingOnce(str(tmp_path / "ckpt")), learner, spec, Cadence(every_events=1))
    checkpointer.add(1)
    with pytest.raises(StorageError):
        checkpointer.checkpoint({"events/0": 1})
    assert checkpointer.has_news({"events/0": 1})  # nothing new learned, but the state is not in storage yet
    assert checkpointer.checkpoint({"events/0": 1}).manifest["events_seen"] == 1
    assert not checkpointer.has_news({"events/0": 1})


def test_recorded_configuration_leaves_defaults_out_so_other_versions_read_it(tmp_path):
    """A setting added in a later version (left at its default) must not make older readers refuse the checkpoint."""
    from online.config import EventsConfig, ModelConfig
    from online.learner import Learner
    from online.persistence import checkpoint_store, restore_learner, save_learner

    learner = Learner(ModelConfig(pipeline=[{"linear_model.LinearRegression": {}}], metrics=["MAE"]), EventsConfig(target="y"))
    learner.process({"x": 1.0, "y": 2.0})
    store = checkpoint_store(str(tmp_path / "c"))
    manifest = save_learner(store, learner, positions={"p": 1})
    recorded = manifest["extra"]["learning"]
    assert recorded["model"] == {"pipeline": [{"linear_model.LinearRegression": {}}], "metrics": ["MAE"]}
    assert recorded["events"] == {"target": "y"}
    assert restore_learner(store.load_latest()).report()["events_learned"] == 1
