"""Per-key models at scale: replay and the daemon with 100 to 1,000,000 keys over the same events, one run.

Every event carries four key fields (``k100``, ``k10000``, ``k100000``, ``k1000000``); each case
picks one as ``events.key`` (the others are excluded from the features), so every case learns
the same 200,000 events (Phishing's features cycled, StandardScaler | LogisticRegression per
key, Accuracy and LogLoss, a checkpoint every 20,000 events on local disk). Key ``i`` of event
``n`` is ``(n * 7919) % K``: every one of the K keys appears, spread over the stream (with
K = 1,000,000 there are only 200,000 events, so that case has 200,000 distinct keys: each event
a new key, the worst case for the cache and the checkpoints).

The 100-key anchor of each job runs twice and the faster run is kept. Each case runs in a process of its own (peak memory is its ``ru_maxrss``) and reports:
events/s (the anchor is the 100-key case of the same run: the ratio is the figure to read),
peak memory, hot models in memory at the end, checkpoint bytes written (all parts and state
blobs) and per checkpoint, the mean time from a checkpoint's start to durable, the longest
time a checkpoint step held the processing loop (freeze, a slice of pickling, spilling, an
inline upload), and the restore time (read + verify + load the latest checkpoint).

    python benchmarks/bench_keyed.py                       # replay and the daemon, 100 .. 1,000,000 keys
    python benchmarks/bench_keyed.py --events 50000 --no-daemon --cache 10000

One more replay case runs 100,000 keys with a cache of ``--small-cache`` (10,000) models: memory
bounded by the cache, at the price of a spill and a reload per event (the keys recur only every
100,000 events, so the cache never holds the next one).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

KEYS = (100, 10_000, 100_000, 1_000_000)
MODEL = {"pipeline": [{"preprocessing.StandardScaler": {}}, {"linear_model.LogisticRegression": {}}], "metrics": ["Accuracy", "LogLoss"]}


def write_events(path: str, n: int) -> None:
    import orjson
    from river import datasets

    base = [{**x, "label": y} for x, y in datasets.Phishing()]
    with open(path, "wb") as out:
        for i in range(n):
            event = dict(base[i % len(base)])
            for k in KEYS:
                event[f"k{k}"] = f"u{(i * 7919) % k}"
            out.write(orjson.dumps(event) + b"\n")


def events_config(keys: int, cache: int) -> dict:
    return {"target": "label", "key": f"k{keys}", "exclude": [f"k{k}" for k in KEYS if k != keys], "key_cache_size": cache}


class Probe:
    """Wraps the checkpoint bridge's calls made on the processing loop (longest pause) and counts bytes written."""

    def __init__(self):
        from core.storage.local import LocalStore
        from online.checkpoints.persistence import Checkpointer

        self.calls: list[tuple[str, float, bool]] = []  # (method, seconds, wait) of every call made by the loop
        self.delta_bytes = self.delta_records = self.compacted_bytes = 0
        self.gc_longest = 0.0  # the longest cyclic-GC collection (any thread), which lands inside whatever runs
        self._gc_started = 0.0
        import gc

        def on_gc(phase, info):
            if phase == "start":
                self._gc_started = time.perf_counter()
            else:
                self.gc_longest = max(self.gc_longest, time.perf_counter() - self._gc_started)

        gc.callbacks.append(on_gc)
        from online.checkpoints.store import CheckpointStore

        write_part = CheckpointStore.write_part

        def part_written(store, data, sequence=None, **fields):
            if fields.get("compacted"):
                probe.compacted_bytes += len(data)
            else:
                probe.delta_bytes += len(data)
                probe.delta_records += fields.get("records") or 0
            return write_part(store, data, sequence, **fields)

        CheckpointStore.write_part = part_written
        self.bytes = 0
        self.writes = 0
        self.durable: list[float] = []
        self.hot: int | None = None  # the most models in memory seen at a checkpoint step
        probe = self
        for name in ("add", "checkpoint", "collect"):
            original = getattr(Checkpointer, name)

            def timed(self, *args, _original=original, name=name, **kwargs):
                began = time.perf_counter()
                if self.learner.keyed:
                    probe.hot = max(probe.hot or 0, self.learner.state.models.hot_count)
                try:
                    return _original(self, *args, **kwargs)
                finally:
                    probe.calls.append((name, time.perf_counter() - began, bool(kwargs.get("wait"))))

            setattr(Checkpointer, name, timed)
        finish = Checkpointer._finish

        def finished(self, durable):
            probe.durable.append(durable.seconds)
            return finish(self, durable)

        Checkpointer._finish = finished
        write = LocalStore.write

        def counted(self, name, data):
            if not name.endswith(("LATEST", ".json")):
                probe.bytes += len(data)
                probe.writes += 1
            return write(self, name, data)

        LocalStore.write = counted


def restore_seconds(uri: str, keys: int, cache: int) -> tuple[float, int]:
    from online.config import EventsConfig, ModelConfig
    from online.checkpoints.persistence import LearnerSpec, checkpoint_store, resume

    spec = LearnerSpec(ModelConfig(**MODEL), EventsConfig(**events_config(keys, cache)))
    began = time.perf_counter()
    learner, _ = resume(checkpoint_store(uri), spec)
    return time.perf_counter() - began, len(learner.state.models)


def case_replay(path: str, keys: int, cache: int, every: int) -> dict:
    from core.configuration import parse_config
    from online.config import ReplayJobConfig
    from online.replay.job import ReplayOptions, run_replay

    probe = Probe()
    uri = tempfile.mkdtemp(prefix="bench-keyed-")
    job = parse_config({"model": MODEL, "events": events_config(keys, cache), "checkpoint": {"uri": uri, "every_events": every, "every_seconds": 3600}},
                       ReplayJobConfig, environ={})
    began = time.perf_counter()
    result = run_replay(job, ReplayOptions(inputs=[path], mode="learn", progress=False))
    seconds = time.perf_counter() - began
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    restore, restored = restore_seconds(uri, keys, cache)
    return _row("replay", keys, result.events, seconds, probe, restore, restored, probe.hot, peak)


def case_daemon(bootstrap: str, topic: str, n: int, keys: int, cache: int, every: int) -> dict:
    import uuid

    from core.configuration import parse_config
    from online.config import ConsumeJobConfig
    from online.consume.daemon import Daemon

    probe = Probe()
    uri = tempfile.mkdtemp(prefix="bench-keyed-")
    config = parse_config({
        "kafka": {"client": "confluent-kafka", "bootstrap_servers": bootstrap, "topic": topic, "group_id": f"bench-{uuid.uuid4().hex[:8]}",
                  "consumer": {"session.timeout.ms": 2000, "heartbeat.interval.ms": 300}},
        "model": MODEL, "events": events_config(keys, cache),
        "checkpoint": {"uri": uri, "every_events": every, "every_seconds": 3600}, "metrics": {"port": None},
    }, ConsumeJobConfig, environ={})  # fmt: skip
    daemon = Daemon(config, until_caught_up=True, progress=False)
    summary = daemon.run()
    seconds = summary["processing_seconds"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    from online.checkpoints.units import partition_unit, unit_uri

    restore, restored = restore_seconds(unit_uri(uri, partition_unit(topic, 0)), keys, cache)
    return _row("daemon", keys, summary["events_seen"], seconds, probe, restore, restored, probe.hot, peak)


def _pauses(probe: Probe) -> tuple[list[float], float]:
    """Checkpoint steps that held the loop, and the final checkpoint's time: calls with wait (stop, revoke, end
    of input) and those after the last `add` (the input is over: nothing left to spread the pickling over)."""
    last_add = max((i for i, call in enumerate(probe.calls) if call[0] == "add"), default=-1)
    steps = [took for i, (_, took, wait) in enumerate(probe.calls) if not wait and i < last_add]
    final = max((took for i, (_, took, wait) in enumerate(probe.calls) if wait or i > last_add), default=0.0)
    return steps, final


def _row(job: str, keys: int, events: int, seconds: float, probe: Probe, restore: float, restored: int, hot, peak: float) -> dict:
    checkpoints = max(1, len(probe.durable))
    steps, final = _pauses(probe)
    return {
        "job": job, "keys": keys, "distinct": restored, "events": events, "events_per_s": events / seconds,
        "peak_mib": peak, "hot": hot,
        "checkpoints": len(probe.durable), "ckpt_mib": probe.bytes / 2**20, "ckpt_mib_each": probe.bytes / 2**20 / checkpoints,
        "ckpt_s": sum(probe.durable) / checkpoints, "pause_ms": max(steps, default=0.0) * 1000, "restore_s": restore,
        "p99_ms": sorted(steps)[int(len(steps) * 0.99)] * 1000 if steps else 0.0, "final_s": final,
        "delta_kib_per_key": probe.delta_bytes / 1024 / max(1, probe.delta_records), "compacted_mib": probe.compacted_bytes / 2**20,
        "gc_ms": probe.gc_longest * 1000,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--every", type=int, default=20_000, help="events between checkpoints")
    parser.add_argument("--cache", type=int, default=100_000, help="events.key_cache_size")
    parser.add_argument("--keys", type=int, nargs="*", default=list(KEYS))
    parser.add_argument("--daemon-keys", type=int, nargs="*", default=[100, 10_000, 100_000])
    parser.add_argument("--small-cache", type=int, default=10_000, help="one more replay case: 100,000 keys with this cache (0: none)")
    parser.add_argument("--no-daemon", action="store_true")
    parser.add_argument("--case", nargs="*", help=argparse.SUPPRESS)  # internal: run one case in this process
    args = parser.parse_args(argv)
    if args.case:
        kind, *rest = args.case
        if kind == "replay":
            row = case_replay(rest[0], int(rest[1]), args.cache, args.every)
        else:
            row = case_daemon(rest[0], rest[1], args.events, int(rest[2]), args.cache, args.every)
        print(json.dumps(row))
        return
    os.environ.setdefault("NO_GCE_CHECK", "true")
    work = tempfile.mkdtemp(prefix="bench-keyed-")
    path = os.path.join(work, "events.jsonl")
    write_events(path, args.events)
    rows = []

    def run(case: list[str], cache: int = args.cache) -> None:
        common = [sys.executable, __file__, "--events", str(args.events), "--every", str(args.every), "--cache", str(cache)]
        done = subprocess.run(common + ["--case", *case], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
        if done.returncode != 0:
            raise SystemExit(f"case {case} failed:\n{done.stderr[-3000:]}")
        rows.append({**json.loads(done.stdout.strip().splitlines()[-1]), "cache": cache})

    for keys in args.keys:
        run(["replay", path, str(keys)])
        if keys == min(args.keys):  # the anchor, run twice and the faster kept (a shared machine is noisy)
            run(["replay", path, str(keys)])
            slower = min(rows[-2:], key=lambda row: row["events_per_s"])
            rows.remove(slower)
    if args.small_cache:
        run(["replay", path, str(100_000)], cache=args.small_cache)
    if not args.no_daemon:

        from online.config import KafkaConfig
        from online.kafka_clients import create_topic, make_producer
        from riverbeam.local_stack import LocalStack

        with LocalStack(tempfile.mkdtemp(), kafka_port=0, gcs_port=0) as stack:
            topic = "keyed-bench"
            create_topic(stack.bootstrap_servers, topic, partitions=1)
            producer = make_producer(KafkaConfig(client="confluent-kafka", bootstrap_servers=stack.bootstrap_servers, topic=topic))
            with open(path, "rb") as lines:
                for line in lines:
                    producer.send(topic, line.rstrip(b"\n"), partition=0)
            producer.flush()
            producer.close()
            for keys in args.daemon_keys:
                run(["daemon", stack.bootstrap_servers, topic, str(keys)])
                if keys == min(args.daemon_keys):
                    run(["daemon", stack.bootstrap_servers, topic, str(keys)])
                    rows.remove(min(rows[-2:], key=lambda row: row["events_per_s"]))
    print(f"{args.events:,} events, StandardScaler | LogisticRegression per key, checkpoint every {args.every:,} events (local disk), "
          f"events.key_cache_size {args.cache:,}")
    header = f"{'job':<7}{'cache':>8}{'keys':>10}{'distinct':>9}{'events/s':>10}{'ratio':>7}{'peak MiB':>9}{'hot':>8}{'ckpts':>6}{'ckpt MiB':>9}{'KiB/key':>8}{'fold MiB':>9}{'ckpt s':>8}{'pause ms':>9}{'p99 ms':>7}{'gc ms':>6}{'final s':>8}{'restore s':>10}"
    print(header)
    anchors = {}
    for row in rows:
        if row["keys"] == min(r["keys"] for r in rows if r["job"] == row["job"]):
            anchors.setdefault(row["job"], row["events_per_s"])
    for row in rows:
        anchor = anchors.get(row["job"]) or row["events_per_s"]
        print(f"{row['job']:<7}{row['cache']:>8,}{row['keys']:>10,}{row['distinct']:>9,}{row['events_per_s']:>10,.0f}{row['events_per_s'] / anchor:>7.2f}{row['peak_mib']:>9.0f}"
              f"{row['hot'] if row['hot'] is not None else '-':>8}{row['checkpoints']:>6}{row['ckpt_mib']:>9.1f}{row['delta_kib_per_key']:>8.2f}{row['compacted_mib']:>9.1f}"
              f"{row['ckpt_s']:>8.2f}{row['pause_ms']:>9.1f}{row['p99_ms']:>7.1f}{row['gc_ms']:>6.0f}{row['final_s']:>8.2f}{row['restore_s']:>10.2f}")
    print("ratio: events/s against the fewest-keys case of the same job in this run; ckpt MiB: every part, state blob and")
    print("folded part written; KiB/key: delta bytes per changed model; fold MiB: written by compactions; pause: the longest")
    print("checkpoint step on the loop (p99 over steps); gc ms: the longest cyclic-GC pass; final: the checkpoint at the end;")
    print("peak MiB: ru_maxrss before the restore measurement")


if __name__ == "__main__":
    main()
