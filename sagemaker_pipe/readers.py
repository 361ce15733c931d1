"""Reader processes for long runs of small files, so that every core opens, reads and closes.

At 4 KiB a file, about four fifths of the time is the kernel's open, read and close (system
against user time, measured by hand). Threads cannot share that out, since each system call
hands the GIL over; processes can. A channel's first long run of small files starts count()
processes, which get the channel's table of small pieces once. Each order after that is a slice
of unit numbers, about half a megabyte's worth; a reader answers on its own pipe with the
slice's bytes, framed by smallfiles.batches as in the channel's own process, one frame per
batch (a batch ends after PROMPT_S, so a slow file system does not hold the first bytes back
for a whole order), and the channel's thread splices them on into the FIFO without copying
them (fifo.FifoWriter, PipeSpan). Orders go out round robin and answers are taken back in the
same order, so the FIFO gets the same bytes either way.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
from array import array
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import IO

from sagemaker_pipe import smallfiles
from sagemaker_pipe.chunks import BATCH, POLL_S, PipeSpan, SinkChunk, wait_readable
from sagemaker_pipe.errors import ConfigError, DataError, Stopped

MIN_UNITS = 4096  # shorter runs are read in the channel's own process: starting readers costs more
DEPTH = 2  # orders queued per reader, so that none waits for its next one
ORDER_UNITS = 256  # at most: DEPTH orders (4 bytes a unit) fit the smallest pipe, so sending never waits
ORDER_BYTES = BATCH // 2  # about, per order: half-megabyte answers through 1 MiB pipes kept both cores
# busier than 1 MiB answers through 2 MiB pipes (measured by hand: about 0.4 s against 0.6 s an epoch)
_ORDER = struct.Struct("<II")  # epoch, number of unit numbers that follow
_ANSWER = struct.Struct("<?QI")  # failed, length of the bytes (or error message) that follow, units done
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)
log = logging.getLogger("sagemaker_pipe")


@functools.cache
def count() -> int:
    """Reader processes per channel: SAGEMAKER_PIPE_READERS, or up to 4 for the cores this process may use."""
    value = os.environ.get("SAGEMAKER_PIPE_READERS", "auto")
    if value == "auto":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return min(4, cores)
    if not value.isdigit():
        raise ConfigError(f"SAGEMAKER_PIPE_READERS must be auto or a number of processes, "
                          f"0 to read in the channel's own process (got {value!r})")
    return int(value)


class Readers:
    """One channel's reader processes: started for its first long run, kept until close()."""

    def __init__(self, table: Sequence[smallfiles.Pieces], recordio: bool, name: str,
                 stop: threading.Event) -> None:
        self.table = table
        self.recordio = recordio
        self.name = name
        self.stop = stop
        listed = sum(len(p) if isinstance(p, bytes) else p[1] for unit in table for p in unit)
        self.per_order = max(1, min(ORDER_UNITS, ORDER_BYTES * len(table) // max(1, listed)))
        self._procs: list[tuple[subprocess.Popen[bytes], int]] = []  # a reader, the read end of its answers

    def stream(self, run: list[int], epoch: int) -> Generator[tuple[SinkChunk, int], None, None]:
        """The bytes of the units `run` numbers (in the table), each chunk with the units complete after it.

        Closed early (the algorithm closed the FIFO), it takes the answers still in flight off the
        pipes, so that the readers serve the next run; after a failure or on shutdown they are stopped.
        """
        kept = False
        got = sent = done = 0
        span: PipeSpan | None = None
        step = self.per_order
        starts = range(0, len(run), step)
        sizes = [min(step, len(run) - s) for s in starts]  # units per order
        try:
            if not self._procs:
                self._start()
            procs = self._procs
            for got, start in enumerate(starts):
                while sent < len(starts) and sent < got + DEPTH * len(procs):
                    self._order(procs[sent % len(procs)][0], run[starts[sent]:starts[sent] + step], epoch)
                    sent += 1
                proc, answers = procs[got % len(procs)]
                done = 0
                while done < sizes[got]:
                    length, done = self._answer(proc, answers)
                    span = PipeSpan(answers, length, self._label(proc), [0])
                    yield span, start + done
            kept = True
        except GeneratorExit:
            kept = span is not None and self._drain(span, sizes, got, done, sent)
            raise
        finally:
            if not kept:
                self.close()

    def _drain(self, span: PipeSpan, sizes: list[int], got: int, done: int, sent: int) -> bool:
        """Discard the rest of order `got` (`span` on, `done` of its units answered) and the orders
        after it (`sizes`: units per order); False if that fails."""
        if self.stop.is_set():
            return False
        procs = self._procs
        try:
            self._read(procs[got % len(procs)][0], span.fd, span.length - span.moved[0], keep=False)
            for k in range(got, sent):
                proc, answers = procs[k % len(procs)]
                while done < sizes[k]:
                    length, done = self._answer(proc, answers)
                    self._read(proc, answers, length, keep=False)
                done = 0
        except (DataError, Stopped):
            return False
        return True

    def close(self) -> None:
        """Stop the readers: each ends at the end of its orders, or at a write to its closed pipe."""
        procs, self._procs = self._procs, []
        for proc, answers in procs:
            os.close(answers)
            with contextlib.suppress(OSError):
                proc.stdin.close()  # type: ignore[union-attr]
        for proc, _ in procs:
            try:
                proc.wait(timeout=POLL_S * 10)
            except subprocess.TimeoutExpired:  # stuck in a read of a hung file system
                proc.kill()
                proc.wait()

    def _start(self) -> None:
        code = f"import sys; sys.path.insert(0, {_PACKAGE_ROOT!r}); from sagemaker_pipe.readers import main; main()"
        for _ in range(count()):
            answers, out = os.pipe()
            with contextlib.suppress(OSError):  # room for two answers; larger pipes measured slower
                fcntl.fcntl(out, fcntl.F_SETPIPE_SZ, 2 * ORDER_BYTES)
            try:
                proc = subprocess.Popen([sys.executable, "-c", code, str(out)], stdin=subprocess.PIPE,
                                        pass_fds=(out,))
            except OSError as e:
                os.close(answers)
                raise DataError(f"cannot start a reader process for channel {self.name}: {e.strerror}") from None
            finally:
                os.close(out)
            self._procs.append((proc, answers))
        log.info("channel=%s reader-processes=%d started for long runs of small files", self.name, len(self._procs))
        table = pickle.dumps((self.recordio, self.name, self.table), pickle.HIGHEST_PROTOCOL)
        for proc, _ in self._procs:
            self._send(proc, table)

    def _order(self, proc: subprocess.Popen[bytes], units: list[int], epoch: int) -> None:
        self._send(proc, _ORDER.pack(epoch, len(units)) + array("I", units).tobytes())

    def _send(self, proc: subprocess.Popen[bytes], data: bytes) -> None:
        stdin: IO[bytes] = proc.stdin  # type: ignore[assignment]
        try:
            stdin.write(data)
            stdin.flush()
        except BrokenPipeError:
            raise DataError(f"{self._label(proc)} ended ({_exit(proc)})") from None

    def _answer(self, proc: subprocess.Popen[bytes], answers: int) -> tuple[int, int]:
        """The length of the reader's next frame, now waiting in its pipe, and the units of its
        order complete after it; a failure is raised."""
        failed, length, done = _ANSWER.unpack(self._read(proc, answers, _ANSWER.size))
        if failed:
            raise DataError(self._read(proc, answers, length).decode(errors="replace"))
        return length, done

    def _read(self, proc: subprocess.Popen[bytes], fd: int, n: int, keep: bool = True) -> bytes:
        """n bytes from a reader's pipe (or n bytes skipped), waiting as long as it takes unless stopped."""
        data = bytearray()
        while n:
            wait_readable(fd, self.stop)
            more = os.read(fd, min(n, BATCH))
            if not more:
                raise DataError(f"{self._label(proc)} ended ({_exit(proc)})")
            n -= len(more)
            if keep:
                data += more
        return bytes(data)

    def _label(self, proc: subprocess.Popen[bytes]) -> str:
        return f"reader process {proc.pid} of channel {self.name}"


def _exit(proc: subprocess.Popen[bytes]) -> str:
    try:
        code = proc.wait(timeout=POLL_S * 10)
    except subprocess.TimeoutExpired:
        return "its pipe closed"
    return f"killed by signal {-code}" if code < 0 else f"exit status {code}"


def main() -> None:
    """A reader process: the table from stdin, then orders until stdin ends; answers to the fd in argv."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the channel's process handles shutdown and ends us
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    out = int(sys.argv[1])
    orders = sys.stdin.buffer
    try:
        recordio, name, table = pickle.load(orders)
    except EOFError:
        return  # the channel's process ended before it sent the table
    try:
        while len(head := orders.read(_ORDER.size)) == _ORDER.size:
            epoch, n = _ORDER.unpack(head)
            units = array("I")
            numbers = orders.read(units.itemsize * n)
            if len(numbers) != units.itemsize * n:
                return  # the channel's process ended mid-order
            units.frombytes(numbers)
            try:
                for batch, done in smallfiles.batches([table[i] for i in units], recordio, name, epoch):
                    if batch or done == n:
                        _write(out, [_ANSWER.pack(False, len(batch), done), batch])
                    if done == n:
                        break
            except DataError as e:
                message = str(e).encode()
                _write(out, [_ANSWER.pack(True, len(message), 0), message])
                return
    except BrokenPipeError:
        pass  # the channel closed our pipe: it needs no more answers


def _write(fd: int, parts: list[bytes | bytearray]) -> None:
    for part in parts:
        view = memoryview(part)
        while view:
            view = view[os.write(fd, view):]
