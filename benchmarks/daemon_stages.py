"""Where the daemon's time goes: µs/event per stage, on the same events, with the bare River loop as anchor.

Stages, each measured on its own over the same N events (Phishing cycled, one partition of the
local Tansu broker): poll (the consumer's ``poll_batches`` reading the topic, values only, for
each client), decode (orjson), split + checks (`online.events.EventReader`, the only work the
core adds), predict, metric, learn (River itself, timed call by call), checkpoint (flush +
snapshot + upload to local disk, spread over ``every_events`` events). The sum is compared with
the bare loop's µs/event measured in the same run.

River's stages are measured three times: on a model never pickled (what the bare loop runs), on
one pickled once (every checkpoint does that to the daemon's live model, and a restore starts from
an unpickled one: CPython 3.11 then keeps its attributes in a ``__dict__``, slower to reach), and
on one after `Learner.snapshot` (which continues on `online.learning.learner.compact_copy`).

    python benchmarks/daemon_stages.py --events 200000
"""

from __future__ import annotations

import argparse
import pickle
import tempfile
import time
import uuid

import orjson
from river import datasets, linear_model, metrics, preprocessing

from bench_learner import bare_loop  # benchmarks/ is on sys.path when run as a script
from online.checkpoints.store import CheckpointStore
from online.config import EventsConfig, KafkaConfig, ModelConfig
from online.events import EventReader
from online.kafka_clients import create_topic, make_consumer, make_producer
from online.learning.learner import Learner, compact_copy
from online.checkpoints.persistence import save_learner
from riverbeam.local_stack import LocalStack

SPEC = [{"preprocessing.StandardScaler": {}}, {"linear_model.LogisticRegression": {}}]


def poll_seconds(bootstrap: str, topic: str, client: str, count: int) -> float:
    consumer = make_consumer(KafkaConfig(client=client, bootstrap_servers=bootstrap, topic=topic), group=False)
    consumer.assign([(topic, 0)])
    consumer.seek((topic, 0), 0)
    seen, start = 0, time.perf_counter()
    while seen < count:
        for batch in consumer.poll_batches(0.5, 5000):
            seen += len(batch.values)
    elapsed = time.perf_counter() - start
    consumer.close()
    return elapsed


def river_stages(events: list[dict], layout: str = "fresh") -> dict[str, float]:
    """Seconds in predict, metric and learn; `layout`: ``fresh``, ``pickled`` (model and metrics pickled
    once, as a checkpoint does) or ``compact`` (then the model replaced by its `compact_copy`, as `Learner.snapshot` does)."""
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    metric = metrics.Accuracy() + metrics.LogLoss()
    if layout != "fresh":
        pickle.dumps((model, metric))
    if layout == "compact":
        model = compact_copy(model)
    clock = time.perf_counter
    predict = update = learn = 0.0
    for event in [dict(e) for e in events]:
        y = event.pop("label")
        t0 = clock()
        y_pred = model.predict_proba_one(event)
        t1 = clock()
        metric.update(y, y_pred)
        t2 = clock()
        model.learn_one(event, y)
        t3 = clock()
        predict, update, learn = predict + t1 - t0, update + t2 - t1, learn + t3 - t2
    return {"predict": predict, "metric": update, "learn": learn}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--every-events", type=int, default=10_000)
    args = parser.parse_args(argv)
    base = [{**x, "label": y} for x, y in datasets.Phishing()]
    events = [base[i % len(base)] for i in range(args.events)]
    values = [orjson.dumps(e) for e in events]
    n = len(events)
    us = lambda seconds: seconds / n * 1e6  # noqa: E731
    with LocalStack(tempfile.mkdtemp(), kafka_port=0, gcs_port=0) as stack:
        topic = f"stages-{uuid.uuid4().hex[:6]}"
        create_topic(stack.bootstrap_servers, topic, partitions=1)
        producer = make_producer(KafkaConfig(bootstrap_servers=stack.bootstrap_servers, topic=topic))
        for value in values:
            producer.send(topic, value, partition=0)
        producer.flush()
        producer.close()
        polls = {client: poll_seconds(stack.bootstrap_servers, topic, client, n) for client in ("kafka-python", "confluent-kafka")}
    start = time.perf_counter()
    decoded = [orjson.loads(v) for v in values]
    decode = time.perf_counter() - start
    reader = EventReader(EventsConfig(target="label"), label_kind="class")
    start = time.perf_counter()
    for event in decoded:
        reader.split(event)
    split = time.perf_counter() - start
    stages = river_stages(events)
    pickled = river_stages(events, "pickled")
    compact = river_stages(events, "compact")
    learner = Learner(ModelConfig(pipeline=SPEC, metrics=["Accuracy", "LogLoss"]), EventsConfig(target="label"))
    learner.process_many([dict(e) for e in events[:20_000]])
    store = CheckpointStore(tempfile.mkdtemp(), keep=3)
    start = time.perf_counter()
    for _ in range(10):
        save_learner(store, learner, positions={f"{topic}/0": 1})
    checkpoint_per_event = (time.perf_counter() - start) / 10 / args.every_events
    bare, _ = bare_loop(events, ["Accuracy", "LogLoss"])  # the anchor of bench_learner.py
    print(f"{n:,} events (Phishing cycled), StandardScaler | LogisticRegression, checkpoint every {args.every_events:,}")
    print(f"{'stage':<28}{'µs/event':>10}")
    rows = [
        ("poll, kafka-python", us(polls["kafka-python"])),
        ("poll, confluent-kafka", us(polls["confluent-kafka"])),
        ("decode (orjson)", us(decode)),
        ("transform (none configured)", 0.0),
        ("split + checks (riverbeam)", us(split)),
        ("predict (River)", us(stages["predict"])),
        ("metric (River)", us(stages["metric"])),
        ("learn (River)", us(stages["learn"])),
        ("checkpoint (amortised)", checkpoint_per_event * 1e6),
    ]
    for name, value in rows:
        print(f"{name:<28}{value:>10.2f}")
    river = us(stages["predict"] + stages["metric"] + stages["learn"])
    for title, measured in (("River, model pickled once", pickled), ("River, then compact_copy", compact)):
        total = us(measured["predict"] + measured["metric"] + measured["learn"])
        print(f"{title:<28}{total:>10.2f}   ({total - river:+.2f} vs a never-pickled model: predict+metric+learn)")
    overhead = us(decode + split) + checkpoint_per_event * 1e6
    print(f"{'bare River loop (anchor)':<28}{us(bare):>10.2f}")
    for client in ("kafka-python", "confluent-kafka"):
        total = us(polls[client]) + overhead + river
        print(f"sum with {client:<19}{total:>10.2f}   -> bound on the ratio to the bare loop: {us(bare) / total:.2f}")
    print("(poll runs on librdkafka's own threads for confluent-kafka: its wall time overlaps processing in the daemon)")


if __name__ == "__main__":
    main()
