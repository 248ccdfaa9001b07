"""Checkpoints on a local directory, the GCS emulator and the S3 server: the same tests on all three."""

from __future__ import annotations

import json
import pickle

import pytest

from online.checkpoints.store import CheckpointError, CheckpointStore, FencingError, IntegrityError, SignatureError
from core.storage import open_store


@pytest.fixture(params=["local", "gcs", "s3"])
def uri(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "ckpt")
    return request.getfixturevalue(f"{request.param}_prefix")


def save(store, n, state=None):
    return store.save(state or b"state-%d" % n, events_seen=n, events_learned=n, positions={"events/0": n}, metrics={"Accuracy": n / 10})


def intruder(uri, key=None):
    """A writer that does not check the pointer it replaces (an intruder, or a riverbeam that predates the checks)."""
    store = CheckpointStore(uri, signing_key=key)
    store._check_pointer = lambda pointer, verify=True: None
    return store


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
    good = save(intruder(uri, b"secret"), 2)  # a signed writer over an unsigned store (a signed one refuses the unsigned pointer)
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



def test_a_fenced_writer_keeps_the_checkpoint_its_lost_pointer_named_if_latest_names_it(uri, monkeypatch):
    """A compare-and-swap told lost may still have been seen (a local writer overtaken right after its link:
    core.storage.local.LocalStore._claim), and the next owner restored from it: the fenced writer keeps that
    checkpoint instead of deleting it as an orphan."""
    from core.storage import PreconditionFailed

    first = CheckpointStore(uri)
    save(first, 1)
    landed_but_lost = first.store.write_if_generation

    def write_then_lose(name, data, generation):
        landed_but_lost(name, data, generation)
        raise PreconditionFailed(f"{name}: overtaken")

    monkeypatch.setattr(first.store, "write_if_generation", write_then_lose)
    with pytest.raises(FencingError):
        save(first, 2)
    assert CheckpointStore(uri).load_latest().state == b"state-2"  # what the next owner restores is all there
    assert len(CheckpointStore(uri).ids()) == 2

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
    from online.checkpoints.store import SignatureError

    signed = CheckpointStore(uri, signing_key=b"secret")
    save(signed, 1)
    save(intruder(uri), 2)  # an intruder (or a misconfigured writer) moves LATEST to an unsigned blob
    with pytest.raises(SignatureError) as refused:
        CheckpointStore(uri, signing_key=b"secret").load_latest()
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"{CheckpointStore(uri).uri}: checkpoint ") and "is not signed" in message
    save(intruder(uri, b"other"), 3)
    with pytest.raises(SignatureError, match="wrong signature"):
        CheckpointStore(uri, signing_key=b"secret").load_latest()


def test_reading_without_a_key_warns_once_per_process(tmp_path, caplog, monkeypatch):
    import online.checkpoints.store as checkpoints

    monkeypatch.setattr(checkpoints, "_warned_unverified", False)
    store = CheckpointStore(str(tmp_path / "ckpt"))
    save(store, 1)
    with caplog.at_level("WARNING", logger="online.checkpoints.store"):
        store.load_latest()
        CheckpointStore(str(tmp_path / "ckpt")).load_latest()
    warnings = [r.getMessage() for r in caplog.records if "not verified" in r.getMessage()]
    assert len(warnings) == 1 and str(tmp_path / "ckpt") in warnings[0] and "pickle" in warnings[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="online.checkpoints.store"):
        CheckpointStore(str(tmp_path / "ckpt"), signing_key=b"k").list()  # manifests only: nothing unpickled, no warning
    assert not caplog.records


def test_stores_take_the_key_from_the_configured_variable_or_the_default(tmp_path, monkeypatch):
    from online.config import CheckpointConfig
    from online.checkpoints.persistence import checkpoint_store, open_checkpoint_store

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
    from online.checkpoints.persistence import LearnerSpec

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
    from online.checkpoints.persistence import LearnerSpec, save_learner

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
    from online.checkpoints.store import Checkpoint, config_hash

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
    from online.checkpoints.persistence import Cadence

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

    from online.checkpoints.persistence import Cadence, Checkpointer

    spec = spec_for()
    learner = spec.new_learner()
    store = SlowStore(str(tmp_path / "ckpt"))
    uploader = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    checkpointer = Checkpointer(store, learner, spec, Cadence(every_events=2), uploader=uploader)

    def committed():  # what a unit commits (`LearningUnit._settle`): checkpoints durable so far, the latest one's own positions
        return checkpointer.written, checkpointer.last_durable.positions if checkpointer.last_durable else None

    learner.process({"x": 1.0, "label": True})
    checkpointer.add(1)
    assert not checkpointer.due()
    learner.process({"x": 2.0, "label": False})
    checkpointer.add(1)
    assert checkpointer.due()
    checkpointer.checkpoint({"events/0": 2})
    assert store.started.wait(5) and not checkpointer.due()
    assert checkpointer.collect() is None and committed() == (0, None)  # not durable yet: nothing committed
    learner.process({"x": 3.0, "label": True})
    checkpointer.add(1)
    second = threading.Thread(target=lambda: checkpointer.checkpoint({"events/0": 3}, wait=True))
    second.start()
    second.join(0.3)
    assert second.is_alive() and committed() == (0, None)  # the next checkpoint waits for the one in flight
    store.release.set()
    second.join(10)
    assert committed() == (2, {"events/0": 3})  # each after its upload returned, in order (the store's list below)
    assert [m["events_seen"] for m in CheckpointStore(store.uri).list()] == [3, 2]
    assert checkpointer.checkpoint({"events/0": 3}, wait=True) is None and checkpointer.written == 2  # nothing new
    uploader.shutdown()


def test_checkpointer_keeps_other_jobs_positions_and_surfaces_upload_errors(tmp_path):
    import concurrent.futures

    from online.checkpoints.persistence import Cadence, Checkpointer, resume

    spec = spec_for()
    writer = CheckpointStore(str(tmp_path / "ckpt"))
    learner = spec.new_learner()
    Checkpointer(writer, learner, spec).checkpoint({"replay": {"file": "a.jsonl", "line": 9}}, wait=True)
    store = CheckpointStore(str(tmp_path / "ckpt"))
    learner, restored = resume(store, spec)
    uploader = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    checkpointer = Checkpointer(store, learner, spec, Cadence(), uploader=uploader, restored=restored)
    assert not checkpointer.has_news({})
    learner.process({"x": 1.0, "label": True})
    checkpointer.add(1)
    checkpointer.checkpoint({"events/0": 1}, wait=True)
    assert store.load_latest().positions == {"replay": {"file": "a.jsonl", "line": 9}, "events/0": 1}
    assert checkpointer.last_durable.positions == {"events/0": 1}  # only the writer's own positions are committed
    Checkpointer(CheckpointStore(store.uri), learner, spec).checkpoint({"events/0": 1}, wait=True)  # another writer moves LATEST
    learner.process({"x": 2.0, "label": True})
    checkpointer.add(1)
    checkpointer.checkpoint({"events/0": 2})
    with pytest.raises(FencingError):
        checkpointer.collect(wait=True)
    assert checkpointer.written == 1 and checkpointer.last_durable.positions == {"events/0": 1}  # a failed upload never commits
    uploader.shutdown()


def test_a_failed_upload_is_written_again_at_the_next_checkpoint(tmp_path):
    from core.storage import StorageError
    from online.checkpoints.persistence import Cadence, Checkpointer

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
    from online.learning.learner import Learner
    from online.checkpoints.persistence import checkpoint_store, restore_learner, save_learner

    learner = Learner(ModelConfig(pipeline=[{"linear_model.LinearRegression": {}}], metrics=["MAE"]), EventsConfig(target="y"))
    learner.process({"x": 1.0, "y": 2.0})
    store = checkpoint_store(str(tmp_path / "c"))
    manifest = save_learner(store, learner, positions={"p": 1})
    recorded = manifest["extra"]["learning"]
    assert recorded["model"] == {"pipeline": [{"linear_model.LinearRegression": {}}], "metrics": ["MAE"]}
    assert recorded["events"] == {"target": "y"}
    assert restore_learner(store.load_latest()).report()["events_learned"] == 1


# ---------------------------------------------------------------------------------------------
# Signing covers the whole manifest, binds id and sequence, and the LATEST pointer (issue 26.1)
# ---------------------------------------------------------------------------------------------

KEY = b"tamper-test-key"


def signed_checkpoint(uri) -> dict:
    """A signed checkpoint holding every kind of field a reader acts on: Kafka positions and their context, a part."""
    store = CheckpointStore(uri, signing_key=KEY)
    save(store, 1)
    part = store.write_part(b"keyed models", records=3)
    return store.save(b"state-2", events_seen=2000, events_learned=1990, positions={"events/0": 2000, "replay": {"file": "a.jsonl", "line": 7}},
                      metrics={"Accuracy": 0.9}, model="LogisticRegression", config_hash="abc123",
                      extra={"topic_ids": {"events": "Aq-1"}, "outputs": {"events.dlq/0": 12}, "outputs_ahead": {"events.dlq": {"events/0": 2004}},
                             "learning": {"model": {"pipeline": [{"linear_model.LogisticRegression": {}}]}}},
                      parts=[part])


def leaves(document, path=()):
    """(path, value) of every leaf of a JSON document (an empty dict or list is a leaf too)."""
    if isinstance(document, dict) and document:
        for key, value in document.items():
            yield from leaves(value, path + (key,))
    elif isinstance(document, list) and document:
        for index, value in enumerate(document):
            yield from leaves(value, path + (index,))
    else:
        yield path, document


def changed(value):
    if isinstance(value, bool) or value is None:
        return not value
    if isinstance(value, (int, float)):
        return value - 1 if value else 1
    if isinstance(value, str):
        return value[:-1] + ("0" if value[-1:] != "0" else "1") if value else "x"
    return {"x": 1} if isinstance(value, dict) else [1]


def test_every_field_of_a_signed_manifest_is_covered(tmp_path):
    uri = str(tmp_path / "ckpt")
    manifest = signed_checkpoint(uri)
    path = f"checkpoints/{manifest['id']}/manifest.json"
    original = open_store(uri).read(path)
    fields = [p for p, _ in leaves(manifest) if p[0] != "signature"]
    assert len(fields) >= 25 and {p[0] for p in fields} >= {"id", "sequence", "positions", "extra", "parts", "config_hash", "state", "events_seen"}
    for field in fields:
        tampered = json.loads(original)
        target = tampered
        for key in field[:-1]:
            target = target[key]
        target[field[-1]] = changed(target[field[-1]])
        open_store(uri).write(path, json.dumps(tampered).encode())
        with pytest.raises(IntegrityError) as refused:
            CheckpointStore(uri, signing_key=KEY).load_latest()  # never a fall-back to the older checkpoint
        assert "wrong signature" in str(refused.value) and "\n" not in str(refused.value), field
    for name in [p[0] for p in fields]:  # and a field removed
        tampered = json.loads(original)
        del tampered[name]
        open_store(uri).write(path, json.dumps(tampered).encode())
        with pytest.raises(IntegrityError, match="wrong signature"):
            CheckpointStore(uri, signing_key=KEY).load_latest()
    open_store(uri).write(path, original)
    assert CheckpointStore(uri, signing_key=KEY).load_latest().manifest == manifest


def test_an_older_signed_checkpoint_copied_under_a_new_id_is_refused(tmp_path):
    uri = str(tmp_path / "ckpt")
    store = CheckpointStore(uri, signing_key=KEY)
    old = save(store, 1)
    newest = [save(store, n) for n in (2, 3)][-1]
    raw = open_store(uri)
    forged = "000000000004" + newest["id"][12:]  # the next place in the sequence
    for name in ("manifest.json", "state.bin"):
        raw.write(f"checkpoints/{forged}/{name}", raw.read(f"checkpoints/{old['id']}/{name}"))
    with pytest.raises(SignatureError, match=f"checkpoint {forged} holds the manifest of checkpoint '{old['id']}'"):
        CheckpointStore(uri, signing_key=KEY).load(forged)
    pointer = json.loads(raw.read("LATEST"))
    raw.write("LATEST", json.dumps({**pointer, "id": forged, "sequence": 4, "history": [forged] + pointer["history"]}).encode())
    with pytest.raises(SignatureError, match="the LATEST pointer has a wrong signature"):
        CheckpointStore(uri, signing_key=KEY).load_latest()
    unsigned = {"id": forged, "sequence": 4, "history": [forged] + pointer["history"]}
    raw.write("LATEST", json.dumps(unsigned).encode())
    with pytest.raises(SignatureError, match=f"checkpoint {forged} holds the manifest of checkpoint"):
        CheckpointStore(uri, signing_key=KEY).load_latest()


def test_a_latest_pointer_moved_back_is_refused(tmp_path):
    uri = str(tmp_path / "ckpt")
    store = CheckpointStore(uri, signing_key=KEY)
    raw = open_store(uri)
    pointers = {}
    for n in range(1, 5):
        save(store, n)
        pointers[n] = raw.read("LATEST")  # what someone who can read the bucket keeps
    reader = CheckpointStore(uri, signing_key=KEY)
    assert reader.load_latest().state == b"state-4"
    raw.write("LATEST", pointers[2])  # a signed pointer, replayed: two checkpoints back
    with pytest.raises(SignatureError, match="LATEST was rolled back") as refused:
        CheckpointStore(uri, signing_key=KEY).load_latest()  # a fresh reader: a signed checkpoint two past it is present
    assert "\n" not in str(refused.value)
    raw.write("LATEST", pointers[3])  # one step back: a fresh reader cannot tell it from a writer killed before moving LATEST ...
    assert CheckpointStore(uri, signing_key=KEY).load_latest().state == b"state-3"
    with pytest.raises(SignatureError, match="LATEST moved back from sequence 4 to 3"):
        reader.latest_id()  # ... a reader that saw the newer one can
    with pytest.raises(SignatureError, match="LATEST moved back"):
        reader.load_latest()


def test_a_signed_store_read_without_the_key_fails_closed(tmp_path, monkeypatch, capsys):
    from online.checkpoints.persistence import checkpoint_store
    from riverbeam.cli import main

    uri = str(tmp_path / "ckpt")
    save(CheckpointStore(uri, signing_key=KEY), 1)
    monkeypatch.delenv("RIVERBEAM_CHECKPOINT_KEY", raising=False)
    for read in (lambda: checkpoint_store(uri).load_latest(), lambda: CheckpointStore(uri).load(CheckpointStore(uri).ids()[0])):
        with pytest.raises(SignatureError, match="is signed but no signing key is set") as refused:
            read()
        assert "\n" not in str(refused.value) and "refusing to load it unverified" in str(refused.value)
    events = tmp_path / "events.jsonl"
    events.write_text('{"x": 1}\n')
    assert main(["predict", "--checkpoint", uri, "--input", str(events)]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "is signed but no signing key is set" in err and "Traceback" not in err


def test_a_checkpoint_signed_before_manifest_signing_is_refused_in_one_line(tmp_path):
    """Format 1 signed only the state blob: its manifest could be edited undetected, so it is refused (not trusted)."""
    uri = str(tmp_path / "ckpt")
    manifest = save(CheckpointStore(uri, signing_key=KEY), 1)
    raw = open_store(uri)
    old = {k: v for k, v in manifest.items() if k != "signature"} | {"format": 1}
    raw.write(f"checkpoints/{manifest['id']}/manifest.json", json.dumps(old).encode())
    raw.write("LATEST", json.dumps({"id": manifest["id"], "sequence": 1, "history": [manifest["id"]]}).encode())
    for read in (CheckpointStore(uri, signing_key=KEY).load_latest, lambda: CheckpointStore(uri, signing_key=KEY).load(manifest["id"])):
        with pytest.raises(SignatureError) as refused:
            read()
        message = str(refused.value)
        assert "\n" not in message and f"checkpoint {manifest['id']} predates manifest signing" in message, message
    with pytest.raises(SignatureError, match="is signed but no signing key is set"):
        CheckpointStore(uri).load_latest()  # without a key either: a signed store is never loaded unverified


# ---------------------------------------------------------------------------------------------
# Ids that are not plain checkpoint ids (issue 26.4)
# ---------------------------------------------------------------------------------------------


def test_a_latest_naming_a_path_outside_the_store_is_refused(tmp_path, capsys):
    from riverbeam.cli import main

    uri = str(tmp_path / "store" / "ckpt")
    save(CheckpointStore(uri), 1)
    outside = save(CheckpointStore(str(tmp_path / "outside-store")), 7)
    escape = "../../outside/ck1"  # checkpoints/../../outside/ck1 is tmp/store/outside/ck1: outside the store
    raw, source = open_store(str(tmp_path / "store")), open_store(str(tmp_path / "outside-store"))
    raw.write("outside/ck1/manifest.json", json.dumps({**outside, "id": escape}).encode())
    raw.write("outside/ck1/state.bin", source.read(f"checkpoints/{outside['id']}/state.bin"))
    open_store(uri).write("LATEST", json.dumps({"id": escape, "sequence": 7, "history": [escape]}).encode())
    for read in (CheckpointStore(uri).load_latest, CheckpointStore(uri).list, lambda: CheckpointStore(uri).load(escape)):
        with pytest.raises(IntegrityError, match=r"'\.\./\.\./outside/ck1', which is not a checkpoint id"):
            read()
    events = tmp_path / "events.jsonl"
    events.write_text('{"x": 1}\n')
    for argv in (["checkpoints", "list", uri], ["predict", "--checkpoint", uri, "--input", str(events)],
                 ["checkpoints", "show", uri, "--id", "../../outside/ck1"]):
        capsys.readouterr()
        assert main(argv) == 1, argv
        captured = capsys.readouterr()
        assert "not a checkpoint id" in captured.err and len(captured.err.strip().splitlines()) == 1 and not captured.out, argv


# ---------------------------------------------------------------------------------------------
# A latest checkpoint that verifies but cannot be restored (issue 26.3, 25.6); --model (26.4)
# ---------------------------------------------------------------------------------------------


def learned_store(uri):
    """A store with a good checkpoint of a small regression model; the learner and the manifest."""
    from online.config import EventsConfig, ModelConfig
    from online.learning.learner import Learner
    from online.checkpoints.persistence import save_learner

    learner = Learner(ModelConfig(pipeline=[{"linear_model.LinearRegression": {}}], metrics=["MAE"]), EventsConfig(target="y"))
    for i in range(30):
        learner.process({"x": float(i % 5), "y": 2.0 * (i % 5)})
    return learner, save_learner(CheckpointStore(uri), learner, positions={})


UNRESTORABLE = {
    "module-missing": b"cno_such_module_of_the_user\nSteps\n.",  # a custom_modules class whose module is gone
    "unknown-class": b"criver.linear_model\nNoSuchRegression\n.",
    "wrong-type": pickle.dumps({"not": "a learner state"}),
}


@pytest.mark.parametrize("state", list(UNRESTORABLE.values()), ids=list(UNRESTORABLE))
def test_a_latest_checkpoint_that_cannot_be_restored_falls_back_to_the_previous_good_one(state, tmp_path, caplog, capsys, monkeypatch):
    from online.checkpoints.persistence import LearnerSpec, checkpoint_fields, learning_extra, resume
    from online.serving.metrics import ServeMetrics
    from online.serving.reload import CheckpointWatcher, ModelSlot
    from riverbeam.cli import main

    monkeypatch.delenv("RIVERBEAM_CHECKPOINT_KEY", raising=False)
    uri = str(tmp_path / "ckpt")
    learner, good = learned_store(uri)
    bad = CheckpointStore(uri).save(state, **checkpoint_fields(learner), positions=good["positions"], extra=learning_extra(learner))

    with caplog.at_level("WARNING", logger="online.checkpoints.store"):  # the daemon, replay, a learning serve, stream-learn
        restored, checkpoint = resume(CheckpointStore(uri), LearnerSpec.of_learner(learner))
    assert checkpoint.id == good["id"] and restored.report() == learner.report()
    assert f"checkpoint {bad['id']} verifies but cannot be restored" in caplog.text
    assert f"fell back to checkpoint {good['id']} (the latest, {bad['id']}, cannot be used)" in caplog.text

    watcher = CheckpointWatcher(CheckpointStore(uri), ModelSlot(), ServeMetrics())  # a read-only serve
    assert watcher.load_initial() == good["id"]

    events = tmp_path / "events.jsonl"
    events.write_text('{"x": 1.0}\n')
    capsys.readouterr()
    assert main(["predict", "--checkpoint", uri, "--input", str(events)]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["checkpoint"] == good["id"] and "Traceback" not in captured.err
    assert main(["predict", "--checkpoint", uri, "--id", bad["id"], "--input", str(events)]) == 1  # that one: one line
    captured = capsys.readouterr()
    assert not captured.out and len(captured.err.strip().splitlines()) == 1, captured.err
    assert f"checkpoint {bad['id']} verifies but cannot be restored" in captured.err

    config = tmp_path / "replay.yaml"  # replay --mode learn through the command: learns on from the good one
    config.write_text(json.dumps({"model": {"pipeline": [{"linear_model.LinearRegression": {}}], "metrics": ["MAE"]},
                                  "events": {"target": "y"}, "checkpoint": {"uri": uri, "every_events": 100}}))
    more = tmp_path / "more.jsonl"
    more.write_text("".join(json.dumps({"x": float(i % 5), "y": 2.0 * (i % 5)}) + "\n" for i in range(10)))
    assert main(["replay", "--config", str(config), "--input", str(more), "--no-progress"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert CheckpointStore(uri).load_latest().manifest["events_learned"] == good["events_learned"] + 10


def test_a_model_name_the_checkpoint_does_not_hold_is_refused(tmp_path, capsys, monkeypatch):
    from riverbeam.cli import main

    monkeypatch.delenv("RIVERBEAM_CHECKPOINT_KEY", raising=False)
    uri = str(tmp_path / "ckpt")
    learned_store(uri)
    events = tmp_path / "events.jsonl"
    events.write_text('{"x": 1.0}\n')
    capsys.readouterr()
    assert main(["predict", "--checkpoint", uri, "--model", "../../etc/passwd", "--input", str(events)]) == 2
    captured = capsys.readouterr()
    assert not captured.out and len(captured.err.strip().splitlines()) == 1
    assert "--model: checkpoint " in captured.err and "holds one model (LinearRegression), not '../../etc/passwd'" in captured.err
    assert main(["predict", "--checkpoint", uri, "--model", "LinearRegression", "--input", str(events)]) == 0  # its name is taken
    assert "prediction" in json.loads(capsys.readouterr().out)


def test_a_model_set_checkpointed_before_the_modules_moved_restores(tmp_path):
    """Checkpoints name riverbeam's classes by module: those written before online/ was split into wings still restore."""
    import pickle

    from online.checkpoints.persistence import ModelsSpec, checkpoint_store, resume
    from online.config import EventsConfig, ModelConfig

    models = {"lr": ModelConfig(pipeline=[{"linear_model.LinearRegression": {}}], metrics=["MAE"])}
    spec = ModelsSpec(models, EventsConfig(target="y"))
    store = checkpoint_store(str(tmp_path))
    learners, _ = resume(store, spec)
    for i in range(10):
        learners.process({"x": float(i), "y": 2.0 * i})
    before_the_move = (
        pickle.dumps(pickle.loads(learners.snapshot()), protocol=2)
        .replace(b"online.learning.model_set\n", b"online.model_set\n")
        .replace(b"online.learning.learner\n", b"online.learner\n")
    )
    assert b"online.model_set\n" in before_the_move and b"online.learner\n" in before_the_move
    store.save(before_the_move, events_seen=10, events_learned=10, metrics={}, model="", positions={}, config_hash=spec.hash, extra={"learning": spec.recorded()})
    again, checkpoint = resume(store, spec)
    assert checkpoint is not None
    assert again.report()["by_model"]["lr"]["metrics"] == learners.report()["by_model"]["lr"]["metrics"]


def test_a_checkpoint_computes_the_learner_report_once(tmp_path, monkeypatch):
    """The manifest's counters and its ``extra.report`` come from one `Learner.report()` (it was taken twice)."""
    from online.checkpoints.persistence import Checkpointer, LearnerSpec
    from online.config import EventsConfig, ModelConfig
    from online.learning.learner import Learner

    model, events = ModelConfig(pipeline=[{"linear_model.LinearRegression": {}}], metrics=["MAE"]), EventsConfig(target="y")
    learner = Learner(model, events)
    learner.process_many([{"x": float(i), "y": 2.0 * i} for i in range(3)])
    store = CheckpointStore(str(tmp_path / "ckpt"))
    calls = []
    real = Learner.report

    def counted(self):
        calls.append(1)
        return real(self)

    monkeypatch.setattr(Learner, "report", counted)
    Checkpointer(store, learner, LearnerSpec(model, events)).checkpoint({"events/0": 3}, wait=True)
    manifest = store.load_latest().manifest
    assert len(calls) == 1
    assert manifest["extra"]["report"]["events_learned"] == manifest["events_learned"] == 3
