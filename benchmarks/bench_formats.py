"""Decoding cost per event: Avro and Protobuf through the schema registry against JSON, same events, same run.

The events are River's Phishing data set cycled to 200k (nine numeric features and a boolean
label). Each format's records are written as a producer application writes them: JSON with
orjson, Avro and Protobuf with confluent-kafka's serializers in the schema-registry wire format,
registered in a real registry (Apicurio Registry, started here with riverbeam's local-stack
launcher; it needs Java 21+, fetched once into the cache). Then each list of values is decoded
by the path the daemon's learning loop runs for its ``kafka.format``:

- ``json``: `online.learning.loop.decode` (orjson);
- ``avro`` / ``protobuf``: `online.formats.RegistryDecoder` (confluent-kafka's deserializers,
  fastavro for Avro; each schema id fetched once), then `online.formats.flatten`.

Printed: microseconds per event (best of ``--rounds``) and each format's ratio to JSON measured in
the same run (below 1.00: cheaper than JSON). The events every format decodes to are checked equal
first, so the comparison is of the same work.

Then the writing side: microseconds per prediction record encoded as the daemon encodes its
``predictions_topic`` values (`online.formats_write`: orjson for ``json``, confluent-kafka's
serializers for ``avro``, ``json_schema`` and ``protobuf``).

With ``--daemon``, also the daemon end to end on a local Tansu broker: each format's values
produced to a topic of its own, then ``riverbeam consume --until-caught-up`` (confluent-kafka
client, the benchmark model, no outputs) reading it, and once more reading JSON while writing
every prediction as JSON, then as Avro, then as Protobuf; printed: the daemon's own events/s over its processing phase (first
event to last) and the ratio to JSON in the same run.

    python benchmarks/bench_formats.py                  # 200k events, 3 rounds
    python benchmarks/bench_formats.py --events 50000 --rounds 5 --daemon
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
from river import datasets

from online.formats import RegistryDecoder
from online.formats_write import OutputEncoders, RecordSerializer, derive_protobuf_class
from online.learning.loop import decode
from riverbeam.local_stack import SchemaRegistry, free_port

TOPIC = "phishing"


def phishing_events(n: int) -> list[dict]:
    """Phishing cycled to `n` events, every feature a float (Avro and Protobuf fields are typed)."""
    base = [{**{name: float(value) for name, value in x.items()}, "label": bool(y)} for x, y in datasets.Phishing()]
    return [base[i % len(base)] for i in range(n)]


def avro_values(events: list[dict], url: str) -> list[bytes]:
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    fields = [{"name": name, "type": "boolean" if name == "label" else "double"} for name in events[0]]
    schema = orjson.dumps({"type": "record", "name": "Phishing", "fields": fields}).decode()
    serialize = AvroSerializer(SchemaRegistryClient({"url": url}), schema)
    context = SerializationContext(TOPIC, MessageField.VALUE)
    return [serialize(event, context) for event in events]


def protobuf_values(events: list[dict], url: str) -> list[bytes]:
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    message_class = derive_protobuf_class(events[:1], name="Phishing")  # a double per feature, the label a bool
    serialize = ProtobufSerializer(message_class, SchemaRegistryClient({"url": url}), {"use.deprecated.format": False})
    context = SerializationContext(f"{TOPIC}-protobuf", MessageField.VALUE)
    return [serialize(message_class(**event), context) for event in events]


def best_time(decoder, values: list, rounds: int) -> tuple[float, list]:
    best, events = float("inf"), []
    for _ in range(rounds):
        start = time.perf_counter()
        events, reasons = decoder(values)
        best = min(best, time.perf_counter() - start)
        assert not reasons, list(reasons.items())[:3]
    return best, events


def prediction_records(events: list[dict]) -> list[dict]:
    """The records the daemon writes for `events` (`Prediction.record`'s shape: a classifier, learning, source position)."""
    return [{"prediction": event["label"], "probabilities": {"true": 0.25 + (i % 50) / 100, "false": 0.75 - (i % 50) / 100},
             "label": event["label"], "learned": True, "topic": TOPIC, "partition": 0, "offset": i} for i, event in enumerate(events)]  # fmt: skip


def encode_seconds(records: list[dict], url: str, rounds: int) -> dict[str, float]:
    """Best seconds to encode `records` as predictions in each output format."""
    encoders = {
        "json": OutputEncoders().prediction,
        "avro": RecordSerializer("prediction", "avro", {"url": url}),
        "json_schema": RecordSerializer("prediction", "json_schema", {"url": url}, strategy="record"),
        "protobuf": RecordSerializer("prediction", "protobuf", {"url": url}, strategy="topic_record"),
    }
    best: dict[str, float] = {}
    for name, encode in encoders.items():
        for _ in range(rounds):
            start = time.perf_counter()
            for record in records:
                encode(record, f"{TOPIC}.predictions")
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - start)
    return best


def daemon_rates(values: dict[str, list[bytes]], url: str, workdir: Path) -> dict[str, float]:
    """The daemon's events/s (its processing phase) reading each format's topic; ``json -> avro``: JSON in, Avro predictions out."""
    from confluent_kafka import Producer

    from online.kafka_clients import create_topic
    from riverbeam.local_stack import TansuBroker

    broker = TansuBroker("kafka", workdir, free_port())
    broker.start()
    bootstrap = f"127.0.0.1:{broker.port}"
    rates: dict[str, float] = {}
    try:
        for name, batch in values.items():
            create_topic(bootstrap, f"{TOPIC}-{name}", partitions=1)
            producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 50})
            for value in batch:
                while True:
                    try:
                        producer.produce(f"{TOPIC}-{name}", value, partition=0)
                        break
                    except BufferError:
                        producer.poll(0.1)
            assert producer.flush(120) == 0
        runs = {name: {"format": name} for name in values}
        for output in ("json", "avro", "protobuf"):  # predictions written: the cost of the output format against JSON's
            runs[f"json -> {output}"] = {"format": "json", "predictions_topic": f"{TOPIC}.predictions-{output}", "predictions_format": output}
        for run, kafka in runs.items():
            topic = f"{TOPIC}-{kafka['format']}"
            config = {
                "kafka": {"client": "confluent-kafka", "bootstrap_servers": bootstrap, "topic": topic, "group_id": f"bench-{len(rates)}",
                          "consumer": {"session.timeout.ms": 2000, "heartbeat.interval.ms": 500}, "schema_registry": {"url": url}, **kafka},
                "model": {"pipeline": [{"preprocessing.StandardScaler": {}}, {"linear_model.LogisticRegression": {}}], "metrics": ["Accuracy"]},
                "events": {"target": "label"},
                "checkpoint": {"uri": str(workdir / f"checkpoints-{len(rates)}"), "every_events": 50_000},
                "metrics": {"port": None},
            }  # fmt: skip
            path = workdir / f"consume-{len(rates)}.yaml"
            path.write_text(json.dumps(config))
            done = subprocess.run([sys.executable, "-m", "riverbeam.cli", "consume", "--config", str(path), "--until-caught-up", "--json"],
                                  capture_output=True, text=True, timeout=1800, env=dict(os.environ, NO_GCE_CHECK="true"))  # fmt: skip
            if done.returncode != 0:
                raise SystemExit(f"the daemon failed on {run}: {done.stderr[-2000:]}")
            summary = json.loads(done.stdout.strip().splitlines()[-1])
            assert summary["events_learned"] == len(values[kafka["format"]]), summary
            rates[run] = summary["events_per_second"]
    finally:
        broker.stop()
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--daemon", action="store_true", help="also the daemon's events/s per format, on a local broker")
    args = parser.parse_args()

    events = phishing_events(args.events)
    registry = SchemaRegistry("schema-registry", Path(tempfile.mkdtemp(prefix="bench-formats-")), free_port())
    registry.start()
    try:
        values = {
            "json": [orjson.dumps(event) for event in events],
            "avro": avro_values(events, registry.url),
            "protobuf": protobuf_values(events, registry.url),
        }
        decoders = {
            "json": decode,
            "avro": lambda batch: RegistryDecoder("avro", {"url": registry.url})(batch, TOPIC),
            "protobuf": lambda batch: RegistryDecoder("protobuf", {"url": registry.url})(batch, f"{TOPIC}-protobuf"),
        }
        seconds, decoded = {}, {}
        for name, decoder in decoders.items():
            seconds[name], decoded[name] = best_time(decoder, values[name], args.rounds)
        for name in ("avro", "protobuf"):
            assert decoded[name] == decoded["json"], f"{name} decodes to other events than JSON"
        encoded = encode_seconds(prediction_records(events), registry.url, args.rounds)
        rates = daemon_rates(values, registry.url, Path(tempfile.mkdtemp(prefix="bench-formats-daemon-"))) if args.daemon else {}
    finally:
        registry.stop()

    size = {name: sum(map(len, batch)) / len(batch) for name, batch in values.items()}
    print(f"{args.events} Phishing events, best of {args.rounds} rounds; decoded events equal across formats")
    print(f"{'format':<10} {'bytes/event':>12} {'us/event':>10} {'vs json':>8}")
    for name in decoders:
        print(f"{name:<10} {size[name]:>12.1f} {seconds[name] / args.events * 1e6:>10.2f} {seconds[name] / seconds['json']:>7.2f}x")
    print(f"\nprediction records written, best of {args.rounds} rounds")
    print(f"{'format':<12} {'us/record':>10} {'vs json':>8}")
    for name, spent in encoded.items():
        print(f"{name:<12} {spent / args.events * 1e6:>10.2f} {spent / encoded['json']:>7.2f}x")
    if rates:
        print("\nthe daemon (riverbeam consume --until-caught-up, confluent-kafka), its processing phase")
        print(f"{'format':<16} {'events/s':>10} {'vs json':>8}")
        for name, rate in rates.items():
            print(f"{name:<16} {rate:>10.0f} {rate / rates['json']:>7.2f}x")


if __name__ == "__main__":
    main()
