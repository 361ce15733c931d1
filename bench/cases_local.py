"""Cases on local data: plain large files, many small files, gzip, and the epoch turnaround."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import data
from common import (
    BENCH,
    GIB,
    MIB,
    OriginalTool,
    Results,
    Row,
    Settings,
    Sidecar,
    cat_many_seconds,
    cat_seconds,
    channel,
    check_bytes,
    cpu_text,
    in_process_cpu,
    median,
    package_env,
    per_1000,
    per_gb,
    ratio_row,
    reader_cpu,
    repeat_cpu,
    where_time_went,
)


def absolute_row(case: str, measure: str, unit: str, ours: float, minimum: float,
                 baseline: str = "", base: float | None = None, note: str = "") -> Row:
    """A target stated as a number (files/s), with a baseline shown for scale only."""
    r = ours / base if base else None
    shown = f"{baseline} {base:,.0f}" if base else ""
    return Row(case, measure, ours, unit, shown, r, f">= {minimum:,.0f} {unit}", ours >= minimum, note)


def case_local(s: Settings, res: Results) -> None:
    """Target 1: plain 16-32 MiB files on tmpfs, read by `cat`: >= 0.8x `cat FILES`, >= 3x the original."""
    total = 384 * MIB if s.quick else int(1.5 * GIB)
    sizes = data.local_sizes(total, 16 * MIB, 32 * MIB)
    folder = s.work / "local"
    paths = data.write_sized_files(folder, sizes, data.random_block(40 * MIB))
    nbytes = sum(sizes)
    epochs = s.warmup + s.reps
    with Sidecar(s, "local", [channel("train", str(folder))], epochs) as side, \
            OriginalTool(s, "local", str(folder), epochs) as orig:
        t, cpu = repeat_cpu(s, {
            "cat": lambda i: reader_cpu(lambda: cat_seconds(paths)),
            "ours": functools.partial(side.read_epoch_cpu, "train"),
            "orig": orig.read_epoch_cpu,
        })
        lines = side.finish()
    check_bytes(lines, "train", nbytes)
    res.sample("local", {"bytes": nbytes, "files": len(paths), "seconds": t, "cpu_seconds": cpu})
    rate = {k: nbytes / median(v) / 1e9 for k, v in t.items()}
    per = {k: per_gb(v, nbytes) for k, v in cpu.items()}
    what = f"{len(paths)} files, {nbytes / GIB:.2f} GiB"
    res.add(replace(ratio_row("local", f"{what}: FIFO -> cat", "GB/s", rate["ours"], "cat FILES", rate["cat"], 0.8,
                              where_time_went(lines, "train", s.warmup)),
                    cpu=cpu_text(per["ours"], per["cat"], "GB")))
    res.add(replace(ratio_row("local", f"{what}: vs original tool", "GB/s", rate["ours"], "copyfileobj",
                              rate["orig"], 3.0),
                    cpu=cpu_text(per["ours"], per["orig"], "GB")))


def read_loop_seconds(paths: list[Path]) -> float:
    """The floor for any per-file Python loop: open, read, close each file, nothing written anywhere.

    A sidecar that reads files one by one in Python cannot beat this; a target above it needs
    fewer system calls per file or reading in parallel, not leaner Python.
    """
    names = [str(p) for p in paths]
    t0 = time.perf_counter()
    batch = bytearray()
    for name in names:
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC)
        batch += os.read(fd, 65537)
        os.close(fd)
        if len(batch) >= MIB:
            batch = bytearray()
    return time.perf_counter() - t0


def case_small(s: Settings, res: Results) -> None:
    """Target 2: 100,000 files of 4 KiB, plain and RecordIO: >= 150,000 files/s each."""
    count = 20_000 if s.quick else 100_000
    folder = s.work / "small"
    t0 = time.perf_counter()
    paths = data.write_small_files(folder, count, 4096)
    made = time.perf_counter() - t0
    epochs = s.warmup + s.reps
    unit = "1,000 files"
    for recordio in (False, True):
        kind = "RecordIO" if recordio else "plain"
        with ExitStack() as stack:
            side = stack.enter_context(
                Sidecar(s, f"small-{kind}", [channel("train", str(folder), recordio=recordio)], epochs))
            fns: dict[str, Callable[[int], tuple[float, float]]] = {
                "ours": functools.partial(side.read_epoch_cpu, "train")}
            inproc = stack.enter_context(  # with reader processes undone, to show what they buy
                Sidecar(s, f"small-{kind}-inproc", [channel("train", str(folder), recordio=recordio)], epochs,
                        env={"SAGEMAKER_PIPE_READERS": "0"}))
            fns["inproc"] = functools.partial(inproc.read_epoch_cpu, "train")
            if not recordio:  # the baselines know nothing of RecordIO: run them beside the plain variant
                orig = stack.enter_context(OriginalTool(s, "local", str(folder), epochs, name="small"))
                fns["cat"] = lambda i: reader_cpu(lambda: cat_many_seconds(paths))
                fns["orig"] = orig.read_epoch_cpu
                fns["floor"] = lambda i: in_process_cpu(lambda: read_loop_seconds(paths))
            t, cpu = repeat_cpu(s, fns)
            lines = side.finish()
        check_bytes(lines, "train", count * (4096 + (8 if recordio else 0)))
        res.sample(f"small-{kind}", {"files": count, "seconds": t, "cpu_seconds": cpu, "startup_s": side.startup_s})
        rate = {k: count / median(v) for k, v in t.items()}
        per = {k: per_1000(v, count) for k, v in cpu.items()}
        ours = rate["ours"]
        note = where_time_went(lines, "train", s.warmup)
        if recordio:
            res.add(replace(absolute_row("small", f"{count:,} x 4 KiB, RecordIO", "files/s", ours, 150_000,
                                         note=note),
                            cpu=cpu_text(per["ours"], None, unit)))
        else:
            res.add(replace(absolute_row("small", f"{count:,} x 4 KiB, plain", "files/s", ours, 150_000,
                                         "cat (xargs)", rate["cat"], note),
                            cpu=cpu_text(per["ours"], per["cat"], unit)))
            res.add(Row("small", f"{count:,} x 4 KiB, plain: vs original tool", ours, "files/s",
                        f"copyfileobj {rate['orig']:,.0f}", ours / rate["orig"],
                        cpu=cpu_text(per["ours"], per["orig"], unit)))
            res.add(Row("small", "  vs bare Python open/read/close loop (no FIFO)", ours, "files/s",
                        f"loop {rate['floor']:,.0f}", ours / rate["floor"],
                        note="one process; reader processes share the files out among the cores",
                        cpu=cpu_text(per["ours"], per["floor"], unit)))
        res.add(Row("small", f"  {kind}, read in the channel's own process (SAGEMAKER_PIPE_READERS=0)",
                    rate["inproc"], "files/s", f"readers {ours:,.0f}", rate["inproc"] / ours,
                    note="what reader processes buy: one helper thread instead, as before them",
                    cpu=cpu_text(per["inproc"], per["ours"], unit)))
        res.add(Row("small", f"start-up: list {count:,} files, first FIFO ({kind})", side.startup_s, "s",
                    note=f"data made in {made:.1f} s"))


def inflate_loop(make: Callable[[], Any], paths: list[Path]) -> int:
    """sagemaker_pipe.transforms.inflate's loop (1 MiB in, at most 1 MiB out per call), output dropped."""
    out_bytes = 0
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            d = make()
            buf = b""
            while True:
                if not buf:
                    buf = f.read(MIB)
                    if not buf:
                        break
                out_bytes += len(d.decompress(buf, MIB))
                buf = d.unused_data if d.eof else d.unconsumed_tail
                if d.eof and buf:
                    d = make()
            out_bytes += len(d.flush())
    return out_bytes


def gzip_module_loop(paths: list[Path]) -> int:
    """The stdlib `gzip` module as copyfileobj drives it (64 KiB reads), output dropped."""
    import gzip

    n = 0
    for p in paths:
        with gzip.open(p, "rb") as f:
            while chunk := f.read(64 << 10):
                n += len(chunk)
    return n


def inflaters() -> dict[str, Callable[[list[Path]], int]]:
    """Every inflater to compare in-process; isal only if installed (it is the optional fast path)."""
    out: dict[str, Callable[[list[Path]], int]] = {
        "gzip module": gzip_module_loop,
        "zlib.decompressobj": lambda ps: inflate_loop(lambda: zlib.decompressobj(16 + zlib.MAX_WBITS), ps),
    }
    try:
        from isal import isal_zlib
    except ImportError:
        return out
    out["isal_zlib.decompressobj"] = lambda ps: inflate_loop(lambda: isal_zlib.decompressobj(16 + 15), ps)
    return out


ZLIB_NAME = "SAGEMAKER_PIPE_GZIP"
ZLIB_ONLY = {ZLIB_NAME: "zlib"}  # the sidecar's switch that turns its optional fast inflater off


def inflate_only(name: str, fn: Callable[[list[Path]], int], paths: list[Path], expected: int) -> float:
    """Seconds one in-process inflater takes over every file (no FIFO): the ceiling for that inflater."""
    t0 = time.perf_counter()
    n = fn(paths)
    seconds = time.perf_counter() - t0
    if n != expected:
        raise RuntimeError(f"{name} inflated {n} bytes, expected {expected}")
    return seconds


def _inflate_rep(name: str, fn: Callable[[list[Path]], int], paths: list[Path], expected: int,
                 rep: int) -> tuple[float, float]:
    return in_process_cpu(lambda: inflate_only(name, fn, paths, expected))


def case_gzip(s: Settings, res: Results) -> None:
    """Target 3: Gzip channel into the FIFO >= 2.5x the stdlib gzip module; plus inflate-only figures.

    The in-process inflaters run in the same repetitions as the FIFO runs, so that all see the
    same machine load: their ratios are what wiring each one in can buy at most.
    """
    count = 4 if s.quick else 14
    paths, inflated = data.write_gzip_files(s.work / "gzip", count, 16 * MIB)
    packed = data.total_size(paths)
    epochs = s.warmup + s.reps
    chans = [channel("train", str(s.work / "gzip"), gunzip=True)]
    with ExitStack() as stack:
        side = stack.enter_context(Sidecar(s, "gzip", chans, epochs))
        # the same sidecar with its fast inflater turned off: what a machine without isal gets
        slow = stack.enter_context(Sidecar(s, "gzip-zlib", chans, epochs, env=dict(os.environ, **ZLIB_ONLY)))
        orig = stack.enter_context(OriginalTool(s, "gzip", str(s.work / "gzip"), epochs, name="gzip"))
        fns: dict[str, Callable[[int], tuple[float, float]]] = {
            "ours": functools.partial(side.read_epoch_cpu, "train"),
            "zlib": functools.partial(slow.read_epoch_cpu, "train"),
            "stdlib": orig.read_epoch_cpu,
        }
        for name, fn in inflaters().items():
            fns[name] = functools.partial(_inflate_rep, name, fn, paths, inflated)
        t, cpu = repeat_cpu(s, fns)
        lines = side.finish()
        zlib_lines = slow.finish()
    check_bytes(lines, "train", inflated)
    check_bytes(zlib_lines, "train", inflated)
    res.sample("gzip", {"inflated": inflated, "packed": packed, "seconds": t, "cpu_seconds": cpu})
    rate = {k: inflated / median(v) / 1e6 for k, v in t.items()}
    per = {k: per_gb(v, inflated) for k, v in cpu.items()}  # per GB inflated, as the MB/s
    what = f"{inflated / MIB:.0f} MiB inflated ({inflated / packed:.1f}:1)"
    res.add(replace(ratio_row("gzip", f"{what}: FIFO -> cat", "MB/s", rate["ours"], "gzip module -> FIFO",
                              rate["stdlib"], 2.5, where_time_went(lines, "train", s.warmup)),
                    cpu=cpu_text(per["ours"], per["stdlib"], "GB")))
    res.add(Row("gzip", f"  same, {ZLIB_NAME}=zlib (the fallback)", rate["zlib"], "MB/s",
                f"gzip module -> FIFO {rate['stdlib']:.1f}", rate["zlib"] / rate["stdlib"],
                note=where_time_went(zlib_lines, "train", s.warmup), cpu=cpu_text(per["zlib"], per["stdlib"], "GB")))
    for name in inflaters():
        if name != "gzip module":
            res.add(Row("gzip", f"inflate only, in-process: {name}", rate[name], "MB/s",
                        f"gzip module {rate['gzip module']:.1f}", rate[name] / rate["gzip module"],
                        cpu=cpu_text(per[name], per["gzip module"], "GB")))
    if "isal_zlib.decompressobj" in rate:
        isal, zl = "isal_zlib.decompressobj", "zlib.decompressobj"
        res.add(Row("gzip", "inflate only: isal_zlib vs zlib", rate[isal], "MB/s", f"zlib {rate[zl]:.1f}",
                    rate[isal] / rate[zl], cpu=cpu_text(per[isal], per[zl], "GB")))
    else:
        res.skipped.append("gzip: isal is not installed, so the isal_zlib figure is missing (pip install isal)")


def case_turnaround(s: Settings, res: Results) -> None:
    """Target 6: EOF of `<ch>_n` to the existence of `<ch>_{n+1}`, from a reader process; < 5 ms median."""
    epochs = 15 if s.quick else 40
    folder = s.work / "turn"
    data.write_sized_files(folder, [256 << 10], data.random_block(MIB))
    for pause in (0.0, 0.1):
        name = f"turn-{int(pause * 1000)}ms"
        with Sidecar(s, name, [channel("train", str(folder))], epochs) as side:
            out = subprocess.run(
                [sys.executable, str(BENCH / "turnaround_reader.py"), str(side.fifo("train", 0))[:-2],
                 str(epochs), "--pause", str(pause)],
                capture_output=True, check=True, timeout=120, env=package_env(s),
            )
            side.finish()
        r = json.loads(out.stdout)
        if set(r["bytes"]) != {256 << 10}:
            raise RuntimeError(f"turnaround reader got {r['bytes']} bytes per epoch")
        res.sample(name, r)
        if pause == 0:
            exists = r["eof_to_exists_ms"]
            res.add(Row("turnaround", f"EOF of _n -> _n+1 exists ({epochs - 1} epochs)", median(exists), "ms",
                        "", None, "< 5 ms", median(exists) < 5, f"max {max(exists):.3f} ms"))
        res.add(Row("turnaround", f"open() of _n+1 blocks, reader back {pause * 1000:.0f} ms after EOF",
                    median(r["open_ms"]), "ms", note=f"max {max(r['open_ms']):.1f} ms (no target)"))
