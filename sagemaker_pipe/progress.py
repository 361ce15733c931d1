"""What the sidecar is doing right now: per-channel progress, the status file, progress lines, idle exit.

Channel workers report two events (a reader opened the epoch's FIFO; the epoch ended) and File-mode
copies report bytes; one monitor thread turns them, at steady intervals, into the status file
(`--status-file`, every STATUS_INTERVAL s), a progress log line (`--progress-interval`), and the
`--exit-when-idle` decision.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from sagemaker_pipe.layout import Layout, make_dirs, write_atomic
from sagemaker_pipe.plan import ChannelPlan

log = logging.getLogger("sagemaker_pipe")
STATUS_INTERVAL = 2.0  # seconds between refreshes of the status file
TICK = 0.1  # how often the monitor looks; bounds how late an idle exit or a refresh can be


class Written(Protocol):
    """The FIFO writer, as far as progress is concerned: bytes written so far in its epoch."""

    written: int


class EpochResult(Protocol):
    epoch: int
    bytes: int
    complete: bool

    def fields(self) -> dict[str, Any]: ...


class ChannelProgress:
    """One channel's counters. Pipe: updated by its worker thread; File: by the copier."""

    def __init__(self, name: str, mode: str, fifo: Callable[[int], Path] | None = None,
                 folder: Path | None = None) -> None:
        self.name = name
        self.mode = mode
        self._fifo = fifo
        self.folder = folder
        self._lock = threading.Lock()
        self.state = "waiting" if mode == "Pipe" else "pending"
        self.epoch = 0  # the epoch being read, or the next one a reader will get
        self.epochs_complete = 0
        self.epochs_cut = 0  # readers that closed before the end
        self.last_epoch: dict[str, Any] | None = None  # the last epoch's figures and verdict
        self.objects = 0
        self.total_bytes: int | None = None  # File mode: what the copy will amount to
        self._done_bytes = 0
        self._writer: Written | None = None
        self.since = time.monotonic()  # when the current state began
        self.last_activity = self.since  # last FIFO open or epoch end

    # -- Pipe: called by ChannelWorker (on_open / on_epoch)
    def opened(self, epoch: int, writer: Written) -> None:
        now = time.monotonic()
        with self._lock:
            self.epoch, self._writer, self.state = epoch, writer, "reading"
            self.since = self.last_activity = now

    def closed(self, stats: EpochResult) -> None:
        now = time.monotonic()
        with self._lock:
            self._done_bytes += stats.bytes
            self.last_epoch = stats.fields()
            self._writer = None
            if stats.complete:
                self.epochs_complete += 1
            else:
                self.epochs_cut += 1
            self.epoch, self.state = stats.epoch + 1, "waiting"
            self.since = self.last_activity = now

    def on_epoch(self, also: Callable[[Any], None]) -> Callable[[Any], None]:
        """A ChannelWorker on_epoch hook that records the epoch here and hands it on to `also`."""
        def hook(stats: Any) -> None:
            also(stats)
            self.closed(stats)
        return hook

    def finished(self) -> None:
        with self._lock:
            self.state = "finished"
            self.since = time.monotonic()

    # -- File mode: called by the copier
    def copying(self, objects: int, total_bytes: int) -> None:
        with self._lock:
            self.state, self.objects, self.total_bytes = "copying", objects, total_bytes
            self.since = time.monotonic()

    def copied_bytes(self, n: int) -> None:
        with self._lock:
            self._done_bytes += n

    def copied(self, objects: int, nbytes: int, seconds: float) -> None:
        with self._lock:
            self.state, self.objects, self._done_bytes = "copied", objects, nbytes
            self.since = time.monotonic()

    # -- read by the monitor
    @property
    def bytes(self) -> int:
        with self._lock:
            return self._done_bytes + (self._writer.written if self._writer is not None else 0)

    @property
    def epoch_bytes(self) -> int:
        with self._lock:
            return self._writer.written if self._writer is not None else 0

    def fifo(self) -> str | None:
        return str(self._fifo(self.epoch)) if self._fifo is not None and self.mode == "Pipe" else None


class _Rate:
    """MB/s between two looks at a byte counter (the first look counts from `start`, 0 bytes)."""

    def __init__(self, start: float) -> None:
        self.start = start
        self._last: dict[str, tuple[float, int]] = {}

    def __call__(self, name: str, now: float, nbytes: int) -> float:
        t0, b0 = self._last.get(name, (self.start, 0))
        self._last[name] = (now, nbytes)
        return (nbytes - b0) / (now - t0) / 1e6 if now > t0 else 0.0


class Monitor:
    """One thread: status file every STATUS_INTERVAL s, a progress line every `progress_interval` s,
    and `stop` set (a clean exit) once the job has been idle for `exit_when_idle` s."""

    def __init__(self, plans: Sequence[ChannelPlan], layout: Layout, stop: threading.Event,
                 status_file: Path | None = None, progress_interval: float = 0.0,
                 exit_when_idle: float | None = None) -> None:
        self.layout = layout
        self.stop = stop
        self.status_file = status_file
        self.progress_interval = progress_interval
        self.exit_when_idle = exit_when_idle
        self.channels: dict[str, ChannelProgress] = {}
        for p in plans:
            c = p.channel
            if c.input_mode == "Pipe":
                self.channels[c.name] = ChannelProgress(c.name, "Pipe", fifo=functools.partial(layout.fifo, c.name))
            else:
                self.channels[c.name] = ChannelProgress(c.name, c.input_mode, folder=layout.folder(c.name))
        self.started = time.time()
        self.is_ready = False
        self.error: str | None = None  # a stream failed: the one-line error
        self.pid_ns = pid_namespace()  # fixed for the life of the process
        self.ready_at = time.monotonic()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._status_rate = _Rate(time.monotonic())
        self._log_rate = _Rate(time.monotonic())
        self._status_failed = False

    def channel(self, name: str) -> ChannelProgress:
        return self.channels[name]

    @property
    def wanted(self) -> bool:
        return self.status_file is not None or self.progress_interval > 0 or self.exit_when_idle is not None

    def start(self) -> None:
        self._status_rate.start = self._log_rate.start = time.monotonic()
        if self.wanted and self._thread is None:
            self.write_status()
            self._thread = threading.Thread(target=self._run, name="monitor", daemon=True)
            self._thread.start()

    def ready(self) -> None:
        """Config files, File-mode data and every first FIFO exist: the algorithm may start."""
        self.is_ready = True
        self.ready_at = time.monotonic()
        self.write_status()

    def failed(self, error: str) -> None:
        """A stream failed: the status file says so at once (state failed, the error line)."""
        self.error = error
        self.write_status()

    def close(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join(2.0)

    # -- the thread
    def _run(self) -> None:
        next_status = time.monotonic() + STATUS_INTERVAL
        next_line = time.monotonic() + self.progress_interval
        while not self._done.wait(TICK):
            now = time.monotonic()
            if self.status_file is not None and now >= next_status:
                self.write_status()
                next_status = now + STATUS_INTERVAL
            if self.progress_interval > 0 and now >= next_line:
                self.log_progress()
                next_line = now + self.progress_interval
            if self.exit_when_idle is not None and self._idle_for(now) >= self.exit_when_idle:
                log.info("no FIFO opened for %.1f s after every Pipe channel's first complete epoch: "
                         "exiting (--exit-when-idle)", self.exit_when_idle)
                self.stop.set()
                return

    def _idle_for(self, now: float) -> float:
        """Seconds with no reader on any FIFO; 0 until ready and until every Pipe channel did an epoch."""
        if not self.is_ready:
            return 0.0
        last = self.ready_at
        for p in self.channels.values():
            if p.mode != "Pipe":
                continue
            if p.state == "reading" or p.epochs_complete < 1:
                return 0.0
            last = max(last, p.last_activity)
        return now - last

    # -- what it produces
    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        out: dict[str, Any] = {
            "ready": self.is_ready and self.error is None,
            "state": "failed" if self.error is not None else "ready" if self.is_ready else "starting",
            "pid": os.getpid(),
            "pid_ns": self.pid_ns,  # `status` checks the pid only from the same namespace
            "channels": list(self.channels),
            "started": round(self.started, 3),
            "updated": round(time.time(), 3),
            "interval_s": STATUS_INTERVAL,
            "progress": {},
        }
        if self.error is not None:
            out["error"] = self.error
        for name, p in self.channels.items():
            nbytes = p.bytes
            entry: dict[str, Any] = {"mode": p.mode, "state": p.state, "bytes": nbytes,
                                     "mb_per_s": round(self._status_rate(name, now, nbytes), 2),
                                     "state_s": round(now - p.since, 1)}
            if p.mode == "Pipe":
                entry.update(epoch=p.epoch, epoch_bytes=p.epoch_bytes, epochs_complete=p.epochs_complete,
                             epochs_cut=p.epochs_cut, fifo=p.fifo(), last_epoch=p.last_epoch)
            else:
                entry.update(objects=p.objects, total_bytes=p.total_bytes, folder=str(p.folder))
            out["progress"][name] = entry
        return out

    def write_status(self) -> None:
        if self.status_file is None:
            return
        try:
            make_dirs(self.status_file.parent)
            write_atomic(self.status_file, json.dumps(self.snapshot()) + "\n")
        except OSError as e:
            if not self._status_failed:
                log.warning("cannot write the status file %s: %s", self.status_file, e.strerror or e)
                self._status_failed = True

    def log_progress(self) -> None:
        """One line per channel that is still at work, worded for a person watching a terminal."""
        now = time.monotonic()
        for name, p in self.channels.items():
            nbytes = p.bytes
            rate = self._log_rate(name, now, nbytes)
            waited = now - p.since
            fields: dict[str, Any] = {"channel": name, "mode": p.mode, "state": p.state, "bytes": nbytes,
                                      "mb_per_s": round(rate, 2), "state_s": round(waited, 1)}
            if p.mode == "Pipe":
                fields["epoch"] = p.epoch
                if p.state == "reading":
                    msg = (f"progress: {name} epoch {p.epoch} reading, {human_size(p.epoch_bytes)} this epoch, "
                           f"{human_size(nbytes)} in all, {rate:.1f} MB/s")
                elif p.state == "waiting":
                    msg = (f"progress: {name} waiting {waited:.0f} s for a reader to open {p.fifo()} "
                           f"(complete epochs so far: {p.epochs_complete})")
                else:
                    continue
            elif p.state == "copying":
                msg = (f"progress: {name} ({p.mode}) copying, {human_size(nbytes)} of "
                       f"{human_size(p.total_bytes or 0)}, {rate:.1f} MB/s")
            else:
                continue
            log.info(msg, extra={"fields": fields})


def pid_namespace() -> int | None:
    """The pid namespace this process is in (a container has its own), None where there is no /proc."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def human_size(n: float) -> str:
    """1234567 -> '1.2 MB' (decimal units, as MB/s figures are)."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
