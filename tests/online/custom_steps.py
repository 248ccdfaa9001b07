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


class Counter(base.Transformer):
    """Counts the events it transforms through a bound method it keeps, rebuilt by its own ``__setstate__``
    (a bound method does not pickle by reference to its object's copy: a step like this one rebuilds it)."""

    def __init__(self):
        self.seen = 0
        self._count = self._increment

    def _increment(self) -> None:
        self.seen += 1

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_count"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._count = self._increment  # captures self: it must be the restored object

    def transform_one(self, x):
        self._count()
        return x


NOT_A_STEP = object()


def interaction(x: dict) -> dict:
    """One new feature, the product of two Phishing features (for compose.FuncTransformer in a union)."""
    return {"age_x_long_url": x["age_of_domain"] * x["long_url"]}


from subprocess import run as run_command  # noqa: E402, F401 - a function imported into a listed module, not defined there
