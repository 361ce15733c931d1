"""Large bodies spliced socket -> pipe -> FIFO (sources/s3_splice.py, issue 17), on moto and SeaweedFS.

A part longer than SAGEMAKER_PIPE_S3_READ_AHEAD_MB (1 MiB here, so that objects of a few MiB
take this path) from a plain-HTTP server goes through a pipe by splice: its bytes never pass
through Python. The FaultProxy logs every request; these GETs carry the `spliced` marker in their
User-Agent after ours. Every epoch is checked byte for byte against the source.
"""

from __future__ import annotations

import gzip
import os
import re
import time
from typing import Any

import pytest
from conftest import pattern
from s3_helpers import MIB, SERVERS, ModuleBuckets, blob, data_error_line, s3_channel, server_for, stream_of

pytestmark = pytest.mark.timeout(120)

SPLICE = {"SAGEMAKER_PIPE_S3_READ_AHEAD_MB": "1"}
OBJECTS = {
    "big/a.bin": blob(400, 3 * MIB + 17),
    "big/b.bin": blob(401, 5 * MIB),
    "big/c-small.bin": blob(402, 100_000),  # the small-object path, between two spliced ones
    "big/d.bin": blob(403, 2 * MIB + 1),
    "gz/a.gz": gzip.compress(blob(404, 3 * MIB), 1),  # random bytes: the gzip is over 1 MiB too
}
MARK = "spliced"


@pytest.fixture(scope="module")
def buckets():
    made = {name: ModuleBuckets(f"s3-splice-{name}", lambda bucket: OBJECTS) for name in SERVERS}
    yield made
    for m in made.values():
        m.cleanup()




def big_stream(record_io: bool = False) -> bytes:
    return stream_of([OBJECTS[k] for k in sorted(OBJECTS) if k.startswith("big/")], record_io)


def gets_of(proxy: Any, bucket: str, key: str) -> list[Any]:
    return [r for r in proxy.requests("GET") if r.path == f"/{bucket}/{key}"]


def spliced(record: Any) -> bool:
    agent = record.headers.get("user-agent", "")
    return agent.startswith("sagemaker-pipe/") and agent.endswith(f" {MARK}")


@pytest.mark.parametrize("server_name", ["moto", "seaweedfs"])
@pytest.mark.parametrize("record_io", [False, True])
def test_large_objects_are_spliced_exact_with_if_match(request, buckets, s3_jobs, fault_proxy, server_name,
                                                       record_io):
    server = server_for(request, server_name)
    bucket, _ = buckets[server_name].get(server)
    proxy = fault_proxy(server)
    reads = s3_jobs.run(server, [s3_channel("t", f"s3://{bucket}/big/", record_io=record_io)], epochs=3,
                        endpoint_url=proxy.endpoint_url, env_extra=SPLICE)
    reads["t"].check(big_stream(record_io), "t")
    etags = {o["Key"]: o["ETag"] for o in server.client().list_objects_v2(Bucket=bucket)["Contents"]}
    for key in ("big/a.bin", "big/b.bin", "big/d.bin"):
        gets = gets_of(proxy, bucket, key)
        assert len(gets) == 3 and all(spliced(r) and r.status == 200 for r in gets), \
            (key, [(r.status, r.headers.get("user-agent")) for r in gets])
        assert {r.headers.get("if-match") for r in gets} == {etags[key]}
    assert not any(spliced(r) for r in gets_of(proxy, bucket, "big/c-small.bin"))


def test_a_gzip_channel_reads_spliced_bytes_back_through_python(moto_s3, buckets, s3_jobs, fault_proxy):
    """gunzip needs the bytes in Python: they are read out of the pipe, still exact."""
    bucket, _ = buckets["moto"].get(moto_s3)
    proxy = fault_proxy(moto_s3)
    reads = s3_jobs.run(moto_s3, [s3_channel("z", f"s3://{bucket}/gz/", gzip=True)], epochs=2,
                        endpoint_url=proxy.endpoint_url, env_extra=SPLICE)
    reads["z"].check(gzip.decompress(OBJECTS["gz/a.gz"]), "z")
    gets = gets_of(proxy, bucket, "gz/a.gz")
    assert len(gets) == 2 and all(spliced(r) for r in gets), [r.headers.get("user-agent") for r in gets]


@pytest.mark.parametrize("server_name", ["moto", "seaweedfs"])
@pytest.mark.parametrize("fault", ["cut", "reset", "stall"])
def test_a_broken_spliced_body_resumes_from_the_exact_byte(request, buckets, s3_jobs, fault_proxy, server_name,
                                                           fault):
    """Bytes spliced into the pipe are passed on: the resume asks for exactly the rest, still
    pinned to the listed ETag, and the epoch is exact. A stall is cut by the read timeout (2 s)."""
    server = server_for(request, server_name)
    bucket, _ = buckets[server_name].get(server)
    proxy = fault_proxy(server)
    key, at = "big/b.bin", 1_234_567
    regex = "^" + re.escape(f"/{bucket}/{key}") + "$"
    rule = {"cut": lambda: proxy.cut_after(at, method="GET", path_regex=regex),
            "reset": lambda: proxy.reset_after(at, method="GET", path_regex=regex),
            "stall": lambda: proxy.stall(40, after_bytes=at, method="GET", path_regex=regex)}[fault]()
    job = s3_jobs.start(server, [s3_channel("t", f"s3://{bucket}/big/")], epochs=1, endpoint_url=proxy.endpoint_url,
                        env_extra={**SPLICE, "SAGEMAKER_PIPE_S3_READ_TIMEOUT": "2"})
    job.finish(timeout=40)["t"].check(big_stream(), "t")
    assert rule.hits == 1
    gets = gets_of(proxy, bucket, key)
    assert gets[0].fault == fault and spliced(gets[0]), [(r.fault, r.range) for r in gets]
    assert gets[0].body_bytes == at
    # a FIN or a stall: every byte sent arrived; a reset may drop the last ones in flight
    start = int(re.fullmatch(rf"bytes=(\d+)-{len(OBJECTS[key]) - 1}", gets[1].range or "")[1])
    assert start == at if fault != "reset" else 0 < start <= at, (gets[1].range, at)
    assert spliced(gets[1]) and gets[1].headers.get("if-match") == gets[0].headers.get("if-match") is not None
    assert f"{key}: body broke at byte {start}" in job.proc.stderr


def test_error_answers_to_a_spliced_get_go_through_botocore(moto_s3, buckets, s3_jobs, fault_proxy):
    """A 503 to a spliced GET is repeated by get_object, whose retries get the 200; its bytes go
    into the same pipe."""
    bucket, _ = buckets["moto"].get(moto_s3)
    proxy = fault_proxy(moto_s3)
    key = "big/a.bin"
    rule = proxy.status(503, times=2, method="GET", path_regex="^" + re.escape(f"/{bucket}/{key}") + "$")
    reads = s3_jobs.run(moto_s3, [s3_channel("t", f"s3://{bucket}/big/")], epochs=1,
                        endpoint_url=proxy.endpoint_url, env_extra=SPLICE)
    reads["t"].check(big_stream(), "t")
    assert rule.hits == 2
    agents = [(r.status, r.headers.get("user-agent", "")) for r in gets_of(proxy, bucket, key)]
    assert [s for s, _ in agents] == [503, 503, 200], agents
    assert agents[0][1].endswith(MARK) and agents[1][1].startswith("Boto3/"), agents


def test_a_spliced_body_broken_every_time_stops_the_job_naming_it(moto_s3, buckets, s3_jobs, fault_proxy):
    bucket, _ = buckets["moto"].get(moto_s3)
    proxy = fault_proxy(moto_s3)
    key = "big/d.bin"
    proxy.cut_after(100_000, times=None, method="GET", path_regex="^" + re.escape(f"/{bucket}/{key}") + "$")
    job = s3_jobs.start(moto_s3, [s3_channel("t", f"s3://{bucket}/big/")], epochs=1,
                        endpoint_url=proxy.endpoint_url, env_extra=SPLICE, consumer_timeout=60)
    job.proc.wait(60)
    assert job.proc.poll() == 1
    line = data_error_line(job.proc)
    assert f"s3://{bucket}/{key}" in line and "after 5 resumes" in line, line


def test_readers_that_leave_early_leave_no_pipe_behind(seaweed_s3, buckets, s3_jobs, consumer, tmp_path):
    """Each of five epochs is left after its first 100 KiB, in the middle of a spliced object:
    the sixth is exact, and the sidecar holds no more descriptors than after the first."""
    bucket, _ = buckets["seaweedfs"].get(seaweed_s3)
    job = s3_jobs.start(seaweed_s3, [s3_channel("t", f"s3://{bucket}/big/")], epochs=6, read=[], env_extra=SPLICE)
    fds: list[int] = []
    for epoch in range(5):
        (result,) = consumer(pattern(job.ml_root, "t"), epochs=1, start=epoch, modes="partial:102400").results(30)
        assert result["bytes"] == 102400, result
        # the fetches of a left epoch close their sockets and pipes within a poll step or two
        deadline = time.monotonic() + 5
        while True:
            count = len(os.listdir(f"/proc/{job.proc.pid}/fd"))
            if not fds or count <= fds[0] + 2 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        fds.append(count)
    out = tmp_path / "last"
    consumer(pattern(job.ml_root, "t"), epochs=1, start=5, out=out).results(30)
    assert (out / "epoch_5.bin").read_bytes() == big_stream()
    assert job.proc.wait(30) == 0, job.proc.stderr
    assert max(fds[1:]) <= fds[0] + 2, fds  # (an epoch's pipe may still be closing as the next opens)


def test_https_bodies_are_never_spliced(seaweed_s3, buckets, s3_jobs, fault_proxy, tls_front):
    """TLS bodies cannot be spliced: over HTTPS the same parts stream through Python, exact; the
    small object still goes through the one-thread loop, over TLS with AWS_CA_BUNDLE."""
    bucket, _ = buckets["seaweedfs"].get(seaweed_s3)
    proxy = fault_proxy(seaweed_s3)
    front = tls_front(proxy)
    reads = s3_jobs.run(seaweed_s3, [s3_channel("t", f"s3://{bucket}/big/")], epochs=2,
                        endpoint_url=front.endpoint_url, env_extra={**SPLICE, "AWS_CA_BUNDLE": front.ca_bundle})
    reads["t"].check(big_stream(), "t")
    gets = [r for r in proxy.requests("GET") if r.path.startswith(f"/{bucket}/big/")]
    assert gets and not any(spliced(r) for r in gets), [r.headers.get("user-agent") for r in gets]
    small = gets_of(proxy, bucket, "big/c-small.bin")
    assert len(small) == 2 and all("small-objects" in r.headers.get("user-agent", "") for r in small)
    assert front.handshake_failures == 0
