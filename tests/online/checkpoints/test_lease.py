"""The lease of a global model on a local directory, the GCS emulator and the S3 server: same behaviour."""

from __future__ import annotations

import time

import pytest

from core.storage import open_store
from online.checkpoints.lease import Lease


@pytest.fixture(params=["local", "gcs", "s3"])
def store(request, tmp_path):
    uri = str(tmp_path / "lease") if request.param == "local" else request.getfixturevalue(f"{request.param}_prefix")
    return open_store(uri)


def test_one_holder_expiry_takeover_and_a_stale_holder_stops(store):
    a, b = Lease(store, "a", ttl=1.0), Lease(store, "b", ttl=1.0)
    assert a.try_acquire() and not b.try_acquire()
    assert a.renew() and not b.try_acquire()  # renewed: still a's
    time.sleep(1.1)  # a stops renewing (crash): the lease expires
    assert b.try_acquire()
    assert not a.renew()  # a's token is stale and the holder is b: a must stop
    assert b.holder()[0]["owner"] == "b" and b.renew()


def test_release_lets_a_standby_in_at_once(store):
    a, b = Lease(store, "a", ttl=30), Lease(store, "b", ttl=30)
    assert a.try_acquire() and not b.try_acquire()
    a.release()
    assert b.try_acquire() and not a.try_acquire()
