"""``riverbeam consume --config consumer.yaml``: the streaming consumer daemon."""

from __future__ import annotations

import argparse


def _workers(value: str) -> int:
    try:
        workers = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of worker processes, got {value!r}") from None
    if workers < 1:
        raise argparse.ArgumentTypeError(f"at least 1 worker, got {workers}")
    return workers


def _asks_for_workers(args, read_yaml) -> bool:
    """A hint, before the configuration is validated: ``--workers`` or ``consume.workers`` above 1 (a wrong guess costs only time)."""
    if args.workers is not None:
        return args.workers > 1
    try:
        workers = (read_yaml(args.config) or {}).get("consume", {}).get("workers", 1)
        return isinstance(workers, int) and workers > 1
    except Exception:  # the configuration's errors are load_config's to report
        return False


def register(subparsers) -> None:
    consume = subparsers.add_parser("consume", help="run the Kafka consumer daemon (learn online, checkpoint)")
    consume.add_argument("--config", required=True, help="the daemon's YAML configuration")
    consume.add_argument("--until-caught-up", action="store_true", help="stop (with a final checkpoint) once every partition reaches the end offset seen at start")
    consume.add_argument("--progress", action="store_true", default=None, help="show the live progress line even when not on a terminal")
    consume.add_argument("--allow-model-change", action="store_true",
                         help="with models:, start a model added since the checkpoint from scratch and drop a removed one (else: an error)")
    consume.add_argument("--workers", type=_workers, metavar="N",
                         help="per-key models (events.key): N daemon processes in one consumer group under one supervisor (default: consume.workers, 1)")
    consume.add_argument("--json", action="store_true", help="print the summary as one JSON object (every unit in full)")
    consume.set_defaults(handler=consume_command)


def consume_command(args) -> int:
    import signal
    import threading

    stop = threading.Event()  # SIGTERM/SIGINT from here on: finish the batch, checkpoint, commit, exit 0
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    from online.config import ConsumeJobConfig
    from online.consume.summary import daemon_job_summary
    from online.observability import configure_json_logging
    from core.configuration import load_config, read_yaml

    if _asks_for_workers(args, read_yaml):  # the workers' fork server imports the daemon while the configuration loads
        from online.consume.workers import start_fork_server

        start_fork_server()
    config = load_config(args.config, ConsumeJobConfig)
    configure_json_logging()
    workers = args.workers if args.workers is not None else config.consume.workers
    if workers > 1:  # per-key models only: a global model is one line saying why not (online.config.workers_error)
        from online.consume.workers import run_workers

        summary = run_workers(config, workers, until_caught_up=args.until_caught_up, stop=stop, allow_model_change=args.allow_model_change,
                              workers_key="--workers" if args.workers is not None else "consume.workers")
    else:
        from online.consume.daemon import run_daemon

        summary = run_daemon(config, until_caught_up=args.until_caught_up, progress=args.progress, stop=stop, allow_model_change=args.allow_model_change)
    result = daemon_job_summary(summary, units_in_full=args.json)
    result.failure = config.events.run_failure(result.counts)
    result.print(as_json=args.json)
    result.raise_for_failure()
    return 0
