"""Streaming learning on Beam with the daemon's learner: events in, predictions and checkpoints out.

::

    ReadEvents | ParseEvents --(events)--> KeyByModelKey | LearnStateful --(predictions)--> WritePredictions
                             --(dead letters, with the reason) ------------+--(dead letters)--> WriteDeadLetters
                                                                           +--(checkpoints written)

The job takes the daemon's YAML (`online.config.ConsumeJobConfig`): ``model``, ``events``,
``features`` and ``checkpoint`` mean the same thing, and the learning is `online.learning.learner.Learner`
itself (predict, score, then learn; River's progressive validation order), so a job learns what
``riverbeam consume`` would learn from the same events in the same order. The ``kafka`` section
names the source (``bootstrap_servers``, ``topic(s)``, ``group_id``, ``consumer``) and the
optional ``predictions_topic`` and ``dead_letter_topic``.

Keys. With ``events.key`` each key value is a Beam key with its own `Learner` (one River model),
checkpointed in its unit ``<checkpoint.uri>/units/key=<key>`` (URL-quoted): the keyed layout every
job shares (`online.checkpoints.units`), so a key new to this job starts from the model the daemon,
a replay or a learning serve checkpointed for it, and theirs continue this job's keys. Without it
every event goes to one constant key and the checkpoints are at ``checkpoint.uri``: the daemon's
layout, so the daemon can take over from this job's checkpoint and vice versa. Metrics of a keyed job are per
key (the daemon reports one set over all keys).

State, the per-key cache and retries
------------------------------------
Restoring a learner for every event and pickling it back after it costs far more than learning
(measured against one predict-score-learn step on Phishing: scaler + logistic regression,
restore 7x and snapshot 1x; a Hoeffding tree, restore 70x and snapshot 27x; the JSON log
append below 0.1x). So `LearnStateFn` keeps a per-key learning unit in the DoFn instance
(`KeyUnit`, an `online.learning.unit.LearningUnit`: the key's `Learner`, its checkpointer, its
positions and its outputs, as every job learns: each event is a `LoggedEvent` pushed into the
unit's `online.sources.FedSource`, learned by `LearningUnit.step`, its prediction or dead letter
collected by the unit's sinks, `BeamOutputs`) and stores in Beam state only what lets any worker
rebuild it exactly:

* ``snapshot`` — the learner's bytes at the last checkpoint (written on the checkpoint timer,
  every ``checkpoint.every_events`` events and at the end of the input);
* ``log`` — the events applied since that snapshot, as JSON bytes (an append, cheap);
* ``version`` — ``(bundle token, events in the log)``, written with every event.

Beam commits state with the bundle, never the DoFn's memory. When a bundle fails and is retried
(or the key moves to another worker or DoFn instance), the cached learner may hold events the
runner has thrown away. Each bundle has a random token; the cache remembers the token it last
wrote. If the committed ``version`` names another token, the cache is stale and the learner is
rebuilt from ``snapshot`` and the ``log`` replayed through a new unit (its outputs dropped:
the bundles that logged those events output them) — so the learner state is exactly-once,
whatever the retries. The price is one small state write and one log append per event, and a
replay of at most one checkpoint interval of events after a failure, a key move or an eviction
from the cache (``cached_learners`` per DoFn instance, least recently used first). (The
alternative — keeping only the snapshot in state and rewriting it per event, or per bundle from
``finish_bundle`` — is either slow or impossible: ``finish_bundle`` cannot touch state.)

Side effects are at-least-once: predictions go out with their bundle (a retried bundle's
outputs are discarded by the runner, but a Kafka or Pub/Sub sink may still write twice), and a
checkpoint written to object storage by a bundle that then fails is written again by its retry.
Checkpoints are fenced (`online.checkpoints.store.FencingError`) against a concurrent writer; Beam
guarantees one writer per key, so a fencing failure means a zombie worker and the bundle is
retried. Ordering: Beam does not order events within a key across a shuffle; the learner learns
in arrival order (the daemon does the same within a Kafka partition). With delayed labels, set
``events.time``: pending predictions then expire by event time, and a replay expires them exactly
as the first pass did (by the processing clock it could not).

Checkpoints go through `online.checkpoints.persistence`, the bridge every job shares: the same
configuration hash and recorded configuration as the daemon and replay, the store built from
the ``checkpoint:`` section (signing key from ``checkpoint.signing_key_env``), and a
`online.checkpoints.persistence.Checkpointer` per key unit (the events cadence; the seconds cadence is a
processing-time timer, since a key without events is not called). A checkpoint is the unit's
(`LearningUnit.checkpoint`, its numbered steps), taken when the DoFn says so: the snapshot it
writes into Beam state is the one the checkpoint uploads (`state=`), so both hold the same bytes.
In mini-batch mode (``model.batch``) an incomplete chunk's events are held by the unit's loop and
stay logged at a checkpoint, whose positions stay before them. So a checkpoint of this job
resumes in the daemon, replay, ``predict`` and ``serve``, and theirs resume here.

A new job (empty state) starts each key from the newest checkpoint in object storage
(``--learn_from_checkpoint=latest``, the default; a checkpoint of another configuration is
refused) or from scratch (``none``). The Kafka positions are Beam's (``ReadFromKafka`` commits
offsets for the consumer group), not the checkpoint's. The ``files`` source reads each file in
line order and records, per key, the last line of each file learned
(``positions["files"] = {path: line}``); a rerun over the same files skips what the
checkpoint already holds, so it learns only new lines (appended ones, new files). Parse-stage
dead letters are written again on a rerun (they never reach a key's checkpoint).

Run on Dataflow (or Flink): ``ReadFromKafka`` is a cross-language transform that needs the Java
expansion service, so the Kafka source never runs on a laptop::

    python -m pipelines.stream_learn --runner=DataflowRunner --streaming \\
        --learn_config=gs://bucket/jobs/consume.yaml --project=P --region=R \\
        --temp_location=gs://bucket/tmp --sdk_container_image=IMAGE

Locally the bounded ``files`` source (JSON lines, e.g. the event archive) runs on the
FnApiRunner by default — explicit and download-free, never Prism::

    python -m pipelines.stream_learn --learn_config=job.yaml --learn_source=files \\
        --learn_input='archive/date=*/hour=*/*.jsonl' --learn_output=out/stream-learn

>>> parse_event(b'{"x": 1.5, "label": true}', key_field=None)
({'x': 1.5, 'label': True}, None)
>>> parse_event(b'[1, 2]', key_field=None)
(None, 'event is not a JSON object but an array')
>>> parse_event(b'{"x": 1}', key_field="user")
(None, "model key field 'user' is missing")
>>> checkpoint_uri("gs://bucket/ckpt", "user/7"), checkpoint_uri("gs://bucket/ckpt", GLOBAL_KEY)
('gs://bucket/ckpt/units/key=user%2F7', 'gs://bucket/ckpt')
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
import types
import typing
import uuid
from typing import Any, Callable

import apache_beam as beam
import orjson
from apache_beam.coders import BytesCoder, StrUtf8Coder, TupleCoder, VarIntCoder
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions, PortableOptions, StandardOptions
from apache_beam.transforms import userstate
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import Timestamp

from online.checkpoints.store import CheckpointStore, FencingError
from online.checkpoints.units import OtherUnits, check_layout, key_unit, unit_uri
from online.config import ConsumeJobConfig
from online.events import record_event
from online.learning.learner import Learner
from online.learning.unit import LearningUnit, Stepped
from online.checkpoints.persistence import Cadence, Checkpointer, LearnerSpec, open_checkpoint_store, position_context, resume
from online.sources import EventBatch, FedSource, kafka_positions, position_key
from pipelines.options import add_required_argument, check_required, waits_for_result
from pipelines.parsing import RecordParseFn, dead_letter
from pipelines.filesystems import configure_filesystems
from core.configuration import load_config
from core.errors import ConfigError, UsageError, run_main

log = logging.getLogger(__name__)

DEAD_LETTER = "dead_letter"
CHECKPOINTS = "checkpoints"
GLOBAL_KEY = ""  # the one Beam key of a global (unkeyed) model
SOURCE_FIELD = "__riverbeam_source__"  # (file, line) of an event from the files source, removed before learning
SOURCES = ("kafka", "pubsub", "files")
LOCAL_RUNNERS = (None, "DirectRunner", "BundleBasedDirectRunner", "FnApiRunner", "SwitchingDirectRunner")


class StreamLearnOptions(PipelineOptions):
    """Learn River models from a Kafka or Pub/Sub stream with the daemon's learner, checkpointing to object storage.

    Flags are global across Beam pipelines in one process, hence the ``learn_`` prefix. The
    model, events, checkpoint and Kafka settings come from the daemon's YAML (``--learn_config``).
    """

    # Dataflow template parameter types of the text flags (choices and numbers are inferred)
    TEMPLATE_PARAM_TYPES = {
        "learn_config": "GCS_READ_FILE", "learn_subscription": "PUBSUB_SUBSCRIPTION", "learn_input": "GCS_READ_FILE",
        "learn_output": "GCS_WRITE_FOLDER", "learn_predictions_topic": "PUBSUB_TOPIC", "learn_dead_letter_topic": "PUBSUB_TOPIC",
    }

    @classmethod
    def _add_argparse_args(cls, parser):
        add_required_argument(
            parser, "--learn_config",
            help="The job's YAML (the daemon's: model, events, features, checkpoint, kafka), a local path or gs://bucket/path.yaml.",
        )
        parser.add_argument(
            "--learn_source", default="kafka", choices=list(SOURCES),
            help="Where events come from: kafka (the config's kafka section), pubsub (--learn_subscription) or files (--learn_input, bounded). Default: %(default)s.",
        )
        parser.add_argument(
            "--learn_subscription", default=None,
            help="Pub/Sub subscription, projects/P/subscriptions/S (needed when learn_source is pubsub).",
        )
        parser.add_argument(
            "--learn_input", default=None,
            help="File pattern of JSON-lines events, local or gs:// (needed when learn_source is files).",
        )
        parser.add_argument(
            "--learn_output", default=None,
            help="Prefix of JSON-lines files for predictions and dead letters, local or gs:// (required with the files source; optional otherwise).",
        )
        parser.add_argument(
            "--learn_predictions_topic", default=None,
            help="Pub/Sub topic for predictions, projects/P/topics/T (with learn_source pubsub; Kafka uses kafka.predictions_topic).",
        )
        parser.add_argument(
            "--learn_dead_letter_topic", default=None,
            help="Pub/Sub topic for dead letters, projects/P/topics/T (with learn_source pubsub; Kafka uses kafka.dead_letter_topic).",
        )
        parser.add_argument(
            "--checkpoint_every_seconds", type=float, default=None,
            help="Processing-time seconds between checkpoints of a key; default: checkpoint.every_seconds of the config.",
        )
        parser.add_argument(
            "--checkpoint_every_events", type=int, default=None,
            help="Events of a key between checkpoints; default: checkpoint.every_events of the config.",
        )
        parser.add_argument(
            "--learn_from_checkpoint", default="latest", choices=["latest", "none"],
            help="Where a key starts when the job has no state for it: the latest checkpoint in object storage, or none (from scratch). Default: %(default)s.",
        )
        parser.add_argument(
            "--learn_max_records", type=int, default=None,
            help="With the kafka source: read at most this many records (a bounded backfill; on Flink the job then idles until stopped). Default: no limit.",
        )


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


def read_job_config(uri: str) -> ConsumeJobConfig:
    """The job's `ConsumeJobConfig` from a local path, ``gs://`` or ``s3://`` (`ConfigError` names the key path)."""
    config = load_config(uri, ConsumeJobConfig)  # any storage URI; types and River names checked
    if config.models is not None:  # several models on one stream: the daemon's (online.learning.model_set)
        raise ConfigError("models", "stream-learn learns one model (model:); run several models with riverbeam consume", source=uri)
    if config.model.batch is not None and config.events.id is not None:
        raise ConfigError("model.batch", "mini-batch learning does not join delayed labels (events.id): unset one of them", source=uri)
    return config


@dataclasses.dataclass(frozen=True)
class LearnSettings:
    """What `LearnStateFn` needs besides the config: checkpoint cadence and where a new key starts.

    `clock` gives the processing time the checkpoint timer is set against (Python's Beam SDK has
    no relative timers): the wall clock on real runners; a test with ``TestStream`` passes the
    DirectRunner's virtual clock, which starts at 0.
    """

    every_seconds: float
    every_events: int
    from_checkpoint: bool = True
    clock: Callable[[], float] = time.time
    cached_learners: int = 1000  # per DoFn instance; an evicted key is rebuilt from its state
    kafka_positions: bool = False  # the source is Kafka: positions are the daemon's "topic/partition": next offset


def learn_settings(config: ConsumeJobConfig, options: StreamLearnOptions | None = None) -> LearnSettings:
    """Checkpoint cadence from the flags, falling back to the config's ``checkpoint`` section."""
    every_seconds = getattr(options, "checkpoint_every_seconds", None) or config.checkpoint.every_seconds
    every_events = getattr(options, "checkpoint_every_events", None) or config.checkpoint.every_events
    if every_seconds <= 0 or every_events <= 0:
        raise UsageError("--checkpoint_every_seconds and --checkpoint_every_events must be positive")
    return LearnSettings(float(every_seconds), int(every_events), getattr(options, "learn_from_checkpoint", "latest") != "none",
                         kafka_positions=getattr(options, "learn_source", None) == "kafka")


# ---------------------------------------------------------------------------------------------
# Parsing and keys
# ---------------------------------------------------------------------------------------------


def parse_event(payload: bytes | str, key_field: str | None, decode=None, topic: str = "") -> tuple[dict | None, str | None]:
    """Decode one record into an event dict, or return why it is rejected.

    JSON, or with `decode` (an `online.formats.RegistryDecoder`: ``kafka.format`` avro, protobuf or
    json_schema) the schema-registry wire format, decoded and flattened as the daemon decodes it;
    `topic` names the subject in its reasons. Only what keying needs is checked here (a JSON
    object, a usable model key); features and labels are checked by the learner, with the
    daemon's exact reasons.
    """
    event, reason = record_event(payload, decode, topic)
    if reason is not None:
        return None, reason
    if key_field is not None:
        key = event.get(key_field)
        if key is None:
            return None, f"model key field '{key_field}' is missing"
        if type(key) not in (str, int):
            return None, f"model key field '{key_field}' must be a string or an integer, got {key!r}"
    return event, None


class ParseEventFn(RecordParseFn):
    """Emit events (dicts) and tag the records that are not JSON objects with a model key as dead letters.

    With `registry` (``(kafka.format, kafka.schema_registry, default topic)``, `registry_decoding`)
    records are decoded through the schema registry (`pipelines.parsing.RecordParseFn`: its client
    is made on the worker). A Kafka record's subject is its own topic's.
    """

    def __init__(self, key_field: str | None, registry: tuple[str, dict, str] | None = None):
        super().__init__(registry)
        self.key_field = key_field
        self.rejected = Metrics.counter("stream_learn", "events_rejected_parse")

    def process(self, payload):
        source = None
        if type(payload) is tuple:  # (file, line, bytes) from the files source; (topic/partition, next offset, bytes) from Kafka
            *source, payload = payload
        topic = self.subject_topic(source[0].rsplit("/", 1)[0] if source else None)
        event, reason = parse_event(payload, self.key_field, self.decoder, topic)
        if reason is None:
            if source is not None:
                event[SOURCE_FIELD] = tuple(source)
            yield event
        else:
            self.rejected.inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, dead_letter(payload, reason, "parse"))


class ParseEvents(beam.PTransform):
    """Bytes into events (output ``events``) and dead letters (`dead_letter`: schema v1, output ``dead_letter``)."""

    def __init__(self, key_field: str | None = None, registry: tuple[str, dict, str] | None = None):
        super().__init__()
        self.key_field = key_field
        self.registry = registry

    def expand(self, payloads):
        return payloads | "Parse" >> beam.ParDo(ParseEventFn(self.key_field, self.registry)).with_outputs(DEAD_LETTER, main="events")


def registry_decoding(config: ConsumeJobConfig) -> tuple[str, dict, str] | None:
    """``(kafka.format, kafka.schema_registry, the first source topic)`` when the Kafka records are in a
    schema-registry format (`ParseEventFn` decodes them as the daemon does); None for JSON."""
    kafka = config.kafka
    if kafka is None or kafka.format == "json":
        return None
    return kafka.format, dict(kafka.schema_registry or {}), kafka.source_topics[0]


class KeyByModelKey(beam.PTransform):
    """``(model key, event)`` pairs: the value of `key_field` as text, or `GLOBAL_KEY` for a global model.

    Beam keys are strings (a deterministic coder); the learner still reads the key from the
    event itself, so an integer key stays an integer in predictions and in the River state.
    """

    def __init__(self, key_field: str | None):
        super().__init__()
        self.key_field = key_field

    def expand(self, events):
        field = self.key_field
        if field is None:
            key_of = beam.Map(lambda event: (GLOBAL_KEY, event))
        else:
            key_of = beam.Map(lambda event: (str(event[field]), event))
        return events | ("GlobalKey" if field is None else "EventKey") >> key_of.with_output_types(typing.Tuple[str, typing.Any])


def checkpoint_uri(base: str, key: Any) -> str:
    """Where one key's checkpoints live: `base` for the global model, its unit otherwise (`online.checkpoints.units`)."""
    if key == GLOBAL_KEY:
        return base
    return unit_uri(base, key_unit(key))


def checkpoint_positions(learned: dict, kafka: bool) -> dict:
    """A key's checkpoint positions from what it learned per source: ``topic/partition`` -> next offset, as the
    daemon records them (so the daemon resumes right after), or ``{"files": {path: last line}}``. Events without
    a source position (Pub/Sub's: the source None, `LoggedEvent`) are in no checkpoint's positions.

    >>> checkpoint_positions({"events/0": 300}, kafka=True), checkpoint_positions({"a.jsonl": 7, None: 3}, kafka=False)
    ({'events/0': 300}, {'files': {'a.jsonl': 7}})
    """
    learned = source_positions(learned)
    if not learned:
        return {}
    return learned if kafka else {"files": learned}


def source_positions(positions: dict) -> dict:
    """A key unit's positions (source -> position after the last event learned) without the events that had no source.

    >>> source_positions({"a.jsonl": 7, None: 3})
    {'a.jsonl': 7}
    """
    return {source: position for source, position in positions.items() if source is not None}


def source_positions_of(positions: dict, kafka: bool) -> dict:
    """What a checkpoint's `positions` say this job's source has learned, as `checkpoint_positions` takes it back.

    >>> source_positions_of({"events/0": 300, "files": {"a.jsonl": 7}}, kafka=True)
    {'events/0': 300}
    """
    if kafka:
        return {position_key(tp): offset for tp, offset in kafka_positions(positions).items()}
    return dict(positions.get("files") or {})


def to_json(record: dict) -> bytes:
    """JSON bytes of a record (non-string keys such as boolean classes become strings; bytes become text).

    >>> to_json({"probabilities": {True: 0.75}, "payload": b"{oops"})
    b'{"probabilities":{"true":0.75},"payload":"{oops"}'
    """
    return orjson.dumps(record, default=_json_default, option=orjson.OPT_NON_STR_KEYS)


def _json_default(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


# ---------------------------------------------------------------------------------------------
# The stateful learner: a learning unit per key
# ---------------------------------------------------------------------------------------------


class LoggedEvent(EventBatch):
    """One event of a key as its learning unit learns it: an `online.sources.EventBatch` of one, with what the DoFn
    keeps beside it.

    `partition` is where the event came from (``topic/partition`` or a file's path; None for Pub/Sub) and
    `next_position` where that source stands after it (the next offset, or the line): the unit's positions
    are the key's checkpoint positions (`checkpoint_positions`). `raw` is the event's JSON (a dead letter's
    value), `event_id` its ``events.id`` (the prediction record's ``id``) and `entry` its Beam log entry (kept
    logged at a checkpoint while its mini-batch chunk is incomplete). One event is never cut (`take`): the
    learning loop cuts only batches longer than the room left in a chunk.

    >>> event = LoggedEvent("events/0", {"x": 1}, 41, b'{"x":1}', None, b'["events/0",42,{"x":1}]')
    >>> len(event), event.values, event.next_position, event.reasons
    (1, [{'x': 1}], 42, mappingproxy({}))
    """

    reasons = types.MappingProxyType({})  # decoded by ParseEvents: nothing known bad (read only, shared)

    def __init__(self, partition: str | None, event: dict, before: int, raw: bytes, event_id: Any, entry: bytes):
        # by hand rather than EventBatch's dataclass __init__: one per event on the hot path, half the cost
        self.partition = partition
        self.values = [event]
        self.before = before
        self.raw = raw
        self.event_id = event_id
        self.entry = entry


def feed(unit: LearningUnit, event, source: tuple | None, raw: bytes, entry: bytes, id_field: str | None) -> Stepped:
    """Push one event into a key's unit (a `LoggedEvent` into its `online.sources.FedSource`) and step it: the
    event is learned now, or held until its mini-batch chunk is complete. `source` is ``(source, position)``."""
    event_id = event.get(id_field) if id_field is not None and type(event) is dict else None
    if source is None:
        unit.source.push(LoggedEvent(None, event, 0, raw, event_id, entry))
    else:
        unit.source.push(LoggedEvent(source[0], event, source[1] - 1, raw, event_id, entry))
    return unit.step()


class Tally:
    """What a DoFn instance's units output in the current bundle, counted here and added to Beam's counters once per
    bundle (`LearnStateFn.finish_bundle`): a Beam counter's ``inc`` costs about a microsecond, per call."""

    __slots__ = ("predicted", "learned", "rejected", "checkpoints")

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.predicted = self.learned = self.rejected = self.checkpoints = 0


class BeamOutputs:
    """The sinks of a key's learning unit (`online.learning.unit.Sinks`): what `LearnStateFn` yields.

    Prediction records (JSON bytes, with ``id`` for ``events.id``), dead letters (`dead_letter`, stage
    ``learn``, tagged ``dead_letter``) and one record per checkpoint written (tagged ``checkpoints``)
    are collected in order and counted (`Tally`); the DoFn `take`s them. `flush` answers the manifest fields of
    the key's checkpoint (the pipeline, the key and, from Kafka, `kafka_context`'s). While `replaying`
    (a learner rebuilt from Beam state: its logged events were output by the bundles that logged
    them) predictions and dead letters are dropped. Each batch is one `LoggedEvent`.
    """

    def __init__(self, key: Any, uri: str, kafka: bool, kafka_context: Callable[[dict], dict], tally: Tally):
        self.key = key
        self.uri = uri
        self.kafka = kafka
        self.kafka_context = kafka_context
        self.tally = tally
        self.replaying = False
        self.out: list = []

    def dead_letter(self, batch: LoggedEvent, index: int, reason: str, model: str | None = None) -> None:
        if not self.replaying:
            self.tally.rejected += 1
            self.out.append(beam.pvalue.TaggedOutput(DEAD_LETTER, dead_letter(batch.raw, reason, "learn")))

    def predictions(self, batch: LoggedEvent, outcomes: list) -> None:
        if self.replaying:
            return
        event_id, tally = batch.event_id, self.tally
        for _, prediction in outcomes:
            tally.predicted += 1
            if prediction.learned:
                tally.learned += 1
            self.out.append(to_json(prediction.record() if event_id is None else prediction.record(id=event_id)))

    def flush(self, positions: dict) -> dict:
        return {"pipeline": "stream-learn", "key": self.key, **self.kafka_context(checkpoint_positions(positions, self.kafka))}

    def commit(self, durable) -> None:
        self.tally.checkpoints += 1
        manifest = durable.manifest
        self.out.append(beam.pvalue.TaggedOutput(CHECKPOINTS, {"key": self.key, "id": manifest["id"], "uri": self.uri,
                                                               "events_seen": manifest["events_seen"], "events_learned": manifest["events_learned"]}))

    def take(self) -> list:
        """What was collected since the last `take`, in order."""
        out, self.out = self.out, []
        return out


class KeyUnit(LearningUnit):
    """A Beam key's learning unit (`online.learning.unit.LearningUnit`), fed `LoggedEvent`s one at a time: its
    checkpoints record stream-learn's positions (`checkpoint_positions`: Kafka offsets, or each file's line)."""

    def __init__(self, *args, kafka: bool, **kwargs):
        super().__init__(*args, **kwargs)
        self.kafka = kafka

    def checkpoint_positions(self) -> dict:
        return checkpoint_positions(self.positions, self.kafka)


@dataclasses.dataclass
class CachedLearner:
    """A key's learning unit in a DoFn instance: valid while Beam's committed `version` names `token`."""

    unit: KeyUnit  # the learner, its checkpointer (the events cadence, the save through the checkpoint bridge), positions, outputs
    token: str
    logged: int  # events logged since the snapshot in state (an incomplete chunk's held ones included)
    timer_set: str = ""  # the bundle (token) in which this instance saw the checkpoint timer set: no state read until the next


class LearnStateFn(beam.DoFn):
    """Predict, score and learn per model key with `online.learning.learner.Learner`; checkpoint on timers.

    Input ``(key, event)``; main output: prediction records as JSON bytes; tagged outputs
    ``dead_letter`` (events the learner refused, with the reason) and ``checkpoints`` (one record
    per checkpoint written). See the module docstring for the state layout and retries.
    """

    SNAPSHOT = userstate.ReadModifyWriteStateSpec("snapshot", BytesCoder())
    LOG = userstate.BagStateSpec("log", BytesCoder())
    VERSION = userstate.ReadModifyWriteStateSpec("version", TupleCoder([StrUtf8Coder(), VarIntCoder()]))
    POSITIONS = userstate.ReadModifyWriteStateSpec("positions", BytesCoder())  # JSON {"base": {...}, "files": {...}} at the snapshot
    TIMER_DUE = userstate.ReadModifyWriteStateSpec("timer_due", VarIntCoder())
    CHECKPOINT_TIMER = userstate.TimerSpec("checkpoint", TimeDomain.REAL_TIME)
    FLUSH_TIMER = userstate.TimerSpec("flush", TimeDomain.WATERMARK)

    def __init__(self, config: ConsumeJobConfig, settings: LearnSettings):
        self.config = config
        self.settings = settings
        self.learned = Metrics.counter("stream_learn", "events_learned")
        self.predicted = Metrics.counter("stream_learn", "events_predicted")
        self.rejected = Metrics.counter("stream_learn", "events_rejected_learn")
        self.replayed = Metrics.counter("stream_learn", "events_replayed")
        self.checkpoints = Metrics.counter("stream_learn", "checkpoints_written")
        self.skipped = Metrics.counter("stream_learn", "events_skipped_in_checkpoint")

    # -- life cycle -------------------------------------------------------------------------

    def setup(self):
        self._learners: collections.OrderedDict[Any, CachedLearner] = collections.OrderedDict()  # least recently used first
        self._token = ""
        self._spec = LearnerSpec.of(self.config)  # model, events, features, fitted transform: the daemon's hash
        self._id_field = self.config.events.id
        self._topic_ids: dict[str, str | None] = {}  # Kafka source topics' ids, for the checkpoints
        self._other_units: OtherUnits | None = None  # keyed: the units other jobs wrote, read once when a new key needs them
        self._tally = Tally()  # the units' outputs in this bundle, for the Beam counters

    def start_bundle(self):
        self._token = uuid.uuid4().hex
        self._tally.reset()  # a failed bundle's outputs are not counted

    def finish_bundle(self):
        tally = self._tally
        for counter, count in ((self.predicted, tally.predicted), (self.learned, tally.learned), (self.rejected, tally.rejected),
                               (self.checkpoints, tally.checkpoints)):
            if count:
                counter.inc(count)
        tally.reset()

    # -- learners ---------------------------------------------------------------------------

    def new_learner(self, key: Any, store: CheckpointStore | None = None):
        """A learner for a key Beam has no state for, and the checkpoint it continues (None for a fresh one).

        Through the checkpoint bridge: a checkpoint of another configuration, or unsigned while a
        signing key is set, is refused.
        """
        if self.settings.from_checkpoint:
            learner, checkpoint = resume(store or self.store(key), self._spec)
            if checkpoint is not None:
                log.info("key %r starts from checkpoint %s", key, checkpoint.id)
            elif key != GLOBAL_KEY:  # a key its unit does not hold: the other units' model of it (online.checkpoints.units)
                if self._other_units is None:
                    check_layout(self.config.checkpoint.uri)
                    self._other_units = OtherUnits(open_checkpoint_store(self.config.checkpoint), self._spec.restore)
                found = self._other_units.model_of_beam_key(key)
                if found is not None:
                    learner.state.models[found[0]] = found[1]
                    log.info("key %r starts from another unit's model", key)
            return learner, checkpoint
        return self._spec.new_learner(), None

    def store(self, key: Any) -> CheckpointStore:
        """The key's store, from the ``checkpoint:`` section. One per cached learner: it learns ``LATEST``'s
        generation when the key starts (or at its first save), so only a concurrent writer is fenced out."""
        return open_checkpoint_store(self.config.checkpoint, checkpoint_uri(self.config.checkpoint.uri, key))

    def learner_for(self, key, snapshot_state, log_state, version_state, positions_state) -> CachedLearner:
        """The key's learning unit, rebuilt from committed state when the cache is missing or stale."""
        cached = self._learners.get(key)
        if cached is not None and cached.token == self._token:  # it wrote this bundle's version: nothing to read
            self._learners.move_to_end(key)
            return cached
        version = version_state.read()
        if cached is not None and version is not None and cached.token == version[0]:
            self._learners.move_to_end(key)
            return cached
        store = self.store(key)
        logged = 0
        if version is None:  # a key this job has never seen: start it and record where it started
            learner, checkpoint = self.new_learner(key, store)
            snapshot_state.write(learner.snapshot())
            base = dict(checkpoint.positions) if checkpoint is not None else {}
            context = position_context(checkpoint.manifest) if checkpoint is not None else {}  # carried with the base positions
            learned = source_positions_of(base, self.settings.kafka_positions)
            if base:
                positions_state.write(orjson.dumps({"base": base, "files": learned, "context": context}))
            unit = self.unit_of(key, learner, store, base, context, learned)
        else:  # the snapshot, then the events logged since, through the unit (a retried bundle's never were)
            learner = Learner.restore(snapshot_state.read(), self._spec.model, self._spec.events, transform=self._spec.transform)
            recorded = orjson.loads(positions_state.read() or b"{}")
            unit = self.unit_of(key, learner, store, recorded.get("base") or {}, recorded.get("context") or {}, recorded.get("files") or {})
            unit.sinks.replaying = True
            for entry in log_state.read():  # mini-batch: the log starts at a chunk boundary, an incomplete chunk is held again
                event, source = orjson.loads(entry), None
                if type(event) is list:  # [source, position, event] from the files or Kafka source
                    *source, event = event
                feed(unit, event, source, entry if source is None else orjson.dumps(event), entry, self._id_field)
                logged += 1
            unit.sinks.replaying = False
            self.replayed.inc(logged)
            if logged != version[1]:
                log.warning("key %r: replayed %d logged events, state says %d", key, logged, version[1])
        cached = self._learners[key] = CachedLearner(unit, "", logged)
        self._learners.move_to_end(key)
        while len(self._learners) > self.settings.cached_learners:
            self._learners.popitem(last=False)
        return cached

    def unit_of(self, key: Any, learner: Learner, store: CheckpointStore, base: dict, context: dict, learned: dict) -> KeyUnit:
        """A key's learning unit: `learner`, a checkpointer on the key's store (the checkpoint it started from: `base`
        positions and their `context`), where its sources stand (`learned`) and `BeamOutputs`. It checkpoints when
        `checkpoint` says so, with the snapshot kept in Beam state."""
        cadence = Cadence(self.settings.every_events, self.settings.every_seconds, clock=self.settings.clock)
        checkpointer = Checkpointer(store, learner, self._spec, cadence, base_positions=base, base_context=context)
        outputs = BeamOutputs(key, store.uri, self.settings.kafka_positions, self.kafka_context, self._tally)
        unit = KeyUnit(f"key={key}", FedSource(), [("model", learner)], outputs, checkpointer, predictions=True,
                       checkpoint_when_due=False, kafka=self.settings.kafka_positions)
        unit.seek(learned)
        return unit

    # -- the hot path -----------------------------------------------------------------------

    def process(
        self,
        element,
        snapshot_state=beam.DoFn.StateParam(SNAPSHOT),
        log_state=beam.DoFn.StateParam(LOG),
        version_state=beam.DoFn.StateParam(VERSION),
        timer_due=beam.DoFn.StateParam(TIMER_DUE),
        checkpoint_timer=beam.DoFn.TimerParam(CHECKPOINT_TIMER),
        flush_timer=beam.DoFn.TimerParam(FLUSH_TIMER),
        positions_state=beam.DoFn.StateParam(POSITIONS),
    ):
        key, event = element
        cached = self.learner_for(key, snapshot_state, log_state, version_state, positions_state)
        if cached.token == "":  # first event of this key in this DoFn instance: end-of-input checkpoint
            flush_timer.set(GlobalWindow().max_timestamp())
        unit = cached.unit
        source = None
        if type(event) is dict:  # a Beam element is read-only (another transform may read the same object): the learner consumes a copy
            event = dict(event)
            source = event.pop(SOURCE_FIELD, None)
        if source is not None and source[1] <= unit.positions.get(source[0], 0):  # in the checkpoint already (a rerun over the same files)
            self.skipped.inc()
            return
        raw = orjson.dumps(event)
        entry = raw if source is None else orjson.dumps(source)[:-1] + b"," + raw + b"]"  # the position travels in the log entry
        log_state.add(entry)
        cached.logged += 1
        cached.token = self._token
        version_state.write((self._token, cached.logged))
        stepped = feed(unit, event, source, raw, entry, self._id_field)  # learned (consumes the event dict), or held
        yield from unit.sinks.take()
        if stepped.consumed and unit.checkpoint_due:  # mini-batch: checkpoints fall between chunks
            yield from self.checkpoint(key, cached, snapshot_state, log_state, version_state, positions_state)
        elif cached.timer_set != self._token:
            if not timer_due.read():
                checkpoint_timer.set(Timestamp.of(self.settings.clock() + self.settings.every_seconds))
                timer_due.write(1)
            cached.timer_set = self._token

    # -- checkpoints ------------------------------------------------------------------------

    def checkpoint(self, key, cached: CachedLearner, snapshot_state, log_state, version_state, positions_state):
        """Move the learner's snapshot (and its source positions) into state, empty the log, and checkpoint the unit
        with the same snapshot (`online.learning.unit.LearningUnit.checkpoint`); yields the checkpoint's record."""
        unit = cached.unit
        blob = unit.learner.snapshot()
        snapshot_state.write(blob)
        log_state.clear()
        held = unit.loop.held.parts if unit.loop.held is not None else []
        for event in held:  # mini-batch: an incomplete chunk is not in the snapshot: it stays logged
            log_state.add(event.entry)
        learned = source_positions(unit.positions)
        checkpointer = unit.checkpointer
        if learned:
            positions_state.write(orjson.dumps({"base": checkpointer.base_positions, "files": learned, "context": checkpointer.base_context}))
        cached.logged = len(held)
        cached.token = self._token
        version_state.write((self._token, cached.logged))
        try:
            unit.checkpoint(wait=True, state=blob)
        except FencingError:
            log.warning("key %r: another writer moved the latest checkpoint at %s; the bundle is retried", key, checkpointer.store.uri)
            raise
        yield from unit.sinks.take()

    def kafka_context(self, positions: dict) -> dict:
        """What a checkpoint with Kafka offsets holds besides them (`online.checkpoints.store.KAFKA_CONTEXT`), so that the
        daemon takes it over: the source topics' ids (looked up once per DoFn instance, with the daemon's client);
        no output offsets and nothing written ahead (this job's outputs are Beam's, at least once)."""
        topics = sorted({tp[0] for tp in kafka_positions(positions)})
        if not topics:
            return {}
        unknown = [topic for topic in topics if topic not in self._topic_ids]
        if unknown:
            from online.kafka_clients import make_consumer

            consumer = make_consumer(self.config.kafka, group=False)
            try:
                self._topic_ids.update({topic: consumer.topic_id(topic) for topic in unknown})
            finally:
                consumer.close()
        return {"topic_ids": {topic: self._topic_ids[topic] for topic in topics}, "outputs": {}, "outputs_ahead": {}}

    @userstate.on_timer(CHECKPOINT_TIMER)
    def on_checkpoint_timer(
        self,
        key=beam.DoFn.KeyParam,
        snapshot_state=beam.DoFn.StateParam(SNAPSHOT),
        log_state=beam.DoFn.StateParam(LOG),
        version_state=beam.DoFn.StateParam(VERSION),
        timer_due=beam.DoFn.StateParam(TIMER_DUE),
        positions_state=beam.DoFn.StateParam(POSITIONS),
    ):
        """Every ``every_seconds`` of processing time while a key receives events."""
        timer_due.clear()
        cached = self._learners.get(key)
        if cached is not None:  # the next event of this bundle sets it again
            cached.timer_set = ""
        yield from self._checkpoint_if_new(key, snapshot_state, log_state, version_state, positions_state)

    @userstate.on_timer(FLUSH_TIMER)
    def on_flush_timer(
        self,
        key=beam.DoFn.KeyParam,
        snapshot_state=beam.DoFn.StateParam(SNAPSHOT),
        log_state=beam.DoFn.StateParam(LOG),
        version_state=beam.DoFn.StateParam(VERSION),
        positions_state=beam.DoFn.StateParam(POSITIONS),
    ):
        """At the end of the input (a bounded source, or a drained streaming job): the last, short chunk is learned too."""
        yield from self._checkpoint_if_new(key, snapshot_state, log_state, version_state, positions_state, final=True)

    def _checkpoint_if_new(self, key, snapshot_state, log_state, version_state, positions_state, final: bool = False):
        version = version_state.read()
        if version is None or version[1] == 0:
            return
        cached = self.learner_for(key, snapshot_state, log_state, version_state, positions_state)
        if final:
            cached.unit.flush()  # mini-batch: the last, short chunk
            yield from cached.unit.sinks.take()
        yield from self.checkpoint(key, cached, snapshot_state, log_state, version_state, positions_state)


class LearnStateful(beam.PTransform):
    """``(key, event)`` into prediction records (JSON bytes); outputs ``dead_letter`` and ``checkpoints`` too."""

    def __init__(self, config: ConsumeJobConfig, settings: LearnSettings):
        super().__init__()
        self.config = config
        self.settings = settings

    def expand(self, keyed_events):
        return keyed_events | "Learn" >> beam.ParDo(LearnStateFn(self.config, self.settings)).with_outputs(
            DEAD_LETTER, CHECKPOINTS, main="predictions"
        )


# ---------------------------------------------------------------------------------------------
# Sources and sinks
# ---------------------------------------------------------------------------------------------


def numbered_lines(readable) -> typing.Iterator[tuple[str, int, bytes]]:
    """``(path, line number, line)`` for each non-blank line of a matched file, in order (``.gz`` decompressed).

    A file is read whole, by one call, so a key learns its lines in file order: what the
    checkpoint's ``positions["files"]`` (the last line learned per file) relies on.
    """
    path = readable.metadata.path
    with readable.open() as handle:
        for number, line in enumerate(handle, start=1):
            line = line.rstrip(b"\r\n")
            if line.strip():
                yield path, number, line


class ReadEvents(beam.PTransform):
    """Raw event records (bytes) from Kafka (the config's ``kafka`` section), Pub/Sub or JSON-lines files.

    The files source yields ``(path, line, bytes)`` (`numbered_lines`) and Kafka ``(topic/partition,
    next offset, bytes)`` (`kafka_record`), so positions reach the checkpoint.

    ``ReadFromKafka`` is cross-language: it needs Dataflow, Flink or another portable runner with
    the Java expansion service (`pipelines.java_services.read_from_kafka`: riverbeam's own on an
    embedded Flink); `max_records` bounds it. The ``consumer`` settings of a
    kafka-python configuration (``auto_offset_reset``) reach Java's consumer under its names
    (``auto.offset.reset``). Tests put a ``TestStream`` or ``beam.Create`` in place of this transform.
    """

    def __init__(self, config: ConsumeJobConfig, source: str = "kafka", subscription: str | None = None, pattern: str | None = None,
                 max_records: int | None = None):
        super().__init__()
        if source not in SOURCES:
            raise UsageError(f"--learn_source: {source!r} is not one of {', '.join(SOURCES)}")
        if source == "pubsub" and not subscription:
            raise UsageError("--learn_subscription is required when --learn_source=pubsub")
        if source == "files" and not pattern:
            raise UsageError("--learn_input is required when --learn_source=files")
        if max_records is not None and max_records <= 0:
            raise UsageError(f"--learn_max_records: {max_records} must be positive")
        self.config = config
        self.source = source
        self.subscription = subscription
        self.pattern = pattern
        self.max_records = max_records

    def expand(self, pbegin):
        if self.source == "pubsub":
            from apache_beam.io.gcp.pubsub import ReadFromPubSub

            return pbegin | "ReadFromPubSub" >> ReadFromPubSub(subscription=self.subscription)
        if self.source == "files":
            from apache_beam.io import fileio

            return (
                pbegin
                | "MatchFiles" >> fileio.MatchFiles(self.pattern)
                | "ReadMatches" >> fileio.ReadMatches()
                | "NumberedLines" >> beam.FlatMap(numbered_lines)
            )
        from pipelines.java_services import embedded_flink, java_consumer_key, read_from_kafka

        kafka = self.config.kafka
        consumer = {java_consumer_key(str(k), kafka.client): str(v) for k, v in kafka.consumer.items()}
        consumer.update({"bootstrap.servers": kafka.bootstrap_servers, "group.id": kafka.group_id})
        # Committing offsets needs Flink's checkpointing (@RequiresStableInput), and an embedded Flink's checkpoints die
        # with it: there the checkpoint's positions are the only record, and a rerun skips what they hold (as with files).
        # So nothing may move the group's offsets past them: Java's consumer auto-commits what it has read by default,
        # and a rerun after a kill would start there, losing what was read but not yet checkpointed.
        commit = not embedded_flink(pbegin.pipeline.options)
        if not commit:
            consumer["enable.auto.commit"] = "false"
        reader = read_from_kafka(pbegin.pipeline.options, consumer_config=consumer, topics=kafka.source_topics, commit_offset_in_finalize=commit,
                                 with_metadata=True, max_num_records=self.max_records)
        return pbegin | "ReadFromKafka" >> reader | "RecordPositions" >> beam.Map(kafka_record)


def kafka_record(record) -> tuple[str, int, bytes]:
    """``(topic/partition, next offset, value)`` of a Kafka record read with metadata: where the daemon would resume after it."""
    return position_key((record.topic, record.partition)), int(record.offset) + 1, record.value


class WriteRecords(beam.PTransform):
    """JSON-bytes records to a Kafka topic, a Pub/Sub topic and/or JSON-lines files (whichever are set)."""

    def __init__(self, kafka_servers: str | None = None, kafka_topic: str | None = None, pubsub_topic: str | None = None, path: str | None = None):
        super().__init__()
        self.kafka_servers = kafka_servers
        self.kafka_topic = kafka_topic
        self.pubsub_topic = pubsub_topic
        self.path = path

    def expand(self, records):
        if self.kafka_topic:
            from apache_beam.io.kafka import WriteToKafka

            from pipelines.java_services import kafka_expansion_service

            service = kafka_expansion_service(records.pipeline.options)  # riverbeam's on an embedded Flink, else Beam's
            (
                records
                | "KafkaRecords" >> beam.Map(lambda value: (b"", value)).with_output_types(tuple[bytes, bytes])
                | "WriteToKafka" >> WriteToKafka(producer_config={"bootstrap.servers": self.kafka_servers}, topic=self.kafka_topic,
                                                 expansion_service=service)
            )
        if self.pubsub_topic:
            from apache_beam.io.gcp.pubsub import WriteToPubSub

            records | "WriteToPubSub" >> WriteToPubSub(self.pubsub_topic)
        if self.path:
            from apache_beam.io import WriteToText

            records | "Text" >> beam.Map(lambda value: value.decode("utf-8")) | "WriteToText" >> WriteToText(self.path, file_name_suffix=".jsonl")
        return beam.pvalue.PDone(records.pipeline)


# ---------------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------------


def build_stream_learn(
    pipeline: beam.Pipeline,
    config: ConsumeJobConfig,
    settings: LearnSettings,
    source: beam.PTransform,
) -> dict[str, Any]:
    """Add ParseEvents → KeyByModelKey → LearnStateful to `pipeline`, reading with `source`.

    Returns the ``predictions`` (JSON bytes), ``dead_letters`` (dead-letter records, `dead_letter`)
    and ``checkpoints`` (one dict per checkpoint written) collections.
    """
    if config.events.key is not None and settings.from_checkpoint:
        check_layout(config.checkpoint.uri)  # keyed checkpoints in a layout before units: one line before the job starts
    payloads = pipeline | "ReadEvents" >> source
    parsed = payloads | "ParseEvents" >> ParseEvents(config.events.key, registry_decoding(config))
    keyed = parsed.events | "KeyByModelKey" >> KeyByModelKey(config.events.key)
    learned = keyed | "LearnStateful" >> LearnStateful(config, settings)
    dead_letters = (parsed[DEAD_LETTER], learned[DEAD_LETTER]) | "DeadLetters" >> beam.Flatten()
    return {"predictions": learned.predictions, "dead_letters": dead_letters, "checkpoints": learned[CHECKPOINTS]}


def default_runner(source: str) -> str:
    """The explicit, download-free local runner (never Prism): FnApiRunner for files, else the bundle-based DirectRunner.

    >>> default_runner("files"), default_runner("pubsub")
    ('FnApiRunner', 'BundleBasedDirectRunner')
    """
    return "FnApiRunner" if source == "files" else "BundleBasedDirectRunner"


def run(argv: list[str] | None = None):
    """Build and run the stream-learn pipeline from command-line flags; returns the PipelineResult.

    Local runs and the bounded files source are waited for; a streaming job submitted to
    Dataflow or Flink is not (the launcher, e.g. a flex template's, must return).
    """
    options = configure_filesystems(PipelineOptions(argv))  # s3:// through Beam's S3 filesystem, at the configured endpoint
    view = options.view_as(StreamLearnOptions)
    check_required(options, StreamLearnOptions)
    standard = options.view_as(StandardOptions)
    config = read_job_config(view.learn_config)
    settings = learn_settings(config, view)
    if standard.runner in (None, "DirectRunner"):
        standard.runner = default_runner(view.learn_source)
    if view.learn_source == "kafka" and standard.runner in LOCAL_RUNNERS:
        raise UsageError("the kafka source needs Kafka's Java expansion service: pass --runner=DataflowRunner or --runner=FlinkRunner "
                         "(or --learn_source=files to learn from JSON-lines files locally)")
    if view.learn_source != "files":
        standard.streaming = True
    predictions_topic = view.learn_predictions_topic if view.learn_source == "pubsub" else None
    dead_letter_topic = view.learn_dead_letter_topic if view.learn_source == "pubsub" else None
    kafka = config.kafka if view.learn_source == "kafka" else None
    if view.learn_source == "files" and not view.learn_output:
        raise UsageError("--learn_output is required when --learn_source=files")
    source = ReadEvents(config, view.learn_source, view.learn_subscription, view.learn_input, view.learn_max_records)
    pipeline = beam.Pipeline(options=options)
    outputs = build_stream_learn(pipeline, config, settings, source)
    output = view.learn_output.rstrip("/") if view.learn_output else None
    outputs["predictions"] | "WritePredictions" >> WriteRecords(
        kafka.bootstrap_servers if kafka else None, kafka.predictions_topic if kafka else None, predictions_topic,
        f"{output}/predictions" if output else None,
    )
    (
        outputs["dead_letters"]
        | "DeadLetterJson" >> beam.Map(to_json)
        | "WriteDeadLetters" >> WriteRecords(
            kafka.bootstrap_servers if kafka else None, kafka.dead_letter_topic if kafka else None, dead_letter_topic,
            f"{output}/dead_letter" if output else None,
        )
    )
    result = pipeline.run()
    if waits_for_result(standard.runner, options.view_as(PortableOptions).environment_type) or view.learn_source == "files":
        result.wait_until_finish()  # a local runner, or an embedded Flink: the job lives in this process
    return result


if __name__ == "__main__":
    import sys

    logging.getLogger().setLevel(logging.INFO)
    sys.exit(run_main(run, prog="pipelines.stream_learn"))
