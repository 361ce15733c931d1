"""The sink: one FIFO's whole life, from mkfifo to unlink, and the fast ways to fill it.

The write end is kept non-blocking and every wait is a bounded poll, so a worker thread
notices shutdown within a fraction of a second even while its reader is absent or stalled.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import stat
import struct
import termios
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from sagemaker_pipe.chunks import BATCH, FLUSH, PIPE_MAX, POLL_S, PROMPT_S, FileSpan, PipeSpan, SinkChunk, wait_readable
from sagemaker_pipe.errors import DataError, Stopped


class ReaderGone(Exception):
    """The reader closed its end before the epoch was complete: end the epoch quietly."""


class FifoSet:
    """Every FIFO this process made, so shutdown can remove them all whatever state they are in.

    It also keeps the write ends of epochs cut short (a failure or a stop): they stay open until
    `close_held`, so their readers see no EOF before the sidecar decides to end.
    """

    def __init__(self) -> None:
        self._paths: set[Path] = set()
        self._held: list[int] = []
        self._writers: list[int] = []  # the held write ends of epochs a reader was reading
        self._lock = threading.Lock()

    def create(self, path: Path) -> Path:
        """mkfifo at path (replacing a stale file), readable by any uid."""
        replace_stale(path)
        os.mkfifo(path)
        os.chmod(path, 0o644)  # readable by the algorithm under any uid, writable only by us; umask must not matter
        with self._lock:
            self._paths.add(path)
        return path

    def remove(self, path: Path) -> None:
        with self._lock:
            self._paths.discard(path)
        path.unlink(missing_ok=True)

    def hold(self, fd: int) -> None:
        """Keep an epoch's write end open until close_held: its reader gets no EOF meanwhile."""
        with self._lock:
            self._held.append(fd)
            self._writers.append(fd)

    def release_all(self) -> None:
        """Wake every writer blocked in open_writer: a reader that opens and closes at once is enough."""
        with self._lock:
            paths = list(self._paths)
        for p in paths:
            try:
                os.close(os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC))
            except OSError:
                pass

    def remove_all(self, hold: bool = False) -> None:
        """Unlink every FIFO, first waking any reader blocked in open() of it.

        Each FIFO is opened read-write (which never blocks) before the unlink: a reader already
        inside open() connects to that end, and no reader can arrive once the name is gone. The
        end is then closed (the reader sees an empty stream) or, with `hold`, kept until
        close_held (the reader waits in read()). Either way no reader blocks for ever in open().
        """
        with self._lock:
            paths, self._paths = self._paths, set()
        for p in paths:
            try:
                fd = os.open(p, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                fd = -1
            p.unlink(missing_ok=True)
            if fd < 0:
                continue
            if hold:
                with self._lock:
                    self._held.append(fd)
            else:
                os.close(fd)

    def readers_gone(self) -> bool:
        """True once no reader is left on any held write end (poll reports POLLERR for each)."""
        with self._lock:
            fds = list(self._writers)
        poll = select.poll()
        for fd in fds:
            poll.register(fd, 0)  # POLLERR is always reported
        errors = {fd for fd, ev in poll.poll(0) if ev & select.POLLERR}
        return len(errors) == len(fds)

    def close_held(self) -> None:
        with self._lock:
            held, self._held, self._writers = self._held, [], []
        for fd in held:
            os.close(fd)


def replace_stale(path: Path) -> None:
    """Remove a FIFO or file an earlier run left under this name; refuse to touch a folder."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise DataError(f"{path} is a folder, not a FIFO this tool can replace")
    path.unlink()


def open_writer(path: Path, stop: threading.Event) -> FifoWriter:
    """Block in open() until a reader opens path, then return the (non-blocking) write end.

    A blocking open connects the moment the reader arrives, however long it took; shutdown
    wakes it through FifoSet.release_all, which opens the read end for an instant. The caller
    checks `stop` once it has the writer, and holds or closes it.
    """
    if stop.is_set():
        raise Stopped
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)  # retried by Python itself after a signal (PEP 475)
    except OSError as e:
        raise DataError(f"cannot open {path} for writing: {e.strerror}") from None
    os.set_blocking(fd, False)
    return FifoWriter(fd, stop)


class FifoWriter:
    """The write end of one epoch's FIFO: batched writes, splice for file spans, EPIPE as ReaderGone."""

    def __init__(self, fd: int, stop: threading.Event) -> None:
        self.fd = fd
        self.stop = stop
        self.written = 0
        self.blocked_s = 0.0  # the pipe was full: the writer waited for the algorithm
        self.starved_s = 0.0  # the pipe was empty: the algorithm waited for the source
        self._idle_since = time.monotonic()  # end of the last write: production time starts here
        self._batch = bytearray()
        self._due = 0.0  # when the batch's first byte has waited PROMPT_S
        self._poll = select.poll()
        self._poll.register(fd, select.POLLOUT)
        try:
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_MAX)
        except OSError:
            pass  # over the user's pipe-buffer quota: the default size still works, only slower

    def write_all(self, chunks: Iterable[SinkChunk]) -> None:
        """Write every chunk; small ones are gathered up to BATCH, but never past a FLUSH or PROMPT_S."""
        for c in chunks:
            if c is FLUSH:
                self.flush()
            elif isinstance(c, FileSpan):
                self.flush()
                self._splice(c)
            elif isinstance(c, PipeSpan):
                self.flush()
                self._splice_pipe(c)
            elif len(c) >= BATCH:
                self.flush()
                self._write(memoryview(c))
            else:
                if not self._batch:
                    self._due = time.monotonic() + PROMPT_S
                self._batch += c
                if len(self._batch) >= BATCH or time.monotonic() >= self._due:
                    self.flush()

    def flush(self) -> None:
        if self._batch:
            data, self._batch = self._batch, bytearray()
            self._write(memoryview(data))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def detach(self) -> int:
        """Hand the write end over (to FifoSet.hold); this writer no longer closes it."""
        fd, self.fd = self.fd, -1
        return fd

    def _account(self) -> None:
        """Count the time since the last write as starvation if the reader drained the pipe meanwhile.

        One FIONREAD per write of up to a megabyte: the cost stays far below the noise.
        """
        now = time.monotonic()
        if _pending(self.fd) == 0:
            self.starved_s += now - self._idle_since
        self._idle_since = now

    def _write(self, view: memoryview) -> None:
        self._account()
        while view:
            try:
                n = os.write(self.fd, view)
            except BlockingIOError:
                self._wait()
                continue
            except BrokenPipeError:
                raise ReaderGone from None
            self.written += n
            view = view[n:]
        self._idle_since = time.monotonic()

    def _splice(self, span: FileSpan) -> None:
        self._account()
        offset, end = span.offset, span.offset + span.length
        while offset < end:
            try:
                n = os.splice(span.fd, self.fd, end - offset, offset_src=offset)
            except BlockingIOError:
                self._wait()
                continue
            except BrokenPipeError:
                raise ReaderGone from None
            except OSError as e:
                if e.errno not in (errno.EINVAL, errno.ENOSYS):
                    raise
                self._copy(span, offset)  # a file system without splice support
                return
            if n == 0:
                raise _short(span, offset)
            offset += n
            self.written += n
        self._idle_since = time.monotonic()

    def _splice_pipe(self, span: PipeSpan) -> None:
        """Move the span's bytes from its pipe into the FIFO by reference (pipe to pipe: no copy)."""
        self._account()
        left = span.length
        while left:
            try:
                n = os.splice(span.fd, self.fd, left)
            except BlockingIOError:  # the FIFO is full, or the pipe is empty for now (either end non-blocking)
                if _pending(span.fd):
                    self._wait()
                else:  # production time, counted as neither side waiting
                    wait_readable(span.fd, self.stop)
                continue
            except BrokenPipeError:
                raise ReaderGone from None
            if n == 0:
                raise DataError(f"{span.name} ended {left} bytes early")
            left -= n
            span.moved[0] += n
            self.written += n
        self._idle_since = time.monotonic()

    def _copy(self, span: FileSpan, offset: int) -> None:
        end = span.offset + span.length
        while offset < end:
            data = os.pread(span.fd, min(BATCH, end - offset), offset)
            if not data:
                raise _short(span, offset)
            self._write(memoryview(data))
            offset += len(data)

    def _wait(self) -> None:
        """Wait until the pipe has room; a reader that closed shows up as the next write's EPIPE."""
        t0 = time.monotonic()
        while not self._poll.poll(POLL_S * 1000):
            if self.stop.is_set():
                raise Stopped
        self.blocked_s += time.monotonic() - t0
        if self.stop.is_set():
            raise Stopped


def _pending(fd: int) -> int:
    """Bytes waiting in a pipe."""
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]


def _short(span: FileSpan, offset: int) -> DataError:
    return DataError(
        f"{span.name} ended after {offset - span.offset} of {span.length} bytes (changed while streaming)"
    )
