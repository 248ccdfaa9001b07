"""The summary every command ends with: the same names for the same counts, one metric precision.

A `JobSummary` is what a job returns to the command that ran it; the command prints it as text
on a terminal or as one JSON object with ``--json``. The counts are always named:

* ``events_seen``: events (lines, records, rows) read from the source, good and bad;
* ``events_learned``: events a model learned from in this run;
* ``events_learned_total``: events the model has learned from in all: this run's and, when the run
  resumed from a checkpoint (`Resumed`, printed as ``resumed from checkpoint <id> (N events learned
  before)``), those of the runs before it;
* ``events_predicted``: events predicted (with or without a label);
* ``events_dead_lettered``: events refused, each written with its reason to the dead-letter
  topic, the errors file or the bad-rows output;
* ``events_produced``: records written to Kafka (backfill).

Metrics are printed with four decimals everywhere (`format_metric`); JSON keeps full floats.

>>> summary = JobSummary("replay", "learn", counts={"events_seen": 1250, "events_learned": 1249, "events_dead_lettered": 1},
...                      metrics={"Accuracy": 0.89282, "LogLoss": 0.28431}, seconds=0.5, details={"checkpoint": "ckpt/0001"})
>>> print(summary.to_text())
replay learn: 1,250 events in 0.50 s (2,500 events/s)
  events_seen 1,250 · events_learned 1,249 · events_dead_lettered 1
  Accuracy 0.8928 · LogLoss 0.2843
  checkpoint: ckpt/0001
>>> summary.to_json()["events_learned"], summary.to_json()["metrics"]["Accuracy"]
(1249, 0.89282)

A run that continued a model from a checkpoint says so, and counts this run apart from the total:

>>> resumed = JobSummary("replay", "learn", counts={"events_seen": 1250, "events_learned": 1250, "events_learned_total": 2500},
...                      resumed=Resumed("000000000003-20261206T035845-53a5f3", 1250))
>>> print(resumed.to_text())
replay learn: 1,250 events
  resumed from checkpoint 000000000003-20261206T035845-53a5f3 (1,250 events learned before)
  events_seen 1,250 · events_learned 1,250 · events_learned_total 2,500
>>> resumed.to_json()["resumed_from"]
{'checkpoint': '000000000003-20261206T035845-53a5f3', 'events_learned': 1250}
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Any, TextIO

import orjson

from core.errors import RunFailed

COUNT_NAMES = ("events_seen", "events_learned", "events_learned_total", "events_predicted", "events_dead_lettered", "events_produced")
METRIC_DECIMALS = 4


def format_metric(value: Any) -> str:
    """A metric value as every command prints it: four decimals, ``n/a`` when there is none.

    >>> format_metric(0.892817), format_metric(None), format_metric(float("nan")), format_metric(12)
    ('0.8928', 'n/a', 'n/a', '12.0000')
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:.{METRIC_DECIMALS}f}"


def format_count(value: int) -> str:
    """A count with thousands separators.

    >>> format_count(1234567)
    '1,234,567'
    """
    return f"{value:,}"


def learning_failure(counts: dict[str, int], *, target: str | None, max_dead_letter_fraction: float = 0.5, learns: bool = True,
                     labels_may_come_later: bool = False, fields_seen: list[str] | None = None, first_reason: str | None = None) -> str | None:
    """Why a run that went through did not do its job, in one line, or None when it did.

    A run with events fails when every event was refused, when more than `max_dead_letter_fraction`
    of them were (``events.max_dead_letter_fraction``), or, for a job that `learns`, when it learned
    from none (its target, most likely misspelled, was in none of them). `labels_may_come_later`
    (delayed labels, ``events.id``) lets a run of unlabelled events pass.

    >>> learning_failure({"events_seen": 1250, "events_learned": 0, "events_dead_lettered": 0}, target="lable",
    ...                  fields_seen=["label", "long_url", "https"])
    "events.target: 'lable' is in none of 1,250 events (fields seen: https, label, long_url); nothing was learned"
    >>> learning_failure({"events_seen": 10, "events_learned": 0, "events_dead_lettered": 10}, target="y", first_reason="not JSON")
    'every one of 10 events was dead-lettered (first reason: not JSON); nothing was learned'
    >>> learning_failure({"events_seen": 10, "events_learned": 4, "events_dead_lettered": 6}, target="y")
    '6 of 10 events (60%) were dead-lettered, more than events.max_dead_letter_fraction 0.5'
    >>> learning_failure({"events_seen": 10, "events_learned": 9, "events_dead_lettered": 1}, target="y") is None
    True
    >>> learning_failure({"events_seen": 0, "events_learned": 0}, target="y") is None  # nothing arrived: nothing to judge
    True
    """
    seen = counts.get("events_seen", 0)
    dead = counts.get("events_dead_lettered", 0)
    if not seen:
        return None
    reason = f" (first reason: {first_reason})" if first_reason else ""
    if dead >= seen:
        return f"every one of {format_count(seen)} events was dead-lettered{reason}; nothing was learned"
    if learns and counts.get("events_learned", 0) == 0 and not labels_may_come_later:
        if target is None:
            return f"nothing was learned from {format_count(seen - dead)} events: set events.target to the field that holds the label"
        fields = f" (fields seen: {', '.join(sorted(fields_seen))})" if fields_seen else ""
        return f"events.target: {target!r} is in none of {format_count(seen - dead)} events{fields}; nothing was learned"
    if dead / seen > max_dead_letter_fraction:
        return (f"{format_count(dead)} of {format_count(seen)} events ({dead / seen:.0%}) were dead-lettered, "
                f"more than events.max_dead_letter_fraction {max_dead_letter_fraction:g}{reason}")
    return None


@dataclass(frozen=True)
class Resumed:
    """Where a run continued a model from: the checkpoint and what its model had learned by then.

    `checkpoints` counts the checkpoints resumed when a run has several learning units (a keyed
    daemon's partitions); `checkpoint` is then the first of them.

    >>> Resumed("ckpt-7", 1250).text(), Resumed("ckpt-7", 4000, checkpoints=4).text()
    ('resumed from checkpoint ckpt-7 (1,250 events learned before)', 'resumed from 4 checkpoints (4,000 events learned before)')
    """

    checkpoint: str
    events_learned: int
    checkpoints: int = 1

    def text(self) -> str:
        """The sentence every command prints (and logs) when it resumed."""
        what = f"checkpoint {self.checkpoint}" if self.checkpoints == 1 else f"{self.checkpoints} checkpoints"
        return f"resumed from {what} ({format_count(self.events_learned)} events learned before)"

    def to_json(self) -> dict:
        data: dict[str, Any] = {"checkpoint": self.checkpoint, "events_learned": self.events_learned}
        if self.checkpoints != 1:
            data["checkpoints"] = self.checkpoints
        return data


@dataclass
class JobSummary:
    """What one run of a job did: counts (named as in `COUNT_NAMES`), metrics, time, details."""

    job: str
    mode: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, float | None] = field(default_factory=dict)
    seconds: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    resumed: Resumed | None = None  # the run continued a model from a checkpoint
    failure: str | None = None  # why the run did not do its job (`learning_failure`); the command then exits 1

    def __post_init__(self) -> None:
        unknown = set(self.counts) - set(COUNT_NAMES)
        if unknown:
            raise ValueError(f"unknown count names {sorted(unknown)}: use {', '.join(COUNT_NAMES)}")

    @property
    def title(self) -> str:
        return f"{self.job} {self.mode}" if self.mode else self.job

    @property
    def events_per_second(self) -> float | None:
        seen = self.counts.get("events_seen")
        if seen is None or not self.seconds:
            return None
        return seen / self.seconds

    def to_json(self) -> dict:
        """One flat JSON object: job, mode, every count, metrics, seconds, events_per_second, details
        (and ``resumed_from`` when the run continued a checkpoint)."""
        data: dict[str, Any] = {"job": self.job}
        if self.mode:
            data["mode"] = self.mode
        if self.resumed is not None:
            data["resumed_from"] = self.resumed.to_json()
        data.update({name: self.counts[name] for name in COUNT_NAMES if name in self.counts})
        data["metrics"] = dict(self.metrics)
        if self.seconds is not None:
            data["seconds"] = round(self.seconds, 3)
            rate = self.events_per_second
            if rate is not None:
                data["events_per_second"] = round(rate, 1)
        data.update(self.details)
        if self.failure is not None:
            data["failure"] = self.failure
        return data

    def raise_for_failure(self) -> None:
        """After printing: `core.errors.RunFailed` (one line, exit 1) when the run did not do its job.

        >>> JobSummary("replay", "learn", counts={"events_seen": 3, "events_learned": 0, "events_dead_lettered": 3},
        ...            failure="every one of 3 events was dead-lettered").raise_for_failure()
        Traceback (most recent call last):
        ...
        core.errors.RunFailed: every one of 3 events was dead-lettered
        """
        if self.failure is not None:
            error = RunFailed(self.failure)
            error.summary = self  # for Python callers: what the run did, next to why it failed
            raise error

    def _same_total(self, name: str) -> bool:
        """``events_learned_total`` equal to ``events_learned`` (a fresh start) says nothing new to a person."""
        return name == "events_learned_total" and self.counts[name] == self.counts.get("events_learned")

    def to_text(self) -> str:
        """Lines for a person: what ran and how fast, the counts (``events_learned_total`` only when it
        differs from ``events_learned``; JSON always has both), the metrics, then the details."""
        head = self.title
        seen = self.counts.get("events_seen")
        if seen is not None:
            head += f": {format_count(seen)} events"
            if self.seconds is not None:
                head += f" in {self.seconds:.2f} s"
                rate = self.events_per_second
                if rate is not None:
                    head += f" ({format_count(round(rate))} events/s)"
        elif self.seconds is not None:
            head += f": {self.seconds:.2f} s"
        lines = [head]
        if self.resumed is not None:
            lines.append("  " + self.resumed.text())
        counts = [f"{name} {format_count(self.counts[name])}" for name in COUNT_NAMES if name in self.counts and not self._same_total(name)]
        if counts:
            lines.append("  " + " · ".join(counts))
        if self.metrics:
            lines.append("  " + " · ".join(f"{name} {format_metric(value)}" for name, value in self.metrics.items()))
        for key, value in self.details.items():
            if value is None:
                continue
            if isinstance(value, (dict, list)):
                value = orjson.dumps(value).decode()
            lines.append(f"  {key}: {value}")
        if self.failure is not None:
            lines.append(f"  FAILED: {self.failure}")
        return "\n".join(lines)

    def print(self, as_json: bool = False, file: TextIO | None = None) -> None:
        """Print to standard output (the summary is the command's result; logs go to stderr)."""
        out = file or sys.stdout
        if as_json:
            out.write(orjson.dumps(self.to_json(), option=orjson.OPT_SERIALIZE_NUMPY).decode() + "\n")
        else:
            out.write(self.to_text() + "\n")
        out.flush()
