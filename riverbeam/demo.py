"""``riverbeam demo``: the main job on embedded defaults, end to end, on one machine.

Starts the local stack (Tansu broker + GCS emulator), produces a bundled River dataset as JSON
events, runs the consumer daemon with ``--until-caught-up`` (checkpoints in a local directory),
prints a summary and stops everything it started.
"""

from __future__ import annotations

import itertools
import os
import shutil
import sys
import time
import uuid
from pathlib import Path

import orjson

from core.errors import UsageError
from riverbeam.local_stack import LocalStack

MODELS = {
    "Binary classification": ([{"preprocessing.StandardScaler": {}}, {"linear_model.LogisticRegression": {}}], ["Accuracy", "LogLoss"]),
    "Multi-class classification": ([{"preprocessing.StandardScaler": {}}, {"linear_model.SoftmaxRegression": {}}], ["Accuracy", "MacroF1"]),
    "Regression": ([{"preprocessing.StandardScaler": {}}, {"linear_model.LinearRegression": {"intercept_lr": 0.1}}], ["MAE", "RMSE"]),
}


def bundled_datasets() -> list[str]:
    """River's datasets shipped inside its wheel whose task the demo handles (never one to download).

    >>> "Phishing" in bundled_datasets(), "CreditCard" in bundled_datasets()
    (True, False)
    """
    from river import datasets

    names = []
    for name, cls in sorted(vars(datasets).items()):
        if isinstance(cls, type) and issubclass(cls, datasets.base.FileDataset) and not issubclass(cls, datasets.base.RemoteDataset):
            try:
                task = cls().task
            except Exception:  # a dataset that cannot even be described is not offered
                continue
            if task in MODELS:
                names.append(name)
    return names


def load_dataset(name: str):
    """A dataset bundled in River's wheel (nothing is downloaded); any other is refused with the list."""
    from river import datasets

    offered = bundled_datasets()
    if name not in offered:
        raise UsageError(f"--dataset: {name!r} is not a dataset bundled with River (the demo never downloads one); choose one of {', '.join(offered)}")
    return getattr(datasets, name)()


def run_demo(dataset_name: str = "Phishing", events: int | None = None, directory: str = ".riverbeam/demo", client: str = "kafka-python") -> dict:
    """Run the demo and return the daemon's summary."""
    from tqdm import tqdm

    from online.config import ConsumeJobConfig
    from online.consume.daemon import run_daemon
    from online.kafka_clients import create_topic, make_producer
    from online.observability import configure_json_logging

    dataset = load_dataset(dataset_name)
    rows = list(dataset)
    count = events or len(rows)
    root = Path(directory)
    shutil.rmtree(root / "checkpoints", ignore_errors=True)
    stack = LocalStack(root / "stack", kafka_port=0, gcs_port=0)
    print(f"riverbeam demo: starting the local Kafka broker and GCS emulator (logs in {root / 'stack'})", file=sys.stderr)
    settings = stack.up()
    try:
        os.environ.update({k: v for k, v in settings.environment().items() if k in ("NO_GCE_CHECK", "STORAGE_EMULATOR_HOST")})
        topic = f"demo-{dataset_name.lower()}"
        create_topic(settings.bootstrap_servers, topic, partitions=1)
        pipeline, metrics = MODELS[dataset.task]
        config = ConsumeJobConfig.model_validate(
            {
                "kafka": {
                    "client": client, "bootstrap_servers": settings.bootstrap_servers, "topic": topic,
                    "group_id": f"riverbeam-demo-{uuid.uuid4().hex[:6]}", "dead_letter_topic": f"{topic}.dlq",
                    "consumer": {"session_timeout_ms": 2000, "heartbeat_interval_ms": 500, "max_poll_interval_ms": 10000}
                    if client == "kafka-python" else {"session.timeout.ms": 2000, "heartbeat.interval.ms": 500},
                },
                "model": {"pipeline": pipeline, "metrics": metrics},
                "events": {"target": "target"},
                "checkpoint": {"uri": str((root / "checkpoints").resolve()), "every_events": 10_000},
                "metrics": {"port": None},
            },
            strict=False,
        )  # fmt: skip
        producer = make_producer(config.kafka)
        for x, y in tqdm(itertools.islice(itertools.cycle(rows), count), total=count, desc=f"producing {dataset_name}", unit="ev", file=sys.stderr):
            producer.send(topic, orjson.dumps({**x, "target": y}, default=str), partition=0)
        producer.flush()
        producer.close()
        configure_json_logging(level=30)  # warnings only: the progress line tells the story
        started = time.monotonic()
        summary = run_daemon(config, until_caught_up=True, progress=True)
        summary["wall_seconds"] = round(time.monotonic() - started, 2)
        return summary
    finally:
        stack.down()
        print("riverbeam demo: local stack stopped", file=sys.stderr)


def demo_summary(summary: dict, dataset: str, units_in_full: bool = False):
    """The demo's run as the summary every command ends with (the daemon's, plus the dataset)."""
    from online.consume.daemon import daemon_job_summary

    result = daemon_job_summary(summary, units_in_full=units_in_full)
    result.job = "demo"
    result.details = {"dataset": dataset, **result.details,
                      "next": f"riverbeam checkpoints show {summary['checkpoint_uri']}"}
    return result
