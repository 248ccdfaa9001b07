"""``riverbeam templates build|metadata|launch|create-classic``: Dataflow flex and classic templates.

The work is done by `pipelines.templates` (imported inside the handlers: Beam loads only when a
command needs it).
"""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    from pipelines.templates import PIPELINES  # plain data: no Beam import

    names = sorted(PIPELINES)
    templates = subparsers.add_parser("templates", help="build, describe and launch Dataflow templates")
    actions = templates.add_subparsers(dest="action", metavar="ACTION", required=True)

    build = actions.add_parser("build", help="write a pipeline's flex template spec (launcher image, worker image, metadata)")
    build.add_argument("--pipeline", required=True, choices=names)
    build.add_argument("--image", required=True, help="the launcher image, built from templates/Dockerfile --build-arg PIPELINE=<pipeline>")
    build.add_argument("--worker-image", required=True, help="the worker SDK container, built from templates/worker.Dockerfile (the job's default sdk_container_image)")
    build.add_argument("--spec-path", required=True, help="where the spec goes: gs://bucket/path/NAME.json or a local path")
    build.set_defaults(handler=templates_build)

    metadata = actions.add_parser("metadata", help="print (or write) a pipeline's template metadata, derived from its options")
    metadata.add_argument("--pipeline", required=True, choices=[*names, "all"], help="a pipeline, or 'all'")
    metadata.add_argument("--write", action="store_true", help="write OUT/<pipeline>/metadata.json instead of printing")
    metadata.add_argument("--out", default="templates", help="the folder --write writes into (default: ./templates, relative to the current directory)")
    metadata.set_defaults(handler=templates_metadata)

    launch = actions.add_parser(
        "launch",
        help="launch a flex (or --classic) template through the Dataflow API",
        description="Checks every --parameter against the template's metadata (names, required ones, regexes, "
        "choices) before sending anything; the metadata is read from the spec (flex) or <location>_metadata "
        "(classic), or taken from this installation with --pipeline.",
    )
    launch.add_argument("--spec-path", required=True, help="flex: the spec written by 'build'; classic: the template location")
    launch.add_argument("--project", required=True)
    launch.add_argument("--region", required=True)
    launch.add_argument("--job-name", required=True)
    launch.add_argument("--parameter", action="append", default=[], metavar="KEY=VALUE", help="a pipeline flag (repeatable)")
    launch.add_argument("--pipeline", choices=names, default=None, help="check the parameters against this installation's metadata of PIPELINE instead of reading the template's")
    launch.add_argument("--classic", action="store_true", help="launch a classic template (templates:launch?gcsPath=)")
    launch.add_argument("--streaming-mode", choices=["exactly-once", "at-least-once"], default=None,
                        help="a streaming job's mode, if the template supports it (default: the template's)")
    launch.add_argument("--update", action="store_true", help="replace the running streaming job named --job-name in place, keeping its state")
    launch.add_argument("--transform-name-mapping", action="append", default=[], metavar="OLD=NEW",
                        help="with --update: a renamed step (repeatable)")
    launch.add_argument("--dataflow-endpoint", default=None, help="API root (default https://dataflow.googleapis.com)")
    launch.add_argument("--dry-run", action="store_true", help="check the parameters and print the HTTP request instead of sending it")
    launch.set_defaults(handler=templates_launch)

    classic = actions.add_parser(
        "create-classic",
        help="create a classic template with --template_location (Beam flags after --)",
        description="Builds the pipeline on the DataflowRunner with --template_location. Pass Beam flags "
        "(--project, --region, --temp_location, --staging_location, pipeline flags) after '--'. Only value-provider "
        "flags (see templates/README.md) can be given when the classic template is launched.",
    )
    classic.add_argument("--pipeline", required=True, choices=names)
    classic.add_argument("--template-location", required=True, help="gs://bucket/path/NAME")
    classic.add_argument("beam_args", nargs=argparse.REMAINDER, help="Beam and pipeline flags, after '--'")
    classic.set_defaults(handler=templates_create_classic)


def templates_build(args) -> int:
    from pipelines.templates import build_flex_template

    build_flex_template(args.pipeline, args.image, args.worker_image, args.spec_path)
    print(f"wrote the {args.pipeline} flex template spec to {args.spec_path}")
    return 0


def templates_metadata(args) -> int:
    from pipelines import templates

    for name in sorted(templates.PIPELINES) if args.pipeline == "all" else [args.pipeline]:
        if args.write:
            print(f"wrote {templates.write_metadata_file(name, args.out)}")
        else:
            print(templates.metadata_text(templates.template_metadata(name)), end="")
    return 0


def templates_launch(args) -> int:
    from pipelines import templates

    launch = templates.launch_classic_template if args.classic else templates.launch_flex_template
    metadata = None
    if args.pipeline:  # this installation's metadata instead of the template's
        metadata = (templates.classic_template_metadata if args.classic else templates.template_metadata)(args.pipeline)
    result = launch(
        args.spec_path,
        args.project,
        args.region,
        args.job_name,
        templates.parse_parameters(args.parameter),
        metadata=metadata,
        endpoint=args.dataflow_endpoint,
        dry_run=args.dry_run,
        update=args.update,
        transform_name_mappings=templates.parse_name_mappings(args.transform_name_mapping),
        streaming_mode=args.streaming_mode,
    )
    if args.dry_run:
        print(json.dumps(result, indent=2))
    else:
        print(f"job id: {result.job_id}")
        print(f"console: {result.console_url}")
    return 0


def templates_create_classic(args) -> int:
    from pipelines.templates import create_classic_template

    beam_args = args.beam_args[1:] if args.beam_args[:1] == ["--"] else args.beam_args
    location = create_classic_template(args.pipeline, args.template_location, beam_args)
    print(f"created the {args.pipeline} classic template at {location} (parameters: {location}_metadata)")
    return 0
