"""The one-thread loop of sources/s3_small.py and the pipe parts of sources/s3.py, against plain
sockets on 127.0.0.1 that misbehave in ways S3 servers do now and then (a review's findings).

The loop is driven directly: a bucket resolves to a fixed target (as SignedGet would), and the
credentials are a fixed key pair (as botocore's frozen credentials).
"""

from __future__ import annotations

import fcntl
import os
import socket
import threading
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from sagemaker_pipe.chunks import ObjectRef
from sagemaker_pipe.sources import s3, s3_small
from sagemaker_pipe.sources.s3_get import Target

pytestmark = pytest.mark.timeout(30)
KEYS = SimpleNamespace(get_frozen_credentials=lambda: SimpleNamespace(access_key="a", secret_key="s", token=None))


def loop_for(url: str, ca_bundle: str | None = None) -> s3_small.SmallGet:
    target = Target(url, "us-east-1", "s3")
    return s3_small.SmallGet(SimpleNamespace(target=lambda bucket: target), KEYS, ca_bundle, read_timeout=2,
                             connect_timeout=2)


class Server:
    """Accepts connections on 127.0.0.1 and serves each with `serve(conn, n)` (n: its count)."""

    def __init__(self, serve: Callable[[socket.socket, int], None]) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._serve = serve
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._serve, args=(conn, self.accepted), daemon=True).start()

    def close(self) -> None:
        self.sock.close()


def read_request(conn: socket.socket) -> bool:
    data = b""
    while b"\r\n\r\n" not in data:
        more = conn.recv(65536)
        if not more:
            return False
        data += more
    return True


def answers(small: s3_small.SmallGet, keys: list[str], timeout: float = 10) -> list[Any]:
    out: list[Any] = []
    for key in keys:
        small.start("bucket", key, 2, {}, lambda status, body, error: out.append((status, body, error)))
    deadline = time.monotonic() + timeout
    while len(out) < len(keys) and time.monotonic() < deadline:
        time.sleep(0.02)
    return out


def test_a_request_on_a_connection_the_server_dropped_goes_again_on_a_new_one():
    """Both kept-alive connections are dropped as the next requests come: the retry opens a new
    connection rather than taking the other dead one, and every request is answered 200."""
    def serve(conn: socket.socket, n: int) -> None:
        served = 0
        while read_request(conn):
            served += 1
            if served > 1:  # gave up on this kept-alive connection just as a request came
                conn.close()
                return
            time.sleep(0.2)  # both first requests in flight at once: two connections
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    server = Server(serve)
    try:
        small = loop_for(f"http://127.0.0.1:{server.port}/bucket/")
        assert answers(small, ["k0", "k1"]) == [(200, b"ok", None)] * 2
        assert answers(small, ["k2"]) == [(200, b"ok", None)]
        assert server.accepted == 3
    finally:
        server.close()


def test_a_ca_bundle_that_cannot_be_read_answers_every_request_and_leaks_no_connection():
    server = Server(lambda conn, n: read_request(conn))
    try:
        small = loop_for(f"https://127.0.0.1:{server.port}/bucket/", ca_bundle="/nonexistent/ca.pem")
        got = answers(small, [f"k{i}" for i in range(70)])  # more than CONNECTIONS
        assert len(got) == 70 and all(status is None and body is None for status, body, _ in got), got[:3]
        assert small._thread is not None and small._thread.is_alive()
        assert small._count == 0 and not small._busy
    finally:
        server.close()


def test_a_name_whose_first_address_refuses_is_reached_on_the_next(monkeypatch):
    """localhost resolves to ::1 first with many /etc/hosts; a server on 127.0.0.1 alone is still
    reached, without a refused connection per object."""
    def serve(conn: socket.socket, n: int) -> None:
        while read_request(conn):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    server = Server(serve)
    closed = socket.create_server(("127.0.0.1", 0))
    dead_port = closed.getsockname()[1]
    closed.close()  # nothing listens there: connections to it are refused
    real = socket.getaddrinfo

    def two_addresses(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        if host == "pipe-test.invalid":
            return [real("127.0.0.1", dead_port, *args, **kwargs)[0], real("127.0.0.1", port, *args, **kwargs)[0]]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", two_addresses)
    try:
        small = loop_for(f"http://pipe-test.invalid:{server.port}/bucket/")
        assert answers(small, ["k0", "k1", "k2"]) == [(200, b"ok", None)] * 3
    finally:
        server.close()


def test_bytes_put_into_a_small_pipe_are_told_to_the_reader_as_they_go():
    """A pipe part whose pipe could not be enlarged (the user's pipe-buffer quota) still moves a
    1 MiB chunk of the plain path: each write is announced, so the reader drains as it comes."""
    size = s3.READ_AHEAD + (1 << 20)
    part = s3._Part(ObjectRef("s3://b/k", "k", size, None), 0, 0, size)
    part.open_pipe()
    try:
        fcntl.fcntl(part.pipe_in, fcntl.F_SETPIPE_SZ, 65536)
        data = os.urandom(1 << 20)
        writer = threading.Thread(target=part.put, args=(data,), daemon=True)
        writer.start()
        got = b""
        deadline = time.monotonic() + 10
        while len(got) < len(data) and time.monotonic() < deadline:
            got += part.get(spans=False)  # type: ignore[operator]
        writer.join(5)
        assert got == data and not writer.is_alive()
    finally:
        part.cancelled = True
        part.close_pipe()
        os.close(part.pipe_in)


@pytest.mark.parametrize("url", ["http://h:80/b/", "https://H.example:443/b/", "http://h:9000/b/", "http://[::1]:9000/b/",
                                 "https://[::1]/b/"])
def test_the_host_signed_and_sent_is_the_one_botocore_signs(url):
    """A default port is left out and the name lower-cased, as botocore's signer does: a proxy in
    front of the server that rewrites Host to the bare name still sees a valid signature."""
    from botocore.auth import _host_from_url  # what botocore puts in the Host header it signs

    _, request = loop_for(url).prepare("bucket", "k", {})
    assert f"\r\nHost: {_host_from_url(url)}\r\n".encode() in request, request[:200]
