"""A TCP listener on 127.0.0.1 with one thread per connection and a bounded stop.

The life cycle shared by the suite's relays in front of the S3 servers (fault_proxy.FaultProxy,
tls_front.TlsFront): a subclass says how to serve one accepted connection (:meth:`_serve`); this
class accepts, tracks every socket and thread, and on :meth:`_shut_down` breaks every open
connection and joins the threads within a few seconds, so no test can hang on a relay.
"""

from __future__ import annotations

import socket
import threading
import time
from urllib.parse import urlsplit

JOIN_TIMEOUT = 5.0
"""Upper bound on a whole shut-down: threads still running after it are daemons, left behind."""
_ACCEPT_POLL = 0.2


def http_address(url: str) -> tuple[str, int]:
    """(host, port) of a plain-HTTP endpoint URL ``http://HOST:PORT`` (or ``HOST:PORT``)."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme != "http" or parts.hostname is None or parts.port is None:
        raise ValueError(f"upstream must be http://HOST:PORT, not {url!r}")
    return parts.hostname, parts.port


class LoopbackListener:
    """Accept on a free loopback port (:attr:`port`); serve each connection in its own thread."""

    thread_name = "loopback"

    def __init__(self) -> None:
        self.port = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None

    def _serve(self, conn: socket.socket) -> None:
        """Serve one accepted connection (TCP_NODELAY set, tracked); runs in its own thread and
        must untrack and close ``conn`` (or what replaced it) when done."""
        raise NotImplementedError

    @property
    def threads(self) -> int:
        """Connection threads still running (0 after a clean shut-down)."""
        with self._lock:
            return len(self._threads)

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))  # a port the kernel picked, held from here on: no race
        listener.listen(128)
        listener.settimeout(_ACCEPT_POLL)  # lets the accept loop notice the stop flag quickly
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept_loop, name=f"{self.thread_name}-accept", daemon=True)
        self._acceptor.start()

    def _shut_down(self) -> None:
        """Stop accepting, break every open connection, and join the threads (bounded)."""
        self._stopping.set()
        deadline = time.monotonic() + JOIN_TIMEOUT
        if self._acceptor is not None:
            self._acceptor.join(JOIN_TIMEOUT)  # no new connection after this
        with self._lock:
            sockets = list(self._sockets)
            threads = list(self._threads)
        for sock in sockets:
            try:  # the plain socket's shutdown, TLS sockets included: wakes a thread blocked on it
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._track(conn)
            thread = threading.Thread(target=self._run_tracked, args=(conn,), name=f"{self.thread_name}-conn",
                                      daemon=True)
            with self._lock:
                self._threads.add(thread)
            thread.start()

    def _run_tracked(self, conn: socket.socket) -> None:
        try:
            self._serve(conn)
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)

    def _untrack(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)
