"""Event sources: what a learning unit reads (next batch, position, seek), and the daemon's Kafka reader.

Bytewax's ``StatefulSourcePartition``, for riverbeam: a source hands out `SourceBatch` objects
(consecutive records of one source partition, raw or already decoded, each with where it came
from) and says where it stands, so that a checkpoint can record the position and a restart can
seek back to it. Every learning unit (`online.learning.unit.LearningUnit`) reads its source with
`next_batch` and restores it with `seek`: ``riverbeam replay`` a `FileSource`; the daemon a
`FedSource` per unit, into which it pushes each partition's batches of its one `KafkaSource`
poll (a unit's `seek` reaches the `KafkaSource` behind it); serve a `FedSource` of each
request's `EventBatch`. Backfill reads a `FileSource` into its Kafka sink.

* `EventSource.next_batch()` — the next batch, or None (fed: nothing pushed since; files: the
  inputs are exhausted, `exhausted` turns True).
* `EventSource.position()` — where the source stands after the last batch handed out, as
  checkpoint positions (``{"topic/partition": next offset}`` or ``{"replay": {...}}``).
* `EventSource.seek(positions)` — continue from such positions (a checkpoint's).

A `SourceBatch` knows the position after it (`next_position`) and can be cut in two (`take`):
the learning loop cuts chunks of exactly ``model.batch.size`` records across batches and
checkpoints only at chunk boundaries.

>>> import pathlib, tempfile
>>> from online.readers import expand_inputs
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> _ = (folder / "a.jsonl").write_text('{"x": 1}\\n[2]\\n{"x": 3}\\n{"x": 4}\\n')
>>> source = FileSource(expand_inputs([str(folder / "a.jsonl")]), max_events=2)
>>> batch = source.next_batch()
>>> batch.values, batch.reasons, batch.sources
([{'x': 1}, None, {'x': 3}], {1: 'not a JSON object but an array'}, [('...a.jsonl', 1), ('...a.jsonl', 2), ('...a.jsonl', 3)])
>>> source.position()["replay"]["line"]
3
>>> head, tail = batch.take(1)
>>> head.next_position.line, tail.next_position.line
(1, 3)
>>> source.seek({"replay": head.next_position.to_json()})
>>> [b.values for b in iter(source.next_batch, None)]
[[None, {'x': 3}, {'x': 4}]]
>>> source.exhausted
True
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Hashable, Iterator, Protocol

from core.errors import UsageError
from online.kafka_clients import Batch, EventConsumer, TopicPartition
from online.readers import InputFile, ReplayPosition, SourceRecord, read_inputs

REPLAY = "replay"  # the file source's one partition, and its key among checkpoint positions

__all__ = ["EventSource", "SourceBatch", "KafkaBatch", "EventBatch", "FileBatch", "KafkaSource", "FileSource", "FedSource", "position_key", "parse_position_key", "partition_of", "kafka_positions", "progress_bar", "REPLAY"]


def position_key(tp: TopicPartition) -> str:
    """A Kafka partition as a checkpoint position key.

    >>> position_key(("events", 3))
    'events/3'
    """
    return f"{tp[0]}/{tp[1]}"


def parse_position_key(key: str) -> TopicPartition:
    topic, partition = key.rsplit("/", 1)
    return topic, int(partition)


def partition_of(key: Hashable) -> Hashable:
    """The partition a position key names: a Kafka checkpoint key (``"topic/partition"``) as its `TopicPartition`,
    any other key as it is (a file's path, serve's partition, a `TopicPartition` already).

    >>> partition_of("events/3"), partition_of("/data/a.jsonl"), partition_of(("events", 3))
    (('events', 3), '/data/a.jsonl', ('events', 3))
    """
    if isinstance(key, str) and "/" in key:
        topic, _, partition = key.rpartition("/")
        if partition.isdigit():
            return topic, int(partition)
    return key


def kafka_positions(positions: dict) -> dict[TopicPartition, int]:
    """The Kafka offsets among a checkpoint's positions (a replay or stream-learn position is not one).

    >>> kafka_positions({"events/0": 7, "replay": {"file": "a.jsonl", "line": 3}, "files": {}})
    {('events', 0): 7}
    """
    return {parse_position_key(k): v for k, v in positions.items() if "/" in k and k.rsplit("/", 1)[1].isdigit() and type(v) is int}


class SourceBatch(Protocol):
    """Consecutive records of one source partition."""

    partition: Hashable  # (topic, partition) for Kafka, REPLAY for files
    decoded: bool  # values are events (dicts, None for a bad record) rather than raw bytes

    def __len__(self) -> int: ...

    @property
    def values(self) -> list: ...

    @property
    def reasons(self) -> dict[int, str]:
        """Records known to be bad before decoding (index -> reason)."""
        ...

    @property
    def next_position(self) -> Any:
        """Where the partition resumes after this batch."""
        ...

    def take(self, count: int) -> tuple["SourceBatch", "SourceBatch"]:
        """The first `count` records and the rest, as two batches."""
        ...


class EventSource(Protocol):
    """Where a learning unit's events come from: files (`FileSource`), or batches pushed in (`FedSource`)."""

    def next_batch(self) -> SourceBatch | None: ...

    def position(self) -> dict: ...

    def seek(self, positions: dict) -> None: ...


# -- Kafka ---------------------------------------------------------------------------------------


def split_reasons(reasons: dict[int, str], count: int) -> tuple[dict[int, str], dict[int, str]]:
    """A batch's reasons (index -> why that record is bad) split as `take` splits the batch: the first `count`, the rest re-indexed.

    >>> split_reasons({0: "a", 3: "b"}, 2)
    ({0: 'a'}, {1: 'b'})
    """
    return {i: r for i, r in reasons.items() if i < count}, {i - count: r for i, r in reasons.items() if i >= count}


@dataclass
class KafkaBatch:
    """Records of one Kafka partition (raw values and their offsets), from one poll or a part of one."""

    partition: TopicPartition
    values: list
    offsets: list[int]
    decoded: bool = False
    reasons: dict = field(default_factory=dict)

    @classmethod
    def of(cls, batch: Batch) -> "KafkaBatch":
        return cls(batch.partition, batch.values, batch.offsets)

    def __len__(self) -> int:
        return len(self.values)

    @property
    def next_position(self) -> int:
        return self.offsets[-1] + 1

    def take(self, count: int) -> tuple["KafkaBatch", "KafkaBatch"]:
        """
        >>> head, tail = KafkaBatch(("t", 0), [b"a", b"b", b"c"], [4, 5, 6]).take(2)
        >>> head.offsets, tail.offsets, head.next_position
        ([4, 5], [6], 6)
        >>> head, tail = KafkaBatch(("t", 0), [{"x": 1}, None, None], [4, 5, 6], decoded=True, reasons={1: "bad", 2: "worse"}).take(2)
        >>> (head.decoded, head.reasons), (tail.decoded, tail.reasons)
        ((True, {1: 'bad'}), (True, {0: 'worse'}))
        """
        before, after = split_reasons(self.reasons, count)
        return (KafkaBatch(self.partition, self.values[:count], self.offsets[:count], self.decoded, before),
                KafkaBatch(self.partition, self.values[count:], self.offsets[count:], self.decoded, after))

    def source(self, index: int) -> tuple[TopicPartition, int]:
        return self.partition, self.offsets[index]


class KafkaSource:
    """The partitions a consumer is assigned, read poll by poll: the upstream of the daemon's `FedSource`s.

    It is not an `EventSource` of its own: the daemon (the scheduler of its learning units) polls
    it once per loop and pushes each partition's `KafkaBatch` into the `FedSource` of the unit that
    owns the partition; a unit's `seek` reaches back here (`FedSource.upstream`).
    """

    def __init__(self, consumer: EventConsumer, poll_timeout: float, max_records: int):
        self.consumer = consumer
        self.poll_timeout = poll_timeout
        self.max_records = max_records
        self.exhausted = False  # a topic has no end
        self.read: dict[TopicPartition, int] = {}

    def poll(self) -> list[KafkaBatch]:
        """Every batch one poll returns, one per partition at most (the daemon's loop works poll by poll)."""
        batches = [KafkaBatch.of(b) for b in self.consumer.poll_batches(self.poll_timeout, self.max_records)]
        for batch in batches:
            self.read[batch.partition] = batch.next_position
        return batches

    def position(self) -> dict:
        return {position_key(tp): offset for tp, offset in self.read.items()}

    def seek(self, positions: dict) -> None:
        """Seek each partition named among `positions` (checkpoint keys or `TopicPartition` keys)."""
        for key, offset in positions.items():
            tp = parse_position_key(key) if isinstance(key, str) else key
            self.consumer.seek(tp, offset)
            self.read[tp] = offset

    def forget(self, tps) -> None:
        """Partitions given up (revoked): their position is no longer this source's."""
        for tp in tps:
            self.read.pop(tp, None)


@dataclass
class EventBatch:
    """Events handed in by a caller, already decoded (serve's ``POST /v1/learn``): numbered from `before` on.

    >>> head, tail = EventBatch("serve", [{"x": 1}, {"x": 2}, {"x": 3}], before=10).take(2)
    >>> len(head), head.next_position, tail.before, tail.next_position
    (2, 12, 12, 13)
    """

    partition: str
    values: list
    before: int = 0  # how many events this partition received before the first of these
    decoded: bool = True
    reasons: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.values)

    @property
    def next_position(self) -> int:
        return self.before + len(self.values)

    def take(self, count: int) -> tuple["EventBatch", "EventBatch"]:
        before, after = split_reasons(self.reasons, count)
        return (EventBatch(self.partition, self.values[:count], self.before, self.decoded, before),
                EventBatch(self.partition, self.values[count:], self.before + count, self.decoded, after))


class FedSource:
    """A source whose batches are pushed in by whoever reads them (`push`), handed out by `next_batch`.

    The daemon polls one consumer for all its learning units and feeds each unit's partitions
    into that unit's `FedSource`; `seek` reaches the reader behind it (`upstream`, the daemon's
    `KafkaSource`), so a unit restored from a checkpoint re-reads from there. Without `upstream`
    (events handed in by a caller) `seek` only drops what is queued.

    >>> source = FedSource()
    >>> source.push(KafkaBatch(("t", 0), [b"a", b"b"], [4, 5]))
    >>> source.next_batch().offsets, source.position(), source.next_batch()
    ([4, 5], {'t/0': 6}, None)
    """

    def __init__(self, upstream: KafkaSource | None = None):
        self.upstream = upstream
        self.exhausted = False  # a fed source ends when its feeder stops
        self.read: dict = {}
        self._queue: deque = deque()

    def push(self, batch: SourceBatch) -> None:
        self._queue.append(batch)

    def next_batch(self) -> SourceBatch | None:
        if not self._queue:
            return None
        batch = self._queue.popleft()
        self.read[batch.partition] = batch.next_position
        return batch

    def position(self) -> dict:
        return {position_key(p) if isinstance(p, tuple) else str(p): v for p, v in self.read.items()}

    def seek(self, positions: dict) -> None:
        """Drop queued batches of the partitions in `positions` and seek the upstream reader there.

        Keys are partitions as batches name them or Kafka checkpoint keys (`partition_of`): a file path
        (stream-learn's partitions) is a partition of its own.

        >>> source = FedSource()
        >>> source.seek({"events/0": 7, "/data/a.jsonl": 3})
        >>> source.read
        {('events', 0): 7, '/data/a.jsonl': 3}
        """
        keys = {partition_of(k) for k in positions}
        self._queue = deque(b for b in self._queue if b.partition not in keys)
        for key, value in positions.items():
            self.read[partition_of(key)] = value
        if self.upstream is not None:
            self.upstream.seek(positions)


# -- files ---------------------------------------------------------------------------------------


@dataclass
class FileBatch:
    """Consecutive records of the replay (lines or rows, bad ones included as None with a reason)."""

    records: list[SourceRecord]
    files: list[InputFile]
    before: ReplayPosition  # the position just before the first record
    partition: str = REPLAY
    decoded: bool = True

    def __len__(self) -> int:
        return len(self.records)

    @property
    def values(self) -> list:
        return [record.event for record in self.records]

    @property
    def reasons(self) -> dict[int, str]:
        return {i: record.reason for i, record in enumerate(self.records) if record.event is None}

    @property
    def sources(self) -> list[tuple[str, int]]:
        files = self.files
        return [(files[record.file_index].name, record.line) for record in self.records]

    def source(self, index: int) -> tuple[str, int]:
        record = self.records[index]
        return self.files[record.file_index].name, record.line

    @property
    def next_position(self) -> ReplayPosition:
        return position_after(self.before, self.records, self.files)

    def take(self, count: int) -> tuple["FileBatch", "FileBatch"]:
        head = FileBatch(self.records[:count], self.files, self.before)
        return head, FileBatch(self.records[count:], self.files, head.next_position)


def position_after(before: ReplayPosition, records: list[SourceRecord], files: list[InputFile]) -> ReplayPosition:
    """The replay position after `records` (read from `before` on)."""
    if not records:
        return before
    last = records[-1]
    name = files[last.file_index].name
    if before.order == "time":
        lines = dict(before.lines)
        for record in records:
            lines[files[record.file_index].name] = record.line
        return ReplayPosition(file=name, line=last.line, lines=lines, files_done=len(lines), order="time")
    return ReplayPosition(file=name, line=last.line, files_done=last.file_index, order="file")


def progress_bar(show: bool | None, files: list[InputFile], unit: str = "line", total: int | None = None):
    """A tqdm bar on stderr over the inputs' records (`show` None: only on a terminal), or None."""
    import sys

    if not (show if show is not None else sys.stderr.isatty()):
        return None
    from tqdm import tqdm

    from online.readers import count_records

    return tqdm(total=total if total is not None else count_records(files), unit=unit, unit_scale=True, smoothing=0.1, file=sys.stderr, dynamic_ncols=True)


class FileSource:
    """The inputs of a replay in replay order (`online.readers.read_inputs`), as `FileBatch` objects.

    A batch holds at most `max_events` good events (and the bad lines met among them); with
    `every`, batches also end after every multiple of `every` good events read (report rows land
    exactly there). `lines` and `good` count what was handed out.
    """

    def __init__(self, files: list[InputFile], time_field: str | None = None, categorical=(), max_events: int = 1000,
                 every: int | None = None, progress=None):
        self.files = files
        self.time_field = time_field
        self.order = "time" if time_field else "file"
        self.categorical = categorical
        self.max_events = max_events
        self.every = every
        self.progress = progress
        self.lines = 0
        self.good = 0
        self.exhausted = False
        self._seek(None)  # from the start; `seek` to continue from a checkpoint's position

    def _seek(self, start: ReplayPosition | None) -> None:
        start = start or ReplayPosition(order=self.order)
        if start.order != self.order:
            raise UsageError(f"the checkpoint's replay position is in {start.order} order, this replay reads in {self.order} "
                             "order (events.time changed?): use another checkpoint URI")
        self._position = start
        self._records: Iterator[SourceRecord] | None = None
        self.exhausted = False

    def seek(self, positions: dict) -> None:
        """Continue after the replay position among `positions` (from the start without one).

        The position is a checkpoint's (``{"replay": {...}}``) or the learning loop's (a `ReplayPosition`).
        """
        position = positions.get(REPLAY)
        self._seek(position if isinstance(position, ReplayPosition) else ReplayPosition.from_json(position))

    def position(self) -> dict:
        return {REPLAY: self._position.to_json()}

    @property
    def replay_position(self) -> ReplayPosition:
        return self._position

    def next_batch(self) -> FileBatch | None:
        if self.exhausted:
            return None
        if self._records is None:
            self._records = read_inputs(self.files, self._position, self.time_field, self.categorical)
        limit = self.max_events
        if self.every:
            limit = min(limit, self.every - self.good % self.every)
        records: list[SourceRecord] = []
        good = 0
        for record in self._records:
            records.append(record)
            if record.event is not None:
                good += 1
                if good >= limit:
                    break
        else:
            self.exhausted = True
            self.close()
        if not records:
            return None
        batch = FileBatch(records, self.files, self._position)
        self._position = batch.next_position
        self.lines += len(records)
        self.good += good
        if self.progress is not None:
            self.progress.update(len(records))
        return batch

    def __iter__(self) -> Iterator[FileBatch]:
        return iter(self.next_batch, None)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
            self.progress = None
