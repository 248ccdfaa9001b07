"""``riverbeam preprocess --config FILE [Beam flags...]``: the batch preprocessing job.

Unknown arguments go to Beam unchanged (``--runner=DataflowRunner --project=...``); without
``--runner`` the job runs locally on the download-free ``FnApiRunner``. The code behind it is
`pipelines.preprocess.run`.
"""

from __future__ import annotations

import json

from riverbeam.commands.beam_flags import with_beam_flags


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "preprocess",
        help="analyse and transform historical data with tensorflow-transform on Beam",
        description=(
            "Analyse and transform files with tensorflow-transform; write the transformed data, the "
            "TFTransformOutput and fitted_transforms.json (for features.transform_output online). "
            "Other arguments are Beam pipeline flags, e.g. --runner=DataflowRunner --project=P."
        ),
    )
    parser.add_argument("--config", required=True, help="the preprocess job's YAML file (local, gs:// or s3://)")
    parser.set_defaults(handler=preprocess, beam_args=[])
    parser.__class__ = with_beam_flags(type(parser))


def preprocess(args) -> int:
    from core.configuration import parse_config, read_yaml
    from core.storage import is_local

    # validate the configuration before paying for TensorFlow's import (a local file only)
    if is_local(args.config):
        from transforms.config import PreprocessJobConfig

        parse_config(read_yaml(args.config), PreprocessJobConfig, source=args.config)
    from pipelines.preprocess import run

    summary = run(["--config", args.config, *[a for a in args.beam_args if a != "--"]])
    print(json.dumps(summary))
    return 0
