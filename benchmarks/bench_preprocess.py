"""Preprocessing throughput and online transform cost, each against an anchor measured in the same run.

1. ``batch``: ``pipelines.preprocess`` on the FnApiRunner, TFT fed Arrow record batches (the
   product path) and instance dicts (the path before issue 17), against a plain TFT pipeline
   doing the same job (`plain_tft`: CSV into instance dicts, the anchor of issue 30), in rounds;
   ``--against REV`` adds the pipeline as of a git revision (before/after in one run); a pandas
   implementation of the same transforms is a floor. Rows/s, wall clock including TF graph
   building and analysis, on the same CSV. ``--rows`` sets the size (200k for issues 17 and 30;
   three rounds take about 4 minutes on 2 cores).
2. ``online``: `FittedTransform.apply` in µs/event, compiled (now) and as it was before issue 17
   (the closure-per-feature version of ``transforms/fitted.py`` at commit ``BEFORE_COMMIT``,
   loaded from git), against River's ``StandardScaler() | LogisticRegression()`` predict +
   learn per event, on the same events; also the README example's spec (one-hot, passthrough).
3. ``pca``: what a ``pca`` transform costs per event and when it helps: ImageSegments' ten colour
   columns (nearly collinear) replaced by their first k principal components (scaled first), for
   a linear model, a Hoeffding tree and k-nearest neighbours, progressive validation accuracy
   and µs/event, raw vs transformed.

Run: ``NO_GCE_CHECK=true python benchmarks/bench_preprocess.py [--only batch|online|pca] [--rows N] [--rounds N] [--against REV] [--events N]``.
"""

from __future__ import annotations

import argparse
import csv
import glob
import importlib.util
import os
import subprocess
import sys
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
COLOURS = ["intensity-mean", "rawred-mean", "rawblue-mean", "rawgreen-mean", "exred-mean", "exblue-mean", "exgreen-mean",
           "value-mean", "saturation-mean", "hue-mean"]
BEFORE_COMMIT = "6ebbc87"  # transforms/fitted.py before issue 17 (one closure per feature, walked per event)


def dataset(rows: int) -> list[dict]:
    from river import datasets

    base = [{**x, "class": y} for x, y in datasets.ImageSegments()]
    return (base * (rows // len(base) + 1))[:rows]


def write_job(work: str, rows: list[dict], features: list[dict], formats=("parquet",), passthrough: bool = False) -> str:
    path = os.path.join(work, "data.csv")
    if not os.path.exists(path):
        with open(path, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    config = os.path.join(work, f"job-{len(os.listdir(work))}.yaml")
    with open(config, "w") as file:
        yaml.safe_dump({"features": features, "label": LABEL, "input": {"pattern": path, "format": "csv"}, "passthrough": passthrough,
                        "output": {"dir": os.path.join(work, f"out-{len(os.listdir(work))}"), "formats": list(formats)}}, file)
    return config


def preprocess(config: str, batch_format: str = "record_batches") -> tuple[float, str]:
    """(seconds, output dir) of one pipeline run."""
    from pipelines.preprocess import run

    start = time.perf_counter()
    summary = run(["--config", config, "--runner=FnApiRunner"], batch_format=batch_format)
    return time.perf_counter() - start, summary["output_dir"]


def plain_tft(config: str) -> float:
    """Seconds of a plain tensorflow-transform pipeline doing the same job (the anchor of issue 30).

    What a TFT user writes from the census example without TFXIO: CSV lines parsed with the `csv`
    module into instance dicts of typed values, ``AnalyzeAndTransformDataset`` with the same
    ``preprocessing_fn``, the transformed dicts written in the job's formats, TFRecord
    (``EncodeTransformedDataset``) and/or Parquet (``WriteToParquet``), and the transform
    function; no validation, no bad rows.
    """
    import apache_beam as beam
    import tensorflow_transform.beam as tft_beam

    from pipelines.preprocess import parquet_schema
    from transforms.config import PreprocessJobConfig
    from transforms.spec import raw_columns
    from transforms.tft_fn import build_preprocessing_fn, raw_metadata

    job = PreprocessJobConfig.model_validate(yaml.safe_load(open(config)))
    features, label, out = list(job.features), job.label, job.output.dir + "-plain"
    header = next(csv.reader(open(job.input.pattern)))
    casts = {"float": float, "int": int, "string": str}
    columns = [(header.index(name), name, casts[kind]) for name, kind in raw_columns(features, label)]
    schema = parquet_schema(features, label)

    def parse(line: str) -> dict:
        fields = next(csv.reader([line]))
        return {name: cast(fields[i]) for i, name, cast in columns}

    def plain(row: dict) -> dict:
        return {k: (v.decode() if isinstance(v, bytes) else v.item() if hasattr(v, "item") else v) for k, v in row.items()}

    start = time.perf_counter()
    with beam.Pipeline(options=beam.options.pipeline_options.PipelineOptions(["--runner=FnApiRunner"])) as pipeline:
        with tft_beam.Context(temp_dir=tempfile.mkdtemp(prefix="bench-plain-tft-")):
            rows = pipeline | "Read" >> beam.io.ReadFromText(job.input.pattern, skip_header_lines=1) | "Parse" >> beam.Map(parse)
            (data, metadata), transform_fn = (rows, raw_metadata(features, label)) | tft_beam.AnalyzeAndTransformDataset(
                build_preprocessing_fn(features, label))
            if "tfrecord" in job.output.formats:
                _ = ((data, metadata) | tft_beam.EncodeTransformedDataset()
                     | beam.io.WriteToTFRecord(os.path.join(out, "data", "train"), file_name_suffix=".tfrecord"))
            if "parquet" in job.output.formats:
                _ = data | beam.Map(plain) | beam.io.WriteToParquet(os.path.join(out, "data", "train"), schema, file_name_suffix=".parquet")
            _ = transform_fn | tft_beam.WriteTransformFn(out)
    return time.perf_counter() - start


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


def parquet_rows(out: str) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(path).metadata.num_rows for path in glob.glob(os.path.join(out, "data", "*.parquet")))


def bench_batch(rows: int, rounds: int = 3, against: str | None = None, formats: tuple[str, ...] = ("tfrecord", "parquet")) -> None:
    """Rounds of: the plain TFT pipeline (the anchor), riverbeam's record batches, its instance dicts and, with
    `against`, riverbeam's record batches as of that git revision; rows/s and ratios to the anchor, best and
    median of the wall clock, and median of the process's CPU time (less disturbed by a shared machine)."""
    import statistics

    import tensorflow_transform  # noqa: F401  (import cost is not the pipeline's)

    import pipelines.preprocess  # noqa: F401

    data = dataset(rows)
    work = tempfile.mkdtemp(prefix="bench-preprocess-")
    config = write_job(work, data, FEATURES, formats=formats)
    start = time.perf_counter()
    frame = pd.read_csv(os.path.join(work, "data.csv"))
    pandas_transform(frame).to_parquet(os.path.join(work, "pandas.parquet"))
    pandas_rate = rows / (time.perf_counter() - start)
    then = module_before("pipelines/preprocess.py", against) if against else None
    contenders = {"plain TFT": lambda: plain_tft(config), "record batches": lambda: preprocess(config)[0],
                  "instance dicts": lambda: preprocess(config, batch_format="instance_dicts")[0]}
    if then is not None:
        def run_then() -> float:
            start = time.perf_counter()
            then.run(["--config", config, "--runner=FnApiRunner"])
            return time.perf_counter() - start

        contenders[f"record batches at {against}"] = run_then
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    cpu: dict[str, list[float]] = {name: [] for name in contenders}
    for round_ in range(rounds):
        for name, contender in contenders.items():
            start = time.process_time()
            seconds[name].append(contender())
            cpu[name].append(time.process_time() - start)
        print(f"batch  : round {round_ + 1}: " + ", ".join(f"{name} {s[-1]:.1f} s" for name, s in seconds.items())
              + f"; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    if "parquet" in formats:
        job = yaml.safe_load(open(config))
        written = parquet_rows(job["output"]["dir"])
        assert parquet_rows(job["output"]["dir"] + "-plain") == written == rows, "the pipelines wrote different row counts"
    anchor, anchor_cpu = seconds["plain TFT"], statistics.median(cpu["plain TFT"])
    print(f"batch  : {rows:,} rows (CSV -> {' + '.join(formats)}), {rounds} rounds; pandas {pandas_rate:,.0f} rows/s")
    for name, s in seconds.items():
        print(f"batch  : {name}: best {rows / min(s):,.0f} rows/s, median {rows / statistics.median(s):,.0f} rows/s; "
              f"/ plain TFT: best {min(anchor) / min(s):.2f}x, median {statistics.median(anchor) / statistics.median(s):.2f}x, "
              f"CPU median {statistics.median(cpu[name]):.1f} s ({anchor_cpu / statistics.median(cpu[name]):.2f}x)")


def module_before(path: str, commit: str):
    """The module at `path` as it was at `commit`, loaded beside today's (None when git history is not at hand)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        source = subprocess.run(["git", "-C", root, "show", f"{commit}:{path}"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    name = path.replace("/", "_").removesuffix(".py") + "_before"
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader=None))
    sys.modules[name] = module  # Beam pickles the module's functions by reference
    if path == "pipelines/preprocess.py":  # a second PipelineOptions subclass with the same flags would clash: reuse today's
        source = source.replace("class PreprocessOptions(PipelineOptions):", "class _PreprocessOptionsThen:")
    exec(compile(source, f"{name}.py", "exec"), module.__dict__)  # noqa: S102 - this repository's own history
    if path == "pipelines/preprocess.py":
        from pipelines.preprocess import PreprocessOptions

        module.PreprocessOptions = PreprocessOptions
    return module


def per_event_us(function, events: list[dict]) -> float:
    start = time.perf_counter()
    for event in events:
        function(event)
    return (time.perf_counter() - start) / len(events) * 1e6


def learn_us(xs: list[dict], ys: list) -> float:
    from river import compose, linear_model, preprocessing

    model = compose.Pipeline(preprocessing.StandardScaler(), linear_model.LogisticRegression())
    start = time.perf_counter()
    for x, y in zip(xs, ys):
        model.predict_one(x)
        model.learn_one(x, y)
    return (time.perf_counter() - start) / len(xs) * 1e6


def bench_online(events_count: int) -> None:
    import json

    from transforms.fitted import FITTED_FILENAME, FittedTransform

    base = dataset(2310)
    work = tempfile.mkdtemp(prefix="bench-online-")
    _, out = preprocess(write_job(work, base, FEATURES))
    document = json.load(open(os.path.join(out, FITTED_FILENAME)))
    events = [{k: v for k, v in row.items() if k != "class"} for row in dataset(events_count)]
    after = FittedTransform.from_document(document)
    transformed = [after.apply(e) for e in events]
    xs = [{k: float(v) for k, v in t.items()} for t in transformed]
    ys = [row["class"] == "sky" for row in dataset(events_count)]
    learner = learn_us(xs, ys)
    before_module = module_before("transforms/fitted.py", BEFORE_COMMIT)
    after_us = per_event_us(after.apply, events)
    if before_module is not None:
        before = before_module.FittedTransform.from_document(document)
        assert [before.apply(e) for e in events[:2000]] == transformed[:2000]  # the same outputs
        before_us = per_event_us(before.apply, events)
        print(f"online : {events_count:,} events, 7 features (index encodings): FittedTransform.apply before (closures, {BEFORE_COMMIT}) "
              f"{before_us:.2f} µs/event, after (compiled) {after_us:.2f} µs/event ({before_us / after_us:.1f}x); "
              f"StandardScaler|LogisticRegression predict+learn {learner:.2f} µs/event; "
              f"transform/learn before = {before_us / learner:.3f}, after = {after_us / learner:.3f}")
    else:
        print(f"online : (git history not at hand: no before) after {after_us:.2f} µs/event; transform/learn = {after_us / learner:.3f}")
    example = yaml.safe_load(open(os.path.join(os.path.dirname(__file__), "..", "transforms", "examples", "preprocess.yaml")))
    _, out = preprocess(write_job(work, base, example["features"], passthrough=True))
    fitted = FittedTransform.load(out)
    example_us = per_event_us(fitted.apply, events)
    xs = [fitted.apply(e) for e in events]
    print(f"online : README example (7 transforms, 2 one-hot, passthrough of 10; 29 columns out): {example_us:.2f} µs/event; "
          f"transform/learn (on its 29 columns) = {example_us / learn_us(xs, ys):.3f}")


def bench_pca(ks: tuple[int, ...] = (3, 5)) -> None:
    from river import compose, linear_model, metrics, neighbors, preprocessing, tree

    from transforms.fitted import FittedTransform

    rows = dataset(2310)
    work = tempfile.mkdtemp(prefix="bench-pca-")
    events = [{k: v for k, v in row.items() if k != "class"} for row in rows]
    labels = [row["class"] for row in rows]
    fitted = {}
    for k in ks:
        _, out = preprocess(write_job(work, rows, [{"name": "colour", "type": "float", "transform": "pca", "inputs": COLOURS, "k": k,
                                                    "scale": True}], passthrough=True))
        fitted[k] = FittedTransform.load(out)
    models = {
        "StandardScaler|SoftmaxRegression": lambda: compose.Pipeline(preprocessing.StandardScaler(), linear_model.SoftmaxRegression()),
        "HoeffdingTreeClassifier": lambda: tree.HoeffdingTreeClassifier(),
        "StandardScaler|KNNClassifier": lambda: compose.Pipeline(preprocessing.StandardScaler(), neighbors.KNNClassifier()),
    }
    print(f"pca    : ImageSegments, {len(COLOURS)} colour columns -> k principal components (scaled first), the other 9 passed through")
    for k, transform in fitted.items():
        print(f"pca    : k={k}: transform {per_event_us(transform.apply, events * 20):.2f} µs/event")
    for name, make in models.items():
        cells = []
        for k in (None, *ks):
            xs = events if k is None else [fitted[k].apply(e) for e in events]
            model, accuracy = make(), metrics.Accuracy()
            start = time.perf_counter()
            for x, y in zip(xs, labels):
                y_pred = model.predict_one(x)
                if y_pred is not None:
                    accuracy.update(y, y_pred)
                model.learn_one(x, y)
            us = (time.perf_counter() - start) / len(xs) * 1e6
            cells.append(f"{'raw' if k is None else f'k={k}'} {accuracy.get():.4f} ({us:.0f} µs/event)")
        print(f"pca    : {name}: " + ", ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=("batch", "online", "pca"), help="run one part only")
    parser.add_argument("--rows", type=int, default=20_000, help="batch: rows of the CSV (ImageSegments repeated); 200000 for issues 17 and 30")
    parser.add_argument("--rounds", type=int, default=3, help="batch: rounds of every contender")
    parser.add_argument("--formats", default="tfrecord,parquet", help="batch: the output formats of every contender")
    parser.add_argument("--against", help="batch: also riverbeam's pipeline as of this git revision (3fe831a: before issue 17)")
    parser.add_argument("--events", type=int, default=200_000, help="online: events transformed")
    args = parser.parse_args()
    os.environ.setdefault("NO_GCE_CHECK", "true")
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if args.only in (None, "batch"):
        bench_batch(args.rows, args.rounds, args.against, tuple(args.formats.split(",")))
    if args.only in (None, "online"):
        bench_online(args.events)
    if args.only in (None, "pca"):
        bench_pca()


if __name__ == "__main__":
    main()
