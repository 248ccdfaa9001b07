"""``riverbeam replay``: learn from, evaluate on, or backfill a topic with historical files.

The handler parses, loads the job's configuration and calls `online.replay.job.run_replay`.
"""

from __future__ import annotations

MODES = ("learn", "evaluate", "backfill")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "replay",
        help="replay historical files: learn (checkpoints), evaluate (report), backfill (Kafka topic)",
        description="Replay JSON lines, CSV, Parquet or TFRecord files (local, gs:// or s3://, .gz too) through the online learner.",
    )
    parser.add_argument("--config", required=True, help="the replay job's YAML (model or models, events, checkpoint, search)")
    parser.add_argument("--input", action="append", required=True, metavar="PATTERN",
                        help="a file, directory or glob: local, gs:// or s3:// (repeat for more)")
    parser.add_argument("--format", dest="input_format", choices=("json", "csv", "parquet", "tfrecord"),
                        help="input format (default: from each file's suffix)")
    parser.add_argument("--mode", choices=MODES, default="learn", help="learn (default), evaluate or backfill")
    parser.add_argument("--checkpoint-uri", help="checkpoint URI (overrides checkpoint.uri); in evaluate mode, start from it without writing")
    parser.add_argument("--signing-key-env", metavar="NAME",
                        help="environment variable holding the checkpoint signing key (overrides checkpoint.signing_key_env; default RIVERBEAM_CHECKPOINT_KEY)")
    parser.add_argument("--checkpoint-every", type=int, metavar="N", help="write a checkpoint every N events (overrides checkpoint.every_events)")
    parser.add_argument("--report", dest="report_dir", metavar="DIR",
                        help="write metrics.csv, metrics.json and learning_curve.png (every metric) here; with --search also "
                             "search.json, best.yaml and leaderboard.png")
    parser.add_argument("--report-every", type=int, metavar="K",
                        help="a report row every K events read (default: about 100 rows, the inputs' records counted once)")
    parser.add_argument("--errors", dest="errors_path", metavar="FILE", help="append bad lines here as JSON lines (file, line, reason)")
    parser.add_argument("--max-errors", type=int, metavar="N", help="stop with exit code 1 past N bad lines")
    parser.add_argument("--dry-run", action="store_true", help="parse and check every line, count; learn and write nothing")
    parser.add_argument("--topic", help="backfill: the target topic (overrides kafka.topic)")
    parser.add_argument("--bootstrap-servers", help="backfill: Kafka bootstrap servers (overrides kafka.bootstrap_servers)")
    parser.add_argument("--kafka-client", choices=("kafka-python", "confluent-kafka"), help="backfill: Kafka client (overrides kafka.client)")
    parser.add_argument("--partition", type=int, default=0, help="backfill: the partition written (default 0)")
    parser.add_argument("--rate", type=float, metavar="R", help="backfill: at most R events per second")
    parser.add_argument("--search", type=int, default=0, metavar="N", help="evaluate: N Optuna trials over the search: ranges")
    progress = parser.add_mutually_exclusive_group()
    progress.add_argument("--progress", action="store_true", default=None, help="show a progress bar (default: only on a terminal)")
    progress.add_argument("--no-progress", dest="progress", action="store_false", help="never show a progress bar")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object (core.summary's names)")
    parser.set_defaults(handler=replay)


def replay(args) -> int:
    from online.replay.job import ReplayOptions, load_replay_job, run_replay

    job, search = load_replay_job(args.config)
    options = ReplayOptions(
        inputs=args.input, mode=args.mode, input_format=args.input_format, checkpoint_uri=args.checkpoint_uri,
        checkpoint_every=args.checkpoint_every, report_dir=args.report_dir, report_every=args.report_every,
        errors_path=args.errors_path, max_errors=args.max_errors, dry_run=args.dry_run, topic=args.topic,
        bootstrap_servers=args.bootstrap_servers, kafka_client=args.kafka_client, partition=args.partition,
        rate=args.rate, search=args.search, progress=args.progress, signing_key_env=args.signing_key_env,
    )
    result = run_replay(job, options, search)
    if args.json:
        result.job_summary().print(as_json=True)
    else:
        print(result.summary())
    result.job_summary().raise_for_failure()
    return 0
