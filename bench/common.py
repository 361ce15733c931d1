"""Shared pieces of the benchmark: result rows, child processes, the sidecar under test, readers.

Every child process is started in its own session and remembered, so that whatever happens
(an exception, Ctrl-C, a timeout) `Procs.kill_all` ends exactly the processes this run started,
by their process-group id, and nothing else.
"""

from __future__ import annotations

import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MIB = 1 << 20
GIB = 1 << 30
REPO = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
READ_TIMEOUT = 300.0  # no single read of one epoch may take longer than this: a hung run fails, never hangs


@dataclass(frozen=True)
class Settings:
    """What one invocation was asked to do; `quick` shrinks data and repeats, never the method."""

    quick: bool
    reps: int  # timed repetitions per measurement; medians are taken over these
    warmup: int  # untimed repetitions before them (first-touch, connection set-up)
    package_dir: Path  # the sagemaker_pipe to benchmark (the repo, or a scratch copy of it)
    work: Path  # scratch folder for data and ml-roots, on tmpfs when there is one
    py_spy: Path | None = None  # when set, the sidecar runs under py-spy and flame graphs land here
    imported: str = ""  # the package folder the children really import (checked at start)


@dataclass
class Row:
    """One line of the result table: our figure against one baseline (or an absolute target)."""

    case: str
    measure: str
    ours: float | None
    unit: str
    baseline: str = ""  # "name value unit" for display; empty for an absolute target
    ratio: float | None = None
    target: str = ""
    passed: bool | None = None  # None: informational, no target
    note: str = ""
    cpu: str = ""  # CPU (user + system) per unit of work, ours beside the baseline's, where measured


@dataclass
class Results:
    """Every row plus the raw samples, written to bench/results/ as JSON for later comparison."""

    rows: list[Row] = field(default_factory=list)
    samples: dict[str, Any] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def add(self, row: Row) -> None:
        self.rows.append(row)

    def sample(self, key: str, values: Any) -> None:
        self.samples[key] = values


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def ratio_row(case: str, measure: str, unit: str, ours: float, name: str, base: float, minimum: float,
              note: str = "") -> Row:
    """A higher-is-better comparison: pass when ours/base reaches `minimum`."""
    r = ours / base if base > 0 else float("inf")
    return Row(case, measure, ours, unit, f"{name} {fmt(base)}", r, f">= {minimum:g}x", r >= minimum, note)


def fmt(x: float | None) -> str:
    if x is None:
        return "-"
    if x >= 1000:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.3g}"


# --- child processes -------------------------------------------------------------------------

class Procs:
    """Registry of the children this run started, for a guaranteed clean-up."""

    _live: list[subprocess.Popen[bytes]] = []
    last_cpu = 0.0  # CPU seconds of the last timed_children's commands (and their own children)

    @classmethod
    def spawn(cls, cmd: Sequence[str], **kw: Any) -> subprocess.Popen[bytes]:
        kw.setdefault("stdin", subprocess.DEVNULL)
        p = subprocess.Popen(list(cmd), start_new_session=True, **kw)
        cls._live.append(p)
        return p

    @classmethod
    def stop(cls, p: subprocess.Popen[bytes], grace: float = 5.0) -> int:
        """SIGTERM the child's process group, then SIGKILL after `grace` seconds."""
        if p.poll() is None:
            _signal_group(p, signal.SIGTERM)
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                _signal_group(p, signal.SIGKILL)
                p.wait(grace)
        if p in cls._live:
            cls._live.remove(p)
        return p.returncode

    @classmethod
    def kill_all(cls) -> None:
        for p in list(cls._live):
            cls.stop(p, grace=2.0)


def _signal_group(p: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(p.pid, sig)  # the group we created with start_new_session: its id is p.pid
    except ProcessLookupError:
        pass


def wait_for(path: Path, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll (1 ms) until path exists; fail early if the process meant to make it has exited."""
    deadline = time.monotonic() + timeout
    while not os.path.lexists(path):
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited ({proc.returncode}) before {path} appeared")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout:.0f} s")
        time.sleep(0.001)


def timed_children(cmds: Sequence[Sequence[str]], timeout: float = READ_TIMEOUT, stdin: bytes | None = None) -> float:
    """Wall time from starting the commands (at once) until the last exits; each must exit 0.

    Waits with a blocking waitpid and a watchdog timer, not `subprocess.run(timeout=...)`:
    with a timeout, Popen.wait polls with sleeps that grow to 50 ms, which rounds every
    reading up to the next 50 ms step (a 115 ms epoch read as 165 ms).
    """
    t0 = time.perf_counter()
    procs = [Procs.spawn(cmd, stdout=subprocess.DEVNULL, stdin=subprocess.PIPE if stdin is not None else None)
             for cmd in cmds]
    watchdog = threading.Timer(timeout, lambda: [_signal_group(p, signal.SIGKILL) for p in procs])
    watchdog.start()
    try:
        for p in procs:
            if stdin is not None:
                assert p.stdin is not None
                p.stdin.write(stdin)
                p.stdin.close()
        cpu = 0.0
        for p in procs:  # wait4: the exit and the CPU the command (and its reaped children) used
            _, status, usage = os.wait4(p.pid, 0)
            p.returncode = os.waitstatus_to_exitcode(status)
            cpu += usage.ru_utime + usage.ru_stime
        codes = [p.returncode for p in procs]
        seconds = time.perf_counter() - t0
        Procs.last_cpu = cpu
    finally:
        watchdog.cancel()
        for p in procs:
            Procs.stop(p)
    if any(codes):
        raise RuntimeError(f"{cmds[0][0]} exited {codes} (killed after {timeout:.0f} s?)")
    return seconds


_TICK = os.sysconf("SC_CLK_TCK")


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process, its threads and its children, live or reaped, have used."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:  # gone: its time is in its parent's reaped-children figures
        return 0.0
    try:
        kids = [int(k) for t in Path(f"/proc/{pid}/task").iterdir() for k in (t / "children").read_text().split()]
    except OSError:  # a thread gone meanwhile, or a kernel without the children files: live children uncounted
        kids = []
    return sum(int(x) for x in fields[11:15]) / _TICK + sum(tree_cpu(k) for k in kids)


def cpu_of(pid: int, read: Callable[[], float]) -> tuple[float, float]:
    """(seconds, CPU seconds) of a read timed by `read` (a timed_children reader, e.g. `cat`) from a
    long-lived process `pid`: that process's tree and the reader together."""
    before = tree_cpu(pid)
    seconds, reader = reader_cpu(read)
    return seconds, tree_cpu(pid) - before + reader


def reader_cpu(read: Callable[[], float]) -> tuple[float, float]:
    """(seconds, CPU seconds) of a timed_children read (`cat FILES`): the commands' own rusage."""
    seconds = read()
    return seconds, Procs.last_cpu


def in_process_cpu(run: Callable[[], float]) -> tuple[float, float]:
    """(seconds, CPU seconds) of a loop timed in this process, which does nothing else meanwhile:
    its user + system time (all threads) over the loop."""
    before = time.process_time()
    seconds = run()
    return seconds, time.process_time() - before


def per_1000(cpu: Sequence[float], count: int) -> float:
    """Median CPU seconds per 1,000 files or objects."""
    return median(cpu) / count * 1000


def per_gb(cpu: Sequence[float], nbytes: int) -> float:
    """Median CPU seconds per GB (10^9 bytes, as the GB/s and MB/s figures)."""
    return median(cpu) / (nbytes / 1e9)


def cpu_text(ours: float, base: float | None, unit: str) -> str:
    """The table's CPU column: ours beside the baseline's, or ours alone in a row without a baseline."""
    return f"{fmt(ours)}{'' if base is None else f' / {fmt(base)}'} s per {unit}"


def cat_seconds(paths: Sequence[str | Path], timeout: float = READ_TIMEOUT) -> float:
    """Wall time of `cat PATHS > /dev/null`: the reader the issue's targets are stated for."""
    return timed_children([["cat", *map(str, paths)]], timeout)


def cat_many_seconds(paths: Sequence[str | Path], timeout: float = READ_TIMEOUT) -> float:
    """`cat` over more files than one command line holds, via `xargs -0 cat` (several cat processes)."""
    return timed_children([["xargs", "-0", "cat"]], timeout, stdin=b"\0".join(str(p).encode() for p in paths))


def cats_concurrently(paths: Sequence[Path], timeout: float = READ_TIMEOUT) -> float:
    """One `cat` per FIFO, all at once (several channels read by one algorithm); wall time of all."""
    return timed_children([["cat", str(p)] for p in paths], timeout)


# --- the sidecar under test ------------------------------------------------------------------

def channel(name: str, uri: str, *, recordio: bool = False, gunzip: bool = False) -> dict[str, Any]:
    """One InputDataConfig entry, with SageMaker's field names."""
    return {
        "ChannelName": name,
        "DataSource": {"S3DataSource": {"S3Uri": uri, "S3DataType": "S3Prefix"}},
        "RecordWrapperType": "RecordIO" if recordio else "None",
        "CompressionType": "Gzip" if gunzip else "None",
    }


def package_env(settings: Settings, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a child needs to import the sagemaker_pipe being benchmarked."""
    env = dict(extra if extra is not None else os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(settings.package_dir), env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    return env


def imported_package(settings: Settings) -> str:
    """The sagemaker_pipe a sidecar child really imports (env and working folder as for the sidecar)."""
    out = subprocess.run([sys.executable, "-c", "import sagemaker_pipe; print(sagemaker_pipe.__file__)"],
                         env=package_env(settings), cwd=settings.work, capture_output=True, text=True, timeout=60)
    return str(Path(out.stdout.strip()).parent) if out.returncode == 0 else f"import failed: {out.stderr[-200:]}"


class Sidecar:
    """`python -m sagemaker_pipe --config ... --ml-root ... --epochs N` as a child process.

    Entering waits until every channel's first FIFO exists, so that start-up (imports, listing)
    is timed separately (`startup_s`) and never inside an epoch.
    """

    def __init__(self, settings: Settings, name: str, channels: list[dict[str, Any]], epochs: int,
                 env: dict[str, str] | None = None, wrap: Sequence[str] = ()) -> None:
        self.settings = settings
        self.name = name
        self.channels = channels
        self.epochs = epochs
        self.env = package_env(settings, env)
        self.wrap = list(wrap)
        self.root = settings.work / f"ml-{name}"
        self.config = settings.work / f"{name}.json"
        self.log = settings.work / f"{name}.stderr"
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_s = 0.0

    def __enter__(self) -> Sidecar:
        self.config.write_text(json.dumps({"InputDataConfig": self.channels}))
        cmd = [*self._profiler(), *self.wrap, sys.executable, "-m", "sagemaker_pipe", "--config", str(self.config),
               "--ml-root", str(self.root), "--epochs", str(self.epochs)]
        t0 = time.perf_counter()
        with open(self.log, "wb") as err:
            # cwd: `python -m` puts the working folder first on sys.path, ahead of PYTHONPATH
            self.proc = Procs.spawn(cmd, env=self.env, stdout=subprocess.DEVNULL, stderr=err, cwd=self.settings.work)
        try:
            for c in self.channels:
                wait_for(self.fifo(c["ChannelName"], 0), 600, self.proc)
        except BaseException:
            self.__exit__(None, None, None)
            tail = self.stderr().strip()
            last = tail.splitlines()[-1] if tail else "no output"
            raise RuntimeError(f"sidecar {self.name} did not start: {last}\n{tail[-2000:]}") from None
        self.startup_s = time.perf_counter() - t0
        return self

    def _profiler(self) -> list[str]:
        if self.settings.py_spy is None:
            return []
        self.settings.py_spy.mkdir(parents=True, exist_ok=True)
        out = self.settings.py_spy / f"{self.name}.folded"  # folded stacks: grep them, or open in speedscope
        return ["py-spy", "record", "--threads", "--nonblocking", "-r", "250", "--format", "raw", "-o", str(out), "--"]

    def fifo(self, channel_name: str, epoch: int) -> Path:
        return self.root / "input" / "data" / f"{channel_name}_{epoch}"

    def read_epoch(self, channel_name: str, epoch: int) -> float:
        """Seconds `cat <channel>_<epoch> > /dev/null` takes; the FIFO already exists by design."""
        path = self.fifo(channel_name, epoch)
        assert self.proc is not None
        wait_for(path, 60, self.proc)
        return cat_seconds([path])

    def read_epoch_cpu(self, channel_name: str, epoch: int) -> tuple[float, float]:
        """read_epoch, and the CPU seconds the sidecar (with its children) and `cat` used meanwhile."""
        assert self.proc is not None
        return cpu_of(self.proc.pid, lambda: self.read_epoch(channel_name, epoch))

    def stderr(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def finish(self, timeout: float = 60) -> list[dict[str, str]]:
        """Wait for the exit after the last epoch; return the sidecar's per-epoch log fields."""
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout)
        finally:
            Procs.stop(self.proc)
        if code != 0:
            raise RuntimeError(f"sidecar {self.name} exited {code}:\n{self.stderr()[-2000:]}")
        return epoch_lines(self.stderr())

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            Procs.stop(self.proc)


def epoch_lines(stderr: str) -> list[dict[str, str]]:
    """The `channel=... epoch=...` INFO lines as dicts (writer-blocked, reader-starved, MB/s...)."""
    return [dict(re.findall(r"(\S+)=(\S+)", line)) for line in stderr.splitlines()
            if " channel=" in line and " epoch=" in line and "summary" not in line]


def check_bytes(lines: list[dict[str, str]], channel_name: str, expected: int) -> None:
    """Every complete epoch must have carried exactly the expected bytes: a fast wrong answer is no answer."""
    got = [int(f["bytes"]) for f in lines if f.get("channel") == channel_name]
    if not got or any(b != expected for b in got):
        raise RuntimeError(f"channel {channel_name}: epochs carried {got} bytes, expected {expected} each")


def where_time_went(lines: list[dict[str, str]], channel_name: str, skip: int) -> str:
    """The sidecar's own view (its epoch lines): MB/s from writer-open to close, and who waited.

    The sidecar's clock starts when its writer connects, the reader's when it opens the FIFO:
    a gap between the two figures is time the reader spent blocked in open().
    """
    mine = [f for f in lines if f.get("channel") == channel_name][skip:]
    if not mine:
        return ""
    rate = median([float(f["MB/s"]) for f in mine])
    blocked = median([float(f["writer-blocked"].rstrip("%")) for f in mine])
    starved = median([float(f["reader-starved"].rstrip("%")) for f in mine])
    return f"sidecar's own figure {rate:,.0f} MB/s; writer-blocked {blocked:.0f}%, reader-starved {starved:.0f}%"


def repeat_cpu(settings: Settings, fns: dict[str, Callable[[int], tuple[float, float]]],
               ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """repeat() for measurements that return (seconds, CPU seconds): the two series apart."""
    both: dict[str, list[tuple[float, float]]] = {k: [] for k in fns}
    timed = repeat(settings, {k: (lambda i, k=k: _keep(both[k], fns[k](i))) for k in fns})
    return timed, {k: [c for _, c in v[settings.warmup:]] for k, v in both.items()}


def _keep(into: list[tuple[float, float]], value: tuple[float, float]) -> float:
    into.append(value)
    return value[0]


def repeat(settings: Settings, fns: dict[str, Callable[[int], float]]) -> dict[str, list[float]]:
    """Run each measurement once per repetition, interleaved, so that machine noise hits all alike.

    `fn(i)` gets the repetition index (warm-ups included, which are dropped from the result).
    """
    out: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(settings.warmup + settings.reps):
        for k, fn in fns.items():
            v = fn(i)
            if i >= settings.warmup:
                out[k].append(v)
    return out


# --- the machine -----------------------------------------------------------------------------

def machine() -> dict[str, str]:
    """What the numbers were measured on: they mean little without it."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        pipe_max = Path("/proc/sys/fs/pipe-max-size").read_text().strip()
    except OSError:
        pipe_max = "?"
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    except (ValueError, OSError):
        mem = 0.0
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "memory": f"{mem:.1f} GiB",
        "kernel": platform.release(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "pipe-max-size": pipe_max,
        "load-average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


class OriginalTool:
    """bench/original.py (the original tool's method) as a child process serving `epochs` epochs."""

    def __init__(self, settings: Settings, mode: str, src: str, epochs: int,
                 env: dict[str, str] | None = None, name: str = "orig") -> None:
        self.dest = settings.work / f"orig-{name}"
        self.cmd = [sys.executable, str(BENCH / "original.py"), mode, "ch", src, str(self.dest),
                    "--epochs", str(epochs)]
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> OriginalTool:
        self.proc = Procs.spawn(self.cmd, env=self.env, stdout=subprocess.DEVNULL)
        return self

    def read_epoch(self, epoch: int) -> float:
        """Seconds `cat` takes on epoch n; the original makes each FIFO only when the last one is done."""
        path = self.dest / f"ch_{epoch}"
        assert self.proc is not None
        wait_for(path, 120, self.proc)
        return cat_seconds([path])

    def read_epoch_cpu(self, epoch: int) -> tuple[float, float]:
        """read_epoch, and the CPU seconds the tool and `cat` used meanwhile."""
        assert self.proc is not None
        return cpu_of(self.proc.pid, lambda: self.read_epoch(epoch))

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            Procs.stop(self.proc)
