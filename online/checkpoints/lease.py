"""A lease in object storage: which daemon instance is the active one for a global model.

A global model (no ``events.key``) is learned by one active instance; others wait as standby.
The lease is a small object (``LEASE``) next to the checkpoints, replaced only by
compare-and-swap on its generation. The holder renews it; when it stops renewing (crash,
kill -9) the lease expires after `ttl` seconds and a standby takes it, restores the latest
checkpoint and goes on. Checkpoint writes are fenced independently (`online.checkpoints.store`), so
even a holder that lost its lease without noticing cannot overwrite its successor's checkpoints.

>>> import tempfile
>>> from core.storage import open_store
>>> store = open_store(tempfile.mkdtemp())
>>> a, b = Lease(store, "a", ttl=30), Lease(store, "b", ttl=30)
>>> a.try_acquire(), b.try_acquire()
(True, False)
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid

from core.storage import ABSENT, Generation, ObjectNotFound, ObjectStore, PreconditionFailed, StorageUnusable
from online.config import LEASE_RENEWALS

LEASE = "LEASE"
log = logging.getLogger("riverbeam.lease")


def instance_id() -> str:
    """A name for this process: host, pid and a random suffix."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Lease:
    """Acquire, renew and release the lease named `LEASE` in `store` for `owner`."""

    def __init__(self, store: ObjectStore, owner: str, ttl: float = 30.0):
        self.store = store
        self.owner = owner
        self.ttl = ttl
        self.generation: Generation | None = None  # an opaque token from the store
        self.expires_at = 0.0

    def _write(self, generation: Generation) -> bool:
        expires = time.time() + self.ttl
        try:
            self.generation = self.store.write_if_generation(LEASE, json.dumps({"owner": self.owner, "expires_at": expires}).encode(), generation)
        except PreconditionFailed:
            return False
        self.expires_at = expires
        return True

    def holder(self) -> tuple[dict | None, Generation]:
        try:
            data, generation = self.store.read_with_generation(LEASE)
        except ObjectNotFound:
            return None, ABSENT
        try:
            return json.loads(data), generation
        except ValueError:
            return None, generation

    def try_acquire(self) -> bool:
        """Take the lease if it is free, expired or already ours."""
        current, generation = self.holder()
        if current is not None and current.get("owner") != self.owner and current.get("expires_at", 0) > time.time():
            return False
        return self._write(generation)

    def renew(self) -> bool:
        """Extend our lease; False if someone else holds it now (we must stop)."""
        if self.generation is None:
            return self.try_acquire()
        if self._write(self.generation):
            return True
        current, generation = self.holder()
        if current is not None and current.get("owner") == self.owner:
            return self._write(generation)
        return False

    def release(self) -> None:
        """Let a standby take over at once (best effort)."""
        if self.generation is not None:
            try:
                self.store.write_if_generation(LEASE, json.dumps({"owner": None, "expires_at": 0}).encode(), self.generation)
            except PreconditionFailed:
                pass
            self.generation = None


def wait_for_lease(lease: Lease, stopping: threading.Event, what: str = "this model") -> "LeaseKeeper | None":
    """Standby until `lease` is this instance's, then a started `LeaseKeeper` renewing it; None if `stopping` was set first.

    The one standby loop (the daemon's global model, a learning server): tried ``LEASE_RENEWALS``
    times per time to live (at least every 2 s). Storage that is down keeps the instance standby
    (each failure logged); storage that refuses it (permission denied, no such bucket:
    `PermissionError`, `core.storage.StorageUnusable`) is raised, since waiting will not heal it.

    >>> import tempfile
    >>> from core.storage import open_store
    >>> keeper = wait_for_lease(Lease(open_store(tempfile.mkdtemp()), "a", ttl=3), threading.Event())
    >>> keeper.valid()
    True
    >>> keeper.stop()
    """
    waited = False
    while True:
        try:
            if lease.try_acquire():
                return LeaseKeeper(lease).start()
        except (PermissionError, StorageUnusable):
            raise
        except Exception as error:  # storage down: stay standby
            log.warning("standby: cannot read the lease", extra={"fields": {"error": f"{type(error).__name__}: {error}"}})
        else:
            if not waited:
                log.info(f"standby: another instance holds the lease for {what}", extra={"fields": {"owner": lease.owner}})
                waited = True
        if stopping.wait(min(2.0, lease.ttl / LEASE_RENEWALS)):
            return None


class LeaseLost(Exception):
    """This instance no longer holds the lease: drop what is not durable, go back to standby."""


class LeaseKeeper:
    """Holds a `Lease` from the moment it is taken: renews it every `every` seconds on its own thread
    (by default ``LEASE_RENEWALS`` times per time to live). The one lease loop: the daemon's and the
    learning server's (`online.serving.writer`).

    Renewal goes on while the holder restores, looks up topics or uploads a checkpoint, so a
    slow step never lets the lease lapse under a live holder. `lost` is set when a renewal finds
    another owner, or when renewals kept failing (storage down) until the lease's own expiry:
    from then on another instance may hold it, so the holder must stop writing and go back to
    standby.

    >>> import tempfile
    >>> from core.storage import open_store
    >>> lease = Lease(open_store(tempfile.mkdtemp()), "a", ttl=3)
    >>> lease.try_acquire()
    True
    >>> keeper = LeaseKeeper(lease, every=1.0).start()
    >>> keeper.lost.is_set()
    False
    >>> keeper.stop()
    """

    def __init__(self, lease: Lease, every: float | None = None):
        self.lease = lease
        self.every = lease.ttl / LEASE_RENEWALS if every is None else every
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "LeaseKeeper":
        self._thread = threading.Thread(target=self._run, name="riverbeam-lease", daemon=True)
        self._thread.start()
        return self

    def valid(self) -> bool:
        """Still ours: not lost and not past its expiry by this process's clock."""
        return not self.lost.is_set() and time.time() < self.lease.expires_at

    def check(self) -> None:
        """Raise `LeaseLost` unless the lease is still ours (`valid`)."""
        if not self.valid():
            raise LeaseLost("this instance's lease on the global model expired or was taken over")

    def _run(self) -> None:
        failing_since = None
        while not self._stop.wait(self.every):
            try:
                renewed = self.lease.renew()
            except Exception as error:  # storage unreachable: keep trying until the lease would expire
                if failing_since is None:
                    failing_since = time.monotonic()
                    log.warning("lease renewal failed; retrying until the lease expires", extra={"fields": {"error": str(error)}})
                if time.time() >= self.lease.expires_at:
                    log.warning("lease expired while storage was unreachable")
                    self.lost.set()
                    return
                continue
            failing_since = None
            if not renewed or time.time() >= self.lease.expires_at:
                self.lost.set()
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
