"""Bytewax with recovery: the same flow, state snapshots every 5 s into a local recovery store.

``epoch_interval`` = the snapshot interval (``--snapshot-seconds``, 5 s): at the end of each
epoch Bytewax pickles the ``stateful_map`` state (the model and its metric) and the Kafka offsets
into its SQLite recovery partition. After a crash it resumes from the last snapshot. The harness
gives every run a fresh ``--state-dir``, so no run resumes another's state.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main

from _common import emit, parse_args
from bytewax_stateful_map import build_flow, report


def run_with_recovery(flow, args) -> None:
    """Run `flow` in one worker with recovery: a fresh SQLite store under ``--state-dir``, an epoch every ``--snapshot-seconds``."""
    db_dir = Path(args.state_dir) / "bytewax-recovery"
    db_dir.mkdir(parents=True, exist_ok=True)
    init_db_dir(db_dir, 1)
    cli_main(
        flow,
        workers_per_process=1,
        epoch_interval=timedelta(seconds=args.snapshot_seconds),
        recovery_config=RecoveryConfig(str(db_dir)),
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__, argv)
    run_with_recovery(build_flow(args), args)
    emit(report())


if __name__ == "__main__":
    main()
