"""``riverbeam serve --config serve.yaml`` (or ``--checkpoint URI``): HTTP predictions, learning, hot reload, dashboard."""

from __future__ import annotations


def register(subparsers) -> None:
    serve = subparsers.add_parser("serve", help="serve predictions (and optionally learn) over HTTP from checkpoints, with hot reload and a live dashboard")
    source = serve.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="serve.yaml (checkpoint, serve, and to learn: model, events)")
    source.add_argument("--checkpoint", help="checkpoint URI for a quick read-only start (signing key from RIVERBEAM_CHECKPOINT_KEY)")
    serve.add_argument("--host", help="address to listen on (default serve.host, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default serve.port, 8080; 0 picks a free one)")
    serve.add_argument("--model", help="the model to serve from a checkpoint of several (models:); default serve.model, else the first")
    serve.set_defaults(handler=serve_command)


def serve_command(args) -> int:
    from core.configuration import load_config, parse_config
    from online.observability import configure_json_logging
    from online.serving.app import run_server
    from online.config import ServeJobConfig

    if args.config:
        config = load_config(args.config, ServeJobConfig)
    else:
        config = parse_config({"checkpoint": {"uri": args.checkpoint}}, ServeJobConfig)
    if args.model is not None:
        config = config.model_copy(update={"serve": config.serve.model_copy(update={"model": args.model})})
    config.check_semantics()
    configure_json_logging()
    run_server(config, host=args.host, port=args.port)
    return 0
