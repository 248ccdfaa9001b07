"""The leaderboard: models ranked by a headline metric, best first, for every job that ranks models.

Replay's candidates (``--mode evaluate``) and search trials, the daemon's model set
(``models:``) and ``riverbeam checkpoints show`` all rank with `leaderboard`. Which way is better
comes from River's own ``bigger_is_better`` attribute of the headline metric *object*, never from
its name: a rolling MAE (``Rolling(MAE, 500)``) or a user's metric class ranks the way River says.

>>> from river import metrics, utils
>>> reports = {"a": {"metrics": {"Rolling(MAE, 10)": 3.0}, "events_seen": 5, "events_learned": 5, "events_rejected": 0},
...            "b": {"metrics": {"Rolling(MAE, 10)": 1.0}, "events_seen": 5, "events_learned": 4, "events_rejected": 1}}
>>> [(row["rank"], row["model"]) for row in leaderboard(reports, utils.Rolling(metrics.MAE, window_size=10))]
[(1, 'b'), (2, 'a')]
"""

from __future__ import annotations

from typing import Any, Mapping

from river import metrics as river_metrics

from online.models import build_metric, metric_name

__all__ = ["leaderboard", "recorded_headline"]


def leaderboard(reports: Mapping[str, Mapping[str, Any]], headline: river_metrics.base.Metric) -> list[dict]:
    """Rank models by `headline` (best first by ``headline.bigger_is_better``; a model without a value last).

    `reports` maps each model's name to its report (`online.learning.learner.Learner.report`:
    ``metrics`` by `online.models.metric_name`, and the counters). Ties keep the order of `reports`.
    Each row: ``rank``, ``model``, ``events_seen``, ``events_learned``, ``events_dead_lettered``
    and every ``metrics`` value of the model.

    >>> from river import metrics
    >>> leaderboard({"a": {"metrics": {"Accuracy": 0.7}, "events_seen": 9}, "b": {"metrics": {"Accuracy": 0.9}, "events_seen": 9},
    ...              "c": {"metrics": {}, "events_seen": 9}}, metrics.Accuracy())
    ... # doctest: +NORMALIZE_WHITESPACE
    [{'rank': 1, 'model': 'b', 'events_seen': 9, 'events_learned': None, 'events_dead_lettered': None, 'metrics': {'Accuracy': 0.9}},
     {'rank': 2, 'model': 'a', 'events_seen': 9, 'events_learned': None, 'events_dead_lettered': None, 'metrics': {'Accuracy': 0.7}},
     {'rank': 3, 'model': 'c', 'events_seen': 9, 'events_learned': None, 'events_dead_lettered': None, 'metrics': {}}]
    """
    name, better = metric_name(headline), bool(headline.bigger_is_better)

    def sort_key(item) -> tuple:
        value = item[1]["metrics"].get(name)
        return (1, 0.0) if value is None else (0, -value if better else value)

    return [
        {"rank": rank, "model": model, "events_seen": report.get("events_seen"), "events_learned": report.get("events_learned"),
         "events_dead_lettered": report.get("events_rejected"), "metrics": report["metrics"]}
        for rank, (model, report) in enumerate(sorted(reports.items(), key=sort_key), start=1)
    ]  # fmt: skip


def recorded_headline(learning: Mapping[str, Any]) -> river_metrics.base.Metric:
    """The headline metric (the first model's first metric), built afresh from a checkpoint's recorded
    configuration of several models (its manifest's ``extra.learning``), for ranking without the models.

    >>> recorded_headline({"models": {"lr": {"pipeline": [], "metrics": [{"Rolling": {"metric": "MAE", "window_size": 5}}]}}}).bigger_is_better
    False
    >>> recorded_headline({"models": {"lr": {"pipeline": []}}})  # the default metrics
    Accuracy: 0.00%
    """
    from online.config import ModelConfig

    first = next(iter(learning["models"].values()))
    specs = first.get("metrics") or ModelConfig.model_fields["metrics"].default
    return build_metric(specs[0], "models.metrics[0]")
