"""Mini-batch learning (``model.batch``) and several models, against bare River loops in the same run.

Anchors, measured in this run on the same events (Phishing cycled; StandardScaler |
LogisticRegression; Accuracy):

* ``bare per-event``: the hand-written River loop (``predict_proba_one``, metric, ``learn_one``)
  over decoded dicts.
* ``bare mini-batch N``: River's mini-batch loop (DataFrame of the chunk, ``predict_proba_many``,
  the metric per event, ``learn_many``) over decoded dicts, N in {100, 1000}.

Measured: the learner core (`Learner.process_many`, decoded dicts), the learning loop from raw
JSON bytes (`LearningLoop.feed`: decode + learner: what the daemon runs per poll), ``riverbeam
replay --mode learn`` over a JSON-lines file (end to end: read, parse, learn, checkpoints), and
with ``--daemon`` the daemon end to end on a local Tansu broker (``riverbeam consume
--until-caught-up``, kafka-python and confluent-kafka: its ``processing_seconds``, the time spent
decoding, learning and writing outputs), each per event and in mini-batches. Then the cost of k
models on one stream (k = 1, 2, 3 through the learning loop from raw bytes) against k times one
model's bare River time plus one decode.

With ``--daemon``, each daemon round is run right after a round of the bare mini-batch loop of the
same N, and the daemon's ratio is given per round (median) and best against best: on a shared
machine the load changes between rounds. The code measured, in process and in the daemon, is the
checkout this script lives in (its root goes first on ``sys.path`` and ``PYTHONPATH``), so a
before/after is this script run in two clones.

    python benchmarks/bench_batch.py                       # 50k events, best of 3, in-process parts (~1 min)
    python benchmarks/bench_batch.py --daemon              # and the daemon on a local broker (~2 min more)
    python benchmarks/bench_batch.py --daemon --clients confluent-kafka --rounds 5
    python benchmarks/bench_batch.py --daemon --clients confluent-kafka --checkpoint-every 100000  # fewer checkpoints
    python benchmarks/bench_batch.py --events 20000 --rounds 1
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the checkout measured, also by the daemon's process
sys.path.insert(0, str(ROOT))

import orjson
import pandas as pd
from river import datasets, linear_model, metrics, preprocessing

from online.config import EventsConfig, ModelConfig, ReplayJobConfig
from online.learning.learner import Learner
from online.learning.loop import LearningLoop
from online.sources import KafkaBatch

SPEC = [{"preprocessing.StandardScaler": {}}, {"linear_model.LogisticRegression": {}}]
SIZES = (100, 1000)
POLL = 5000  # records per poll, as the daemon's default kafka.poll_max_records


def phishing_events(n: int) -> list[dict]:
    base = [{**x, "label": y} for x, y in datasets.Phishing()]
    return [dict(base[i % len(base)]) for i in range(n)]


def split(events: list[dict]) -> list[tuple[dict, bool]]:
    return [({k: v for k, v in e.items() if k != "label"}, e["label"]) for e in events]


def bare_per_event(data) -> tuple[float, float]:
    model, accuracy = preprocessing.StandardScaler() | linear_model.LogisticRegression(), metrics.Accuracy()
    start = time.perf_counter()
    for x, y in data:
        y_pred = model.predict_proba_one(x)
        if y_pred:
            accuracy.update(y, max(y_pred, key=y_pred.get))
        model.learn_one(x, y)
    return time.perf_counter() - start, accuracy.get()


def bare_minibatch(data, size: int) -> tuple[float, float]:
    model, accuracy = preprocessing.StandardScaler() | linear_model.LogisticRegression(), metrics.Accuracy()
    start = time.perf_counter()
    for begin in range(0, len(data), size):
        chunk = data[begin:begin + size]
        X, y = pd.DataFrame([x for x, _ in chunk]), pd.Series([y for _, y in chunk])
        for y_true, y_pred in zip(y, model.predict_many(X)):
            accuracy.update(y_true, y_pred)
        model.learn_many(X, y)
    return time.perf_counter() - start, accuracy.get()


def model_config(size: int | None, name: str | None = None) -> ModelConfig:
    return ModelConfig(name=name, pipeline=SPEC, metrics=["Accuracy"], batch={"size": size} if size else None)


def core(events: list[dict], size: int | None) -> tuple[float, float]:
    learner = Learner(model_config(size), EventsConfig(target="label"))
    copies = copy.deepcopy(events)
    start = time.perf_counter()
    learner.process_many(copies)
    return time.perf_counter() - start, learner.metric_values()["Accuracy"]


def loop_from_bytes(values: list[bytes], sizes: list[int | None]) -> tuple[float, list[float]]:
    """The learning loop over polls of raw JSON records, with one model per entry of `sizes`."""
    learners = [(f"m{i}", Learner(model_config(size), EventsConfig(target="label"))) for i, size in enumerate(sizes)]
    loop = LearningLoop(learners)
    start = time.perf_counter()
    for begin in range(0, len(values), POLL):
        part = values[begin:begin + POLL]
        loop.feed(KafkaBatch(("t", 0), part, list(range(begin, begin + len(part)))))
    loop.flush()
    return time.perf_counter() - start, [learner.metric_values()["Accuracy"] for _, learner in learners]


def replay(path: Path, size: int | None, workdir: Path) -> tuple[float, float]:
    from online.replay.job import ReplayOptions, run_replay

    job = ReplayJobConfig(model=model_config(size), events=EventsConfig(target="label"))
    uri = workdir / f"replay-{uuid.uuid4().hex[:6]}"
    start = time.perf_counter()
    result = run_replay(job, ReplayOptions([str(path)], checkpoint_uri=str(uri), checkpoint_every=10_000, progress=False))
    return time.perf_counter() - start, result.leaderboard[0]["metrics"]["Accuracy"]


def daemon(bootstrap: str, topic: str, client: str, size: int | None, workdir: Path, every: int = 10_000) -> tuple[float, float]:
    import yaml

    consumer = ({"session_timeout_ms": 2000, "heartbeat_interval_ms": 500, "max_poll_interval_ms": 5000} if client == "kafka-python"
                else {"session.timeout.ms": 2000, "heartbeat.interval.ms": 500})
    model = {"pipeline": SPEC, "metrics": ["Accuracy"], **({"batch": {"size": size}} if size else {})}
    config = {"kafka": {"client": client, "bootstrap_servers": bootstrap, "topic": topic, "group_id": f"b-{uuid.uuid4().hex[:8]}", "consumer": consumer},
              "model": model, "events": {"target": "label"}, "metrics": {"port": None},
              "checkpoint": {"uri": str(workdir / f"daemon-{uuid.uuid4().hex[:6]}"), "every_events": every}}
    path = workdir / f"consume-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(config))
    env = dict(os.environ, NO_GCE_CHECK="true", PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    out = subprocess.run([sys.executable, "-m", "riverbeam.cli", "consume", "--config", str(path), "--until-caught-up", "--json"],
                         capture_output=True, text=True, env=env, timeout=600, check=True).stdout
    summary = json.loads(out.strip().splitlines()[-1])
    return summary["processing_seconds"], summary["units"]["all"]["metrics"]["Accuracy"]


def timed_decode(values: list[bytes]) -> float:
    start = time.perf_counter()
    [orjson.loads(v) for v in values]
    return time.perf_counter() - start


def best(runs: list[tuple[float, object]]) -> tuple[float, object]:
    return min(runs, key=lambda run: run[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--daemon", action="store_true", help="also run the daemon end to end on a local Tansu broker")
    parser.add_argument("--clients", default="confluent-kafka,kafka-python", help="the daemon's Kafka clients (comma-separated)")
    parser.add_argument("--checkpoint-every", type=int, default=10_000,
                        help="the daemon's checkpoint.every_events (each checkpoint is written and fsynced by an upload thread beside the learning)")
    args = parser.parse_args(argv)
    events = phishing_events(args.events)
    data = split(events)
    values = [orjson.dumps(e) for e in events]
    n = len(events)
    rows: dict[str, tuple[float, object]] = {}
    paired: dict[str, list[tuple[float, float]]] = {}  # daemon rows: (bare mini-batch seconds, daemon seconds) per round, in turn

    def measure(name: str, run) -> None:
        rows[name] = best([run() for _ in range(args.rounds)])

    measure("bare per-event", lambda: bare_per_event(data))
    for size in SIZES:
        measure(f"bare mini-batch {size}", lambda size=size: bare_minibatch(data, size))
    measure("core per-event", lambda: core(events, None))
    for size in SIZES:
        measure(f"core batch {size}", lambda size=size: core(events, size))
    measure("loop per-event (raw bytes)", lambda: loop_from_bytes(values, [None]))
    for size in SIZES:
        measure(f"loop batch {size} (raw bytes)", lambda size=size: loop_from_bytes(values, [size]))
    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        path = workdir / "events.jsonl"
        path.write_bytes(b"\n".join(values) + b"\n")
        measure("replay per-event", lambda: replay(path, None, workdir))
        for size in SIZES:
            measure(f"replay batch {size}", lambda size=size: replay(path, size, workdir))
        for k in (1, 2, 3):
            measure(f"{k} model(s), per event (loop, raw bytes)", lambda k=k: loop_from_bytes(values, [None] * k))
        decode_seconds = min(timed_decode(values) for _ in range(args.rounds))
        if args.daemon:
            from daemon_vs_peers import produce_events  # benchmarks/ is on sys.path when run as a script
            from riverbeam.local_stack import LocalStack

            stack = LocalStack(workdir / "stack", kafka_port=0, gcs_port=0)
            bootstrap = stack.up().bootstrap_servers
            try:
                topic = f"bench-{uuid.uuid4().hex[:8]}"
                produce_events(bootstrap, topic, values)
                for client in args.clients.split(","):
                    rounds = max(1, args.rounds - 1)
                    rows[f"daemon {client} per-event"] = best([daemon(bootstrap, topic, client, None, workdir, args.checkpoint_every) for _ in range(rounds)])
                    for size in SIZES:
                        pairs = [(bare_minibatch(data, size), daemon(bootstrap, topic, client, size, workdir, args.checkpoint_every)) for _ in range(args.rounds)]
                        rows[f"daemon {client} batch {size}"] = best([run for _, run in pairs])
                        paired[f"daemon {client} batch {size}"] = [(bare[0], run[0]) for bare, run in pairs]
            finally:
                stack.down()

    anchor = rows["bare per-event"][0]
    print(f"{n:,} events, best of {args.rounds}; speed = events/s; x bare = speed / the bare per-event River loop's; "
          "x mini = speed / the bare mini-batch loop's of the same N")
    print(f"{'':44s} {'µs/event':>9s} {'events/s':>10s} {'x bare':>7s} {'x mini':>7s}  accuracy")
    for name, (seconds, accuracy) in rows.items():
        size = next((s for s in SIZES if f" {s}" in name and "batch" in name), None)
        mini = rows[f"bare mini-batch {size}"][0] / seconds if size else float("nan")
        acc = accuracy if not isinstance(accuracy, list) else accuracy[0]
        print(f"{name:44s} {seconds / n * 1e6:9.2f} {n / seconds:10,.0f} {anchor / seconds:7.2f} {mini:7.2f}  {acc:.4f}")
    one = rows["1 model(s), per event (loop, raw bytes)"][0]
    print(f"\nk models (loop from raw bytes, per event): decode alone {decode_seconds / n * 1e6:.2f} µs/event; bare River {anchor / n * 1e6:.2f} µs/event per model")
    for k in (1, 2, 3):
        seconds = rows[f"{k} model(s), per event (loop, raw bytes)"][0]
        expected = k * anchor + decode_seconds
        print(f"  k={k}: {seconds / n * 1e6:.2f} µs/event = {seconds / one:.2f}x one model; k x bare + one decode = {expected / n * 1e6:.2f} µs/event (ratio {seconds / expected:.2f})")
    for label in ("daemon confluent-kafka", "daemon kafka-python"):
        if f"{label} per-event" in rows:
            per_event = rows[f"{label} per-event"][0]
            for size in SIZES:
                name = f"{label} batch {size}"
                seconds, pairs = rows[name][0], paired[name]
                ratios = sorted(bare / run for bare, run in pairs)
                print(f"{name}: {per_event / seconds:.2f}x the per-event daemon; x the bare mini-batch loop run just before it: "
                      f"median {statistics.median(ratios):.2f} of {', '.join(f'{r:.2f}' for r in ratios)}, best against best {min(b for b, _ in pairs) / seconds:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
