"""``riverbeam local up|status|down|fetch``: the embedded Kafka broker, GCS emulator and S3 server."""

from __future__ import annotations

import json

from riverbeam.local_stack import DEFAULT_DIR, DEFAULT_S3_PORT, DEFAULT_SCHEMA_REGISTRY_PORT, KAFKA_BROKERS, LocalStack, fetch_apache_kafka, fetch_schema_registry


def register(subparsers) -> None:
    local = subparsers.add_parser("local", help="start, inspect and stop the embedded local stack")
    actions = local.add_subparsers(dest="action", metavar="ACTION", required=True)
    up = actions.add_parser("up", help="start the Kafka broker, the GCS emulator and the S3 server in the background")
    up.add_argument("--dir", default=DEFAULT_DIR, help="where pid files and logs go (default: %(default)s)")
    up.add_argument("--kafka-port", type=int, default=None, help="broker port (default 9092; 0 picks a free port)")
    up.add_argument("--gcs-port", type=int, default=None, help="emulator port (default 4443; 0 picks a free port)")
    up.add_argument("--s3-port", type=int, default=DEFAULT_S3_PORT, help="S3 server port (default %(default)s; 0 picks a free port)")
    up.add_argument(
        "--kafka", choices=KAFKA_BROKERS, default=None,
        help="the broker: tansu (default; from PyPI, memory only) or apache (Apache Kafka 4, needs Java 17; fetched from Maven Central once)",
    )  # fmt: skip
    up.add_argument(
        "--schema-registry", action="store_true",
        help="also start a schema registry (Apicurio Registry 3.3, the Confluent API; needs Java 21; fetched from Maven Central once)",
    )  # fmt: skip
    up.add_argument("--schema-registry-port", type=int, default=DEFAULT_SCHEMA_REGISTRY_PORT, help="its port (default %(default)s; 0 picks a free port)")
    up.set_defaults(handler=local_up)
    status = actions.add_parser("status", help="show what runs")
    status.add_argument("--dir", default=DEFAULT_DIR)
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=local_status)
    down = actions.add_parser("down", help="stop the processes 'local up' started")
    down.add_argument("--dir", default=DEFAULT_DIR)
    down.set_defaults(handler=local_down)
    fetch = actions.add_parser("fetch", help="fetch Apache Kafka's jars from Maven Central into the cache now, for offline use later")
    fetch.add_argument("--schema-registry", action="store_true", help="also fetch the schema registry (Apicurio Registry's distribution, ~160 MB)")
    fetch.set_defaults(handler=local_fetch)


def local_up(args) -> int:
    registry_port = args.schema_registry_port if args.schema_registry else None
    stack = LocalStack(args.dir, kafka_port=args.kafka_port, gcs_port=args.gcs_port, s3_port=args.s3_port, kafka=args.kafka, schema_registry_port=registry_port)
    settings = stack.up()
    print(f"Local stack is up (logs and pid files in {args.dir}/). Use these settings:")
    print(f"  kafka.bootstrap_servers: {settings.bootstrap_servers} ({'Apache Kafka' if stack.kafka_broker == 'apache' else 'Tansu'})")
    print(f"  GCS emulator bucket:     gs://{settings.bucket}")
    print(f"  S3 server bucket:        s3://{settings.bucket} (endpoint {settings.s3_endpoint_url})")
    if settings.schema_registry_url:
        print(f"  kafka.schema_registry:   {{url: {settings.schema_registry_url}}} (Apicurio Registry, in memory)")
    print(settings.shell_exports())
    print("For a job whose YAML leaves kafka.bootstrap_servers out (for that job only: a job without a kafka section would refuse it):")
    print("".join(f"  {name}={value} riverbeam consume ...\n" for name, value in settings.kafka_override().items()), end="")
    return 0


def local_status(args) -> int:
    report = LocalStack(args.dir).status()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for name, state in report.items():
            what = f"running, pid {state['pid']}, port {state['port']}" if state["running"] else "not running"
            print(f"{name}: {what}" + (f" ({state['broker']})" if "broker" in state else ""))
    return 0 if all(state["running"] for state in report.values()) else 1


def local_down(args) -> int:
    stopped = LocalStack(args.dir).down()
    print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return 0


def local_fetch(args) -> int:
    jars = fetch_apache_kafka()
    print(f"Apache Kafka is in the cache: {len(jars)} jars in {jars[0].parent}")
    print("'riverbeam local up --kafka apache' now starts it without reaching Maven Central")
    if args.schema_registry:
        home = fetch_schema_registry()
        print(f"The schema registry is in the cache: {home}")
        print("'riverbeam local up --schema-registry' now starts it without reaching Maven Central")
    return 0
