"""An HTTP/1.1 forwarding proxy on 127.0.0.1 that injects scripted S3 faults.

Tests point a client's ``endpoint_url`` at the proxy, which relays every request to a real S3
server. Request heads are forwarded byte for byte (Host included), so SigV4 signatures still
verify upstream, and bodies are streamed in small pieces in both directions, never buffered whole.
Client and upstream connections are kept alive like botocore/urllib3 expect.

Rules, added at run time, pick requests by method, path (prefix or regex) and query substring,
optionally only the next K of them, and apply one fault:

* :meth:`FaultProxy.status` -- answer with an S3 XML error (e.g. 503 SlowDown) without forwarding;
* :meth:`FaultProxy.cut_after` -- forward the response head (full Content-Length), then close
  after N body bytes;
* :meth:`FaultProxy.reset_after` -- the same, but abort the connection with a TCP RST;
* :meth:`FaultProxy.stall` -- pause the body for S seconds after N bytes, then go on or close.

Every request is logged (method, path, query, Range, status, body bytes sent, fault) so tests can
assert, for instance, that a resume asked for ``Range: bytes=N-`` with N the bytes delivered.
Stdlib only; one thread per client connection; every wait is bounded.
"""

from __future__ import annotations

import dataclasses
import http
import io
import re
import select
import socket
import struct
import threading
from collections.abc import Callable
from types import TracebackType
from urllib.parse import unquote, urlsplit
from xml.sax.saxutils import escape

from loopback import LoopbackListener, http_address

_CHUNK = 64 * 1024
_MAX_LINE = 64 * 1024
_MAX_HEADERS = 200
MAX_STALL = 60.0
"""Upper bound on one stall, so a forgotten rule cannot hang a test run."""

_S3_ERRORS: dict[int, tuple[str, str]] = {
    400: ("BadRequest", "Bad Request"),
    403: ("AccessDenied", "Access Denied"),
    404: ("NoSuchKey", "The specified key does not exist."),
    500: ("InternalError", "We encountered an internal error. Please try again."),
    501: ("NotImplemented", "A header you provided implies functionality that is not implemented."),
    502: ("BadGateway", "The proxy could not reach the upstream server."),
    503: ("SlowDown", "Please reduce your request rate."),
    504: ("GatewayTimeout", "The upstream server did not answer in time."),
}


class _Abort(Exception):
    """Raised inside a response copy when a fault ends the connection."""

    def __init__(self, reset: bool) -> None:
        super().__init__("reset" if reset else "close")
        self.reset = reset


class _Broken(Exception):
    """A peer sent something that is not HTTP/1.1 or closed mid-message."""


@dataclasses.dataclass
class RequestRecord:
    """One request as the proxy saw it, and what it sent back.

    ``status`` and ``body_bytes`` are updated just before the bytes go out, so once the client has
    seen a response its record already says so.
    """

    method: str
    path: str
    """Percent-decoded path, e.g. ``/bucket/key``."""
    query: str
    """Raw query string, e.g. ``list-type=2&prefix=a``."""
    headers: dict[str, str]
    """Request headers, names lower-cased."""
    status: int | None = None
    """Status sent to the client; None when the connection failed before a response head."""
    body_bytes: int = 0
    """Response body bytes sent to the client (raw bytes for chunked responses)."""
    fault: str | None = None
    """Kind of the rule that matched: ``status``, ``cut``, ``reset`` or ``stall``."""

    @property
    def range(self) -> str | None:
        return self.headers.get("range")


@dataclasses.dataclass
class Rule:
    """A fault and the requests it applies to. ``remaining`` None means every match."""

    kind: str
    method: str | None = None
    path: str | None = None
    path_regex: re.Pattern[str] | None = None
    query: str | None = None
    remaining: int | None = 1
    status: int = 0
    s3_code: str = ""
    message: str = ""
    nbytes: int = 0
    seconds: float = 0.0
    close_after_stall: bool = False
    hits: int = 0
    """How many requests this rule was applied to."""

    def matches(self, method: str, path: str, query: str) -> bool:
        return (
            (self.remaining is None or self.remaining > 0)
            and (self.method is None or self.method.upper() == method)
            and (self.path is None or path.startswith(self.path))
            and (self.path_regex is None or self.path_regex.search(path) is not None)
            and (self.query is None or self.query in query)
        )


@dataclasses.dataclass
class _Message:
    raw: bytes
    start: list[str]
    headers: dict[str, str]


@dataclasses.dataclass
class _Response:
    message: _Message
    status: int
    body_sent: bool = True
    """False when the server answered before a 100 Continue, so the request body never went up."""


def _read_head(rfile: io.BufferedReader) -> _Message | None:
    """Read a request or response head; None on a clean EOF before its first byte."""
    lines: list[bytes] = []
    while True:
        line = rfile.readline(_MAX_LINE + 1)
        if not line:
            if lines:
                raise _Broken("EOF inside a message head")
            return None
        if len(line) > _MAX_LINE or len(lines) > _MAX_HEADERS:
            raise _Broken("message head too large")
        if not lines and line in (b"\r\n", b"\n"):
            continue  # RFC 9112 2.2: ignore empty lines before a request line
        lines.append(line)
        if line in (b"\r\n", b"\n"):
            break
    start = lines[0].decode("latin-1").strip().split(" ", 2)
    if len(start) < 2:
        raise _Broken(f"bad start line {lines[0]!r}")
    headers: dict[str, str] = {}
    for raw in lines[1:-1]:
        name, sep, value = raw.decode("latin-1").partition(":")
        if not sep:
            raise _Broken(f"bad header line {raw!r}")
        key = name.strip().lower()
        headers[key] = f"{headers[key]},{value.strip()}" if key in headers else value.strip()
    return _Message(b"".join(lines), start, headers)


def _framing(headers: dict[str, str], *, bodyless: bool, is_response: bool) -> tuple[str, int]:
    """How a message body is delimited: ("none"|"length"|"chunked"|"close", length)."""
    if bodyless:
        return "none", 0
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return "chunked", 0
    if "content-length" in headers:
        try:
            return "length", int(headers["content-length"].split(",")[0])
        except ValueError as exc:
            raise _Broken("bad Content-Length") from exc
    return ("close", 0) if is_response else ("none", 0)


def _copy_body(src: io.BufferedReader, framing: tuple[str, int], write: Callable[[bytes], None]) -> None:
    """Stream one body from ``src`` to ``write`` in pieces of at most 64 KiB, as framed on the wire."""
    kind, length = framing
    if kind == "length":
        _copy_exact(src, length, write)
    elif kind == "chunked":
        while True:
            size_line = src.readline(_MAX_LINE + 1)
            if not size_line.endswith(b"\n"):
                raise _Broken("EOF inside chunked body")
            write(size_line)
            try:
                size = int(size_line.split(b";")[0].strip(), 16)
            except ValueError as exc:
                raise _Broken(f"bad chunk size {size_line!r}") from exc
            if size == 0:
                break
            _copy_exact(src, size + 2, write)  # data and its CRLF
        while True:  # trailer section, ends with an empty line
            line = src.readline(_MAX_LINE + 1)
            if not line.endswith(b"\n"):
                raise _Broken("EOF inside chunked trailer")
            write(line)
            if line in (b"\r\n", b"\n"):
                break
    elif kind == "close":
        while chunk := src.read1(_CHUNK):
            write(chunk)


def _copy_exact(src: io.BufferedReader, n: int, write: Callable[[bytes], None]) -> None:
    while n > 0:
        chunk = src.read1(min(n, _CHUNK))
        if not chunk:
            raise _Broken("EOF inside a body")
        write(chunk)
        n -= len(chunk)


class _FaultWriter:
    """Sends response body bytes to the client, applying a cut, reset or stall rule on the way."""

    def __init__(
        self, sock: socket.socket, rule: Rule | None, stopping: threading.Event,
        count: Callable[[int], None],
    ) -> None:
        self.sock = sock
        self.rule = rule
        self.stopping = stopping
        self.count = count
        self.sent = 0
        self._stalled = False

    def _send(self, data: bytes) -> None:
        self.sent += len(data)
        self.count(self.sent)  # logged first: the client may act on the bytes at once
        self.sock.sendall(data)

    def _limit(self) -> int | None:
        """Body offset at which the rule acts next, or None when it has nothing left to do."""
        if self.rule is None:
            return None
        if self.rule.kind == "stall":
            return None if self._stalled else self.rule.nbytes
        return self.rule.nbytes

    def write(self, data: bytes) -> None:
        while data:
            limit = self._limit()
            if limit is None:
                self._send(data)
                return
            room = max(0, limit - self.sent)
            if room:
                part, data = data[:room], data[room:]
                self._send(part)
                continue
            assert self.rule is not None
            if self.rule.kind == "stall":
                self._stalled = True
                if self.stopping.wait(self.rule.seconds) or self.rule.close_after_stall:
                    raise _Abort(reset=False)
            else:
                raise _Abort(reset=self.rule.kind == "reset")


class _Upstream:
    """One keep-alive connection to the upstream server, reopened when the server dropped it."""

    def __init__(
        self, address: tuple[str, int], timeout: float,
        track: Callable[[socket.socket], None], untrack: Callable[[socket.socket], None],
    ) -> None:
        self.address = address
        self.timeout = timeout
        self.track = track
        self.untrack = untrack
        self.sock: socket.socket | None = None
        self.rfile: io.BufferedReader | None = None

    def ensure(self) -> tuple[socket.socket, io.BufferedReader]:
        if self.sock is not None and not self._usable(self.sock):
            self.close()
        if self.sock is None or self.rfile is None:
            self.sock = socket.create_connection(self.address, timeout=self.timeout)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.track(self.sock)
            self.rfile = self.sock.makefile("rb")
        return self.sock, self.rfile

    @staticmethod
    def _usable(sock: socket.socket) -> bool:
        """False when the server closed the idle connection (readable with EOF), like urllib3 checks."""
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            return not readable or sock.recv(1, socket.MSG_PEEK) != b""
        except OSError:
            return False

    def close(self) -> None:
        if self.rfile is not None:
            self.rfile.close()
        if self.sock is not None:
            self.untrack(self.sock)
            self.sock.close()
        self.sock = self.rfile = None


class FaultProxy(LoopbackListener):
    """The proxy; use as a context manager or call :meth:`start` and :meth:`close`."""

    thread_name = "fault-proxy"

    def __init__(self, upstream: str, *, timeout: float = 60.0) -> None:
        """``upstream`` is the server's endpoint URL (``http://127.0.0.1:PORT``); ``timeout``
        bounds every socket wait on either side."""
        super().__init__()
        self.upstream = http_address(upstream)
        self.timeout = timeout
        self.connections = 0
        """Client connections accepted so far: shows whether a client reuses kept-alive ones."""
        self.idle_timeout: float | None = None
        """When set, a client connection idle that long between requests is closed, as servers do."""
        self._rules: list[Rule] = []
        self._log: list[RequestRecord] = []

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- rules ----------------------------------------------------------------------------
    def _add(self, rule: Rule, path_regex: str | None) -> Rule:
        if rule.remaining is not None and rule.remaining < 1:
            raise ValueError("times must be at least 1, or None for every match")
        rule.path_regex = re.compile(path_regex) if path_regex is not None else None
        with self._lock:
            self._rules.append(rule)
        return rule

    def status(
        self, code: int = 503, *, times: int | None = 1, s3_code: str | None = None,
        message: str | None = None, method: str | None = None, path: str | None = None,
        path_regex: str | None = None, query: str | None = None,
    ) -> Rule:
        """Answer the next ``times`` matching requests with ``code`` and an S3 XML error body."""
        fallback = (http.HTTPStatus(code).phrase.replace(" ", ""), "")
        default_code, default_message = _S3_ERRORS.get(code, fallback)
        rule = Rule("status", method, path, None, query, times, status=code,
                    s3_code=s3_code or default_code, message=message or default_message)
        return self._add(rule, path_regex)

    def cut_after(
        self, nbytes: int, *, times: int | None = 1, method: str | None = None,
        path: str | None = None, path_regex: str | None = None, query: str | None = None,
    ) -> Rule:
        """Close the connection (FIN) after ``nbytes`` response body bytes; the head keeps the full length."""
        return self._add(Rule("cut", method, path, None, query, times, nbytes=nbytes), path_regex)

    def reset_after(
        self, nbytes: int, *, times: int | None = 1, method: str | None = None,
        path: str | None = None, path_regex: str | None = None, query: str | None = None,
    ) -> Rule:
        """Abort the connection (RST, SO_LINGER 0) after ``nbytes`` response body bytes."""
        return self._add(Rule("reset", method, path, None, query, times, nbytes=nbytes), path_regex)

    def stall(
        self, seconds: float, *, after_bytes: int = 0, then: str = "continue", times: int | None = 1,
        method: str | None = None, path: str | None = None, path_regex: str | None = None,
        query: str | None = None,
    ) -> Rule:
        """Stop sending the response body for ``seconds`` after ``after_bytes`` bytes, then
        ``"continue"`` or ``"close"``."""
        if not 0 <= seconds <= MAX_STALL:
            raise ValueError(f"stall must be between 0 and {MAX_STALL} s")
        if then not in ("continue", "close"):
            raise ValueError('then must be "continue" or "close"')
        rule = Rule("stall", method, path, None, query, times, nbytes=after_bytes,
                    seconds=seconds, close_after_stall=then == "close")
        return self._add(rule, path_regex)

    def clear_rules(self) -> None:
        with self._lock:
            self._rules.clear()

    def _take_rule(self, method: str, path: str, query: str) -> Rule | None:
        """The first rule matching this request, with its count used up by one."""
        with self._lock:
            for rule in self._rules:
                if rule.matches(method, path, query):
                    rule.hits += 1
                    if rule.remaining is not None:
                        rule.remaining -= 1
                    return rule
        return None

    # --- request log ----------------------------------------------------------------------
    @property
    def records(self) -> list[RequestRecord]:
        """A snapshot of every request so far, oldest first."""
        with self._lock:
            return [dataclasses.replace(r, headers=dict(r.headers)) for r in self._log]

    def requests(self, method: str | None = None, path: str | None = None) -> list[RequestRecord]:
        """Snapshot of the requests with this method and path prefix."""
        return [r for r in self.records
                if (method is None or r.method == method.upper())
                and (path is None or r.path.startswith(path))]

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()

    def _update(self, record: RequestRecord, **changes: object) -> None:
        with self._lock:
            for name, value in changes.items():
                setattr(record, name, value)

    # --- life cycle -----------------------------------------------------------------------
    def start(self) -> FaultProxy:
        self._listen()
        return self

    def close(self) -> None:
        """Stop accepting, break every open connection, and join the threads (bounded)."""
        self._shut_down()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- one client connection ------------------------------------------------------------
    def _serve(self, client: socket.socket) -> None:
        client.settimeout(self.timeout)
        with self._lock:
            self.connections += 1
        upstream = _Upstream(self.upstream, self.timeout, self._track, self._untrack)
        rfile = client.makefile("rb")
        reset = False
        try:
            served = 0
            while not self._stopping.is_set():
                if served and self.idle_timeout is not None:
                    client.settimeout(self.idle_timeout)
                request = _read_head(rfile)
                if request is None:
                    break
                client.settimeout(self.timeout)
                served += 1
                keep_alive, reset = self._exchange(request, rfile, client, upstream)
                if not keep_alive:
                    break
        except (OSError, _Broken):
            pass  # the client went away or spoke nonsense: just drop the connection
        finally:
            rfile.close()  # before the socket: makefile() holds a reference to the descriptor
            if reset:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self._untrack(client)
            client.close()
            upstream.close()

    def _exchange(
        self, request: _Message, rfile: io.BufferedReader, client: socket.socket, upstream: _Upstream
    ) -> tuple[bool, bool]:
        """Serve one request; returns (keep the client connection, close it with RST)."""
        method = request.start[0].upper()
        target = urlsplit(request.start[1])
        path = unquote(target.path)
        rule = self._take_rule(method, path, target.query)
        record = RequestRecord(method, path, target.query, request.headers,
                               fault=rule.kind if rule else None)
        with self._lock:
            self._log.append(record)
        request_framing = _framing(request.headers, bodyless=False, is_response=False)
        expects_continue = (request.headers.get("expect", "").lower() == "100-continue"
                            and request_framing[0] != "none")
        wants_close = "close" in request.headers.get("connection", "").lower()
        try:
            if rule is not None and rule.kind == "status":
                if not expects_continue:
                    _copy_body(rfile, request_framing, lambda _: None)
                # After Expect: 100-continue the client may or may not send the body: close.
                keep = not (expects_continue or wants_close)
                self._send_error(client, record, rule.status, rule.s3_code, rule.message, keep)
                return keep, False
            try:
                up_sock, up_rfile = upstream.ensure()
            except OSError as exc:
                self._send_error(client, record, 502, _S3_ERRORS[502][0], str(exc), False)
                return False, False
            up_sock.sendall(request.raw)
            response = self._relay_request_body(
                rfile, client, up_rfile, up_sock, request_framing, expects_continue)
            keep = self._relay_response(request, response, up_rfile, client, record, rule)
            if not (keep and response.body_sent):
                upstream.close()
            return keep and response.body_sent and not wants_close, False
        except _Abort as abort:
            upstream.close()
            return False, abort.reset

    def _relay_request_body(
        self, rfile: io.BufferedReader, client: socket.socket, up_rfile: io.BufferedReader,
        up_sock: socket.socket, framing: tuple[str, int], expects_continue: bool,
    ) -> _Response:
        """Send the request body upstream (after its 100 Continue, if asked) and read the final head."""
        if expects_continue:
            head = self._read_response(up_rfile)
            if head.status != 100:
                return _Response(head.message, head.status, body_sent=False)
            client.sendall(head.message.raw)
        _copy_body(rfile, framing, up_sock.sendall)
        while True:
            head = self._read_response(up_rfile)
            if head.status >= 200:
                return head
            client.sendall(head.message.raw)  # other interim responses pass through

    @staticmethod
    def _read_response(up_rfile: io.BufferedReader) -> _Response:
        message = _read_head(up_rfile)
        if message is None:
            raise _Broken("upstream closed before answering")
        try:
            status = int(message.start[1])
        except ValueError as exc:
            raise _Broken(f"bad status line {message.raw[:80]!r}") from exc
        return _Response(message, status)

    def _relay_response(
        self, request: _Message, response: _Response, up_rfile: io.BufferedReader, client: socket.socket,
        record: RequestRecord, rule: Rule | None,
    ) -> bool:
        """Forward the response head and body, applying ``rule``; True when both sides stay open."""
        headers = response.message.headers
        bodyless = (request.start[0].upper() == "HEAD" or response.status in (204, 304))
        framing = _framing(headers, bodyless=bodyless, is_response=True)
        self._update(record, status=response.status)
        client.sendall(response.message.raw)
        writer = _FaultWriter(client, rule, self._stopping,
                              lambda sent: self._update(record, body_bytes=sent))
        _copy_body(up_rfile, framing, writer.write)
        http10 = response.message.start[0].upper() == "HTTP/1.0"
        closing = "close" in headers.get("connection", "").lower() or http10
        return framing[0] != "close" and not closing

    def _send_error(
        self, client: socket.socket, record: RequestRecord, status: int, s3_code: str,
        message: str, keep_alive: bool,
    ) -> None:
        request_id = f"faultproxy{id(record):x}"
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{escape(s3_code)}</Code><Message>{escape(message)}</Message>"
            f"<Resource>{escape(record.path)}</Resource><RequestId>{request_id}</RequestId></Error>"
        ).encode()
        if record.method == "HEAD":
            body = b""  # S3 sends no body with a HEAD error, only the status
        head = (
            f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
            "Content-Type: application/xml\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"x-amz-request-id: {request_id}\r\n"
            + ("" if keep_alive else "Connection: close\r\n")
            + "\r\n"
        ).encode("latin-1")
        self._update(record, status=status, body_bytes=len(body))
        client.sendall(head + body)

