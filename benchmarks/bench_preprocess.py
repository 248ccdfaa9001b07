"""Preprocessing throughput and online transform latency, each against an anchor from the same run.

1. Batch: ``pipelines.preprocess`` on the FnApiRunner (rows/s, wall clock including TF graph
   building and analysis) against a pandas implementation of the same transforms on the same
   rows (z-score, min-max, quantile buckets, vocabulary with OOV hashing, FarmHash buckets, log1p).
2. Online: `FittedTransform.apply` in µs/event against River's own
   ``StandardScaler() | LogisticRegression()`` learn_one + predict_one per event.

Run: ``NO_GCE_CHECK=true python benchmarks/bench_preprocess.py [--repeat N]`` (N copies of
ImageSegments, 2310 rows each; default 4).
"""

from __future__ import annotations

import argparse
import csv
import os
import tempfile
import time

import numpy as np
import pandas as pd
import yaml

FEATURES = [
    {"name": "intensity-mean", "type": "float", "transform": "z_score"},
    {"name": "hue-mean", "type": "float", "transform": "min_max"},
    {"name": "saturation-mean", "type": "float", "transform": "bucketize", "num_buckets": 4},
    {"name": "vedge-mean", "type": "float", "transform": "log1p"},
    {"name": "region-centroid-col", "type": "string", "transform": "vocabulary", "top_k": 20, "frequency_threshold": 5, "num_oov_buckets": 2},
    {"name": "region-centroid-row", "type": "int", "transform": "hash", "hash_buckets": 32},
    {"name": "short-line-density-5", "type": "float", "transform": "identity"},
]
LABEL = {"name": "class", "type": "string"}


def dataset(repeat: int) -> list[dict]:
    from river import datasets

    rows = [{**x, "class": y} for x, y in datasets.ImageSegments()]
    return rows * repeat


def pandas_transform(frame: pd.DataFrame) -> pd.DataFrame:
    """The same transforms, fitted and applied with pandas/numpy (the anchor)."""
    from transforms.fitted import fingerprint64

    out = pd.DataFrame(index=frame.index)
    x = frame["intensity-mean"].astype(np.float32).astype(np.float64)
    out["intensity-mean"] = ((x - x.mean()) / x.std(ddof=0)).astype(np.float32)
    h = frame["hue-mean"].astype(np.float32).astype(np.float64)
    out["hue-mean"] = ((h - h.min()) / (h.max() - h.min())).astype(np.float32)
    s = frame["saturation-mean"].astype(np.float32)
    boundaries = np.quantile(s, [0.25, 0.5, 0.75])
    out["saturation-mean"] = np.searchsorted(boundaries, s, side="right")
    out["vedge-mean"] = np.log1p(frame["vedge-mean"].astype(np.float32).astype(np.float64)).astype(np.float32)
    col = frame["region-centroid-col"].astype(str)
    counts = col.value_counts()
    vocab = [v for v in counts[counts >= 5].index[:20]]
    index = {v: i for i, v in enumerate(vocab)}
    out["region-centroid-col"] = [index[v] if v in index else len(vocab) + fingerprint64(v) % 2 for v in col]
    out["region-centroid-row"] = [fingerprint64(str(v)) % 32 for v in frame["region-centroid-row"]]
    out["short-line-density-5"] = frame["short-line-density-5"].astype(np.float32)
    out["class"] = frame["class"]
    return out


def bench_batch(rows: list[dict]) -> tuple[float, float, str]:
    """(pipeline rows/s, pandas rows/s, the pipeline's output directory)."""
    from pipelines.preprocess import run

    work = tempfile.mkdtemp(prefix="bench-preprocess-")
    path = os.path.join(work, "data.csv")
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    config = os.path.join(work, "job.yaml")
    with open(config, "w") as file:
        yaml.safe_dump({"features": FEATURES, "label": LABEL, "input": {"pattern": path, "format": "csv"},
                        "output": {"dir": os.path.join(work, "out"), "formats": ["parquet"]}}, file)

    start = time.perf_counter()
    frame = pd.read_csv(path)
    transformed = pandas_transform(frame)
    transformed.to_parquet(os.path.join(work, "pandas.parquet"))
    pandas_rate = len(rows) / (time.perf_counter() - start)

    import tensorflow_transform  # noqa: F401  (import cost is not the pipeline's)

    start = time.perf_counter()
    run(["--config", config, "--runner=FnApiRunner"])
    beam_rate = len(rows) / (time.perf_counter() - start)
    return beam_rate, pandas_rate, os.path.join(work, "out")


def bench_online(rows: list[dict], out_dir: str) -> tuple[float, float]:
    """(FittedTransform.apply µs/event, River learner predict+learn µs/event)."""
    from river import compose, linear_model, preprocessing

    from transforms.fitted import FITTED_FILENAME, FittedTransform

    fitted = FittedTransform.load(os.path.join(out_dir, FITTED_FILENAME))
    events = [{k: v for k, v in r.items()} for r in rows]
    for event in events:
        event["region-centroid-col"] = str(event["region-centroid-col"])
    start = time.perf_counter()
    transformed = [fitted.apply(e) for e in events]
    transform_us = (time.perf_counter() - start) / len(events) * 1e6

    model = compose.Pipeline(preprocessing.StandardScaler(), linear_model.LogisticRegression())
    xs = [{k: v for k, v in t.items() if k != "class" and isinstance(v, float)} for t in transformed]
    ys = [r["class"] == "sky" for r in rows]
    start = time.perf_counter()
    for x, y in zip(xs, ys):
        model.predict_one(x)
        model.learn_one(x, y)
    learner_us = (time.perf_counter() - start) / len(xs) * 1e6
    return transform_us, learner_us


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=4, help="copies of ImageSegments (2310 rows each)")
    args = parser.parse_args()
    os.environ.setdefault("NO_GCE_CHECK", "true")
    rows = dataset(args.repeat)
    beam_rate, pandas_rate, out_dir = bench_batch(rows)
    print(f"batch  : {len(rows)} rows; FnApiRunner+TFT {beam_rate:,.0f} rows/s, pandas {pandas_rate:,.0f} rows/s; "
          f"ratio beam/pandas = {beam_rate / pandas_rate:.3f}")
    transform_us, learner_us = bench_online(rows, out_dir)
    print(f"online : FittedTransform.apply {transform_us:.2f} µs/event, StandardScaler|LogisticRegression predict+learn "
          f"{learner_us:.2f} µs/event; ratio transform/learner = {transform_us / learner_us:.3f}")


if __name__ == "__main__":
    main()
