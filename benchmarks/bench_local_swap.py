"""The local store's compare-and-swap (a lease renewal, a ``LATEST`` move): read + swap, in µs, against the
store as of a git revision (``--against``), alternately in the same run.

    python benchmarks/bench_local_swap.py --against ba44d54   # the file-lock swap before the lock-free one
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.storage import ABSENT  # noqa: E402
from core.storage.local import LocalStore  # noqa: E402


def store_at(revision: str, scratch: Path) -> type:
    """`LocalStore` as `core/storage/local.py` was at `revision`."""
    source = subprocess.run(["git", "show", f"{revision}:core/storage/local.py"], check=True, capture_output=True, text=True).stdout
    (scratch / "local_then.py").write_text(source)
    spec = importlib.util.spec_from_file_location("local_then", scratch / "local_then.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.LocalStore


def swap_us(store_class: type, folder: str, swaps: int) -> float:
    """µs per read + compare-and-swap of a 200-byte object."""
    store = store_class(folder)
    generation = store.write_if_generation("LATEST", b"x" * 200, ABSENT)
    start = time.perf_counter()
    for _ in range(swaps):
        _, generation = store.read_with_generation("LATEST")
        generation = store.write_if_generation("LATEST", b"y" * 200, generation)
    return (time.perf_counter() - start) / swaps * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", default="ba44d54", help="the revision to compare with")
    parser.add_argument("--swaps", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        then = store_at(args.against, Path(scratch))
        ratios = []
        for round_ in range(args.rounds):
            before = swap_us(then, tempfile.mkdtemp(dir=scratch), args.swaps)
            now = swap_us(LocalStore, tempfile.mkdtemp(dir=scratch), args.swaps)
            ratios.append(now / before)
            print(f"round {round_ + 1}: {args.against} {before:.0f} µs, now {now:.0f} µs: {now / before:.2f}x")
        print(f"median: {statistics.median(ratios):.2f}x the time of {args.against} per read + swap")


if __name__ == "__main__":
    main()
