"""A user's short job against the same work in plain River, start-up included (issue 30 item 4).

Each contender is a fresh process, timed from its start to its exit (so imports count):

* ``river``: a script that reads the JSON-lines file with orjson and runs River's progressive
  validation loop (StandardScaler | LogisticRegression, Accuracy): the anchor;
* ``riverbeam replay``: ``riverbeam replay --mode evaluate`` on the same file;
* ``riverbeam replay (learn)``: the same with checkpoints written to a local folder;
* ``python -c 'import river'``: what importing River alone costs, for reference.

With ``--kafka`` (a local broker started here: ``tansu`` or ``apache``), the same events on a
topic, and two more contenders in a fresh consumer group each, timed from the spawn to the first
learned event and to the exit:

* ``river + confluent-kafka``: a script that subscribes, polls, decodes with orjson and runs the
  same River loop until it has learned every event, then commits and closes: the anchor;
* ``riverbeam consume --until-caught-up``: the daemon on the same topic (its summary's
  ``first_event_at``), checkpointing to a local folder at the end.

Prints seconds (median of ``--repeat`` runs) and each one's ratio to the anchor (lower is better).

    python benchmarks/bench_startup.py                 # 1,000 lines of Phishing, 5 repeats
    python benchmarks/bench_startup.py --lines 1000 --repeat 3
    python benchmarks/bench_startup.py --kafka apache             # and consume, to the first event and to the exit
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import yaml
from river import datasets

RIVER_LOOP = """
import sys, orjson
from river import linear_model, metrics, preprocessing
model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
metric = metrics.Accuracy()
with open(sys.argv[1], 'rb') as lines:
    for line in lines:
        x = orjson.loads(line)
        y = x.pop('label')
        metric.update(y, model.predict_one(x))
        model.learn_one(x, y)
print(metric)
"""


KAFKA_LOOP = """
import sys, time, orjson
spawned = float(sys.argv[4])
from confluent_kafka import Consumer
from river import linear_model, metrics, preprocessing
model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
metric = metrics.Accuracy()
consumer = Consumer({'bootstrap.servers': sys.argv[1], 'group.id': sys.argv[3], 'auto.offset.reset': 'earliest', 'enable.auto.commit': False,
                     'session.timeout.ms': 2000, 'heartbeat.interval.ms': 500})
consumer.subscribe([sys.argv[2]])
first, count, total = None, 0, int(sys.argv[5])
while count < total:
    for message in consumer.consume(5000, 0.5):
        if message.error():
            continue
        x = orjson.loads(message.value())
        y = x.pop('label')
        metric.update(y, model.predict_one(x))
        model.learn_one(x, y)
        count += 1
        if first is None:
            first = time.time()
consumer.commit(asynchronous=False)
consumer.close()
print(first - spawned, metric)
"""


def first_event_and_exit(command: list[str], repeat: int, env: dict, first_of) -> tuple[float, float]:
    """Median seconds from the spawn to the first learned event (`first_of(stdout, spawned)`) and to the exit."""
    firsts, exits = [], []
    for n in range(repeat):
        spawned = time.time()
        done = subprocess.run([part.replace("{n}", str(n)).replace("{spawned}", repr(spawned)) for part in command],
                              check=True, capture_output=True, text=True, env=env)
        exits.append(time.time() - spawned)
        firsts.append(first_of(done.stdout, spawned))
    return statistics.median(firsts), statistics.median(exits)


def consume_contenders(broker: str, events: list[dict], folder: Path, repeat: int, env: dict) -> dict[str, tuple[float, float]]:
    """Produce `events` to a fresh topic on a local `broker`, then time both Kafka contenders (each run in a new group)."""
    import json
    import uuid

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from daemon_vs_peers import produce_events  # benchmarks/ is on sys.path when run as a script
    from riverbeam.local_stack import LocalStack

    stack = LocalStack(folder / "stack", kafka_port=0, gcs_port=0, kafka=broker)
    bootstrap = stack.up().bootstrap_servers
    try:
        topic = f"startup-{uuid.uuid4().hex[:8]}"
        produce_events(bootstrap, topic, [orjson.dumps(event) for event in events])
        model = {"pipeline": [{"preprocessing.StandardScaler": {}}, {"linear_model.LogisticRegression": {}}], "metrics": ["Accuracy"]}
        for n in range(repeat):
            (folder / f"consume-{n}.yaml").write_text(yaml.safe_dump({
                "kafka": {"client": "confluent-kafka", "bootstrap_servers": bootstrap, "topic": topic, "group_id": f"startup-{uuid.uuid4().hex[:8]}",
                          "consumer": {"session.timeout.ms": 2000, "heartbeat.interval.ms": 500}},
                "model": model, "events": {"target": "label"}, "metrics": {"port": None}, "checkpoint": {"uri": str(folder / f"consume-ck-{n}")}}))
        anchor = [sys.executable, "-c", KAFKA_LOOP, bootstrap, topic, "startup-{n}-" + uuid.uuid4().hex[:6], "{spawned}", str(len(events))]
        consume = [sys.executable, "-m", "riverbeam.cli", "consume", "--config", str(folder / "consume-{n}.yaml"), "--until-caught-up", "--json"]
        return {
            "river + confluent-kafka (anchor)": first_event_and_exit(anchor, repeat, env, lambda out, _: float(out.split()[0])),
            "riverbeam consume --until-caught-up": first_event_and_exit(
                consume, repeat, env, lambda out, spawned: json.loads(out.strip().splitlines()[-1])["first_event_at"] - spawned),
        }
    finally:
        stack.down()


def timed(command: list[str], repeat: int, env: dict) -> float:
    seconds = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, env=env)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--kafka", choices=["tansu", "apache"], default=None, help="also time consume against a plain River consumer on this local broker")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    events = [{**x, "label": y} for x, y in datasets.Phishing()][: args.lines]
    data = folder / "events.jsonl"
    data.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    model = {"pipeline": [{"preprocessing.StandardScaler": {}}, {"linear_model.LogisticRegression": {}}], "metrics": ["Accuracy"]}
    (folder / "job.yaml").write_text(yaml.safe_dump({"model": model, "events": {"target": "label"}, "checkpoint": {"uri": str(folder / "ck")}}))
    env = dict(os.environ, NO_GCE_CHECK="true")
    riverbeam = [sys.executable, "-m", "riverbeam.cli"]
    contenders = {
        "river (anchor)": [sys.executable, "-c", RIVER_LOOP, str(data)],
        "riverbeam replay --mode evaluate": [*riverbeam, "replay", "--config", str(folder / "job.yaml"), "--input", str(data), "--mode", "evaluate", "--no-progress"],
        "riverbeam replay (learn, checkpoints)": [*riverbeam, "replay", "--config", str(folder / "job.yaml"), "--input", str(data), "--no-progress",
                                                 "--checkpoint-uri", str(folder / "ck-{n}")],
        "python -c 'import river'": [sys.executable, "-c", "import river.linear_model, river.metrics, river.preprocessing"],
    }
    results = {}
    for name, command in contenders.items():
        if "{n}" in " ".join(command):  # a fresh checkpoint folder per run: each run learns from scratch
            runs = []
            for n in range(args.repeat):
                started = time.perf_counter()
                subprocess.run([part.replace("{n}", str(n)) for part in command], check=True, capture_output=True, env=env)
                runs.append(time.perf_counter() - started)
            results[name] = statistics.median(runs)
        else:
            results[name] = timed(command, args.repeat, env)
    anchor = results["river (anchor)"]
    print(f"{args.lines:,} events, median of {args.repeat} fresh processes (start-up included)")
    for name, seconds in results.items():
        print(f"  {name:40s} {seconds:6.2f} s   {seconds / anchor:5.2f}x the River script")
    if args.kafka:
        timings = consume_contenders(args.kafka, events, folder, args.repeat, env)
        first_anchor, exit_anchor = timings["river + confluent-kafka (anchor)"]
        print(f"{args.lines:,} events on a one-partition topic ({args.kafka}), a new consumer group per run, median of {args.repeat}: "
              "spawn to the first learned event, spawn to exit")
        for name, (first, done) in timings.items():
            print(f"  {name:40s} first event {first:5.2f} s ({first / first_anchor:4.2f}x)   exit {done:5.2f} s ({done / exit_anchor:4.2f}x)")


if __name__ == "__main__":
    main()
