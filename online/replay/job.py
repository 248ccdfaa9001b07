"""A replay job: its configuration file and the choice of mode.

`load_replay_job` reads and checks a replay YAML (every mistake of the file reported at once,
the ``search:`` section included); `run_replay` validates the options and runs one mode:
learn and evaluate (`online.replay.engine`), backfill (`online.replay.backfill`, a Kafka sink fed by the same
file pass) or search (`online.replay.search`). The modes never import this module.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "job.yaml"
>>> _ = path.write_text("model: {pipeline: [{linear_model.LinearRegresion: {}}], metrics: [MAE]}\\nevents: {target: 7}\\n")
>>> load_replay_job(str(path))
Traceback (most recent call last):
...
core.errors.ConfigError: ...job.yaml: events.target: expected a string, got 7
"""

from __future__ import annotations

import logging

from online.replay.backfill import backfill
from online.config import ReplayJobConfig
from online.learning.gc_tuning import restore_gc, steady_state_gc
from online.readers import expand_inputs
from online.replay.engine import MODES, ReplayOptions, ReplayResult, dry_run, evaluate, learn
from online.replay.report import require_plotting
from online.replay.search import SearchConfig, check_search, search_trials
from core.configuration import parse_config, read_yaml
from core.errors import ConfigErrorCollector, UsageError

log = logging.getLogger(__name__)

__all__ = ["load_replay_job", "run_replay", "ReplayOptions", "ReplayResult"]


def load_replay_job(path: str, environ=None) -> tuple[ReplayJobConfig, SearchConfig | None]:
    """Read a replay job's YAML: the `ReplayJobConfig` and its optional ``search:`` section.

    Raises `ConfigError` (one line per mistake, each naming the file and key path); River names
    and the search ranges are resolved too.
    """
    source = str(path)
    data = read_yaml(path)
    search_data = data.pop("search", None) if isinstance(data, dict) else None
    collect = ConfigErrorCollector(source=source)
    job = search = None
    with collect.check():
        job = parse_config(data, ReplayJobConfig, source=source, environ=environ)  # types first
    if search_data is not None:
        with collect.check(prefix="search"):
            search = parse_config(search_data, SearchConfig, environ={})
    if job is not None:
        with collect.check():
            job.check_semantics()
        if search is not None:
            with collect.check():
                check_search(job, search)
    collect.raise_if_any()
    return job, search


def run_replay(job: ReplayJobConfig, options: ReplayOptions, search: SearchConfig | None = None) -> ReplayResult:
    """Run one replay as `options` says (see `online.replay.engine` for the modes)."""
    if options.mode not in MODES:
        raise UsageError(f"unknown mode {options.mode!r} (choose among {', '.join(MODES)})")
    if options.max_errors is not None and options.max_errors < 0:
        raise UsageError("--max-errors must be 0 or more")
    if options.search:
        if options.mode != "evaluate":
            raise UsageError("--search runs in evaluate mode (progressive validation is the objective): add --mode evaluate")
        if search is None:
            raise UsageError("--search needs a search: section in the configuration (the parameter ranges)")
    if not options.inputs:
        raise UsageError("give at least one --input")
    ignored = [name for name, section in (("metrics", job.metrics), ("kafka", job.kafka)) if section is not None and (name == "metrics" or options.mode != "backfill")]
    if ignored:  # a consume file replays as it is: its daemon-only sections are said, not refused
        log.warning("note: replay ignores the %s section%s of this file (the daemon's)", " and ".join(f"{n}:" for n in ignored), "s" if len(ignored) > 1 else "")
    if options.report_dir and not options.dry_run:
        require_plotting()
    files = expand_inputs(options.inputs, options.input_format)
    if options.dry_run:
        return judged(job, dry_run(job, files, options))
    previous_gc = steady_state_gc()
    try:
        if options.mode == "learn":
            return judged(job, learn(job, files, options))
        if options.mode == "backfill":
            return judged(job, backfill(job, files, options))
        if options.search:
            return judged(job, search_trials(job, search, files, options))
        return judged(job, evaluate(job, files, options))
    finally:
        restore_gc(previous_gc)


def judged(job: ReplayJobConfig, result: ReplayResult) -> ReplayResult:
    """`result` with its `failure` set when its counts show it did not do its job (`EventsConfig.run_failure`)."""
    summary = result.job_summary()
    first = result.first_errors[0]["reason"] if result.first_errors else None
    result.failure = job.events.run_failure(summary.counts, learns="events_learned" in summary.counts, first_reason=first)
    return result
