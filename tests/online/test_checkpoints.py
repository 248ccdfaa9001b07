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
