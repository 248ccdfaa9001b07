"""Per-key models at scale: a bounded cache of hot models over an embedded key-value store.

`KeyedModels` is what ``LearnerState.models`` holds when ``events.key`` is set. It behaves like
the dict it replaces (``get``, ``[key] = model``, ``len``, iteration) and adds four things:

* **A bounded cache** of ``events.key_cache_size`` hot models in memory (least recently used
  first). Past that, models are *spilled*: pickled into a local RocksDB (through `rocksdict`,
  the binding Quix Streams uses) in a temporary directory, and unpickled again when their key
  comes back. Memory therefore follows the cache size, not the number of keys ever seen. The
  spill store is a cache of the state, never its truth: the checkpoints are (it is rebuilt from
  them on restore, and deleted when the learner goes away). Eviction happens only at safe
  points (`trim`, called between batches), never while the learner holds a model.
* **Dirty tracking and incremental snapshots**: every key handed out since the last checkpoint
  is *dirty*. `freeze` (at a checkpoint) turns the dirty keys into a frozen set; `serialize`
  pickles frozen models in time-bounded slices (copy-on-write: a frozen model asked for again
  before its turn is pickled first), and two more each time the learner asks for a key, so
  the pickling is spread over the events that follow (one event dirties at most one model, so it
  is done in half a checkpoint interval) and no checkpoint stops the stream to pickle every model.
  `delta_records` then yields only the changed models (and tombstones of dropped ones).
* **An idle time-to-live** (``events.key_ttl_seconds``): models not used for that long are
  dropped at `trim` (counted in ``models_expired``, logged), in bounded sweeps of the spill store.
* **Parts**: `encode_part` / `decode_part` / `merge_parts` are the byte format of the parts an
  incremental checkpoint is made of (`online.checkpoints.persistence.Checkpointer`, `online.checkpoints.store`):
  records of (kind, key, value or tombstone), applied in order; merging folds many parts into one.

A value, in the spill store and in parts, is 8 bytes of last-use time (epoch seconds, float)
followed by the model's pickle.

>>> from river import linear_model
>>> proto = linear_model.LinearRegression()
>>> models = KeyedModels(cache_size=2, clock=lambda: 100.0)
>>> for key in "abc":
...     models[key] = proto.clone()
>>> _ = models.trim(); len(models), models.hot_count, sorted(models)
(3, 2, ['a', 'b', 'c'])
>>> models.get("a") is not None, models.get("zzz")
(True, None)
>>> _ = models.freeze(); _ = models.serialize(); sorted(key for kind, key, _ in models.delta_records())
['a', 'b', 'c']
"""

from __future__ import annotations

import collections
import contextlib
import logging
import pickle
import shutil
import struct
import tempfile
import time
import weakref
from typing import Any, Callable, Iterable, Iterator

from core.errors import RiverbeamError

log = logging.getLogger(__name__)

MODEL, PENDING = 0, 1  # record kinds in a part
TOMBSTONE = None
PART_MAGIC = b"RBKP1\n"
_RECORD = struct.Struct("<BIi")  # kind, key length, value length (-1: tombstone)
_TIME = struct.Struct("<d")
SWEEP_BATCH = 5_000  # spilled entries looked at per TTL sweep step
SWEEP_EVERY = 1.0  # seconds between TTL sweeps
PICKLE_PER_GET = 2  # frozen models pickled with each model handed out: a checkpoint's pickling spread over the events


# -- the part format ---------------------------------------------------------------------------


def encode_part(records: Iterable[tuple[int, Any, bytes | None]]) -> bytes:
    """The bytes of a part: records (kind, key, value bytes or None for a tombstone), in order.

    >>> decode_part(encode_part([(MODEL, "a", b"x"), (PENDING, 7, None)]))
    [(0, 'a', b'x'), (1, 7, None)]
    """
    dumps = pickle.dumps
    return _encode_raw((kind, dumps(key, protocol=pickle.HIGHEST_PROTOCOL), value) for kind, key, value in records)


def _encode_raw(records: Iterable[tuple[int, bytes, bytes | None]]) -> bytes:
    chunks = [PART_MAGIC]
    append, pack = chunks.append, _RECORD.pack
    for kind, raw_key, value in records:
        if value is None:
            append(pack(kind, len(raw_key), -1))
            append(raw_key)
        else:
            append(pack(kind, len(raw_key), len(value)))
            append(raw_key)
            append(value)
    return b"".join(chunks)


def _iter_raw(data: bytes) -> Iterator[tuple[int, bytes, bytes | None]]:
    if not data.startswith(PART_MAGIC):
        raise ValueError("not a riverbeam keyed-state part")
    offset, size, unpack = len(PART_MAGIC), len(data), _RECORD.unpack_from
    header = _RECORD.size
    while offset < size:
        kind, key_length, value_length = unpack(data, offset)
        offset += header
        raw_key = data[offset : offset + key_length]
        offset += key_length
        if value_length < 0:
            yield kind, raw_key, None
        else:
            yield kind, raw_key, data[offset : offset + value_length]
            offset += value_length
    if offset != size:
        raise ValueError("truncated keyed-state part")


def iter_part(data: bytes) -> Iterator[tuple[int, Any, bytes | None]]:
    """The records of a part, in order (`ValueError` when it is not one)."""
    loads = pickle.loads
    for kind, raw_key, value in _iter_raw(data):
        yield kind, loads(raw_key), value


def decode_part(data: bytes) -> list[tuple[int, Any, bytes | None]]:
    """`iter_part` as a list."""
    return list(iter_part(data))


def merge_parts(parts: Iterable[bytes]) -> bytes:
    """One part equal to applying `parts` in order: the last value of each key, tombstones dropped,
    pending entries in the order they would have after replaying every part. Keys stay pickled
    (a key's pickle is the same bytes every time: riverbeam writes them all one way).

    >>> one = encode_part([(MODEL, "a", b"1"), (MODEL, "b", b"1"), (PENDING, 1, b"p1"), (PENDING, 2, b"p2")])
    >>> two = encode_part([(MODEL, "a", b"2"), (MODEL, "b", None), (PENDING, 1, None), (PENDING, 3, b"p3")])
    >>> decode_part(merge_parts([one, two]))
    [(0, 'a', b'2'), (1, 2, b'p2'), (1, 3, b'p3')]
    """
    models: dict = {}
    pending: collections.OrderedDict = collections.OrderedDict()
    for data in parts:
        apply_records(_iter_raw(data), models, pending)
    return _encode_raw([*((MODEL, k, v) for k, v in models.items()), *((PENDING, k, v) for k, v in pending.items())])


def apply_records(records: Iterable[tuple[int, Any, bytes | None]], models, pending: collections.OrderedDict) -> None:
    """Apply part records to `models` (a mapping key -> value bytes) and `pending` (id -> value bytes, in order)."""
    for kind, key, value in records:
        if kind == MODEL:
            if value is None:
                models.pop(key, None)
            else:
                models[key] = value
        else:
            pending.pop(key, None)
            if value is not None:
                pending[key] = value  # (re)appended at the end: the order the learner had


def apply_parts(state, parts: Iterable[bytes]) -> None:
    """Apply an incremental checkpoint's parts, in order, to a restored learner state (`online.learning.learner.LearnerState`).

    Model records go into ``state.models`` (a `KeyedModels`, left pickled in its spill store);
    delayed-label records rebuild ``state.pending`` in the order the learner had.

    >>> import types
    >>> state = types.SimpleNamespace(models=KeyedModels(), pending=collections.OrderedDict())
    >>> apply_parts(state, [encode_part([(MODEL, "a", struct.pack("<d", 1.0) + pickle.dumps(7)), (PENDING, "id-1", pickle.dumps((1, 2)))])])
    >>> state.models["a"], dict(state.pending)
    (7, {'id-1': (1, 2)})
    """
    pending: collections.OrderedDict = collections.OrderedDict()

    def models():
        for data in parts:
            for record in iter_part(data):
                if record[0] == PENDING:
                    apply_records((record,), {}, pending)
                else:
                    yield record

    state.models.load_records(models())
    state.pending = collections.OrderedDict((key, pickle.loads(value)) for key, value in pending.items())


def pending_delta(previous: dict | None, current: collections.OrderedDict) -> list[tuple[int, Any, bytes | None]]:
    """Part records turning `previous` (a copy of the pending delayed labels at the last checkpoint)
    into `current`: tombstones for ids gone, the entries added since (in order).

    Pending entries are never changed in place, only removed and (re)added at the end, so an
    entry holding the very same value object as before is unchanged and keeps its place.

    >>> old = collections.OrderedDict([(1, ("x",)), (2, ("y",))])
    >>> new = collections.OrderedDict([(2, old[2]), (3, ("z",))])
    >>> [(k, v is None) for _, k, v in pending_delta(old, new)]
    [(1, True), (3, False)]
    """
    previous = previous or {}
    records: list = [(PENDING, key, None) for key in previous if key not in current]
    dumps = pickle.dumps
    for key, value in current.items():
        if previous.get(key) is not value:
            if key in previous:
                records.append((PENDING, key, None))
            records.append((PENDING, key, dumps(value, protocol=pickle.HIGHEST_PROTOCOL)))
    return records


# -- the store ---------------------------------------------------------------------------------


class SpillError(RiverbeamError):
    """The local spill store of per-key models failed (a full disk, a folder that cannot be written): the job stops in one line.

    >>> str(SpillError("/tmp/riverbeam-keys-x", OSError("IO error: No space left on device")))  # doctest: +ELLIPSIS
    'the spill store of per-key models at /tmp/riverbeam-keys-x failed: IO error: No space left on device (give its folder...'
    """

    def __init__(self, path: str, error: BaseException):
        super().__init__(
            f"the spill store of per-key models at {path} failed: {error} (give its folder more room, or point TMPDIR at "
            f"one that has it; a larger events.key_cache_size spills less)"
        )


@contextlib.contextmanager
def _spill_errors(path: str) -> Iterator[None]:
    """RocksDB's errors (plain ``Exception``: ``IO error: No space left on device``) as a `SpillError`."""
    try:
        yield
    except OSError as error:
        raise SpillError(path, error) from None
    except Exception as error:
        if type(error) is not Exception:  # a bug of ours, not RocksDB's I/O
            raise
        raise SpillError(path, error) from None


class _Spill:
    """A local RocksDB in a temporary directory, deleted with its owner (raw bytes in, bytes out)."""

    def __init__(self, directory: str | None = None):
        from rocksdict import Options, Rdict, WriteOptions

        with _spill_errors(directory or tempfile.gettempdir()):
            self.path = tempfile.mkdtemp(prefix="riverbeam-keys-", dir=directory)
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        try:
            with _spill_errors(self.path):
                self.db = Rdict(self.path, options)
        except SpillError:
            shutil.rmtree(self.path, ignore_errors=True)
            raise
        write_options = WriteOptions()
        write_options.disable_wal = True  # a cache of the checkpointed state: rebuilt from checkpoints, never recovered
        self.db.set_write_options(write_options)
        self._finalizer = weakref.finalize(self, _Spill._remove, self.db, self.path)

    def write(self, batch) -> None:
        """Apply a write batch (`SpillError` when RocksDB cannot)."""
        with _spill_errors(self.path):
            self.db.write(batch)

    @staticmethod
    def _remove(db, path: str) -> None:
        try:
            db.close()
        except Exception:  # a store that failed (a full disk) may fail to close too: it is deleted all the same
            pass
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def close(self) -> None:
        self._finalizer()


class KeyedModels:
    """Per-key models: a bounded in-memory cache over a spill store, with dirty tracking and an idle TTL.

    `cache_size` models stay in memory (at least 2); `ttl` (seconds, None for never) drops models
    not used for that long; `clock` gives epoch seconds (the processing clock by default);
    `spill_dir` is where the temporary spill store goes (the system's temporary directory by default).
    """

    def __init__(self, models: dict | None = None, *, cache_size: int = 100_000, ttl: float | None = None,
                 clock: Callable[[], float] = time.time, spill_dir: str | None = None):
        self.cache_size = max(2, int(cache_size))
        self.ttl = ttl
        self.clock = clock
        self.spill_dir = spill_dir
        self.now = clock()
        self.hot: collections.OrderedDict = collections.OrderedDict()  # key -> model, least recently used first
        self.used: dict = {}  # key -> last-use time, for hot keys
        self.count = 0  # distinct live keys (hot and spilled)
        self.dirty: set = set()  # keys handed out (or dropped) since the last freeze
        self.dropped: set = set()  # keys dropped by the TTL since the last freeze
        self.frozen: dict = {}  # key -> value bytes, TOMBSTONE, or _TODO: the checkpoint being serialised
        self.expired = 0  # models dropped by the TTL, in this process (the learner keeps the total)
        self._spill: _Spill | None = None
        self._spilled = 0  # keys in the spill store that are not hot
        self._todo: list = []  # frozen keys not pickled yet
        self._sweep_cursor: bytes | None = None
        self._last_sweep = self.now
        # key -> model or None: where a key this store does not hold comes from (another checkpoint unit:
        # `online.checkpoints.units.OtherUnits`); a model found there becomes this store's own, dirty
        self.fallback: Callable[[Any], Any] | None = None
        for key, model in (models or {}).items():
            self[key] = model

    # -- the dict surface the learner uses ---------------------------------------------------

    def get(self, key, default=None):
        """The key's model (loaded from the spill store if needed, copy-on-write if frozen), or `default`."""
        if self._todo:  # a checkpoint is pickling its frozen models: two more with each key asked for
            todo = self._todo
            for _ in range(PICKLE_PER_GET):
                if not todo:
                    break
                self._cow(todo.pop())
        hot = self.hot
        model = hot.get(key)
        if model is not None:
            hot.move_to_end(key)
        else:
            raw = self._spill.db.get(_key_bytes(key)) if self._spilled else None
            if raw is None:
                model = self.fallback(key) if self.fallback is not None else None
                if model is None:
                    return default
                hot[key] = model  # taken from another unit: this store's own from now on
                self.count += 1
                self.used[key] = self.clock()
                self.dirty.add(key)
                self.dropped.discard(key)
                return model
            if self.frozen.get(key) is _TODO:
                self.frozen[key] = raw
            model = pickle.loads(memoryview(raw)[_TIME.size :])
            hot[key] = model
            self._spilled -= 1
        if self.frozen and self.frozen.get(key) is _TODO:  # a checkpoint still needs the model as it was
            self.frozen[key] = self._value(key, model)
        self.used[key] = self.clock()
        self.dirty.add(key)
        return model

    def __getitem__(self, key):
        model = self.get(key)
        if model is None:
            raise KeyError(key)
        return model

    def __setitem__(self, key, model) -> None:
        """Add (or replace) a key's model; it is dirty."""
        if key in self.hot:
            self.get(key)
        elif self.get(key) is None:
            self.count += 1
        self.hot[key] = model
        self.hot.move_to_end(key)
        self.used[key] = self.clock()
        self.dirty.add(key)
        self.dropped.discard(key)

    def __contains__(self, key) -> bool:
        return key in self.hot or (self._spilled > 0 and self._spill.db.get(_key_bytes(key)) is not None)

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator:
        yield from list(self.hot)
        if self._spilled:
            hot = self.hot
            for raw_key in list(self._spill.db.keys()):
                key = pickle.loads(raw_key)
                if key not in hot:
                    yield key

    def items(self) -> Iterator[tuple[Any, Any]]:
        """Every (key, model): hot ones first, then spilled ones unpickled one by one (not cached)."""
        yield from list(self.hot.items())
        if self._spilled:
            hot = self.hot
            for raw_key, raw in self._spill.db.items():
                key = pickle.loads(raw_key)
                if key not in hot:
                    yield key, pickle.loads(memoryview(raw)[_TIME.size :])

    def __reduce__(self):
        return dict, (list(self.items()),)  # a full snapshot is a plain dict of models (Beam, save_learner)

    @property
    def hot_count(self) -> int:
        return len(self.hot)

    # -- safe points -------------------------------------------------------------------------

    def trim(self) -> int:
        """Between batches: drop idle models (TTL) and spill the least recently used past the cache size; the number dropped."""
        self.now = now = self.clock()
        dropped = self._expire(now) if self.ttl is not None and now - self._last_sweep >= min(SWEEP_EVERY, self.ttl) else 0
        excess = len(self.hot) - self.cache_size
        if excess > 0:
            if self._spill is None:
                self._spill = _Spill(self.spill_dir)
            from rocksdict import WriteBatch

            batch = WriteBatch(raw_mode=True)
            hot, frozen = self.hot, self.frozen
            for _ in range(excess):
                key, model = hot.popitem(last=False)
                value = self._value(key, model)
                if frozen and frozen.get(key) is _TODO:
                    frozen[key] = value
                batch.put(_key_bytes(key), value)
                del self.used[key]
            self._spill.write(batch)
            self._spilled += excess
        return dropped

    def _expire(self, now: float) -> int:
        self._last_sweep = now
        cutoff = now - self.ttl
        dropped = []
        hot, used = self.hot, self.used
        while hot:
            key = next(iter(hot))
            if used[key] > cutoff:
                break
            self._cow(key)
            del hot[key], used[key]
            if self._spilled:
                self._spill.db.delete(_key_bytes(key))  # a stale spilled copy
            dropped.append(key)
        if self._spilled:  # a bounded step through the spill store, resumed next time
            iterator = self._spill.db.iter()
            iterator.seek(self._sweep_cursor) if self._sweep_cursor is not None else iterator.seek_to_first()
            stale, seen = [], 0
            while iterator.valid() and seen < SWEEP_BATCH:
                raw_key, raw = iterator.key(), iterator.value()
                if _TIME.unpack_from(raw)[0] <= cutoff:
                    key = pickle.loads(raw_key)
                    if key not in hot:
                        stale.append((raw_key, key, raw))
                seen += 1
                iterator.next()
            self._sweep_cursor = iterator.key() if iterator.valid() else None
            del iterator
            for raw_key, key, raw in stale:
                if self.frozen.get(key) is _TODO:
                    self.frozen[key] = raw
                self._spill.db.delete(raw_key)
                self._spilled -= 1
                dropped.append(key)
        for key in dropped:
            self.count -= 1
            self.dirty.discard(key)
            self.dropped.add(key)
        if dropped:
            self.expired += len(dropped)
            log.info("dropped %d model(s) idle for more than %g s (%d dropped so far, %d keys live)", len(dropped), self.ttl, self.expired, self.count)
        return len(dropped)

    # -- incremental snapshots ---------------------------------------------------------------

    def freeze(self) -> int:
        """Start a checkpoint: what changed since the last one is frozen (serialised by `serialize`); how many keys."""
        if self.frozen:
            raise RuntimeError("the previous checkpoint's models are not serialised yet")
        frozen = dict.fromkeys(self.dirty, _TODO)
        for key in self.dropped:
            frozen[key] = TOMBSTONE
        self.frozen, self.dirty, self.dropped = frozen, set(), set()
        self._todo = [key for key, value in frozen.items() if value is _TODO]
        return len(frozen)

    def serialize(self, budget: float | None = None) -> bool:
        """Pickle frozen models for at most `budget` seconds (all of them with None); True once all are done."""
        todo, frozen = self._todo, self.frozen
        deadline = None if budget is None else time.perf_counter() + budget
        while todo:
            key = todo.pop()
            if frozen.get(key) is _TODO:
                self._cow(key)
            if deadline is not None and len(todo) % 16 == 0 and time.perf_counter() >= deadline:
                break
        return not todo

    def delta_records(self) -> list[tuple[int, Any, bytes | None]]:
        """The frozen changes as part records (after `serialize` returned True); the frozen set is released."""
        records = [(MODEL, key, value) for key, value in self.frozen.items()]
        self.frozen = {}
        return records

    def thaw(self) -> None:
        """A checkpoint failed: what it froze is dirty again (the next one writes it)."""
        for key, value in self.frozen.items():
            (self.dropped if value is TOMBSTONE else self.dirty).add(key)
        self.frozen, self._todo = {}, []

    def mark_all_dirty(self) -> None:
        """Every live key is written by the next checkpoint (after a restore from a full snapshot)."""
        self.dirty.update(self)

    def _cow(self, key) -> None:
        """Pickle a frozen key's model as it is now, before anything changes it."""
        if self.frozen.get(key) is not _TODO:
            return
        model = self.hot.get(key)
        if model is not None:
            self.frozen[key] = self._value(key, model)
        else:
            raw = self._spill.db.get(_key_bytes(key)) if self._spilled else None
            self.frozen[key] = raw if raw is not None else TOMBSTONE

    def _value(self, key, model) -> bytes:
        return _TIME.pack(self.used.get(key, self.now)) + pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)

    # -- restore -----------------------------------------------------------------------------

    def load_records(self, records: Iterable[tuple[int, Any, bytes | None]]) -> int:
        """Apply model records (a restored checkpoint's parts, in order) into the spill store; how many keys are live.

        Models stay pickled until their key comes back (restore does not unpickle them).
        """
        if self._spill is None:
            self._spill = _Spill(self.spill_dir)
        from rocksdict import WriteBatch

        db = self._spill.db
        batch, size = WriteBatch(raw_mode=True), 0
        for kind, key, value in records:
            if kind != MODEL:
                continue
            self.hot.pop(key, None)
            self.used.pop(key, None)
            if value is None:
                batch.delete(_key_bytes(key))
            else:
                batch.put(_key_bytes(key), value)
            size += 1
            if size >= 10_000:
                self._spill.write(batch)
                batch, size = WriteBatch(raw_mode=True), 0
        self._spill.write(batch)
        self._spilled = sum(1 for _ in db.keys())
        self.count = self._spilled + len(self.hot)
        return self.count

    def close(self) -> None:
        """Delete the spill store now (it also goes when this object is garbage collected)."""
        if self._spill is not None:
            self._spill.close()
            self._spill = None
            self._spilled = 0


class _Todo:
    def __repr__(self) -> str:
        return "<to serialise>"


_TODO = _Todo()


def _key_bytes(key) -> bytes:
    return pickle.dumps(key, protocol=pickle.HIGHEST_PROTOCOL)


__all__ = ["KeyedModels", "SpillError", "encode_part", "decode_part", "iter_part", "merge_parts", "apply_records", "apply_parts", "pending_delta", "MODEL", "PENDING"]
