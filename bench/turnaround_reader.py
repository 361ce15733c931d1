"""An algorithm-like reader that times the epoch hand-over from its own side of the FIFOs.

For each epoch n: open `<base>_n` (timing how long open() blocks, i.e. until the sidecar's
writer connects), read to EOF, close; then poll for `<base>_{n+1}` and record how long after
EOF it existed (0 if it was already there). `--pause` sleeps between the EOF and the next
open, like an algorithm that evaluates or checkpoints between epochs.

Prints one JSON object: {"eof_to_exists_ms": [...], "open_ms": [...], "bytes": [...]}.
"""

from __future__ import annotations

import argparse
import json
import os
import time

POLL_LIMIT_S = 5.0


def read_to_eof(fd: int) -> int:
    n = 0
    while True:
        data = os.read(fd, 1 << 20)
        if not data:
            return n
        n += len(data)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("base", help="FIFO path without the _<epoch> suffix")
    p.add_argument("epochs", type=int)
    p.add_argument("--pause", type=float, default=0.0, help="seconds between EOF and the next open")
    a = p.parse_args()
    exists_ms: list[float] = []
    open_ms: list[float] = []
    sizes: list[int] = []
    for n in range(a.epochs):
        t0 = time.perf_counter()
        fd = os.open(f"{a.base}_{n}", os.O_RDONLY)
        open_ms.append((time.perf_counter() - t0) * 1e3)
        sizes.append(read_to_eof(fd))
        eof = time.perf_counter()
        os.close(fd)
        if n + 1 == a.epochs:
            break
        nxt = f"{a.base}_{n + 1}"
        while not os.path.lexists(nxt):
            if time.perf_counter() - eof > POLL_LIMIT_S:
                break
        exists_ms.append((time.perf_counter() - eof) * 1e3)
        if a.pause:
            time.sleep(a.pause)
    print(json.dumps({"eof_to_exists_ms": exists_ms, "open_ms": open_ms[1:], "bytes": sizes}))


if __name__ == "__main__":
    main()
