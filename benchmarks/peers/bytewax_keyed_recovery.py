"""Bytewax with recovery, a model per key: ``KafkaSource`` → ``key_on`` → ``stateful_map``.

Bytewax's own way to keep state per key: ``key_on`` takes the Kafka message key (the producer set
it to the event's key field), ``stateful_map`` hands the mapper that key's state (its River model,
None at the key's first event) and keeps what the mapper returns. With recovery, at the end of
every epoch (``--snapshot-seconds``, 5 s) Bytewax pickles the state of every key that changed in
the epoch, with the Kafka offsets, into its SQLite recovery store; after a crash it resumes from the
last snapshot. Bytewax has no event-count cadence: epochs are time-based only. The key field is
dropped from the features, as riverbeam's ``events.key`` does.
"""

from __future__ import annotations

import argparse

import orjson
from bytewax import operators as op
from bytewax.connectors.kafka import KafkaSource
from bytewax.dataflow import Dataflow

from _common import KeyedScorer, emit, parse_args
from bytewax_recovery import run_with_recovery
from bytewax_stateful_map import DroppingSink

SCORER = KeyedScorer()  # one Accuracy over all keys (a single worker in this process)
MODELS: dict = {}  # key -> its latest model, for the digest at the end (Bytewax keeps its own copy of the state)


def build_flow(args: argparse.Namespace) -> Dataflow:
    """KafkaSource (to the partition's end) → key_on the message key → stateful_map per key → dropping sink."""
    key_field = args.key_field
    process = SCORER.process_keyed

    def learn(model, message):
        event = orjson.loads(message.value)
        key = event.pop(key_field)
        MODELS[key] = model = process(model, event)
        return model, None

    flow = Dataflow("river_learn_keyed")
    source = KafkaSource([args.bootstrap_servers], [args.topic], tail=False, batch_size=1000)
    messages = op.input("kafka", flow, source)
    keyed = op.key_on("per_key", messages, lambda message: message.key.decode())
    learned = op.stateful_map("learn", keyed, learn)
    op.output("drop", learned, DroppingSink())
    return flow


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__, argv)
    run_with_recovery(build_flow(args), args)
    SCORER.stop_clock()
    emit(SCORER.report(MODELS))


if __name__ == "__main__":
    main()
