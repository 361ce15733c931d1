"""S3 channels under faults, and the streaming behaviour behind them (issue 3).

A FaultProxy (tests/fault_proxy.py) sits between the sidecar and a real S3 server and answers
5xx, cuts or resets a body mid-way, or stalls it; its request log shows what the sidecar asked
for (Range headers included). The rules:

* 503/500 answers are retried and the data is exact;
* a body broken mid-way is resumed with a ``Range: bytes=N-`` GET, N the bytes already received,
  and the epoch is exact; so is a body stalled for longer than the read timeout
  (SAGEMAKER_PIPE_S3_READ_TIMEOUT);
* once retries are spent the sidecar exits 1 with one line naming the object: never a silently
  short (or silently wrong) epoch;
* listing-time failures (no bucket, bad signature, nothing under the prefix, listing 500s, no
  credentials) exit 2 with one ``sagemaker-pipe: error:`` line naming the channel and the URI,
  before anything is written;
* the secret key never appears on stderr, even with -d;
* an object's first bytes reach the FIFO before its download completes, and objects are fetched
  ahead in parallel with bounded memory.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import time
import uuid
from typing import Any

import pytest
from conftest import assert_nothing_written, error_line, pattern, sha, wait_until
from s3_helpers import (
    EPOCHS,
    MIB,
    ModuleBuckets,
    blob,
    data_error_line,
    gz,
    put_objects,
    s3_channel,
    s3_env,
    server_for,
    stream_of,
)
from s3_servers import empty_and_delete_bucket, free_ports

pytestmark = pytest.mark.timeout(90)



OBJECTS = {
    "mid/a.csv": b"a,1\na,2\n",
    "mid/b.bin": blob(11, 3 * MIB // 2 + 1),  # the object the faults hit
    "mid/c.csv": b"c,3\n" * 1000,
    "gzmid/a.gz": gz(b"first\n" * 10),
    "gzmid/b.gz": gz(blob(12, 3 * MIB // 2), level=1),  # random data: the gzip is ~1.5 MiB too
    "gzmid/c.gz": gz(b"last\n" * 10) + gz(b"member two\n"),
    "large/00.bin": blob(13, 6 * MIB + 7),
    "large/01.bin": b"after the large one\n",
    "parts/0.bin": b"before\n",
    "parts/1.bin": blob(14, 17 * MIB + 9),  # large enough to be fetched in ranged parts, if at all
    **{f"many/{i:02d}.bin": blob(100 + i, 100_000 + i) for i in range(12)},
}


@pytest.fixture(scope="module")
def buckets():
    made = ModuleBuckets("s3-faults", lambda bucket: OBJECTS)
    yield made
    made.cleanup()



def payloads(prefix: str, gunzip: bool = False) -> list[bytes]:
    keys = sorted((k for k in OBJECTS if k.startswith(prefix)), key=lambda k: k.encode())
    return [gzip.decompress(OBJECTS[k]) if gunzip else OBJECTS[k] for k in keys]


def key_regex(bucket: str, key: str) -> str:
    return "^" + re.escape(f"/{bucket}/{key}") + "$"


def gets_of(proxy: Any, bucket: str, key: str) -> list[Any]:
    return [r for r in proxy.requests("GET") if r.path == f"/{bucket}/{key}"]


_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


def range_start(record: Any) -> int:
    """Where a GET started: 0 without a Range header, else the first byte of ``bytes=N-[M]``."""
    if record.range is None:
        return 0
    m = _RANGE.match(record.range)
    assert m, f"unexpected Range header {record.range!r}"
    return int(m.group(1))


def assert_resumed_exactly(proxy: Any, bucket: str, key: str, size: int, fault: str) -> None:
    """The faulted GET of ``key`` is followed by a GET whose Range starts at exactly the byte the
    faulted body had reached (for a FIN-closed body every byte sent was received), open-ended or
    ending at the object's (or the fetched part's) last byte."""
    gets = gets_of(proxy, bucket, key)
    faulted = [i for i, r in enumerate(gets) if r.fault == fault]
    assert faulted, f"the {fault} rule never hit {key}: {[(r.range, r.fault) for r in gets]}"
    i = faulted[0]
    broken = gets[i]
    begin, reached = range_start(broken), range_start(broken) + broken.body_bytes
    # other GETs of the same object (its other parts) may be interleaved: the resume is the first
    # later GET that starts inside the broken one's span
    later = [r for r in gets[i + 1:] if begin <= range_start(r) <= reached]
    assert later, f"no GET of {key} resumed the {fault}: {[(r.range, r.fault) for r in gets]}"
    resume = later[0]
    start = range_start(resume)
    if fault == "cut":  # a FIN-closed body: every byte the proxy sent was received
        assert resume.range is not None, f"{key} was fetched again from the start, not resumed"
        assert start == reached, f"resumed with {resume.range!r}, but {reached} bytes had been received"
    else:  # an RST may discard bytes in flight; a timed-out read may drop what it had buffered
        assert start <= reached, f"resumed with {resume.range!r}, past the {reached} bytes sent"
    end = _RANGE.match(resume.range).group(2) if resume.range else ""
    assert end == "" or int(end) < size, resume.range
    if end and broken.range and _RANGE.match(broken.range).group(2):
        assert end == _RANGE.match(broken.range).group(2), (broken.range, resume.range)
    assert resume.status == (206 if resume.range else 200), resume.status


# --------------------------------------------------------------------------------------------
# retried answers
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("code", [503, 500])
def test_5xx_on_get_and_listing_are_retried(moto_s3, buckets, s3_jobs, fault_proxy, code):
    bucket, _ = buckets.get(moto_s3)
    proxy = fault_proxy(moto_s3)
    get_rule = proxy.status(code, times=2, method="GET", path_regex=key_regex(bucket, "mid/b.bin"))
    list_rule = proxy.status(code, times=2, method="GET", query="list-type=2")
    reads = s3_jobs.run(moto_s3, [s3_channel("train", f"s3://{bucket}/mid/", record_io=True)],
                        endpoint_url=proxy.endpoint_url)
    reads["train"].check(stream_of(payloads("mid/"), True), "train")
    assert get_rule.hits == 2 and list_rule.hits == 2
    statuses = [r.status for r in gets_of(proxy, bucket, "mid/b.bin")]
    assert statuses[:3] == [code, code, statuses[2]] and statuses[2] in (200, 206), statuses


def test_a_refused_signed_get_hands_the_bucket_to_botocore(moto_s3, buckets, s3_jobs, fault_proxy):
    """Object bodies go out as plain signed GETs (sources/s3_get.py). A 403 to one of them (a bucket
    in another region, or a signing scheme the fast path does not know) is repeated through
    get_object, and the bucket's later objects go through get_object from then on."""
    bucket, _ = buckets.get(moto_s3)
    proxy = fault_proxy(moto_s3)
    rule = proxy.status(403, times=1, method="GET", path_regex=key_regex(bucket, "mid/a.csv"))
    reads = s3_jobs.run(moto_s3, [s3_channel("train", f"s3://{bucket}/mid/")], endpoint_url=proxy.endpoint_url)
    reads["train"].check(stream_of(payloads("mid/"), False), "train")
    assert rule.hits == 1
    agents = [(r.status, r.headers.get("user-agent", "")) for r in gets_of(proxy, bucket, "mid/a.csv")]
    assert agents[0][0] == 403 and agents[0][1].startswith("sagemaker-pipe/"), agents
    assert agents[1][0] == 200 and agents[1][1].startswith("Boto3/"), agents
    fast = [r for r in proxy.requests("GET") if "list-type" not in r.query
            and r.headers.get("user-agent", "").startswith("sagemaker-pipe/")]
    assert len(fast) <= len(payloads("mid/")), "the fast path was used again after the 403"


# --------------------------------------------------------------------------------------------
# broken bodies: resumed from the exact byte
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("server_name", ["moto", "seaweedfs"])
@pytest.mark.parametrize("fault", ["cut", "reset"])
def test_broken_body_is_resumed_with_a_range(request, buckets, s3_jobs, fault_proxy, server_name, fault):
    server = server_for(request, server_name)
    bucket, _ = buckets.get(server)
    proxy = fault_proxy(server)
    add = proxy.cut_after if fault == "cut" else proxy.reset_after
    rule = add(300_001, method="GET", path_regex=key_regex(bucket, "mid/b.bin"))
    reads = s3_jobs.run(server, [s3_channel("train", f"s3://{bucket}/mid/")], endpoint_url=proxy.endpoint_url)
    reads["train"].check(stream_of(payloads("mid/"), False), "train")
    assert rule.hits == 1
    assert_resumed_exactly(proxy, bucket, "mid/b.bin", len(OBJECTS["mid/b.bin"]), fault)


def test_cut_gzip_body_resumes_inside_the_gunzip_stream(moto_s3, buckets, s3_jobs, fault_proxy):
    bucket, _ = buckets.get(moto_s3)
    proxy = fault_proxy(moto_s3)
    rule = proxy.cut_after(777_777, method="GET", path_regex=key_regex(bucket, "gzmid/b.gz"))
    reads = s3_jobs.run(moto_s3, [s3_channel("z", f"s3://{bucket}/gzmid/", gzip=True, record_io=True)],
                        endpoint_url=proxy.endpoint_url)
    reads["z"].check(stream_of(payloads("gzmid/", gunzip=True), True), "z")
    assert rule.hits == 1
    assert_resumed_exactly(proxy, bucket, "gzmid/b.gz", len(OBJECTS["gzmid/b.gz"]), "cut")


def test_several_cuts_in_one_object(moto_s3, buckets, s3_jobs, fault_proxy):
    """Three breaks in a row on the same object (each resume cut again): still exact."""
    bucket, _ = buckets.get(moto_s3)
    proxy = fault_proxy(moto_s3)
    rule = proxy.cut_after(200_000, times=3, method="GET", path_regex=key_regex(bucket, "mid/b.bin"))
    reads = s3_jobs.run(moto_s3, [s3_channel("train", f"s3://{bucket}/mid/", record_io=True)],
                        endpoint_url=proxy.endpoint_url)
    reads["train"].check(stream_of(payloads("mid/"), True), "train")
    assert rule.hits == 3
    gets = gets_of(proxy, bucket, "mid/b.bin")
    starts = [range_start(r) for r in gets[:4]]
    assert starts == [starts[0], starts[0] + 200_000, starts[0] + 400_000, starts[0] + 600_000], \
        [(r.range, r.body_bytes, r.fault) for r in gets]


def test_cuts_in_a_large_object(moto_s3, buckets, s3_jobs, fault_proxy):
    """A 17 MiB object (which a downloader may fetch as several ranged GETs) has its first three
    GETs cut 600 000 bytes into their bodies: each is resumed at exactly the byte it reached,
    and the epochs are exact."""
    bucket, _ = buckets.get(moto_s3)
    proxy = fault_proxy(moto_s3)
    key = "parts/1.bin"
    rule = proxy.cut_after(600_000, times=3, method="GET", path_regex=key_regex(bucket, key))
    reads = s3_jobs.run(moto_s3, [s3_channel("p", f"s3://{bucket}/parts/", record_io=True)],
                        endpoint_url=proxy.endpoint_url)
    reads["p"].check(stream_of(payloads("parts/"), True), "p")
    assert rule.hits == 3
    gets = gets_of(proxy, bucket, key)
    for i, broken in enumerate(gets):
        if broken.fault != "cut":
            continue
        reached = range_start(broken) + broken.body_bytes
        assert broken.body_bytes == 600_000
        assert any(r.range and range_start(r) == reached for r in gets[i + 1:]), \
            f"the cut at byte {reached} was not resumed there: {[(r.range, r.fault) for r in gets]}"


@pytest.mark.parametrize("server_name", ["moto", "seaweedfs"])
def test_stall_longer_than_read_timeout_recovers(request, buckets, s3_jobs, fault_proxy, server_name):
    server = server_for(request, server_name)
    bucket, _ = buckets.get(server)
    proxy = fault_proxy(server)
    rule = proxy.stall(40, after_bytes=250_000, method="GET", path_regex=key_regex(bucket, "mid/b.bin"))
    started = time.monotonic()
    reads = s3_jobs.run(server, [s3_channel("train", f"s3://{bucket}/mid/", record_io=True)],
                        endpoint_url=proxy.endpoint_url, env_extra={"SAGEMAKER_PIPE_S3_READ_TIMEOUT": "2"},
                        timeout=35)
    elapsed = time.monotonic() - started
    reads["train"].check(stream_of(payloads("mid/"), True), "train")
    assert rule.hits == 1
    assert elapsed < 30, f"took {elapsed:.1f} s: the 2 s read timeout did not cut the 40 s stall"
    assert_resumed_exactly(proxy, bucket, "mid/b.bin", len(OBJECTS["mid/b.bin"]), "stall")


# --------------------------------------------------------------------------------------------
# retries spent: exit 1 naming the object, never a silently short or wrong epoch
# --------------------------------------------------------------------------------------------

def _check_failed_epoch(job: Any, expected: bytes) -> None:
    """The consumer saw an early EOF (or nothing): not a full-length epoch with wrong bytes."""
    cons = job.consumers["train"]
    try:
        cons.wait(15)
    except AssertionError:
        cons.kill()  # still blocked opening a FIFO the failed sidecar removed: it read nothing
        return
    path = job.out_dirs["train"] / "epoch_0.bin"
    got = path.read_bytes() if path.exists() else b""
    assert len(got) < len(expected), "a failed epoch reached full length"
    assert expected.startswith(got), "the bytes before the failure are not the stream's first bytes"


@pytest.mark.parametrize("fault", ["status-500", "cut-every-time", "reset-every-time"])
def test_retries_spent_exit_1_naming_the_object(moto_s3, buckets, s3_jobs, fault_proxy, fault):
    bucket, _ = buckets.get(moto_s3)
    proxy = fault_proxy(moto_s3)
    regex = key_regex(bucket, "mid/b.bin")
    if fault == "status-500":
        proxy.status(500, times=None, method="GET", path_regex=regex)
    elif fault == "cut-every-time":
        proxy.cut_after(1000, times=None, method="GET", path_regex=regex)
    else:
        proxy.reset_after(1000, times=None, method="GET", path_regex=regex)
    job = s3_jobs.start(moto_s3, [s3_channel("train", f"s3://{bucket}/mid/")], epochs=1,
                        endpoint_url=proxy.endpoint_url, env_extra={"AWS_MAX_ATTEMPTS": "3"},
                        consumer_timeout=60)
    job.proc.wait(60)
    line = data_error_line(job.proc)
    assert f"s3://{bucket}/mid/b.bin" in line, line
    _check_failed_epoch(job, stream_of(payloads("mid/"), False))


@pytest.mark.parametrize("change", ["deleted", "replaced"])
def test_object_deleted_or_replaced_while_the_job_runs(moto_s3, s3_jobs, consumer, tmp_path, change):
    """An object listed at start-up and then deleted, or overwritten by one of the same size (every
    GET carries If-Match with the listed ETag): the epoch that needs it stops the job with exit 1
    naming it; no epoch is served short, or with the new bytes, as if complete."""
    bucket = f"{change}-{uuid.uuid4().hex[:12]}"
    client = moto_s3.client()
    client.create_bucket(Bucket=bucket)
    objects = {"d/0": b"zero " * 100, "d/1": b"one! " * 100, "d/2": b"two! " * 100}
    want = stream_of([objects[k] for k in sorted(objects)], False)
    try:
        put_objects(client, bucket, objects)
        job = s3_jobs.start(moto_s3, [s3_channel("d", f"s3://{bucket}/d/")], read=[], epochs=3)
        gate = tmp_path / "gate"
        cons = consumer(pattern(job.ml_root, "d"), 3, modes="gate:10,full", gate=gate, wait=20, timeout=40)
        assert cons.next_line(15).get("event") == "gated"
        if change == "deleted":
            client.delete_object(Bucket=bucket, Key="d/1")
        else:
            client.put_object(Bucket=bucket, Key="d/1", Body=b"ONE! " * 100)  # same size, other bytes
        gate.touch()
        job.proc.wait(30)
        line = data_error_line(job.proc)
        assert f"s3://{bucket}/d/1" in line, line
        if change == "replaced":
            assert "changed" in line.lower(), line
        time.sleep(0.5)
        while True:
            try:
                rec = cons.lines.get_nowait()
            except Exception:
                break
            if "epoch" in rec and "bytes" in rec:
                assert rec["bytes"] < len(want) or rec["sha256"] == sha(want), rec
    finally:
        empty_and_delete_bucket(client, bucket)


def test_endpoint_down_is_a_planning_error(moto_s3, s3_jobs):
    (port,) = free_ports(1)  # nothing listens there
    env = s3_env(moto_s3, endpoint_url=f"http://127.0.0.1:{port}", AWS_MAX_ATTEMPTS="2")
    uri = "s3://some-bucket/train/"
    started = time.monotonic()
    proc, ml_root = s3_jobs.fail(None, [s3_channel("train", uri)], env=env, timeout=60)
    _assert_planning_error(proc, ml_root, "train", uri)
    assert time.monotonic() - started < 60


# --------------------------------------------------------------------------------------------
# listing-time errors: exit 2, one line naming channel and URI, nothing written
# --------------------------------------------------------------------------------------------

def _assert_planning_error(proc: Any, ml_root: Any, channel_name: str, uri: str, *also: str) -> str:
    assert proc.poll() == 2, f"exit {proc.poll()}, expected 2; stderr:\n{proc.stderr}"
    line = error_line(proc.stderr)  # exactly one line, starting "sagemaker-pipe: error:"
    assert channel_name in line and uri in line, line
    for word in also:
        assert word.lower() in line.lower(), line
    assert_nothing_written(ml_root)
    return line


@pytest.mark.parametrize("server_name", ["moto", "seaweedfs"])
@pytest.mark.parametrize("data_type", ["S3Prefix", "ManifestFile", "AugmentedManifestFile"])
def test_no_such_bucket(request, s3_jobs, server_name, data_type):
    server = server_for(request, server_name)
    missing = f"no-such-bucket-{uuid.uuid4().hex[:10]}"
    uri = f"s3://{missing}/" + ("train/" if data_type == "S3Prefix" else "m.manifest")
    extra = {"s3_AttributeNames": ["a-ref"]} if data_type == "AugmentedManifestFile" else {}
    proc, ml_root = s3_jobs.fail(server, [s3_channel("train", uri, data_type, **extra)])
    _assert_planning_error(proc, ml_root, "train", uri)


def test_wrong_secret_on_seaweedfs_is_access_denied_and_never_printed(seaweed_s3, buckets, s3_jobs):
    bucket, _ = buckets.get(seaweed_s3)
    uri = f"s3://{bucket}/mid/"
    wrong = "wrong-" + uuid.uuid4().hex
    for debug in ((), ("-d",)):
        env = s3_env(seaweed_s3, AWS_SECRET_ACCESS_KEY=wrong)
        proc, ml_root = s3_jobs.fail(None, [s3_channel("train", uri)], env=env, args=debug)
        _assert_planning_error(proc, ml_root, "train", uri)
        assert wrong not in proc.stderr and seaweed_s3.secret_key not in proc.stderr


@pytest.mark.parametrize("target", ["listing", "manifest", "manifest-entry"])
def test_listing_failing_with_500_repeatedly(moto_s3, buckets, s3_jobs, fault_proxy, tmp_path, target):
    bucket, _ = buckets.get(moto_s3)
    proxy = fault_proxy(moto_s3)
    if target == "listing":
        uri = f"s3://{bucket}/mid/"
        proxy.status(500, times=None, method="GET", query="list-type=2")
        ch = s3_channel("train", uri)
    else:
        key = f"manifests/{tmp_path.name[-24:]}.json"
        moto_s3.client().put_object(Bucket=bucket, Key=key,
                                    Body=json.dumps([{"prefix": f"s3://{bucket}/mid/"}, "a.csv", "c.csv"]).encode())
        uri = f"s3://{bucket}/{key}"
        # the manifest itself, or one of its entries (HEAD or GET), answers 500 every time
        failing = key if target == "manifest" else "mid/c.csv"
        proxy.status(500, times=None, path_regex=key_regex(bucket, failing))
        ch = s3_channel("train", uri, "ManifestFile")
    started = time.monotonic()
    env = s3_env(moto_s3, endpoint_url=proxy.endpoint_url, AWS_MAX_ATTEMPTS="3")  # quicker to give up
    proc, ml_root = s3_jobs.fail(moto_s3, [ch], env=env, timeout=60)
    if target == "manifest-entry":  # the line names the entry that failed
        _assert_planning_error(proc, ml_root, "train", f"s3://{bucket}/mid/c.csv")
    else:
        _assert_planning_error(proc, ml_root, "train", uri)
    assert len([r for r in proxy.records if r.status == 500]) >= 2, "a 500 was not retried at all"
    assert time.monotonic() - started < 60


@pytest.mark.parametrize("server_name", ["moto", "seaweedfs"])
def test_no_credentials_at_all(request, buckets, s3_jobs, server_name):
    server = server_for(request, server_name)
    bucket, _ = buckets.get(server)
    env = s3_env(server)
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        env.pop(var, None)
    env.update(AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull, AWS_EC2_METADATA_DISABLED="true")
    uri = f"s3://{bucket}/mid/"
    started = time.monotonic()
    proc, ml_root = s3_jobs.fail(None, [s3_channel("train", uri)], env=env, timeout=30)
    _assert_planning_error(proc, ml_root, "train", uri, "credentials")
    assert time.monotonic() - started < 25


@pytest.mark.parametrize(("var", "value"), [("SAGEMAKER_PIPE_S3_RANGES", "sometimes"),
                                            ("SAGEMAKER_PIPE_S3_THREADS", "many")])
def test_a_bad_s3_setting_is_one_line_naming_it(moto_s3, buckets, s3_jobs, var, value):
    bucket, _ = buckets.get(moto_s3)
    proc, ml_root = s3_jobs.fail(None, [s3_channel("train", f"s3://{bucket}/mid/")],
                                 env={**s3_env(moto_s3), var: value})
    assert proc.poll() == 2, proc.stderr
    line = error_line(proc.stderr)
    assert var in line and value in line, line
    assert_nothing_written(ml_root)


def test_near_servers_get_one_stream_per_object(monkeypatch):
    """`auto` takes one stream per object once the fastest of the recent GETs answered within 5 ms."""
    from sagemaker_pipe.sources import s3

    monkeypatch.setattr(s3, "RANGES", "auto")
    transport = s3.S3Transport()
    assert not transport.near  # nothing measured yet: ranges
    transport._answers.extend([0.030, 0.012, 0.050])
    assert not transport.near  # S3 itself
    transport._answers.append(0.002)
    assert transport.near  # the fastest answer counts: the slow ones were queueing
    transport._answers.extend([0.030] * 64)
    assert not transport.near  # only the recent ones count
    monkeypatch.setattr(s3, "RANGES", "always")
    transport._answers.append(0.001)
    assert not transport.near
    monkeypatch.setattr(s3, "RANGES", "never")
    transport._answers.clear()
    assert transport.near


def test_secret_never_on_stderr_with_debug(moto_s3, buckets, s3_jobs, fault_proxy):
    """-d on a job that works, then one that fails mid-epoch: the secret is never printed."""
    bucket, _ = buckets.get(moto_s3)
    secret = "Secret/" + uuid.uuid4().hex  # moto accepts any key pair
    env = s3_env(moto_s3, AWS_SECRET_ACCESS_KEY=secret)
    reads = s3_jobs.start(moto_s3, [s3_channel("train", f"s3://{bucket}/mid/")], args=["-d"], env=env)
    done = reads.finish()
    done["train"].check(stream_of(payloads("mid/"), False), "train")
    assert secret not in reads.proc.stderr and uuid.UUID(secret[7:]).hex not in reads.proc.stderr

    proxy = fault_proxy(moto_s3)
    proxy.status(403, times=None, method="GET", path_regex=key_regex(bucket, "mid/c.csv"))
    env = s3_env(moto_s3, endpoint_url=proxy.endpoint_url, AWS_SECRET_ACCESS_KEY=secret)
    job = s3_jobs.start(moto_s3, [s3_channel("train", f"s3://{bucket}/mid/")], args=["-d"], env=env, epochs=1)
    job.proc.wait(45)
    line = data_error_line(job.proc)
    assert "mid/c.csv" in line
    assert secret not in job.proc.stderr and secret[7:] not in job.proc.stderr


# --------------------------------------------------------------------------------------------
# streaming: first bytes early, fetch-ahead in parallel, bounded memory
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("server_name", ["moto", "seaweedfs"])
def test_first_bytes_reach_the_fifo_while_the_object_is_still_downloading(
        request, buckets, s3_jobs, fault_proxy, consumer, tmp_path, server_name):
    """The proxy stalls the first object (6 MiB) for 30 s after 2.5 MiB: the reader must get its
    first MiB during the stall, i.e. before the object's download completes. (The processes and
    the stalled connection are ended at teardown; the exact bytes are checked by other tests.)"""
    server = server_for(request, server_name)
    bucket, _ = buckets.get(server)
    proxy = fault_proxy(server)
    stall_at = 5 * MIB // 2
    rule = proxy.stall(30, after_bytes=stall_at, method="GET", path_regex=key_regex(bucket, "large/00.bin"))
    job = s3_jobs.start(server, [s3_channel("big", f"s3://{bucket}/large/")], endpoint_url=proxy.endpoint_url,
                        read=[])
    cons = consumer(pattern(job.ml_root, "big"), 1, modes=f"stall:{MIB}", wait=30, timeout=40)
    event = cons.next_line(timeout=20)
    assert event.get("event") == "stalled" and event["bytes"] == MIB, event
    stalled = gets_of(proxy, bucket, "large/00.bin")
    assert rule.hits == 1 and stalled and stalled[0].fault == "stall"
    # the proxy may still be short of the stall point (a loaded machine): what matters is that the
    # object was not yet downloaded when the reader had its first MiB
    assert stalled[0].body_bytes <= stall_at, \
        f"the proxy had sent {stalled[0].body_bytes} bytes: the stall was over before the reader got data"
    assert job.proc.alive(), job.proc.stderr


def test_objects_are_fetched_ahead_in_parallel(moto_s3, buckets, s3_jobs, fault_proxy):
    """While the first object's GET is stalled (20 s, before its first byte), later objects are
    already being fetched. (The processes and the stalled connection are ended at teardown.)"""
    bucket, _ = buckets.get(moto_s3)
    proxy = fault_proxy(moto_s3)
    first = "many/00.bin"
    proxy.stall(20, after_bytes=0, method="GET", path_regex=key_regex(bucket, first))
    job = s3_jobs.start(moto_s3, [s3_channel("many", f"s3://{bucket}/many/", record_io=True)],
                        endpoint_url=proxy.endpoint_url)

    def later() -> set[str]:
        return {r.path for r in proxy.requests("GET") if r.path.startswith(f"/{bucket}/many/")} - {f"/{bucket}/{first}"}

    wait_until(lambda: gets_of(proxy, bucket, first), 15, "the first object's GET")
    wait_until(lambda: len(later()) >= 2, 15, "GETs of two later objects while the first one is stalled")
    assert gets_of(proxy, bucket, first)[0].body_bytes == 0, "the stall had already ended"
    assert job.proc.alive(), job.proc.stderr


@pytest.mark.parametrize("ranges", ["never", "always"])
def test_a_large_object_as_one_stream_or_as_ranges(moto_s3, buckets, s3_jobs, fault_proxy, ranges):
    """SAGEMAKER_PIPE_S3_RANGES=never (what `auto` picks for a server that answers within 5 ms):
    each object is one GET with no Range, and a broken body resumes from the byte reached;
    always: a large object is ranged GETs of PART bytes. Either way the bytes are exact."""
    bucket, _ = buckets.get(moto_s3)
    proxy = fault_proxy(moto_s3)
    rule = None
    if ranges == "never":
        rule = proxy.cut_after(300_001, method="GET", path_regex=key_regex(bucket, "mid/b.bin"))
    reads = s3_jobs.run(moto_s3, [s3_channel("train", f"s3://{bucket}/mid/")], endpoint_url=proxy.endpoint_url,
                        env_extra={"SAGEMAKER_PIPE_S3_RANGES": ranges, "SAGEMAKER_PIPE_S3_PART_MB": "0.5"})
    reads["train"].check(stream_of(payloads("mid/"), False), "train")
    gets = gets_of(proxy, bucket, "mid/b.bin")
    size = len(OBJECTS["mid/b.bin"])
    if rule is not None:
        assert rule.hits == 1
        whole = [r for r in gets if r.range is None and r.fault is None]
        assert len(whole) == EPOCHS - 1 and len(gets) == EPOCHS + 1, [(r.range, r.status, r.fault) for r in gets]
        assert_resumed_exactly(proxy, bucket, "mid/b.bin", size, "cut")
    else:
        assert all(r.range is not None for r in gets), [r.range for r in gets]
        assert len(gets) == EPOCHS * -(-size // (MIB // 2)), [r.range for r in gets]


def test_one_stream_for_a_large_object_keeps_memory_bounded(moto_s3, s3_jobs, fault_proxy, consumer):
    """A 96 MiB object fetched as one GET while its reader stops after 1 MiB: the download waits for
    the reader once READ_AHEAD (16 MiB here) is buffered; it neither races ahead nor fills memory."""
    bucket = f"onestream-{uuid.uuid4().hex[:12]}"
    client = moto_s3.client()
    client.create_bucket(Bucket=bucket)
    try:
        size = 96 * MIB
        put_objects(client, bucket, {"big/obj": blob(98, size)}, threads=1)
        proxy = fault_proxy(moto_s3)
        job = s3_jobs.start(moto_s3, [s3_channel("big", f"s3://{bucket}/big/")], endpoint_url=proxy.endpoint_url,
                            read=[], epochs=1, env_extra={"SAGEMAKER_PIPE_S3_RANGES": "never",
                                                          "SAGEMAKER_PIPE_S3_READ_AHEAD_MB": "16"})
        cons = consumer(pattern(job.ml_root, "big"), 1, modes=f"stall:{MIB}", wait=30, timeout=40)
        event = cons.next_line(timeout=20)
        assert event.get("event") == "stalled", event
        time.sleep(2.5)  # time enough to download it all, if nothing held it back
        gets = [r for r in proxy.requests("GET") if r.path == f"/{bucket}/big/obj"]
        assert len(gets) == 1 and gets[0].range is None, [r.range for r in gets]
        assert gets[0].body_bytes <= 48 * MIB, f"{gets[0].body_bytes / MIB:.0f} MiB fetched of 96"
        assert job.proc.alive()
        assert _rss(job.proc.pid) < 150 * MIB
    finally:
        empty_and_delete_bucket(client, bucket)


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def test_read_ahead_memory_is_bounded(moto_s3, s3_jobs, fault_proxy, consumer, tmp_path):
    """A 320 MiB channel whose reader stops after 1 MiB: the sidecar neither downloads the whole
    channel ahead nor holds it in memory."""
    bucket = f"bounded-{uuid.uuid4().hex[:12]}"
    client = moto_s3.client()
    client.create_bucket(Bucket=bucket)
    try:
        body = blob(99, 8 * MIB)
        total = 40 * len(body)
        put_objects(client, bucket, {f"huge/{i:02d}": body for i in range(40)}, threads=4)
        proxy = fault_proxy(moto_s3)
        job = s3_jobs.start(moto_s3, [s3_channel("huge", f"s3://{bucket}/huge/")],
                            endpoint_url=proxy.endpoint_url, read=[], epochs=1)
        cons = consumer(pattern(job.ml_root, "huge"), 1, modes=f"stall:{MIB}", wait=30, timeout=40)
        event = cons.next_line(timeout=20)
        assert event.get("event") == "stalled", event
        time.sleep(2.5)  # time enough to fetch far ahead, if it were going to
        fetched = sum(r.body_bytes for r in proxy.requests("GET") if r.path.startswith(f"/{bucket}/huge/"))
        rss = _rss(job.proc.pid)
        assert job.proc.alive()
        assert fetched <= total // 2, f"{fetched / MIB:.0f} MiB of {total / MIB:.0f} MiB fetched ahead"
        assert rss < 300 * MIB, f"sidecar RSS {rss / MIB:.0f} MiB"
    finally:
        empty_and_delete_bucket(client, bucket)
