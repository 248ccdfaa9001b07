"""Bytewax: ``KafkaSource`` → ``stateful_map`` holding the model, no recovery.

Bytewax's Kafka source assigns partitions itself (no consumer group, so no join wait) and, with
``tail=False``, stops at the end of the partition. One key ("model") holds one global model in
``stateful_map``; decoding (orjson) happens in the mapper. The mapper emits nothing of interest,
so the output is a sink that drops its batches. Without recovery a crash loses the model.
"""

from __future__ import annotations

import argparse

import orjson
from bytewax import operators as op
from bytewax.connectors.kafka import KafkaSource
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from _common import Scorer, emit, parse_args

# The one Scorer the flow creates, kept for the report (a single worker in this process).
SCORERS: list[Scorer] = []


class DroppingPartition(StatelessSinkPartition):
    def write_batch(self, items) -> None:
        pass


class DroppingSink(DynamicSink):
    """A sink that discards what it gets: the model is the product, not the stream."""

    def build(self, step_id, worker_index, worker_count):
        return DroppingPartition()


def learn(scorer: Scorer | None, message) -> tuple[Scorer, None]:
    """The `stateful_map` mapper: decode, predict, score, learn."""
    if scorer is None:
        scorer = Scorer()
        SCORERS.append(scorer)
    scorer.process(orjson.loads(message.value))
    return scorer, None


def build_flow(args: argparse.Namespace) -> Dataflow:
    """KafkaSource (to the partition's end) → key_on one key → stateful_map → dropping sink."""
    flow = Dataflow("river_learn")
    source = KafkaSource([args.bootstrap_servers], [args.topic], tail=False, batch_size=1000)
    messages = op.input("kafka", flow, source)
    keyed = op.key_on("one_model", messages, lambda _message: "model")
    learned = op.stateful_map("learn", keyed, learn)
    op.output("drop", learned, DroppingSink())
    return flow


def report() -> dict:
    """The Scorer's report after the flow has run (a restored Scorer is a copy: use the last one)."""
    scorer = SCORERS[-1] if SCORERS else Scorer()
    scorer.stop_clock()
    return scorer.report()


def main(argv: list[str] | None = None) -> None:
    from bytewax.run import cli_main

    args = parse_args(__doc__, argv)
    cli_main(build_flow(args), workers_per_process=1)
    emit(report())


if __name__ == "__main__":
    main()
