"""The keyed anchor: a bare River loop with a model per key over events already decoded in memory.

The same JSON lines file as `bare_loop.py` (events with a key field); every event is decoded before
the clock starts, so the processing phase is a dict look-up per event plus River: predict_proba_one,
Accuracy, learn_one on the key's model (a new model at a key's first event). No checkpoints.
"""

from __future__ import annotations

import orjson

from _common import KeyedScorer, emit, parse_args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__, argv)
    with open(args.events_file, "rb") as lines:
        events = [orjson.loads(line) for line in lines][: args.end_offset]
    scorer = KeyedScorer()
    process, models, key_field = scorer.process_keyed, {}, args.key_field
    scorer.start_clock()
    for event in events:
        key = event.pop(key_field)
        models[key] = process(models.get(key), event)
    scorer.stop_clock()
    emit(scorer.report(models))


if __name__ == "__main__":
    main()
