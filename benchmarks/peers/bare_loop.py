"""The anchor: a bare River loop over events already decoded in memory.

Reads the JSON lines file the harness wrote (the same bytes it produced to Kafka) and decodes every
event with orjson *before* the processing phase starts, so the phase is River alone:
predict_proba_one, Accuracy, learn_one. It is the limit for one learner in one process.
"""

from __future__ import annotations

import orjson

from _common import Scorer, emit, parse_args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__, argv)
    with open(args.events_file, "rb") as lines:
        events = [orjson.loads(line) for line in lines][: args.end_offset]
    scorer = Scorer()
    process = scorer.process
    scorer.start_clock()
    for event in events:
        process(event)
    scorer.stop_clock()
    emit(scorer.report())


if __name__ == "__main__":
    main()
