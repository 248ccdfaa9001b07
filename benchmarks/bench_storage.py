"""Storage backends against local disk, measured in the same run: replay input and checkpoint writes.

One local stack (GCS emulator and moto's S3 server, both on loopback, both in memory) and one
temporary directory. The same files are replayed (``--mode evaluate``, best of `--rounds`) from
local disk, ``gs://`` and ``s3://``, and the same state is checkpointed `--saves` times to each
(`online.checkpoints.store.CheckpointStore`: blob, manifest, fenced pointer). Local disk is the anchor
(it fsyncs; the emulators keep objects in memory), so the ratios say what the storage layer and
each client add on top of a local disk, not what a real bucket across a network costs.

    python benchmarks/bench_storage.py --events 10000 --saves 15
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from river import datasets

from core import storage
from core.configuration import parse_config
from online.checkpoints.store import CheckpointStore
from online.config import ReplayJobConfig
from riverbeam.local_stack import LocalStack

try:
    from online.replay.job import ReplayOptions, run_replay
except ImportError:  # older layout
    from online.replay.engine import ReplayOptions, run_replay

JOB = {"model": {"pipeline": [{"linear_model.LogisticRegression": {}}]}, "events": {"target": "label"}}


def replay_seconds(job, pattern: str, rounds: int) -> tuple[float, int]:
    best, lines = float("inf"), 0
    for _ in range(rounds):
        start = time.perf_counter()
        result = run_replay(job, ReplayOptions([pattern], mode="evaluate", progress=False))
        best, lines = min(best, time.perf_counter() - start), result.lines
    return best, lines


def save_seconds(uri: str, state: bytes, saves: int) -> float:
    store = CheckpointStore(uri, keep=3)
    times = []
    for i in range(saves):
        start = time.perf_counter()
        store.save(state, events_seen=i, events_learned=i, positions={})
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--saves", type=int, default=15)
    parser.add_argument("--state-bytes", type=int, default=200_000)
    args = parser.parse_args()
    os.environ.setdefault("NO_GCE_CHECK", "true")
    root = Path(tempfile.mkdtemp(prefix="bench-storage-"))
    with LocalStack(root / "stack", kafka_port=0, gcs_port=0, s3_port=0) as settings:
        os.environ.update(settings.environment())
        rows = [{**x, "label": y} for x, y in datasets.Phishing()]
        events = (rows * (args.events // len(rows) + 1))[: args.events]
        local = root / "in"
        local.mkdir()
        (local / "events.jsonl").write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
        pq.write_table(pa.Table.from_pylist(events), local / "events.parquet")
        bases = {"local": str(local), "gs": f"gs://{settings.bucket}/bench/in", "s3": f"s3://{settings.bucket}/bench/in"}
        for path in local.iterdir():
            for name in ("gs", "s3"):
                storage.write_bytes(f"{bases[name]}/{path.name}", path.read_bytes())
        job = parse_config(JOB, ReplayJobConfig, environ={})
        for name in ("events.jsonl", "events.parquet"):
            anchor, lines = replay_seconds(job, f"{bases['local']}/{name}", args.rounds)
            ratios = {where: replay_seconds(job, f"{bases[where]}/{name}", args.rounds)[0] / anchor for where in ("gs", "s3")}
            print(f"replay evaluate {name} ({lines} lines): local {lines / anchor:,.0f} lines/s (anchor); "
                  + "; ".join(f"{where}/local {ratio:.2f}" for where, ratio in ratios.items()))
        state = os.urandom(args.state_bytes)
        targets = {"local": str(root / "ckpt"), "gs": f"gs://{settings.bucket}/bench/ckpt", "s3": f"s3://{settings.bucket}/bench/ckpt"}
        anchor = save_seconds(targets["local"], state, args.saves)
        ratios = {where: save_seconds(targets[where], state, args.saves) / anchor for where in ("gs", "s3")}
        print(f"checkpoint save ({args.state_bytes:,} bytes, median of {args.saves}): local {anchor * 1000:.1f} ms (anchor); "
              + "; ".join(f"{where}/local {ratio:.2f}" for where, ratio in ratios.items()))


if __name__ == "__main__":
    main()
