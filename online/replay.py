"""Replaying historical events from files through the learner that serves the stream.

Modes (chosen by `online.replay_job.run_replay`):

* **learn** — continue from the latest checkpoint (or start empty), feed `online.learner.Learner`
  in replay order, write a checkpoint every ``checkpoint.every_events`` events (or
  ``every_seconds``) and at the end. The checkpoint holds the same statistics the daemon writes
  (``events_seen``, ``events_learned``, ``metrics``, ``positions``) and the replay position as
  ``positions["replay"]`` (see `online.readers.ReplayPosition`); other positions (Kafka offsets
  of a daemon's checkpoint used as a warm start) are kept as they were. After a crash (even
  ``kill -9``) the next run continues from the last checkpoint, so the result equals one
  uninterrupted run. Bad lines met after the last checkpoint are reported again.
  Learn mode trains one model (``model:``); compare candidates with evaluate, then learn the winner.
* **evaluate** — progressive validation only, nothing checkpointed. Several candidates
  (``models:``) learn in one pass, each from its own copy of each event (the learner consumes
  the events it is given). Writes a report directory (``--report``): ``metrics.csv`` and
  ``metrics.json`` (a row per candidate every ``report_every`` events read, and at the end; by
  default about `REPORT_POINTS` rows per candidate, the inputs' records counted once),
  ``learning_curve.png`` (matplotlib, Agg backend; one panel per metric, a line per candidate)
  and a leaderboard sorted by the headline metric (the first candidate's first metric).
* **backfill** — produce each event as a JSON record to a Kafka topic, at most ``rate`` events
  per second. Records carry headers ``riverbeam-file`` and ``riverbeam-line`` and all go to ONE
  partition (``partition``, 0 by default), in replay order. On start, the last record of that
  partition names the last line produced, and the backfill continues after it: an interrupted
  backfill, even killed with ``kill -9``, produces every event exactly once provided nothing else
  writes to that partition (the producer is idempotent and ordered, so the partition never holds
  a record whose predecessors are missing). A topic whose last record lacks the headers is refused.
  (`online.backfill`.)
* **search** (``search > 0`` in evaluate mode) — Optuna trials over the ranges of a `SearchConfig`,
  progressive validation as the objective; ``search.parallel`` trials share one pass over the data.
  (`online.replay_search`; reports: `online.replay_report`.)

``dry_run`` validates and counts: every line is parsed and checked by the learner's event
reader; nothing is learned, produced or written.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Iterator

import orjson

from online.config import ModelConfig, ReplayJobConfig
from online.events import EventError
from online.events import load_feature_transform
from online.learner import Learner
from online.dead_letters import DeadLetterRecord
from online.persistence import Cadence, Checkpointer, LearnerSpec, checkpoint_store, open_checkpoint_store, resume
from online.readers import InputFile, ReplayPosition, SourceRecord, count_records, expand_inputs, read_inputs
from online.replay_report import format_leaderboard, write_report_dir
from core.errors import ConfigError, RiverbeamError, UsageError

log = logging.getLogger(__name__)

MODES = ("learn", "evaluate", "backfill")
CHUNK_EVENTS = 1000
REPORT_POINTS = 100  # report rows per candidate when --report-every is not given
FILE_HEADER = "riverbeam-file"
LINE_HEADER = "riverbeam-line"


class ReplayError(RiverbeamError):
    """The replay stopped: too many bad lines, a topic it must not append to, ..."""


# -- options and results -----------------------------------------------------------------------


@dataclass
class ReplayOptions:
    """What `riverbeam replay` was asked to do, beyond the job's configuration."""

    inputs: list[str]
    mode: str = "learn"
    input_format: str | None = None
    checkpoint_uri: str | None = None
    checkpoint_every: int | None = None
    report_dir: str | None = None
    report_every: int | None = None  # None: about REPORT_POINTS rows (see report_step)
    errors_path: str | None = None
    max_errors: int | None = None
    dry_run: bool = False
    topic: str | None = None
    bootstrap_servers: str | None = None
    kafka_client: str | None = None
    partition: int = 0
    rate: float | None = None
    search: int = 0
    progress: bool | None = None  # None: only on a terminal
    signing_key_env: str | None = None  # overrides checkpoint.signing_key_env (default RIVERBEAM_CHECKPOINT_KEY)


@dataclass
class ReplayResult:
    """What a replay did: counts, the leaderboard, the checkpoint written, the report."""

    mode: str
    files: int = 0
    lines: int = 0
    events: int = 0
    bad_lines: int = 0
    produced: int = 0
    seconds: float = 0.0
    leaderboard: list[dict] = field(default_factory=list)
    checkpoint: dict | None = None
    position: dict | None = None
    report_dir: str | None = None
    search: dict | None = None
    first_errors: list[dict] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)

    def summary(self) -> str:
        """A few lines for people: counts, speed, leaderboard, where things went."""
        rate = self.lines / self.seconds if self.seconds > 0 else 0.0
        lines = [f"{self.mode}: {self.files} file(s), {self.lines} line(s) read, {self.events} event(s), "
                 f"{self.bad_lines} bad, {self.seconds:.1f} s ({rate:,.0f} lines/s)"]
        if self.mode == "backfill":
            lines.append(f"produced {self.produced} record(s)")
        for error in self.first_errors:
            lines.append(f"  bad: {error['file']}: line {error['line']}: {error['reason']}")
        if self.leaderboard:
            lines.append(format_leaderboard(self.leaderboard))
        if self.checkpoint:
            lines.append(f"checkpoint {self.checkpoint['id']} ({self.checkpoint['events_seen']} events seen)")
        if self.search:
            lines.append(f"best trial {self.search['best']['trial']}: {json.dumps(self.search['best']['params'])}")
        if self.report_dir:
            lines.append(f"report in {self.report_dir}")
        return "\n".join(lines)


# -- bad lines ---------------------------------------------------------------------------------


class ErrorLog:
    """Bad lines: appended to a JSON-lines file of dead-letter records (`online.dead_letters`:
    source ``{file, line}``, `reason`, and `model` when a single candidate rejected the event),
    counted, and fatal past `max_errors`.

    In learn mode the file follows the checkpoints: `flush` makes it durable and returns its size,
    which the checkpoint records; a resumed replay first cuts the file back to that size
    (`resume_at`), so the bad lines it meets again after a crash are written once.
    """

    def __init__(self, path: str | None, max_errors: int | None, keep_first: int = 5, follow_checkpoints: bool = False):
        self.path = path
        self.max_errors = max_errors
        self.follow_checkpoints = follow_checkpoints  # held in memory until `flush` (each checkpoint): a crash writes nothing twice
        self._held: list[bytes] = []
        self.count = 0
        self.first: list[dict] = []
        self.keep_first = keep_first
        self._handle = None

    def add(self, file: str, line: int, reason: str, model: str | None = None) -> None:
        record = {"file": file, "line": line, "reason": reason}
        if model is not None:
            record["model"] = model
        dead_letter = DeadLetterRecord.from_file(file, line, None, reason, model=model)
        self.count += 1
        if len(self.first) < self.keep_first:
            self.first.append(record)
        if self.path is not None:
            if self._handle is None:
                os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
                self._handle = open(self.path, "ab")
            if self.follow_checkpoints:
                self._held.append(dead_letter.to_json(max_bytes=None) + b"\n")
            else:
                self._handle.write(dead_letter.to_json(max_bytes=None) + b"\n")
        if self.max_errors is not None and self.count > self.max_errors:
            self.close()
            where = f"; all are in {self.path}" if self.path else ""
            raise ReplayError(
                f"stopped: {self.count} bad lines, more than --max-errors {self.max_errors} "
                f"(last: {file}: line {line}: {reason}){where}"
            )

    def flush(self) -> int | None:
        """Make every record written so far durable; the file's size (None without a file)."""
        if self.path is None:
            return None
        if self._handle is not None:
            self._handle.write(b"".join(self._held))
            self._held = []
            self._handle.flush()
            os.fsync(self._handle.fileno())
            return self._handle.tell()
        return os.path.getsize(self.path) if os.path.exists(self.path) else 0

    def resume_at(self, size: int | None) -> None:
        """Cut the file back to `size` bytes (what the checkpoint resumed from had made durable)."""
        if self.path is None or size is None or not os.path.exists(self.path) or os.path.getsize(self.path) <= size:
            return
        self.close()
        with open(self.path, "r+b") as handle:
            handle.truncate(size)

    def close(self) -> None:
        """Close the errors file (it reopens in append mode on the next bad line)."""
        if self._handle is not None:
            self._handle.write(b"".join(self._held))
            self._held = []
            self._handle.close()
            self._handle = None


# -- candidates --------------------------------------------------------------------------------


@dataclass
class Candidate:
    """One model learning in the replay: its display name and its learner."""

    name: str
    learner: Learner


def candidate_names(models: list[ModelConfig]) -> list[str]:
    """Unique display names: the configured `name`, else the pipeline's class names.

    >>> m = ModelConfig(pipeline=[{"preprocessing.StandardScaler": {}}, {"linear_model.LogisticRegression": {}}])
    >>> candidate_names([m, m])
    ['StandardScaler|LogisticRegression', 'StandardScaler|LogisticRegression #2']
    """
    names = []
    for model in models:
        name = model.name or "|".join(next(iter(step)).rpartition(".")[2] for step in model.pipeline)
        unique, n = name, 1
        while unique in names:
            n += 1
            unique = f"{name} #{n}"
        names.append(unique)
    return names


def load_transform(job: ReplayJobConfig):
    """The fitted feature transform of ``features.transform_output``, or None."""
    return load_feature_transform(job.features)


def leaderboard(candidates: list[Candidate]) -> list[dict]:
    """Candidates ranked by the headline metric (the first candidate's first metric; best first)."""
    headline_metric = candidates[0].learner.state.metrics[0]
    headline, better = next(iter(candidates[0].learner.metric_values())), headline_metric.bigger_is_better

    def sort_key(c: Candidate):
        value = c.learner.metric_values().get(headline)
        if value is None:
            return (1, 0.0)
        return (0, -value if better else value)

    rows = []
    for rank, candidate in enumerate(sorted(candidates, key=sort_key), start=1):
        state = candidate.learner.state
        rows.append({"rank": rank, "model": candidate.name, "events": state.events_seen, "learned": state.events_learned,
                     "rejected": state.events_rejected, "metrics": candidate.learner.metric_values()})
    return rows


# -- one pass over the inputs ------------------------------------------------------------------


class Pass:
    """Reads the inputs once, in chunks, keeping the position and reporting bad lines.

    `chunks()` yields lists of good `SourceRecord` objects; after each chunk, `position()` is the
    position just after the last line consumed (bad lines included). Chunks end at every
    multiple of `every` good records, so reports land exactly there.
    """

    def __init__(self, files: list[InputFile], errors: ErrorLog, time_field: str | None, start: ReplayPosition | None,
                 categorical=(), chunk: int = CHUNK_EVENTS, every: int | None = None, progress=None):
        self.files = files
        self.errors = errors
        self.time_field = time_field
        self.order = "time" if time_field else "file"
        self.start = start or ReplayPosition(order=self.order)
        if self.start.order != self.order:
            raise UsageError(f"the checkpoint's replay position is in {self.start.order} order, this replay reads in {self.order} "
                             "order (events.time changed?): use another checkpoint URI")
        self.categorical = categorical
        self.chunk = chunk
        self.every = every or chunk
        self.progress = progress
        self.lines = 0
        self.good = 0
        self.last: SourceRecord | None = None
        self.consumed = {name: line for name, line in self.start.lines.items()}

    def position(self) -> ReplayPosition:
        """The position after the last line consumed (the start position before any)."""
        if self.last is None:
            return self.start
        if self.order == "time":
            return ReplayPosition(file=self.files[self.last.file_index].name, line=self.last.line, lines=dict(self.consumed),
                                  files_done=len(self.consumed), order="time")
        return ReplayPosition(file=self.files[self.last.file_index].name, line=self.last.line, files_done=self.last.file_index, order="file")

    def _advance(self, last: SourceRecord, good: int, lines: int) -> None:
        """Account for `lines` more lines read, up to `last`, `good` of all lines so far being events."""
        self.last, self.good, self.lines = last, good, self.lines + lines
        if self.progress is not None:
            self.progress.update(lines)

    def chunks(self) -> Iterator[list[SourceRecord]]:
        files, errors, consumed, time_order = self.files, self.errors, self.consumed, self.time_field is not None
        chunk_size, every = self.chunk, self.every
        records: list[SourceRecord] = []
        lines = 0  # lines consumed since the last chunk was handed out
        good = self.good
        previous = None
        try:
            for record in read_inputs(files, self.start, self.time_field, self.categorical):
                if record.event is None:
                    if records:  # learn what precedes the bad line first: errors are reported in line order
                        self._advance(previous, good, lines)
                        lines = 0
                        yield records
                        records = []
                    if time_order:
                        consumed[files[record.file_index].name] = record.line
                    self._advance(record, good, lines + 1)
                    previous, lines = record, 0
                    errors.add(files[record.file_index].name, record.line, record.reason)
                    continue
                lines += 1
                previous = record
                if time_order:
                    consumed[files[record.file_index].name] = record.line
                records.append(record)
                good += 1
                if len(records) >= chunk_size or good % every == 0:
                    self._advance(record, good, lines)
                    lines = 0
                    yield records
                    records = []
            if records:
                self._advance(previous, good, lines)
                yield records
        finally:
            if self.progress is not None:
                self.progress.close()

    def learn(self, candidates: list[Candidate], records: list[SourceRecord]) -> None:
        """Feed one chunk to every candidate, each on its own copy of the events (the last gets the originals)."""
        files, errors = self.files, self.errors
        rejected: set[int] = set()

        def first_error(index: int, error: EventError) -> None:
            rejected.add(index)
            record = records[index]
            errors.add(files[record.file_index].name, record.line, str(error))

        for i, candidate in enumerate(candidates):
            if i == 0:
                on_error = first_error
            else:
                def on_error(index: int, error: EventError, name=candidate.name) -> None:
                    if index not in rejected:
                        record = records[index]
                        errors.add(files[record.file_index].name, record.line, str(error), model=name)
            if i == len(candidates) - 1:
                events = [record.event for record in records]
            else:
                events = [dict(record.event) for record in records]
            candidate.learner.process_many(events, on_error=on_error)


def report_step(report_every: int | None, total: int | None) -> int:
    """Events between report rows: `report_every` when given, else about `REPORT_POINTS` rows over
    `total` records (1000 when the total is unknown: compressed or remote inputs).

    >>> report_step(None, 1250), report_step(None, 50), report_step(None, None), report_step(300, 1250)
    (13, 1, 1000, 300)
    """
    if report_every is not None:
        return max(1, report_every)
    if total is None:
        return CHUNK_EVENTS
    return max(1, -(-total // REPORT_POINTS))


def _progress(options: ReplayOptions, files: list[InputFile], unit: str = "line", total: int | None = None):
    show = options.progress if options.progress is not None else sys.stderr.isatty()
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=total if total is not None else count_records(files), unit=unit, unit_scale=True, smoothing=0.1, file=sys.stderr, dynamic_ncols=True)


# -- modes -------------------------------------------------------------------------------------


def dry_run(job: ReplayJobConfig, files: list[InputFile], options: ReplayOptions) -> ReplayResult:
    """Parse every line and check every event with each candidate's event reader; learn and write nothing."""
    started = time.monotonic()
    errors = ErrorLog(None, options.max_errors)
    readers = [Learner(model, job.events).reader for model in job.candidates]
    replay = Pass(files, errors, job.events.time, None, job.events.categorical, progress=_progress(options, files))
    events = 0
    for records in replay.chunks():
        for record in records:
            try:
                for reader in readers:
                    reader.split(dict(record.event))
            except EventError as error:
                errors.add(files[record.file_index].name, record.line, str(error))
                continue
            events += 1
    return ReplayResult("dry-run", len(files), replay.lines, events, errors.count, seconds=time.monotonic() - started,
                        first_errors=errors.first)


def _headline_rows(candidates: list[Candidate], lines: int) -> list[dict]:
    return [{"events": c.learner.state.events_seen, "lines": lines, "model": c.name, **c.learner.metric_values()} for c in candidates]


def evaluate(job: ReplayJobConfig, files: list[InputFile], options: ReplayOptions, models: list[ModelConfig] | None = None,
             write_report: bool = True) -> ReplayResult:
    """Progressive validation of every candidate in one pass; a report directory when asked."""
    started = time.monotonic()
    models = models if models is not None else job.candidates
    transform = load_transform(job)
    candidates = [Candidate(name, Learner(model, job.events, transform)) for name, model in zip(candidate_names(models), models)]
    if options.checkpoint_uri:  # evaluate a checkpointed model on new data: read, never written
        latest = _checkpoint_store(job, options.checkpoint_uri, options).load_latest()
        if latest is not None:
            if len(candidates) != 1:
                raise UsageError("--checkpoint-uri in evaluate mode starts one model from its checkpoint: configure one model")
            candidates[0].learner = LearnerSpec(models[0], job.events, job.features, transform).restore(latest)
    errors = ErrorLog(options.errors_path, options.max_errors)
    total = count_records(files) if options.report_every is None else None  # counted once: the report step and the progress bar
    every = report_step(options.report_every, total)
    replay = Pass(files, errors, job.events.time, None, job.events.categorical, every=every, progress=_progress(options, files, total=total))
    rows: list[dict] = []
    try:
        for records in replay.chunks():
            replay.learn(candidates, records)
            if replay.good % every == 0:
                rows += _headline_rows(candidates, replay.lines)
    finally:
        errors.close()
    if not rows or rows[-1]["lines"] != replay.lines:
        rows += _headline_rows(candidates, replay.lines)
    board = leaderboard(candidates)
    result = ReplayResult("evaluate", len(files), replay.lines, replay.good, errors.count, seconds=time.monotonic() - started,
                          leaderboard=board, first_errors=errors.first)
    if options.report_dir and write_report:
        write_report_dir(options.report_dir, rows, board, [c.learner.report() | {"model": c.name} for c in candidates])
        result.report_dir = options.report_dir
    result.rows = rows
    return result


def _checkpoint_store(job: ReplayJobConfig, uri: str, options: ReplayOptions):
    """The store at `uri`: keep and signing key from the ``checkpoint:`` section, else ``--signing-key-env`` or its default."""
    if job.checkpoint is None:
        return checkpoint_store(uri, options.signing_key_env)
    config = job.checkpoint if options.signing_key_env is None else job.checkpoint.model_copy(update={"signing_key_env": options.signing_key_env})
    return open_checkpoint_store(config, uri)


def learn(job: ReplayJobConfig, files: list[InputFile], options: ReplayOptions) -> ReplayResult:
    """Learn one model from the inputs, checkpointing as it goes and at the end; resume from the latest checkpoint."""
    started = time.monotonic()
    if job.model is None:
        raise UsageError("learn mode trains one model: set model: (compare several candidates with --mode evaluate)")
    uri = options.checkpoint_uri or (job.checkpoint.uri if job.checkpoint else None)
    if uri is None:
        raise UsageError("learn mode writes checkpoints: set checkpoint.uri in the configuration or pass --checkpoint-uri")
    if options.checkpoint_every is not None and options.checkpoint_every <= 0:
        raise UsageError("--checkpoint-every must be positive")
    store = _checkpoint_store(job, uri, options)
    cadence = Cadence.from_config(job.checkpoint, every_events=options.checkpoint_every)
    every_events = cadence.every_events
    spec = LearnerSpec(job.model, job.events, job.features, load_transform(job))
    learner, latest = resume(store, spec)  # refuses a checkpoint of another model/events/features configuration
    checkpointer = Checkpointer(store, learner, spec, cadence, restored=latest)  # keeps other jobs' positions
    start = None
    if latest is not None:
        start = ReplayPosition.from_json(latest.positions.get("replay"))
        if start is not None and start.order == "file" and start.file and start.file not in {f.name for f in files}:
            log.warning("the checkpoint's replay position names %s, which is not among the inputs; files sorting before it are skipped", start.file)
    candidate = Candidate(candidate_names([job.model])[0], learner)
    errors = ErrorLog(options.errors_path, options.max_errors, follow_checkpoints=True)
    if latest is not None and options.errors_path is not None:
        written = latest.manifest.get("extra", {}).get("errors_file") or {}
        if written.get("path") == os.path.abspath(options.errors_path):
            errors.resume_at(written.get("bytes"))  # bad lines past the checkpoint are met, and written, again
    every = max(1, min(report_step(options.report_every, count_records(files) if options.report_every is None else None), every_events)) if options.report_dir else every_events
    replay = Pass(files, errors, job.events.time, start, job.events.categorical, chunk=min(CHUNK_EVENTS, every_events),
                  every=every, progress=_progress(options, files))
    rows: list[dict] = []

    def save() -> None:
        extra = {"source": "replay", "events_rejected": learner.state.events_rejected, "inputs": len(files)}
        if options.errors_path is not None:  # the errors file is durable up to here with each checkpoint
            extra["errors_file"] = {"path": os.path.abspath(options.errors_path), "bytes": errors.flush()}
        checkpointer.checkpoint({"replay": replay.position().to_json()}, extra)

    try:
        for records in replay.chunks():
            replay.learn([candidate], records)
            checkpointer.add(len(records))
            if options.report_dir and replay.good % every == 0:
                rows += _headline_rows([candidate], replay.lines)
            if checkpointer.due():
                save()
        if replay.lines:
            save()  # skipped when nothing changed since the last one
    finally:
        errors.close()
    manifest = checkpointer.last_manifest if checkpointer.written else None
    board = leaderboard([candidate])
    result = ReplayResult("learn", len(files), replay.lines, replay.good, errors.count, seconds=time.monotonic() - started,
                          leaderboard=board, position=replay.position().to_json(), first_errors=errors.first)
    if manifest is not None:
        result.checkpoint = {k: manifest[k] for k in ("id", "events_seen", "events_learned", "metrics", "positions")}
    if options.report_dir:
        if not rows or rows[-1]["lines"] != replay.lines:
            rows += _headline_rows([candidate], replay.lines)
        write_report_dir(options.report_dir, rows, board, [learner.report() | {"model": candidate.name}])
        result.report_dir = options.report_dir
    return result


__all__ = [
    "ReplayError", "ReplayOptions", "ReplayResult", "ErrorLog", "Pass", "Candidate",
    "learn", "evaluate", "dry_run", "leaderboard", "format_leaderboard", "write_report_dir", "FILE_HEADER", "LINE_HEADER",
]  # fmt: skip
