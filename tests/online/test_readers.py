"""Input readers: formats, compression, bad lines with their line numbers, order and resume positions."""

from __future__ import annotations

import csv
import gzip
import io

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from river import datasets

from online.readers import InputError, ReplayPosition, expand_inputs, read_inputs
from core.errors import UsageError


def phishing_events():
    return [{**x, "label": y} for x, y in datasets.Phishing()]


def write_jsonl(path, events, compress=False):
    data = b"".join(orjson.dumps(e) + b"\n" for e in events)
    path.write_bytes(gzip.compress(data) if compress else data)


def write_csv(path, events):
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(events[0]))
        writer.writeheader()
        writer.writerows(events)


def write_parquet(path, events):
    pq.write_table(pa.Table.from_pylist(events), path, row_group_size=300)


@pytest.mark.parametrize("name,writer", [
    ("events.jsonl", write_jsonl),
    ("events.jsonl.gz", lambda p, e: write_jsonl(p, e, compress=True)),
    ("events.csv", write_csv),
    ("events.parquet", write_parquet),
])
def test_every_format_reads_back_the_same_events(tmp_path, name, writer):
    events = phishing_events()
    writer(tmp_path / name, events)
    records = list(read_inputs(expand_inputs([str(tmp_path / "*")])))
    assert [r.event for r in records] == events
    assert all(type(a) is type(b) for r, e in zip(records, events) for a, b in zip(r.event.values(), e.values()))
    first_line = 2 if name.endswith(".csv") else 1  # the CSV header is line 1
    assert [r.line for r in records] == list(range(first_line, first_line + len(events)))


def test_bad_lines_carry_file_line_and_reason(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"x": 1}\n\nnot json\n[1, 2]\n"text"\n{"x": 2}\n')
    (tmp_path / "b.csv").write_text("x,y\n1,2\n3\n4,5,6\n7,true\n")
    records = list(read_inputs(expand_inputs([str(tmp_path / "a.jsonl"), str(tmp_path / "b.csv")])))
    got = [(r.file_index, r.line, r.event, r.reason and r.reason.split(":")[0]) for r in records]
    assert got == [
        (0, 1, {"x": 1}, None),
        (0, 3, None, "not JSON"),
        (0, 4, None, "not a JSON object but an array"),
        (0, 5, None, "not a JSON object but a string"),
        (0, 6, {"x": 2}, None),
        (1, 2, {"x": 1, "y": 2}, None),
        (1, 3, None, "CSV row has 1 fields, the header has 2"),
        (1, 4, None, "CSV row has 3 fields, the header has 2"),
        (1, 5, {"x": 7, "y": True}, None),
    ]


def test_categorical_csv_columns_stay_text(tmp_path):
    (tmp_path / "a.csv").write_text("zip,n\n01234,5\n")
    records = list(read_inputs(expand_inputs([str(tmp_path / "a.csv")]), categorical=["zip"]))
    assert records[0].event == {"zip": "01234", "n": 5}


def test_files_in_name_order_and_resume_after_a_position(tmp_path):
    for name, values in (("2.jsonl", [3, 4]), ("1.jsonl", [1, 2]), ("3.jsonl", [5, 6])):
        write_jsonl(tmp_path / name, [{"v": v} for v in values])
    files = expand_inputs([str(tmp_path)])
    assert [r.event["v"] for r in read_inputs(files)] == [1, 2, 3, 4, 5, 6]
    position = ReplayPosition(file=files[1].name, line=1)
    assert [r.event["v"] for r in read_inputs(files, position)] == [4, 5, 6]
    done = ReplayPosition(file=files[2].name, line=2)
    assert list(read_inputs(files, done)) == []


def test_parquet_resume_skips_whole_row_groups(tmp_path):
    events = phishing_events()
    write_parquet(tmp_path / "p.parquet", events)
    files = expand_inputs([str(tmp_path / "p.parquet")])
    rest = list(read_inputs(files, ReplayPosition(file=files[0].name, line=700)))
    assert rest[0].line == 701 and [r.event for r in rest] == events[700:]


def test_time_order_merges_sorted_files_and_resumes(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"t": 1, "v": "a1"}, {"t": 4, "v": "a4"}, {"t": 5, "v": "a5"}])
    write_jsonl(tmp_path / "b.jsonl", [{"t": "1970-01-01T00:00:02", "v": "b2"}, {"v": "no time"}, {"t": 4, "v": "b4"}])
    files = expand_inputs([str(tmp_path / "*.jsonl")])
    records = list(read_inputs(files, time_field="t"))
    assert [r.event["v"] if r.event else r.reason for r in records] == ["a1", "b2", "time field 't' is missing", "a4", "b4", "a5"]
    position = ReplayPosition(order="time", lines={files[0].name: 2, files[1].name: 2})
    assert [r.event["v"] for r in read_inputs(files, position, time_field="t")] == ["b4", "a5"]


def test_time_going_backwards_in_a_file_is_an_error(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"t": 2}, {"t": 1}])
    with pytest.raises(InputError, match="a.jsonl: line 2: time goes backwards"):
        list(read_inputs(expand_inputs([str(tmp_path / "a.jsonl")]), time_field="t"))


def test_no_match_and_unknown_format_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="no file matches"):
        expand_inputs([str(tmp_path / "*.jsonl")])
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(UsageError, match="unknown input format"):
        expand_inputs([str(tmp_path / "x.txt")])


def test_truncated_gzip_is_an_input_error(tmp_path):
    data = gzip.compress(b"".join(orjson.dumps({"v": i}) + b"\n" for i in range(5000)))
    (tmp_path / "a.jsonl.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="a.jsonl.gz: read failed after line"):
        list(read_inputs(expand_inputs([str(tmp_path / "a.jsonl.gz")])))


def test_parquet_and_gzipped_json_on_the_gcs_emulator(gcs_client, local_stack, gcs_prefix):
    events = phishing_events()
    bucket_name, prefix = gcs_prefix[len("gs://"):].split("/", 1)
    bucket = gcs_client.bucket(bucket_name)
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(events[:600]), buffer)
    bucket.blob(f"{prefix}/part-1.parquet").upload_from_string(buffer.getvalue())
    bucket.blob(f"{prefix}/part-2.jsonl.gz").upload_from_string(gzip.compress(b"".join(orjson.dumps(e) + b"\n" for e in events[600:])))
    bucket.blob(f"{prefix}/other.txt").upload_from_string(b"ignored")
    files = expand_inputs([f"{gcs_prefix}/part-*"])
    assert [f.name for f in files] == [f"{gcs_prefix}/part-1.parquet", f"{gcs_prefix}/part-2.jsonl.gz"]
    assert [r.event for r in read_inputs(files)] == events


@pytest.mark.beam
def test_tfrecord_of_tf_examples(tmp_path):
    tf = pytest.importorskip("tensorflow")
    events = phishing_events()[:20]
    with tf.io.TFRecordWriter(str(tmp_path / "p.tfrecord.gz"), options="GZIP") as writer:
        for event in events:
            feature = {}
            for name, value in event.items():
                if isinstance(value, float):
                    feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=[value]))
                else:
                    feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    records = list(read_inputs(expand_inputs([str(tmp_path / "p.tfrecord.gz")])))
    assert [r.line for r in records] == list(range(1, 21))
    # float_list holds float32: compare with the values rounded the same way
    assert records[3].event["is_popular"] == pytest.approx(events[3]["is_popular"], rel=1e-6)
    assert records[3].event["label"] == int(events[3]["label"])
