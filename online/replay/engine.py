"""Replaying historical events from files through the learner that serves the stream.

Modes (chosen by `online.replay.job.run_replay`):

* **learn** — continue from the latest checkpoint (or start empty), feed `online.learning.learner.Learner`
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
  partition (``partition``, 0 by default), in replay order. On start, the partition's records name
  the last line produced of each file, and the backfill produces every input line past its file's:
  an interrupted backfill, even killed with ``kill -9``, produces every event exactly once provided
  nothing else writes to that partition (the producer is idempotent and ordered, so the partition
  never holds a record whose predecessors are missing), and a new file is appended after what is
  there. A topic whose last record lacks the headers is refused.
  (`online.replay.backfill`.)
* **search** (``search > 0`` in evaluate mode) — Optuna trials over the ranges of a `SearchConfig`,
  progressive validation as the objective; ``search.parallel`` trials share one pass over the data.
  (`online.replay.search`; reports: `online.replay.report`.)

``dry_run`` validates and counts: every line is parsed and checked by the learner's event
reader; nothing is learned, produced or written.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from online.config import ModelConfig, ReplayJobConfig, model_names, user_modules
from online.replay.errors_file import ErrorLog, ReplayError
from online.events import EventError, load_feature_transform
from online.learning.leaderboard import leaderboard as rank_models
from online.learning.learner import Learner
from online.learning.unit import LearningUnit
from online.checkpoints.persistence import Cadence, LearnerSpec, checkpoint_store, open_checkpoint_store, resume_unit
from online.checkpoints.units import REPLAY_UNIT, check_layout, restore_any
from online.readers import InputFile, ReplayPosition, count_records
from online.replay.report import format_leaderboard, write_report_dir
from online.sources import REPLAY, FileSource, progress_bar
from core.summary import JobSummary, Resumed, format_metric
from core.errors import UsageError

log = logging.getLogger(__name__)

MODES = ("learn", "evaluate", "backfill")
CHUNK_EVENTS = 1000
REPORT_POINTS = 100  # report rows per candidate when --report-every is not given
FILE_HEADER = "riverbeam-file"
LINE_HEADER = "riverbeam-line"


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
    resumed: Resumed | None = None  # the model continued from a checkpoint
    already_produced: int = 0  # backfill: input lines an earlier run had produced, skipped
    failure: str | None = None  # why the run did not do its job (core.summary.learning_failure), set by run_replay

    def job_summary(self) -> JobSummary:
        """The run as the summary every command ends with (`core.summary`): the same count names everywhere.

        ``events_seen`` counts every record read (good and bad), ``events_dead_lettered`` the bad
        ones (reported with their reason), ``events_learned`` what the model learned (``dry_run``
        and ``backfill`` learn nothing) in this run and ``events_learned_total`` in all (with the runs
        before a resumed checkpoint, as the daemon counts), ``events_produced`` what backfill wrote.
        """
        counts = {"events_seen": self.lines, "events_dead_lettered": self.bad_lines}
        if self.mode in ("learn", "evaluate", "search") and self.leaderboard:
            total = self.leaderboard[0].get("events_learned", self.events)
            counts["events_learned"] = total - (self.resumed.events_learned if self.resumed is not None and len(self.leaderboard) == 1 else 0)
            counts["events_learned_total"] = total
        if self.mode == "backfill":
            counts["events_produced"] = self.produced
        details: dict = {"files": self.files}
        if self.already_produced:
            details["already_produced"] = self.already_produced  # never a silent events_produced 0
        if len(self.leaderboard) > 1:
            details["leaderboard"] = [{"rank": r["rank"], "model": r["model"], **r["metrics"]} for r in self.leaderboard]
        if self.first_errors:
            details["first_errors"] = [f"{e['file']}: line {e['line']}: {e['reason']}" for e in self.first_errors]
        if self.checkpoint:
            details["checkpoint"] = self.checkpoint["id"]
        if self.search:
            details["best_trial"] = {"trial": self.search["best"]["trial"], "params": self.search["best"]["params"]}
        if self.report_dir:
            details["report"] = self.report_dir
        metrics = dict(self.leaderboard[0]["metrics"]) if self.leaderboard else {}
        return JobSummary("replay", "dry-run" if self.mode == "dry-run" else self.mode, counts=counts, metrics=metrics,
                          seconds=self.seconds, details=details, resumed=self.resumed, failure=self.failure)

    def summary(self) -> str:
        """The summary as text, with the leaderboard as a table when several candidates ran."""
        text = self.job_summary()
        board = text.details.pop("leaderboard", None)
        lines = [text.to_text()]
        if board:
            lines.append(format_leaderboard(self.leaderboard))
        return "\n".join(lines)


# -- candidates --------------------------------------------------------------------------------


@dataclass
class Candidate:
    """One model learning in the replay: its display name and its learner."""

    name: str
    learner: Learner


def candidate_names(models: list[ModelConfig]) -> list[str]:
    """Unique display names (`online.config.model_names`)."""
    return model_names(models)


def load_transform(job: ReplayJobConfig):
    """The fitted feature transform of ``features.transform_output``, or None."""
    return load_feature_transform(job.features, user_modules(job.candidates))


def leaderboard(candidates: list[Candidate]) -> list[dict]:
    """The candidates ranked by the first candidate's first metric (`online.learning.leaderboard`), best first."""
    return rank_models({c.name: c.learner.report() for c in candidates}, candidates[0].learner.state.metrics[0])


# -- one pass over the inputs ------------------------------------------------------------------


class ReplaySinks:
    """A replay unit's sinks (`online.learning.unit.Sinks`): rejected lines into the errors file.

    Before each checkpoint (`flush`) the errors file is made durable up to here and its size goes
    into the manifest with `extra` (a resumed replay truncates the file back to it); nothing
    follows a durable checkpoint (`commit`): files have no offsets to commit.
    """

    def __init__(self, errors: ErrorLog, path: str | None = None, extra=None):
        self.errors = errors
        self.path = os.path.abspath(path) if path is not None else None
        self.extra = extra or (lambda: {})  # manifest fields known at checkpoint time (counts)
        self.dead_letter = errors.dead_letter  # a rejected line goes straight into the errors file (`ErrorLog.dead_letter`)

    def predictions(self, batch, outcomes: list) -> None:  # replay writes no prediction records
        pass

    def flush(self, positions: dict) -> dict:
        extra = self.extra()
        if self.path is not None:  # the errors file is durable up to here with each checkpoint
            extra["errors_file"] = {"path": self.path, "bytes": self.errors.flush()}
        return extra

    def commit(self, durable) -> None:
        pass


def replay_unit(candidates: list[Candidate], source: FileSource, sinks: ReplaySinks, checkpointer=None) -> LearningUnit:
    """The learning unit (`online.learning.unit`) of the candidates over `source`, rejects into the errors file."""
    return LearningUnit("replay", source, [(c.name, c.learner) for c in candidates], sinks, checkpointer, count_unreadable=False)


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


def show_headline(progress, learner: Learner) -> None:
    """The running headline metric on the progress bar, as River's ``print_every`` shows it (four decimals)."""
    name, value = learner.headline()
    progress.set_postfix_str(f"{name} {format_metric(value)}", refresh=False)


def _progress(options: ReplayOptions, files: list[InputFile], unit: str = "line", total: int | None = None):
    return progress_bar(options.progress, files, unit, total)


# -- modes -------------------------------------------------------------------------------------


def dry_run(job: ReplayJobConfig, files: list[InputFile], options: ReplayOptions) -> ReplayResult:
    """Parse every line and check every event with each candidate's event reader; learn and write nothing."""
    started = time.monotonic()
    errors = ErrorLog(None, options.max_errors)
    readers = [Learner(model, job.events).reader for model in job.candidates]
    source = FileSource(files, job.events.time, job.events.categorical, progress=_progress(options, files))
    events = 0
    for batch in source:
        for index, record in enumerate(batch.records):
            try:
                if record.event is None:
                    raise EventError(record.reason)
                for reader in readers:
                    reader.split(dict(record.event))
            except EventError as error:
                errors.dead_letter(batch, index, str(error))
                continue
            events += 1
    return ReplayResult("dry-run", len(files), source.lines, events, errors.count, seconds=time.monotonic() - started,
                        first_errors=errors.first)


def _headline_rows(candidates: list[Candidate], lines: int) -> list[dict]:
    return [{"events": c.learner.state.events_seen, "lines": lines, "model": c.name, **c.learner.metric_values()} for c in candidates]


class Evaluation:
    """Progressive validation of every candidate in one pass, as a generator of progress rows.

    Iterating yields one row per candidate every `every` events (``events``, ``lines``, ``model``,
    each metric by name, ``elapsed`` seconds) and a last one at the end, like River's
    `iter_progressive_val_score`; afterwards `result()` is the `ReplayResult`. `evaluate` and
    the Python API's `riverbeam.iter_replay` both run it: the loop is written once.
    """

    def __init__(self, job: ReplayJobConfig, files: list[InputFile], options: ReplayOptions, models: list[ModelConfig] | None = None):
        self.job, self.files, self.options = job, files, options
        models = models if models is not None else job.candidates
        transform = load_transform(job)
        self.candidates = [Candidate(name, Learner(model, job.events, transform)) for name, model in zip(candidate_names(models), models)]
        self.resumed: Resumed | None = None
        if options.checkpoint_uri:  # evaluate a checkpointed model on new data: read, never written
            def restore(checkpoint):
                if len(self.candidates) != 1:
                    raise UsageError("--checkpoint-uri in evaluate mode starts one model from its checkpoint: configure one model")
                return LearnerSpec(models[0], job.events, job.features, transform).restore(checkpoint)

            found = restore_any(_checkpoint_store(job, options.checkpoint_uri, options), restore)  # per-key models: the units merged
            if found is not None:
                latest, self.candidates[0].learner = found
                self.resumed = Resumed(latest.id, self.candidates[0].learner.state.events_learned)
                log.info(self.resumed.text())
        self.rows: list[dict] = []
        self.source: FileSource | None = None
        self.errors: ErrorLog | None = None
        self.seconds = 0.0

    def __iter__(self) -> Iterator[dict]:
        started = time.monotonic()
        candidates, options = self.candidates, self.options
        self.errors = errors = ErrorLog(options.errors_path, options.max_errors)
        errors.start_fresh()  # each evaluation is a run of its own: its bad lines only
        total = count_records(self.files) if options.report_every is None else None  # counted once: the report step and the progress bar
        every = report_step(options.report_every, total)
        self.source = source = FileSource(self.files, self.job.events.time, self.job.events.categorical, max_events=CHUNK_EVENTS,
                                          every=every, progress=_progress(options, self.files, total=total))
        unit = replay_unit(candidates, source, ReplaySinks(errors))

        def rows() -> list[dict]:
            elapsed = round(time.monotonic() - started, 6)
            new = [{**row, "elapsed": elapsed} for row in _headline_rows(candidates, source.lines)]
            self.rows += new
            return new

        try:
            while unit.step() is not None:
                if source.progress is not None:
                    show_headline(source.progress, candidates[0].learner)
                if source.good % every == 0:
                    yield from rows()
            unit.flush()
        finally:
            errors.close()
            self.seconds = time.monotonic() - started
        last = self.rows[-1] if self.rows else None
        if last is None or last["lines"] != source.lines or last["events"] != candidates[0].learner.state.events_seen:
            yield from rows()

    def result(self) -> ReplayResult:
        """What the finished pass did (its counts, leaderboard and rows)."""
        board = leaderboard(self.candidates)
        result = ReplayResult("evaluate", len(self.files), self.source.lines, self.source.good, self.errors.count, seconds=self.seconds,
                              leaderboard=board, first_errors=self.errors.first, resumed=self.resumed)
        result.rows = self.rows
        return result


def evaluate(job: ReplayJobConfig, files: list[InputFile], options: ReplayOptions, models: list[ModelConfig] | None = None,
             write_report: bool = True) -> ReplayResult:
    """Progressive validation of every candidate in one pass (`Evaluation`); a report directory when asked."""
    evaluation = Evaluation(job, files, options, models)
    for _ in evaluation:
        pass
    result = evaluation.result()
    if options.report_dir and write_report:
        report_rows = [{k: v for k, v in row.items() if k != "elapsed"} for row in result.rows]
        write_report_dir(options.report_dir, report_rows, result.leaderboard,
                         [c.learner.report() | {"model": c.name} for c in evaluation.candidates])
        result.report_dir = options.report_dir
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
    if job.events.key is not None:  # per-key models: replay's unit of the keyed layout (online.checkpoints.units)
        check_layout(uri)
    unit = resume_unit(store, spec, REPLAY_UNIT if job.events.key is not None else None, cadence)  # keeps other jobs' positions
    learner, latest, checkpointer = unit.learner, unit.checkpoint, unit.checkpointer
    resumed = Resumed(latest.id, learner.state.events_learned) if latest is not None else None
    if resumed is not None:
        log.info(resumed.text())
    start = None
    if latest is not None:
        start = ReplayPosition.from_json(latest.positions.get("replay"))
        if start is not None and start.order == "file" and start.file and start.file not in {f.name for f in files}:
            log.warning("the checkpoint's replay position names %s, which is not among the inputs; files sorting before it are skipped", start.file)
    candidate = Candidate(candidate_names([job.model])[0], learner)
    errors = ErrorLog(options.errors_path, options.max_errors, follow_checkpoints=True)
    if latest is None:
        errors.start_fresh()  # a fresh run: its bad lines only
    elif options.errors_path is not None:
        written = latest.manifest.get("extra", {}).get("errors_file") or {}
        if written.get("path") == os.path.abspath(options.errors_path):
            errors.resume_at(written.get("bytes"))  # bad lines past the checkpoint are met, and written, again
    every = max(1, min(report_step(options.report_every, count_records(files) if options.report_every is None else None), every_events)) if options.report_dir else every_events
    source = FileSource(files, job.events.time, job.events.categorical, max_events=min(CHUNK_EVENTS, every_events),
                        every=every, progress=_progress(options, files))
    sinks = ReplaySinks(errors, options.errors_path, lambda: {"source": "replay", "events_rejected": learner.state.events_rejected, "inputs": len(files)})
    unit = replay_unit([candidate], source, sinks, checkpointer)
    unit.seek({REPLAY: start or source.replay_position})  # the checkpoint's position, or the start
    rows: list[dict] = []

    try:
        while unit.step() is not None:  # checkpoints when due, at a chunk boundary: held records are not in it
            if source.progress is not None:
                show_headline(source.progress, learner)
            if options.report_dir and source.good % every == 0:
                rows += _headline_rows([candidate], source.lines)
        unit.flush()
        if source.lines:
            unit.checkpoint(wait=True)  # skipped when nothing changed since the last one; waits for the last upload
        unit.collect(wait=True)  # per-key models: the last checkpoint may still be pickling in slices
    finally:
        unit.close()
        errors.close()
    manifest = checkpointer.last_manifest if checkpointer.written else None
    board = leaderboard([candidate])
    result = ReplayResult("learn", len(files), source.lines, source.good, errors.count, seconds=time.monotonic() - started,
                          leaderboard=board, position=unit.checkpoint_positions()[REPLAY], first_errors=errors.first, resumed=resumed)
    if manifest is not None:
        result.checkpoint = {k: manifest[k] for k in ("id", "events_seen", "events_learned", "metrics", "positions")}
    if options.report_dir:
        if not rows or rows[-1]["lines"] != source.lines or rows[-1]["events"] != learner.state.events_seen:
            rows += _headline_rows([candidate], source.lines)
        write_report_dir(options.report_dir, rows, board, [learner.report() | {"model": candidate.name}])
        result.report_dir = options.report_dir
    return result


__all__ = [
    "ReplayError", "ReplayOptions", "ReplayResult", "ErrorLog", "Candidate", "ReplaySinks", "replay_unit",
    "Evaluation", "learn", "evaluate", "dry_run", "leaderboard", "format_leaderboard", "write_report_dir", "FILE_HEADER", "LINE_HEADER",
]  # fmt: skip
