"""The preprocess pipeline on River's ImageSegments: analyzers against numpy/pandas, online parity,
bad rows, ``gs://`` on the emulator and the portable runner."""

from __future__ import annotations

import csv
import glob
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import yaml

pytestmark = pytest.mark.beam

FEATURES = [
    {"name": "intensity-mean", "type": "float", "transform": "z_score"},
    {"name": "region-centroid-row", "type": "int", "transform": "z_score"},
    {"name": "hue-mean", "type": "float", "transform": "min_max"},
    {"name": "saturation-mean", "type": "float", "transform": "bucketize", "num_buckets": 4},
    {"name": "vedge-mean", "type": "float", "transform": "log1p"},
    {"name": "region-centroid-col", "type": "string", "transform": "vocabulary", "top_k": 20, "frequency_threshold": 5, "num_oov_buckets": 2},
    {"name": "rawred-mean", "type": "float", "transform": "identity"},
    {"name": "short-line-density-2", "type": "float", "transform": "identity"},
]
HASHED = {"name": "region-centroid-row", "type": "string", "transform": "hash", "hash_buckets": 16}
LABEL = {"name": "class", "type": "string"}
BAD_LINES = ["1,2,3", "", ",".join(["x"] * 20)]


def segment_rows(limit: int | None = None) -> list[dict]:
    from river import datasets

    rows = [{**x, "class": y} for x, y in datasets.ImageSegments()]
    return rows[:limit] if limit else rows


def write_csv(path, rows, extra_lines=()):
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        for line in extra_lines:
            file.write(line + "\n")


def write_config(path, features, input_, output, max_bad_rows=0):
    path.write_text(yaml.safe_dump({"features": features, "label": LABEL, "input": input_, "output": output, "max_bad_rows": max_bad_rows}))
    return str(path)


def read_parquet_rows(pattern: str) -> list[dict]:
    import pyarrow.parquet as pq

    return [row for path in sorted(glob.glob(pattern)) for row in pq.read_table(path).to_pylist()]


def typed(rows, specs):
    from transforms.spec import FeatureSpec, LabelSpec

    features = [FeatureSpec(**f) for f in specs]
    label = LabelSpec(**LABEL)
    return [{**{f.name: f.coerce(r[f.name]) for f in features}, label.name: label.coerce(r[label.name])} for r in rows]


@pytest.fixture(scope="module")
def fitted_run(tmp_path_factory):
    """One FnApiRunner run on all 2310 ImageSegments rows plus bad lines, with an eval split."""
    from pipelines.preprocess import run

    root = tmp_path_factory.mktemp("preprocess")
    rows = segment_rows()
    write_csv(root / "segment.csv", rows, BAD_LINES)
    config = write_config(
        root / "job.yaml", FEATURES, {"pattern": str(root / "segment.csv"), "format": "csv"},
        {"dir": str(root / "out"), "formats": ["tfrecord", "parquet"], "split": {"eval_fraction": 0.25}}, max_bad_rows=5,
    )
    summary = run(["--config", config, "--runner=FnApiRunner"])
    return {"root": root, "out": str(root / "out"), "rows": rows, "summary": summary}


def train_frame(fitted_run) -> pd.DataFrame:
    from pipelines.preprocess import split_of

    rows = typed(fitted_run["rows"], FEATURES)
    return pd.DataFrame([r for r in rows if split_of(r, 0.25) == "train"])


def fitted_features(fitted_run) -> dict:
    doc = json.loads(open(os.path.join(fitted_run["out"], "fitted_transforms.json")).read())
    return {f["name"]: f for f in doc["features"]}


def test_layout_and_counts(fitted_run):
    out = fitted_run["out"]
    for part in ("transform_fn/saved_model.pb", "transformed_metadata/schema.pbtxt", "fitted_transforms.json"):
        assert os.path.exists(os.path.join(out, part)), part
    assert glob.glob(f"{out}/data/train-*.tfrecord") and glob.glob(f"{out}/data/eval-*.parquet")
    assert fitted_run["summary"]["rows"] == 2310 and fitted_run["summary"]["bad_rows"] == 2  # the blank line is skipped
    train, evaluation = read_parquet_rows(f"{out}/data/train-*.parquet"), read_parquet_rows(f"{out}/data/eval-*.parquet")
    assert len(train) + len(evaluation) == 2310 and 0.2 < len(evaluation) / 2310 < 0.3
    assert len(train) == len(train_frame(fitted_run))


def test_bad_rows_are_written_with_the_reason(fitted_run):
    lines = [json.loads(line) for path in glob.glob(f"{fitted_run['out']}/errors/bad_rows-*.jsonl") for line in open(path)]
    assert sorted(b["reason"] for b in lines) == ["malformed CSV: expected 19 fields, got 20", "malformed CSV: expected 19 fields, got 3"]
    assert sorted(b["row"] for b in lines) == sorted([BAD_LINES[0], BAD_LINES[2]])


def test_analyzers_match_numpy_and_pandas(fitted_run):
    frame, fitted = train_frame(fitted_run), fitted_features(fitted_run)
    x32 = frame["intensity-mean"].to_numpy(np.float32).astype(np.float64)
    assert fitted["intensity-mean"]["mean"] == pytest.approx(x32.mean(), rel=1e-12)
    assert fitted["intensity-mean"]["var"] == pytest.approx(x32.var(), rel=1e-9)
    ints = frame["region-centroid-row"].to_numpy(np.float64)
    assert fitted["region-centroid-row"]["mean"] == pytest.approx(ints.mean(), rel=1e-12)
    assert fitted["region-centroid-row"]["var"] == pytest.approx(ints.var(), rel=1e-9)
    hue = frame["hue-mean"].to_numpy(np.float32)
    assert (fitted["hue-mean"]["min"], fitted["hue-mean"]["max"]) == (float(hue.min()), float(hue.max()))
    # quantile boundaries: approximate (epsilon 0.01), so compare ranks, and with numpy's quantiles loosely
    saturation = frame["saturation-mean"].to_numpy(np.float32)
    boundaries = fitted["saturation-mean"]["boundaries"]
    assert len(boundaries) == 3
    assert [np.mean(saturation < b) for b in boundaries] == pytest.approx([0.25, 0.5, 0.75], abs=0.02)
    assert boundaries == pytest.approx(np.quantile(saturation, [0.25, 0.5, 0.75]), rel=0.05)
    # vocabulary: frequency >= 5, most frequent first, ties broken by the value, descending; top 20
    counts = frame["region-centroid-col"].value_counts()
    ordered = sorted(((n, v.encode()) for v, n in counts.items() if n >= 5), reverse=True)[:20]
    assert fitted["region-centroid-col"]["vocabulary"] == [v.decode() for _, v in ordered]


def test_online_parity_with_tft_graph(fitted_run):
    """FittedTransform.apply against TFT's own transform of the same raw rows: within 1e-6 on every feature."""
    import tensorflow as tf
    import tensorflow_transform as tft

    from transforms.fitted import FittedTransform

    fitted = FittedTransform.load(fitted_run["out"])
    rows = typed(fitted_run["rows"], FEATURES)
    extra = [dict(rows[0], **{"region-centroid-col": "99999"}), dict(rows[1], **{"region-centroid-col": "-3"}),
             dict(rows[2], **{"saturation-mean": 10.0, "intensity-mean": -1000.0, "hue-mean": 50.0})]
    rows = rows + extra
    raw = {f["name"]: tf.constant([r[f["name"]] for r in rows], dtype={"float": tf.float32, "int": tf.int64, "string": tf.string}[f["type"]])
           for f in FEATURES}
    raw["class"] = tf.constant([r["class"] for r in rows])
    graph_out = tft.TFTransformOutput(fitted_run["out"]).transform_raw_features(raw)
    online = fitted.apply_many(rows)
    for feature in FEATURES:
        name = feature["name"]
        expected = graph_out[name].numpy()
        got = np.array([o[name] for o in online], dtype=object)
        if expected.dtype.kind == "O":
            assert [e.decode() for e in expected] == list(got), name
        else:
            assert np.max(np.abs(expected.astype(np.float64) - got.astype(np.float64))) <= 1e-6, name
    assert [o["region-centroid-col"] for o in online[-3:-1]] == [int(v) for v in graph_out["region-centroid-col"].numpy()[-3:-1]]
    assert all(o["region-centroid-col"] >= 20 for o in online[-3:-1])  # out of vocabulary: the OOV buckets


def test_online_parity_with_written_data(fitted_run):
    """The written Parquet rows (TFT's transformed output) equal FittedTransform.apply on the raw rows, as multisets."""
    from transforms.fitted import FittedTransform

    fitted = FittedTransform.load(fitted_run["out"])
    online = fitted.apply_many(typed(fitted_run["rows"], FEATURES))
    written = read_parquet_rows(f"{fitted_run['out']}/data/*.parquet")
    names = [f["name"] for f in FEATURES] + ["class"]
    key = lambda row: tuple(round(row[n], 5) if isinstance(row[n], float) else row[n] for n in names)  # noqa: E731
    online, written = sorted(online, key=key), sorted(written, key=key)
    assert len(online) == len(written)
    for a, b in zip(online, written):
        for n in names:
            assert (abs(a[n] - b[n]) <= 1e-6) if isinstance(a[n], float) else a[n] == b[n], n


def test_tfrecord_output_decodes_with_the_transformed_spec(fitted_run):
    import tensorflow as tf
    import tensorflow_transform as tft

    spec = tft.TFTransformOutput(fitted_run["out"]).transformed_feature_spec()
    files = glob.glob(f"{fitted_run['out']}/data/train-*.tfrecord")
    batch = next(iter(tf.data.TFRecordDataset(files).batch(5000).map(lambda s: tf.io.parse_example(s, spec))))
    assert batch["saturation-mean"].shape[0] == len(read_parquet_rows(f"{fitted_run['out']}/data/train-*.parquet"))
    assert set(np.unique(batch["saturation-mean"].numpy())) == {0, 1, 2, 3}


def test_hash_matches_tensorflow(fitted_run):
    import tensorflow as tf

    from transforms.fitted import fingerprint64

    values = sorted({str(r["region-centroid-row"]) for r in fitted_run["rows"]}) + ["", "é", "a b", "x" * 100]
    expected = tf.strings.to_hash_bucket_fast(values, 1009).numpy().tolist()
    assert [fingerprint64(v) % 1009 for v in values] == expected


def test_too_many_bad_rows_fail_the_job(tmp_path):
    from pipelines.preprocess import TooManyBadRowsError, run

    write_csv(tmp_path / "small.csv", segment_rows(50), BAD_LINES)
    config = write_config(tmp_path / "job.yaml", FEATURES[:2], {"pattern": str(tmp_path / "small.csv")}, {"dir": str(tmp_path / "out")})
    with pytest.raises(TooManyBadRowsError, match="too many bad rows: 2 rows failed validation, max_bad_rows is 1"):
        run(["--config", config, "--runner=FnApiRunner", "--max_bad_rows=1"])
    assert not os.path.exists(tmp_path / "out" / "fitted_transforms.json")


def test_gcs_input_and_output_on_the_emulator(beam_gcs, gcs_client, gcs_prefix, tmp_path):
    from pipelines.preprocess import run
    from transforms.fitted import FittedTransform

    rows = segment_rows(300)
    bucket_name, prefix = gcs_prefix[len("gs://"):].split("/", 1)
    bucket = gcs_client.bucket(bucket_name)
    bucket.blob(f"{prefix}/input/part-0.jsonl").upload_from_string("\n".join(json.dumps(r) for r in rows) + "\n")
    features = FEATURES[:3] + [HASHED | {"name": "region-centroid-col"}]
    config = write_config(tmp_path / "job.yaml", features, {"pattern": f"{gcs_prefix}/input/*.jsonl", "format": "jsonl"},
                          {"dir": f"{gcs_prefix}/out", "formats": ["parquet"]})
    summary = run(["--config", config, "--runner=FnApiRunner"])
    assert summary["rows"] == 300 and summary["bad_rows"] == 0
    names = {b.name[len(prefix) + 1:] for b in bucket.list_blobs(prefix=prefix)}
    assert {"out/fitted_transforms.json", "out/transform_fn/saved_model.pb", "out/transformed_metadata/schema.pbtxt"} <= names
    data = [n for n in names if n.startswith("out/data/train-") and n.endswith(".parquet")]
    assert data
    import io

    import pyarrow.parquet as pq

    written = [r for n in data for r in pq.read_table(io.BytesIO(bucket.blob(f"{prefix}/{n}").download_as_bytes())).to_pylist()]
    fitted = FittedTransform.load(f"{gcs_prefix}/out")
    online = fitted.apply_many(typed(rows, features))
    key = lambda r: (r["region-centroid-col"], round(r["intensity-mean"], 5), r["class"])  # noqa: E731
    for a, b in zip(sorted(online, key=key), sorted(written, key=key)):
        assert a["region-centroid-col"] == b["region-centroid-col"] and abs(a["intensity-mean"] - b["intensity-mean"]) <= 1e-6


def test_s3_config_input_and_output_on_the_s3_server(local_stack, s3_client, s3_prefix):
    """Beam's own S3 filesystem, pointed at the local S3 server by the standard AWS variables."""
    import io

    import pyarrow.parquet as pq

    from pipelines.preprocess import run
    from transforms.fitted import FittedTransform

    rows = segment_rows(300)
    bucket, prefix = local_stack.bucket, s3_prefix[len(f"s3://{local_stack.bucket}/"):]
    s3_client.put_object(Bucket=bucket, Key=f"{prefix}/input/part-0.jsonl", Body="\n".join(json.dumps(r) for r in rows) + "\n")
    features = FEATURES[:3] + [HASHED | {"name": "region-centroid-col"}]
    job = {"features": features, "label": LABEL, "input": {"pattern": f"{s3_prefix}/input/*.jsonl", "format": "jsonl"},
           "output": {"dir": f"{s3_prefix}/out", "formats": ["parquet"]}, "max_bad_rows": 0}
    s3_client.put_object(Bucket=bucket, Key=f"{prefix}/job.yaml", Body=yaml.safe_dump(job))
    summary = run(["--config", f"{s3_prefix}/job.yaml", "--runner=FnApiRunner"])
    assert summary["rows"] == 300 and summary["bad_rows"] == 0
    pages = s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
    names = {item["Key"][len(prefix) + 1:] for page in pages for item in page.get("Contents", ())}
    assert {"out/fitted_transforms.json", "out/transform_fn/saved_model.pb", "out/transformed_metadata/schema.pbtxt"} <= names
    data = [n for n in names if n.startswith("out/data/") and n.endswith(".parquet")]
    assert any(n.startswith("out/data/train-") for n in data) and not any(n.startswith("s3:") for n in os.listdir("."))
    written = [r for n in data for r in pq.read_table(io.BytesIO(s3_client.get_object(Bucket=bucket, Key=f"{prefix}/{n}")["Body"].read())).to_pylist()]
    assert len(written) == 300  # train and eval together: every row, once
    fitted = FittedTransform.load(f"{s3_prefix}/out")
    online = fitted.apply_many(typed(rows, features))
    key = lambda r: (r["region-centroid-col"], round(r["intensity-mean"], 5), r["class"])  # noqa: E731
    matched = {key(r) for r in online}
    for row in written:  # every written (train) row is the online transform of an input row
        assert key(row) in matched


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_portable_runner_through_the_cli(tmp_path):
    """`riverbeam preprocess` on PortableRunner against Beam's local job service (LOOPBACK workers).

    The job runs in a subprocess: Beam's portable client has been seen to abort at interpreter
    exit (rc 134) after the job is DONE, so the test checks the outputs and accepts that exit.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = segment_rows(400)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "segment.parquet")
    config = write_config(tmp_path / "job.yaml", FEATURES[:4], {"pattern": str(tmp_path / "segment.parquet"), "format": "parquet"},
                          {"dir": str(tmp_path / "out"), "formats": ["parquet"]})
    port = _free_port()
    env = {**os.environ, "NO_GCE_CHECK": "true"}
    service = subprocess.Popen(
        [sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main", f"--port={port}", f"--staging_dir={tmp_path / 'staging'}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.3)
        job = subprocess.run(
            [sys.executable, "-m", "riverbeam.cli", "preprocess", "--config", config, "--runner=PortableRunner",
             f"--job_endpoint=localhost:{port}", "--environment_type=LOOPBACK"],
            capture_output=True, text=True, env=env, timeout=240,
        )
    finally:
        service.terminate()
        service.wait(timeout=30)
    assert job.returncode in (0, 134), job.stderr[-3000:]
    assert os.path.exists(tmp_path / "out" / "fitted_transforms.json"), job.stderr[-3000:]
    from transforms.fitted import FittedTransform

    fitted = FittedTransform.load(str(tmp_path / "out"))
    written = read_parquet_rows(str(tmp_path / "out" / "data" / "train-*.parquet"))
    assert len(written) == 400
    online = fitted.apply_many(typed(rows, FEATURES[:4]))
    key = lambda r: (round(r["intensity-mean"], 5), r["region-centroid-row"], r["class"])  # noqa: E731
    for a, b in zip(sorted(online, key=key), sorted(written, key=key)):
        assert all(abs(a[n] - b[n]) <= 1e-6 for n in ("intensity-mean", "region-centroid-row", "hue-mean", "saturation-mean"))


# -- the README's example helps the model (issue 16.0) ---------------------------------------

EXAMPLE = "transforms/examples/preprocess.yaml"
REPLAY_MODEL = {"pipeline": [{"preprocessing.StandardScaler": {}}, {"linear_model.SoftmaxRegression": {}}], "metrics": ["Accuracy"]}


@pytest.fixture(scope="module")
def example_run(tmp_path_factory):
    """The README's example configuration, as shipped, on all of ImageSegments (CSV)."""
    from pipelines.preprocess import run

    root = tmp_path_factory.mktemp("example")
    rows = segment_rows()
    write_csv(root / "segment.csv", rows)
    with open(root / "segment.jsonl", "w") as file:
        file.writelines(json.dumps(r) + "\n" for r in rows)
    summary = run(["--config", EXAMPLE, "--runner=FnApiRunner", f"--input_pattern={root / 'segment.csv'}", f"--output_dir={root / 'out'}"])
    return {"root": root, "out": str(root / "out"), "rows": rows, "summary": summary}


def _replay_accuracy(root, name: str, features: dict | None, capsys) -> float:
    from riverbeam.cli import main

    config = root / f"{name}.yaml"
    config.write_text(yaml.safe_dump({"model": REPLAY_MODEL, "events": {"target": "class"}, **({"features": features} if features else {})}))
    capsys.readouterr()
    assert main(["replay", "--config", str(config), "--input", str(root / "segment.jsonl"), "--mode", "evaluate",
                 "--report", str(root / f"report-{name}"), "--no-progress"]) == 0
    report = json.loads((root / f"report-{name}" / "metrics.json").read_text())
    (final,) = report["final"].values()
    assert final["events"] == 2310
    return final["Accuracy"]


def test_the_readme_example_makes_the_model_at_least_as_accurate(example_run, capsys):
    """ImageSegments, StandardScaler | SoftmaxRegression, progressive validation: raw events vs the example's transform."""
    raw = _replay_accuracy(example_run["root"], "raw", None, capsys)
    transformed = _replay_accuracy(example_run["root"], "transformed", {"transform_output": example_run["out"]}, capsys)
    assert raw == pytest.approx(0.8255, abs=0.001)  # the figure of issue 16
    assert transformed >= raw + 0.01, (raw, transformed)


def test_the_example_keeps_unnamed_features_and_one_hot_encodes_buckets(example_run):
    from transforms.fitted import FittedTransform

    fitted = FittedTransform.load(example_run["out"])
    out = fitted.apply(dict(example_run["rows"][0]))
    assert len(out) == 19 - 2 + 8 + 4  # two bucketized columns become 8 + 4 one-hot columns; the label stays
    assert sum(out[f"region-centroid-row_{i}"] for i in range(8)) == 1.0 and "rawred-mean" in out and out["class"] == "path"
    written = read_parquet_rows(f"{example_run['out']}/data/train-*.parquet")
    assert set(written[0]) == set(fitted.feature_names) | {"class"}  # batch outputs: the spec's columns, same encoding
    assert {row["saturation-mean_3"] for row in written} == {0.0, 1.0}


def test_example_parity_with_tft_graph(example_run):
    """Every output column of the example (one-hot included) against TFT's transform_raw_features, on every row."""
    _assert_graph_parity(example_run["out"], yaml.safe_load(open(EXAMPLE))["features"], example_run["rows"])


def test_predict_accepts_the_raw_event_in_the_declared_types(example_run, tmp_path, capsys):
    from riverbeam.cli import main

    root = example_run["root"]
    config = tmp_path / "learn.yaml"
    config.write_text(yaml.safe_dump({"model": REPLAY_MODEL, "events": {"target": "class"}, "features": {"transform_output": example_run["out"]},
                                      "checkpoint": {"uri": str(tmp_path / "ckpt")}}))
    assert main(["replay", "--config", str(config), "--input", str(root / "segment.jsonl"), "--no-progress"]) == 0
    event = {k: v for k, v in example_run["rows"][0].items() if k != "class"}
    as_text = {**event, "region-centroid-row": str(event["region-centroid-row"]), "intensity-mean": str(event["intensity-mean"])}
    (tmp_path / "events.jsonl").write_text(json.dumps(event) + "\n" + json.dumps(as_text) + "\n" + json.dumps({**event, "hedge-sd": "x"}) + "\n")
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(tmp_path / "ckpt"), "--input", str(tmp_path / "events.jsonl")]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["prediction"] == lines[1]["prediction"] == "path" and "error" not in lines[0]
    assert lines[1]["probabilities"] == lines[0]["probabilities"]
    assert "hedge-sd: expected a number, got 'x'" in lines[2]["error"]


# -- PCA (issue 16.2) ---------------------------------------------------------------------------

PCA_FEATURES = [
    {"name": "a", "type": "float", "transform": "z_score"},
    {"name": "p", "type": "float", "transform": "pca", "inputs": ["a", "b", "c"], "k": 2},  # z-score first, then pca
    {"name": "q", "type": "int", "transform": "pca", "inputs": ["m", "n", "o"], "k": 2, "scale": True},
    {"name": "h", "type": "string", "transform": "hash", "hash_buckets": 4, "encoding": "one_hot"},
    {"name": "v", "type": "string", "transform": "vocabulary", "top_k": 3, "num_oov_buckets": 1, "encoding": "category"},
]
PCA_LABEL = {"name": "y", "type": "int"}


def pca_rows(count: int = 600) -> list[dict]:
    """Correlated Gaussian columns (a, b, c) and integer columns of very different scales (m, n, o)."""
    rng = np.random.default_rng(16)
    latent = rng.normal(size=(count, 2))
    abc = latent @ np.array([[3.0, 1.0, -2.0], [0.5, -1.5, 1.0]]) + rng.normal(scale=0.3, size=(count, 3)) + [10.0, -4.0, 0.5]
    mno = np.column_stack([latent[:, 0] * 1000, latent[:, 1] * 3 - latent[:, 0], rng.normal(size=count) * 50]).round().astype(int)
    return [{"a": float(r[0]), "b": float(r[1]), "c": float(r[2]), "m": int(s[0]), "n": int(s[1]), "o": int(s[2]),
             "h": f"h{i % 7}", "v": "xyzw"[i % 4] * (1 + i % 5 // 4), "y": int(r[0] > 10)} for i, (r, s) in enumerate(zip(abc, mno))]


@pytest.fixture(scope="module")
def pca_run(tmp_path_factory):
    from pipelines.preprocess import run

    root = tmp_path_factory.mktemp("pca")
    rows = pca_rows()
    bad = [{**rows[0], "b": ""}, {**rows[1], "m": "1.5"}, {k: v for k, v in rows[2].items() if k != "c"}]
    with open(root / "data.jsonl", "w") as file:
        file.writelines(json.dumps(r) + "\n" for r in rows + bad)
    (root / "job.yaml").write_text(yaml.safe_dump({
        "features": PCA_FEATURES, "label": PCA_LABEL, "input": {"pattern": str(root / "data.jsonl"), "format": "jsonl"},
        "output": {"dir": str(root / "out"), "formats": ["parquet"]}, "max_bad_rows": 3}))
    summary = run(["--config", str(root / "job.yaml"), "--runner=FnApiRunner"])
    return {"out": str(root / "out"), "rows": rows, "summary": summary}


def _assert_graph_parity(out_dir: str, features: list[dict], rows: list[dict], label: dict = LABEL) -> None:
    import tensorflow as tf
    import tensorflow_transform as tft

    from transforms.fitted import FittedTransform
    from transforms.spec import FeatureSpec, LabelSpec, raw_columns

    specs = [FeatureSpec(**f) for f in features]
    columns = raw_columns(specs, LabelSpec(**label))
    typed_rows = [{name: coerce(name, kind, r[name]) for name, kind in columns} for r in rows]
    dtypes = {"float": tf.float32, "int": tf.int64, "string": tf.string}
    raw = {name: tf.constant([r[name] for r in typed_rows], dtype=dtypes[kind]) for name, kind in columns}
    graph_out = tft.TFTransformOutput(out_dir).transform_raw_features(raw)
    fitted = FittedTransform.load(out_dir)
    online = fitted.apply_many(typed_rows)
    assert set(graph_out) == set(fitted.feature_names) | {label["name"]}
    for name in fitted.feature_names:
        expected = graph_out[name].numpy()
        got = [o[name] for o in online]
        if expected.dtype.kind == "O":
            assert [e.decode() for e in expected] == got, name
        else:
            assert np.max(np.abs(expected.astype(np.float64) - np.array(got, dtype=np.float64))) <= 1e-6, name


def coerce(name, kind, value):
    from transforms.spec import coerce_value

    return coerce_value(name, kind, value)


def test_pca_bad_rows_carry_the_reason(pca_run):
    assert pca_run["summary"]["rows"] == 600 and pca_run["summary"]["bad_rows"] == 3
    reasons = sorted(json.loads(line)["reason"] for path in glob.glob(f"{pca_run['out']}/errors/bad_rows-*.jsonl") for line in open(path))
    assert reasons == ["b: missing value", "c: missing", "m: expected an int, got '1.5'"]


def test_pca_matrix_equals_numpy_covariance_eigenvectors_up_to_sign(pca_run):
    doc = json.loads(open(os.path.join(pca_run["out"], "fitted_transforms.json")).read())
    fitted = {f["name"]: f for f in doc["features"]}
    rows = pca_run["rows"]
    f32 = lambda values: np.asarray(values, dtype=np.float32).astype(np.float64)  # noqa: E731
    # p: a z-scored (float32 output), then b, c as float32; centred
    a = f32(rows_of(rows, "a"))
    z = f32((a - a.mean()) / a.std())
    p_in = np.column_stack([z, f32(rows_of(rows, "b")), f32(rows_of(rows, "c"))])
    # q: integers, centred and scaled to unit variance (a correlation-matrix PCA)
    q_in = np.column_stack([np.array(rows_of(rows, n), dtype=np.float64) for n in "mno"])
    q_in = (q_in - q_in.mean(axis=0)) / q_in.std(axis=0)
    for name, x in (("p", p_in), ("q", q_in)):
        values, vectors = np.linalg.eigh(np.cov(x, rowvar=False, bias=True))
        expected = vectors[:, np.argsort(values)[::-1][:2]]
        got = np.array(fitted[name]["matrix"])
        assert got.shape == (3, 2)
        signs = np.sign(np.sum(got * expected, axis=0))
        assert np.max(np.abs(got - expected * signs)) < 1e-6, name
    assert fitted["q"]["mean"] == pytest.approx(np.mean([rows_of(rows, n) for n in "mno"], axis=1), rel=1e-9)


def rows_of(rows, name):
    return [r[name] for r in rows]


def test_pca_online_parity_with_tft_graph(pca_run):
    rows = pca_run["rows"] + [{**pca_run["rows"][0], "a": -1e4, "m": 10**6, "h": "never seen", "v": "unknown"}]
    _assert_graph_parity(pca_run["out"], PCA_FEATURES, rows, PCA_LABEL)


def test_pca_written_data_equals_online(pca_run):
    from transforms.fitted import FittedTransform

    fitted = FittedTransform.load(pca_run["out"])
    written = read_parquet_rows(f"{pca_run['out']}/data/train-*.parquet")
    assert set(written[0]) == {"p_0", "p_1", "q_0", "q_1", "h_0", "h_1", "h_2", "h_3", "v", "y"}  # a, b, c, m, n, o consumed
    online = fitted.apply_many(pca_run["rows"])
    key = lambda r: (round(r["p_0"], 4), round(r["q_1"], 4), r["v"])  # noqa: E731
    for a, b in zip(sorted(online, key=key), sorted(written, key=key)):
        assert all(abs(a[n] - b[n]) <= 1e-6 if isinstance(a[n], float) else a[n] == b[n] for n in b)


# -- record batches (issue 17.1): the same outputs as the instance-dict path --------------------

MIXED = [f for f in FEATURES if f["name"] not in ("saturation-mean", "region-centroid-col")] + [
    {"name": "saturation-mean", "type": "float", "transform": "bucketize", "num_buckets": 3, "encoding": "one_hot"},
    {"name": "rawblue-mean", "type": "float", "transform": "z_score"},
    {"name": "colour", "type": "float", "transform": "pca", "inputs": ["rawblue-mean", "rawgreen-mean", "exred-mean"], "k": 2},
    {"name": "region-centroid-col", "type": "int", "transform": "hash", "hash_buckets": 5, "encoding": "category"},
]


def _decode_tfrecords(pattern: str, spec) -> list[tuple]:
    import tensorflow as tf

    files = sorted(glob.glob(pattern))
    rows = []
    for record in tf.data.TFRecordDataset(files):
        parsed = tf.io.parse_single_example(record, spec)
        rows.append(tuple(sorted((k, v.numpy().item() if v.dtype != tf.string else v.numpy()) for k, v in parsed.items())))
    return sorted(rows)


def test_record_batches_write_what_instance_dicts_wrote(tmp_path):
    """Both paths on the same 500 CSV rows plus bad lines: TFRecord, Parquet, bad rows and the fitted transform agree.

    (The record batches read CSV in blocks through pyarrow, the instance dicts line by line: see also
    `test_csv_blocks_read_exactly_what_the_per_line_path_reads`; the other input formats reach the
    record batches through the per-line validation, see the gs://, portable-runner and pca tests.)
    """
    import pyarrow.parquet as pq
    import tensorflow_transform as tft

    from pipelines.preprocess import run

    features, file_format = MIXED, "csv"
    write_csv(tmp_path / "in.csv", segment_rows(500), BAD_LINES)
    pattern = str(tmp_path / "in.csv")
    outputs = {}
    for batch_format in ("instance_dicts", "record_batches"):
        config = write_config(tmp_path / f"{batch_format}.yaml", features, {"pattern": pattern, "format": file_format},
                              {"dir": str(tmp_path / batch_format), "formats": ["tfrecord", "parquet"], "split": {"eval_fraction": 0.3}},
                              max_bad_rows=5)
        summary = run(["--config", config, "--runner=FnApiRunner"], batch_format=batch_format)
        outputs[batch_format] = (str(tmp_path / batch_format), summary)
    (dicts, dict_summary), (batches, batch_summary) = outputs["instance_dicts"], outputs["record_batches"]
    assert {k: v for k, v in dict_summary.items() if k != "output_dir" and k != "fitted_transform"} == \
        {k: v for k, v in batch_summary.items() if k != "output_dir" and k != "fitted_transform"}
    assert dict_summary["rows"] == 500
    # analyzer results are sums over batches: the order of the additions follows the batching (adaptive in TFT's own
    # instance-dict path), so float constants agree to the last bits, everything else exactly
    _assert_close(json.load(open(f"{dicts}/fitted_transforms.json")), json.load(open(f"{batches}/fitted_transforms.json")), rel=1e-12)
    assert open(f"{dicts}/transformed_metadata/schema.pbtxt").read() == open(f"{batches}/transformed_metadata/schema.pbtxt").read()

    def bad(out):
        return sorted(line for path in glob.glob(f"{out}/errors/bad_rows-*.jsonl") for line in open(path))

    assert bad(dicts) == bad(batches) and len(bad(dicts)) >= 1
    spec = tft.TFTransformOutput(dicts).transformed_feature_spec()
    for split in ("train", "eval"):
        expected = _decode_tfrecords(f"{dicts}/data/{split}-*.tfrecord", spec)
        assert expected and _same_rows(_decode_tfrecords(f"{batches}/data/{split}-*.tfrecord", spec), expected), split
        dict_tables = [pq.read_table(p) for p in sorted(glob.glob(f"{dicts}/data/{split}-*.parquet"))]
        batch_tables = [pq.read_table(p) for p in sorted(glob.glob(f"{batches}/data/{split}-*.parquet"))]
        assert dict_tables[0].schema == batch_tables[0].schema
        assert _same_rows([tuple(sorted(r.items())) for t in batch_tables for r in t.to_pylist()],
                          [tuple(sorted(r.items())) for t in dict_tables for r in t.to_pylist()])


def test_csv_blocks_read_exactly_what_the_per_line_path_reads(tmp_path, monkeypatch):
    """CSV read in byte ranges and blocks (pyarrow where a block allows it, line by line where not) gives the
    per-line path's rows bit for bit, the same bad rows with their reasons, and the same train/eval split.

    Small ranges and blocks put lines across range and block boundaries; the values include what
    pyarrow and Python parse differently (a float that rounds differently to float32 when parsed
    straight to float32, ``+5``, ``3.0`` as an int, spaces, quotes, CRLF, NUL-free blanks, nan).
    """
    import pyarrow.parquet as pq

    import pipelines.preprocess as preprocess

    monkeypatch.setattr(preprocess, "CSV_BLOCK_BYTES", 70)
    tie = "1.0000000596046447753906250000001"  # float64 1 + 2**-24, a float32 tie: 1.0 (float32 straight: 1.0000001192)
    clean = [f"{i / 7!r},{i},c{i % 3},u" for i in range(300)]
    odd = [tie + ",7,a,u", "2e3,007,b,u", "-0.5,-0,c,u", "+1.5,+5,d,u", "3.5,3.0,e,u", " 1.25,4,f,u", '4.5,4,"g,h",u',
           "6.5,6,crlf,u\r", "nan,1,i,u", "1,2,3", "x,1,j,u", "", "   ", "inf,2,k,u", "7.5,,l,u"]
    lines = clean[:100] + odd[:6] + clean[100:200] + odd[6:] + clean[200:] + [tie + ",8,z,u"]
    data = ("x,n,class,unused\n" + "\n".join(lines)).encode()  # no newline at the end
    (tmp_path / "in.csv").write_bytes(data)
    line_starts = [i + 1 for i, byte in enumerate(data) if byte == ord("\n")]
    monkeypatch.setattr(preprocess, "CSV_RANGE_BYTES", line_starts[11])  # a range boundary at a line's start, others inside lines
    assert any(k * line_starts[11] not in line_starts for k in range(2, 10))
    features = [{"name": "x", "type": "float", "transform": "identity"}, {"name": "n", "type": "int", "transform": "identity"}]
    assert preprocess.csv_block_columns("\n".join(clean[:5]).encode(), ["x", "n", "class", "unused"],
                                        [("x", "float"), ("n", "int"), ("class", "string")]).num_rows == 5  # the fast path is taken
    outputs = {}
    for batch_format in ("instance_dicts", "record_batches"):
        config = write_config(tmp_path / f"{batch_format}.yaml", features, {"pattern": str(tmp_path / "in.csv"), "format": "csv"},
                              {"dir": str(tmp_path / batch_format), "formats": ["parquet"], "split": {"eval_fraction": 0.3}},
                              max_bad_rows=10)
        summary = preprocess.run(["--config", config, "--runner=FnApiRunner"], batch_format=batch_format)
        out = tmp_path / batch_format
        outputs[batch_format] = {
            "summary": (summary["rows"], summary["bad_rows"]),
            "bad": sorted(line for path in glob.glob(f"{out}/errors/bad_rows-*.jsonl") for line in open(path)),
            **{split: sorted((r["x"], r["n"], r["class"]) for path in glob.glob(f"{out}/data/{split}-*.parquet")
                             for r in pq.read_table(path).to_pylist()) for split in ("train", "eval")},
        }
    dicts, blocks = outputs["instance_dicts"], outputs["record_batches"]
    assert dicts["summary"] == blocks["summary"] == (len(clean) + 9, 5)
    assert [json.loads(line)["reason"] for line in blocks["bad"]] == [json.loads(line)["reason"] for line in dicts["bad"]]
    assert blocks["bad"] == dicts["bad"]
    assert blocks["train"] == dicts["train"] and blocks["eval"] == dicts["eval"]  # exactly: no tolerance
    assert dicts["train"] and dicts["eval"]
    rows = {r[2]: r for r in blocks["train"] + blocks["eval"]}
    assert rows["a"][0] == rows["z"][0] == 1.0 and rows["b"][:2] == (2000.0, 7) and rows["d"][:2] == (1.5, 5)
    assert rows["e"][1] == 3 and rows["f"][0] == 1.25 and rows["g,h"][:2] == (4.5, 4) and "crlf" in rows


def test_the_record_batch_sink_writes_the_bytes_of_beams_tfrecord_writer_on_public_beam_classes(tmp_path):
    """`TFRecordBatchSink` frames whole record batches itself: its files hold exactly the bytes
    `beam.io.WriteToTFRecord` writes for the same records, and it subclasses no private Beam class."""
    import apache_beam as beam

    from pipelines.preprocess import TFRecordBatchSink

    records = [b"", b"a", bytes(range(256)) * 40]
    with beam.Pipeline(runner="FnApiRunner") as pipeline:
        for i, record in enumerate(records):
            (pipeline | f"One{i}" >> beam.Create([record])
             | f"Beam{i}" >> beam.io.WriteToTFRecord(str(tmp_path / f"beam{i}"), file_name_suffix=".tfrecord", num_shards=1))
        pipeline | "Batch" >> beam.Create([records]) | "Ours" >> beam.io.Write(TFRecordBatchSink(str(tmp_path / "ours"), ".tfrecord"))

    def content(prefix: str) -> bytes:
        return b"".join(open(path, "rb").read() for path in sorted(glob.glob(str(tmp_path / f"{prefix}*.tfrecord"))))

    assert content("ours") == b"".join(content(f"beam{i}") for i in range(len(records))) != b""
    private = [f"{c.__module__}.{c.__qualname__}" for c in TFRecordBatchSink.__mro__ if c.__module__.startswith("apache_beam") and c.__name__.startswith("_")]
    assert private == []


def _assert_close(a, b, rel: float) -> None:
    if isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, rel=rel, abs=1e-12), (a, b)  # abs: a mean near 0 (of z-scores) cancels
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_close(a[k], b[k], rel)
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_close(x, y, rel)
    else:
        assert a == b


def _same_rows(a: list[tuple], b: list[tuple]) -> bool:
    """Rows of (column, value) pairs: the same multiset, floats within 1e-6 (a float32 output may differ by one ulp)."""
    key = lambda row: tuple((k, round(v, 3) if isinstance(v, float) else v) for k, v in row)  # noqa: E731
    a, b = sorted(a, key=key), sorted(b, key=key)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert [k for k, _ in x] == [k for k, _ in y]
        for (k, u), (_, v) in zip(x, y):
            assert abs(u - v) <= 1e-6 if isinstance(u, float) else u == v, (k, u, v)
    return True


def test_three_analysis_phases_leave_the_fnapi_runner(tmp_path):
    """z-score feeding a scaled pca: three TFT phases, which Beam's FnApiRunner does not complete.

    Without --runner the job runs on the BundleBasedDirectRunner and its pca still matches the
    TFT graph; an explicit --runner=FnApiRunner is refused with the reason before anything runs.
    """
    from core.errors import UsageError
    from pipelines.preprocess import run

    features = [{"name": "a", "type": "float", "transform": "z_score"},
                {"name": "p", "type": "float", "transform": "pca", "inputs": ["a", "b", "c"], "k": 2, "scale": True}]
    rows = pca_rows(200)
    with open(tmp_path / "data.jsonl", "w") as file:
        file.writelines(json.dumps(r) + "\n" for r in rows)
    (tmp_path / "job.yaml").write_text(yaml.safe_dump({
        "features": features, "label": PCA_LABEL, "input": {"pattern": str(tmp_path / "data.jsonl"), "format": "jsonl"},
        "output": {"dir": str(tmp_path / "out"), "formats": ["parquet"]}}))
    with pytest.raises(UsageError, match="needs 3 successive analysis phases and Beam's local FnApiRunner completes at most 2"):
        run(["--config", str(tmp_path / "job.yaml"), "--runner=FnApiRunner"])
    assert not (tmp_path / "out").exists()
    assert run(["--config", str(tmp_path / "job.yaml")])["rows"] == 200
    _assert_graph_parity(str(tmp_path / "out"), features, rows, PCA_LABEL)
