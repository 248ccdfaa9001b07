"""Reading historical events from files: JSON lines, CSV, Parquet (and TFRecord), local, ``gs://`` or ``s3://``.

`expand_inputs` turns paths and glob patterns (``data/*.jsonl``, ``s3://bucket/events/2024-*.parquet``)
(matched by `core.storage.match`, which also names what a pattern means in a bucket)
into `InputFile` objects sorted by name; `read_file` yields one `SourceRecord` per line or row,
and `read_inputs` yields them for all files in replay order, starting after a `ReplayPosition`.

Formats are chosen by suffix: ``.jsonl``/``.json``/``.ndjson``, ``.csv``, ``.parquet``/``.pq``,
``.tfrecord``/``.tfrecords`` (tf.Example; needs tensorflow, imported only then). A trailing
``.gz`` is decompressed transparently (not for Parquet, which compresses inside).

Every record names its file and its 1-based line (JSON lines, CSV: the physical line, the header
being line 1; Parquet, TFRecord: the row/record number), so a bad line is reported where it is
and a replay resumes exactly after the last line consumed. A bad line is a record whose
`event` is None and whose `reason` says why (not JSON, not an object, wrong field count...).

Order. Without a time field, files are read one after the other by name, each from its first
line to its last. With a time field (``events.time``: epoch seconds or ISO 8601), the files
are merged by time with a k-way merge (`heapq.merge`) that keeps only one record per file in
memory: **each file must itself be sorted by time** (as hourly or daily partitions are). A file
whose time goes backwards stops the replay with `InputError` naming the line; equal times keep
file-name then line order. Bad lines and events without a usable time are reported as they are
met and do not move the merge.

>>> import pathlib, tempfile
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> _ = (folder / "a.jsonl").write_text('{"x": 1, "y": true}\\n[1]\\n{"x": 2, "y": false}\\n')
>>> files = expand_inputs([str(folder / "*.jsonl")])
>>> [(r.line, r.event, r.reason) for r in read_inputs(files)]
[(1, {'x': 1, 'y': True}, None), (2, None, 'not a JSON object but an array'), (3, {'x': 2, 'y': False}, None)]
>>> [r.line for r in read_inputs(files, ReplayPosition(file=files[0].name, line=2))]
[3]
"""

from __future__ import annotations

import csv
import gzip
import heapq
import io
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, NamedTuple

import orjson

from core.eventtime import event_time
from core import storage
from core.errors import RiverbeamError, UsageError
from online.events import json_type

FORMATS = {
    ".jsonl": "json",
    ".ndjson": "json",
    ".json": "json",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".tfrecord": "tfrecord",
    ".tfrecords": "tfrecord",
}
PARQUET_BATCH_ROWS = 4096


class InputError(RiverbeamError):
    """An input cannot be read as a whole (missing, unreadable, out of time order)."""


class SourceRecord(NamedTuple):
    """One line or row of one input: where it is, and the event or the reason it is bad."""

    file_index: int
    line: int
    event: dict | None
    reason: str | None = None


@dataclass(frozen=True)
class InputFile:
    """One input file: its name (a local path, ``gs://`` or ``s3://`` URI), format and compression."""

    name: str
    format: str
    compressed: bool = False
    size: int | None = None

    def open_binary(self) -> io.BufferedIOBase:
        """The file's bytes (decompressed when the name ends with ``.gz``)."""
        try:
            raw = storage.open_binary(self.name)
        except storage.ObjectNotFound:
            raise InputError(f"{self.name}: no such file") from None
        except storage.StorageError as error:
            raise InputError(f"{self.name}: {error}") from None
        return gzip.GzipFile(fileobj=raw, mode="rb") if self.compressed else raw


@dataclass
class ReplayPosition:
    """Where a replay stands: every line up to and including it has been consumed.

    Stored in checkpoints as ``positions["replay"]`` (`to_json` / `from_json`). In file order,
    ``file`` and ``line`` name the last line consumed; every file whose name sorts before
    ``file`` is done (new files that sort after it are read on the next run). In time order,
    ``lines`` maps each started file to its last consumed line. ``files_done`` counts files
    read to their end, for people reading the checkpoint.

    >>> ReplayPosition.from_json(ReplayPosition(file="a.jsonl", line=7, files_done=1).to_json())
    ReplayPosition(file='a.jsonl', line=7, lines={}, files_done=1, order='file')
    """

    file: str | None = None
    line: int = 0
    lines: dict[str, int] = field(default_factory=dict)
    files_done: int = 0
    order: str = "file"

    def to_json(self) -> dict:
        """Plain JSON for a checkpoint's ``positions["replay"]``."""
        data = {"order": self.order, "file": self.file, "line": self.line, "files_done": self.files_done}
        if self.order == "time":
            data["lines"] = dict(self.lines)
        return data

    @classmethod
    def from_json(cls, data: dict | None) -> "ReplayPosition | None":
        """The position stored by `to_json` (None for no position)."""
        if not data:
            return None
        return cls(
            file=data.get("file"),
            line=int(data.get("line") or 0),
            lines={str(k): int(v) for k, v in (data.get("lines") or {}).items()},
            files_done=int(data.get("files_done") or 0),
            order=data.get("order", "file"),
        )

    def consumed(self, name: str) -> int:
        """How many lines of file `name` are consumed (-1: the whole file, it sorts before `file`)."""
        if self.order == "time":
            return self.lines.get(name, 0)
        if self.file is None:
            return 0
        if name < self.file:
            return -1
        return self.line if name == self.file else 0


# -- finding the files -------------------------------------------------------------------------


def input_format(name: str, forced: str | None = None) -> tuple[str, bool]:
    """The format and whether the file is gzip-compressed, from its suffix.

    >>> input_format("gs://b/events/part-0001.jsonl.gz")
    ('json', True)
    >>> input_format("data.txt")
    Traceback (most recent call last):
    ...
    core.errors.UsageError: data.txt: unknown input format (use a suffix among .csv, .json, .jsonl, .ndjson, .parquet, .pq, .tfrecord, .tfrecords, optionally with .gz, or --format)
    """
    base = name[:-3] if name.endswith(".gz") else name
    compressed = base != name
    if forced is not None:
        if forced not in set(FORMATS.values()):
            raise UsageError(f"unknown format {forced!r} (choose among {', '.join(sorted(set(FORMATS.values())))})")
        return forced, compressed
    suffix = os.path.splitext(base)[1].lower()
    if suffix not in FORMATS:
        raise UsageError(
            f"{name}: unknown input format (use a suffix among {', '.join(sorted(FORMATS))}, optionally with .gz, or --format)"
        )
    fmt = FORMATS[suffix]
    if fmt == "parquet" and compressed:
        raise UsageError(f"{name}: gzip around Parquet is not supported (Parquet compresses inside)")
    return fmt, compressed


def expand_inputs(patterns: Iterable[str], forced_format: str | None = None) -> list[InputFile]:
    """The files matching paths, folders or glob patterns (local, ``gs://``, ``s3://``), sorted by name, without repeats.

    A pattern matching nothing is a `UsageError` (a typo should not replay nothing).
    """
    found: dict[str, InputFile] = {}
    for pattern in patterns:
        try:
            matches = storage.match(pattern)
        except storage.InvalidUri:
            raise
        except storage.StorageError as error:
            raise InputError(f"{pattern}: {error}") from None
        if not matches:
            raise UsageError(f"--input {pattern}: no file matches")
        for name, size in matches:
            fmt, compressed = input_format(name, forced_format)
            found[name] = InputFile(name, fmt, compressed, size)
    return [found[name] for name in sorted(found)]


# -- reading one file --------------------------------------------------------------------------


def read_file(source: InputFile, file_index: int = 0, skip: int = 0, categorical: Iterable[str] = ()) -> Iterator[SourceRecord]:
    """Yield the records of one file after its first `skip` lines (skipped lines are not parsed)."""
    if skip < 0:
        return
    if source.format == "json":
        yield from _read_json_lines(source, file_index, skip)
    elif source.format == "csv":
        yield from _read_csv(source, file_index, skip, frozenset(categorical))
    elif source.format == "parquet":
        yield from _read_parquet(source, file_index, skip)
    else:
        yield from _read_tfrecord(source, file_index, skip)


def _read_json_lines(source: InputFile, file_index: int, skip: int) -> Iterator[SourceRecord]:
    loads, JSONDecodeError = orjson.loads, orjson.JSONDecodeError
    with source.open_binary() as stream:
        line = 0
        try:
            for raw in stream:
                line += 1
                if line <= skip:
                    continue
                try:
                    event = loads(raw)
                except JSONDecodeError as error:
                    if not raw.strip():
                        continue  # blank lines are not events
                    yield SourceRecord(file_index, line, None, f"not JSON: {error}")
                    continue
                if type(event) is dict:
                    yield SourceRecord(file_index, line, event, None)
                else:
                    yield SourceRecord(file_index, line, None, f"not a JSON object but {json_type(event)}")
        except (OSError, EOFError) as error:  # truncated gzip, network
            raise InputError(f"{source.name}: read failed after line {line}: {error}") from None


_CSV_WORDS = {"true": True, "false": False, "": None}


def csv_value(text: str) -> Any:
    """A CSV cell as a JSON value: integer, number, boolean, null (empty) or the text itself.

    >>> [csv_value(v) for v in ("3", "0.25", "True", "", "abc", "1e3")]
    [3, 0.25, True, None, 'abc', 1000.0]
    """
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        pass
    word = _CSV_WORDS.get(text.lower(), text)
    return word


def _utf8_row(row: list[str]) -> None:
    """Raise `UnicodeError` naming the first byte that is not UTF-8 in a row decoded with ``surrogateescape``.

    >>> _utf8_row(["a", "b" + chr(0xDCFF)])
    Traceback (most recent call last):
    ...
    UnicodeError: not UTF-8: byte 0xff in field 2
    """
    try:
        "".join(row).encode("utf-8")
    except UnicodeEncodeError:
        for index, cell in enumerate(row):
            for char in cell:
                if "\udc80" <= char <= "\udcff":
                    raise UnicodeError(f"not UTF-8: byte 0x{ord(char) - 0xDC00:02x} in field {index + 1}") from None
        raise UnicodeError("not UTF-8") from None


def _read_csv(source: InputFile, file_index: int, skip: int, categorical: frozenset) -> Iterator[SourceRecord]:
    with source.open_binary() as stream:
        # A byte that is not UTF-8 spoils one row, not the file: decoded as a surrogate, found per row below.
        text = io.TextIOWrapper(stream, encoding="utf-8", errors="surrogateescape", newline="")
        reader = csv.reader(text)
        try:
            header = next(reader)
            _utf8_row(header)
        except StopIteration:
            return
        except (csv.Error, UnicodeError) as error:
            raise InputError(f"{source.name}: line 1: unreadable CSV header: {error}") from None
        if len(set(header)) != len(header):
            raise InputError(f"{source.name}: line 1: the CSV header repeats a column name")
        width = len(header)
        keep_text = [name in categorical for name in header]
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except (csv.Error, UnicodeDecodeError) as error:
                yield SourceRecord(file_index, reader.line_num, None, f"unreadable CSV row: {error}")
                continue
            line = reader.line_num
            if line <= skip:
                continue
            if not row:
                continue
            try:
                _utf8_row(row)
            except UnicodeError as error:
                yield SourceRecord(file_index, line, None, f"unreadable CSV row: {error}")
                continue
            if len(row) != width:
                yield SourceRecord(file_index, line, None, f"CSV row has {len(row)} fields, the header has {width}")
                continue
            yield SourceRecord(
                file_index, line, {name: (value if text_kept else csv_value(value)) for name, value, text_kept in zip(header, row, keep_text)}, None
            )


def _read_parquet(source: InputFile, file_index: int, skip: int) -> Iterator[SourceRecord]:
    import pyarrow
    import pyarrow.parquet as pq

    with source.open_binary() as stream:
        try:
            parquet = pq.ParquetFile(stream)
        except (pyarrow.ArrowException, OSError) as error:
            raise InputError(f"{source.name}: not a readable Parquet file: {error}") from None
        row = 0
        group_rows = [parquet.metadata.row_group(i).num_rows for i in range(parquet.metadata.num_row_groups)]
        groups = []
        for i, rows in enumerate(group_rows):  # whole row groups before the position are not even read
            if not groups and row + rows <= skip:
                row += rows
            else:
                groups.append(i)
        try:
            for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=groups):
                rows = batch.to_pylist()
                for event in rows:
                    row += 1
                    if row > skip:
                        yield SourceRecord(file_index, row, event, None)
        except (pyarrow.ArrowException, OSError) as error:
            raise InputError(f"{source.name}: read failed after row {row}: {error}") from None


def _read_tfrecord(source: InputFile, file_index: int, skip: int) -> Iterator[SourceRecord]:
    try:
        import tensorflow as tf
    except ImportError:
        raise UsageError(f"{source.name}: TFRecord input needs tensorflow (pip install 'riverbeam[beam]')") from None
    dataset = tf.data.TFRecordDataset(source.name, compression_type="GZIP" if source.compressed else "")
    line = 0
    try:
        for raw in dataset.as_numpy_iterator():
            line += 1
            if line <= skip:
                continue
            try:
                example = tf.train.Example.FromString(raw)
            except Exception as error:  # google.protobuf.message.DecodeError
                yield SourceRecord(file_index, line, None, f"not a tf.Example: {error}")
                continue
            yield SourceRecord(file_index, line, example_to_event(example), None)
    except tf.errors.OpError as error:
        raise InputError(f"{source.name}: read failed after record {line}: {error.message}") from None


def example_to_event(example) -> dict:
    """A tf.Example as an event: one-value features become scalars (bytes decoded as UTF-8), others lists."""
    event = {}
    for name, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        values = list(getattr(feature, kind).value) if kind else []
        if kind == "bytes_list":
            values = [v.decode("utf-8", "replace") for v in values]
        event[name] = values[0] if len(values) == 1 else (None if not values else values)
    return event


# -- all the files, in order -------------------------------------------------------------------


def read_inputs(
    files: list[InputFile],
    position: ReplayPosition | None = None,
    time_field: str | None = None,
    categorical: Iterable[str] = (),
) -> Iterator[SourceRecord]:
    """All records of `files` in replay order (see the module), after `position` when given."""
    position = position or ReplayPosition(order="time" if time_field else "file")
    if time_field is None:
        for index, source in enumerate(files):
            yield from read_file(source, index, position.consumed(source.name), categorical)
        return
    streams = [_timed(source, index, read_file(source, index, position.consumed(source.name), categorical), time_field)
               for index, source in enumerate(files)]
    for _, _, _, record in heapq.merge(*streams):
        yield record


def _timed(source: InputFile, index: int, records: Iterator[SourceRecord], time_field: str):
    """Merge keys ``(time, file index, line, record)``; a bad record keeps the file's last time."""
    last = float("-inf")
    for record in records:
        if record.event is not None:
            raw = record.event.get(time_field)
            try:
                moment = event_time(raw)
            except ValueError:
                reason = f"time field '{time_field}' is missing" if raw is None else f"time field '{time_field}' is not epoch seconds or ISO 8601: {raw!r}"
                yield last, index, record.line, record._replace(event=None, reason=reason)
                continue
            if moment < last:
                raise InputError(
                    f"{source.name}: line {record.line}: time goes backwards ({raw!r} after an event at {last}); "
                    "time order merges files that are each sorted by time: sort this file, or unset events.time to replay in file order"
                )
            last = moment
        yield last, index, record.line, record


def count_records(files: list[InputFile]) -> int | None:
    """How many lines or rows the inputs hold, when it is cheap to know (local files, Parquet metadata); else None."""
    total = 0
    for source in files:
        if source.format == "parquet":
            import pyarrow.parquet as pq

            with source.open_binary() as stream:
                total += pq.ParquetFile(stream).metadata.num_rows
        elif source.format in ("json", "csv") and not source.compressed and storage.is_local(source.name):
            with open(source.name, "rb") as handle:
                lines = sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))
            total += lines - (1 if source.format == "csv" else 0)
        else:
            return None
    return total
