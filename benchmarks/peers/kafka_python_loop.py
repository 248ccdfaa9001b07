"""Hand-written kafka-python loop: poll in batches → json → River, no checkpoints.

The plain loop most tutorials show: a consumer group member (short session and rebalance timeouts
for Tansu), ``poll(max_records=5000)``, the standard library's json, the same per-event step.
No commits, no checkpoints: a crash loses the model.
"""

from __future__ import annotations

import json

from kafka import KafkaConsumer

from _common import Scorer, emit, parse_args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__, argv)
    consumer = KafkaConsumer(
        args.topic,
        bootstrap_servers=args.bootstrap_servers,
        group_id=args.group_id,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=args.session_timeout_ms,
        heartbeat_interval_ms=args.heartbeat_interval_ms,
        max_poll_interval_ms=args.max_poll_interval_ms,
    )
    scorer = Scorer()
    process, loads = scorer.process, json.loads
    last = args.end_offset - 1
    offset = -1
    try:
        while offset < last:
            for records in consumer.poll(timeout_ms=500, max_records=5000).values():
                for record in records:
                    process(loads(record.value))
                offset = max(offset, records[-1].offset)
        scorer.stop_clock()
    finally:
        consumer.close()
    emit(scorer.report())


if __name__ == "__main__":
    main()
