"""A user's short job against the same work in plain River, start-up included (issue 30 item 4).

Each contender is a fresh process, timed from its start to its exit (so imports count):

* ``river``: a script that reads the JSON-lines file with orjson and runs River's progressive
  validation loop (StandardScaler | LogisticRegression, Accuracy): the anchor;
* ``riverbeam replay``: ``riverbeam replay --mode evaluate`` on the same file;
* ``riverbeam replay (learn)``: the same with checkpoints written to a local folder;
* ``python -c 'import river'``: what importing River alone costs, for reference.

Prints seconds (median of ``--repeat`` runs) and each one's ratio to the anchor (lower is better).

    python benchmarks/bench_startup.py                 # 1,000 lines of Phishing, 5 repeats
    python benchmarks/bench_startup.py --lines 1000 --repeat 3
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


if __name__ == "__main__":
    main()
