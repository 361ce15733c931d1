"""What the input-bound measurement costs: the FIFO writer with and without its per-write accounting.

    python bench/overhead.py [--mib 2048] [--reps 7]

Streams the same bytes through sagemaker_pipe.fifo.FifoWriter into a pipe drained by `cat > /dev/null`,
alternating runs with the accounting (one FIONREAD and two clock reads per write) on and replaced
by a no-op, and prints the medians and their ratio (target: under 2% slower).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sagemaker_pipe.chunks import BATCH  # noqa: E402
from sagemaker_pipe.fifo import FifoWriter  # noqa: E402


def one_run(total: int, account: bool) -> float:
    r, w = os.pipe()
    reader = subprocess.Popen(["cat"], stdin=r, stdout=subprocess.DEVNULL)
    os.close(r)
    os.set_blocking(w, False)
    writer = FifoWriter(w, threading.Event())
    if not account:
        writer._account = lambda: None  # type: ignore[method-assign]
    block = memoryview(os.urandom(BATCH))
    t0 = time.perf_counter()
    for _ in range(total // BATCH):
        writer.write_all([block])
    writer.close()
    reader.wait()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mib", type=int, default=2048)
    p.add_argument("--reps", type=int, default=7)
    args = p.parse_args()
    total = args.mib << 20
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.reps):
        for account in (False, True):
            times[account].append(one_run(total, account))
    on, off = statistics.median(times[True]), statistics.median(times[False])
    print(f"{args.mib} MiB in 1 MiB writes through FifoWriter into `cat`, {args.reps} alternating runs, medians")
    print(f"{'writer':<26}{'GB/s':>8}")
    print(f"{'without the accounting':<26}{total / off / 1e9:>8.2f}")
    print(f"{'with the accounting':<26}{total / on / 1e9:>8.2f}")
    print(f"cost of the measurement: {100 * (on / off - 1):+.1f}% time (target: under +2%)")


if __name__ == "__main__":
    main()
