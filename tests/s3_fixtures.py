"""pytest fixtures for real S3 servers on 127.0.0.1, and fault proxies and HTTPS fronts in front of them.

Loaded as a plugin (``pytest_plugins = ["s3_fixtures"]`` in tests/conftest.py, tests/ on
sys.path). Servers are session-scoped: each starts once per test run (about 1 s) on its own free
ports, so parallel runs do not collide. Buckets are per test and uniquely named.

A server whose software is missing makes its tests skip with the install command as reason --
unless ``REQUIRE_S3_SERVERS=1`` or ``CI=true`` is set, where it fails instead, so CI can never
pass by silently skipping every S3 test.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator, Mapping

import pytest
from botocore.exceptions import BotoCoreError, ClientError
from fault_proxy import FaultProxy
from s3_helpers import JobRunner
from s3_servers import MotoServer, S3Server, SeaweedServer, empty_and_delete_bucket, seed_bucket
from tls_front import TlsFront

SeedBucket = Callable[..., str]
"""``seeded_bucket(server, {key: bytes}, *, name=None) -> bucket name``."""
MakeProxy = Callable[[S3Server], FaultProxy]
MakeFront = Callable[[S3Server | FaultProxy], TlsFront]


def _servers_required() -> bool:
    flag = os.environ.get("REQUIRE_S3_SERVERS") or os.environ.get("CI") or ""
    return flag.strip().lower() in ("1", "true", "yes")


def _skip_if_unavailable(reason: str | None) -> None:
    if reason is not None:
        if _servers_required():
            pytest.fail(f"{reason} (required: REQUIRE_S3_SERVERS or CI is set)", pytrace=False)
        pytest.skip(reason)


def _serve(cls: type[S3Server]) -> Iterator[S3Server]:
    _skip_if_unavailable(cls.unavailable_reason())
    with cls() as server:
        yield server


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[S3Server]:
    """A moto server for the whole session (accepts any credentials)."""
    yield from _serve(MotoServer)


@pytest.fixture(scope="session")
def seaweed_s3() -> Iterator[S3Server]:
    """A SeaweedFS ``weed mini`` server for the whole session (checks SigV4)."""
    yield from _serve(SeaweedServer)


_SERVER_FIXTURES = {"moto": "moto_s3", "seaweedfs": "seaweed_s3"}


@pytest.fixture(params=sorted(_SERVER_FIXTURES))
def s3_server(request: pytest.FixtureRequest) -> S3Server:
    """Each server in turn: a test using this runs once against moto and once against SeaweedFS."""
    server: S3Server = request.getfixturevalue(_SERVER_FIXTURES[request.param])
    return server


def _unique_bucket(node_name: str) -> str:
    """A valid, unused bucket name that still says which test made it (3-63 chars, [a-z0-9-])."""
    stem = re.sub(r"[^a-z0-9]+", "-", node_name.lower()).strip("-")[:40].strip("-")
    return f"{stem or 't'}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def bucket_name(request: pytest.FixtureRequest) -> str:
    """A fresh bucket name (not created), unique across tests and runs."""
    return _unique_bucket(request.node.name)


@pytest.fixture
def seeded_bucket(request: pytest.FixtureRequest) -> Iterator[SeedBucket]:
    """Factory: create a bucket on a server, put ``{key: bytes}`` into it, return its name.

    The buckets are emptied and deleted after the test, so session servers stay small.
    """
    made: list[tuple[S3Server, str]] = []

    def make(server: S3Server, objects: Mapping[str, bytes], *, name: str | None = None) -> str:
        bucket = name or _unique_bucket(request.node.name)
        seed_bucket(server.client(), bucket, objects)
        made.append((server, bucket))
        return bucket

    yield make
    for server, bucket in made:
        try:
            empty_and_delete_bucket(server.client(), bucket)
        except (BotoCoreError, ClientError):
            pass  # cleanup only; a broken server has already failed the test that broke it


@pytest.fixture
def fault_proxy() -> Iterator[MakeProxy]:
    """Factory: start a :class:`FaultProxy` in front of a server; every proxy is closed after the test.

    Point clients at it with ``server.client(endpoint_url=proxy.endpoint_url, config=...)`` and
    child processes with ``server.child_env(endpoint_url=proxy.endpoint_url)``.
    """
    proxies: list[FaultProxy] = []

    def make(server: S3Server) -> FaultProxy:
        proxy = FaultProxy(server.endpoint_url).start()
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()


@pytest.fixture
def tls_front() -> Iterator[MakeFront]:
    """Factory: start a :class:`TlsFront` (HTTPS with its own private CA) in front of a server or a
    FaultProxy; every front is stopped after the test.

    Point clients at it with ``server.client(endpoint_url=front.endpoint_url, verify=front.ca_bundle)``
    and child processes with ``server.child_env(endpoint_url=front.endpoint_url)`` plus
    ``AWS_CA_BUNDLE=front.ca_bundle``.
    """
    _skip_if_unavailable(TlsFront.unavailable_reason())
    fronts: list[TlsFront] = []

    def make(upstream: S3Server | FaultProxy) -> TlsFront:
        front = TlsFront(upstream.endpoint_url).start()
        fronts.append(front)
        return front

    yield make
    for front in fronts:
        front.stop()


@pytest.fixture
def s3_jobs(sidecar, consumer, tmp_path) -> JobRunner:
    """Sidecar + consumer runs for this test (processes killed at teardown by conftest's registry)."""
    return JobRunner(sidecar, consumer, tmp_path)
