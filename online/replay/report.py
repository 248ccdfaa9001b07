"""Replay reports: the leaderboard as text, metrics over time as CSV and JSON, learning curves and the search leaderboard as PNG."""

from __future__ import annotations

import csv
import os

import orjson

from core.errors import UsageError
from core.summary import format_metric


def format_leaderboard(rows: list[dict]) -> str:
    """A plain-text table of the leaderboard (rank, model, metrics).

    >>> print(format_leaderboard([{"rank": 1, "model": "a", "events_seen": 10, "metrics": {"Accuracy": 0.9}}]))
    rank  model  events_seen  Accuracy
    1     a      10           0.9000
    """
    names = []
    for row in rows:
        names += [n for n in row["metrics"] if n not in names]
    table = [["rank", "model", "events_seen", *names]]
    for row in rows:
        table.append([str(row["rank"]), row["model"], str(row.get("events_seen", "")), *(_fmt(row["metrics"].get(n)) for n in names)])
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in table)


def _fmt(value) -> str:
    return "" if value is None else format_metric(value)


def write_report_dir(directory: str, rows: list[dict], board: list[dict], reports: list[dict]) -> None:
    """``metrics.csv``, ``metrics.json`` and ``learning_curve.png`` (every metric) in `directory`."""
    os.makedirs(directory, exist_ok=True)
    columns = ["events", "lines", "model"]
    for row in rows:
        columns += [k for k in row if k not in columns]
    with open(os.path.join(directory, "metrics.csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    final = {row["model"]: {k: v for k, v in row.items() if k not in ("model",)} for row in rows}
    with open(os.path.join(directory, "metrics.json"), "wb") as handle:
        handle.write(orjson.dumps({"rows": rows, "final": final, "leaderboard": board, "models": reports}, option=orjson.OPT_INDENT_2))
    plot_learning_curve(rows, board, os.path.join(directory, "learning_curve.png"))


def metric_columns(rows: list[dict]) -> list[str]:
    """The metric names in report rows, in first-seen order (every column but events, lines, model).

    >>> metric_columns([{"events": 1, "lines": 1, "model": "a", "Accuracy": 1.0, "Rolling(Accuracy, 500)": 1.0}])
    ['Accuracy', 'Rolling(Accuracy, 500)']
    """
    names: list[str] = []
    for row in rows:
        names += [k for k in row if k not in ("events", "lines", "model") and k not in names]
    return names


def require_plotting() -> None:
    """Fail before any work, in one line, when the plots of ``--report`` cannot be drawn.

    >>> require_plotting()  # matplotlib is installed here (the `reports` extra)
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError("--report draws its learning curve with matplotlib, which is not installed: pip install 'riverbeam[reports]' (or leave out --report)") from None


def _figure():
    require_plotting()
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure


def plot_learning_curve(rows: list[dict], board: list[dict], path: str) -> list[str]:
    """Every metric against events, one panel per metric and a line per candidate, as a PNG
    (matplotlib, Agg backend). Returns the metrics plotted, panel by panel.

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "curve.png")
    >>> rows = [{"events": e, "lines": e, "model": m, "MAE": 1 / e, "RMSE": 2 / e} for e in (10, 20) for m in ("a", "b")]
    >>> plot_learning_curve(rows, [], path), os.path.getsize(path) > 0
    (['MAE', 'RMSE'], True)
    """
    names = metric_columns(rows) or ["metric"]
    models = list(dict.fromkeys(row["model"] for row in rows))
    figure = _figure()(figsize=(8, 1.0 + 2.6 * len(names)), dpi=100)
    panels = figure.subplots(len(names), 1, sharex=True, squeeze=False)[:, 0]
    for axes, name in zip(panels, names):
        for model in models:
            points = [(row["events"], row[name]) for row in rows if row["model"] == model and row.get(name) is not None]
            if points:
                axes.plot([p[0] for p in points], [p[1] for p in points], label=model)
        axes.set_ylabel(name)
        axes.set_title(f"Progressive validation: {name}", fontsize="medium")
        axes.grid(alpha=0.3)
        if axes.lines:
            axes.legend(loc="best", fontsize="small")
    panels[-1].set_xlabel("events")
    figure.tight_layout()
    figure.savefig(path)
    return names


def plot_search_leaderboard(board: list[dict], metric: str, maximise: bool, path: str, top: int = 30) -> None:
    """The search's trials ranked by `metric` as a dot plot (best on top, in green; at most `top`),
    each labelled with its parameters; a PNG (matplotlib, Agg backend).

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "leaderboard.png")
    >>> board = [{"rank": 1, "model": "trial 1", "metrics": {"MAE": 0.5}, "params": {"LinearRegression.l2": 0.1}},
    ...          {"rank": 2, "model": "trial 0", "metrics": {"MAE": None}, "params": {"LinearRegression.l2": 9.0}}]
    >>> plot_search_leaderboard(board, "MAE", False, path); os.path.getsize(path) > 0
    True
    """
    shown = [row for row in board if row["metrics"].get(metric) is not None][:top]
    figure = _figure()(figsize=(9, 1.5 + 0.35 * max(1, len(shown))), dpi=100)
    axes = figure.subplots()
    labels = [f"{row['model']}: " + ", ".join(f"{k.rpartition('.')[2]}={_fmt(v)}" for k, v in row.get("params", {}).items())
              for row in shown]
    values = [row["metrics"][metric] for row in shown]
    if values:  # dots on a zoomed axis: the trials often differ in the third decimal
        low, high = min(values), max(values)
        pad = (high - low) * 0.15 or abs(high) * 0.01 or 0.01
        axes.set_xlim(low - pad, high + 2 * pad)
        axes.hlines(range(len(shown)), low - pad, values, color="lightgray", zorder=1)
        axes.scatter(values, range(len(shown)), color=["tab:green"] + ["tab:blue"] * (len(shown) - 1), zorder=2)
    axes.set_yticks(range(len(shown)), labels, fontsize="small")
    axes.invert_yaxis()
    for i, value in enumerate(values):
        axes.annotate(format_metric(value), (value, i), xytext=(3, 0), textcoords="offset points", va="center", fontsize="small")
    axes.set_xlabel(f"{metric} ({'higher' if maximise else 'lower'} is better)")
    axes.set_title(f"Search leaderboard: {len(shown)} of {len(board)} trials by {metric}")
    axes.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
