"""Self-tests of the S3 test infrastructure: the loopback servers, the fault proxy, the fixtures.

They pin down what the rest of the suite relies on, including the places where SeaweedFS is not
AWS S3 (marked xfail(strict=True), so a SeaweedFS that fixes them shows up as a failure here).
"""

from __future__ import annotations

import glob
import hashlib
import os
import random
import subprocess
import sys
import time
from typing import Any

import pytest
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError, IncompleteReadError, ReadTimeoutError, ResponseStreamingError
from fault_proxy import FaultProxy
from s3_fixtures import MakeProxy, SeedBucket
from s3_servers import MotoServer, S3Server, SeaweedServer

pytestmark = pytest.mark.timeout(60)

# total_max_attempts counts the first try; Config's "max_attempts" would count only the retries.
NO_RETRY = Config(retries={"mode": "standard", "total_max_attempts": 1}, connect_timeout=5, read_timeout=10)
MIB = 1024 * 1024


def _blob(size: int, seed: int = 0) -> bytes:
    """Deterministic pseudo-random bytes: the same object on every run, so failures reproduce."""
    return random.Random(seed).randbytes(size)


def _read_until_error(body: Any, amt: int = 4096) -> tuple[bytes, BaseException | None]:
    """Read a streaming body piece by piece; return what arrived and the error that stopped it."""
    got = bytearray()
    try:
        while chunk := body.read(amt):
            got += chunk
    except Exception as exc:  # the error type is what the caller asserts on
        return bytes(got), exc
    return bytes(got), None


def _truncated(error: BaseException | None) -> bool:
    """A body cut short, as botocore reports it: urllib3's IncompleteRead wrapped in ResponseStreamingError
    before botocore 1.44, its own IncompleteReadError (a length check after the read) since."""
    if isinstance(error, IncompleteReadError):
        return True
    return isinstance(error, ResponseStreamingError) and "IncompleteRead" in str(error)


def _list_keys(client: Any, bucket: str, **kwargs: Any) -> list[str]:
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, **kwargs):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


# --- servers ------------------------------------------------------------------------------

def test_round_trip_with_hashes(s3_server: S3Server, seeded_bucket: SeedBucket) -> None:
    # 5 MiB + 3 spans more than one SeaweedFS chunk (its filer splits at 4 MiB). "empty" before
    # "one" is the sequence that hits boto/botocore#3755 unless S3Server.client() works around it.
    objects = {"empty": b"", "one": b"x", "text/a.txt": b"hello\n", "big.bin": _blob(5 * MIB + 3)}
    bucket = seeded_bucket(s3_server, objects)
    client = s3_server.client()
    for key, data in objects.items():
        got = client.get_object(Bucket=bucket, Key=key)
        body = got["Body"].read()
        assert got["ContentLength"] == len(data)
        assert hashlib.sha256(body).hexdigest() == hashlib.sha256(data).hexdigest(), key
        # Both servers give single-part uploads the MD5 ETag that S3 gives.
        assert got["ETag"] == f'"{hashlib.md5(data).hexdigest()}"', key


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=0-0", 0, 1),
        ("bytes=100-199", 100, 200),
        ("bytes=4194300-4194310", 4194300, 4194311),  # across SeaweedFS's 4 MiB chunk boundary
        ("bytes=5000000-", 5000000, None),  # open-ended, the form a resume uses
        ("bytes=-10", -10, None),  # suffix
    ],
)
def test_ranged_get(
    s3_server: S3Server, seeded_bucket: SeedBucket, header: str, start: int, end: int | None
) -> None:
    data = _blob(5 * MIB + 3, seed=1)
    bucket = seeded_bucket(s3_server, {"obj": data})
    got = s3_server.client().get_object(Bucket=bucket, Key="obj", Range=header)
    expected = data[start:end]
    first = start % len(data)
    assert got["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert got["ContentRange"] == f"bytes {first}-{first + len(expected) - 1}/{len(data)}"
    assert got["Body"].read() == expected


def test_range_past_the_end_is_refused(s3_server: S3Server, seeded_bucket: SeedBucket) -> None:
    bucket = seeded_bucket(s3_server, {"obj": b"0123456789"})
    with pytest.raises(ClientError) as err:
        s3_server.client().get_object(Bucket=bucket, Key="obj", Range="bytes=10-")
    assert err.value.response["Error"]["Code"] == "InvalidRange"


def test_listing_order_prefix_and_folder_markers(s3_server: S3Server, seeded_bucket: SeedBucket) -> None:
    # Keys whose byte order agrees with SeaweedFS's directory-wise order (see the xfail below).
    keys = ["z", "train/x", "training.csv", "A", "a0", "a/10", "a/2", "dir/", "dir/f", "é", "b"]
    bucket = seeded_bucket(s3_server, {k: b"" if k.endswith("/") else k.encode() for k in keys})
    client = s3_server.client()
    by_bytes = sorted(keys, key=lambda k: k.encode())
    assert _list_keys(client, bucket) == by_bytes
    assert _list_keys(client, bucket, PaginationConfig={"PageSize": 2}) == by_bytes
    assert _list_keys(client, bucket, Prefix="train") == ["train/x", "training.csv"]
    sizes = {o["Key"]: o["Size"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert sizes["dir/"] == 0


def _seaweed_deviates(request: pytest.FixtureRequest, server: S3Server, reason: str) -> None:
    if isinstance(server, SeaweedServer):
        request.applymarker(pytest.mark.xfail(strict=True, reason=f"SeaweedFS quirk: {reason}"))


def test_listing_is_in_byte_order_across_slashes(
    request: pytest.FixtureRequest, s3_server: S3Server, seeded_bucket: SeedBucket
) -> None:
    _seaweed_deviates(request, s3_server, "lists a directory's keys before siblings with a lower "
                      "byte after the shared prefix ('a/b' before 'a-c')")
    keys = ["a/b", "a-c", "a0", "a b"]
    bucket = seeded_bucket(s3_server, {k: b"1" for k in keys})
    assert _list_keys(s3_server.client(), bucket) == ["a b", "a-c", "a/b", "a0"]


def test_keys_are_kept_verbatim(
    request: pytest.FixtureRequest, s3_server: S3Server, seeded_bucket: SeedBucket
) -> None:
    _seaweed_deviates(request, s3_server, "collapses '//' in keys ('a//x' is stored as 'a/x')")
    bucket = seeded_bucket(s3_server, {"a//x": b"1"})
    assert _list_keys(s3_server.client(), bucket) == ["a//x"]


def test_seaweed_checks_signatures(seaweed_s3: S3Server, seeded_bucket: SeedBucket) -> None:
    bucket = seeded_bucket(seaweed_s3, {"k": b"v"})
    assert seaweed_s3.client().get_object(Bucket=bucket, Key="k")["Body"].read() == b"v"
    wrong = seaweed_s3.client(secret_key="not-the-secret")
    with pytest.raises(ClientError) as err:
        wrong.get_object(Bucket=bucket, Key="k")
    assert err.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    anonymous = seaweed_s3.client(config=Config(signature_version=UNSIGNED))
    with pytest.raises(ClientError) as err:
        anonymous.get_object(Bucket=bucket, Key="k")
    assert err.value.response["Error"]["Code"] == "AccessDenied"


def test_child_env_reaches_server_and_hides_real_credentials(
    s3_server: S3Server, seeded_bucket: SeedBucket, tmp_path: Any
) -> None:
    bucket = seeded_bucket(s3_server, {"k": b"from-child"})
    home_config = tmp_path / "config"
    home_config.write_text("[profile real]\nregion = eu-west-1\n")
    base = dict(os.environ, AWS_PROFILE="real", AWS_CONFIG_FILE=str(home_config),
                AWS_SESSION_TOKEN="leaked", AWS_ENDPOINT_URL="http://192.0.2.1:9")
    env = s3_server.child_env(base=base)
    assert "AWS_PROFILE" not in env and "AWS_SESSION_TOKEN" not in env and "AWS_ENDPOINT_URL" not in env
    assert env["AWS_EC2_METADATA_DISABLED"] == "true"
    script = (
        "import boto3, sys\n"
        "c = boto3.client('s3')\n"  # everything comes from the environment
        f"sys.stdout.write(c.get_object(Bucket={bucket!r}, Key='k')['Body'].read().decode())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "from-child"


def test_clients_ignore_the_developers_aws_settings(
    moto_s3: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    config = tmp_path / "config"
    config.write_text("[default]\nretry_mode = legacy\ns3 =\n  addressing_style = virtual\n")
    monkeypatch.setenv("AWS_PROFILE", "does-not-exist")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "9")
    client = moto_s3.client()
    assert client.meta.config.retries == {"mode": "standard"}
    assert client.meta.config.s3 == {"addressing_style": "path"}
    client.list_buckets()


def _listening_sockets(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket ``pid`` listens on, from /proc (Linux)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table, encoding="ascii") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                    continue
                hex_addr, hex_port = fields[1].split(":")
                if len(hex_addr) == 8:
                    addr = ".".join(str(b) for b in reversed(bytes.fromhex(hex_addr)))
                else:
                    addr = hex_addr  # any IPv6 listener is a failure below
                found.add((addr, int(hex_port, 16)))
    return found


@pytest.mark.parametrize("cls", [MotoServer, SeaweedServer], ids=["moto", "seaweedfs"])
def test_server_binds_loopback_only_and_cleans_up(cls: type[S3Server]) -> None:
    reason = cls.unavailable_reason()
    if reason:
        pytest.skip(reason)
    server = cls().start()
    try:
        assert server.process is not None
        pid, tmpdir = server.process.pid, server.tmpdir
        expected = {server.port}
        if isinstance(server, SeaweedServer):
            expected = set(server.ports.values())
            expected |= {p + SeaweedServer.GRPC_OFFSET for p in expected}
        deadline = time.monotonic() + 10  # SeaweedFS's admin listens ~0.3 s after S3 is ready
        while True:
            sockets = _listening_sockets(pid)
            if {port for _, port in sockets} >= expected or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert {addr for addr, _ in sockets} == {"127.0.0.1"}
        assert {port for _, port in sockets} == expected
    finally:
        server.stop()
    assert server.process is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped
    assert not os.path.exists(tmpdir)
    assert not [p for _, port in sockets for p in glob.glob(f"/tmp/seaweedfs-*-{port}.sock")]


# --- fault proxy --------------------------------------------------------------------------

@pytest.fixture
def proxied(
    s3_server: S3Server, seeded_bucket: SeedBucket, fault_proxy: MakeProxy
) -> tuple[S3Server, FaultProxy, str, bytes]:
    """A seeded bucket on each server, with a fault proxy in front; the object is 'obj'."""
    data = _blob(2 * MIB + 5, seed=2)
    return s3_server, fault_proxy(s3_server), seeded_bucket(s3_server, {"obj": data}), data


def test_proxy_relays_signed_requests_and_keeps_connections(proxied: Any) -> None:
    server, proxy, bucket, data = proxied
    client = server.client(endpoint_url=proxy.endpoint_url, config=NO_RETRY)
    client.put_object(Bucket=bucket, Key="up", Body=data)  # > 1 MiB: botocore sends Expect: 100-continue
    for _ in range(3):
        assert client.get_object(Bucket=bucket, Key="up")["Body"].read() == data
    assert client.head_object(Bucket=bucket, Key="up")["ContentLength"] == len(data)
    # SeaweedFS keeps connections alive; moto's werkzeug server closes each one after a response.
    assert proxy.connections == (1 if isinstance(server, SeaweedServer) else len(proxy.records))
    put, *gets, head = proxy.records
    assert (put.method, put.path, put.status) == ("PUT", f"/{bucket}/up", 200)
    assert put.headers.get("expect") == "100-continue"
    assert [(g.method, g.status, g.body_bytes) for g in gets] == [("GET", 200, len(data))] * 3
    assert (head.method, head.status, head.body_bytes) == ("HEAD", 200, 0)
    assert all(r.fault is None for r in proxy.records)


def test_cut_body_raises_and_resume_sends_exact_range(proxied: Any) -> None:
    server, proxy, bucket, data = proxied
    client = server.client(endpoint_url=proxy.endpoint_url, config=NO_RETRY)
    rule = proxy.cut_after(100_000, method="GET", path=f"/{bucket}/obj")
    got, error = _read_until_error(client.get_object(Bucket=bucket, Key="obj")["Body"])
    assert _truncated(error), error
    assert len(got) == 100_000 and got == data[:100_000]
    rest = client.get_object(Bucket=bucket, Key="obj", Range=f"bytes={len(got)}-")["Body"].read()
    assert got + rest == data
    cut, resume = proxy.requests("GET", f"/{bucket}/obj")
    assert (cut.fault, cut.status, cut.body_bytes, cut.range) == ("cut", 200, 100_000, None)
    assert (resume.fault, resume.status, resume.range) == (None, 206, f"bytes={cut.body_bytes}-")
    assert rule.hits == 1 and rule.remaining == 0


def test_reset_body_raises_connection_reset(proxied: Any) -> None:
    server, proxy, bucket, data = proxied
    client = server.client(endpoint_url=proxy.endpoint_url, config=NO_RETRY)
    proxy.reset_after(10_000)
    got, error = _read_until_error(client.get_object(Bucket=bucket, Key="obj")["Body"])
    assert isinstance(error, ResponseStreamingError), error
    assert "reset" in str(error).lower()
    assert len(got) <= 10_000
    assert proxy.records[-1].body_bytes == 10_000
    # The next request gets a fresh connection and the whole object.
    assert client.get_object(Bucket=bucket, Key="obj")["Body"].read() == data


def test_stall_then_continue_delivers_everything_late(proxied: Any) -> None:
    server, proxy, bucket, data = proxied
    client = server.client(endpoint_url=proxy.endpoint_url, config=NO_RETRY)
    proxy.stall(0.8, after_bytes=1000)
    started = time.monotonic()
    assert client.get_object(Bucket=bucket, Key="obj")["Body"].read() == data
    assert time.monotonic() - started >= 0.75


def test_stall_then_close_truncates(proxied: Any) -> None:
    server, proxy, bucket, data = proxied
    client = server.client(endpoint_url=proxy.endpoint_url, config=NO_RETRY)
    proxy.stall(0.3, after_bytes=1000, then="close")
    got, error = _read_until_error(client.get_object(Bucket=bucket, Key="obj")["Body"])
    assert _truncated(error) and got == data[:1000], error


def test_stall_longer_than_read_timeout_times_out(proxied: Any) -> None:
    server, proxy, bucket, _ = proxied
    impatient = server.client(endpoint_url=proxy.endpoint_url,
                              config=NO_RETRY.merge(Config(read_timeout=0.5)))
    proxy.stall(10, after_bytes=1000)
    started = time.monotonic()
    _, error = _read_until_error(impatient.get_object(Bucket=bucket, Key="obj")["Body"])
    assert isinstance(error, ReadTimeoutError), error
    assert time.monotonic() - started < 5


def test_503_is_retried_by_standard_mode_then_succeeds(proxied: Any) -> None:
    server, proxy, bucket, data = proxied
    client = server.client(endpoint_url=proxy.endpoint_url,
                           config=Config(retries={"mode": "standard", "total_max_attempts": 3}))
    rule = proxy.status(503, times=2, method="GET", path=f"/{bucket}/obj")
    assert client.get_object(Bucket=bucket, Key="obj")["Body"].read() == data
    assert [r.status for r in proxy.requests("GET")] == [503, 503, 200]
    assert rule.hits == 2


def test_status_error_body_is_s3_xml_and_retries_run_out(proxied: Any) -> None:
    server, proxy, bucket, _ = proxied
    client = server.client(endpoint_url=proxy.endpoint_url,
                           config=Config(retries={"mode": "standard", "total_max_attempts": 2}))
    proxy.status(500, times=None, path_regex=r"/obj$")
    with pytest.raises(ClientError) as err:
        client.get_object(Bucket=bucket, Key="obj")
    assert err.value.response["Error"]["Code"] == "InternalError"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    assert len(proxy.requests("GET")) == 2


def test_rule_matches_query_only(proxied: Any) -> None:
    server, proxy, bucket, data = proxied
    client = server.client(endpoint_url=proxy.endpoint_url, config=NO_RETRY)
    proxy.status(503, query="list-type=2")
    assert client.get_object(Bucket=bucket, Key="obj")["Body"].read() == data
    with pytest.raises(ClientError) as err:
        client.list_objects_v2(Bucket=bucket)
    assert err.value.response["Error"]["Code"] == "SlowDown"
    assert [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]] == ["obj"]
    assert [(r.method, r.fault) for r in proxy.records] == [("GET", None), ("GET", "status"), ("GET", None)]


def test_status_on_put_with_expect_continue(proxied: Any) -> None:
    server, proxy, bucket, data = proxied
    client = server.client(endpoint_url=proxy.endpoint_url,
                           config=Config(retries={"mode": "standard", "total_max_attempts": 2}))
    proxy.status(503, method="PUT")
    client.put_object(Bucket=bucket, Key="again", Body=data)
    assert [r.status for r in proxy.requests("PUT")] == [503, 200]
    assert server.client().get_object(Bucket=bucket, Key="again")["Body"].read() == data


def test_proxy_close_is_prompt_with_a_stalled_connection(
    s3_server: S3Server, seeded_bucket: SeedBucket
) -> None:
    bucket = seeded_bucket(s3_server, {"obj": _blob(MIB)})
    proxy = FaultProxy(s3_server.endpoint_url).start()
    client = s3_server.client(endpoint_url=proxy.endpoint_url, config=NO_RETRY)
    proxy.stall(30, after_bytes=10)
    body = client.get_object(Bucket=bucket, Key="obj")["Body"]
    started = time.monotonic()
    proxy.close()
    assert time.monotonic() - started < 3
    _, error = _read_until_error(body)
    assert _truncated(error), error
