"""The learner core against a bare River loop on the same events, in the same run (target ratio >= 0.95).

Both sides start from the same decoded events (dicts with the features and ``label``). The bare
loop is what a user writes by hand: split off the label, ``predict_proba_one``, update the
metrics, ``learn_one``. The core runs `online.learning.learner.Learner.process_many` (the daemon's and
replay's hot path: feature extraction, type checks, predict, metrics, learn). Rounds alternate
and the best of each is kept. Then: checkpoint write and read time against model size, local
disk, for a small linear model and growing Hoeffding trees.

    python benchmarks/bench_learner.py                     # Phishing cycled to 200k events
    python benchmarks/bench_learner.py --events 50000 --rounds 3
"""

from __future__ import annotations

import argparse
import tempfile
import time

from river import datasets, linear_model, metrics, preprocessing


from online.checkpoints.store import CheckpointStore
from online.config import EventsConfig, ModelConfig
from online.learning.learner import Learner
from online.checkpoints.persistence import restore_learner, save_learner

SPEC = [{"preprocessing.StandardScaler": {}}, {"linear_model.LogisticRegression": {}}]


def phishing_events(n: int) -> list[dict]:
    base = [{**x, "label": y} for x, y in datasets.Phishing()]
    return [base[i % len(base)] for i in range(n)]


def bare_loop(events: list[dict], names: list[str]) -> tuple[float, dict]:
    """The hand-written loop: River's own `Metrics` for several metrics, the metric itself for one."""
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    if names == ["Accuracy"]:
        accuracy = metrics.Accuracy()
        copies = [dict(e) for e in events]
        start = time.perf_counter()
        for event in copies:
            y = event.pop("label")
            y_pred = model.predict_proba_one(event)
            if y_pred:
                accuracy.update(y, max(y_pred, key=y_pred.get))
            model.learn_one(event, y)
        return time.perf_counter() - start, {"Accuracy": accuracy.get()}
    metric = metrics.base.Metrics([getattr(metrics, name)() for name in names])
    copies = [dict(e) for e in events]
    start = time.perf_counter()
    for event in copies:
        y = event.pop("label")
        y_pred = model.predict_proba_one(event)
        metric.update(y, y_pred)
        model.learn_one(event, y)
    return time.perf_counter() - start, {type(m).__name__: m.get() for m in metric}


def core_loop(events: list[dict], names: list[str]) -> tuple[float, dict]:
    learner = Learner(ModelConfig(pipeline=SPEC, metrics=names), EventsConfig(target="label"))
    copies = [dict(e) for e in events]
    start = time.perf_counter()
    learner.process_many(copies)
    return time.perf_counter() - start, learner.metric_values()


def checkpoint_costs(events: list[dict]) -> list[tuple[str, int, float, float]]:
    rows = []
    for name, spec in [
        ("StandardScaler|LogisticRegression", SPEC),
        ("HoeffdingTreeClassifier grace 50", [{"tree.HoeffdingTreeClassifier": {"grace_period": 50}}]),
        ("ARFClassifier 10 trees", [{"forest.ARFClassifier": {"n_models": 10, "seed": 1}}]),
    ]:
        learner = Learner(ModelConfig(pipeline=spec, metrics=["Accuracy"]), EventsConfig(target="label"))
        learner.process_many([dict(e) for e in events[:20_000]])
        store = CheckpointStore(tempfile.mkdtemp(), keep=3)
        start = time.perf_counter()
        for _ in range(5):
            manifest = save_learner(store, learner, positions={"events/0": 1})
        write = (time.perf_counter() - start) / 5
        start = time.perf_counter()
        for _ in range(5):
            restore_learner(store.load_latest())
        read = (time.perf_counter() - start) / 5
        rows.append((name, manifest["state"]["size"], write, read))
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    events = phishing_events(args.events)
    n = len(events)
    print(f"events: {n:,} (Phishing cycled), StandardScaler | LogisticRegression, best of {args.rounds} alternating rounds")
    for names in (["Accuracy"], ["Accuracy", "LogLoss"]):
        bare_best = core_best = float("inf")
        for _ in range(args.rounds):
            bare_seconds, bare_metrics = bare_loop(events, names)
            core_seconds, core_metrics = core_loop(events, names)
            assert bare_metrics == core_metrics, (bare_metrics, core_metrics)
            bare_best, core_best = min(bare_best, bare_seconds), min(core_best, core_seconds)
        print(f"metrics {' + '.join(names)} (identical on both sides)")
        print(f"  bare River loop : {n / bare_best:10,.0f} events/s  {bare_best / n * 1e6:6.2f} µs/event")
        print(f"  learner core    : {n / core_best:10,.0f} events/s  {core_best / n * 1e6:6.2f} µs/event")
        print(f"  ratio core/bare : {bare_best / core_best:.3f}   (target >= 0.95)")
    print("\ncheckpoint write (save_learner, local disk) and read (load + verify + unpickle), mean of 5:")
    for name, size, write, read in checkpoint_costs(events):
        print(f"  {name:<36} {size / 1024:9.1f} KiB   write {write * 1000:7.2f} ms   read {read * 1000:7.2f} ms")


if __name__ == "__main__":
    main()
