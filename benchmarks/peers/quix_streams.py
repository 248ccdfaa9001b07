"""Quix Streams: a StreamingDataFrame whose ``update`` step feeds a model kept in a Python object.

Quix's consumer is a consumer group member (librdkafka; short session timeout for Tansu's join),
its JSON deserializer decodes each value, ``update`` runs the same per-event step, and
``run(count=N)`` stops after N records. The model is not in Quix's state store, so Quix's
checkpoints (offset commits every 5 s by default) do not cover it: after a crash the committed
offsets move on while the learning since the last start is lost.
"""

from __future__ import annotations

import logging

from quixstreams import Application

from _common import Scorer, emit, librdkafka_group_options, parse_args


def application(args, **options) -> Application:
    """A Quix Streams `Application` in a fresh group from the first offset, short group timeouts, `options` on top."""
    return Application(
        broker_address=args.bootstrap_servers,
        consumer_group=args.group_id,
        auto_offset_reset="earliest",
        consumer_extra_config=librdkafka_group_options(args),
        state_dir=args.state_dir,
        loglevel=logging.WARNING,
        **options,
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__, argv)
    app = application(args)
    scorer = Scorer()
    events = app.dataframe(app.topic(args.topic, value_deserializer="json"))
    events.update(scorer.process)
    app.run(count=args.end_offset, collect=False)
    scorer.stop_clock()
    emit(scorer.report())


if __name__ == "__main__":
    main()
