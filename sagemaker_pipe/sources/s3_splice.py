"""Large bodies from a plain-HTTP server, moved from the socket into a pipe by splice(2).

Why: a large object from a near server (MinIO, SeaweedFS on this host or LAN) is fetched as one
stream, and each byte read through Python is copied three times on its way to the algorithm
(socket to Python, Python to FIFO, FIFO to the algorithm): on 2 cores that held the sidecar
near 0.85x of a single GET into /dev/null (docs/speed.md). Spliced, a byte never enters Python:
socket to pipe, pipe to FIFO (FifoWriter splices PipeSpans) are moves of page references, and
the algorithm's read is the only copy left.

The request is signed and addressed as s3_small.py does (SigV4 with botocore's credentials, to
the URL prefix botocore resolved); TLS bodies cannot be spliced, so only http:// targets come
here, and only when no proxy applies. Anything but a 200 or 206 is the caller's to repeat
through the plain path, as there.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import time
from collections.abc import Callable

from sagemaker_pipe.sources.s3_small import MAX_HEAD, SmallGet, parse_head

STEP = 1 << 20  # bytes per splice call at most
BATCH = 512 << 10  # bytes moved before the reader is told, unless the socket pauses for LINGER_S
LINGER_S = 0.001
MARK = "spliced"  # in the User-Agent after ours: which path sent a GET


class SplicedBody:
    """An answer's body still in its socket, for `splice` to move on."""

    def __init__(self, sock: socket.socket, status: int, headers: dict[str, str], rest: bytes,
                 read_timeout: float) -> None:
        self.sock = sock
        self.status = status
        self.headers = headers  # lower-case names
        self._rest = rest  # body bytes that came with the head
        self._timeout = read_timeout

    def splice(self, fd: int, n: int, cancelled: Callable[[], bool]) -> int:
        """Move up to n bytes (at most STEP) into the pipe `fd` (non-blocking): once some did, as many
        as come within LINGER_S each, up to BATCH; 0 at the body's end or when cancelled.

        Waits for room in the pipe without limit (the reader sets the pace) and for the socket
        at most the read timeout (then TimeoutError, like a stalled read on the plain path).
        """
        if self._rest:
            return self._write_rest(fd, n, cancelled)
        n = min(n, STEP)
        moved = 0
        waited = time.monotonic()
        while moved < n and not cancelled():
            try:
                step = os.splice(self.sock.fileno(), fd, n - moved, flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK)
            except BlockingIOError:
                step = -1
            except OSError:
                if moved:  # bytes in the pipe are passed on: counted now, the break shows on the next call
                    break
                raise
            if step == 0:  # the server ended the body
                break
            if step > 0:
                moved += step
                continue
            if moved:  # announced in steps of BATCH, or of what came within LINGER_S: each costs a wake-up
                if moved >= BATCH or _full(fd) or not ready(self.sock.fileno(), select.POLLIN, LINGER_S):
                    break
                continue
            if _full(fd):
                ready(fd, select.POLLOUT, 0.1)
                waited = time.monotonic()  # the reader's pace: not the server's stall
            elif not ready(self.sock.fileno(), select.POLLIN, 0.1) and time.monotonic() - waited > self._timeout:
                raise TimeoutError("read timeout")
        return moved

    def _write_rest(self, fd: int, n: int, cancelled: Callable[[], bool]) -> int:
        while not cancelled():
            try:
                written = os.write(fd, self._rest[:n])
            except BlockingIOError:
                ready(fd, select.POLLOUT, 0.1)
                continue
            self._rest = self._rest[written:]
            return written
        return 0

    def close(self) -> None:
        self.sock.close()


class SpliceGet:
    def __init__(self, small: SmallGet, connect_timeout: float, read_timeout: float) -> None:
        """`small` signs and addresses the requests."""
        self._small = small
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout

    def fits(self, bucket: str) -> bool:
        """Whether this bucket's bodies can be spliced: reached over plain HTTP, without a proxy."""
        where = self._small.where(bucket)
        return where is not None and not where[2]

    def get(self, bucket: str, key: str, headers: dict[str, str]) -> SplicedBody | None:
        """The answer with its body unread, or None when this bucket is not for this path.
        OSError when the server cannot be reached or breaks before the head is in."""
        prepared = self._small.prepare(bucket, key, headers, MARK)
        if prepared is None or prepared[0][2]:
            return None
        (host, port, _), request = prepared
        sock = socket.create_connection((host, port), timeout=self._connect_timeout)
        try:
            sock.settimeout(self._read_timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(request)
            buf = b""
            while (end := buf.find(b"\r\n\r\n")) < 0:
                more = sock.recv(65536)
                if not more:
                    raise ConnectionResetError(errno.ECONNRESET, "closed by the server before answering")
                buf += more
                if len(buf) > MAX_HEAD:
                    raise ConnectionError("an answer head over 64 KiB")
            status, fields = parse_head(buf[:end])
            sock.setblocking(False)
            return SplicedBody(sock, status, fields, buf[end + 4:], self._read_timeout)
        except BaseException:
            sock.close()
            raise


def ready(fd: int, event: int, timeout: float) -> bool:
    """Whether fd is ready for `event` (POLLIN, POLLOUT) within timeout seconds (poll: any fd number)."""
    poll = select.poll()
    poll.register(fd, event)
    return bool(poll.poll(timeout * 1000))


def _full(fd: int) -> bool:
    """Whether the pipe has no room left (a write would block)."""
    return not ready(fd, select.POLLOUT, 0)
