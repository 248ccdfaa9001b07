"""Hand-written confluent-kafka loop: consume in batches → orjson → River, no checkpoints.

What a careful user writes by hand with librdkafka: a consumer group member (short session
timeout for Tansu), ``consume(1000)`` batches, orjson, the same per-event step. No commits, no
checkpoints: a crash loses the model.
"""

from __future__ import annotations

import orjson
from confluent_kafka import Consumer, KafkaException

from _common import Scorer, emit, librdkafka_group_options, parse_args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__, argv)
    consumer = Consumer({
        "bootstrap.servers": args.bootstrap_servers,
        "group.id": args.group_id,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        **librdkafka_group_options(args),
    })
    consumer.subscribe([args.topic])
    scorer = Scorer()
    process, loads = scorer.process, orjson.loads
    last = args.end_offset - 1
    offset = -1
    try:
        while offset < last:
            messages = consumer.consume(1000, 0.5)
            for message in messages:
                if message.error() is not None:
                    raise KafkaException(message.error())
                process(loads(message.value()))
            if messages:
                offset = messages[-1].offset()
        scorer.stop_clock()
    finally:
        consumer.close()
    emit(scorer.report())


if __name__ == "__main__":
    main()
