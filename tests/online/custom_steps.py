"""A user's own River steps and feature function, as a user package would hold them (used by test_custom_steps)."""

from __future__ import annotations

from river import base


class Clip(base.Transformer):
    """Clips every numeric feature to [-limit, limit]."""

    def __init__(self, limit: float = 3.0):
        self.limit = limit

    def transform_one(self, x):
        return {k: max(-self.limit, min(self.limit, v)) for k, v in x.items()}


def derive(x: dict) -> dict:
    """Adds the product of the first two features; refuses an event flagged as poison."""
    if x.get("poison"):
        raise RuntimeError("poison event")
    keys = sorted(k for k in x if k != "poison")
    return {**{k: x[k] for k in keys}, "product": x[keys[0]] * x[keys[1]]}


NOT_A_STEP = object()


def interaction(x: dict) -> dict:
    """One new feature, the product of two Phishing features (for compose.FuncTransformer in a union)."""
    return {"age_x_long_url": x["age_of_domain"] * x["long_url"]}


from subprocess import run as run_command  # noqa: E402, F401 - a function imported into a listed module, not defined there
