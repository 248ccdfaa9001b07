"""Replay: learn (checkpoints, resume after kill -9), evaluate (report), backfill (Kafka), search, bad lines."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from river import datasets, evaluate, linear_model, metrics, optim, preprocessing, tree

from online.checkpoints.store import CheckpointStore
from online.config import ReplayJobConfig
from online.learning.learner import Learner
from online.replay.engine import FILE_HEADER, LINE_HEADER, ReplayError
from online.replay.job import ReplayOptions, load_replay_job, run_replay
from online.replay.search import trial_model
from riverbeam.cli import main
from core.configuration import parse_config
from tests.online.test_readers import phishing_events, write_csv, write_jsonl, write_parquet

LOGREG = [{"preprocessing.StandardScaler": {}}, {"linear_model.LogisticRegression": {"optimizer": {"optim.SGD": {"lr": 0.1}}}}]
JOB = {"model": {"pipeline": LOGREG, "metrics": ["Accuracy", "LogLoss"]}, "events": {"target": "label"}}
WRITERS = {"jsonl": write_jsonl, "csv": write_csv, "parquet": write_parquet}


def job_config(**changes) -> ReplayJobConfig:
    return parse_config({**JOB, **changes}, ReplayJobConfig, environ={})


def expected_phishing(model=None, metric=None):
    model = model or preprocessing.StandardScaler() | linear_model.LogisticRegression(optimizer=optim.SGD(0.1))
    result = evaluate.progressive_val_score(datasets.Phishing(), model, metric or metrics.Accuracy() + metrics.LogLoss())
    return {type(m).__name__: m.get() for m in result} if isinstance(result, metrics.base.Metrics) else {type(result).__name__: result.get()}


def write_yaml(path, data) -> str:
    import yaml

    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_evaluate_equals_progressive_val_score_and_writes_a_report(tmp_path, fmt):
    WRITERS[fmt](tmp_path / f"phishing.{fmt}", phishing_events())
    report = tmp_path / "report"
    result = run_replay(job_config(), ReplayOptions([str(tmp_path / f"phishing.{fmt}")], mode="evaluate", report_dir=str(report), report_every=500))
    expected = expected_phishing()
    assert result.leaderboard[0]["metrics"] == expected
    data = json.loads((report / "metrics.json").read_text())
    assert [row["events"] for row in data["rows"]] == [500, 1000, 1250]
    assert {k: data["final"]["StandardScaler|LogisticRegression"][k] for k in expected} == expected
    lines = (report / "metrics.csv").read_text().splitlines()
    assert lines[0] == "events,lines,model,Accuracy,LogLoss" and lines[-1].startswith("1250,")
    assert float(lines[-1].split(",")[3]) == expected["Accuracy"]
    assert (report / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_candidates_learn_in_one_pass_and_are_ranked(tmp_path):
    write_jsonl(tmp_path / "p.jsonl", phishing_events())
    tree_spec = {"name": "tree", "pipeline": [{"tree.HoeffdingTreeClassifier": {"grace_period": 50}}], "metrics": ["Accuracy"]}
    job = parse_config({"models": [{**tree_spec}, JOB["model"]], "events": {"target": "label"}}, ReplayJobConfig, environ={})
    result = run_replay(job, ReplayOptions([str(tmp_path / "p.jsonl")], mode="evaluate"))
    tree_accuracy = expected_phishing(tree.HoeffdingTreeClassifier(grace_period=50), metrics.Accuracy())["Accuracy"]
    assert [(row["rank"], row["model"], row["metrics"]["Accuracy"]) for row in result.leaderboard] == [
        (1, "StandardScaler|LogisticRegression", expected_phishing()["Accuracy"]),
        (2, "tree", tree_accuracy),
    ]


def test_learn_from_parquet_on_gcs_with_checkpoints_on_gcs(gcs_client, gcs_prefix):
    events = phishing_events()
    bucket_name, prefix = gcs_prefix[len("gs://"):].split("/", 1)
    for i, part in enumerate((events[:700], events[700:])):
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(part), buffer)
        gcs_client.bucket(bucket_name).blob(f"{prefix}/in/part-{i}.parquet").upload_from_string(buffer.getvalue())
    options = ReplayOptions([f"{gcs_prefix}/in/*.parquet"], checkpoint_uri=f"{gcs_prefix}/ckpt", checkpoint_every=500)
    result = run_replay(job_config(), options)
    latest = CheckpointStore(f"{gcs_prefix}/ckpt").load_latest()
    assert latest.manifest["metrics"] == expected_phishing()
    assert (latest.manifest["events_seen"], latest.manifest["events_learned"]) == (1250, 1250)
    assert latest.positions["replay"] == {"order": "file", "file": f"{gcs_prefix}/in/part-1.parquet", "line": 550, "files_done": 1}
    assert result.checkpoint["id"] == latest.id
    again = run_replay(job_config(), options)  # nothing new to read: nothing written
    assert again.lines == 0 and again.checkpoint is None and CheckpointStore(f"{gcs_prefix}/ckpt").load_latest().id == latest.id


def test_learn_continues_from_checkpoint_with_new_files(tmp_path):
    events = phishing_events()
    write_jsonl(tmp_path / "day-1.jsonl", events[:800])
    ckpt = str(tmp_path / "ckpt")
    run_replay(job_config(), ReplayOptions([str(tmp_path / "*.jsonl")], checkpoint_uri=ckpt))
    write_jsonl(tmp_path / "day-2.jsonl", events[800:])
    result = run_replay(job_config(), ReplayOptions([str(tmp_path / "*.jsonl")], checkpoint_uri=ckpt))
    assert result.lines == 450
    assert result.checkpoint["metrics"] == expected_phishing() and result.checkpoint["events_seen"] == 1250
    restored = Learner.restore(CheckpointStore(ckpt).load_latest().state, job_config().model, job_config().events)
    assert restored.metric_values() == expected_phishing()


def test_a_run_that_resumes_a_checkpoint_says_so_and_counts_this_run_apart_from_the_total(tmp_path, capsys):
    events = phishing_events()
    write_jsonl(tmp_path / "day-1.jsonl", events[:300])
    config = write_yaml(tmp_path / "job.yaml", {**JOB, "checkpoint": {"uri": str(tmp_path / "ckpt")}})
    argv = ["replay", "--config", config, "--input", str(tmp_path / "*.jsonl"), "--no-progress"]
    assert main([*argv, "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert (first["events_learned"], first["events_learned_total"]) == (300, 300) and "resumed_from" not in first
    checkpoint = CheckpointStore(str(tmp_path / "ckpt")).load_latest().id
    write_jsonl(tmp_path / "day-2.jsonl", events[300:500])
    assert main(argv) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[1:3] == [f"  resumed from checkpoint {checkpoint} (300 events learned before)",
                         "  events_seen 200 · events_learned 200 · events_learned_total 500 · events_dead_lettered 0"]
    write_jsonl(tmp_path / "day-3.jsonl", events[500:600])
    assert main([*argv, "--json"]) == 0
    third = json.loads(capsys.readouterr().out)
    assert (third["events_seen"], third["events_learned"], third["events_learned_total"]) == (100, 100, 600)  # per run, as the daemon counts
    assert third["resumed_from"]["events_learned"] == 500


def _latest_sequence(path) -> int:
    try:
        return json.loads((path / "LATEST").read_text())["sequence"]
    except (OSError, ValueError):
        return 0


def kill_replay_after_checkpoints(config: str, inputs: str, checkpoints, every: int, count: int) -> dict:
    """Run ``riverbeam replay`` learning into `checkpoints`, kill -9 it once `count` checkpoints are
    written, and return the manifest it left as the latest."""
    command = [sys.executable, "-m", "riverbeam.cli", "replay", "--config", config, "--input", inputs,
               "--checkpoint-uri", str(checkpoints), "--checkpoint-every", str(every), "--no-progress"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=os.getcwd())
    deadline = time.monotonic() + 60
    while _latest_sequence(checkpoints) < count and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL, "the replay finished before it could be killed"
    return CheckpointStore(str(checkpoints)).load_latest().manifest


def test_learn_resumes_after_kill_9_as_if_uninterrupted(tmp_path):
    events = phishing_events() * 20  # 25k events: a few seconds of learning
    write_jsonl(tmp_path / "a.jsonl", events[:12_000])
    write_jsonl(tmp_path / "b.jsonl", events[12_000:])
    config = write_yaml(tmp_path / "job.yaml", JOB)
    inputs = str(tmp_path / "*.jsonl")
    reference = run_replay(job_config(), ReplayOptions([inputs], checkpoint_uri=str(tmp_path / "whole"), checkpoint_every=2000))

    ckpt = tmp_path / "killed"
    interrupted = kill_replay_after_checkpoints(config, inputs, ckpt, every=2000, count=3)
    assert 0 < interrupted["events_seen"] < len(events)

    resumed = run_replay(job_config(), ReplayOptions([inputs], checkpoint_uri=str(ckpt), checkpoint_every=2000))
    assert resumed.lines == len(events) - interrupted["events_seen"]
    assert {k: resumed.checkpoint[k] for k in ("events_seen", "events_learned", "metrics", "positions")} == {
        k: reference.checkpoint[k] for k in ("events_seen", "events_learned", "metrics", "positions")
    }


def test_bad_lines_go_to_the_errors_file_and_max_errors_stops(tmp_path, capsys):
    events = phishing_events()[:100]
    lines = [orjson.dumps(e) for e in events]
    lines[10] = b"{broken"
    lines[20] = orjson.dumps({**events[20], "is_popular": "high"})
    lines[30] = b"[1, 2, 3]"
    (tmp_path / "p.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    config = write_yaml(tmp_path / "job.yaml", JOB)
    errors = tmp_path / "errors.jsonl"
    base = ["replay", "--config", config, "--input", str(tmp_path / "p.jsonl"), "--mode", "evaluate", "--errors", str(errors)]
    assert main(base) == 0
    records = [json.loads(line) for line in errors.read_text().splitlines()]
    assert [(r["source"]["file"], r["source"]["line"], r["reason"].split(":")[0]) for r in records] == [  # dead-letter schema v1
        (str(tmp_path / "p.jsonl"), 11, "not JSON"),
        (str(tmp_path / "p.jsonl"), 21, "feature 'is_popular' is not a number"),
        (str(tmp_path / "p.jsonl"), 31, "not a JSON object but an array"),
    ]
    assert "events_seen 100 · events_learned 97 · events_dead_lettered 3" in capsys.readouterr().out
    errors.unlink()
    assert main(base + ["--max-errors", "2"]) == 1
    message = capsys.readouterr().err
    assert "stopped: 3 bad lines, more than --max-errors 2" in message and "line 31" in message
    assert len(errors.read_text().splitlines()) == 3


def test_dry_run_counts_and_writes_nothing(tmp_path, capsys):
    events = phishing_events()[:50]
    (tmp_path / "p.jsonl").write_bytes(b"\n".join(orjson.dumps(e) for e in events) + b"\nnope\n")
    config = write_yaml(tmp_path / "job.yaml", {**JOB, "checkpoint": {"uri": str(tmp_path / "ckpt")}})
    argv = ["replay", "--config", config, "--input", str(tmp_path / "p.jsonl"), "--dry-run", "--errors", str(tmp_path / "e.jsonl"),
            "--report", str(tmp_path / "report")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "replay dry-run: 51 events" in out and "events_seen 51 · events_dead_lettered 1" in out and "line 51: not JSON" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.yaml", "p.jsonl"]


def test_configuration_errors_are_one_line(tmp_path, capsys):
    bad = write_yaml(tmp_path / "job.yaml", {**JOB, "search": {"params": {"LogisticRegression.optimizer.lrr": {"low": 0.01, "high": 1}}}})
    (tmp_path / "p.jsonl").write_text("{}\n")
    assert main(["replay", "--config", bad, "--input", str(tmp_path / "p.jsonl")]) == 2
    assert "job.yaml: search.params.LogisticRegression.optimizer.lrr: optim.SGD has no parameter lrr (did you mean lr?)" in capsys.readouterr().err
    good = write_yaml(tmp_path / "good.yaml", JOB)
    assert main(["replay", "--config", good, "--input", str(tmp_path / "nothing-*.jsonl")]) == 2
    assert "no file matches" in capsys.readouterr().err
    assert main(["replay", "--config", good, "--input", str(tmp_path / "p.jsonl"), "--mode", "backfill"]) == 2
    assert "backfill needs a target: kafka.topic and kafka.bootstrap_servers in the configuration, or --topic and --bootstrap-servers" in capsys.readouterr().err


def test_search_ranks_trials_by_their_progressive_score(tmp_path):
    write_jsonl(tmp_path / "p.jsonl", phishing_events())
    path = write_yaml(tmp_path / "job.yaml", {**JOB, "search": {"seed": 1, "parallel": 2, "params": {
        "LogisticRegression.optimizer.lr": {"low": 0.001, "high": 1.0, "log": True}}}})
    job, search = load_replay_job(path)
    result = run_replay(job, ReplayOptions([str(tmp_path / "p.jsonl")], mode="evaluate", search=4, report_dir=str(tmp_path / "r")), search)
    trials = result.search["trials"]
    assert len(trials) == 4 and result.search["direction"] == "maximize"
    assert [t["value"] for t in trials] == sorted((t["value"] for t in trials), reverse=True)
    best = trials[0]
    lr = best["params"]["LogisticRegression.optimizer.lr"]
    assert best["value"] == expected_phishing(preprocessing.StandardScaler() | linear_model.LogisticRegression(optimizer=optim.SGD(lr)))["Accuracy"]
    assert json.loads((tmp_path / "r" / "search.json").read_text())["best"] == best


def test_trial_model_sets_nested_parameters():
    model = trial_model(job_config().model, {"LogisticRegression.l2": 0.01, "LogisticRegression.optimizer.lr": 0.3})
    assert model.pipeline[1] == {"linear_model.LogisticRegression": {"optimizer": {"optim.SGD": {"lr": 0.3}}, "l2": 0.01}}
    assert job_config().model.pipeline[1]["linear_model.LogisticRegression"] == {"optimizer": {"optim.SGD": {"lr": 0.1}}}


# -- backfill ----------------------------------------------------------------------------------


def consume_all(bootstrap, topic, expected, timeout=30):
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    records, deadline = [], time.monotonic() + timeout
    while len(records) < expected and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            records += batch
    for batch in consumer.poll(timeout_ms=500).values():  # anything beyond what was expected
        records += batch
    consumer.close()
    return records


def test_backfill_then_consume_equals_a_direct_replay(tmp_path, kafka_bootstrap, topic):
    events = phishing_events()
    write_jsonl(tmp_path / "a.jsonl", events[:600])
    write_csv(tmp_path / "b.csv", events[600:])
    # the target comes from the job's kafka: section, the daemon's (no flags)
    target = job_config(kafka={"bootstrap_servers": kafka_bootstrap, "topic": topic})
    result = run_replay(target, ReplayOptions([str(tmp_path / "*")], mode="backfill"))
    assert result.produced == 1250
    records = consume_all(kafka_bootstrap, topic, 1250)
    assert len(records) == 1250
    assert dict(records[0].headers) == {FILE_HEADER: str(tmp_path / "a.jsonl").encode(), LINE_HEADER: b"1"}
    assert dict(records[-1].headers) == {FILE_HEADER: str(tmp_path / "b.csv").encode(), LINE_HEADER: b"651"}
    learner = Learner(job_config().model, job_config().events)
    learner.process_many(orjson.loads(r.value) for r in records)
    direct = run_replay(job_config(), ReplayOptions([str(tmp_path / "*")], mode="evaluate"))
    assert learner.metric_values() == direct.leaderboard[0]["metrics"] == expected_phishing()


def test_backfill_resumes_after_kill_9_without_duplicates(tmp_path, kafka_bootstrap, topic):
    from kafka import KafkaConsumer, TopicPartition

    events = phishing_events()
    write_jsonl(tmp_path / "p.jsonl", events)
    config = write_yaml(tmp_path / "job.yaml", JOB)
    command = [sys.executable, "-m", "riverbeam.cli", "replay", "--config", config, "--input", str(tmp_path / "p.jsonl"),
               "--mode", "backfill", "--topic", topic, "--bootstrap-servers", kafka_bootstrap, "--rate", "400", "--no-progress"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    watcher = KafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False, group_id=None)
    seen, deadline = 0, time.monotonic() + 60
    while seen < 200 and process.poll() is None and time.monotonic() < deadline:
        if TopicPartition(topic, 0) in (watcher.assignment() or set()):
            seen += sum(len(b) for b in watcher.poll(timeout_ms=100).values())
        elif watcher.partitions_for_topic(topic):
            watcher.assign([TopicPartition(topic, 0)])
        else:
            time.sleep(0.1)
    watcher.close()
    process.send_signal(signal.SIGKILL)
    _, err = process.communicate()
    assert process.returncode == -signal.SIGKILL, err.decode()

    resumed = run_replay(job_config(), ReplayOptions([str(tmp_path / "p.jsonl")], mode="backfill", topic=topic, bootstrap_servers=kafka_bootstrap))
    assert 0 < resumed.produced < 1250
    records = consume_all(kafka_bootstrap, topic, 1250)
    assert [int(dict(r.headers)[LINE_HEADER]) for r in records] == list(range(1, 1251))
    assert [orjson.loads(r.value) for r in records] == events


def test_backfill_appends_new_files_after_what_the_topic_holds_whatever_their_names_sort_as(tmp_path, kafka_bootstrap, topic, capsys, caplog, monkeypatch):
    events = phishing_events()
    for name, part in (("m.jsonl", events[:600]), ("z.jsonl", events[600:900]), ("a.jsonl", events[900:])):
        write_jsonl(tmp_path / name, part)
    config = write_yaml(tmp_path / "job.yaml", {**JOB, "kafka": {"bootstrap_servers": kafka_bootstrap, "topic": topic}})

    def backfill(*names: str) -> dict:
        inputs = [flag for name in names for flag in ("--input", str(tmp_path / name))]
        assert main(["replay", "--config", config, *inputs, "--mode", "backfill", "--json", "--no-progress"]) == 0
        return json.loads(capsys.readouterr().out)

    assert backfill("m.jsonl")["events_produced"] == 600
    assert backfill("z.jsonl")["events_produced"] == 300  # a second file alone: appended (was refused)
    both = backfill("a.jsonl", "m.jsonl", "z.jsonl")  # a.jsonl sorts first: appended too (was events_produced 0, silently)
    assert (both["events_produced"], both["already_produced"]) == (350, 900)
    again = backfill("a.jsonl", "m.jsonl", "z.jsonl")  # nothing new: said, not silent
    assert (again["events_seen"], again["events_produced"], again["already_produced"]) == (1250, 0, 1250)
    assert f"backfill: nothing new to produce: every input line is already in {topic}[0]" in caplog.messages
    records = consume_all(kafka_bootstrap, topic, 1250)
    sources = [(os.path.basename(dict(r.headers)[FILE_HEADER].decode()), int(dict(r.headers)[LINE_HEADER])) for r in records]
    assert sources == [("m.jsonl", i) for i in range(1, 601)] + [("z.jsonl", i) for i in range(1, 301)] + [("a.jsonl", i) for i in range(1, 351)]
    assert [orjson.loads(r.value) for r in records] == events[:900] + events[900:]
    monkeypatch.chdir(tmp_path)  # the resume key is the file's full name: a relative spelling is the same file
    assert main(["replay", "--config", config, "--input", "m.jsonl", "--mode", "backfill", "--json", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["events_produced"] == 0


def test_backfill_refuses_a_topic_with_foreign_records(tmp_path, kafka_bootstrap, topic):
    from online.config import KafkaConfig
    from online.kafka_clients import create_topic, make_producer

    create_topic(kafka_bootstrap, topic, partitions=1)
    producer = make_producer(KafkaConfig(bootstrap_servers=kafka_bootstrap, topic=topic))
    producer.send(topic, b'{"x": 1}', partition=0)
    producer.close()
    write_jsonl(tmp_path / "p.jsonl", phishing_events()[:10])
    with pytest.raises(ReplayError, match="not written by a backfill"):
        run_replay(job_config(), ReplayOptions([str(tmp_path / "p.jsonl")], mode="backfill", topic=topic, bootstrap_servers=kafka_bootstrap))


def test_replay_from_s3_equals_the_same_replay_from_local_files(tmp_path, s3_prefix):
    """Three formats (gzip JSON lines, CSV, Parquet) with a bad line, merged by time, local and on S3."""
    from core import storage

    events = [{**e, "t": i} for i, e in enumerate(phishing_events())]
    local = tmp_path / "in"
    local.mkdir()
    (local / "a.jsonl.gz").write_bytes(__import__("gzip").compress(b"".join(orjson.dumps(e) + b"\n" for e in events[0::3]) + b"{broken\n"))
    write_csv(local / "b.csv", events[1::3])
    write_parquet(local / "c.parquet", events[2::3])
    for path in sorted(local.iterdir()):
        storage.write_bytes(f"{s3_prefix}/in/{path.name}", path.read_bytes())
    job = job_config(events={"target": "label", "time": "t"})
    results = {}
    for where, root, ckpt in (("local", str(local), str(tmp_path / "ckpt")), ("s3", f"{s3_prefix}/in", f"{s3_prefix}/ckpt")):
        results[where] = run_replay(job, ReplayOptions([f"{root}/*"], checkpoint_uri=ckpt, checkpoint_every=500))
        results[where + "-eval"] = run_replay(job, ReplayOptions([f"{root}/*"], mode="evaluate"))
    local_run, s3_run = results["local"], results["s3"]
    assert (s3_run.files, s3_run.lines, s3_run.events, s3_run.bad_lines) == (local_run.files, local_run.lines, local_run.events, local_run.bad_lines) == (3, 1251, 1250, 1)
    assert s3_run.checkpoint["metrics"] == local_run.checkpoint["metrics"] == expected_phishing()
    assert results["s3-eval"].leaderboard == results["local-eval"].leaderboard
    restored = CheckpointStore(f"{s3_prefix}/ckpt").load_latest()
    assert restored.manifest["events_learned"] == 1250
    lines = restored.positions["replay"]["lines"]
    assert lines == {f"{s3_prefix}/in/a.jsonl.gz": 418, f"{s3_prefix}/in/b.csv": 418, f"{s3_prefix}/in/c.parquet": 416}
    again = run_replay(job, ReplayOptions([f"{s3_prefix}/in/*"], checkpoint_uri=f"{s3_prefix}/ckpt"))  # resumes: nothing left
    assert again.lines == 0


def test_errors_file_follows_the_checkpoints_across_kill_9(tmp_path):
    """kill -9 during `replay --errors FILE`: after the resumed run every bad line is in the file exactly once."""
    import signal
    import subprocess
    import sys

    lines = [json.dumps({"x": i % 7, "y": i % 2 == 0}).encode() for i in range(60_000)]
    bad = set(range(5, len(lines), 3000))
    for i in bad:
        lines[i] = b"{broken"
    (tmp_path / "p.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    job = {"model": {"pipeline": [{"linear_model.LogisticRegression": {}}]}, "events": {"target": "y"},
           "checkpoint": {"uri": str(tmp_path / "ckpt"), "every_events": 2000}}  # fmt: skip
    config = write_yaml(tmp_path / "job.yaml", job)
    errors = tmp_path / "errors.jsonl"
    argv = [sys.executable, "-m", "riverbeam.cli", "replay", "--config", config, "--input", str(tmp_path / "p.jsonl"), "--mode", "learn", "--errors", str(errors)]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (errors.exists() and errors.stat().st_size > 300):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert subprocess.run(argv, capture_output=True).returncode == 0
    records = [json.loads(line) for line in errors.read_text().splitlines()]
    assert sorted(r["source"]["line"] - 1 for r in records) == sorted(bad)  # each once, none lost


def test_every_mode_counts_a_file_the_same_way_in_one_json_summary(tmp_path, capsys):
    """dry-run, evaluate and learn agree on events_seen / events_dead_lettered (one voice, --json)."""
    events = phishing_events()[:8]
    lines = [orjson.dumps(e) for e in events[:6]] + [b"{broken", orjson.dumps({k: v for k, v in events[7].items() if k != "label"})]
    (tmp_path / "p.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    config = write_yaml(tmp_path / "job.yaml", {**JOB, "checkpoint": {"uri": str(tmp_path / "ckpt")}})
    summaries = {}
    for mode in ("dry-run", "evaluate", "learn"):
        flags = ["--dry-run"] if mode == "dry-run" else ["--mode", mode]
        assert main(["replay", "--config", config, "--input", str(tmp_path / "p.jsonl"), "--json", "--no-progress", *flags]) == 0
        summaries[mode] = json.loads(capsys.readouterr().out)
    for mode, summary in summaries.items():
        assert (summary["job"], summary["mode"]) == ("replay", mode)
        assert (summary["events_seen"], summary["events_dead_lettered"]) == (8, 1), mode
    assert summaries["evaluate"]["events_learned"] == summaries["learn"]["events_learned"] == 6  # the unlabelled one is only predicted
    assert "events_learned" not in summaries["dry-run"]
    assert summaries["evaluate"]["metrics"] == summaries["learn"]["metrics"]


def test_the_errors_file_holds_this_runs_bad_lines_only(tmp_path, capsys):
    """`--errors F` twice: a fresh evaluate (or learn) run starts F empty; a resumed learn run keeps what its checkpoint made durable."""
    lines = [orjson.dumps(e) for e in phishing_events()[:100]]
    lines[10], lines[40] = b"{broken", b"[1]"
    (tmp_path / "p.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    errors = tmp_path / "errors.jsonl"
    config = write_yaml(tmp_path / "job.yaml", JOB)
    evaluate_argv = ["replay", "--config", config, "--input", str(tmp_path / "p.jsonl"), "--mode", "evaluate", "--errors", str(errors)]
    for _ in range(2):
        assert main(evaluate_argv) == 0
        assert [json.loads(line)["source"]["line"] for line in errors.read_text().splitlines()] == [11, 41]
    (tmp_path / "clean.jsonl").write_bytes(b"\n".join(orjson.dumps(e) for e in phishing_events()[:20]) + b"\n")
    clean = evaluate_argv[:4] + [str(tmp_path / "clean.jsonl")] + evaluate_argv[5:]
    assert main(clean) == 0 and errors.read_text() == ""  # a run without bad lines leaves no stale ones behind
    learn_config = write_yaml(tmp_path / "learn.yaml", {**JOB, "checkpoint": {"uri": str(tmp_path / "ckpt")}})
    errors.write_text('{"stale": "from another run"}\n')
    learn_argv = ["replay", "--config", learn_config, "--input", str(tmp_path / "p.jsonl"), "--mode", "learn", "--errors", str(errors)]
    assert main(learn_argv) == 0
    assert [json.loads(line)["source"]["line"] for line in errors.read_text().splitlines()] == [11, 41]
    capsys.readouterr()


def test_a_consume_file_replays_as_it_is_its_daemon_sections_said_not_refused(tmp_path, capsys, caplog):
    (tmp_path / "p.jsonl").write_bytes(b"\n".join(orjson.dumps(e) for e in phishing_events()[:50]) + b"\n")
    consume = {**JOB, "kafka": {"topic": "events", "bootstrap_servers": "127.0.0.1:9"}, "checkpoint": {"uri": str(tmp_path / "ckpt")},
               "metrics": {"host": "127.0.0.1", "port": 9108}}  # fmt: skip
    config = write_yaml(tmp_path / "consumer.yaml", consume)
    assert main(["config", "check", config, "--job", "replay"]) == 0
    with caplog.at_level("WARNING", logger="online.replay.job"):
        assert main(["replay", "--config", config, "--input", str(tmp_path / "p.jsonl"), "--mode", "evaluate"]) == 0
    assert "events_seen 50" in capsys.readouterr().out
    assert "note: replay ignores the metrics: and kafka: sections of this file (the daemon's)" in caplog.text
