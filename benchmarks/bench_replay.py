"""Replay throughput against a bare River loop on the same files, in the same run (target ratio >= 0.9).

The bare loop reads the same file the same way a hand-written script would (JSON lines with
orjson; Parquet with pyarrow ``iter_batches`` + ``to_pylist``), then predicts, scores and learns
StandardScaler | LogisticRegression with Accuracy and LogLoss. The replay runs
``online.replay.job.run_replay`` in evaluate mode on the same file (no report, no progress bar).
The ratio is replay throughput / bare throughput; both runs are repeated and the best kept.

    python benchmarks/bench_replay.py                 # Phishing cycled to 200k events
    python benchmarks/bench_replay.py --events 50000 --repeat 1
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile
import time

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from river import datasets, linear_model, metrics, optim, preprocessing

from online.config import ReplayJobConfig
from online.replay.job import ReplayOptions, run_replay
from core.configuration import parse_config

JOB = {
    "model": {
        "pipeline": [{"preprocessing.StandardScaler": {}}, {"linear_model.LogisticRegression": {"optimizer": {"optim.SGD": {"lr": 0.1}}}}],
        "metrics": ["Accuracy", "LogLoss"],
    },
    "events": {"target": "label"},
}


def phishing_cycled(n: int) -> list[dict]:
    base = [{**x, "label": y} for x, y in datasets.Phishing()]
    return [dict(base[i % len(base)]) for i in range(n)]


def bare_loop(events) -> dict:
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression(optimizer=optim.SGD(0.1))
    metric = metrics.Accuracy() + metrics.LogLoss()
    for x in events:
        y = x.pop("label")
        y_pred = model.predict_proba_one(x)
        metric.update(y, y_pred)
        model.learn_one(x, y)
    return {type(m).__name__: m.get() for m in metric}


def bare_json(path: pathlib.Path) -> dict:
    loads = orjson.loads
    with open(path, "rb") as handle:
        return bare_loop(loads(line) for line in handle)


def bare_parquet(path: pathlib.Path) -> dict:
    def rows():
        for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
            yield from batch.to_pylist()

    return bare_loop(rows())


def timed(function, *args) -> tuple[float, object]:
    started = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - started, result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args(argv)
    job = parse_config(JOB, ReplayJobConfig, environ={})
    events = phishing_cycled(args.events)
    folder = pathlib.Path(tempfile.mkdtemp(prefix="bench-replay-"))
    json_path, parquet_path = folder / "events.jsonl", folder / "events.parquet"
    json_path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    pq.write_table(pa.Table.from_pylist(events), parquet_path)
    print(f"{args.events} events (Phishing cycled), StandardScaler | LogisticRegression, Accuracy + LogLoss, best of {args.repeat}")
    print(f"{'format':8} {'bare ev/s':>10} {'replay ev/s':>12} {'ratio':>6}  metrics equal")
    for name, path, bare in (("jsonl", json_path, bare_json), ("parquet", parquet_path, bare_parquet)):
        bare_best = replay_best = float("inf")
        for _ in range(args.repeat):
            seconds, expected = timed(bare, path)
            bare_best = min(bare_best, seconds)
            seconds, result = timed(run_replay, job, ReplayOptions([str(path)], mode="evaluate", progress=False))
            replay_best = min(replay_best, seconds)
        equal = result.leaderboard[0]["metrics"] == expected
        print(f"{name:8} {args.events / bare_best:>10,.0f} {args.events / replay_best:>12,.0f} {bare_best / replay_best:>6.2f}  {equal}")


if __name__ == "__main__":
    main()
