"""The engine as a child process, and the watch that stops an algorithm when a stream fails.

`run` and the SageMaker SDK add-on start one Engine per host's ml-root and run the algorithm
beside it. The engine runs with --hold-on-failure: when a stream fails it keeps the cut epoch's
FIFO open (no EOF) and says so in its status file; `watch` then stops the algorithm (SIGTERM,
a grace, SIGKILL, as SageMaker stops a job), and only then is the engine stopped, so the
algorithm never sees a failed epoch end cleanly.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from sagemaker_pipe.errors import ConfigError, PipeError

ERROR_PREFIX = "sagemaker-pipe: error: "
POLL_S = 0.1
GRACE_S = 10.0  # between SIGTERM and SIGKILL for an algorithm being stopped (SageMaker gives 120 s)


class Engine:
    """One sidecar process (`python -m sagemaker_pipe ... --hold-on-failure`) serving one ml-root.

    Its log lines are passed on to our stderr (prefixed with `label` when given); its final error
    line is kept, not printed, for the caller to report once.
    """

    def __init__(self, proc: subprocess.Popen[bytes], status_file: Path, label: str = "") -> None:
        self.proc = proc
        self.status_file = status_file
        self.label = label
        self.error: str | None = None  # the engine's final error line, once it has exited
        self._failure: str | None = None
        self._pump = threading.Thread(target=self._forward, args=(proc.stderr,), name="engine-log", daemon=True)
        self._pump.start()

    @classmethod
    def start(cls, config: Path, ml_root: Path, *, hosts: list[str] | None = None, current_host: str | None = None,
              extra_args: Sequence[str] = (), env: dict[str, str] | None = None, label: str = "") -> Engine:
        status_file = Path(tempfile.mkdtemp(prefix="sagemaker-pipe-engine-")) / "status.json"
        argv = [sys.executable, "-m", "sagemaker_pipe", "--config", str(config), "--ml-root", str(ml_root),
                "--hold-on-failure", "--status-file", str(status_file)]
        if hosts:
            argv += ["--hosts", ",".join(hosts)]
        if current_host:
            argv += ["--current-host", current_host]
        argv += list(extra_args)
        child_env = {k: v for k, v in (os.environ if env is None else env).items()
                     if k not in ("SAGEMAKER_PIPE_STATUS_FILE", "SAGEMAKER_PIPE_HOLD_ON_FAILURE")}
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                env=child_env, start_new_session=True)  # a Ctrl-C reaches us, not it
        return cls(proc, status_file, label)

    def _status(self) -> dict:
        return read_status(self.status_file)

    def wait_ready(self, timeout: float) -> None:
        """Return once config files and first FIFOs exist; raise the engine's own error if it exits first."""
        deadline = time.monotonic() + timeout
        while not self._status().get("ready"):
            if self.proc.poll() is not None:
                self._pump.join(5)
                message = self.error or f"the sagemaker-pipe engine exited with status {self.proc.returncode}"
                raise (ConfigError if self.proc.returncode == 2 else PipeError)(message)
            if self.failure() is not None:
                raise PipeError(self.failure() or "")
            if time.monotonic() >= deadline:
                self.stop()
                raise PipeError(f"the sagemaker-pipe engine was not ready within {timeout:g} s")
            time.sleep(POLL_S)

    def failure(self) -> str | None:
        """The one-line error once a stream failed (or the engine died on its own); never blocks."""
        if self._failure is None:
            doc = self._status()
            if doc.get("state") == "failed":
                self._failure = str(doc.get("error"))
            elif self.proc.poll() not in (None, 0):  # exit 0: it served every epoch it was asked for
                self._pump.join(5)
                self._failure = self.error or f"the sagemaker-pipe engine exited with status {self.proc.returncode}"
        return self._failure

    def stop(self, timeout: float = 10) -> tuple[int, str | None]:
        """SIGTERM, wait (SIGKILL after `timeout`); returns (exit status, its error line or None)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._pump.join(5)
        shutil.rmtree(self.status_file.parent, ignore_errors=True)
        return self.proc.returncode, self.error

    def _forward(self, stream: IO[bytes] | None) -> None:
        if stream is None:
            return
        prefix = f"[{self.label}] " if self.label else ""
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            message = _error_message(line)
            if message is not None:
                self.error = message
                continue
            sys.stderr.write(prefix + line + "\n")
            sys.stderr.flush()
        stream.close()


def _error_message(line: str) -> str | None:
    """The message of the CLI's final error line, in text or JSON log format; None for other lines."""
    if line.startswith("{"):
        try:
            line = str(json.loads(line).get("msg", ""))
        except (ValueError, AttributeError):
            return None
    return line[len(ERROR_PREFIX):] if line.startswith(ERROR_PREFIX) else None


def stop_process(proc: subprocess.Popen[bytes], grace: float = GRACE_S) -> None:
    """Stop a process and its process group as SageMaker stops a job: SIGTERM, `grace` s, SIGKILL."""
    _signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(proc, signal.SIGKILL)  # whatever is left of its group
    proc.wait()


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        if proc.poll() is None:
            proc.send_signal(sig)


def read_status(path: Path) -> dict:
    """A sidecar's status file as a dict; {} while it is missing, half-made or not an object."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def first_failure(engines: Sequence[Engine]) -> str | None:
    """The first engine's one-line stream failure, or None; never blocks."""
    return next((f for f in (e.failure() for e in engines) if f is not None), None)


def watch(engines: Sequence[Engine], algorithm: subprocess.Popen[bytes], *, grace: float = GRACE_S,
          stop_requested: Callable[[], bool] = lambda: False) -> tuple[int, str | None]:
    """Wait for the algorithm (started in a session of its own); stop it when a stream fails or
    `stop_requested()` turns true. Returns (its exit status, the first engine failure or None).

    A status of 128+N means a signal N ended it, as a shell reports it.
    """
    failure: str | None = None
    while algorithm.poll() is None:
        failure = first_failure(engines)
        if failure is not None or stop_requested():
            stop_process(algorithm, grace)
            break
        time.sleep(POLL_S)
    else:
        _signal_group(algorithm, signal.SIGKILL)  # the algorithm has exited: nothing of it outlives it
    if failure is None:  # a stream may have failed as the algorithm ended
        failure = first_failure(engines)
    status = algorithm.returncode
    return (128 - status if status < 0 else status), failure
