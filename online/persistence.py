"""Saving a `Learner` into a checkpoint and restoring it: the one bridge between the two.

The manifest records the learning configuration (model and events sections) and its hash, so
`riverbeam predict` can rebuild a learner from a checkpoint alone, and a job restarted with a
different model configuration is stopped instead of silently mixing two models.

>>> import tempfile
>>> from online.config import EventsConfig, ModelConfig
>>> from online.checkpoints import CheckpointStore
>>> from online.learner import Learner
>>> learner = Learner(ModelConfig(pipeline=[{"linear_model.LinearRegression": {}}], metrics=["MAE"]), EventsConfig(target="y"))
>>> _ = learner.process({"x": 1.0, "y": 2.0})
>>> store = CheckpointStore(tempfile.mkdtemp())
>>> manifest = save_learner(store, learner, positions={"events/0": 1})
>>> restore_learner(store.load_latest()).report()["events_learned"]
1
"""

from __future__ import annotations

from core.errors import ConfigError
from online.checkpoints import Checkpoint, CheckpointStore, config_hash
from online.config import EventsConfig, ModelConfig
from online.learner import Learner


def learning_hash(learner: Learner) -> str:
    return config_hash(learner.model_config, learner.events_config)


def save_learner(store: CheckpointStore, learner: Learner, positions: dict, extra: dict | None = None) -> dict:
    """Write the learner's state, counters, metrics and configuration as one checkpoint."""
    return store.save(
        learner.snapshot(),
        **checkpoint_fields(learner),
        positions=positions,
        extra={**(extra or {}), **learning_extra(learner)},
    )


def checkpoint_fields(learner: Learner) -> dict:
    """The manifest fields describing a learner (for writers that serialise elsewhere)."""
    report = learner.report()
    return {
        "events_seen": report["events_seen"],
        "events_learned": report["events_learned"],
        "metrics": report["metrics"],
        "model": learner.model_text(),
        "config_hash": learning_hash(learner),
    }


def learning_extra(learner: Learner) -> dict:
    return {
        "learning": {"model": learner.model_config.model_dump(mode="json"), "events": learner.events_config.model_dump(mode="json")},
        "report": learner.report(),
    }


def restore_learner(checkpoint: Checkpoint, model: ModelConfig | None = None, events: EventsConfig | None = None, transform=None) -> Learner:
    """A learner continuing from `checkpoint`.

    Without `model`/`events`, the configuration recorded in the checkpoint is used. With them,
    they must hash to what the checkpoint was written with (else `ConfigError`).
    """
    recorded = checkpoint.manifest.get("extra", {}).get("learning")
    if model is None or events is None:
        if recorded is None:
            raise ConfigError("checkpoint", f"checkpoint {checkpoint.id} does not record its model configuration")
        model = model or ModelConfig.model_validate(recorded["model"], strict=False)
        events = events or EventsConfig.model_validate(recorded["events"], strict=False)
    elif checkpoint.manifest.get("config_hash") and checkpoint.manifest["config_hash"] != config_hash(model, events):
        raise ConfigError(
            "model",
            f"the configuration differs from the one checkpoint {checkpoint.id} was written with; "
            "use a new checkpoint URI for a new model (or restore the old model and events sections)",
        )
    return Learner.restore(checkpoint.state, model, events, transform=transform)
