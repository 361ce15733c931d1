"""Runs every channel of a job at once: config files, first FIFOs, workers, signals, cleanup."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import threading
import time
from pathlib import Path
from statistics import median
from types import FrameType

from sagemaker_pipe.channel import ChannelWorker, EpochStats
from sagemaker_pipe.config import Job
from sagemaker_pipe.errors import ConfigError, PipeError, Stopped, in_channel
from sagemaker_pipe.fifo import FifoSet, replace_stale
from sagemaker_pipe.filemode import copy_all, file_copies, is_file_mode
from sagemaker_pipe.layout import STATUS_FOLDER, Layout, make_dirs
from sagemaker_pipe.lock import RootLock
from sagemaker_pipe.plan import ChannelPlan
from sagemaker_pipe.progress import Monitor

log = logging.getLogger("sagemaker_pipe")
GRACE_S = 1.0  # how long workers get to notice shutdown before their FIFOs are removed under them
FAILURE_HOLD_S = 10.0  # standing alone, how long a failed epoch's write end stays open (see _hold)
INTERRUPTED = 128 + signal.SIGINT  # the exit status a shell gives Ctrl-C


def input_data_config(job: Job) -> dict[str, dict[str, str]]:
    """inputdataconfig.json as SageMaker writes it (note S3DistributionType, no CompressionType).

    Only the channels this host receives: one for other instance groups is not listed.
    """
    out = {}
    for c in job.served:
        entry = {
            "TrainingInputMode": c.input_mode,
            "S3DistributionType": c.distribution,
            "RecordWrapperType": c.record_wrapper,
        }
        if c.content_type is not None:
            entry["ContentType"] = c.content_type
        out[c.name] = entry
    return out


def resource_config(job: Job) -> dict[str, object]:
    """resourceconfig.json with the keys SageMaker writes since heterogeneous clusters (2022)."""
    cluster = job.cluster
    return {
        "current_host": cluster.current_host,
        "current_instance_type": cluster.group.instance_type,
        "current_group_name": cluster.group.name,
        "hosts": list(cluster.hosts),
        "instance_groups": [{"instance_group_name": g.name, "instance_type": g.instance_type, "hosts": list(g.hosts)}
                            for g in cluster.groups],
        "network_interface_name": "eth0",
    }


def summary(history: dict[str, list[EpochStats]]) -> list[str]:
    """One line per channel at shutdown: epochs served and the median of each figure."""
    lines = []
    for name, epochs in history.items():
        if not epochs:
            lines.append(f"summary channel={name} epochs=0")
            continue
        middle = EpochStats(
            name, len(epochs), round(median(e.objects for e in epochs)), round(median(e.bytes for e in epochs)),
            median(e.seconds for e in epochs), median(e.blocked_s for e in epochs),
            median(e.starved_s for e in epochs), all(e.complete for e in epochs),
        )
        lines.append(
            f"summary channel={name} epochs={len(epochs)} median: bytes={middle.bytes} "
            f"seconds={middle.seconds:.3f} MB/s={middle.mb_per_s:.1f} "
            f"writer-blocked={middle.blocked_s:.3f}s reader-starved={middle.starved_s:.3f}s verdict={middle.verdict}"
        )
    return lines


class Sidecar:
    """Owns the stop flag, the set of FIFOs made, and the worker threads."""

    def __init__(self, job: Job | None, plans: list[ChannelPlan], layout: Layout, epochs: int | None = None,
                 status_file: Path | None = None, progress_interval: float = 0.0,
                 exit_when_idle: float | None = None, hold_on_failure: bool = False,
                 failure_hold: float = FAILURE_HOLD_S) -> None:
        self.job = job  # None in the original tool's form, which writes no config files
        self.files = file_copies(plans, layout)  # File/FastFile channels; their keys are checked here
        self.plans = [p for p in plans if not is_file_mode(p)]  # the Pipe channels
        self.layout = layout
        self.epochs = epochs
        self.status_file = status_file
        self.stop = threading.Event()
        self.signals: list[int] = []  # the signal that stopped the sidecar, once one has
        self.signalled = threading.Event()  # SIGTERM or SIGINT arrived
        self.hold_on_failure = hold_on_failure  # under a supervisor (run, the SDK add-on): hold until a signal
        self.failure_hold = failure_hold
        self.lock = RootLock(layout.lock_file, layout.root) if layout.root is not None else None
        self.fifos = FifoSet()
        self.errors: list[BaseException] = []
        self.history: dict[str, list[EpochStats]] = {p.channel.name: [] for p in self.plans}
        self.monitor = Monitor(plans, layout, self.stop, status_file, progress_interval, exit_when_idle)

    def _write_config(self, job: Job) -> None:
        """The three config files, each atomically, before any FIFO exists."""
        try:
            self.layout.write_config("inputdataconfig.json", input_data_config(job))
            self.layout.write_config("resourceconfig.json", resource_config(job))
            self.layout.write_config("hyperparameters.json", job.hyperparameters)
        except OSError as e:
            raise ConfigError(f"cannot write config files in {self.layout.config_dir}: {e.strerror}") from None

    def run(self) -> int:
        """Serve until every channel has done its epochs, a signal arrives, or an object fails."""
        self._handle_signals()
        if self.lock is not None:
            self.lock.acquire()
        try:
            return self._run()
        finally:
            if self.lock is not None:
                self.lock.release()

    def _run(self) -> int:
        self._prepare_data_dir()
        if self.job is not None:
            self._write_config(self.job)
        self.monitor.start()
        try:
            if not copy_all(self.files, self.stop, self.monitor.channels):  # File-mode data before any FIFO
                return self._stopped_status()  # stopped while copying
            self._make_first_fifos()
            self.monitor.ready()  # config, File-mode data and first FIFOs exist: health checks pass
            log.info("%s", self._ready_line())
            threads = [threading.Thread(target=self._work, args=(p,), name=p.channel.name, daemon=True)
                       for p in self.plans]
            for t in threads:
                t.start()
            files_only = not threads and self.epochs is None  # File channels only: serve until stopped
            while (files_only or any(t.is_alive() for t in threads)) and not self.stop.is_set():
                self.stop.wait(0.1)
            deadline = time.monotonic() + GRACE_S
            for t in threads:
                while t.is_alive() and time.monotonic() < deadline:
                    self.fifos.release_all()  # writers blocked in open() see the stop flag
                    t.join(0.05)
            if self.errors:
                self._hold(self.errors[0])
        finally:
            self.monitor.close()
            self.fifos.remove_all()
            self.fifos.close_held()
            if self.status_file is not None:
                self.status_file.unlink(missing_ok=True)
                if self.status_file.parent.name == STATUS_FOLDER:  # the default one's, under the ml-root
                    with contextlib.suppress(OSError):
                        self.status_file.parent.rmdir()
            for line in summary(self.history):
                log.info(line)
        if self.errors:
            raise self.errors[0]
        return self._stopped_status()

    def _stopped_status(self) -> int:
        """0 for a normal end or SIGTERM (docker stop, compose down); 130 after SIGINT (Ctrl-C),
        so that a shell script or make running the sidecar stops too."""
        return INTERRUPTED if signal.SIGINT in self.signals else 0

    def _hold(self, error: BaseException) -> None:
        """A stream failed: say so at once, and keep the cut epoch's write end open for a while.

        An EOF would tell the algorithm its epoch ended. Under a supervisor (--hold-on-failure)
        the write ends stay open until a signal: the supervisor stops the algorithm first. Standing
        alone they stay open until every reader has closed, a signal arrives, or `failure_hold`
        seconds pass; the exit (status 1) then makes the orchestrator stop the job.
        """
        line = " ".join(str(error).split()) or type(error).__name__
        log.error("stream failed: %s", line)
        self.monitor.failed(line)
        self.fifos.remove_all(hold=True)  # no new reader can arrive; one blocked in open() waits in read()
        if self.hold_on_failure:
            log.info("holding the FIFOs open until stopped (SIGTERM)")
            self.signalled.wait()
            return
        deadline = time.monotonic() + self.failure_hold
        while not self.signalled.wait(0.1):
            if self.fifos.readers_gone() or time.monotonic() >= deadline:
                return

    def _ready_line(self) -> str:
        """Where the algorithm finds its data, in one line: each Pipe channel's first FIFO, each File folder."""
        places = [f"{p.channel.name} {self.layout.fifo(p.channel.name, 0)}" for p in self.plans]
        places += [f"{f.name} ({f.plan.channel.input_mode}) {f.folder}/" for f in self.files]
        return "ready: " + ", ".join(places)

    def _prepare_data_dir(self) -> None:
        """Make the data folder and clear `<channel>_<n>` files an earlier run left there."""
        try:
            make_dirs(self.layout.data_dir)
            for p in self.plans:
                name = p.channel.name
                for stale in self.layout.data_dir.glob(f"{name}_*"):  # names hold no glob characters
                    if re.fullmatch(re.escape(name) + r"_\d+", stale.name):
                        replace_stale(stale)
        except OSError as e:
            raise ConfigError(f"cannot use {self.layout.data_dir} for FIFOs: {e.strerror}") from None

    def _make_first_fifos(self) -> None:
        try:
            for p in self.plans:
                self.fifos.create(self.layout.fifo(p.channel.name, 0))
        except OSError as e:
            raise ConfigError(f"cannot create FIFOs in {self.layout.data_dir}: {e.strerror}") from None

    def _work(self, plan: ChannelPlan) -> None:
        try:
            progress = self.monitor.channel(plan.channel.name)
            ChannelWorker(plan, self.layout, self.fifos, self.stop, self.epochs,
                          on_epoch=progress.on_epoch(also=self.history[plan.channel.name].append),
                          on_open=progress.opened).run()
            progress.finished()
        except Stopped:
            pass
        except PipeError as e:
            self.errors.append(in_channel(e, plan.channel.name))
            self.stop.set()
        except BaseException as e:  # a bug: still stop everything and clean up
            log.exception("channel %s failed", plan.channel.name)
            self.errors.append(e)
            self.stop.set()

    def _handle_signals(self) -> None:
        self.signals = stop_on_signals(self.stop, self.signalled)
        if self.hold_on_failure:
            stop_with_parent(self.stop, self.signalled)


def stop_with_parent(*events: threading.Event) -> None:
    """Under a supervisor: its death counts as a stop, so a held failure never outlives it."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        log.info("the supervising process (pid %d) is gone: removing FIFOs and exiting", parent)
        for event in events:
            event.set()

    threading.Thread(target=watch, name="parent", daemon=True).start()


def stop_on_signals(stop: threading.Event, *also: threading.Event) -> list[int]:
    """SIGTERM and SIGINT set `stop` (and every event in `also`), from a thread of their own.

    A Python signal handler runs in the main thread between two bytecodes, possibly while that
    thread holds the lock inside `stop.wait()`; setting the Event there deadlocks. So the
    handlers do nothing, Python's C-level handler writes each signal's number to a pipe
    (signal.set_wakeup_fd), and a watcher thread reads it and sets the Event. Returns the list
    the watcher puts the signal's number in.
    """
    received: list[int] = []
    r, w = os.pipe()
    os.set_blocking(w, False)
    signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _ignore)

    def watch() -> None:
        while (got := os.read(r, 1)) and got[0] not in (signal.SIGTERM, signal.SIGINT):
            pass
        if got:
            log.info("%s received: removing FIFOs and exiting", signal.Signals(got[0]).name)
            received.append(got[0])
            for event in (stop, *also):
                event.set()

    threading.Thread(target=watch, name="signals", daemon=True).start()
    return received


def _ignore(signum: int, frame: FrameType | None) -> None:
    """The Python-level handler: the watcher thread of stop_on_signals does the work."""
