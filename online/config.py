"""Typed configuration of the online jobs (consume, replay, serve) and their sections: model, events,
checkpoints, Kafka, metrics; `job_config_class` gives a job kind's class (the API and ``config check``).

Every section is a strict `core.configuration.Section`: unknown keys and wrong types
are errors naming the key path.

>>> from core.configuration import parse_config
>>> job = parse_config({"model": {"pipeline": [{"linear_model.LogisticRegression": {}}]},
...                     "events": {"target": "label"}}, ReplayJobConfig, environ={})
>>> job.model.metrics, job.events.target
(['Accuracy'], 'label')
"""

from __future__ import annotations

from typing import Any, Literal

import pydantic

from core.configuration import Section
from core.errors import ConfigError, ConfigErrorCollector
from core.storage import InvalidUri, parse_uri

KAFKA_CLIENTS = ("kafka-python", "confluent-kafka")
LEASE_RENEWALS = 3  # renewals per lease period
LEASE_MIN_SECONDS = 1.5


class DriftConfig(Section):
    """Drift detection on the headline metric's errors (0/1 for classifiers, |error| for regressors)."""

    detector: str = "drift.ADWIN"
    params: dict[str, Any] = {}


class BatchConfig(Section):
    """Mini-batch learning: chunks of `size` events, each predicted then learned at once (River's ``*_many``)."""

    size: int = pydantic.Field(gt=0)


class ModelConfig(Section):
    """A River pipeline, its metrics and optional drift detection.

    `pipeline` is a list of one-key mappings ``{"module.Class": {param: value}}`` resolved inside
    the `river` package, or in a module the user lists in `custom_modules` (their own estimators
    and transformers, deriving from `river.base.Base`); a parameter may itself be such a mapping
    (nested estimators, optimizers), a class's ``*args`` a list under their name (``compose.Select:
    {keys: [a, b]}``), and a function ``module:function`` from a listed module (the same list
    allows ``features.function``). Nothing else is importable from configuration. `metrics` names `river.metrics` classes, or windows over the last N events
    (``{Rolling: {metric: Accuracy, window_size: 500}}``, see `online.models.build_metric`);
    the first is the headline.
    """

    name: str | None = None
    custom_modules: list[str] = []  # the user's modules: their River classes and functions may be named
    pipeline: list[dict[str, dict[str, Any] | None]] = pydantic.Field(min_length=1)
    metrics: list[str | dict[str, dict[str, Any]]] = pydantic.Field(default=["Accuracy"], min_length=1)
    drift: DriftConfig | None = None
    batch: BatchConfig | None = None  # mini-batch learning (off: one event at a time)

    def check_semantics(self) -> None:
        """Resolve the River names (`ConfigError` with a path relative to this section)."""
        from online.models import build_model

        build_model(self, path="")
        check_drift_detector(self, path="")
        check_batch(self, path="")


def mini_batch_estimators() -> list[str]:
    """River estimators that learn from a mini-batch (``learn_many``), by configuration name.

    >>> "linear_model.LogisticRegression" in mini_batch_estimators()
    True
    """
    import importlib
    import inspect
    import pkgutil

    import river

    names = []
    for module in pkgutil.iter_modules(river.__path__):
        if module.name in ("base", "compose", "api", "utils", "datasets", "stream", "evaluate", "metrics") or module.name.startswith("_"):
            continue
        try:
            loaded = importlib.import_module(f"river.{module.name}")
        except Exception:  # an optional dependency missing: not offered
            continue
        for name in getattr(loaded, "__all__", []):
            obj = getattr(loaded, name, None)
            if inspect.isclass(obj) and hasattr(obj, "learn_many"):
                names.append(f"{module.name}.{name}")
    return sorted(names)


def check_batch(model: "ModelConfig", path: str = "model", estimator: Any = None) -> None:
    """With ``batch``, every step of the pipeline must learn from a mini-batch (`ConfigError` naming the step).

    >>> check_batch(ModelConfig(pipeline=[{"linear_model.LogisticRegression": {}}], batch={"size": 10}))
    >>> check_batch(ModelConfig(pipeline=[{"preprocessing.StandardScaler": {}}, {"tree.HoeffdingTreeClassifier": {}}], batch={"size": 10}))
    Traceback (most recent call last):
    ...
    core.errors.ConfigError: model.pipeline[1]: tree.HoeffdingTreeClassifier cannot learn a mini-batch (no learn_many), so model.batch cannot be used; estimators that can: ...
    """
    if model.batch is None:
        return
    from core.errors import ConfigError
    from online.models import build_object

    prefix = f"{path}." if path else ""
    for i, step in enumerate(model.pipeline):
        obj = build_object(step, f"{prefix}pipeline[{i}]", model.custom_modules) if estimator is None else list(_steps(estimator))[i]
        if not hasattr(obj, "learn_many"):
            raise ConfigError(
                f"{prefix}pipeline[{i}]",
                f"{next(iter(step))} cannot learn a mini-batch (no learn_many), so {prefix}batch cannot be used; "
                f"estimators that can: {', '.join(mini_batch_estimators())}",
            )


def _steps(estimator: Any):
    from river import compose

    return estimator.steps.values() if isinstance(estimator, compose.Pipeline) else [estimator]


def check_drift_detector(model: "ModelConfig", path: str = "model") -> Any:
    """The model's drift detector, built and checked to be one (`ConfigError` naming ``drift.detector``), or None."""
    if model.drift is None:
        return None
    from river import base

    from core.errors import ConfigError
    from online.models import build_object

    where = f"{path}.drift.detector" if path else "drift.detector"
    detector = build_object({model.drift.detector: model.drift.params}, where)
    if not isinstance(detector, base.DriftDetector):
        raise ConfigError(where, f"{model.drift.detector} is not a drift detector (use one of river.drift, e.g. drift.ADWIN)")
    return detector


class DelayedLabelsConfig(Section):
    """Bounds on predictions kept while waiting for their labels (needs `events.id`)."""

    max_pending: int = pydantic.Field(default=100_000, gt=0)
    ttl_seconds: float = pydantic.Field(default=3600.0, gt=0)


class EventsConfig(Section):
    """Which fields of an event are the label, the model key, the id, the time and the features."""

    target: str | None = None
    key: str | None = None
    id: str | None = None
    time: str | None = None
    exclude: list[str] = []
    features: list[str] | None = None
    categorical: list[str] = []
    delayed_labels: DelayedLabelsConfig = DelayedLabelsConfig()
    # A feature or numeric label beyond this (absolute value) makes the event a dead letter: a finite
    # 1e308 passes the finite check but overflows the model's sums and ruins it for good.
    max_abs_value: float | None = pydantic.Field(default=None, gt=0)
    # A classifier's labels, declared: any other label is a dead letter (without it, the first label
    # learned fixes the type family: text, or booleans and integers; see label_family below).
    labels: list[bool | int | str] | None = pydantic.Field(default=None, min_length=1)
    # Per-key models (`key` set): at most this many stay in memory, the others wait pickled in a local
    # RocksDB (online.learning.keyed_state); it changes memory and speed, never what is learned (not in the config hash).
    key_cache_size: int = pydantic.Field(default=100_000, ge=2)
    # Drop a key's model once it has not been used for this long (processing clock); counted as models_expired.
    key_ttl_seconds: float | None = pydantic.Field(default=None, gt=0)
    # A run whose dead letters exceed this fraction of its events fails (exit 1) once its summary is
    # printed (core.summary.learning_failure); 1.0 fails only a run that refused every event.
    # Judges a run, never changes what is learned (not in the config hash).
    max_dead_letter_fraction: float = pydantic.Field(default=0.5, gt=0, le=1)

    def run_failure(self, counts: dict[str, int], *, learns: bool = True, fields_seen: list[str] | None = None,
                    first_reason: str | None = None) -> str | None:
        """Why a run with these counts did not do its job under these settings (`core.summary.learning_failure`)."""
        from core.summary import learning_failure

        return learning_failure(counts, target=self.target, max_dead_letter_fraction=self.max_dead_letter_fraction, learns=learns,
                                labels_may_come_later=self.id is not None, fields_seen=fields_seen, first_reason=first_reason)

    @pydantic.field_validator("labels", mode="before")
    @classmethod
    def _labels_of_one_family(cls, value: Any) -> Any:
        if type(value) is not list:
            return value  # None, or the type error of a list
        for label in value:
            if type(label) not in (str, int, bool):
                raise ValueError(f"a label is text, an integer or true/false, got {label!r}")
        if len(set(value)) != len(value):  # true and 1 are one label, as in Python and River
            raise ValueError(f"each label once (true is 1 and false is 0), got {value!r}")
        families = {label_family(label) for label in value}
        if len(families) > 1:
            raise ValueError(f"labels must all be text or all booleans/integers (a classifier compares them), got {value!r}")
        return value


def label_errors(labels: list, models: list[tuple[str, "ModelConfig"]]) -> list:
    """``events.labels`` against each model (`check_labels`), as errors; a model that does not build is left to its own error."""
    from core.errors import ConfigError
    from online.models import build_pipeline

    errors = []
    for path, model in models:
        try:
            estimator = build_pipeline(model.pipeline, f"{path}.pipeline", model.custom_modules)
        except ConfigError:
            continue
        try:
            check_labels(labels, estimator, path)
        except ConfigError as error:
            errors.append(error)
    return errors


def check_labels(labels: list | None, estimator: Any, path: str | None = None) -> None:
    """Declared labels (``events.labels``) must fit the model (`ConfigError` naming the key): only a
    classifier's, and a binary classifier's within true/false/1/0. `path` names the model (else "this model").

    >>> from river import linear_model
    >>> check_labels(["spam", "ham"], linear_model.LogisticRegression())
    Traceback (most recent call last):
    ...
    core.errors.ConfigError: events.labels: this model is a binary classifier (true/false or 1/0): ["spam", "ham"] cannot all be learned
    """
    if labels is None:
        return
    import json

    from river import base

    from core.errors import ConfigError

    model = "this model" if path in (None, "model") else path
    if not isinstance(estimator, base.Classifier):
        raise ConfigError("events.labels", f"declares a classifier's labels, but {model} is not a classifier: unset it")
    if not estimator._multiclass and any(label not in (0, 1) for label in labels):
        raise ConfigError("events.labels", f"{model} is a binary classifier (true/false or 1/0): {json.dumps(labels)} cannot all be learned")


def label_family(label: Any) -> str:
    """A classifier label's type family: ``"text"`` (strings) or ``"number"`` (booleans and integers).

    River's classifiers compare and sort their labels (trees do): labels of one family compare,
    text against a boolean raises ``TypeError``. So a classifier's labels must all be of one family.

    >>> label_family("spam"), label_family(True), label_family(3)
    ('text', 'number', 'number')
    """
    return "text" if type(label) is str else "number"


class FeaturesConfig(Section):
    """What happens to an event's fields before the model: a user function, then fitted transforms.

    `function` (``module:function``) is the user's own feature code: a callable taking the event's
    features (a dict) and returning a dict; it runs first, and must be defined in a module listed
    in ``model.custom_modules`` (checked with the job, `check_feature_function`). `transform_output`
    is the output directory of `riverbeam preprocess`, whose fitted transforms run next.
    """

    transform_output: str | None = None
    function: str | None = None  # "module:function", dict -> dict, applied to each event before the fitted transform

    @pydantic.field_validator("function")
    @classmethod
    def _module_colon_function(cls, value: str | None) -> str | None:
        if value is not None and (value.count(":") != 1 or not all(value.split(":"))):
            raise ValueError(f"expected module:function (for example myfeatures:derive), got {value!r}")
        return value


def user_modules(models: list["ModelConfig"]) -> list[str]:
    """The modules a job lists for the user's code: every model's ``custom_modules``, once each.

    >>> user_modules([ModelConfig(custom_modules=["a"], pipeline=[{}]), ModelConfig(custom_modules=["a", "b"], pipeline=[{}])])
    ['a', 'b']
    """
    return list(dict.fromkeys(m for model in models for m in model.custom_modules))


def check_job(
    models: list[tuple[str, "ModelConfig"]],
    events: "EventsConfig | None",
    features: "FeaturesConfig | None" = None,
    kafka: "KafkaConfig | None" = None,
    checkpoint: "CheckpointConfig | None" = None,
) -> None:
    """What a job's sections mean together, beyond their types: every mistake at once, each naming its key path.

    An events.key that is the label, mini-batch learning with delayed labels, an output topic that is
    the source (the job would read its own dead letters or predictions), a fitted transform or a
    checkpoint bucket that is not there. The runtime refuses or gets these wrong, so ``config check``
    and every job's start refuse them first.

    >>> check_job([("model", ModelConfig(pipeline=[{"linear_model.LogisticRegression": {}}], batch={"size": 8}))],
    ...           EventsConfig(target="label", key="label", id="id"),
    ...           kafka=KafkaConfig(topic="events", dead_letter_topic="events"))
    Traceback (most recent call last):
    ...
    core.errors.ConfigErrors: events.key: is the label (events.target = 'label'): each label would pick its own model, which never sees another label
    model.batch: mini-batch learning does not join delayed labels (events.id): unset one of them
    kafka.dead_letter_topic: 'events' is the source topic: the job would read its own dead letters back (and nest them for ever)
    """
    from core.errors import ConfigError, config_error

    errors: list[ConfigError] = []
    if events is not None:
        if events.key is not None and events.key == events.target:
            errors.append(ConfigError("events.key", f"is the label (events.target = {events.target!r}): each label would pick its own model, which never sees another label"))
        if events.id is not None:
            errors += [ConfigError(f"{path}.batch", "mini-batch learning does not join delayed labels (events.id): unset one of them")
                       for path, model in models if model.batch is not None]  # fmt: skip
        if events.labels is not None:
            errors += label_errors(events.labels, models)
    if kafka is not None:
        for key, what in (("dead_letter_topic", "dead letters"), ("predictions_topic", "predictions")):
            output = getattr(kafka, key)
            if output is not None and output in kafka.source_topics:
                errors.append(ConfigError(f"kafka.{key}", f"{output!r} is the source topic: the job would read its own {what} back (and nest them for ever)"))
    if kafka is not None:
        errors += client_option_errors(kafka)
    if features is not None and features.transform_output:
        errors += _missing("features.transform_output", features.transform_output, "the output of riverbeam preprocess")
    if checkpoint is not None:
        errors += _missing("checkpoint.uri", checkpoint.uri, None, probe="LATEST")
    if errors:
        raise config_error(errors)


def client_option_errors(kafka: "KafkaConfig") -> list:
    """kafka-python's options in ``kafka.consumer`` / ``kafka.producer`` checked as the client will take them:
    a name it knows, not one riverbeam sets, a value of the type of its default (``session_timeout_ms: "abc"``).

    confluent-kafka (librdkafka) checks names and values itself when the client is built, at start.

    >>> [str(e) for e in client_option_errors(KafkaConfig(topic="t", consumer={"session_timeout_ms": "abc", "check_crcs": 1}, producer={"acks": "banana"}))]
    ["kafka.consumer.session_timeout_ms: expected an integer, got 'abc'", 'kafka.consumer.check_crcs: expected true or false, got 1', 'kafka.producer.acks: riverbeam always produces with acks=all']
    """
    if kafka.client != "kafka-python":
        return []
    from kafka import KafkaConsumer, KafkaProducer

    from core.errors import ConfigError
    from online.kafka_clients.base import check_options
    from online.kafka_clients.kafka_python import CONSUMER_MANAGED, PRODUCER_MANAGED

    errors = []
    for section, client, managed in (("consumer", KafkaConsumer, CONSUMER_MANAGED), ("producer", KafkaProducer, PRODUCER_MANAGED)):
        for key, value in getattr(kafka, section).items():
            try:
                check_options({key: value}, known=client.DEFAULT_CONFIG, managed=managed, section=section, client="kafka-python")
            except ConfigError as error:
                errors.append(error)
                continue
            default = client.DEFAULT_CONFIG[key]
            if isinstance(default, bool):
                expected = "true or false" if not isinstance(value, bool) else None
            elif isinstance(default, (int, float)):
                wrong = isinstance(value, bool) or not isinstance(value, (int, float)) or (type(default) is int and not isinstance(value, int))
                expected = ("an integer" if type(default) is int else "a number") if wrong else None
            elif isinstance(default, str):
                expected = "a string" if not isinstance(value, str) else None
            elif isinstance(default, (list, tuple)):
                expected = "a list" if not isinstance(value, list) else None
            else:
                expected = None
            if expected is not None:
                errors.append(ConfigError(f"kafka.{section}.{key}", f"expected {expected}, got {value!r}"))
    return errors


def _missing(path: str, uri: str, what: str | None, probe: str = "") -> list:
    """A `ConfigError` when `uri` cannot be there: a bucket that does not exist; with `what`, a folder
    that does not exist or holds nothing (one listing, of the names starting with `probe`)."""
    import os

    from core import storage
    from core.errors import ConfigError

    location = parse_uri(uri)
    if location.is_local:
        return [] if what is None or os.path.isdir(location.path) else [ConfigError(path, f"{uri} does not exist (expected {what})")]
    try:
        found = storage.open_store(uri).list(probe)
    except storage.StorageUnusable as error:
        return [ConfigError(path, str(error))]
    except Exception:  # unreachable now, or no credentials where the file is checked: the job itself retries or says so
        return []
    return [ConfigError(path, f"{uri} holds nothing (expected {what})")] if what is not None and not found else []


def check_feature_function(features: FeaturesConfig, models: list["ModelConfig"]) -> None:
    """``features.function`` resolved as the job will load it: defined in a module the models list
    in ``custom_modules`` (`ConfigError` naming ``features.function`` otherwise)."""
    from online.events import load_feature_function

    load_feature_function(features, user_modules(models))


class CheckpointConfig(Section):
    """Where and how often the learner's state is written."""

    uri: str
    every_events: int = pydantic.Field(default=10_000, gt=0)
    every_seconds: float = pydantic.Field(default=60.0, gt=0)
    keep: int = pydantic.Field(default=10, ge=1)
    lease_seconds: float = pydantic.Field(default=30.0, gt=0)
    signing_key_env: str = "RIVERBEAM_CHECKPOINT_KEY"
    # Incremental checkpoints (per-key models): fold the parts into one in the background once a
    # checkpoint is made of this many (or its deltas outweigh its base), so restore time stays bounded.
    compact_parts: int = pydantic.Field(default=8, ge=2)

    @pydantic.field_validator("lease_seconds")
    @classmethod
    def _lease_outlives_renewals(cls, value: float) -> float:
        # The lease is renewed every lease_seconds / LEASE_RENEWALS; below LEASE_MIN_SECONDS one
        # slow storage round trip would let it expire while its holder is alive and learning.
        if value < LEASE_MIN_SECONDS:
            raise ValueError(
                f"must be at least {LEASE_MIN_SECONDS:g} s: the lease is renewed every lease_seconds / {LEASE_RENEWALS} "
                f"and each renewal is a storage round trip"
            )
        return value

    @pydantic.field_validator("uri")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("is empty: checkpoints would be written into the working directory; give a folder or a gs:// or s3:// URI")
        try:
            parse_uri(value)  # the one URI parser: a known scheme and a bucket
        except InvalidUri as error:
            raise ValueError(str(error)) from None
        return value


class KafkaConfig(Section):
    """Kafka source and outputs. `consumer` and `producer` go to the chosen client under its own key names."""

    client: Literal["kafka-python", "confluent-kafka"] = "kafka-python"
    bootstrap_servers: str = "localhost:9092"
    topic: str | None = None
    topics: list[str] | None = None
    group_id: str = "riverbeam"
    dead_letter_topic: str | None = None
    predictions_topic: str | None = None
    consumer: dict[str, Any] = {}
    producer: dict[str, Any] = {}
    poll_max_records: int = pydantic.Field(default=5000, gt=0)
    poll_timeout_ms: int = pydantic.Field(default=500, gt=0)
    # A checkpointed offset the broker no longer has (topic recreated, records deleted, log truncated):
    # fail (one line naming topic, partition, offset and the broker's range; exit 1) or skip (counted, logged).
    on_offset_gap: Literal["fail", "skip"] = "fail"
    # How a record's value becomes an event (online.formats): JSON, or the schema-registry wire format
    # decoded through the registry at schema_registry.url (the keys confluent-kafka's SchemaRegistryClient takes).
    format: Literal["json", "avro", "protobuf", "json_schema"] = "json"
    schema_registry: dict[str, Any] | None = None
    # How the daemon writes its predictions and dead letters (online.formats_write): JSON, or through the registry
    # under the subject naming strategy given (confluent-kafka's subject.name.strategy), registering the schema unless told not to.
    predictions_format: Literal["json", "avro", "json_schema", "protobuf"] = "json"
    dead_letter_format: Literal["json", "avro", "json_schema", "protobuf"] = "json"
    subject_name_strategy: Literal["topic", "record", "topic_record"] = "topic"
    auto_register_schemas: bool = True
    # replay --mode backfill into an avro or json_schema topic: the schema file (.avsc, or a JSON Schema) its
    # records are written with; derived from the input events when absent (online.formats_write.event_serializer).
    value_schema: str | None = None

    @pydantic.field_validator("topic", "dead_letter_topic", "predictions_topic", "group_id", "bootstrap_servers")
    @classmethod
    def _not_empty(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("is empty: give a name, or leave the key out")
        return value

    @pydantic.field_validator("topics")
    @classmethod
    def _no_empty_topic(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (not value or any(not topic.strip() for topic in value)):
            raise ValueError("holds an empty topic name" if value else "is empty: name at least one topic")
        return value

    @pydantic.model_validator(mode="after")
    def _one_topic_setting(self) -> "KafkaConfig":
        if (self.topic is None) == (self.topics is None):
            raise ValueError("set exactly one of kafka.topic and kafka.topics")
        return self

    @pydantic.model_validator(mode="after")
    def _registry_for_format(self) -> "KafkaConfig":
        if self.format != "json" and not (self.schema_registry or {}).get("url"):
            raise ValueError(f"kafka.format {self.format} needs kafka.schema_registry.url (the schema registry's URL)")
        for key in ("predictions_format", "dead_letter_format"):
            if getattr(self, key) != "json" and not (self.schema_registry or {}).get("url"):
                raise ValueError(f"kafka.{key} {getattr(self, key)} needs kafka.schema_registry.url (the schema registry's URL)")
        return self

    @property
    def source_topics(self) -> list[str]:
        return [self.topic] if self.topic is not None else list(self.topics or [])


class MetricsServerConfig(Section):
    """Prometheus /metrics, /healthz, /readyz and the dashboard; `port: null` turns the server off.

    `host` is loopback by default (as ``serve.host``): set ``0.0.0.0`` where a scraper or probe
    reaches the process from outside (a container: ``deploy/kubernetes.yaml`` does).
    """

    host: str = "127.0.0.1"
    port: int | None = pydantic.Field(default=9108, ge=0, le=65535)


class ConsumeConfig(Section):
    """How ``riverbeam consume`` runs: `workers` daemon processes of a keyed job in one consumer group
    under one supervisor (`online.consume.workers`; the ``--workers`` flag overrides it)."""

    workers: int = pydantic.Field(default=1, ge=1)


def workers_error(workers: int, events: "EventsConfig", path: str = "consume.workers") -> ConfigError | None:
    """Why `workers` processes cannot run this job, as the `ConfigError` naming `path`, or None.

    Workers split a keyed job (``events.key``) by partition; a global model is one model that a
    second process cannot share without changing what it learns.

    >>> workers_error(2, EventsConfig(target="label", key="user")) is None, workers_error(1, EventsConfig(target="label")) is None
    (True, True)
    >>> print(workers_error(2, EventsConfig(target="label")))
    consume.workers: 2 workers need per-key models (events.key): a global model is one model, learned in one process; to use more cores for it, learn in mini-batches (model.batch) or run the Beam pipeline (stream-learn) on Flink or Dataflow
    """
    if workers <= 1 or events.key is not None:
        return None
    return ConfigError(path, f"{workers} workers need per-key models (events.key): a global model is one model, learned in one process; to use more "
                             "cores for it, learn in mini-batches (model.batch) or run the Beam pipeline (stream-learn) on Flink or Dataflow")


class LearningConfig(Section):
    """Model, events and features: what every learning job (daemon, replay, Beam) shares."""

    model: ModelConfig
    events: EventsConfig = EventsConfig()
    features: FeaturesConfig = FeaturesConfig()

    def check_semantics(self) -> None:
        """Resolve the River names (raises `ConfigError` naming the path), beyond types."""
        from online.models import build_model

        collect = ConfigErrorCollector()
        with collect.check():
            build_model(self.model, path="model")
            check_drift_detector(self.model, path="model")
            check_batch(self.model, path="model")
        with collect.check():
            check_feature_function(self.features, [self.model])
        with collect.check():
            check_job([("model", self.model)], self.events, self.features)
        collect.raise_if_any()


def model_names(models: list[ModelConfig]) -> list[str]:
    """Unique display names: the configured `name`, else the pipeline's class names.

    >>> m = ModelConfig(pipeline=[{"preprocessing.StandardScaler": {}}, {"linear_model.LogisticRegression": {}}])
    >>> model_names([m, m])
    ['StandardScaler|LogisticRegression', 'StandardScaler|LogisticRegression #2']
    """
    names: list[str] = []
    for model in models:
        name = model.name or "|".join(next(iter(step)).rpartition(".")[2] for step in model.pipeline)
        unique, n = name, 1
        while unique in names:
            n += 1
            unique = f"{name} #{n}"
        names.append(unique)
    return names


class ConsumeJobConfig(LearningConfig):
    """``riverbeam consume``: the streaming consumer daemon.

    One model (`model`) or several on the same stream (`models`, each event predicted and learned
    by every one; `predictions_model` names the one whose predictions go to the predictions topic,
    by default the first).
    """

    model: ModelConfig | None = None  # type: ignore[assignment]
    models: list[ModelConfig] | None = pydantic.Field(default=None, min_length=1)
    predictions_model: str | None = None
    kafka: KafkaConfig
    checkpoint: CheckpointConfig
    metrics: MetricsServerConfig = MetricsServerConfig()
    consume: ConsumeConfig = ConsumeConfig()

    @pydantic.model_validator(mode="after")
    def _one_model_setting(self) -> "ConsumeJobConfig":
        if (self.model is None) == (self.models is None):
            raise ValueError("set exactly one of model and models")
        names = model_names(self.candidates)
        if self.models is not None and len(set(m.name for m in self.models if m.name)) != len([m for m in self.models if m.name]):
            raise ValueError("models: each name must be unique")
        if self.predictions_model is not None and self.predictions_model not in names:
            raise ValueError(f"predictions_model: {self.predictions_model!r} is not among the models ({', '.join(names)})")
        return self

    def check_semantics(self) -> None:
        from online.models import build_model

        collect = ConfigErrorCollector()
        for path, candidate in self.model_paths():
            with collect.check():
                build_model(candidate, path=path)
                check_drift_detector(candidate, path=path)
                check_batch(candidate, path=path)
        with collect.check():
            check_feature_function(self.features, self.candidates)
        with collect.check():
            check_job(self.model_paths(), self.events, self.features, self.kafka, self.checkpoint)
        with collect.check():
            if (error := workers_error(self.consume.workers, self.events)) is not None:
                raise error
        collect.raise_if_any()

    def model_paths(self) -> list[tuple[str, ModelConfig]]:
        if self.model is not None:
            return [("model", self.model)]
        return [(f"models[{i}]", m) for i, m in enumerate(self.models or [])]

    @property
    def candidates(self) -> list[ModelConfig]:
        return [self.model] if self.model is not None else list(self.models or [])

    @property
    def named_models(self) -> dict[str, ModelConfig]:
        """The models by display name (`model_names`), in configuration order."""
        return dict(zip(model_names(self.candidates), self.candidates))


class ReplayJobConfig(Section):
    """``riverbeam replay``: one model (`model`) or several candidates (`models`), learned from files."""

    model: ModelConfig | None = None
    models: list[ModelConfig] | None = None
    events: EventsConfig = EventsConfig()
    features: FeaturesConfig = FeaturesConfig()
    checkpoint: CheckpointConfig | None = None
    kafka: KafkaConfig | None = None  # backfill's target: the daemon's kafka section
    metrics: MetricsServerConfig | None = None  # a consume file's section, accepted so that file replays as it is; replay ignores it

    @pydantic.model_validator(mode="after")
    def _one_model_setting(self) -> "ReplayJobConfig":
        if (self.model is None) == (self.models is None):
            raise ValueError("set exactly one of model and models")
        return self

    def check_semantics(self) -> None:
        from online.models import build_model

        collect = ConfigErrorCollector()
        if self.model is not None:
            with collect.check():
                build_model(self.model, path="model")
                check_drift_detector(self.model, path="model")
                check_batch(self.model, path="model")
        for i, candidate in enumerate(self.models or []):
            with collect.check():
                build_model(candidate, path=f"models[{i}]")
                check_drift_detector(candidate, path=f"models[{i}]")
                check_batch(candidate, path=f"models[{i}]")
        with collect.check():
            check_feature_function(self.features, self.candidates)
        with collect.check():
            paths = [("model", self.model)] if self.model is not None else [(f"models[{i}]", m) for i, m in enumerate(self.models or [])]
            check_job(paths, self.events, self.features, self.kafka, self.checkpoint)
        collect.raise_if_any()

    @property
    def candidates(self) -> list[ModelConfig]:
        return [self.model] if self.model is not None else list(self.models or [])


class ServeConfig(Section):
    """How this instance serves.

    `learn`: accept ``POST /v1/learn`` (a writer: takes the checkpoint store's lease and
    checkpoints on `checkpoint.every_events` / `every_seconds`, like the daemon); otherwise
    read-only, swapping in each new checkpoint within `reload_seconds`. `token_env` names the
    environment variable holding the bearer token; unset or empty, no authentication.
    """

    host: str = "127.0.0.1"
    port: int = pydantic.Field(default=8080, ge=0, le=65535)
    learn: bool = False
    reload_seconds: float = pydantic.Field(default=2.0, gt=0)
    token_env: str = "RIVERBEAM_SERVE_TOKEN"
    max_batch: int = pydantic.Field(default=10_000, gt=0)
    # A request body past this many bytes is refused with 413 before it is read; one that has not
    # arrived in full after body_timeout_seconds gets 408 (a slow client never holds a worker).
    max_body_bytes: int = pydantic.Field(default=32 << 20, gt=0)
    body_timeout_seconds: float = pydantic.Field(default=30.0, gt=0)
    model: str | None = None  # which model of a checkpoint of several (models:) to serve; default the first


class ServeJobConfig(Section):
    """``riverbeam serve --config serve.yaml``: where the checkpoints are, how this instance serves them, and (to learn) the model.

    >>> from core.configuration import parse_config
    >>> job = parse_config({"checkpoint": {"uri": "/tmp/ck"}, "serve": {"port": 8080}}, ServeJobConfig, environ={})
    >>> job.serve.port, job.serve.learn, job.serve.reload_seconds
    (8080, False, 2.0)
    >>> parse_config({"checkpoint": {"uri": "/tmp/ck"}, "serve": {"learn": True}}, ServeJobConfig, environ={})
    Traceback (most recent call last):
    ...
    core.errors.ConfigError: serve.learn: learning needs the model and events sections (the checkpoint's configuration must hash to them)
    """

    checkpoint: CheckpointConfig
    serve: ServeConfig = ServeConfig()
    model: ModelConfig | None = None
    events: EventsConfig | None = None
    features: FeaturesConfig = FeaturesConfig()

    @pydantic.model_validator(mode="after")
    def _learning_needs_a_model(self) -> "ServeJobConfig":
        if self.serve.learn and (self.model is None or self.events is None):
            raise pydantic.ValidationError.from_exception_data(
                "ServeJobConfig",
                [{"type": "value_error", "loc": ("serve", "learn"), "input": True,
                  "ctx": {"error": "learning needs the model and events sections (the checkpoint's configuration must hash to them)"}}],
            )  # fmt: skip
        return self

    def check_semantics(self) -> None:
        """Resolve the River names of the model section, if any, and ``features.function`` (from its ``custom_modules``);
        then what the sections mean together (`online.config.check_job`)."""
        from online.models import build_model

        if self.model is not None:
            build_model(self.model, path="model")
        check_feature_function(self.features, [self.model] if self.model is not None else [])
        check_job([("model", self.model)] if self.model is not None else [], self.events, self.features, checkpoint=self.checkpoint)


# job kind -> its typed configuration (``riverbeam config check --job``, ``riverbeam.load_config``)
JOB_KINDS = ("consume", "replay", "preprocess", "serve")


def job_config_class(kind: str) -> type:
    """The typed configuration of a job kind (`JOB_KINDS`); preprocess's is imported only when asked for.

    >>> job_config_class("serve").__name__, job_config_class("preprocess").__name__
    ('ServeJobConfig', 'PreprocessJobConfig')
    """
    if kind == "preprocess":
        from transforms.config import PreprocessJobConfig

        return PreprocessJobConfig
    classes = {"consume": ConsumeJobConfig, "replay": ReplayJobConfig, "serve": ServeJobConfig}
    if kind not in classes:
        raise ConfigError("", f"unknown job kind {kind!r}: one of {', '.join(JOB_KINDS)}")
    return classes[kind]


def detect_job(data: Any) -> str:
    """Guess the job kind from a configuration's top-level keys.

    >>> detect_job({"kafka": {}, "model": {}})
    'consume'
    >>> detect_job({"model": {}})
    'replay'
    >>> detect_job({"features": []})
    'preprocess'
    >>> detect_job({"serve": {}, "checkpoint": {"uri": "ckpt"}})
    'serve'
    """
    keys = set(data) if isinstance(data, dict) else set()
    if "serve" in keys:
        return "serve"
    if "kafka" in keys:
        return "consume"
    if "model" in keys or "models" in keys:
        return "replay"
    if "features" in keys:
        return "preprocess"
    raise ConfigError("", "cannot tell the job kind (expected a 'serve', 'kafka', 'model' or 'features' section); pass --job")
