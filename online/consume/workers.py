"""``riverbeam consume --workers N``: N daemons of a keyed job in one consumer group, under one supervisor.

Per-key models (``events.key``) are split by partition (`online.consume.daemon`), so N daemon
processes in one consumer group use N cores: each worker is a normal daemon owning the learning
units of the partitions the group gives it. `run_workers` is their supervisor, the process the
user (or Kubernetes) starts:

* **Start-up once.** Workers are forked from a `multiprocessing` fork server that imports the
  daemon (River, the Kafka clients) once; a worker, or its restart, starts in milliseconds instead
  of paying the imports again. All workers find the group's coordinator, then subscribe together
  (a barrier before the subscription), so the group forms in one generation: surely when the broker
  gathers joins at start (``group.initial.rebalance.delay.ms``, 3 s by default), most times when it
  does not (the local stack's 0). A join completed alone costs one more generation about a second
  later (two heartbeats), moving that worker's extra partitions to the others, each unit once.
* **Cooperative assignment.** Unless ``kafka.consumer`` names an assignor, workers use the
  cooperative-sticky one (both clients support incremental assignment): a worker that leaves or
  joins moves only its own partitions; the others' units are neither checkpointed nor restored.
* **Signals.** SIGTERM/SIGINT are forwarded to every worker: each finishes its batch, writes its
  final checkpoints, commits and exits; the supervisor then prints one summary with the counts of
  all workers summed (`merge_summaries`, printed by `online.consume.summary.daemon_job_summary`).
* **A worker that dies** (killed, out of memory) is started again after a backoff (1 s, doubling up
  to 30 s); meanwhile the group moves its partitions to the others (after its session times out),
  and gives some back when it rejoins. Its units resume from their last checkpoints, so nothing is
  lost or learned twice, and its outputs are skipped up to what was already written. A worker
  dying `CRASH_LOOP` times in a row, each soon after its start, stops all in one line (exit 1); a
  worker that stops with a one-line error (a checkpoint location that cannot be written, an offset
  gap) stops the others too and the supervisor exits with that line, as one daemon would. A worker
  fenced on a partition's checkpoint (it lost its session under load, another worker took the
  partition and checkpointed it) is stale, not broken: it exits and is restarted like a death.
* **``--until-caught-up``** is decided for the group: each worker reports whether its partitions
  reached the end offsets seen at their assignment, and once the workers' partitions cover the
  topic and all are caught up, the supervisor tells all to finish together (so no worker leaves
  while the others learn, which would move its partitions to them). A worker that joined and
  holds no partition counts as caught up (more workers than partitions, or a join the group
  answered after the others had read everything: on a small topic one worker may learn it all).
* **One /metrics port.** Workers write their series to prometheus-client's multiprocess files;
  the supervisor serves them merged (``MultiProcessCollector``) with ``/healthz``, ``/readyz`` and
  the dashboard through `online.observability.HealthServer`. Ready: every worker running and one
  at least holding partitions.

Imports only the light parts of `online` in the supervisor; the daemon is imported by the workers.
"""

from __future__ import annotations

import atexit
import glob
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.forkserver
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any

from core.errors import RiverbeamError
from online.checkpoints.store import FencingError
from online.config import ConsumeJobConfig, workers_error

log = logging.getLogger("riverbeam.workers")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's multiprocess mode
RESTART_BACKOFF = (1.0, 30.0)  # seconds before a dead worker starts again: the first wait, doubling up to the second
CRASH_LOOP = 5  # deaths in a row, each within STEADY_SECONDS of the start, that stop the group
STEADY_SECONDS = 60.0
JOIN_TIMEOUT = 60.0  # seconds a worker waits for the others before subscribing anyway
LEAVE_TIMEOUT = 30.0  # seconds a stopping worker, its final checkpoints committed, waits for the others before leaving the group


class WorkersError(RiverbeamError):
    """The workers had to stop: one stopped with an error, or one kept dying."""


# -- the worker process -----------------------------------------------------------------------


class GroupMember:
    """A worker's side of the supervisor: the daemon's ``group`` (`online.consume.daemon.Daemon.group`)."""

    def __init__(self, index: int, link, barrier):
        self.index = index
        self.link = link
        self.barrier = barrier
        self.finish = threading.Event()  # the supervisor said: the group is caught up
        self.leave = threading.Event()  # the supervisor said: every worker has committed its final checkpoints
        self._reported: tuple | None = None
        self._partitions: list | None = None

    def joining(self, daemon) -> None:
        """Before subscribing: find the group's coordinator, then wait until every worker of the first start is here (not for a restart).

        A subscription sends its join at once only to a coordinator already found; a worker still
        looking it up joined about 0.5 s after the others, so the group formed without it and a
        second generation moved units to it (measured on Apache Kafka: in every one of 9 starts).
        An offset look-up (OffsetFetch, answered by the coordinator) finds it first.
        """
        if self.barrier is None:
            return
        try:
            daemon.consumer.committed((daemon.config.kafka.source_topics[0], 0))
        except RiverbeamError as error:  # the join finds the coordinator itself, later
            log.debug("finding the group's coordinator before joining failed: %s", error)
        try:
            self.barrier.wait(JOIN_TIMEOUT)
        except threading.BrokenBarrierError:  # a worker died before joining: subscribe anyway
            pass

    def caught_up(self, daemon, mine: bool) -> bool:
        """Report whether this worker's partitions are caught up (when it changes); True once the supervisor says the group is."""
        if self._partitions is None:
            self._partitions = sorted((topic, p) for topic in daemon.config.kafka.source_topics for p in daemon.consumer.partitions_for(topic))
        state = (mine, sorted(daemon.unit_of))
        if state != self._reported:
            self._reported = state
            self.link.send(("report", mine, state[1], self._partitions))
        return self.finish.is_set()

    def leaving(self, daemon, summary: dict) -> None:
        """Stopping, final checkpoints committed: send the summary, then leave the group only with the others.

        A worker leaving triggers a rebalance in the others' group; under it their final commits
        would fail (kafka-python) or their units move once more.
        """
        self.link.send(("summary", summary))
        self.leave.wait(LEAVE_TIMEOUT)

    def listen(self, daemon) -> None:
        """On a thread: "finish" from the supervisor; its end gone (the supervisor died) stops the daemon gracefully."""

        def run():
            while True:
                try:
                    message = self.link.recv()
                except (EOFError, OSError):
                    daemon.request_stop()
                    return
                if message == "finish":
                    self.finish.set()
                elif message == "leave":
                    self.leave.set()

        threading.Thread(target=run, name="riverbeam-worker-link", daemon=True).start()


class _WorkerTag(logging.Filter):
    """Adds ``"worker": index`` to each JSON log line of a worker."""

    def __init__(self, index: int):
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.fields = {"worker": self.index, **(getattr(record, "fields", None) or {})}
        return True


def _worker_main(index: int, config: ConsumeJobConfig, link, barrier, until_caught_up: bool, allow_model_change: bool) -> None:
    """One worker: a keyed daemon in the group, with the supervisor's link; exit 1 after a one-line error (sent to the supervisor)."""
    from online.consume.daemon import Daemon
    from online.observability import configure_json_logging

    configure_json_logging()
    for handler in logging.getLogger().handlers:
        handler.addFilter(_WorkerTag(index))
    daemon = Daemon(config, until_caught_up=until_caught_up, progress=False, allow_model_change=allow_model_change)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, daemon.request_stop)
    member = daemon.group = GroupMember(index, link, barrier)
    member.listen(daemon)

    def refresh_age():  # nobody scrapes a worker: its checkpoint age gauge is kept current here
        while not daemon.stopping.wait(1.0):
            daemon.metrics.refresh_checkpoint_age()

    threading.Thread(target=refresh_age, name="riverbeam-worker-age", daemon=True).start()
    try:
        daemon.run()  # its summary goes to the supervisor in `GroupMember.leaving`
    except FencingError as error:  # another member took a partition and checkpointed it (a session lost under load): restart, as a death
        log.warning("worker is stale on a partition another worker took: restarting it", extra={"fields": {"error": str(error)}})
        sys.exit(STALE_EXIT)
    except RiverbeamError as error:
        link.send(("error", str(error)))
        sys.exit(1)
    except Exception as error:  # a bug: logged as one JSON line (with its trace), the worker restarted
        log.error("worker failed", exc_info=True, extra={"fields": {"error": f"{type(error).__name__}: {error}"}})
        sys.exit(70)


def worker_config(config: ConsumeJobConfig) -> ConsumeJobConfig:
    """`config` as each worker runs it: no metrics server of its own, and the cooperative-sticky assignor unless one is set.

    >>> from core.configuration import parse_config
    >>> job = parse_config({"model": {"pipeline": [{"linear_model.LogisticRegression": {}}]}, "events": {"target": "y", "key": "user"},
    ...                     "kafka": {"topic": "t", "client": "confluent-kafka"}, "checkpoint": {"uri": "ckpt"}}, ConsumeJobConfig, environ={})
    >>> worker = worker_config(job)
    >>> worker.metrics.port, worker.kafka.consumer
    (None, {'partition.assignment.strategy': 'cooperative-sticky'})
    """
    consumer = dict(config.kafka.consumer)
    if config.kafka.client == "confluent-kafka":
        consumer.setdefault("partition.assignment.strategy", "cooperative-sticky")
    elif "partition_assignment_strategy" not in consumer:
        from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor

        consumer["partition_assignment_strategy"] = (CooperativeStickyAssignor,)
    kafka = config.kafka.model_copy(update={"consumer": consumer})
    return config.model_copy(update={"kafka": kafka, "metrics": config.metrics.model_copy(update={"port": None})})


# -- the supervisor ---------------------------------------------------------------------------

_metrics_dir: str | None = None


def _multiprocess_dir() -> str:
    """This process's directory for the workers' metric files (one per supervisor process: the fork server keeps it)."""
    global _metrics_dir
    if _metrics_dir is None:
        _metrics_dir = tempfile.mkdtemp(prefix="riverbeam-metrics-")
        atexit.register(shutil.rmtree, _metrics_dir, True)
    for stale in glob.glob(os.path.join(_metrics_dir, "*.db")):  # an earlier run's workers
        os.remove(stale)
    return _metrics_dir


def start_fork_server() -> None:
    """Start the workers' fork server now (it imports the daemon on its own while this process goes on, e.g. loading
    the configuration, which imports River too); `run_workers` uses it, or starts it if nobody did."""
    _fork_server(_multiprocess_dir())


def _fork_server(metrics_dir: str):
    """The fork-server context, started with the daemon imported and prometheus-client in multiprocess mode."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["online.consume.daemon"])
    previous = os.environ.get(MULTIPROC_ENV)
    os.environ[MULTIPROC_ENV] = metrics_dir  # read by the fork server as it imports prometheus-client; not by this process
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        if previous is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = previous
    return context


@dataclass
class Worker:
    """One worker slot: its current process, its link, and what it reported."""

    index: int
    process: Any = None
    link: Any = None
    started: float = 0.0
    deaths: int = 0  # in a row, each within STEADY_SECONDS of its start
    restart_at: float | None = None
    report: tuple | None = None  # (caught up, owned partitions, the topics' partitions)
    summary: dict | None = None
    error: str | None = None
    done: bool = False  # exited for good
    last_exit: str = ""


class GroupMetrics:
    """What `online.observability.HealthServer` serves for the workers: their series merged by prometheus-client, and the group's readiness."""

    def __init__(self, path: str, supervisor: "Supervisor"):
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector

        self.registry = CollectorRegistry()
        MultiProcessCollector(self.registry, path=path)
        self._generate = generate_latest
        self._supervisor = supervisor

    @property
    def ready(self) -> bool:
        """Every worker running, and at least one holding restored partitions."""
        return self._supervisor.all_running and (self.registry.get_sample_value("riverbeam_ready") or 0) >= 1

    def refresh_checkpoint_age(self) -> None:
        """Each worker keeps its own age current."""

    def exposition(self) -> bytes:
        return self._generate(self.registry)


class Supervisor:
    """Starts, watches, restarts and stops the workers (`run_workers`)."""

    def __init__(self, config: ConsumeJobConfig, workers: int, until_caught_up: bool, stop: threading.Event, allow_model_change: bool):
        self.config = config
        self.worker_config = worker_config(config)
        self.until_caught_up = until_caught_up
        self.stop = stop
        self.allow_model_change = allow_model_change
        self.workers = [Worker(index) for index in range(workers)]
        self.stopping = False  # SIGTERM forwarded
        self.finishing = False  # "finish" sent: the group is caught up
        self.leaving = False  # "leave" sent: every worker stopping has committed its final checkpoints
        self.restarts = 0
        self.failure: str | None = None
        self.barrier = None  # the first start's join barrier
        # every worker's process running, as the supervising loop last saw: what /readyz reads (only that loop polls
        # the processes: two threads reading a fork-server child's exit status can misread it)
        self.all_running = False

    def run(self) -> dict:
        began = time.monotonic()
        metrics_dir = _multiprocess_dir()
        context = _fork_server(metrics_dir)
        self.barrier = context.Barrier(len(self.workers))
        for worker in self.workers:
            self._start(context, worker, self.barrier)
        health = None
        port = self.config.metrics.port
        try:
            if port is not None:
                from online.observability import HealthServer

                health = HealthServer(GroupMetrics(metrics_dir, self), self.config.metrics.host, port)
            self._supervise(context, metrics_dir)
        finally:
            self._stop_all(kill_after=60.0)
            if health is not None:
                health.close()
        if self.failure is not None:
            raise WorkersError(self.failure)
        summaries = [w.summary for w in self.workers if w.summary is not None]
        return merge_summaries(summaries, time.monotonic() - began, workers=len(self.workers), restarts=self.restarts)

    def _start(self, context, worker: Worker, barrier=None) -> None:
        parent_end, child_end = context.Pipe()
        process = context.Process(
            target=_worker_main, name=f"riverbeam-worker-{worker.index}",
            args=(worker.index, self.worker_config, child_end, barrier, self.until_caught_up, self.allow_model_change),
        )  # fmt: skip
        process.start()
        child_end.close()
        worker.process, worker.link, worker.started, worker.restart_at = process, parent_end, time.monotonic(), None
        worker.report = None
        log.info("worker started", extra={"fields": {"worker": worker.index, "pid": process.pid}})

    def _supervise(self, context, metrics_dir: str) -> None:
        from prometheus_client.multiprocess import mark_process_dead

        while True:
            if self.stop.is_set() and not self.stopping:
                self.stopping = True
                self._signal_all(signal.SIGTERM)
            live = [w for w in self.workers if w.process is not None]
            waitables = [w.link for w in live] + [w.process.sentinel for w in live]
            multiprocessing.connection.wait(waitables, timeout=0.5)
            for worker in live:
                self._receive(worker)
            now = time.monotonic()
            for worker in live:
                if worker.process.is_alive():
                    continue
                self._receive(worker)  # what it sent before it exited
                worker.process.join()
                mark_process_dead(worker.process.pid, metrics_dir)
                self._exited(worker, now)
            self.all_running = not (self.stopping or self.finishing) and all(w.process is not None for w in self.workers)
            if self.failure is not None:
                return
            if self.stopping or self.finishing:
                for worker in self.workers:
                    if worker.process is None:  # waiting for a restart: stays stopped
                        worker.done = True
            else:
                for worker in self.workers:
                    if worker.restart_at is not None and now >= worker.restart_at:
                        self.restarts += 1
                        self._start(context, worker)
                if self.until_caught_up and self._group_caught_up():
                    self.finishing = True
                    log.info("the group is caught up: every worker finishes")
                    for worker in self.workers:
                        self._send(worker, "finish")
            if (self.stopping or self.finishing) and not self.leaving and all(w.summary is not None or w.process is None for w in self.workers):
                self.leaving = True
                for worker in self.workers:
                    self._send(worker, "leave")
            if all(w.done for w in self.workers):
                return

    def _receive(self, worker: Worker) -> None:
        try:
            while worker.link.poll():
                message = worker.link.recv()
                if message[0] == "report":
                    worker.report = message[1:]
                elif message[0] == "summary":
                    worker.summary = message[1]
                elif message[0] == "error":
                    worker.error = message[1]
        except (EOFError, OSError):
            pass

    def _exited(self, worker: Worker, now: float) -> None:
        """A worker's process ended: done, a failure for the group, or a death to restart after a backoff."""
        code = worker.process.exitcode
        worker.process = None
        self.barrier.abort()  # a worker gone before joining: the others subscribe at once (after the join, this changes nothing)
        worker.link.close()
        if worker.error is not None:  # a one-line error: the group stops with it, as one daemon would
            self.failure = f"worker {worker.index}: {worker.error}"
            worker.done = True
            return
        if code == 0 or self.stopping or self.finishing:
            worker.done = True
            if code != 0 and self.failure is None:
                self.failure = f"worker {worker.index} exited with {_exit_text(code)} while stopping: its last checkpoint stands, the rest is read again at the next start"
            return
        worker.deaths = worker.deaths + 1 if now - worker.started < STEADY_SECONDS else 1
        worker.last_exit = _exit_text(code)
        if worker.deaths >= CRASH_LOOP:
            self.failure = (f"worker {worker.index} died {worker.deaths} times in a row, each within {STEADY_SECONDS:g} s of its start "
                            f"(last: {worker.last_exit}): stopping all workers; see its log lines")
            worker.done = True
            return
        wait = min(RESTART_BACKOFF[1], RESTART_BACKOFF[0] * 2 ** (worker.deaths - 1))
        worker.restart_at = now + wait
        log.warning("worker died: restarting it", extra={"fields": {"worker": worker.index, "exit": worker.last_exit, "restart_in_seconds": wait}})

    def _group_caught_up(self) -> bool:
        """Every worker running and caught up, and their partitions, disjoint, cover every partition of the topics."""
        reports = [w.report for w in self.workers]
        if any(w.process is None for w in self.workers) or any(r is None or not r[0] for r in reports):
            return False
        owned = [tp for r in reports for tp in r[1]]
        everything = set(reports[0][2])
        return len(owned) == len(set(owned)) and set(owned) == everything

    def _send(self, worker: Worker, message: str) -> None:
        try:
            if worker.process is not None:
                worker.link.send(message)
        except (OSError, ValueError):
            pass

    def _signal_all(self, sig: int) -> None:
        for worker in self.workers:
            if worker.process is not None and worker.process.pid is not None:
                try:
                    os.kill(worker.process.pid, sig)
                except ProcessLookupError:
                    pass

    def _stop_all(self, kill_after: float) -> None:
        """Stop whatever still runs (after a failure, or an error in the supervisor): SIGTERM, then SIGKILL after `kill_after` s."""
        running = [w for w in self.workers if w.process is not None and w.process.is_alive()]
        if not running:
            return
        self._signal_all(signal.SIGTERM)
        for worker in running:
            self._send(worker, "leave")  # no waiting for the others to commit: they may never
        deadline = time.monotonic() + kill_after
        for worker in running:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()


STALE_EXIT = 75  # a worker fenced on a partition another worker took (EX_TEMPFAIL): restarted like a death, never the group's failure


def _exit_text(code: int | None) -> str:
    """
    >>> _exit_text(-9), _exit_text(70)
    ('signal 9 (SIGKILL)', 'exit code 70')
    """
    if code is not None and code < 0:
        return f"signal {-code} ({signal.Signals(-code).name})"
    return f"exit code {code}"


def merge_summaries(summaries: list[dict], seconds: float, workers: int, restarts: int = 0) -> dict:
    """The workers' `Daemon.summary` dicts as one (`online.consume.summary.daemon_job_summary` prints it): counts summed, units merged.

    A worker that died and was restarted reports its last run only: the counts of this run
    (``events_seen``, ``events_learned``) leave out what its earlier runs learned, while
    ``events_learned_total`` (from the units' models) is exact.

    >>> one = {"events_seen": 6, "events_learned": 5, "events_dead_lettered": 1, "checkpoints_written": 2, "processing_seconds": 0.5,
    ...        "first_event_at": 10.0, "first_event_to_last_seconds": 2.0, "checkpoint_uri": "ckpt", "outputs_skipped_as_already_written": 0,
    ...        "units": {"t.0": {"events_learned": 5}}, "resumed_from": None}
    >>> two = dict(one, first_event_at=11.0, units={"t.1": {"events_learned": 7}}, resumed_from={"checkpoint": "c1", "events_learned": 2})
    >>> merged = merge_summaries([one, two], 4.0, workers=2)
    >>> merged["events_seen"], merged["events_learned_total"], merged["first_event_to_last_seconds"], merged["resumed_from"], sorted(merged["units"])
    (12, 12, 3.0, {'checkpoint': 'c1', 'events_learned': 2}, ['t.0', 't.1'])
    """
    from core.summary import Resumed

    def total(name: str):
        return sum(s.get(name) or 0 for s in summaries)

    units: dict[str, dict] = {}
    for summary in summaries:
        for name, unit in (summary.get("units") or {}).items():  # a unit moving while the group stopped: the one that learned most
            if name not in units or (unit.get("events_learned") or 0) > (units[name].get("events_learned") or 0):
                units[name] = unit
    starts = [(s["first_event_at"], s["first_event_at"] + (s.get("first_event_to_last_seconds") or 0)) for s in summaries if s.get("first_event_at")]
    resumed = [Resumed(**s["resumed_from"]) for s in summaries if s.get("resumed_from")]
    busiest = max((s.get("processing_seconds") or 0 for s in summaries), default=0)
    return {
        "events_seen": total("events_seen"),
        "events_learned": total("events_learned"),
        "events_learned_total": sum(unit.get("events_learned") or 0 for unit in units.values()),
        "resumed_from": Resumed(resumed[0].checkpoint, sum(r.events_learned for r in resumed), checkpoints=sum(r.checkpoints for r in resumed)).to_json() if resumed else None,
        "events_dead_lettered": total("events_dead_lettered"),
        "checkpoints_written": total("checkpoints_written"),
        "outputs_skipped_as_already_written": total("outputs_skipped_as_already_written"),
        "processing_seconds": round(total("processing_seconds"), 4),
        "first_event_at": min(start for start, _ in starts) if starts else None,
        "first_event_to_last_seconds": round(max(end for _, end in starts) - min(start for start, _ in starts), 4) if starts else None,
        "seconds": round(seconds, 4),
        "events_per_second": round(total("events_seen") / busiest) if busiest else None,  # the workers learning side by side
        "checkpoint_uri": summaries[0]["checkpoint_uri"] if summaries else None,
        "workers": workers,
        "worker_restarts": restarts,
        "units": units,
    }


def run_workers(config: ConsumeJobConfig, workers: int, until_caught_up: bool = False, stop: threading.Event | None = None,
                allow_model_change: bool = False, workers_key: str = "consume.workers") -> dict:
    """Run `workers` daemon processes of the keyed job `config` in one consumer group until stopped; return their summary merged.

    `stop` (set by the caller's SIGTERM/SIGINT handler) stops every worker gracefully;
    `until_caught_up` stops them all together once the group has read every partition to the end
    offsets seen at assignment. A global model is a `core.errors.ConfigError` naming `workers_key`.

    >>> from core.configuration import parse_config
    >>> job = parse_config({"model": {"pipeline": [{"linear_model.LogisticRegression": {}}]}, "events": {"target": "y"},
    ...                     "kafka": {"topic": "t"}, "checkpoint": {"uri": "ckpt"}}, ConsumeJobConfig, environ={})
    >>> run_workers(job, 2, workers_key="--workers")
    Traceback (most recent call last):
    ...
    core.errors.ConfigError: --workers: 2 workers need per-key models (events.key): ...
    """
    error = workers_error(workers, config.events, workers_key)
    if error is not None:
        raise error
    return Supervisor(config, workers, until_caught_up, stop or threading.Event(), allow_model_change).run()
