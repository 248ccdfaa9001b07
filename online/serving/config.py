"""``serve.yaml``: where the checkpoints are, how this instance serves them, and (to learn) the model.

>>> from core.configuration import parse_config
>>> job = parse_config({"checkpoint": {"uri": "/tmp/ck"}, "serve": {"port": 8080}}, ServeJobConfig, environ={})
>>> job.serve.port, job.serve.learn, job.serve.reload_seconds
(8080, False, 2.0)
>>> parse_config({"checkpoint": {"uri": "/tmp/ck"}, "serve": {"learn": True}}, ServeJobConfig, environ={})
Traceback (most recent call last):
...
core.errors.ConfigError: serve.learn: learning needs the model and events sections (the checkpoint's configuration must hash to them)
"""

from __future__ import annotations

import pydantic

from core.configuration import Section
from online.config import CheckpointConfig, EventsConfig, FeaturesConfig, ModelConfig


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
    """``riverbeam serve --config serve.yaml``."""

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
        from online.config import check_feature_function, check_job
        from online.models import build_model

        if self.model is not None:
            build_model(self.model, path="model")
        check_feature_function(self.features, [self.model] if self.model is not None else [])
        check_job([("model", self.model)] if self.model is not None else [], self.events, self.features, checkpoint=self.checkpoint)
