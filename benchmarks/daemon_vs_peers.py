"""riverbeam's daemon against Bytewax, Quix Streams and hand-written loops, on one local broker.

Issue 10's benchmark. One Tansu broker (`riverbeam.local_stack.LocalStack`), the same N JSON
events (River's Phishing, cycled, features plus ``label``) produced once to a 1-partition topic,
the same ``StandardScaler | LogisticRegression`` with predict, Accuracy, then learn per event.
Every contender is its own process (scripts under ``benchmarks/peers/``, or ``riverbeam consume
--until-caught-up``); the order is rotated each round and medians are reported:

- events/s end to end (process start to exit, as the harness sees it) and in the processing
  phase (first event to last, as the contender reports it), each as a ratio to the bare loop and
  to Bytewax with recovery;
- a check that every contender ended with the same event count, final metric and (where the
  contender exposes the fitted model) bit-identical weights. Mismatches are flagged and the
  harness exits with status 1.

Bytewax and Quix Streams run in their own virtual environment (``benchmarks/.venv-peers``,
created on demand from ``benchmarks/requirements-peers.txt``) because their pins conflict with
ours; the bare loop and the hand-written loops run in riverbeam's environment.

Run it::

    python benchmarks/daemon_vs_peers.py                      # 200,000 events, 3 rounds
    python benchmarks/daemon_vs_peers.py --events 50000 --rounds 1 --only bare,bytewax-recovery
    python benchmarks/daemon_vs_peers.py --baseline HEAD~1   # also the daemon as of a git ref: before/after in one run
    python benchmarks/daemon_vs_peers.py --keys 100,10000,100000 --events 50000 --rounds 1   # a model per key

With ``--keys`` the contenders learn a model per key instead (`KEYED_CONTENDERS`): each event carries
a ``user`` field (one of K keys, also the Kafka message key), riverbeam runs with ``events.key: user``,
Bytewax with ``key_on`` → ``stateful_map`` and recovery, Quix Streams with its RocksDB keyed state;
one topic and one table per K.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEERS_DIR = HERE / "peers"
REQUIREMENTS = HERE / "requirements-peers.txt"
DEFAULT_VENV = HERE / ".venv-peers"
RESULTS_DIR = HERE / "results"
BARE = "bare"
CRASH_SAFE_ANCHOR = "bytewax-recovery"
CHECKPOINT_EVERY_EVENTS = 10_000
KEY_FIELD = "user"


@dataclass(frozen=True)
class Contender:
    """One way of learning the model from the topic.

    `runtime` says where it runs: ``"main"`` (riverbeam's interpreter), ``"peers"`` (the peers'
    virtual environment) or ``"riverbeam"`` (the ``riverbeam`` command; `client` names the Kafka
    client in its configuration).
    """

    name: str
    title: str
    crash_safe: str
    runtime: str
    script: str | None = None
    client: str | None = None
    source: str | None = None  # riverbeam's code from this folder (a `--baseline` ref) instead of the installed one
    keyed: bool = False  # a model per key (`--keys`)


CONTENDERS = (
    Contender(BARE, "bare River loop, events decoded in memory", "-", "main", script="bare_loop.py"),
    Contender("confluent-loop", "hand-written confluent-kafka → orjson → River", "no", "main", script="confluent_loop.py"),
    Contender("kafka-python-loop", "hand-written kafka-python → json → River", "no", "main", script="kafka_python_loop.py"),
    Contender("bytewax", "Bytewax KafkaSource → stateful_map", "no", "peers", script="bytewax_stateful_map.py"),
    Contender(CRASH_SAFE_ANCHOR, "Bytewax, recovery snapshots every 5 s", "yes", "peers", script="bytewax_recovery.py"),
    Contender("quix", "Quix Streams, model in a Python object", "no", "peers", script="quix_streams.py"),
    Contender("riverbeam-kafka-python", "riverbeam consume, kafka-python, checkpoint / 10k", "yes", "riverbeam", client="kafka-python"),
    Contender("riverbeam-confluent", "riverbeam consume, confluent-kafka, checkpoint / 10k", "yes", "riverbeam", client="confluent-kafka"),
)  # fmt: skip

# A model per key (`--keys`): the same names where the contender is the same product, so the anchors hold.
KEYED_CONTENDERS = (
    Contender(BARE, "bare River loop, a dict of models per key, events decoded in memory", "-", "main", script="bare_keyed_loop.py", keyed=True),
    Contender(CRASH_SAFE_ANCHOR, "Bytewax key_on → stateful_map, recovery snapshots every 5 s", "yes", "peers", script="bytewax_keyed_recovery.py", keyed=True),
    Contender("quix-state", "Quix Streams keyed state (RocksDB, pickled models), checkpoint / 10k", "yes", "peers", script="quix_keyed_state.py", keyed=True),
    Contender("riverbeam-kafka-python", "riverbeam consume, events.key, kafka-python, checkpoint / 10k", "yes", "riverbeam", client="kafka-python", keyed=True),
    Contender("riverbeam-confluent", "riverbeam consume, events.key, confluent-kafka, checkpoint / 10k", "yes", "riverbeam", client="confluent-kafka", keyed=True),
)  # fmt: skip


# -- the events ---------------------------------------------------------------------------------


def phishing_events(count: int, keys: int | None = None) -> list[bytes]:
    """`count` JSON events: River's Phishing cycled, each its features plus ``label``.

    With `keys`, event ``n`` also carries ``user``: ``u<(n * 7919) % keys>`` (every key appears,
    spread over the stream, as in ``bench_keyed.py``).

    >>> events = phishing_events(1252)
    >>> len(events), events[0] == events[1250], json.loads(events[0])["label"]
    (1252, True, True)
    >>> [json.loads(event)[KEY_FIELD] for event in phishing_events(3, keys=100)]
    ['u0', 'u19', 'u38']
    """
    import orjson
    from river import datasets

    if keys is None:
        rows = [orjson.dumps({**x, "label": y}) for x, y in datasets.Phishing()]
        return list(itertools.islice(itertools.cycle(rows), count))
    rows = [{**x, "label": y} for x, y in datasets.Phishing()]
    return [orjson.dumps({**rows[n % len(rows)], KEY_FIELD: f"u{(n * 7919) % keys}"}) for n in range(count)]


def event_key(event: bytes) -> bytes:
    """The Kafka message key of a keyed event: its ``user`` field (what Quix's and Bytewax's state are keyed on)."""
    import orjson

    return orjson.loads(event)[KEY_FIELD].encode()


def write_events_file(path: Path, events: list[bytes]) -> None:
    """The events as JSON lines, for the bare loop (the same bytes as on the topic)."""
    with open(path, "wb") as out:
        for event in events:
            out.write(event + b"\n")


def produce_events(bootstrap_servers: str, topic: str, events: list[bytes], timeout: float = 120.0, keyed: bool = False) -> int:
    """Create `topic` with one partition, produce `events` in order; return the end offset.

    With `keyed`, each message's key is the event's ``user`` field. The end offset comes from the
    delivery reports (Tansu's ListOffsets can fall short of it).
    """
    from confluent_kafka import KafkaException, Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    # Explicit retention: Tansu describes only the configs a topic was created with, and Quix Streams
    # reads the source topic's retention.ms to create its changelog topic (KeyError without it).
    config = {"retention.ms": "-1", "retention.bytes": "-1"}
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1, config=config)])[topic].result(timeout)
    producer = Producer({"bootstrap.servers": bootstrap_servers, "linger.ms": 20, "acks": "all", "enable.idempotence": False})
    last_offset = -1
    failures: list[str] = []

    def delivered(error, message) -> None:
        nonlocal last_offset
        if error is not None:
            failures.append(str(error))
        else:
            last_offset = max(last_offset, message.offset())

    for event in events:
        while True:
            try:
                producer.produce(topic, event, key=event_key(event) if keyed else None, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)
    if producer.flush(timeout) or failures:
        raise KafkaException(f"producing the events failed: {failures[:3] or 'flush timed out'}")
    if last_offset + 1 != len(events):
        raise RuntimeError(f"topic {topic} ends at offset {last_offset + 1}, expected {len(events)} (not a fresh topic?)")
    return last_offset + 1


# -- environments -------------------------------------------------------------------------------


def ensure_peers_venv(venv: Path) -> Path:
    """Create (or refresh when the requirements changed) the peers' virtual environment; return its python."""
    python = venv / "bin" / "python"
    stamp = venv / ".requirements-sha256"
    wanted = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text().strip() == wanted:
        return python
    print(f"installing the peers' environment in {venv} (bytewax, quixstreams; about a minute)", file=sys.stderr)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-r", str(REQUIREMENTS)], check=True)
    subprocess.run([str(python), "-c", "import bytewax, quixstreams, river, orjson"], check=True)
    stamp.write_text(wanted + "\n")
    return python


def riverbeam_command() -> list[str] | None:
    """The ``riverbeam`` command if its ``consume`` daemon is there (``consume --help`` succeeds)."""
    executable = shutil.which("riverbeam")
    command = [executable] if executable else [sys.executable, "-c", "import sys; from riverbeam.cli import main; sys.exit(main())"]
    probe = subprocess.run([*command, "consume", "--help"], capture_output=True, text=True)
    return command if probe.returncode == 0 and "--until-caught-up" in probe.stdout else None


def riverbeam_config(client: str, bootstrap_servers: str, topic: str, group_id: str, checkpoint_uri: str, every_events: int = CHECKPOINT_EVERY_EVENTS,
                     key: str | None = None) -> dict:
    """The daemon's configuration for one run: the benchmark model, short group timeouts for Tansu.

    >>> config = riverbeam_config("confluent-kafka", "127.0.0.1:9092", "events", "g1", "/tmp/ckpt")
    >>> config["kafka"]["consumer"], config["checkpoint"]
    ({'session.timeout.ms': 2000, 'heartbeat.interval.ms': 500}, {'uri': '/tmp/ckpt', 'every_events': 10000})
    >>> riverbeam_config("kafka-python", "b:9092", "t", "g", "/c")["kafka"]["consumer"]["max_poll_interval_ms"]
    5000
    """
    if client == "kafka-python":
        consumer = {"session_timeout_ms": 2000, "heartbeat_interval_ms": 500, "max_poll_interval_ms": 5000}
    elif client == "confluent-kafka":
        consumer = {"session.timeout.ms": 2000, "heartbeat.interval.ms": 500}
    else:
        raise ValueError(f"unknown Kafka client {client!r}: kafka-python or confluent-kafka")
    return {
        "kafka": {"client": client, "bootstrap_servers": bootstrap_servers, "topic": topic, "group_id": group_id, "consumer": consumer},
        "model": {"pipeline": [{"preprocessing.StandardScaler": {}}, {"linear_model.LogisticRegression": {}}], "metrics": ["Accuracy"]},
        "events": {"target": "label", **({"key": key} if key else {})},
        "checkpoint": {"uri": checkpoint_uri, "every_events": every_events},
        "metrics": {"port": None},
    }


# -- running one contender ----------------------------------------------------------------------


@dataclass
class Bench:
    """What every run shares: the broker, the topic and its end offset, the events file, the interpreters."""

    bootstrap_servers: str
    topic: str
    end_offset: int
    events_file: Path
    workdir: Path
    peers_python: Path | None
    riverbeam: list[str] | None
    timeout: float
    environment: dict = field(default_factory=dict)
    keys: int | None = None  # a model per key over this many keys (`--keys`)


@dataclass
class RunResult:
    """One contender's run: the harness's clock plus the contender's own report."""

    contender: str
    round: int
    end_to_end_seconds: float
    events: int | None = None
    cpu_seconds: float | None = None  # user + system CPU of the contender's process, start to exit
    metric: float | None = None
    processing_seconds: float | None = None
    processing_cpu_seconds: float | None = None
    start_to_first_event_seconds: float | None = None
    model_digest: str | None = None
    metric_decimals: int | None = None  # set when the metric was only available rounded for display
    phase: str = "first event to last"
    spawned_at: float = 0.0
    error: str | None = None


def last_json_line(text: str, predicate=lambda record: True) -> dict | None:
    """The last line of `text` that is a JSON object satisfying `predicate`.

    >>> last_json_line('noise\\n{"events": 3}\\n{"msg": "x"}\\n', lambda r: "events" in r)
    {'events': 3}
    """
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and predicate(record):
                return record
    return None


def headline_metric(metrics) -> float | None:
    """Accuracy out of a checkpoint's ``metrics`` (a name → value mapping, or a list of them)."""
    if isinstance(metrics, dict):
        value = metrics.get("Accuracy", next(iter(metrics.values()), None))
        return value.get("value") if isinstance(value, dict) else value
    if isinstance(metrics, list) and metrics:
        return headline_metric(metrics[0]) if isinstance(metrics[0], dict) else metrics[0]
    return metrics if isinstance(metrics, (int, float)) else None


def read_riverbeam_result(bench: Bench, stderr: str, checkpoint_uri: str, result: RunResult) -> None:
    """Fill `result` from the daemon's last ``stopped`` log line and its final checkpoint.

    Events come from ``riverbeam checkpoints show URI --json`` (``events_seen``). Its metrics are
    rounded for display, so the exact Accuracy and the model digest are read by restoring the
    checkpoint's learner (`exact_riverbeam_state`); when that fails the rounded value is compared
    at its precision.
    """
    stopped = last_json_line(stderr, lambda record: record.get("msg") == "stopped")
    if stopped is None:
        result.error = "no JSON log line with \"msg\": \"stopped\" on the daemon's stderr"
        return
    if stopped.get("first_event_to_last_seconds") is not None:
        result.processing_seconds = stopped["first_event_to_last_seconds"]
    else:  # time inside batch processing only: no poll, no checkpoint waits (see README)
        result.processing_seconds = stopped.get("processing_seconds")
        result.phase = "inside batches"
    if stopped.get("first_event_at"):
        result.start_to_first_event_seconds = stopped["first_event_at"] - result.spawned_at
    if bench.keys is not None:  # keyed: a checkpoint per source partition (the topic has one)
        from online.checkpoints.units import partition_unit, unit_uri

        checkpoint_uri = unit_uri(checkpoint_uri, partition_unit(bench.topic, 0))
    shown = subprocess.run([*bench.riverbeam, "checkpoints", "show", checkpoint_uri, "--json"], capture_output=True, text=True, env=bench.environment, timeout=120)
    checkpoint = parse_json_output(shown.stdout) if shown.returncode == 0 else None
    if checkpoint is None:
        result.error = f"riverbeam checkpoints show failed ({shown.returncode}): {shown.stderr.strip()[-300:]}"
        return
    result.events = checkpoint.get("events_seen")
    result.metric = headline_metric(checkpoint.get("metrics"))
    result.metric_decimals = decimals(result.metric)
    exact = exact_riverbeam_state(checkpoint_uri, keyed=bench.keys is not None)
    if exact is not None:
        result.metric, result.model_digest = exact
        result.metric_decimals = None
    if stopped.get("events_seen") is not None and stopped["events_seen"] != result.events:
        result.error = f"daemon consumed {stopped['events_seen']} events but its final checkpoint has seen {result.events}"


def parse_json_output(text: str) -> dict | None:
    """A command's JSON output: the whole text (pretty-printed) or else its last JSON line."""
    try:
        record = json.loads(text)
    except ValueError:
        return last_json_line(text)
    return record if isinstance(record, dict) else None


def decimals(value: float | None) -> int | None:
    """How many decimals `value` shows, when it looks rounded for display (at most 6).

    >>> decimals(0.8998), decimals(0.9), decimals(1 / 3)
    (4, 1, None)
    """
    if value is None:
        return None
    text = repr(float(value))
    places = len(text.split(".")[1]) if "." in text and "e" not in text else None
    return places if places is not None and places <= 6 else None


def exact_riverbeam_state(checkpoint_uri: str, keyed: bool = False) -> tuple[float, str] | None:
    """The exact Accuracy and model digest (over every key's model when `keyed`) in riverbeam's latest
    checkpoint, or None if unreadable."""
    try:
        if keyed:
            from online.config import EventsConfig, ModelConfig
            from online.checkpoints.persistence import LearnerSpec, checkpoint_store, resume

            model = {"pipeline": [{"preprocessing.StandardScaler": {}}, {"linear_model.LogisticRegression": {}}], "metrics": ["Accuracy"]}
            learner, _ = resume(checkpoint_store(checkpoint_uri), LearnerSpec(ModelConfig(**model), EventsConfig(target="label", key=KEY_FIELD)))
            digest = peer_common().keyed_digest(learner.state.models.items())
        else:
            from online.checkpoints.store import CheckpointStore
            from online.checkpoints.persistence import restore_learner

            learner = restore_learner(CheckpointStore(checkpoint_uri).load_latest())
            digest = peer_common().model_digest(learner.state.models[None])
        accuracy = dict(learner.metric_values())["Accuracy"]
    except Exception as error:  # an internal API moved: fall back to the rounded values
        print(f"note: could not restore riverbeam's checkpoint for an exact comparison ({error!r})", file=sys.stderr)
        return None
    return accuracy, digest


def peer_common():
    """``benchmarks/peers/_common.py`` (shared by the peers), imported by path."""
    if str(PEERS_DIR) not in sys.path:
        sys.path.insert(0, str(PEERS_DIR))
    import _common

    return _common


def command_for(contender: Contender, bench: Bench, run_dir: Path, group_id: str) -> list[str]:
    """The argv of one run; writes the daemon's configuration into `run_dir` for riverbeam."""
    if contender.runtime == "riverbeam":
        import yaml

        config = riverbeam_config(contender.client, bench.bootstrap_servers, bench.topic, group_id, str(run_dir / "checkpoints"),
                                  key=KEY_FIELD if contender.keyed else None)
        config_file = run_dir / "consumer.yaml"
        config_file.write_text(yaml.safe_dump(config, sort_keys=False))
        command = bench.riverbeam
        if contender.source:  # the baseline's packages first on sys.path
            command = [sys.executable, "-c", f"import sys; sys.path.insert(0, {contender.source!r}); from riverbeam.cli import main; sys.exit(main())"]
        return [*command, "consume", "--config", str(config_file), "--until-caught-up"]
    python = str(bench.peers_python) if contender.runtime == "peers" else sys.executable
    return [
        python, str(PEERS_DIR / contender.script),
        "--bootstrap-servers", bench.bootstrap_servers, "--topic", bench.topic, "--group-id", group_id,
        "--end-offset", str(bench.end_offset), "--events-file", str(bench.events_file), "--state-dir", str(run_dir / "state"),
        *(["--key-field", KEY_FIELD, "--checkpoint-every", str(CHECKPOINT_EVERY_EVENTS)] if contender.keyed else []),
    ]  # fmt: skip


TICK = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float | None:
    """User + system CPU seconds of a live process so far (``/proc/<pid>/stat``), None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICK


def cpu_at(samples: list[tuple[float, float]], at: float | None) -> float | None:
    """A process's CPU seconds at epoch time `at`: the last (time, CPU) sample at or before it.

    >>> cpu_at([(1.0, 0.5), (2.0, 0.9)], 1.5), cpu_at([(1.0, 0.5)], 0.5), cpu_at([], 1.0)
    (0.5, 0.0, None)
    """
    if at is None or not samples:
        return None
    before = [cpu for when, cpu in samples if when <= at]
    return before[-1] if before else 0.0


def run_sampled(command: list[str], run_dir: Path, environment: dict, timeout: float) -> tuple[int | None, str, str, float, list]:
    """Run `command` (output into `run_dir`), sampling its CPU every 50 ms from ``/proc``.

    Returns (exit code or None on timeout, stdout, stderr, CPU seconds at exit, [(time, CPU seconds)]).
    """
    samples: list[tuple[float, float]] = []
    with open(run_dir / "stdout.log", "w+") as out, open(run_dir / "stderr.log", "w+") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, env=environment, cwd=PEERS_DIR)
        deadline = time.monotonic() + timeout
        code, cpu = None, 0.0
        while True:
            sampled = process_cpu(process.pid)
            if sampled is not None:
                samples.append((time.time(), sampled))
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid == process.pid:
                process.returncode = code = os.waitstatus_to_exitcode(status)
                cpu = usage.ru_utime + usage.ru_stime
                break
            if time.monotonic() > deadline:
                process.kill()
                process.wait()
                break
            time.sleep(0.05)
        out.seek(0)
        err.seek(0)
        return code, out.read(), err.read(), cpu, samples


def run_contender(contender: Contender, bench: Bench, round_index: int) -> RunResult:
    """Run `contender` once in a fresh directory with a fresh group id; time it from spawn to exit."""
    run_dir = bench.workdir / "runs" / (f"{contender.name}-{round_index}" if bench.keys is None else f"keys{bench.keys}-{contender.name}-{round_index}")
    run_dir.mkdir(parents=True)
    group_id = f"bench-{contender.name}-{round_index}-{uuid.uuid4().hex[:8]}"
    command = command_for(contender, bench, run_dir, group_id)
    spawned_at = time.time()
    started = time.perf_counter()
    code, stdout, stderr, cpu, samples = run_sampled(command, run_dir, bench.environment, bench.timeout)
    if code is None:
        return RunResult(contender.name, round_index, time.perf_counter() - started, error=f"timed out after {bench.timeout:.0f} s")
    result = RunResult(contender.name, round_index, time.perf_counter() - started, spawned_at=spawned_at)
    result.cpu_seconds = cpu
    if code != 0:
        tail = "\n    ".join(stderr.strip().splitlines()[-8:])
        result.error = f"exit status {code}; stderr tail:\n    {tail}"
        return result
    if contender.runtime == "riverbeam":
        read_riverbeam_result(bench, stderr, str(run_dir / "checkpoints"), result)
        if result.processing_seconds is not None and result.phase == "first event to last" and result.start_to_first_event_seconds is not None:
            first = spawned_at + result.start_to_first_event_seconds  # the daemon reports no CPU: sampled from /proc (50 ms)
            begin, end = cpu_at(samples, first), cpu_at(samples, first + result.processing_seconds)
            result.processing_cpu_seconds = end - begin if begin is not None and end is not None else None
        return result
    report = last_json_line(stdout, lambda record: "events" in record)
    if report is None:
        result.error = "no JSON report line on stdout"
        return result
    result.events = report["events"]
    result.metric = report["metric"]
    result.processing_seconds = report.get("first_event_to_last_seconds", report.get("processing_seconds"))
    result.model_digest = report.get("model_digest")
    result.processing_cpu_seconds = report.get("processing_cpu_seconds")
    if report.get("first_event_at"):
        result.start_to_first_event_seconds = report["first_event_at"] - spawned_at
    return result


# -- summary ------------------------------------------------------------------------------------


@dataclass
class Summary:
    """Medians over the successful runs of one contender."""

    contender: Contender
    runs: int
    failures: int
    events: int | None
    metric: float | None
    end_to_end_seconds: float | None
    cpu_seconds: float | None
    processing_seconds: float | None
    processing_cpu_seconds: float | None
    start_to_first_event_seconds: float | None
    phase: str = "first event to last"

    def rate(self, seconds: float | None) -> float | None:
        return self.events / seconds if self.events and seconds else None


def _median(values) -> float | None:
    values = [value for value in values if value is not None]
    return statistics.median(values) if values else None


def summarize(contenders: list[Contender], results: list[RunResult]) -> list[Summary]:
    """Median seconds per contender (events and metric from its first successful run)."""
    summaries = []
    for contender in contenders:
        runs = [result for result in results if result.contender == contender.name]
        good = [result for result in runs if result.error is None]
        summaries.append(Summary(
            contender, len(runs), len(runs) - len(good),
            good[0].events if good else None, good[0].metric if good else None,
            _median(result.end_to_end_seconds for result in good),
            _median(result.cpu_seconds for result in good),
            _median(result.processing_seconds for result in good),
            _median(result.processing_cpu_seconds for result in good),
            _median(result.start_to_first_event_seconds for result in good),
            good[0].phase if good else "first event to last",
        ))  # fmt: skip
    return summaries


def check_agreement(results: list[RunResult], expected_events: int) -> list[str]:
    """Every problem found: failed runs, wrong event counts, differing metrics or models.

    A metric known only rounded for display (`RunResult.metric_decimals`) is compared at that
    precision; others must agree to 1e-12, and model digests exactly.

    >>> ok = [RunResult("a", 0, 1.0, events=10, metric=0.9, model_digest="x"), RunResult("b", 0, 1.0, events=10, metric=0.9)]
    >>> check_agreement(ok + [RunResult("r", 0, 1.0, events=10, metric=0.9, metric_decimals=1)], 10)
    []
    >>> check_agreement(ok + [RunResult("c", 0, 1.0, events=9, metric=0.8, model_digest="y")], 10)  # doctest: +NORMALIZE_WHITESPACE
    ['c round 0: 9 events, expected 10', 'c round 0: metric 0.8 differs from 0.9 (a)',
     'c round 0: model digest y differs from x (a)']
    """
    problems = []
    good = [result for result in results if result.error is None and result.metric is not None]
    exact = [result for result in good if result.metric_decimals is None] or good
    reference = exact[0] if exact else None
    digests = [result for result in good if result.model_digest is not None]
    for result in results:
        where = f"{result.contender} round {result.round}"
        if result.error is not None:
            problems.append(f"{where}: FAILED: {result.error}")
            continue
        if result.events != expected_events:
            problems.append(f"{where}: {result.events} events, expected {expected_events}")
        if result.metric is None:
            problems.append(f"{where}: reported no metric")
        elif reference is not None and result is not reference:
            places = result.metric_decimals
            same = round(reference.metric, places) == round(result.metric, places) if places is not None else abs(result.metric - reference.metric) <= 1e-12
            if not same:
                problems.append(f"{where}: metric {result.metric!r} differs from {reference.metric!r} ({reference.contender})")
        if result.model_digest is not None and digests and result.model_digest != digests[0].model_digest:
            problems.append(f"{where}: model digest {result.model_digest} differs from {digests[0].model_digest} ({digests[0].contender})")
    return problems


def _ratio(value: float | None, anchor: float | None) -> str:
    return f"{value / anchor:5.2f}" if value and anchor else "    -"


def _number(value: float | None, spec: str) -> str:
    return format(value, spec) if value is not None else "-"


def format_table(summaries: list[Summary]) -> str:
    """The results table: events/s end to end and in the processing phase, with both ratios."""
    by_name = {summary.contender.name: summary for summary in summaries}
    bare, anchor = by_name.get(BARE), by_name.get(CRASH_SAFE_ANCHOR)

    def rate(summary, attribute):
        return summary.rate(getattr(summary, attribute)) if summary else None

    header = (
        f"{'contender':<24} {'safe':>4} {'runs':>5} {'events':>7} {'Accuracy':>9} | "
        f"{'e2e s':>6} {'e2e ev/s':>9} {'/bare':>5} {'/bwxR':>5} {'cpu s':>6} {'/bare':>5} | "
        f"{'proc s':>6} {'proc ev/s':>9} {'/bare':>5} {'/bwxR':>5} {'µs/ev':>6} {'+µs':>6} {'cpu/bare':>8} | {'to 1st':>6}"
    )
    lines = [header, "-" * len(header)]
    bare_us = bare.processing_seconds / bare.events * 1e6 if bare and bare.events and bare.processing_seconds else None
    for summary in summaries:
        e2e, proc = rate(summary, "end_to_end_seconds"), rate(summary, "processing_seconds")
        us = summary.processing_seconds / summary.events * 1e6 if summary.events and summary.processing_seconds else None
        runs = f"{summary.runs - summary.failures}/{summary.runs}"
        name = summary.contender.name + ("*" if summary.phase != "first event to last" else "")
        lines.append(
            f"{name:<24} {summary.contender.crash_safe:>4} {runs:>5} {_number(summary.events, 'd'):>7} "
            f"{_number(summary.metric, '.5f'):>9} | "
            f"{_number(summary.end_to_end_seconds, '6.2f'):>6} {_number(e2e, '9.0f'):>9} "
            f"{_ratio(e2e, rate(bare, 'end_to_end_seconds'))} {_ratio(e2e, rate(anchor, 'end_to_end_seconds'))} "
            f"{_number(summary.cpu_seconds, '6.2f'):>6} {_ratio(rate(summary, 'cpu_seconds'), rate(bare, 'cpu_seconds'))} | "
            f"{_number(summary.processing_seconds, '6.2f'):>6} {_number(proc, '9.0f'):>9} "
            f"{_ratio(proc, rate(bare, 'processing_seconds'))} {_ratio(proc, rate(anchor, 'processing_seconds'))} "
            f"{_number(us, '6.1f'):>6} {_number(us - bare_us if us and bare_us else None, '+6.1f'):>6} "
            f"{_ratio(rate(summary, 'processing_cpu_seconds'), rate(bare, 'processing_cpu_seconds')):>8} | "
            f"{_number(summary.start_to_first_event_seconds, '6.2f'):>6}"
        )
    lines.append("")
    lines.append("e2e: process start to exit as the harness sees it; proc: first event to last as the contender reports it;")
    lines.append("/bare, /bwxR: events/s ratio to the bare loop and to Bytewax with recovery; µs/ev: processing phase per event,")
    lines.append("+µs: over the bare loop; to 1st: process start to first event (imports, connect, group join);")
    lines.append("cpu s: user+system CPU of the contender's process start to exit (the broker's excluded), /bare its events-per-CPU-second")
    lines.append("ratio to the bare loop: steadier than wall time on a busy machine; cpu/bare: the same for the processing phase")
    lines.append("(the process's CPU first event to last, as the peers report it). Medians.")
    if any(summary.phase != "first event to last" for summary in summaries):
        lines.append("*: the daemon logged no first_event_to_last_seconds; its proc columns are its processing_seconds, the time")
        lines.append("   inside batch processing only (no poll, no checkpoint waits), so they flatter it against the peers.")
    return "\n".join(lines)


# -- the command --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    names = ", ".join(dict.fromkeys(contender.name for contender in CONTENDERS + KEYED_CONTENDERS))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000, help="events produced to the topic (default 200000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each running every contender once, order rotated (default 3)")
    parser.add_argument("--only", help=f"comma-separated contenders to run (of: {names})")
    parser.add_argument("--skip", help="comma-separated contenders to leave out")
    parser.add_argument("--bootstrap-servers", help="use this running broker instead of starting a local Tansu")
    parser.add_argument("--peers-venv", type=Path, default=DEFAULT_VENV, help="the peers' virtual environment (created on demand)")
    parser.add_argument("--workdir", type=Path, help="keep run directories (logs, checkpoints) here instead of a temporary one")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds before one run is abandoned")
    parser.add_argument("--results", type=Path, help="write all runs as JSON here (default benchmarks/results/daemon_vs_peers-<time>.json)")
    parser.add_argument("--baseline", metavar="GIT_REF", help="also run each riverbeam contender with the code of this git ref (as <name>@base): before/after in one run")
    parser.add_argument("--keys", help="a model per key: comma-separated key counts, one topic and table each (e.g. 100,10000,100000)")
    args = parser.parse_args(argv)
    if args.events <= 0 or args.rounds <= 0:
        parser.error("--events and --rounds must be positive")
    try:
        args.keys = [int(count) for count in args.keys.split(",")] if args.keys else None
    except ValueError:
        parser.error(f"--keys: comma-separated whole numbers, got {args.keys!r}")
    if args.keys is not None and min(args.keys) <= 0:
        parser.error("--keys: each key count must be positive")
    known = {contender.name for contender in (KEYED_CONTENDERS if args.keys else CONTENDERS)}
    for flag in ("only", "skip"):
        chosen = [name.strip() for name in (getattr(args, flag) or "").split(",") if name.strip()]
        unknown = sorted(set(chosen) - known)
        if unknown:
            parser.error(f"--{flag}: unknown contender(s) {', '.join(unknown)}; known: {names}")
        setattr(args, flag, chosen)
    return args


def choose_contenders(args: argparse.Namespace, riverbeam: list[str] | None, baseline: Path | None = None) -> list[Contender]:
    chosen = [c for c in (KEYED_CONTENDERS if args.keys else CONTENDERS) if (not args.only or c.name in args.only) and c.name not in args.skip]
    if riverbeam is None and any(c.runtime == "riverbeam" for c in chosen):
        print("riverbeam's consume daemon is not available (`riverbeam consume --help` lacks --until-caught-up): skipping its contenders", file=sys.stderr)
        chosen = [c for c in chosen if c.runtime != "riverbeam"]
    if baseline is not None:
        chosen += [
            Contender(f"{c.name}@base", f"{c.title} (code of {args.baseline})", c.crash_safe, c.runtime, client=c.client, source=str(baseline), keyed=c.keyed)
            for c in chosen if c.runtime == "riverbeam"
        ]
    return chosen


WARM_IMPORTS = {
    "main": "import orjson, river.compose, river.linear_model, river.metrics, river.preprocessing, confluent_kafka, kafka",
    "riverbeam": "import riverbeam.cli, online.consume.daemon, online.kafka_clients.confluent, online.kafka_clients.kafka_python, online.checkpoints.persistence",
    "peers": "import orjson, river.compose, river.linear_model, river.metrics, bytewax.run, bytewax.connectors.kafka, quixstreams",
}


def bytecode_environment(cache: Path, runtimes: set[str], peers_python: Path | None = None) -> dict:
    """The contenders' environment: every interpreter reads compiled bytecode from `cache`, warmed now
    for each of `runtimes` (``Contender.runtime`` values).

    An installed environment has its ``.pyc`` files (pip compiles them at install); one installed
    without them (``uv pip install`` does not compile by default) under ``PYTHONDONTWRITEBYTECODE``
    compiles River, scipy and the rest from source at every start (~1.5 s of CPU for riverbeam's
    daemon here), which is no contender's own cost. ``PYTHONPYCACHEPREFIX`` keeps the cache out of the
    installed packages and the repository.
    """
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    environment.update(NO_GCE_CHECK="true", PYTHONPYCACHEPREFIX=str(cache))
    for runtime in sorted(runtimes):
        python = str(peers_python) if runtime == "peers" else sys.executable
        subprocess.run([python, "-c", WARM_IMPORTS[runtime]], env=environment, cwd=PEERS_DIR, capture_output=True, check=False)
    return environment


def export_baseline(ref: str, folder: Path) -> Path:
    """riverbeam's packages as of git `ref`, extracted (``git archive``) into `folder`; return it."""
    folder.mkdir(parents=True, exist_ok=True)
    repository = HERE.parent
    archive = subprocess.run(["git", "-C", str(repository), "archive", "--format=tar", ref, "core", "transforms", "online", "pipelines", "riverbeam"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def run(argv: list[str] | None = None) -> int:
    """Run the benchmark; return 0 when every contender agreed, 1 otherwise."""
    args = parse_args(argv)
    riverbeam = riverbeam_command()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="riverbeam-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    baseline = export_baseline(args.baseline, workdir / "baseline-src") if args.baseline and riverbeam is not None else None
    contenders = choose_contenders(args, riverbeam, baseline)
    if not contenders:
        print("no contender to run", file=sys.stderr)
        return 1
    peers_python = ensure_peers_venv(args.peers_venv) if any(c.runtime == "peers" for c in contenders) else None
    environment = bytecode_environment(workdir / "pycache", {contender.runtime for contender in contenders}, peers_python)
    stack = None
    cases = []  # (keys, end offset, results): one per key count, or one for a global model
    try:
        if args.bootstrap_servers:
            bootstrap_servers = args.bootstrap_servers
        else:
            from riverbeam.local_stack import LocalStack

            stack = LocalStack(workdir / "stack", kafka_port=0, gcs_port=0)
            bootstrap_servers = stack.up().bootstrap_servers
        for keys in args.keys or [None]:
            topic = f"bench-{uuid.uuid4().hex[:8]}"
            events = phishing_events(args.events, keys)
            events_file = workdir / ("events.jsonl" if keys is None else f"events-keys{keys}.jsonl")
            write_events_file(events_file, events)
            started = time.perf_counter()
            end_offset = produce_events(bootstrap_servers, topic, events, keyed=keys is not None)
            what = "" if keys is None else f" (a model per key, {keys} keys)"
            print(f"produced {end_offset} events{what} to {topic} on {bootstrap_servers} in {time.perf_counter() - started:.1f} s; runs under {workdir}", file=sys.stderr)
            del events
            bench = Bench(bootstrap_servers, topic, end_offset, events_file, workdir, peers_python, riverbeam, args.timeout, environment, keys)
            results: list[RunResult] = []
            for round_index in range(args.rounds):
                shift = round_index % len(contenders)
                for contender in contenders[shift:] + contenders[:shift]:
                    result = run_contender(contender, bench, round_index)
                    results.append(result)
                    status = "FAILED" if result.error else f"{result.end_to_end_seconds:6.2f} s e2e, {_number(result.processing_seconds, '.2f')} s processing"
                    print(f"round {round_index + 1}/{args.rounds} {what.strip()} {contender.name:<24} {status}", file=sys.stderr)
            cases.append((keys, end_offset, results))
    finally:
        if stack is not None:
            stack.down()
    all_problems, report = [], []
    for keys, end_offset, results in cases:
        summaries = summarize(contenders, results)
        model = "StandardScaler | LogisticRegression" + ("" if keys is None else f" per key, {keys:,} keys")
        print(f"\n{end_offset} events (Phishing, cycled), {model}, {args.rounds} round(s), medians\n")
        print(format_table(summaries))
        problems = check_agreement(results, end_offset)
        if problems:
            print("\n" + "!" * 80 + "\nMISMATCH: the contenders did not all end in the same state\n" + "\n".join(f"  - {p}" for p in problems) + "\n" + "!" * 80)
        else:
            with_digest = sum(result.model_digest is not None for result in results)
            print(f"\nall {len(results)} runs ended with {end_offset} events and the same Accuracy ({results[0].metric!r}); "
                  f"{with_digest} of them exposed their model{'s' if keys else ''}: bit-identical")
        all_problems += [f"{keys} keys: {problem}" if keys else problem for problem in problems]
        report.append({
            "keys": keys, "events": end_offset, "rounds": args.rounds,
            "runs": [result.__dict__ for result in results],
            "medians": [{**summary.__dict__, "contender": summary.contender.name} for summary in summaries],
            "problems": problems,
        })  # fmt: skip
    results_file = args.results or RESULTS_DIR / f"daemon_vs_peers-{time.strftime('%Y%m%d-%H%M%S')}.json"
    results_file.parent.mkdir(parents=True, exist_ok=True)
    results_file.write_text(json.dumps(report[0] if len(report) == 1 and report[0]["keys"] is None else report, indent=2, default=str))
    print(f"runs written to {results_file}")
    if args.workdir is None and not all_problems:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if all_problems else 0


if __name__ == "__main__":
    sys.exit(run())
