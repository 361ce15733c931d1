"""The HTTPS front of tests/tls_front.py: real TLS with its private CA, bytes relayed unchanged.

boto3 reads through it from moto and SeaweedFS (which checks every signature) when given the CA
bundle, and fails certificate verification without it. The sidecar streams an epoch through it
with AWS_CA_BUNDLE, small objects (the small-object loop, s3_small.py) and a larger one (the
plain path) alike.
"""

from __future__ import annotations

import os
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from botocore.config import Config
from botocore.exceptions import SSLError
from conftest import assert_nothing_written, error_line, wait_until
from s3_helpers import MIB, blob, prefix_keys, s3_channel, stream_of

pytestmark = pytest.mark.timeout(120)

OBJECTS = {
    **{f"data/{i:02d}.bin": blob(900 + i, 3000 * (i + 1)) for i in range(12)},
    "data/zz-large.bin": blob(950, 2 * MIB + 17),  # over the small-object loop's 1 MiB: the plain path
}
SMALL_MARK = "small-objects"
"""In the User-Agent of the GETs of the sidecar's small-object loop (s3_small.py, test_s3_small.py)."""
NO_RETRY = Config(retries={"mode": "standard", "total_max_attempts": 1}, connect_timeout=5, read_timeout=10)



def test_boto3_reads_exact_bytes_through_the_front_with_its_ca(s3_server, seeded_bucket, tls_front):
    """Listing and every GET arrive byte-exact over HTTPS, signatures included (SeaweedFS checks
    them), and the connection's life follows the upstream's: SeaweedFS keeps it alive, so
    sequential requests share a TLS connection."""
    bucket = seeded_bucket(s3_server, OBJECTS)
    front = tls_front(s3_server)
    assert front.endpoint_url.startswith("https://127.0.0.1:")
    client = s3_server.client(endpoint_url=front.endpoint_url, verify=front.ca_bundle, config=NO_RETRY)
    listed = client.list_objects_v2(Bucket=bucket)["Contents"]
    assert [o["Key"] for o in listed] == sorted(OBJECTS)
    for key, body in OBJECTS.items():
        assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == body, key
    client.put_object(Bucket=bucket, Key="up/loaded", Body=OBJECTS["data/zz-large.bin"])
    assert s3_server.client().get_object(Bucket=bucket, Key="up/loaded")["Body"].read() == OBJECTS["data/zz-large.bin"]
    requests = 1 + len(OBJECTS) + 1
    if s3_server.name == "seaweedfs":  # moto (werkzeug) closes every connection after its answer
        assert 1 <= front.connections < requests, front.connections
    else:
        assert front.connections == requests, front.connections
    assert front.handshake_failures == 0


def test_many_concurrent_connections(s3_server, seeded_bucket, tls_front):
    """Sixteen threads with their own connections GET at once; every body is exact."""
    bucket = seeded_bucket(s3_server, OBJECTS)
    front = tls_front(s3_server)
    client = s3_server.client(endpoint_url=front.endpoint_url, verify=front.ca_bundle,
                              config=NO_RETRY.merge(Config(max_pool_connections=16)))
    keys = sorted(OBJECTS) * 4
    with ThreadPoolExecutor(16) as pool:
        bodies = list(pool.map(lambda k: client.get_object(Bucket=bucket, Key=k)["Body"].read(), keys))
    assert bodies == [OBJECTS[k] for k in keys]
    assert front.connections > 1


def test_a_client_without_the_ca_fails_verification(moto_s3, tls_front):
    """boto3's default trust store does not know the private CA: an SSL error, no answer."""
    front = tls_front(moto_s3)
    client = moto_s3.client(endpoint_url=front.endpoint_url, config=NO_RETRY)
    with pytest.raises(SSLError, match="CERTIFICATE_VERIFY_FAILED"):
        client.list_buckets()
    wait_until(lambda: front.handshake_failures >= 1, 5, "the front counted the failed handshake")
    assert front.connections == 0


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_the_certificate_names_ip_and_localhost(moto_s3, tls_front, host):
    """Hostname checking passes for both subjectAltNames (ssl's own client, nothing else between)."""
    front = tls_front(moto_s3)
    context = ssl.create_default_context(cafile=front.ca_bundle)
    with socket.create_connection(("127.0.0.1", front.port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=host) as tls:
        tls.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert tls.recv(64).startswith(b"HTTP/1.1 200")
    wrong = ssl.create_default_context(cafile=front.ca_bundle)
    with socket.create_connection(("127.0.0.1", front.port), timeout=10) as raw, \
            pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        wrong.wrap_socket(raw, server_hostname="example.com")


def test_stop_is_quick_with_open_connections_and_cleans_up(moto_s3, tls_front):
    """An idle TLS connection and a TCP one that never shakes hands do not hold up stop()."""
    front = tls_front(moto_s3)
    context = ssl.create_default_context(cafile=front.ca_bundle)
    with socket.create_connection(("127.0.0.1", front.port), timeout=10) as silent, \
            socket.create_connection(("127.0.0.1", front.port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as idle:
        wait_until(lambda: front.threads == 2 and front.connections == 1, 5, "two connection threads")
        certificates = os.path.dirname(front.ca_bundle)
        assert os.path.isdir(certificates)
        started = time.monotonic()
        front.stop()
        assert time.monotonic() - started < 3
        assert front.threads == 0 and not os.path.exists(certificates)
        assert idle.recv(1) == b"" and silent.recv(1) == b""  # both closed by the front
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", front.port), timeout=2).close()


def test_the_sidecar_streams_an_epoch_over_https_with_aws_ca_bundle(moto_s3, seeded_bucket, fault_proxy, tls_front,
                                                                   s3_jobs):
    """AWS_CA_BUNDLE reaches both of the sidecar's TLS stacks: two epochs arrive byte-exact, and
    the FaultProxy behind the front shows every small object was one GET of the small-object loop
    answered 200 (a failed one would be repeated through botocore), the larger one botocore's."""
    bucket = seeded_bucket(moto_s3, OBJECTS)
    proxy = fault_proxy(moto_s3)
    front = tls_front(proxy)
    reads = s3_jobs.run(moto_s3, [s3_channel("train", f"s3://{bucket}/data/")], epochs=2,
                        endpoint_url=front.endpoint_url, env_extra={"AWS_CA_BUNDLE": front.ca_bundle})
    reads["train"].check(stream_of([OBJECTS[k] for k in prefix_keys(OBJECTS, "data/")], False), "train")
    assert front.connections >= 1 and front.handshake_failures == 0
    gets = [r for r in proxy.requests("GET") if r.path.startswith(f"/{bucket}/")]
    assert gets and all(r.status in (200, 206) for r in gets), [(r.path, r.status) for r in gets]
    by_loop = [r.path for r in gets if SMALL_MARK in r.headers.get("user-agent", "")]
    small = [f"/{bucket}/{k}" for k, v in OBJECTS.items() if len(v) <= MIB]
    assert sorted(by_loop) == sorted(small * 2), by_loop
    assert {r.path for r in gets if r.path not in small} == {f"/{bucket}/data/zz-large.bin"}


def test_the_sidecar_without_the_ca_bundle_fails_with_one_line(moto_s3, seeded_bucket, tls_front, s3_jobs):
    """No AWS_CA_BUNDLE: the listing fails certificate verification before anything is written;
    exit 2 and one stderr line that names the channel, the URI and the SSL failure."""
    bucket = seeded_bucket(moto_s3, OBJECTS)
    front = tls_front(moto_s3)
    proc, ml_root = s3_jobs.fail(moto_s3, [s3_channel("train", f"s3://{bucket}/data/")],
                                 endpoint_url=front.endpoint_url)
    line = error_line(proc.stderr)
    assert proc.poll() == 2, proc.stderr
    assert f"'train': s3://{bucket}/data/: SSL validation failed" in line, line
    assert "CERTIFICATE_VERIFY_FAILED" in line, line
    assert_nothing_written(ml_root)
    wait_until(lambda: front.handshake_failures >= 1, 5, "the front counted the failed handshake")
    assert front.connections == 0
