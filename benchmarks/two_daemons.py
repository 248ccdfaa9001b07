"""One keyed daemon against two in the same consumer group, and where the second one's time goes.

Issue 30's question before building ``consume --workers``: on a keyed topic with 4 partitions,
two ``riverbeam consume --until-caught-up`` processes started together took longer than one.
This runs the same keyed topic (Phishing's features cycled, a ``user`` field of ``--keys`` keys,
also the Kafka message key, so a key stays on one partition) once with one daemon and once with
two daemons in one group, and prints, per process, a timeline read from its JSON log lines
(``restored`` / ``starting fresh`` = an assignment, ``checkpoint``, ``stopped``):

- spawn to the first assignment (imports, connecting, the group join), to the first event;
- every assignment (which units, when), every checkpoint (and its seconds), so rebalances show as
  assignment rounds and their revoke-time checkpoints;
- first event to last, last event to ``stopped`` (the ``--until-caught-up`` wait and the final
  checkpoints), ``stopped`` to exit (closing: leaving the group);
- the process's CPU seconds (``os.wait4``) and its events; the events of all processes together
  (more than the topic holds = events learned twice).

    python benchmarks/two_daemons.py                                  # 120,000 events, 2,000 keys, 4 partitions
    python benchmarks/two_daemons.py --events 480000 --every 20000    # the issue's size
    python benchmarks/two_daemons.py --session-timeout-ms 6000        # how the group timeouts move it
    python benchmarks/two_daemons.py --stagger 3                      # the second joins a running group: a rebalance
    python benchmarks/two_daemons.py --workers 2 --rounds 3           # one daemon against ``consume --workers 2`` (issue 30 item 1)

With ``--workers N`` the second contender is one ``riverbeam consume --workers N --until-caught-up``
(a supervisor and N worker processes, `online.consume.workers`) instead of two daemons started by
hand: each round prints both wall times, their ratio, the CPU of each process tree (the supervisor,
its fork server and workers, sampled from ``/proc``) and the machine's idle CPU meanwhile, which
bounds what a second worker can get on a shared machine; ``TWO_DAEMONS_KEEP_LOGS=DIR`` keeps each
contender's JSON log (stderr) in DIR.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from daemon_vs_peers import TICK, KEY_FIELD, bytecode_environment, cpu_at, event_key, phishing_events, process_cpu, riverbeam_command, riverbeam_config


def produce(bootstrap_servers: str, topic: str, events: list[bytes], partitions: int) -> None:
    """Create `topic` with `partitions` partitions and produce `events`, each keyed by its ``user``."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    config = {"retention.ms": "-1", "retention.bytes": "-1"}
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1, config=config)])[topic].result(60)
    producer = Producer({"bootstrap.servers": bootstrap_servers, "linger.ms": 20, "acks": "all"})
    for event in events:
        while True:
            try:
                producer.produce(topic, event, key=event_key(event))
                break
            except BufferError:
                producer.poll(0.05)
    if producer.flush(120):
        raise RuntimeError("producing the events timed out")


def log_lines(text: str) -> list[dict]:
    """The JSON log lines of a daemon's stderr, in order."""
    lines = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except ValueError:
                pass
    return lines


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, all cores (``/proc/stat``)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values) - idle) / TICK, sum(values) / TICK


def timeline(name: str, spawned: float, exited: float, cpu: float, lines: list[dict], samples: list | None = None) -> dict:
    """One process's run, from its log lines: assignments, checkpoints, the phases in seconds since spawn;
    with `samples` ((time, CPU seconds) of the process), its CPU up to the first event and from first event to last."""
    assigns = [(line["time"] - spawned, line["unit"], line["msg"]) for line in lines if line.get("msg") in ("restored", "starting fresh")]
    checkpoints = [(line["time"] - spawned, line["unit"], line.get("seconds"), line.get("events_seen")) for line in lines if line.get("msg") == "checkpoint"]
    stopped = next((line for line in reversed(lines) if line.get("msg") == "stopped"), {})
    first = stopped.get("first_event_at")
    span = stopped.get("first_event_to_last_seconds")
    last = first + span if first is not None and span is not None else None
    cpu_first, cpu_last = cpu_at(samples or [], first), cpu_at(samples or [], last)
    last_assign = max((line["time"] for line in lines if line.get("msg") in ("restored", "starting fresh")), default=None)
    stopped_at = stopped.get("time")
    cpu_tail = None
    if last_assign is not None and last is not None and stopped_at is not None:
        cpu_tail = (cpu_at(samples or [], last) - cpu_at(samples or [], last_assign), cpu_at(samples or [], stopped_at) - cpu_at(samples or [], last))
    return {
        "last_assign_s": last_assign - spawned if last_assign else None, "cpu_tail": cpu_tail,
        "cpu_to_first_event_s": cpu_first, "cpu_first_to_last_s": cpu_last - cpu_first if cpu_first is not None and cpu_last is not None else None,
        "name": name, "cpu_s": cpu, "wall_s": exited - spawned, "events": stopped.get("events_seen"),
        "processing_s": stopped.get("processing_seconds"),
        "first_assign_s": assigns[0][0] if assigns else None, "first_event_s": first - spawned if first else None,
        "last_event_s": last - spawned if last else None, "stopped_s": stopped["time"] - spawned if stopped else None,
        "assigns": assigns, "checkpoints": checkpoints, "warnings": [line["msg"] for line in lines if line.get("level") in ("WARNING", "ERROR")],
    }


def run_group(count: int, riverbeam: list[str], bootstrap: str, topic: str, work: Path, args: argparse.Namespace, environment: dict) -> list[dict]:
    """Start `count` daemons in one fresh group together; wait for all; return their timelines."""
    group = f"two-{uuid.uuid4().hex[:8]}"
    checkpoint_uri = str(work / f"ckpt-{group}")
    config = riverbeam_config("confluent-kafka", bootstrap, topic, group, checkpoint_uri, every_events=args.every, key=KEY_FIELD)
    config["kafka"]["consumer"] = {"session.timeout.ms": args.session_timeout_ms, "heartbeat.interval.ms": args.heartbeat_interval_ms}
    if args.assignment:
        config["kafka"]["consumer"]["partition.assignment.strategy"] = args.assignment
    if args.fetch_wait_max_ms is not None:
        config["kafka"]["consumer"]["fetch.wait.max.ms"] = args.fetch_wait_max_ms
    config_file = work / f"{group}.yaml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    processes = []
    for index in range(count):
        if index:
            time.sleep(args.stagger)
        err = open(work / f"{group}-{index}.err", "w+")  # noqa: SIM115 (closed once the process exits)
        spawned = time.time()
        process = subprocess.Popen([*riverbeam, "consume", "--config", str(config_file), "--until-caught-up"], stdout=subprocess.DEVNULL, stderr=err, env=environment)
        processes.append((index, process, err, spawned))
    rows, exits = [], {}
    samples: dict[int, list] = {index: [] for index, *_ in processes}
    busy_before = machine_busy()
    while len(exits) < count:
        for index, process, err, spawned in processes:
            if index in exits:
                continue
            cpu = process_cpu(process.pid)
            if cpu is not None:
                samples[index].append((time.time(), cpu))
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid == process.pid:
                exits[index] = (time.time(), usage.ru_utime + usage.ru_stime, os.waitstatus_to_exitcode(status))
        time.sleep(0.05)
    busy_after = machine_busy()
    machine = (busy_after[0] - busy_before[0], busy_after[1] - busy_before[1])
    for index, process, err, spawned in processes:
        process.returncode = exits[index][2]
        err.seek(0)
        text = err.read()
        err.close()
        if exits[index][2] != 0:
            raise SystemExit(f"daemon {index} exited {exits[index][2]}:\n{text[-2000:]}")
        rows.append(timeline(f"{count}x#{index}", spawned, exits[index][0], exits[index][1], log_lines(text), samples[index]))
    for row in rows:
        row["machine_busy_s"], row["machine_total_s"] = machine
    return rows


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (``/proc/<pid>/stat``'s parent ids)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(parents.get(current, []))
    return found


def run_tree(command: list[str], config_file: Path, work: Path, name: str, environment: dict) -> dict:
    """One ``riverbeam consume --until-caught-up --json`` (with its workers, if any): wall, the tree's CPU, the machine's idle, the summary."""
    err = open(work / f"{name}.err", "w+")  # noqa: SIM115 (closed below)
    out = open(work / f"{name}.out", "w+")  # noqa: SIM115
    busy_before = machine_busy()
    spawned = time.time()
    process = subprocess.Popen([*command, "--config", str(config_file), "--until-caught-up", "--json"], stdout=out, stderr=err, env=environment)
    cpu: dict[int, float] = {}  # every process of the tree -> its last CPU seconds seen
    while process.poll() is None:
        for pid in descendants(process.pid):
            seen = process_cpu(pid)
            if seen is not None:
                cpu[pid] = seen
        time.sleep(0.05)
    wall = time.time() - spawned
    busy_after = machine_busy()
    err.seek(0)
    out.seek(0)
    text, result = err.read(), out.read()
    err.close()
    out.close()
    if process.returncode != 0:
        raise SystemExit(f"{name} exited {process.returncode}:\n{text[-2000:]}")
    lines = log_lines(text)
    stopped = [line for line in lines if line.get("msg") == "stopped"]
    spans = [(line["first_event_at"] - spawned, line["first_event_at"] + line["first_event_to_last_seconds"] - spawned)
             for line in stopped if line.get("first_event_at") is not None]
    return {"name": name, "wall_s": wall, "cpu_s": sum(cpu.values()), "processes": len(cpu), "summary": json.loads(result.strip().splitlines()[-1]),
            "machine": (busy_after[0] - busy_before[0], busy_after[1] - busy_before[1]), "spans": spans,
            "rebalances": sum(1 for line in lines if line.get("msg") == "restored"),
            "first_log_s": lines[0]["time"] - spawned if lines else None,  # imports done (the supervisor's, or the daemon's)
            "last_stopped_s": max((line["time"] for line in stopped), default=spawned) - spawned}


def run_workers_round(workers: int, riverbeam: list[str], bootstrap: str, topic: str, work: Path, args: argparse.Namespace, environment: dict) -> tuple[dict, dict]:
    """One daemon, then ``consume --workers N``, on the same topic, each in a fresh group with fresh checkpoints."""
    rows = []
    for name, extra in (("1 daemon", []), (f"--workers {workers}", ["--workers", str(workers)])):
        group = f"workers-{uuid.uuid4().hex[:8]}"
        config = riverbeam_config("confluent-kafka", bootstrap, topic, group, str(work / f"ckpt-{group}"), every_events=args.every, key=KEY_FIELD)
        config["kafka"]["consumer"] = {"session.timeout.ms": args.session_timeout_ms, "heartbeat.interval.ms": args.heartbeat_interval_ms}
        config_file = work / f"{group}.yaml"
        config_file.write_text(yaml.safe_dump(config, sort_keys=False))
        rows.append(run_tree([*riverbeam, "consume", *extra], config_file, work, group, environment))
        rows[-1]["name"] = name
        if os.environ.get("TWO_DAEMONS_KEEP_LOGS"):
            shutil.copy(work / f"{group}.err", Path(os.environ["TWO_DAEMONS_KEEP_LOGS"]) / f"{name.replace(' ', '_')}.err")
    return rows[0], rows[1]


def show_tree(row: dict, events: int) -> None:
    busy, whole = row["machine"]
    summary = row["summary"]
    spans = ", ".join(f"{first:.2f}-{last:.2f} s" for first, last in row["spans"])
    print(f"  {row['name']:<12} wall {row['wall_s']:6.2f} s, cpu {row['cpu_s']:6.2f} s in {row['processes']} process(es), events {summary['events_seen']:,} "
          f"({summary['events_seen'] - events:+,} vs the topic); spawn to its first log line {row['first_log_s']:.2f} s, first to last event per process {spans}, "
          f"last 'stopped' {row['last_stopped_s']:.2f} s; units restored (moved) {row['rebalances']}; "
          f"machine idle {whole - busy:.1f} of {whole:.1f} CPU-s ({1 - busy / whole:.0%})")


def show(rows: list[dict], start: float | None = None) -> None:
    for row in rows:
        print(f"  {row['name']}: wall {row['wall_s']:.2f} s, cpu {row['cpu_s']:.2f} s, events {row['events']:,}, processing (inside batches) {row['processing_s']:.2f} s; "
              f"cpu to the first event {row['cpu_to_first_event_s']:.2f} s, first event to last {row['cpu_first_to_last_s']:.2f} s cpu "
              f"in {row['last_event_s'] - row['first_event_s']:.2f} s")
        print(f"    spawn -> 1st assignment {row['first_assign_s']:.2f} s, -> 1st event {row['first_event_s']:.2f} s, "
              f"-> last event {row['last_event_s']:.2f} s, -> stopped {row['stopped_s']:.2f} s, -> exit {row['wall_s']:.2f} s")
        if row["cpu_tail"] is not None and row["last_assign_s"] > row["first_assign_s"]:
            print(f"    after the last assignment ({row['last_assign_s']:.2f} s): {row['last_event_s'] - row['last_assign_s']:.2f} s to the last event "
                  f"({row['cpu_tail'][0]:.2f} s cpu), then {row['stopped_s'] - row['last_event_s']:.2f} s to stopped ({row['cpu_tail'][1]:.2f} s cpu)")
        for at, unit, msg in row["assigns"]:
            print(f"    {at:7.2f} s  {msg:<14} {unit}")
        for at, unit, seconds, seen in row["checkpoints"]:
            print(f"    {at:7.2f} s  checkpoint     {unit} ({seen:,} events, {seconds:.3f} s to durable)")
        for warning in row["warnings"]:
            print(f"    warning: {warning}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=120_000)
    parser.add_argument("--keys", type=int, default=2_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--every", type=int, default=20_000, help="checkpoint.every_events")
    parser.add_argument("--session-timeout-ms", type=int, default=2000)
    parser.add_argument("--heartbeat-interval-ms", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--assignment", help="librdkafka's partition.assignment.strategy, e.g. cooperative-sticky (default: range,roundrobin, eager)")
    parser.add_argument("--fetch-wait-max-ms", type=int, help="librdkafka's fetch.wait.max.ms (default 500)")
    parser.add_argument("--stagger", type=float, default=0.0, help="seconds between starting the first daemon and the second")
    parser.add_argument("--workers", type=int, help="compare one daemon with one 'consume --workers N' instead of two daemons started by hand")
    parser.add_argument("--kafka", choices=["tansu", "apache"], default="tansu",
                        help="the broker (apache: Apache Kafka 4 with Java 17; Tansu's group join waits half the session timeout)")
    args = parser.parse_args(argv)
    riverbeam = riverbeam_command()
    if riverbeam is None:
        raise SystemExit("riverbeam consume --until-caught-up is not available")
    from riverbeam.local_stack import LocalStack

    work = Path(tempfile.mkdtemp(prefix="two-daemons-"))
    stack = LocalStack(work / "stack", kafka_port=0, gcs_port=0, kafka=args.kafka)
    try:
        bootstrap = stack.up().bootstrap_servers
        topic = f"keyed-{uuid.uuid4().hex[:8]}"
        produce(bootstrap, topic, phishing_events(args.events, args.keys), args.partitions)
        environment = bytecode_environment(work / "pycache", {"riverbeam"})  # compiled once, before any run
        print(f"{args.events:,} events, {args.keys:,} keys, {args.partitions} partitions, {args.kafka} broker, confluent-kafka, checkpoint every {args.every:,}, "
              f"session.timeout.ms {args.session_timeout_ms}, second daemon started {args.stagger:g} s after the first, "
              f"assignment {args.assignment or ('cooperative-sticky (the workers default)' if args.workers else 'eager (default)')}, fetch.wait.max.ms {args.fetch_wait_max_ms or 'default'}")
        if args.workers:
            ratios = []
            for round_index in range(args.rounds):
                one, many = run_workers_round(args.workers, riverbeam, bootstrap, topic, work, args, environment)
                ratios.append(one["wall_s"] / many["wall_s"])
                print(f"\nround {round_index + 1}: --workers {args.workers} ran {ratios[-1]:.2f}x as fast as 1 daemon (wall, spawn to exit)")
                show_tree(one, args.events)
                show_tree(many, args.events)
            ratios.sort()
            print(f"\nmedian over {args.rounds} round(s): {ratios[len(ratios) // 2]:.2f}x ({', '.join(f'{r:.2f}' for r in ratios)})")
            return
        for round_index in range(args.rounds):
            for count in (1, 2):
                began = time.time()
                rows = run_group(count, riverbeam, bootstrap, topic, work, args, environment)
                total = sum(row["events"] or 0 for row in rows)
                wall = time.time() - began
                busy, whole = rows[0]["machine_busy_s"], rows[0]["machine_total_s"]
                print(f"\nround {round_index + 1}: {count} daemon(s): all exited after {wall:.2f} s; "
                      f"cpu {sum(row['cpu_s'] for row in rows):.2f} s in all; events {total:,} ({total - args.events:+,} vs the topic); "
                      f"the machine ({os.cpu_count()} cores) was busy {busy:.1f} of {whole:.1f} CPU-seconds meanwhile ({busy / whole:.0%}), "
                      f"{whole - busy:.1f} idle")
                show(rows)
    finally:
        stack.down()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
