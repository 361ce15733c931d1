"""Small objects through one event-loop thread (sources/s3_small.py, issue 17), on moto and SeaweedFS.

Whole objects up to 1 MiB go out through s3_small.py's keep-alive connections; everything else,
and every answer but a 200, goes on through the plain path (s3_get.py, then botocore). A FaultProxy
between the sidecar and the server logs every request: the loop's GETs are the ones whose
User-Agent carries its `small-objects` marker after ours. SeaweedFS checks every signature, so an
epoch that arrives exact on it was signed with the right keys (and session token).
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import assert_nothing_written, error_line, pattern
from s3_helpers import (
    MIB,
    SERVERS,
    ModuleBuckets,
    blob,
    data_error_line,
    prefix_keys,
    s3_channel,
    s3_env,
    server_for,
    stream_of,
)

pytestmark = pytest.mark.timeout(120)

MARK = "small-objects"

COMMON = {
    "small/a b.txt": b"a key with a space\n",
    "small/plus+sign": b"plus",
    "small/pct%20x": b"percent",
    "small/q?x#y": b"query and fragment characters",
    "small/amp&=;": b"ampersand",
    "small/\u00fc/\u03a9": b"unicode folders",
    **{f"small/many/{i:02d}.bin": blob(200 + i, 4096 * (i + 1)) for i in range(16)},
    "small/one-mib.bin": blob(300, MIB),  # the largest object the loop fetches
    "small/zz-larger.bin": blob(301, MIB + 1),  # the smallest one the plain path streams
}
# keys SeaweedFS normalizes as paths (so they would not come back as written): moto only
LITERAL_PATHS = {"small/a//b": b"double slash", "small/./dot": b"dot segment", "small/../up": b"dot-dot segment"}


def objects_for(server_name: str) -> dict[str, bytes]:
    return {**COMMON, **(LITERAL_PATHS if server_name == "moto" else {})}


@pytest.fixture(scope="module")
def buckets():
    made = {name: ModuleBuckets(f"s3-small-{name}", lambda bucket, name=name: objects_for(name)) for name in SERVERS}
    yield made
    for m in made.values():
        m.cleanup()




def object_gets(proxy: Any, bucket: str) -> list[Any]:
    return [r for r in proxy.requests("GET") if r.path.startswith(f"/{bucket}/")]


def by_loop(record: Any) -> bool:
    agent = record.headers.get("user-agent", "")
    return agent.startswith("sagemaker-pipe/") and MARK in agent


def many_stream(objects: dict[str, bytes]) -> bytes:
    """The epoch of s3://bucket/small/many/ (its keys sort alike by bytes and by name)."""
    return stream_of([objects[k] for k in sorted(k for k in objects if k.startswith("small/many/"))], False)


def expected(objects: dict[str, bytes]) -> bytes:
    return stream_of([objects[k] for k in prefix_keys(objects, "small/")], False)


@pytest.mark.parametrize("server_name", ["moto", "seaweedfs"])
def test_small_objects_go_through_the_loop_once_each_with_if_match(request, buckets, s3_jobs, fault_proxy,
                                                                 server_name):
    """Every object up to 1 MiB, awkward keys included, is one GET of the loop per epoch, answered 200,
    carrying If-Match with the listed ETag; the one just over 1 MiB is streamed by the plain path."""
    server = server_for(request, server_name)
    bucket, objects = buckets[server_name].get(server)
    proxy = fault_proxy(server)
    reads = s3_jobs.run(server, [s3_channel("train", f"s3://{bucket}/small/")], epochs=2,
                        endpoint_url=proxy.endpoint_url)
    reads["train"].check(expected(objects), "train")
    etags = {o["Key"]: o["ETag"] for o in server.client().list_objects_v2(Bucket=bucket)["Contents"]}
    gets = object_gets(proxy, bucket)
    for key, body in objects.items():
        mine = [r for r in gets if r.path == f"/{bucket}/{key}"]
        if len(body) <= MIB:
            assert len(mine) == 2 and all(by_loop(r) and r.status == 200 for r in mine), \
                (key, [(r.status, r.headers.get("user-agent")) for r in mine])
            assert {r.headers.get("if-match") for r in mine} == {etags[key]}, key
        else:
            assert mine and not any(by_loop(r) for r in mine), key


# SeaweedFS refuses any session token with its static keys (InvalidAccessKeyId, botocore's listing
# included), so tokens are tested on moto, and signatures with profile keys on SeaweedFS.
TOKEN = {"moto": "token-from-profile", "seaweedfs": None}


@pytest.mark.parametrize("server_name", ["moto", "seaweedfs"])
def test_a_profile_signs_the_loops_requests(request, buckets, s3_jobs, fault_proxy, tmp_path, server_name):
    """Keys (and on moto a session token) from AWS_SHARED_CREDENTIALS_FILE + AWS_PROFILE, none in
    the environment, reach the loop's signer: its GETs carry the token; SeaweedFS takes the signature."""
    server = server_for(request, server_name)
    bucket, objects = buckets[server_name].get(server)
    proxy = fault_proxy(server)
    creds = tmp_path / "credentials"
    token = TOKEN[server_name]
    creds.write_text(f"[pipe-test]\naws_access_key_id = {server.access_key}\n"
                     f"aws_secret_access_key = {server.secret_key}\n"
                     + (f"aws_session_token = {token}\n" if token else ""))
    env = s3_env(server, endpoint_url=proxy.endpoint_url, AWS_SHARED_CREDENTIALS_FILE=str(creds),
                 AWS_PROFILE="pipe-test")
    del env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
    job = s3_jobs.start(server, [s3_channel("t", f"s3://{bucket}/small/many/")], env=env, epochs=1)
    job.finish()["t"].check(many_stream(objects), "t")
    gets = object_gets(proxy, bucket)
    assert gets and all(by_loop(r) for r in gets)
    assert {r.headers.get("x-amz-security-token") for r in gets} == {token}
    assert server.secret_key not in job.proc.stderr


CREDENTIAL_PROCESS = """\
import datetime, json, pathlib, sys
count = pathlib.Path(sys.argv[1])
n = int(count.read_text()) + 1 if count.exists() else 1
count.write_text(str(n))
soon = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=5)
answer = {"Version": 1, "AccessKeyId": sys.argv[2], "SecretAccessKey": sys.argv[3], "Expiration": soon.isoformat()}
if sys.argv[4] == "token":
    answer["SessionToken"] = f"token-{n}"
print(json.dumps(answer))
"""


@pytest.mark.parametrize("server_name", ["moto", "seaweedfs"])
def test_credentials_that_expire_are_refreshed_for_the_loop(request, buckets, s3_jobs, fault_proxy, tmp_path,
                                                          server_name):
    """A profile's credential_process whose credentials expire within botocore's refresh window:
    botocore refreshes them again and again, and the loop's GETs sign with each new set (on moto:
    new session tokens; on SeaweedFS, which checks signatures, every GET still answered 200)."""
    server = server_for(request, server_name)
    bucket, objects = buckets[server_name].get(server)
    proxy = fault_proxy(server)
    script, count = tmp_path / "creds.py", tmp_path / "count"
    script.write_text(CREDENTIAL_PROCESS)
    config = tmp_path / "config"
    config.write_text(f"[profile refreshing]\ncredential_process = {sys.executable} {script} {count} "
                      f"{server.access_key} {server.secret_key} {'token' if TOKEN[server_name] else 'none'}\n"
                      f"region = {server.region}\n")
    env = s3_env(server, endpoint_url=proxy.endpoint_url, AWS_CONFIG_FILE=str(config), AWS_PROFILE="refreshing")
    del env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
    job = s3_jobs.start(server, [s3_channel("t", f"s3://{bucket}/small/many/")], env=env, epochs=2)
    job.finish(timeout=90)["t"].check(many_stream(objects), "t")
    gets = object_gets(proxy, bucket)
    assert gets and all(by_loop(r) and r.status == 200 for r in gets)
    assert int(count.read_text()) >= 2
    if TOKEN[server_name]:
        tokens = {r.headers.get("x-amz-security-token") for r in gets}
        assert len(tokens) >= 2 and all(t and re.fullmatch(r"token-\d+", t) for t in tokens), tokens


def test_error_answers_are_repeated_through_botocore(moto_s3, buckets, s3_jobs, fault_proxy):
    """The loop never retries: a 503 to its GET is repeated by the plain path (503 again), then by
    get_object, whose standard retries get the 200."""
    bucket, objects = buckets["moto"].get(moto_s3)
    proxy = fault_proxy(moto_s3)
    key = "small/many/03.bin"
    rule = proxy.status(503, times=2, method="GET", path_regex="^" + re.escape(f"/{bucket}/{key}") + "$")
    reads = s3_jobs.run(moto_s3, [s3_channel("t", f"s3://{bucket}/small/many/")], epochs=1,
                        endpoint_url=proxy.endpoint_url)
    reads["t"].check(many_stream(objects), "t")
    assert rule.hits == 2
    gets = [r for r in object_gets(proxy, bucket) if r.path == f"/{bucket}/{key}"]
    agents = [(r.status, r.headers.get("user-agent", "")) for r in gets]
    assert [s for s, _ in agents] == [503, 503, 200], agents
    assert MARK in agents[0][1] and agents[1][1].startswith("sagemaker-pipe/") and MARK not in agents[1][1]
    assert agents[2][1].startswith("Boto3/"), agents


@pytest.mark.parametrize("server_name", ["moto", "seaweedfs"])
@pytest.mark.parametrize("fault", ["cut", "reset", "stall"])
def test_a_broken_small_body_is_fetched_again(request, buckets, s3_jobs, fault_proxy, server_name, fault):
    """The loop hands a body over only once complete, so a broken or stalled one passed nothing on:
    the object is fetched again from its first byte, If-Match on the listed ETag, and the epoch is
    exact. A stall is cut by the read timeout (2 s here), not waited out."""
    server = server_for(request, server_name)
    bucket, objects = buckets[server_name].get(server)
    proxy = fault_proxy(server)
    key = "small/many/07.bin"  # 32 KiB
    regex = "^" + re.escape(f"/{bucket}/{key}") + "$"
    rule = {"cut": lambda: proxy.cut_after(10_000, method="GET", path_regex=regex),
            "reset": lambda: proxy.reset_after(10_000, method="GET", path_regex=regex),
            "stall": lambda: proxy.stall(40, after_bytes=10_000, method="GET", path_regex=regex)}[fault]()
    started = time.monotonic()
    job = s3_jobs.start(server, [s3_channel("t", f"s3://{bucket}/small/many/")], epochs=1,
                        endpoint_url=proxy.endpoint_url, env_extra={"SAGEMAKER_PIPE_S3_READ_TIMEOUT": "2"})
    job.finish(timeout=35)["t"].check(many_stream(objects), "t")
    assert time.monotonic() - started < 30
    assert rule.hits == 1
    gets = [r for r in object_gets(proxy, bucket) if r.path == f"/{bucket}/{key}"]
    assert gets[0].fault == fault and by_loop(gets[0]), [(r.fault, r.headers.get("user-agent")) for r in gets]
    again = gets[1]
    assert again.range in (None, "bytes=0-") and again.status == 200, (again.range, again.status)
    assert again.headers.get("if-match") == gets[0].headers.get("if-match") is not None
    assert f"{key}: body broke" in job.proc.stderr


def test_connections_the_server_closed_while_idle_are_never_sent_on(seaweed_s3, buckets, s3_jobs, fault_proxy, consumer,
                                                                    tmp_path):
    """Servers close kept-alive connections that stay idle (S3 after some seconds). Between two
    epochs every one of them is closed here: the next epoch opens new ones, exact, with no GET
    lost to a dead connection (none broke, none went to the plain path). SeaweedFS only: moto
    answers HTTP/1.0 and closes every connection itself."""
    server = seaweed_s3
    bucket, objects = buckets["seaweedfs"].get(server)
    proxy = fault_proxy(server)
    proxy.idle_timeout = 0.3
    job = s3_jobs.start(server, [s3_channel("t", f"s3://{bucket}/small/many/")], epochs=2, read=[],
                        endpoint_url=proxy.endpoint_url)
    reads = []
    for epoch in (0, 1):
        out = tmp_path / f"epoch{epoch}"
        (result,) = consumer(pattern(job.ml_root, "t"), epochs=1, start=epoch, out=out).results(30)
        reads.append((out / f"epoch_{epoch}.bin").read_bytes())
        if epoch == 0:
            opened = proxy.connections
            time.sleep(1.0)  # every connection idle for over idle_timeout: the proxy closed them all
    assert job.proc.wait(30) == 0, job.proc.stderr
    assert reads == [many_stream(objects)] * 2
    assert proxy.connections > opened
    gets = object_gets(proxy, bucket)
    assert len(gets) == 32 and all(by_loop(r) and r.status == 200 for r in gets), len(gets)
    assert "body broke" not in job.proc.stderr


def test_a_small_object_broken_every_time_stops_the_job_naming_it(moto_s3, buckets, s3_jobs, fault_proxy):
    bucket, objects = buckets["moto"].get(moto_s3)
    proxy = fault_proxy(moto_s3)
    key = "small/many/05.bin"
    proxy.cut_after(1000, times=None, method="GET", path_regex="^" + re.escape(f"/{bucket}/{key}") + "$")
    job = s3_jobs.start(moto_s3, [s3_channel("t", f"s3://{bucket}/small/many/")], epochs=1,
                        endpoint_url=proxy.endpoint_url, consumer_timeout=60)
    job.proc.wait(60)
    assert job.proc.poll() == 1
    assert f"s3://{bucket}/{key}" in data_error_line(job.proc)


@pytest.mark.parametrize("setting", ["HTTP_PROXY", "NO_PROXY"])
def test_proxy_variables_are_honoured(seaweed_s3, buckets, s3_jobs, fault_proxy, setting):
    """The loop speaks to servers directly: with HTTP_PROXY set for the endpoint, every
    request (listing and bodies) goes through the proxy by the plain path; with the endpoint in
    NO_PROXY too, none does, and bodies go through the loop again."""
    bucket, objects = buckets["seaweedfs"].get(seaweed_s3)
    proxy = fault_proxy(seaweed_s3)  # a plain-HTTP forward proxy too: it relays absolute-form requests
    extra = {"HTTP_PROXY": proxy.endpoint_url, "http_proxy": proxy.endpoint_url}
    if setting == "NO_PROXY":
        extra |= {"NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    env = s3_env(seaweed_s3, **extra)
    env = {k: v for k, v in env.items() if k.lower() not in ("https_proxy", "all_proxy")
           and (k.lower() != "no_proxy" or setting == "NO_PROXY")}
    job = s3_jobs.start(seaweed_s3, [s3_channel("t", f"s3://{bucket}/small/many/")], env=env, epochs=1)
    job.finish()["t"].check(many_stream(objects), "t")
    gets = object_gets(proxy, bucket)
    if setting == "HTTP_PROXY":
        assert len(gets) == 16 and not any(by_loop(r) for r in gets), len(gets)  # one GET per object
        assert any("list-type" in r.query for r in proxy.requests("GET"))
    else:
        assert proxy.records == []


def test_the_loop_can_be_turned_off_and_a_bad_value_is_one_line(moto_s3, buckets, s3_jobs, fault_proxy):
    bucket, objects = buckets["moto"].get(moto_s3)
    proxy = fault_proxy(moto_s3)
    reads = s3_jobs.run(moto_s3, [s3_channel("t", f"s3://{bucket}/small/many/")], epochs=1,
                        endpoint_url=proxy.endpoint_url, env_extra={"SAGEMAKER_PIPE_S3_SMALL": "never"})
    reads["t"].check(many_stream(objects), "t")
    gets = object_gets(proxy, bucket)
    assert gets and not any(by_loop(r) for r in gets)
    proc, ml_root = s3_jobs.fail(None, [s3_channel("t", f"s3://{bucket}/small/")],
                                 env={**s3_env(moto_s3), "SAGEMAKER_PIPE_S3_SMALL": "sometimes"})
    assert proc.poll() == 2, proc.stderr
    line = error_line(proc.stderr)
    assert "SAGEMAKER_PIPE_S3_SMALL" in line and "sometimes" in line, line
    assert_nothing_written(ml_root)


def test_the_bench_baseline_reads_every_byte(moto_s3, buckets, monkeypatch):
    """bench/s3_baselines.py's awscrt client, which the bench's awscrt rows time, gets every byte."""
    pytest.importorskip("awscrt")
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "bench"))
    import s3_baselines

    bucket, objects = buckets["moto"].get(moto_s3)
    for name, value in moto_s3.child_env().items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    crt = s3_baselines.Crt()
    keys = [k for k in objects if k.startswith("small/many/")]
    assert crt.many(keys, bucket, 4) == sum(len(objects[k]) for k in keys)
    assert crt.one(bucket, "small/zz-larger.bin") == MIB + 1
