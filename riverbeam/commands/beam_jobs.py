"""``riverbeam stream-learn`` and ``riverbeam archive``: the Beam streaming jobs.

Arguments are the pipeline's flags (``--help`` lists them, from its `PipelineOptions` subclass)
and Beam's own (``--runner``, ``--project``, ...); any other flag is refused with a suggestion
(`riverbeam.commands.beam_flags`). The code behind each is ``pipelines.<name>.run(argv)``; the
command ends with the summary every command prints (`core.summary.JobSummary`, ``--json`` for
machines): the events read, learned and dead-lettered when the job ran here, else where it went.
"""

from __future__ import annotations

import importlib
import time
from typing import Any

from riverbeam.commands.beam_flags import check_beam_args, options_class, quiet_beam_and_tensorflow, with_beam_flags

JOBS = {
    "stream-learn": ("pipelines.stream_learn:StreamLearnOptions", "learn River models from Kafka/Pub/Sub/files on Beam (Dataflow, Flink)"),
    "archive": ("pipelines.archive:ArchiveOptions", "archive Kafka/Pub/Sub events to date/hour-partitioned files on Beam"),
}

# Beam counters (namespace stream_learn) behind the summary's counts
STREAM_LEARN_COUNTS = {
    "events_seen": ("events_rejected_parse", "events_predicted", "events_rejected_learn", "events_skipped_in_checkpoint"),
    "events_learned": ("events_learned",),
    "events_predicted": ("events_predicted",),
    "events_dead_lettered": ("events_rejected_parse", "events_rejected_learn"),
}


def register(subparsers) -> None:
    for name, (options, help_text) in JOBS.items():
        parser = subparsers.add_parser(
            name, help=help_text, usage="%(prog)s [-h] [--json] [--verbose] [pipeline flags] [Beam flags]",
            description=f"{help_text}. Arguments are the pipeline's flags (below) and Beam's; the code is {options.partition(':')[0]}.run.",
        )  # fmt: skip
        parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
        parser.add_argument("--verbose", action="store_true", help="show Beam's and TensorFlow's own log lines")
        parser.set_defaults(handler=run_beam_job, beam_job=name, beam_args=[])
        parser.__class__ = with_beam_flags(type(parser), options)


def run_beam_job(args) -> int:
    """Check the flags, run ``pipelines.<name>.run`` with them and print the job's summary."""
    options_cls = options_class(JOBS[args.beam_job][0])
    argv = check_beam_args(args.beam_args, options_cls, args.beam_job)
    started = time.monotonic()
    with quiet_beam_and_tensorflow(args.verbose):
        result = importlib.import_module(options_cls.__module__).run(argv)
    beam_job_summary(args.beam_job, result, argv, time.monotonic() - started).print(as_json=args.json)
    return 0


def beam_counters(result, namespace: str) -> dict[str, int] | None:
    """The job's Beam counters of `namespace` by name (committed values, else attempted), or None
    when the runner reports none (a job submitted elsewhere)."""
    from apache_beam.metrics.metric import MetricsFilter

    try:
        counters = result.metrics().query(MetricsFilter().with_namespace(namespace))["counters"]
    except Exception:  # noqa: BLE001 - runners without metrics (or not yet) have no counts to give
        return None
    totals: dict[str, int] = {}
    for counter in counters:
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + int(value or 0)
    return totals


def _value(value: Any) -> Any:
    """A flag's value, a value provider's when it is known now."""
    if hasattr(value, "is_accessible"):
        return value.get() if value.is_accessible() else None
    return value


def beam_job_summary(job: str, result, argv: list[str], seconds: float):
    """The `core.summary.JobSummary` of a stream-learn or archive run: counts when the job ran to
    the end here, else the runner, its state and job id (a job submitted to Dataflow or Flink)."""
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    from core.summary import JobSummary

    options = PipelineOptions(argv)
    state = str(getattr(result, "state", "") or "")
    details: dict[str, Any] = {"runner": options.view_as(StandardOptions).runner, "state": state}
    job_id = getattr(result, "job_id", None)
    if callable(job_id):
        details["job_id"] = job_id()
    counts: dict[str, int] = {}
    if job == "stream-learn":
        view = options.view_as(options_class(JOBS[job][0]))
        counters = beam_counters(result, "stream_learn") if state == "DONE" else None
        if counters is not None:
            counts = {name: sum(counters.get(c, 0) for c in parts) for name, parts in STREAM_LEARN_COUNTS.items()}
            details["checkpoints_written"] = counters.get("checkpoints_written", 0)
            details["events_already_checkpointed"] = counters.get("events_skipped_in_checkpoint", 0)
        output = _value(view.learn_output)
        if output:
            details.update(predictions=f"{output.rstrip('/')}/predictions*", dead_letters=f"{output.rstrip('/')}/dead_letter*")
        elif view.learn_source == "pubsub":
            details.update(predictions=view.learn_predictions_topic, dead_letters=view.learn_dead_letter_topic)
        else:
            details["output"] = "the predictions and dead-letter topics of the configuration's kafka section"
    else:
        view = options.view_as(options_class(JOBS[job][0]))
        details["output"] = _value(view.archive_output)
    mode = "done" if state == "DONE" else "submitted"
    return JobSummary(job, mode, counts=counts, seconds=seconds, details=details)
