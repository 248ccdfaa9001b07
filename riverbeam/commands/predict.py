"""``riverbeam predict --checkpoint URI [--input FILE.jsonl | -]``: predictions from a checkpoint."""

from __future__ import annotations

import sys


from riverbeam.commands.checkpoints import add_signing_key_env


def register(subparsers) -> None:
    predict = subparsers.add_parser("predict", help="predict JSON lines with the model of a checkpoint (no learning)")
    predict.add_argument("--checkpoint", required=True, help="checkpoint URI (local path, file://, gs:// or s3://)")
    predict.add_argument("--id", help="checkpoint id (default: latest)")
    predict.add_argument("--input", default="-", help="JSON lines file, or - for standard input (default)")
    predict.add_argument("--model", help="the model to predict with, in a checkpoint of several (models:); default the first")
    add_signing_key_env(predict)
    predict.set_defaults(handler=predict_command)


def predict_command(args) -> int:
    from online.checkpoints.persistence import checkpoint_store
    from online.serving.predict import latest_model, predict_lines
    from core.errors import RiverbeamError, UsageError

    found = latest_model(checkpoint_store(args.checkpoint, args.signing_key_env), args.id, args.model)
    if found is None:
        raise RiverbeamError(f"no checkpoints at {args.checkpoint}")
    checkpoint, learner = found
    try:  # bytes: a line that is not UTF-8 is one error record, not a traceback
        source = sys.stdin.buffer if args.input == "-" else open(args.input, "rb")
    except OSError as error:
        raise UsageError(f"--input {args.input}: {error.strerror}") from None
    with source:
        for line in predict_lines(checkpoint, source, args.model, learner):  # blank lines are skipped but keep their numbers
            sys.stdout.write(line + "\n")
    return 0
