"""The daemon's summary as every command prints it (`core.summary.JobSummary`), for one daemon or a group of workers.

A light module: ``consume --workers``'s supervisor prints the summary without importing the daemon
(River, the clients), which its workers import once, in the fork server (`online.consume.workers`).
"""

from __future__ import annotations

from core.summary import JobSummary, Resumed


def daemon_job_summary(summary: dict, units_in_full: bool = False) -> JobSummary:
    """The daemon's `Daemon.summary` as `core.summary.JobSummary` (the names every command uses).

    The headline metrics are the global model's; keyed units keep theirs per unit, listed in full
    under ``units`` with `units_in_full` (``--json``, which also carries every other figure of the
    daemon's summary: processing seconds, outputs skipped, ...), counted otherwise.

    >>> print(daemon_job_summary({"events_seen": 10, "events_learned": 9, "events_dead_lettered": 1, "seconds": 2.0,
    ...        "checkpoint_uri": "ckpt", "checkpoints_written": 1, "units": {"all": {"metrics": {"Accuracy": 0.5}}}}).to_text())
    consume: 10 events in 2.00 s (5 events/s)
      events_seen 10 · events_learned 9 · events_dead_lettered 1
      Accuracy 0.5000
      checkpoint: ckpt
      checkpoints_written: 1
      units: 1
    """
    units = summary.get("units") or {}
    only = next(iter(units.values())) if len(units) == 1 else None
    metrics = dict(only.get("metrics") or {}) if only is not None else {}
    counts = {name: summary[name] for name in ("events_seen", "events_learned", "events_learned_total", "events_dead_lettered") if name in summary}
    resumed = summary.get("resumed_from")
    details = {"events_per_second_learning": summary.get("events_per_second"), "checkpoint": summary.get("checkpoint_uri"),
               "checkpoints_written": summary.get("checkpoints_written"), "units": units if units_in_full else len(units)}
    if units_in_full:  # for machines: every figure the daemon measured
        details.update({k: v for k, v in summary.items() if k not in counts and k not in ("units", "checkpoint_uri", "seconds", "events_per_second", "resumed_from")})
    return JobSummary("consume", None, counts=counts, metrics=metrics, seconds=summary.get("seconds"), details=details,
                      resumed=Resumed(**resumed) if resumed else None)
