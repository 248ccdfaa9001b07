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


STOPPED_HOLDER = """
import os, signal, sys
from core.storage import open_store
from online.checkpoints.lease import Lease

lease = Lease(open_store(sys.argv[1]), "stopped", ttl=2.0)
assert lease.try_acquire()
fsync, stopped = os.fsync, []

def stop_once(fd):  # the holder is stopped (SIGSTOP, a frozen container) in the middle of writing its renewal
    if not stopped:
        stopped.append(True)
        os.kill(os.getpid(), signal.SIGSTOP)
    fsync(fd)

os.fsync = stop_once
print("renewed" if lease.renew() else "lost", flush=True)
"""


def test_a_holder_stopped_while_it_renews_does_not_keep_a_standby_out(tmp_path):
    """A holder stopped mid-renewal (found by the Apache Kafka stress run: a standby waited for ever, silent) holds
    nothing but an expiring lease: the standby takes it once it expires, and the holder, resumed, finds it lost.

    Before the fix the local store held its compare-and-swap lock while it wrote and fsynced the new lease, so the
    stopped holder kept every other writer of the lease blocked on that lock until it was resumed.
    """
    import os
    import signal
    import subprocess
    import sys
    import threading

    from online.checkpoints.lease import wait_for_lease

    root = str(tmp_path / "lease")
    holder = subprocess.Popen([sys.executable, "-c", STOPPED_HOLDER, root], stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
    try:
        assert os.waitpid(holder.pid, os.WUNTRACED)[1] & 0xFF == 0x7F  # stopped inside its renewal's write
        standby, stopping, taken = Lease(open_store(root), "standby", ttl=2.0), threading.Event(), []
        waiting = threading.Thread(target=lambda: taken.append(wait_for_lease(standby, stopping)), daemon=True)
        waiting.start()
        waiting.join(timeout=60)  # a hang detector, far above the 2 s lease: the standby must not wait on the stopped holder
        stopping.set()
        assert taken and taken[0] is not None, "the standby never took the lease of a stopped holder"
        keeper = taken[0]
        holder.send_signal(signal.SIGCONT)
        assert holder.communicate(timeout=60)[0].strip() == "lost"  # resumed: its renewal is refused, never overwrites
        assert keeper.valid() and standby.holder()[0]["owner"] == "standby"
        keeper.stop()
    finally:
        if holder.poll() is None:
            holder.send_signal(signal.SIGCONT)
            holder.kill()
            holder.communicate()
