"""Small whole objects by one thread that speaks HTTP/1.1 itself, over keep-alive connections.

Why: each small object costs a request, and on a shared machine the CPU per request decides
how fast they come (docs/speed.md, "S3 against awscrt"). Threads with http.client (s3_get.py)
spend about 0.6 ms of CPU per object, awscrt's S3 client about 0.2 ms (its event-loop threads
and the GIL handed back and forth for each callback); one thread multiplexing up to CONNECTIONS
sockets with `selectors`, signing with hashlib, spends about 0.06 ms, and leaves the cores to
the server and the algorithm.

What stays botocore's: each bucket's URL prefix and signing scope (SignedGet.target: endpoint
rules, addressing style, AWS_ENDPOINT_URL_S3), the credentials (its chain, asked for every
request, so refreshed as botocore refreshes them), the CA bundle, and every answer but a 200 or
206: this path never retries; it reports the status, and the caller repeats the request through
the plain path, whose retries, region redirects and error messages are botocore's. A bucket
reached through a proxy is never fetched here. A body is handed over only once complete, so a
broken or stalled one (no progress for the read timeout) has passed nothing on; the caller
fetches it again.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import logging
import selectors
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlsplit

from botocore.httpsession import get_cert_path
from botocore.utils import get_environ_proxies

from sagemaker_pipe.sources.s3_get import AGENT, SignedGet, Target

log = logging.getLogger("sagemaker_pipe")
# (status or None, the body of a 200/206 or None, why it failed or None)
OnDone = Callable[[int | None, bytes | None, str | None], None]
CONNECTIONS = 64  # sockets open at most; each carries one request at a time
UNSIGNED = "UNSIGNED-PAYLOAD"
MAX_HEAD = 65536
MARK = "small-objects"  # in the User-Agent after ours: which path sent a GET


def _report(job: _Job, status: int | None, body: bytes | None, error: str | None) -> None:
    """The job's answer to its owner; a fault there must not stop the loop."""
    try:
        job.on_done(status, body, error)
    except Exception as e:
        log.exception("s3-small: %s", e)


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """The status and the headers (lower-case names; ":version" too) of an answer's head."""
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    status = rest[:3]
    if not version.startswith("HTTP/1.") or not status.isdigit():
        raise ConnectionError(f"not an HTTP/1.1 answer: {lines[0][:80]!r}")
    headers = {":version": version}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status), headers


def body_length(headers: dict[str, str]) -> int:
    """Content-Length of an answer this path reads; chunked or unsized ones are refused."""
    if "transfer-encoding" in headers or not headers.get("content-length", "").isdigit():
        raise ConnectionError("an answer without Content-Length")
    return int(headers["content-length"])


class _Job:
    """One signed GET waiting for, or riding on, a connection to `where` (host, port, TLS)."""

    __slots__ = ("where", "request", "limit", "on_done", "retried", "connects")

    def __init__(self, where: tuple[str, int, bool], request: bytes, limit: int, on_done: OnDone) -> None:
        self.where, self.request, self.limit, self.on_done = where, request, limit, on_done
        self.retried = False  # a reused connection that dies before answering gets it once more
        self.connects = 0  # connections refused so far


class _Conn:
    """One connection, idle or carrying one job; states: connect, handshake, send, read."""

    __slots__ = ("sock", "where", "state", "job", "out", "buf", "status", "length", "head", "close_after",
                 "last", "reused", "events")

    def __init__(self, sock: Any, where: tuple[str, int, bool]) -> None:
        self.sock = sock
        self.where = where
        self.state = "connect"
        self.job: _Job | None = None
        self.out = b""
        self.buf = bytearray()
        self.status = 0
        self.length = -1  # body bytes expected, once the head is in
        self.head = 0  # bytes of the head, "\r\n\r\n" included
        self.close_after = False
        self.last = time.monotonic()
        self.reused = False
        self.events = 0


class _Signer:
    """SigV4 for a bodiless GET, as S3 takes it; signing keys cached per day and scope."""

    def __init__(self, credentials: Any) -> None:
        self._credentials = credentials
        self._keys: dict[tuple[str, str, str, str], bytes] = {}
        self._stamp = (0, "")

    def request(self, netloc: str, path: str, headers: dict[str, str], target: Target, mark: str) -> bytes:
        """The whole request, signed with botocore's credentials as they are now."""
        frozen = self._credentials.get_frozen_credentials()  # refreshed by botocore near their expiry
        now = int(time.time())
        if self._stamp[0] != now:
            self._stamp = (now, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now)))
        amz = self._stamp[1]
        scope = f"{amz[:8]}/{target.region}/{target.service}/aws4_request"
        token = frozen.token
        names = "host;x-amz-content-sha256;x-amz-date" + (";x-amz-security-token" if token else "")
        canonical = (f"GET\n{path}\n\nhost:{netloc}\nx-amz-content-sha256:{UNSIGNED}\nx-amz-date:{amz}\n"
                     + (f"x-amz-security-token:{token}\n" if token else "") + f"\n{names}\n{UNSIGNED}")
        to_sign = f"AWS4-HMAC-SHA256\n{amz}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        key = self._key(frozen.secret_key, amz[:8], target.region, target.service)
        signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        return (f"GET {path} HTTP/1.1\r\nHost: {netloc}\r\nUser-Agent: {AGENT} {mark}\r\n{extra}"
                f"x-amz-content-sha256: {UNSIGNED}\r\nx-amz-date: {amz}\r\n"
                + (f"x-amz-security-token: {token}\r\n" if token else "")
                + f"Authorization: AWS4-HMAC-SHA256 Credential={frozen.access_key}/{scope}, "
                f"SignedHeaders={names}, Signature={signature}\r\n\r\n").encode()

    def _key(self, secret: str, day: str, region: str, service: str) -> bytes:
        found = self._keys.get((secret, day, region, service))
        if found is None:
            if len(self._keys) > 16:
                self._keys.clear()
            found = hmac.new(f"AWS4{secret}".encode(), day.encode(), hashlib.sha256).digest()
            for part in (region, service, "aws4_request"):
                found = hmac.new(found, part.encode(), hashlib.sha256).digest()
            self._keys[(secret, day, region, service)] = found
        return found


class SmallGet:
    """Whole small objects, fetched by one event-loop thread (started on first use)."""

    def __init__(self, signed: SignedGet, credentials: Any, ca_bundle: str | None, read_timeout: float,
                 connect_timeout: float) -> None:
        """`signed` resolves buckets, `credentials` is botocore's (refreshable) credentials object."""
        self._signed = signed
        self._signer = _Signer(credentials)
        self._ca_bundle = ca_bundle
        self._read_timeout = read_timeout
        self._connect_timeout = connect_timeout
        self._tls: ssl.SSLContext | None = None
        self._usable: dict[Target, tuple[tuple[str, int, bool], str, str] | None] = {}
        self._dead: set[tuple[str, int, bool]] = set()  # servers that took no connection: the plain path's
        self._lock = threading.Lock()
        self._queue: deque[_Job] = deque()  # appended by any thread, taken by the loop
        self._sleeping = False
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    def start(self, bucket: str, key: str, size: int, headers: dict[str, str], on_done: OnDone) -> bool:
        """Queue the signed GET of an object of `size` bytes and return True, or return False (nothing
        sent) when this bucket is not for this path. Credentials that cannot be refreshed raise
        botocore's error here. A body longer than `size` is never read: it is reported as a 200
        without a body."""
        prepared = self.prepare(bucket, key, headers)
        if prepared is None:
            return False
        self._queue.append(_Job(*prepared, size, on_done))
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="s3-small", daemon=True)
                    self._thread.start()
        if self._sleeping:
            try:
                self._wake_w.send(b"\0")
            except BlockingIOError:
                pass  # its buffer is full of wake-ups already
        return True

    def where(self, bucket: str) -> tuple[str, int, bool] | None:
        """(host, port, TLS) of a bucket fit for this path, else None; nothing is signed."""
        found = self._bucket(bucket)
        return None if found is None else found[1][0]

    def prepare(self, bucket: str, key: str, headers: dict[str, str],
                mark: str = MARK) -> tuple[tuple[str, int, bool], bytes] | None:
        """(host, port, TLS) and the signed request of a GET (`mark` in its User-Agent after ours),
        or None when the bucket is not for this path."""
        found = self._bucket(bucket)
        if found is None:
            return None
        target, (where, netloc, prefix) = found
        return where, self._signer.request(netloc, prefix + quote(key, safe="/~"), headers, target, mark)

    def _bucket(self, bucket: str) -> tuple[Target, tuple[tuple[str, int, bool], str, str]] | None:
        target = self._signed.target(bucket)
        fit = None if target is None else self._fit(target)
        return None if target is None or fit is None or fit[0] in self._dead else (target, fit)

    def _fit(self, target: Target) -> tuple[tuple[str, int, bool], str, str] | None:
        """(host, port, TLS), Host header and path prefix of a target fit for this path: SigV4 over
        http(s), no proxy for it; else None."""
        with self._lock:
            if target not in self._usable:
                url = urlsplit(target.prefix)
                tls = url.scheme == "https"
                fit = (url.scheme in ("http", "https") and url.hostname and not url.query and "@" not in url.netloc
                       and not get_environ_proxies(target.prefix))
                port = url.port or (443 if tls else 80)
                host = f"[{url.hostname}]" if ":" in (url.hostname or "") else url.hostname
                netloc = host if port == (443 if tls else 80) else f"{host}:{port}"  # as botocore signs it
                self._usable[target] = ((url.hostname or "", port, tls), netloc or "", url.path) if fit else None
            return self._usable[target]

    # --- the loop thread -------------------------------------------------------------------

    def _run(self) -> None:
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._idle: dict[tuple[str, int, bool], list[_Conn]] = {}
        self._busy: set[_Conn] = set()
        self._addresses: dict[tuple[str, int, bool], tuple[float, list[tuple[Any, Any, int, Any]]]] = {}
        self._failures: dict[tuple[str, int, bool], int] = {}  # connections refused in a row
        self._count = 0  # connections open
        checked = time.monotonic()
        while True:
            try:
                full = self._take()
            except Exception as e:  # a fault of this module's: the job at the head fails, the loop goes on
                log.exception("s3-small: %s", e)
                if self._queue:
                    _report(self._queue.popleft(), None, None, str(e))
                continue
            self._sleeping = True
            events = self._sel.select(0 if self._queue and not full else min(1.0, self._read_timeout / 4))
            self._sleeping = False
            for key, _ in events:
                if key.data is None:
                    self._drain_wake()
                    continue
                try:
                    self._step(key.data)
                except Exception as e:  # a fault of this module's: that request fails, the loop goes on
                    log.exception("s3-small: %s", e)
                    self._fail(key.data, e)
            now = time.monotonic()
            if now - checked > 0.25:
                checked = now
                self._expire(now)

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _take(self) -> bool:
        """Put queued jobs on idle connections, or new ones while under CONNECTIONS; True when
        every connection is busy (the next answer frees one)."""
        while self._queue:
            job = self._queue[0]
            idle = None if job.retried else self._idle.get(job.where)
            if idle:
                conn = idle.pop()
                conn.reused = True
            elif self._count >= CONNECTIONS and not self._close_idle():
                return True
            else:
                try:
                    conn = self._open(job.where)
                except OSError as e:
                    if not self._refused(job.where, job):
                        self._queue.popleft()
                        _report(job, None, None, f"connect: {e}")
                    continue
            self._queue.popleft()
            conn.job = job
            conn.out = job.request
            conn.last = time.monotonic()
            self._busy.add(conn)
            if conn.state == "idle":
                conn.state = "send"
                self._send(conn)
        return False

    def _close_idle(self) -> bool:
        """Close an idle connection (to another server: none to this one is idle) to make room."""
        for conns in self._idle.values():
            if conns:
                self._close(conns[0])
                return True
        return False

    def _open(self, where: tuple[str, int, bool]) -> _Conn:
        family, kind, proto, address = self._address(where)
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        err = sock.connect_ex(address)
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            raise OSError(err, errno.errorcode.get(err, str(err)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Conn(sock, where)
        conn.events = selectors.EVENT_WRITE
        self._sel.register(sock, conn.events, conn)
        self._count += 1
        return conn

    def _address(self, where: tuple[str, int, bool]) -> tuple[Any, Any, int, Any]:
        """The server's address to try next, looked up at most once a minute (a lookup blocks
        this thread); one that refused a connection goes to the back (localhost: ::1, 127.0.0.1)."""
        found = self._addresses.get(where)
        if found is None or time.monotonic() - found[0] > 60:
            found = self._addresses[where] = (time.monotonic(), [
                (family, kind, proto, address)
                for family, kind, proto, _, address in socket.getaddrinfo(where[0], where[1], type=socket.SOCK_STREAM)])
        return found[1][0]

    def _refused(self, where: tuple[str, int, bool], job: _Job | None) -> bool:
        """A connection to `where` failed: its next address goes first. True when `job` should try
        again (it has not tried every address yet); a server no address of which takes connections
        is left to the plain path from then on."""
        addresses = self._addresses.get(where, (0.0, []))[1]
        if addresses:
            addresses.append(addresses.pop(0))
        self._failures[where] = self._failures.get(where, 0) + 1
        if self._failures[where] > len(addresses) + 2:
            self._dead.add(where)
        if job is None or where in self._dead:
            return False
        job.connects += 1
        return job.connects < max(1, len(addresses))

    def _watch(self, conn: _Conn, events: int) -> None:
        if events != conn.events:
            conn.events = events
            self._sel.modify(conn.sock, events, conn)

    def _step(self, conn: _Conn) -> None:
        if conn.state == "closed":  # closed by an earlier event of the same select
            return
        try:
            if conn.state == "connect":
                err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    job = conn.job
                    if self._refused(conn.where, job):  # the job goes again, to the next address
                        conn.job = None
                        self._close(conn)
                        self._queue.appendleft(job)  # type: ignore[arg-type]
                        return
                    raise OSError(err, f"connect: {errno.errorcode.get(err, err)}")
                self._failures[conn.where] = 0
                conn.last = time.monotonic()
                conn.state = "send"
                if conn.where[2]:
                    context = self._context()  # (a CA bundle that cannot be read fails here, registered)
                    self._sel.unregister(conn.sock)
                    conn.sock = context.wrap_socket(conn.sock, server_hostname=conn.where[0],
                                                    do_handshake_on_connect=False)
                    self._sel.register(conn.sock, conn.events, conn)
                    conn.state = "handshake"
            if conn.state == "handshake":
                try:
                    conn.sock.do_handshake()
                except ssl.SSLWantReadError:
                    self._watch(conn, selectors.EVENT_READ)
                    return
                except ssl.SSLWantWriteError:
                    self._watch(conn, selectors.EVENT_WRITE)
                    return
                conn.last = time.monotonic()
                conn.state = "send"
            if conn.state == "send":
                self._send(conn)
            elif conn.state in ("read", "idle"):
                self._read(conn)
        except (OSError, ssl.SSLError, ValueError) as e:
            self._fail(conn, e)

    def _send(self, conn: _Conn) -> None:
        try:
            n = conn.sock.send(conn.out)
        except (BlockingIOError, ssl.SSLWantWriteError):
            n = 0
        except ssl.SSLWantReadError:
            self._watch(conn, selectors.EVENT_READ)
            return
        except (OSError, ssl.SSLError) as e:  # a kept-alive connection the server just closed
            self._fail(conn, e)
            return
        conn.out = conn.out[n:]
        if conn.out:
            self._watch(conn, selectors.EVENT_WRITE)
            return
        conn.state = "read"
        conn.last = time.monotonic()
        self._watch(conn, selectors.EVENT_READ)

    def _read(self, conn: _Conn) -> None:
        """What the socket has; a plain one is read once per readiness, a TLS one to its last record."""
        tls = conn.where[2]
        while True:
            try:
                data = conn.sock.recv(262144)
            except (BlockingIOError, ssl.SSLWantReadError):
                return
            except ssl.SSLWantWriteError:
                self._watch(conn, selectors.EVENT_WRITE)
                return
            if not data:
                raise ConnectionResetError(errno.ECONNRESET, "closed by the server")
            if conn.state == "idle":  # bytes nobody asked for: this connection is out of step
                raise ConnectionError("an answer to no request")
            conn.last = time.monotonic()
            conn.buf += data
            if conn.length < 0 and not self._head(conn):
                if conn.job is None:  # an answer not ours to read: handed back, connection closed
                    return
            elif len(conn.buf) - conn.head >= conn.length:
                self._answered(conn)
                return
            if not tls:
                return

    def _head(self, conn: _Conn) -> bool:
        """Parse the status line and headers once they are in; False while they are not, or when
        the answer is not a 200 or 206 (then it is reported as it is, and the connection closed)."""
        end = conn.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(conn.buf) > MAX_HEAD:
                raise ConnectionError("an answer head over 64 KiB")
            return False
        conn.status, headers = parse_head(bytes(conn.buf[:end]))
        if conn.status not in (200, 206):  # not ours to read: botocore takes the request again
            self._finish(conn, conn.status, None, keep=False)
            return False
        length = body_length(headers)
        assert conn.job is not None
        if length > conn.job.limit:  # not the object listed: the plain path says how it changed
            self._finish(conn, conn.status, None, keep=False)
            return False
        conn.head, conn.length = end + 4, length
        conn.close_after = headers.get("connection", "").lower() == "close" or headers[":version"] == "HTTP/1.0"
        return True

    def _answered(self, conn: _Conn) -> None:
        body = bytes(memoryview(conn.buf)[conn.head:conn.head + conn.length])
        over = len(conn.buf) - conn.head - conn.length
        self._finish(conn, conn.status, body, keep=not conn.close_after and over == 0)

    def _finish(self, conn: _Conn, status: int, body: bytes | None, keep: bool) -> None:
        job, conn.job = conn.job, None
        self._busy.discard(conn)
        conn.buf = bytearray()
        conn.length = -1
        try:
            if keep:
                self._park(conn)
            else:
                self._close(conn)
        finally:
            assert job is not None
            _report(job, status, body, None)

    def _park(self, conn: _Conn) -> None:
        """Back to idle, watched for the server closing it meanwhile."""
        conn.state = "idle"
        conn.last = time.monotonic()
        self._watch(conn, selectors.EVENT_READ)
        self._idle.setdefault(conn.where, []).append(conn)

    def _close(self, conn: _Conn) -> None:
        if conn.state == "closed":
            return
        if conn.state == "idle":
            self._idle[conn.where].remove(conn)
        conn.state = "closed"
        self._busy.discard(conn)
        self._count -= 1
        try:
            self._sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass  # not registered (a TLS wrap that failed between the two)
        conn.sock.close()

    def _fail(self, conn: _Conn, e: BaseException) -> None:
        """The connection broke. A request on a reused one that had no answer yet goes again, once
        (the server closed it while idle, as we sent); any other is reported."""
        job, conn.job = conn.job, None
        answered = conn.length >= 0 or bool(conn.buf)
        try:
            self._close(conn)
        finally:
            if job is not None:
                if conn.reused and not answered and not job.retried:
                    job.retried = True  # on a new connection (_take), not another idle one
                    self._queue.appendleft(job)
                else:
                    _report(job, None, None, str(e) or type(e).__name__)

    def _expire(self, now: float) -> None:
        """Give up on connections that made no progress within their timeout."""
        for conn in list(self._busy):
            limit = self._connect_timeout if conn.state in ("connect", "handshake") else self._read_timeout
            if now - conn.last > limit:
                self._fail(conn, TimeoutError("read timeout" if conn.state == "read" else "connect timeout"))

    def _context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context(cafile=self._ca_bundle or get_cert_path(True))
        return self._tls
