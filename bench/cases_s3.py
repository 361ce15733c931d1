"""Cases against a real S3 server (SeaweedFS on 127.0.0.1): many small objects, one large one, memory.

SeaweedFS and never moto: moto serves ranged GETs several times slower than whole ones, which
would make any parallel-range strategy look bad (shared/CONTAINER_TESTING.md).
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

import data
from common import (
    BENCH,
    GIB,
    MIB,
    REPO,
    OriginalTool,
    Procs,
    Results,
    Row,
    Settings,
    Sidecar,
    cat_seconds,
    cats_concurrently,
    channel,
    check_bytes,
    cpu_of,
    cpu_text,
    median,
    per_1000,
    per_gb,
    ratio_row,
    repeat_cpu,
    where_time_went,
)

BUCKET = "bench"
sys.path.insert(0, str(REPO / "tests"))  # tests/s3_servers.py: the SeaweedFS launcher the test suite uses


def skip_reason(s: Settings) -> str | None:
    """Why the S3 cases cannot run (no S3 transport yet, no SeaweedFS), or None."""
    if not (s.package_dir / "sagemaker_pipe" / "sources" / "s3.py").exists():
        return f"{s.package_dir}/sagemaker_pipe/sources/s3.py does not exist yet"
    from s3_servers import SeaweedServer

    return SeaweedServer.unavailable_reason()


class S3Env:
    """One SeaweedFS server for every S3 case of the run, with the bench bucket and a client."""

    def __enter__(self) -> S3Env:
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config
        from s3_servers import SeaweedServer

        self.server = SeaweedServer().start()
        self.client = self.server.client(config=Config(max_pool_connections=32))
        self.client.create_bucket(Bucket=BUCKET)
        self.env = self.server.child_env()
        self.transfer = TransferConfig(multipart_chunksize=64 * MIB, max_concurrency=8)
        return self

    def put_many(self, prefix: str, count: int, size: int) -> None:
        block = data.random_block(4 * MIB, seed=3)
        with ThreadPoolExecutor(16) as ex:
            list(ex.map(lambda i: self.client.put_object(
                Bucket=BUCKET, Key=f"{prefix}{i:06d}.bin", Body=block[(i * size) % (len(block) - size):][:size]),
                range(count)))

    def put_file(self, key: str, path: Path) -> None:
        self.client.upload_file(str(path), BUCKET, key, Config=self.transfer)

    def __exit__(self, *exc: object) -> None:
        self.server.stop()


class Baselines:
    """bench/s3_baselines.py as a child: one command per timed download, answered with its seconds."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = Procs.spawn([sys.executable, str(BENCH / "s3_baselines.py")], env=env,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self._line() == "ready"

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().strip()
        if not line:
            raise RuntimeError(f"s3_baselines.py exited {self.proc.wait(10)}")
        return line

    def run(self, *args: str) -> tuple[float, float]:
        """(seconds, CPU seconds) of one command."""
        self.send(*args)
        seconds, cpu = self._line().split()
        return float(seconds), float(cpu)

    def send(self, *args: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((" ".join(args) + "\n").encode())
        self.proc.stdin.flush()

    def fifo_read_seconds(self, work: Path, bucket: str, key: str) -> tuple[float, float]:
        """One GET into a fresh FIFO, timed (like the sidecar's epochs) by `cat` on the reading side;
        the CPU is this child's and cat's."""
        path = work / "baseline.fifo"
        path.unlink(missing_ok=True)
        os.mkfifo(path)
        self.send("fifo", bucket, key, str(path))
        seconds = cat_seconds([path])
        cat_cpu = Procs.last_cpu
        cpu = float(self._line().split()[1])  # the child's own figures, once it is done
        path.unlink()
        return seconds, cpu + cat_cpu

    def __enter__(self) -> Baselines:
        return self

    def __exit__(self, *exc: object) -> None:
        Procs.stop(self.proc)


CRT_INFLIGHT = "64"  # awscrt's S3Client with 64 GETs in flight (issue 17's baseline)


def case_s3(s: Settings, res: Results, s3: S3Env) -> None:
    """Target 4, both halves: many small objects, then one large one; and issue 17's awscrt rows."""
    case_s3_small(s, res, s3, 300 if s.quick else 1000, 64 << 10, baselines=True)
    case_s3_small(s, res, s3, 2000 if s.quick else 10_000, 4 << 10, baselines=False)
    case_s3_large(s, res, s3)


def case_s3_small(s: Settings, res: Results, s3: S3Env, count: int, size: int, baselines: bool) -> None:
    """Target 4a: 1,000 objects of 64 KiB: >= 4x the original's sequential download_fileobj loop.
    Issue 17: >= 1.0x awscrt's S3 client, at <= 1.5x its CPU per object (also 10,000 x 4 KiB)."""
    prefix = f"small{size >> 10}k/"
    s3.put_many(prefix, count, size)
    uri = f"s3://{BUCKET}/{prefix}"
    epochs = s.warmup + s.reps
    with ExitStack() as stack:
        side = stack.enter_context(Sidecar(s, f"s3-small{size >> 10}k", [channel("train", uri)], epochs, env=s3.env))
        base = stack.enter_context(Baselines(s3.env))
        fns: dict[str, Callable[[int], tuple[float, float]]] = {
            "ours": lambda i: side.read_epoch_cpu("train", i),
            "crt": lambda i: base.run("crt", BUCKET, prefix, CRT_INFLIGHT),
        }
        if baselines:
            orig = stack.enter_context(OriginalTool(s, "s3", uri, epochs, env=s3.env, name="s3"))
            fns["orig"] = orig.read_epoch_cpu
            fns["pool16"] = lambda i: base.run("pool", BUCKET, prefix, "16")
        t, cpu = repeat_cpu(s, fns)
        lines = side.finish()
    check_bytes(lines, "train", count * size)
    res.sample(f"s3-small-{size}", {"objects": count, "seconds": t, "cpu_seconds": cpu})
    rate = {k: count / median(v) for k, v in t.items()}
    per = {k: per_1000(v, count) for k, v in cpu.items()}
    what = f"{count:,} x {size >> 10} KiB"
    unit = "1,000 obj"
    if baselines:
        res.add(replace(ratio_row("s3", f"{what}: FIFO -> cat", "obj/s", rate["ours"], "download_fileobj loop",
                                  rate["orig"], 4.0, where_time_went(lines, "train", s.warmup)),
                        cpu=cpu_text(per["ours"], per["orig"], unit)))
        res.add(Row("s3", f"{what}: vs 16-thread get_object pool", rate["ours"], "obj/s",
                    f"pool16 {rate['pool16']:,.0f}", rate["ours"] / rate["pool16"], note="no target",
                    cpu=cpu_text(per["ours"], per["pool16"], unit)))
    res.add(replace(ratio_row("s3", f"{what}: vs awscrt S3Client, {CRT_INFLIGHT} GETs in flight", "obj/s",
                              rate["ours"], "awscrt", rate["crt"], 1.0,
                              "" if baselines else where_time_went(lines, "train", s.warmup)),
                    cpu=cpu_text(per["ours"], per["crt"], unit)))
    ratio = per["ours"] / per["crt"]
    res.add(Row("s3", f"{what}: CPU per 1,000 objects vs awscrt", per["ours"], "s", f"awscrt {per['crt']:.3g}",
                ratio, "<= 1.5x", ratio <= 1.5,
                "user + system: the sidecar (all threads, children) and cat; awscrt's client process"))


def case_s3_large(s: Settings, res: Results, s3: S3Env) -> None:
    """Target 4b: one 512 MiB object: >= 0.9x the faster of a single GET and s3transfer, both into /dev/null."""
    size = 128 * MIB if s.quick else 512 * MIB
    path = data.write_repeated(s.work / "big.bin", size, seed=4)
    s3.put_file("big/object.bin", path)
    path.unlink()
    epochs = s.warmup + s.reps
    chans = [channel("train", f"s3://{BUCKET}/big/")]
    variants = {  # the sidecar as shipped, and with each of two choices undone, to show what each buys
        "ours": {},
        "ranges": {"SAGEMAKER_PIPE_S3_RANGES": "always"},  # 8 MiB parallel ranges even from a near server
        "malloc": {"MALLOC_TRIM_THRESHOLD_": "131072"},  # set by the user: malloc.py leaves glibc's defaults
    }
    timed = Path("/usr/bin/time").exists()  # for the page-fault counts
    reports = {k: s.work / f"time-{k}.txt" for k in variants}
    with ExitStack() as stack:
        sides = {k: stack.enter_context(Sidecar(s, f"s3-big-{k}", chans, epochs, env={**s3.env, **extra},
                                                wrap=["/usr/bin/time", "-v", "-o", str(reports[k])] if timed else []))
                 for k, extra in variants.items()}
        base = stack.enter_context(Baselines(s3.env))
        fns: dict[str, Callable[[int], tuple[float, float]]] = {
            k: functools.partial(side.read_epoch_cpu, "train") for k, side in sides.items()}
        t, cpu = repeat_cpu(s, {
            **fns,
            "single": lambda i: base.run("single", BUCKET, "big/object.bin"),
            "transfer": lambda i: base.run("transfer", BUCKET, "big/object.bin"),
            "fifo": lambda i: base.fifo_read_seconds(s.work, BUCKET, "big/object.bin"),
            "crt": lambda i: base.run("crtget", BUCKET, "big/object.bin"),
        })
        all_lines = {k: side.finish() for k, side in sides.items()}
    for lines in all_lines.values():
        check_bytes(lines, "train", size)
    lines = all_lines["ours"]
    faults = {k: minor_faults(r.read_text()) / (epochs * size / MIB) for k, r in reports.items()} if timed else {}
    res.sample("s3-large", {"bytes": size, "seconds": t, "cpu_seconds": cpu})
    rate = {k: size / median(v) / 1e6 for k, v in t.items()}
    per = {k: per_gb(v, size) for k, v in cpu.items()}
    best = max(("single", "transfer"), key=lambda k: rate[k])
    other = "transfer" if best == "single" else "single"
    name = {"single": "single GET", "transfer": "s3transfer"}
    res.add(replace(ratio_row("s3", f"1 x {size // MIB} MiB: FIFO -> cat", "MB/s", rate["ours"], name[best],
                              rate[best], 0.9,
                              f"{name[other]} {rate[other]:.0f} MB/s; " + where_time_went(lines, "train", s.warmup)),
                    cpu=cpu_text(per["ours"], per[best], "GB")))
    res.add(replace(ratio_row("s3", f"1 x {size // MIB} MiB: vs awscrt S3Client (GET_OBJECT: its parallel ranges)",
                              "MB/s", rate["ours"], "awscrt", rate["crt"], 1.5),
                    cpu=cpu_text(per["ours"], per["crt"], "GB")))
    res.add(Row("s3", "  same, vs a single GET -> FIFO -> cat (same sink)", rate["ours"], "MB/s",
                f"GET->FIFO {rate['fifo']:.0f}", rate["ours"] / rate["fifo"],
                note="what the FIFO itself costs: both sides copy every byte once more than into /dev/null",
                cpu=cpu_text(per["ours"], per["fifo"], "GB")))
    res.add(Row("s3", "  with 8 MiB ranges (SAGEMAKER_PIPE_S3_RANGES=always)", rate["ranges"], "MB/s",
                f"{name[best]} {rate[best]:.0f}", rate["ranges"] / rate[best],
                note="what one stream per object buys from a near server",
                cpu=cpu_text(per["ranges"], per[best], "GB")))
    res.add(Row("s3", "  with glibc's malloc defaults (MALLOC_TRIM_THRESHOLD_ set)", rate["malloc"], "MB/s",
                f"{name[best]} {rate[best]:.0f}", rate["malloc"] / rate[best],
                note=f"minor page faults per MiB streamed: {faults['malloc']:.0f}, against {faults['ours']:.1f} "
                     "with malloc.py's settings" if faults else "no /usr/bin/time: page faults not counted",
                cpu=cpu_text(per["malloc"], per[best], "GB")))


def minor_faults(time_output: str) -> int:
    m = re.search(r"Minor \(reclaiming a frame\) page faults: (\d+)", time_output)
    if not m:
        raise RuntimeError(f"no page-fault count in /usr/bin/time output:\n{time_output[-500:]}")
    return int(m.group(1))


def peak_rss_kib(time_output: str) -> int:
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", time_output)
    if not m:
        raise RuntimeError(f"no peak RSS in /usr/bin/time output:\n{time_output[-500:]}")
    return int(m.group(1))


def case_memory(s: Settings, res: Results, s3: S3Env) -> None:
    """Target 5: peak RSS < 150 MiB streaming a 2 GiB S3 object and a 2 GiB local file at once."""
    if not Path("/usr/bin/time").exists():
        res.skipped.append("memory: /usr/bin/time is missing (apt-get install time)")
        return
    size = 512 * MIB if s.quick else 2 * GIB
    folder = s.work / "mem-local"
    local = data.write_repeated(folder / "part-00000.bin", size, seed=6)
    t0 = time.perf_counter()
    s3.put_file("mem/object.bin", local)
    uploaded = time.perf_counter() - t0
    report = s.work / "time-v.txt"
    chans = [channel("s3", f"s3://{BUCKET}/mem/"), channel("local", str(folder))]
    epochs = 1 if s.quick else 2
    seconds, cpu = [], []
    with Sidecar(s, "memory", chans, epochs, env=s3.env, wrap=["/usr/bin/time", "-v", "-o", str(report)]) as side:
        assert side.proc is not None  # /usr/bin/time: the sidecar is its child, in its tree
        for n in range(epochs):
            fifos = [side.fifo("s3", n), side.fifo("local", n)]
            t, c = cpu_of(side.proc.pid, functools.partial(cats_concurrently, fifos))
            seconds.append(t)
            cpu.append(c)
        lines = side.finish()
    check_bytes(lines, "s3", size)
    check_bytes(lines, "local", size)
    rss = peak_rss_kib(report.read_text()) / 1024
    res.sample("memory", {"bytes_per_channel": size, "seconds": seconds, "cpu_seconds": cpu, "peak_rss_mib": rss,
                          "upload_s": uploaded})
    mbps = 2 * size / median(seconds) / 1e6
    res.add(Row("memory", f"2 channels x {size / GIB:g} GiB (S3 + local), {epochs} epoch(s)", rss, "MiB",
                "", None, "< 150 MiB", rss < 150, f"both channels together {mbps:.0f} MB/s",
                cpu=cpu_text(per_gb(cpu, 2 * size), None, "GB")))
