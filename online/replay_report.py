"""Replay reports: the leaderboard as text, metrics over time as CSV and JSON, a learning curve PNG."""

from __future__ import annotations

import csv
import os

import orjson


def format_leaderboard(rows: list[dict]) -> str:
    """A plain-text table of the leaderboard (rank, model, metrics).

    >>> print(format_leaderboard([{"rank": 1, "model": "a", "events": 10, "metrics": {"Accuracy": 0.9}}]))
    rank  model  events  Accuracy
    1     a      10      0.9
    """
    names = []
    for row in rows:
        names += [n for n in row["metrics"] if n not in names]
    table = [["rank", "model", "events", *names]]
    for row in rows:
        table.append([str(row["rank"]), row["model"], str(row["events"]), *(_fmt(row["metrics"].get(n)) for n in names)])
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in table)


def _fmt(value) -> str:
    return "" if value is None else (f"{value:.6g}" if isinstance(value, float) else str(value))


def write_report_dir(directory: str, rows: list[dict], board: list[dict], reports: list[dict]) -> None:
    """``metrics.csv``, ``metrics.json`` and ``learning_curve.png`` in `directory`."""
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


def plot_learning_curve(rows: list[dict], board: list[dict], path: str) -> None:
    """The headline metric of each candidate against events, as a PNG (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    headline = next(iter(board[0]["metrics"])) if board else None
    figure = Figure(figsize=(8, 4.5), dpi=100)
    axes = figure.subplots()
    for name in dict.fromkeys(row["model"] for row in rows):
        points = [(row["events"], row.get(headline)) for row in rows if row["model"] == name and row.get(headline) is not None]
        if points:
            axes.plot([p[0] for p in points], [p[1] for p in points], label=name)
    axes.set_xlabel("events")
    axes.set_ylabel(headline or "metric")
    axes.set_title(f"Progressive validation: {headline}")
    axes.grid(alpha=0.3)
    if rows:
        axes.legend(loc="best", fontsize="small")
    figure.tight_layout()
    figure.savefig(path)
