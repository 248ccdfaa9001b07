"""``riverbeam preprocess --config FILE [Beam flags...]``: the batch preprocessing job.

Other arguments are the pipeline's flags (``--help`` lists them) and Beam's
(``--runner=DataflowRunner --project=...``); any other flag is refused with a suggestion
(`riverbeam.commands.beam_flags`). Without ``--runner`` the job runs locally on the
download-free ``FnApiRunner``. The code behind it is `pipelines.preprocess.run`; the command
ends with the summary every command prints (`core.summary.JobSummary`, ``--json``).
"""

from __future__ import annotations

import time

from riverbeam.commands.beam_flags import check_beam_args, options_class, quiet_beam_and_tensorflow, with_beam_flags

OPTIONS = "pipelines.preprocess:PreprocessOptions"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "preprocess",
        usage="%(prog)s [-h] --config FILE [--json] [--verbose] [pipeline flags] [Beam flags]",
        help="analyse and transform historical data with tensorflow-transform on Beam",
        description=(
            "Analyse and transform files with tensorflow-transform; write the transformed data, the "
            "TFTransformOutput and fitted_transforms.json (for features.transform_output online). "
            "Other arguments are the pipeline's flags (below) and Beam's, e.g. --runner=DataflowRunner --project=P."
        ),
    )
    parser.add_argument("--config", required=True, help="the preprocess job's YAML file (local, gs:// or s3://)")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    parser.add_argument("--verbose", action="store_true", help="show Beam's and TensorFlow's own log lines")
    parser.set_defaults(handler=preprocess, beam_args=[])
    parser.__class__ = with_beam_flags(type(parser), OPTIONS)


def preprocess(args) -> int:
    from core.configuration import parse_config, read_yaml
    from core.storage import is_local

    # validate the configuration before paying for TensorFlow's import (a local file only)
    if is_local(args.config):
        from transforms.config import PreprocessJobConfig

        parse_config(read_yaml(args.config), PreprocessJobConfig, source=args.config)
    argv = check_beam_args(["--config", args.config, *args.beam_args], options_class(OPTIONS), "preprocess")
    from core.summary import JobSummary
    from pipelines.preprocess import run

    started = time.monotonic()
    with quiet_beam_and_tensorflow(args.verbose):
        done = run(argv)
    counts = {}
    if done["rows"] is not None:  # waited for: a local run
        bad = done["bad_rows"] or 0
        counts = {"events_seen": done["rows"] + bad, "events_dead_lettered": bad}
    details = {"output": done["output_dir"], "fitted_transform": done["fitted_transform"], "state": done["state"]}
    JobSummary("preprocess", None, counts=counts, seconds=time.monotonic() - started, details=details).print(as_json=args.json)
    return 0
