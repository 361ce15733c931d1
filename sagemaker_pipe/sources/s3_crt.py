"""Object bodies through awscrt's S3 client (AWS's C runtime, as in `boto3[crt]`), when it is installed.

Why: every GET through Python (s3_get.py) costs signing, http.client and a thread handoff in
Python; on 2 cores that held small objects below awscrt's own rate, at 2.4-2.8x its CPU per
object (docs/speed.md, "S3 against awscrt"). Here the C client signs, sends and receives on
its own threads, and Python sees each body's bytes once, in a callback.

What stays botocore's: the URL prefix and signing scope of a bucket (SignedGet.target: its
endpoint rules, addressing style, AWS_ENDPOINT_URL_S3), the credentials (botocore's chain, asked
for every request, so refreshed as botocore refreshes them: new keys, new signing configs),
the CA bundle (AWS_CA_BUNDLE), and every answer but a 200 or 206: the client never retries
(retry mode NONE), it reports the status, and the caller repeats the request through the plain
path, whose retries, region redirects and error messages are botocore's. The C client takes no
proxy from Python, so a bucket reached through HTTP(S)_PROXY is never fetched here.
awscrt hands a body over only once it is complete, so only small whole objects come here; one
not complete within READ_TIMEOUT seconds is given up by a watchdog, like a read timeout on the
plain path, and the caller fetches it again.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlsplit

from botocore.utils import get_environ_proxies

from sagemaker_pipe.sources.s3_get import AGENT, SignedGet, Target

try:
    from awscrt import auth, http, io, s3
except ImportError:  # an optional extra: sagemaker-pipe[crt]
    s3 = None

OnBody = Callable[[bytes], None]
OnDone = Callable[[int | None, str | None], None]  # (status or None, error name or None)


def installed() -> bool:
    """awscrt is there, and recent enough (0.38.1) to turn its own retries off: they must stay botocore's."""
    return (s3 is not None and hasattr(s3, "S3RetryMode")
            and "connect_timeout_ms" in inspect.signature(s3.S3Client).parameters)


class _Flight:
    """One request in flight: when it last made progress, and its one end, whichever comes first:
    the answer, or the watchdog giving up on a stalled one (awscrt may take long to cancel)."""

    def __init__(self, on_done: OnDone) -> None:
        self.last = time.monotonic()
        self.on_done = on_done
        self.lock = threading.Lock()  # held while a body is handed over, so that giving up is atomic
        self.over = False
        self._request: Any = None
        self._cancel = False

    def started(self, request: Any) -> None:
        """The request, once make_request returns (its callbacks may have run already)."""
        with self.lock:
            if self._cancel:
                request.cancel()
            elif not self.over:
                self._request = request

    def end(self, cancel: bool = False) -> bool:
        """True for the first end only. Drops the request: it holds this flight's callbacks, and
        they this flight, a cycle never collected."""
        with self.lock:
            first, self.over = not self.over, True
            request, self._request = self._request, None
            self._cancel = cancel
        if cancel and request is not None:
            request.cancel()
        return first


class CrtGet:
    def __init__(self, signed: SignedGet, credentials: Any, ca_bundle: str | None, read_timeout: float,
                 connect_timeout: float) -> None:
        """`signed` resolves buckets, `credentials` is botocore's (refreshable) credentials object."""
        assert s3 is not None
        self._signed = signed
        self._credentials = credentials
        self._ca_bundle = ca_bundle
        self._read_timeout = read_timeout
        self._connect_ms = int(connect_timeout * 1000)
        self._frozen: Any = None  # botocore's credentials when last asked
        self._signing: dict[Target, Any] = {}  # awscrt's signing config for them, per bucket target
        self._clients: dict[str, Any] = {}  # per URL scheme
        self._usable: dict[Target, tuple[str, str, str] | None] = {}  # scheme, host, path prefix
        self._flights: set[_Flight] = set()
        self._lock = threading.Lock()
        self._watchdog: threading.Thread | None = None

    def _signing_config(self, target: Target) -> Any:
        """Signing with botocore's credentials as they are now (it refreshes them near their expiry)."""
        frozen = self._credentials.get_frozen_credentials()
        if frozen != self._frozen:  # new keys: every target signs with them from now on
            self._frozen, self._signing = frozen, {}
        config = self._signing.get(target)
        if config is None:
            provider = auth.AwsCredentialsProvider.new_static(frozen.access_key, frozen.secret_key, frozen.token)
            config = self._signing[target] = s3.create_default_s3_signing_config(
                region=target.region, credential_provider=provider)
        return config

    def start(self, bucket: str, key: str, headers: dict[str, str], on_body: OnBody, on_done: OnDone) -> bool:
        """Send the GET and return True, or return False (nothing sent) when this bucket is not for this path."""
        target = self._signed.target(bucket)
        where = None if target is None else self._where(target)
        if target is None or where is None:
            return False
        scheme, host, path = where
        request = http.HttpRequest("GET", path + quote(key, safe="/~"), http.HttpHeaders(
            [("Host", host), ("User-Agent", AGENT), *headers.items()]))
        flight = _Flight(on_done)

        def body_in(chunk: Any, offset: int, **_: Any) -> None:
            flight.last = time.monotonic()
            with flight.lock:
                if not flight.over:
                    on_body(bytes(chunk))

        def done(error: BaseException | None, status_code: int | None = None, **_: Any) -> None:
            with self._lock:
                self._flights.discard(flight)
            if flight.end():
                on_done(status_code, None if error is None else getattr(error, "name", type(error).__name__))
        with self._lock:
            client = self._client(scheme, target.region)
            signing = self._signing_config(target)
            self._flights.add(flight)
            self._start_watchdog()
        flight.started(client.make_request(type=s3.S3RequestType.DEFAULT, operation_name="GetObject", request=request,
                                           signing_config=signing, on_body=body_in, on_done=done))
        return True

    def _where(self, target: Target) -> tuple[str, str, str] | None:
        """Scheme, host and path prefix of a target fit for this path: plain SigV4 for `s3`, over
        http(s), and no proxy for its host; else None."""
        with self._lock:
            if target not in self._usable:
                url = urlsplit(target.prefix)
                fit = (target.service == "s3" and url.scheme in ("http", "https")
                       and not get_environ_proxies(target.prefix))
                self._usable[target] = (url.scheme, url.netloc, url.path) if fit else None
            return self._usable[target]

    def _client(self, scheme: str, region: str) -> Any:
        """One client per scheme (under the lock); each request brings its own signing config."""
        client = self._clients.get(scheme)
        if client is None:
            tls = None
            if scheme == "https":
                options = io.TlsContextOptions()
                if self._ca_bundle:
                    options.override_default_trust_store_from_path(None, self._ca_bundle)
                tls = io.ClientTlsContext(options).new_connection_options()
            client = s3.S3Client(
                region=region, tls_mode=s3.S3RequestTlsMode.ENABLED if tls else s3.S3RequestTlsMode.DISABLED,
                tls_connection_options=tls, connect_timeout_ms=self._connect_ms,
                retry_config=s3.S3RetryConfig(retry_mode=s3.S3RetryMode.NONE))
            self._clients[scheme] = client
        return client

    def _start_watchdog(self) -> None:
        if self._watchdog is None:
            self._watchdog = threading.Thread(target=self._watch, name="s3-crt-watchdog", daemon=True)
            self._watchdog.start()

    def _watch(self) -> None:
        """Give up on any request that has made no progress for the read timeout (a stalled body)."""
        while True:
            time.sleep(min(1.0, self._read_timeout / 4))
            now = time.monotonic()
            with self._lock:
                stalled = [f for f in self._flights if now - f.last > self._read_timeout]
                self._flights.difference_update(stalled)
            for flight in stalled:
                if flight.end(cancel=True):
                    flight.on_done(None, "read timeout")
