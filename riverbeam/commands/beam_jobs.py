"""``riverbeam stream-learn`` and ``riverbeam archive``: the Beam streaming jobs.

Every argument is a flag of the pipeline (see ``python -m pipelines.<name> --help``) or a Beam
pipeline flag; the code behind each is ``pipelines.<name>.run(argv)``.
"""

from __future__ import annotations

import importlib

from riverbeam.commands.beam_flags import with_beam_flags

JOBS = {
    "stream-learn": ("pipelines.stream_learn", "learn River models from Kafka/Pub/Sub/files on Beam (Dataflow, Flink)"),
    "archive": ("pipelines.archive", "archive Kafka/Pub/Sub events to date/hour-partitioned files on Beam"),
}


def register(subparsers) -> None:
    for name, (module, help_text) in JOBS.items():
        parser = subparsers.add_parser(name, help=help_text, description=f"{help_text}. Arguments are the pipeline's and Beam's flags ({module}).", add_help=True)
        parser.set_defaults(handler=run_beam_job, beam_module=module, beam_args=[])
        parser.__class__ = with_beam_flags(type(parser))


def run_beam_job(args) -> int:
    """Run ``pipelines.<name>.run`` with the remaining arguments."""
    importlib.import_module(args.beam_module).run([a for a in args.beam_args if a != "--"])
    return 0
