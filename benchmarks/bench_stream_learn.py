"""Stream-learn's per-event cost: `pipelines.stream_learn.LearnStateFn` now, and at another git revision, in the same run.

Two measures on the same events (Phishing cycled, one key, StandardScaler | LogisticRegression):

* ``direct``: ``LearnStateFn.process`` called in a loop with in-memory Beam state (a bag for the
  log, values for the rest) inside a Beam metrics container, as a runner calls it; CPU time per
  event, the DoFn's own cost with nothing of the runner's;
* ``runner`` (with ``--runner``): the `LearnStateful` transform on the FnApiRunner over
  ``beam.Create`` (state, timers, coders: the runner's per-element work included); CPU time per event.

With ``--against REV`` the module as it was at REV (``git show REV:pipelines/stream_learn.py``)
runs alternately with the current one, and the best of ``--rounds`` is kept for each.

    python benchmarks/bench_stream_learn.py --against HEAD~1                 # direct, per event and mini-batch
    python benchmarks/bench_stream_learn.py --against HEAD~1 --runner --events 20000
"""

from __future__ import annotations

import argparse
import copy
import gc
import importlib.util
import itertools
import os
import subprocess
import sys
import tempfile
import time

import apache_beam as beam
from apache_beam.metrics.execution import MetricsContainer
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.worker import statesampler
from apache_beam.utils.counters import CounterFactory
from river import datasets

from core.configuration import parse_config
from online.config import ConsumeJobConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = {"pipeline": [{"preprocessing.StandardScaler": {}}, {"linear_model.LogisticRegression": {}}], "metrics": ["Accuracy", "LogLoss"]}


def module_at(revision: str):
    """`pipelines.stream_learn` as it was at `revision`, imported under another name (its options class unregistered:
    Beam refuses two parsers of the same flags)."""
    text = subprocess.run(["git", "show", f"{revision}:pipelines/stream_learn.py"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    text = text.replace("class StreamLearnOptions(PipelineOptions):", "class StreamLearnOptions:")
    folder = tempfile.mkdtemp()
    path = os.path.join(folder, "stream_learn_at_revision.py")
    with open(path, "w") as handle:
        handle.write(text)
    spec = importlib.util.spec_from_file_location("stream_learn_at_revision", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class Value:
    def __init__(self):
        self.value = None

    def read(self):
        return self.value

    def write(self, value):
        self.value = value

    def clear(self):
        self.value = None


class Bag(Value):
    def __init__(self):
        self.value = []

    def read(self):
        return list(self.value)

    def add(self, value):
        self.value.append(value)

    def clear(self):
        self.value = []


class Timer:
    def set(self, timestamp):
        self.timestamp = timestamp


def job_config(batch: int | None, every_events: int) -> ConsumeJobConfig:
    model = dict(MODEL, **({"batch": {"size": batch}} if batch else {}))
    return parse_config({"model": model, "events": {"target": "label"}, "kafka": {"topic": "events"},
                         "checkpoint": {"uri": tempfile.mkdtemp(), "every_events": every_events}}, ConsumeJobConfig, environ={})


def direct(module, events: list[dict], batch: int | None, sourced: bool, every_events: int) -> float:
    """CPU seconds of `LearnStateFn.process` over `events` with in-memory state, in one bundle."""
    fn = module.LearnStateFn(job_config(batch, every_events), module.LearnSettings(3600.0, every_events, True, clock=lambda: 0.0))
    fn.setup()
    state = {"snapshot_state": Value(), "log_state": Bag(), "version_state": Value(), "timer_due": Value(),
             "checkpoint_timer": Timer(), "flush_timer": Timer(), "positions_state": Value()}
    given = copy.deepcopy(events)
    if sourced:
        given = [{**event, module.SOURCE_FIELD: ("/data/events.jsonl", i + 1)} for i, event in enumerate(given)]
    sampler = statesampler.StateSampler("bench", CounterFactory())
    statesampler.set_current_tracker(sampler)
    gc.collect()
    with sampler.scoped_state("learn", "process", metrics_container=MetricsContainer("learn")):
        start = time.process_time()
        fn.start_bundle()
        for event in given:
            for _ in fn.process((module.GLOBAL_KEY, event), **state):
                pass
        if hasattr(fn, "finish_bundle"):
            fn.finish_bundle()
        return time.process_time() - start


def on_runner(module, events: list[dict], batch: int | None, every_events: int) -> float:
    """CPU seconds of the pipeline Create | LearnStateful on the FnApiRunner (this process)."""
    config = job_config(batch, every_events)
    settings = module.LearnSettings(3600.0, every_events, True)
    start = time.process_time()
    with beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"])) as pipeline:
        _ = pipeline | beam.Create([(module.GLOBAL_KEY, e) for e in events]) | module.LearnStateful(config, settings)
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--against", default=None, help="a git revision to compare with (its pipelines/stream_learn.py)")
    parser.add_argument("--runner", action="store_true", help="also on the FnApiRunner (slower: ~8 s per 20k events and round)")
    args = parser.parse_args()
    from pipelines import stream_learn

    modules = {"now": stream_learn}
    if args.against:
        modules = {args.against: module_at(args.against), **modules}
    events = [{**x, "label": y} for x, y in itertools.islice(itertools.cycle(datasets.Phishing()), args.events)]
    cases = [("direct, per event", lambda m: direct(m, events, None, False, 10_000)),
             ("direct, per event, files positions", lambda m: direct(m, events, None, True, 10_000)),
             ("direct, per event, checkpoint every 1000", lambda m: direct(m, events, None, False, 1_000)),
             ("direct, mini-batch 100, files positions", lambda m: direct(m, events, 100, True, 10_000))]
    if args.runner:
        cases += [("FnApiRunner, per event", lambda m: on_runner(m, events, None, 5_000)),
                  ("FnApiRunner, mini-batch 100", lambda m: on_runner(m, events, 100, 5_000))]
    for label, measure in cases:
        seconds: dict[str, list[float]] = {name: [] for name in modules}
        for _ in range(args.rounds):
            for name, module in modules.items():
                seconds[name].append(measure(module))
        line = "; ".join(f"{name}: best {min(s) / args.events * 1e6:.1f} us/event (median {sorted(s)[len(s) // 2] / args.events * 1e6:.1f})"
                         for name, s in seconds.items())
        print(f"{label}: {line}", flush=True)


if __name__ == "__main__":
    main()
