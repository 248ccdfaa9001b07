"""Quix Streams keyed state: a River model per key, pickled in Quix's RocksDB state store.

Quix's own way to keep state per key: state is scoped to the Kafka message key (the producer set it
to the event's key field); ``sdf.update(..., stateful=True)`` hands the function the key's `State`,
whose ``get`` reads (and unpickles) the key's model and ``set`` writes (and pickles) it back, so the
model lives in the state store and is covered by Quix's checkpoints: every ``--checkpoint-every``
events (riverbeam's cadence) Quix flushes the state to RocksDB, produces the changed keys to its
changelog topic (its recovery log) and commits the offsets. Values go through ``pickle`` (Quix's
default serializer is JSON, which cannot hold a model). The key field is dropped from the features,
as riverbeam's ``events.key`` does.
"""

from __future__ import annotations

import functools
import pickle

from quixstreams.state.rocksdb import RocksDBOptions

from _common import KeyedScorer, emit, parse_args
from quix_streams import application


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__, argv)
    app = application(
        args,
        rocksdb_options=RocksDBOptions(dumps=functools.partial(pickle.dumps, protocol=pickle.HIGHEST_PROTOCOL), loads=pickle.loads),
        commit_every=args.checkpoint_every,
    )
    scorer = KeyedScorer()
    process, key_field, models = scorer.process_keyed, args.key_field, {}

    def learn(event: dict, state) -> None:
        key = event.pop(key_field)
        model = process(state.get("model"), event)
        state.set("model", model)
        models[key] = model

    events = app.dataframe(app.topic(args.topic, key_deserializer="str", value_deserializer="json"))
    events.update(learn, stateful=True)
    app.run(count=args.end_offset, collect=False)
    scorer.stop_clock()
    emit(scorer.report(models))


if __name__ == "__main__":
    main()
