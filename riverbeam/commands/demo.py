"""``riverbeam demo``: local broker, bundled dataset, daemon until caught up, summary."""

from __future__ import annotations


def register(subparsers) -> None:
    demo = subparsers.add_parser("demo", help="run the daemon end to end on the embedded local stack and a bundled dataset")
    demo.add_argument("--dataset", default="Phishing", help="a dataset bundled with River (default: %(default)s)")
    demo.add_argument("--events", type=int, default=None, help="how many events to produce (the dataset is cycled; default: its size)")
    demo.add_argument("--dir", default=".riverbeam/demo", help="where the stack's logs and the checkpoints go (default: %(default)s)")
    demo.add_argument("--client", choices=["kafka-python", "confluent-kafka"], default="kafka-python", help="Kafka client (default: %(default)s)")
    demo.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    demo.set_defaults(handler=demo_command)


def demo_command(args) -> int:
    from riverbeam.demo import demo_summary, run_demo
    from core.errors import UsageError

    if args.events is not None and args.events <= 0:
        raise UsageError("--events must be a positive number")
    summary = run_demo(args.dataset, args.events, args.dir, args.client)
    demo_summary(summary, args.dataset, units_in_full=args.json).print(as_json=args.json)
    return 0
