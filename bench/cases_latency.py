"""First-byte latency (issue 16): how soon the reader gets bytes, next to how fast they come.

* tiny S3 objects: 20,000 objects of 8 bytes (5,000 with --quick) from the SeaweedFS server; the
  whole epoch is far under the 1 MiB a batch may gather, which once held every byte back to the end.
* a throttled channel of small files: 200 files of 10 KB at ThrottleMBps 0.5 (4 s an epoch); the
  reader should see bytes at once and then at an even pace, as from a slow source.

The reader is this process: it opens the FIFO, notes when its first byte and its end arrive, and
(for the throttled channel) how far the bytes ever were from an even pace.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import data
from cases_s3 import BUCKET, S3Env
from common import Results, Row, Settings, Sidecar, channel, check_bytes, fmt, median, wait_for

TINY_SIZE = 8
THROTTLE_MBPS = 0.5
THROTTLE_FILES = 200
THROTTLE_SIZE = 10_000


def read_timed(path: Path, proc_timeout: float = 300.0) -> tuple[float, float, list[tuple[float, int]]]:
    """Read a FIFO to EOF: seconds to the first byte, seconds to EOF, and (seconds, bytes so far) per read."""
    fd = os.open(path, os.O_RDONLY)
    opened = time.perf_counter()
    first: float | None = None
    total = 0
    arrivals: list[tuple[float, int]] = []
    try:
        while chunk := os.read(fd, 1 << 20):
            now = time.perf_counter() - opened
            first = now if first is None else first
            total += len(chunk)
            arrivals.append((now, total))
            if now > proc_timeout:
                raise RuntimeError(f"{path}: no EOF within {proc_timeout} s")
    finally:
        os.close(fd)
    return (first if first is not None else float("nan")), time.perf_counter() - opened, arrivals


def uneven(arrivals: list[tuple[float, int]], seconds: float) -> float:
    """The largest distance of the bytes read so far from an even pace, as a share of all bytes."""
    total = arrivals[-1][1] if arrivals else 0
    if not total or seconds <= 0:
        return 1.0
    worst, before = 0.0, 0
    for t, n in arrivals:  # just before each read the reader had `before`, just after it `n`
        even = total * t / seconds
        worst = max(worst, abs(before - even), abs(n - even))
        before = n
    return worst / total


def case_latency(s: Settings, res: Results, s3: S3Env) -> None:
    case_tiny_objects(s, res, s3)
    case_throttled_small_files(s, res)


def timed_epochs(s: Settings, name: str, chan: dict[str, Any], expected: int,
                 env: dict[str, str] | None = None) -> tuple[list[float], list[float], list[float]]:
    """After the warm-up, each epoch's seconds to its first byte, to its end, and its distance from an even pace."""
    firsts, ends, gaps = [], [], []
    with Sidecar(s, name, [chan], s.warmup + s.reps, env=env) as side:
        for i in range(s.warmup + s.reps):
            wait_for(side.fifo("train", i), 60, side.proc)
            first, end, arrivals = read_timed(side.fifo("train", i))
            if (arrivals[-1][1] if arrivals else 0) != expected:  # what the reader got, not what the sidecar says
                raise RuntimeError(f"{name} epoch {i}: the reader got {arrivals[-1][1] if arrivals else 0} bytes, "
                                   f"not {expected}")
            if i >= s.warmup:
                firsts.append(first)
                ends.append(end)
                gaps.append(uneven(arrivals, end))
        lines = side.finish()
    check_bytes(lines, "train", expected)
    return firsts, ends, gaps


def case_tiny_objects(s: Settings, res: Results, s3: S3Env) -> None:
    count = 5000 if s.quick else 20_000
    s3.put_many("tiny/", count, TINY_SIZE)
    firsts, ends, _ = timed_epochs(s, "tiny", channel("train", f"s3://{BUCKET}/tiny/"), count * TINY_SIZE, s3.env)
    res.sample("latency-tiny", {"objects": count, "first_byte_s": firsts, "epoch_s": ends})
    first, end = median(firsts), median(ends)
    share = first / end if end > 0 else 1.0
    res.add(Row("latency", f"{count:,} x {TINY_SIZE} B from S3: first byte", first, "s",
                f"epoch {fmt(end)} s", share, "<= 1 s and <= 0.1x", first <= 1.0 and share <= 0.1,
                note=f"{count / end:,.0f} obj/s; before issue 16 the first byte came with the last"))


def case_throttled_small_files(s: Settings, res: Results) -> None:
    src = s.work / "throttled"
    block = data.random_block(THROTTLE_FILES * THROTTLE_SIZE, seed=16)
    src.mkdir()
    for i in range(THROTTLE_FILES):
        (src / f"{i:04d}").write_bytes(block[i * THROTTLE_SIZE:(i + 1) * THROTTLE_SIZE])
    chan = channel("train", str(src))
    chan["SageMakerPipe"] = {"ThrottleMBps": THROTTLE_MBPS}
    firsts, ends, gaps = timed_epochs(s, "throttled", chan, THROTTLE_FILES * THROTTLE_SIZE)
    res.sample("latency-throttled", {"first_byte_s": firsts, "epoch_s": ends, "uneven": gaps})
    what = f"{THROTTLE_FILES} x {THROTTLE_SIZE // 1000} KB throttled to {THROTTLE_MBPS:g} MB/s"
    first, gap, end = median(firsts), median(gaps), median(ends)
    res.add(Row("latency", f"{what}: first byte", first, "s", f"epoch {fmt(end)} s", None, "<= 0.5 s",
                first <= 0.5))
    res.add(Row("latency", f"{what}: farthest from an even pace", 100 * gap, "% of bytes", "", None, "<= 10%",
                gap <= 0.1, note="0% = bytes arrive exactly at the throttle's pace from the first second on"))
