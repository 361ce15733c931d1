"""A TLS-terminating TCP relay on 127.0.0.1, so tests can reach the plain-HTTP S3 servers over HTTPS.

The servers of tests/s3_servers.py and the FaultProxy speak plain HTTP only. A :class:`TlsFront`
accepts TLS connections on its own loopback port and relays the decrypted bytes both ways, unchanged,
to an ``http://HOST:PORT`` upstream (a server or a FaultProxy). It knows nothing about HTTP, so
keep-alive, chunked bodies and SigV4 (the Host header the client signed reaches the upstream as
sent) all pass through.

At start it makes a private CA and a server certificate for IP 127.0.0.1 and DNS localhost with
the ``openssl`` command line, in its own temporary directory: clients must be given
:attr:`TlsFront.ca_bundle` (``verify=`` in boto3, ``AWS_CA_BUNDLE`` for a child process), or fail
certificate verification. Stdlib only; one thread per connection; every wait is bounded.
"""

from __future__ import annotations

import selectors
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from loopback import LoopbackListener, http_address

_CHUNK = 64 * 1024
_OPENSSL_TIMEOUT = 30.0
_POLL = 0.2
"""How often an idle connection looks at the stop flag."""


def _openssl(args: Sequence[str], cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, timeout=_OPENSSL_TIMEOUT,
                          stdin=subprocess.DEVNULL, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed ({done.returncode}): "
                           f"{done.stderr.decode('utf-8', 'replace').strip()}")


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A private CA and a server certificate it signed, valid for 127.0.0.1 and localhost.

    Returns (CA certificate, server certificate, server key), PEM files in ``directory``. P-256 keys:
    generated in milliseconds, and accepted by OpenSSL and awscrt's s2n alike. Key identifiers and
    key usages are set, so Python's strict X.509 checks (the default from 3.13) accept the chain.
    """
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ca, ca_key = directory / "ca.pem", directory / "ca.key"
    cert, key, csr = directory / "server.pem", directory / "server.key", directory / "server.csr"
    _openssl(["req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca), "-days", "2",
              "-subj", "/CN=sagemaker-pipe test CA",
              "-addext", "basicConstraints=critical,CA:TRUE",
              "-addext", "keyUsage=critical,keyCertSign,cRLSign"], directory)
    _openssl(["req", *ec, "-keyout", str(key), "-out", str(csr), "-subj", "/CN=localhost"], directory)
    extensions = directory / "server.ext"
    extensions.write_text(
        "subjectAltName = IP:127.0.0.1, DNS:localhost\n"
        "basicConstraints = critical, CA:FALSE\n"
        "keyUsage = critical, digitalSignature\n"
        "extendedKeyUsage = serverAuth\n"
        "subjectKeyIdentifier = hash\n"
        "authorityKeyIdentifier = keyid, issuer\n", encoding="ascii")
    _openssl(["x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-set_serial", "2",
              "-days", "2", "-extfile", str(extensions), "-out", str(cert)], directory)
    return ca, cert, key


class TlsFront(LoopbackListener):
    """The relay; use as a context manager or call :meth:`start` and :meth:`stop`."""

    thread_name = "tls-front"

    def __init__(self, upstream: str, *, timeout: float = 60.0) -> None:
        """``upstream`` is a plain-HTTP endpoint URL (``http://127.0.0.1:PORT``); ``timeout`` bounds
        the TLS handshake, every blocked send, and how long a connection may sit idle."""
        super().__init__()
        self.upstream = http_address(upstream)
        self.timeout = timeout
        self.ca_bundle = ""
        """Path of the private CA's certificate (PEM): the bundle a client must trust."""
        self.connections = 0
        """TLS connections accepted so far (handshake done): shows whether clients keep them alive."""
        self.handshake_failures = 0
        """Connections whose TLS handshake failed, e.g. a client that did not trust the CA."""
        self._tmpdir = ""
        self._context: ssl.SSLContext | None = None

    @property
    def endpoint_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @staticmethod
    def unavailable_reason() -> str | None:
        """Why no front can run here (no ``openssl`` command), or None."""
        return None if shutil.which("openssl") else "the openssl command line is not installed"

    # --- life cycle -----------------------------------------------------------------------
    def start(self) -> TlsFront:
        self._tmpdir = tempfile.mkdtemp(prefix="tls-front-")
        try:
            ca, cert, key = make_certificates(Path(self._tmpdir))
            self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._context.load_cert_chain(cert, key)
            self.ca_bundle = str(ca)
            self._listen()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop accepting, break every open connection, join the threads (bounded), remove the certificates."""
        self._shut_down()
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = ""

    def __enter__(self) -> TlsFront:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- one connection -------------------------------------------------------------------
    def _serve(self, raw: socket.socket) -> None:
        upstream: socket.socket | None = None
        client: ssl.SSLSocket | None = None
        try:
            raw.settimeout(self.timeout)
            assert self._context is not None
            # wrap_socket takes the descriptor over from ``raw``: track the wrapped socket instead,
            # then shake hands here, not in the accept loop, so a slow client holds up no one
            client = self._context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
            self._track(client)
            self._untrack(raw)
            if self._stopping.is_set():  # the shut-down may have listed the sockets before this one
                return
            try:
                client.do_handshake()
            except (OSError, ssl.SSLError):
                with self._lock:
                    self.handshake_failures += 1
                return
            with self._lock:
                self.connections += 1
            upstream = socket.create_connection(self.upstream, timeout=self.timeout)
            upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._track(upstream)
            self._relay(client, upstream)
        except (OSError, ssl.SSLError):
            pass  # a peer went away or stop() broke the connection: the relay just ends
        finally:
            for sock in (upstream, client, raw):
                if sock is not None:
                    self._untrack(sock)
            if upstream is not None:
                upstream.close()
            if client is not None:
                _close_tls(client)
            raw.close()

    def _relay(self, client: ssl.SSLSocket, upstream: socket.socket) -> None:
        """Copy bytes both ways until the upstream closes, or the client closes and the upstream
        has answered, or nothing moves for ``timeout`` seconds.

        One thread serves both directions (an SSL object must not be used by two threads at once).
        Reads happen only on readable sockets; sends block, bounded by the socket timeout.
        """
        client_open = True
        idle_since = time.monotonic()
        with selectors.DefaultSelector() as selector:
            selector.register(client, selectors.EVENT_READ, "client")
            selector.register(upstream, selectors.EVENT_READ, "upstream")
            while not self._stopping.is_set():
                # decrypted bytes already buffered in the SSL object leave the socket unreadable
                ready = ["client"] if client_open and client.pending() else \
                    [key.data for key, _ in selector.select(_POLL)]
                if not ready:
                    if time.monotonic() - idle_since > self.timeout:
                        return
                    continue
                idle_since = time.monotonic()
                if "client" in ready:
                    data = client.recv(_CHUNK)
                    if data:
                        upstream.sendall(data)
                    else:  # the client is done sending: pass the half-close on, keep the answer coming
                        client_open = False
                        selector.unregister(client)
                        upstream.shutdown(socket.SHUT_WR)
                if "upstream" in ready:
                    data = upstream.recv(_CHUNK)
                    if not data:
                        return
                    client.sendall(data)


def _close_tls(client: ssl.SSLSocket) -> None:
    """Send a TLS close_notify without waiting for the peer's, then close."""
    try:
        client.setblocking(False)
        client.unwrap()
    except (OSError, ValueError, ssl.SSLError):
        pass  # SSLWantReadError (the peer's close_notify not there yet), or the peer is gone
    client.close()
