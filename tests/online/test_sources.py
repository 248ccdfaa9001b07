"""Event sources: files and Kafka partitions behind one protocol (next batch, position, seek)."""

from __future__ import annotations

import orjson
import pytest

from core.errors import UsageError
from online.config import KafkaConfig
from online.kafka_clients import make_consumer
from online.readers import expand_inputs
from online.sources import FileSource, KafkaBatch, KafkaSource, REPLAY
from tests.online.consume.test_daemon import produce


def write(path, rows: list) -> None:
    path.write_bytes(b"".join((row if isinstance(row, bytes) else orjson.dumps(row)) + b"\n" for row in rows))


def drain(source) -> list:
    return [batch for batch in iter(source.next_batch, None)]


def test_file_source_batches_count_good_events_and_resume_after_any_cut(tmp_path):
    write(tmp_path / "a.jsonl", [{"i": 0}, b"{bad", {"i": 1}, {"i": 2}])
    write(tmp_path / "b.jsonl", [{"i": 3}, {"i": 4}, b"[5]", {"i": 6}])
    files = expand_inputs([str(tmp_path / "*.jsonl")])
    source = FileSource(files, max_events=2)
    batches = drain(source)
    assert [[v["i"] if v else None for v in b.values] for b in batches] == [[0, None, 1], [2, 3], [4, None, 6]]
    assert source.exhausted and source.lines == 8 and source.good == 6
    assert batches[1].next_position.file.endswith("b.jsonl") and batches[1].next_position.line == 1
    # cut anywhere (a chunk boundary in the loop), seek there: the rest is exactly what follows
    everything = [r for b in batches for r in b.records]
    for cut in range(len(everything) + 1):
        whole = FileSource(files, max_events=100).next_batch()
        head, _ = whole.take(cut)
        again = FileSource(files, max_events=100)
        again.seek({REPLAY: head.next_position.to_json()})
        rest = [r for b in drain(again) for r in b.records]
        assert [(r.file_index, r.line) for r in rest] == [(r.file_index, r.line) for r in everything[cut:]], cut


def test_file_source_in_time_order_keeps_each_files_line(tmp_path):
    write(tmp_path / "a.jsonl", [{"t": 1}, {"t": 4}, {"t": 5}])
    write(tmp_path / "b.jsonl", [{"t": 2}, {"t": 3}, {"t": 6}])
    files = expand_inputs([str(tmp_path / "*.jsonl")])
    source = FileSource(files, time_field="t", max_events=2)
    first = source.next_batch()
    assert [v["t"] for v in first.values] == [1, 2]
    position = source.position()[REPLAY]
    assert position["order"] == "time" and sorted(position["lines"].values()) == [1, 1]
    again = FileSource(files, time_field="t")
    again.seek(source.position())
    assert [v["t"] for b in drain(again) for v in b.values] == [3, 4, 5, 6]
    with pytest.raises(UsageError, match="time order"):
        FileSource(files).seek(source.position())  # a time-ordered position read in file order


def test_file_source_every_ends_batches_on_report_boundaries(tmp_path):
    write(tmp_path / "a.jsonl", [{"i": i} for i in range(10)])
    source = FileSource(expand_inputs([str(tmp_path / "a.jsonl")]), max_events=4, every=3)
    assert [len(b) for b in drain(source)] == [3, 3, 3, 1]


def test_kafka_batch_take_keeps_offsets_and_positions():
    batch = KafkaBatch(("t", 1), [b"a", b"b", b"c", b"d"], [10, 11, 12, 13])
    head, tail = batch.take(3)
    assert (head.offsets, head.next_position, tail.offsets, tail.next_position) == ([10, 11, 12], 13, [13], 14)
    assert tail.source(0) == (("t", 1), 13)


def test_kafka_source_reads_positions_and_seeks_back(kafka_bootstrap, topic):
    produce(kafka_bootstrap, topic, [orjson.dumps({"i": i}) for i in range(30)], partitions=2)
    consumer = make_consumer(KafkaConfig(bootstrap_servers=kafka_bootstrap, topic=topic), group=False)
    try:
        tps = [(topic, 0), (topic, 1)]
        consumer.assign(tps)
        source = KafkaSource(consumer, poll_timeout=0.5, max_records=7)
        source.seek({f"{topic}/0": 0, f"{topic}/1": 0})
        seen: dict = {tp: [] for tp in tps}
        for _ in range(40):
            for batch in source.poll():
                assert len(batch) <= 7 and batch.offsets == sorted(batch.offsets)
                seen[batch.partition].extend(batch.offsets)
            if sum(map(len, seen.values())) == 30:
                break
        assert seen == {(topic, 0): list(range(15)), (topic, 1): list(range(15))}
        assert source.position() == {f"{topic}/0": 15, f"{topic}/1": 15}
        source.seek({f"{topic}/1": 10})
        again = []
        for _ in range(20):
            for batch in source.poll():
                assert batch.partition == (topic, 1)
                again.extend(batch.offsets)
            if len(again) == 5:
                break
        assert again == [10, 11, 12, 13, 14] and source.position()[f"{topic}/1"] == 15
    finally:
        consumer.close()
