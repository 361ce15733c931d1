"""The S3 baselines, as a long-lived child that times one download per command line on stdin.

Long-lived so that its client, imports and connection pool are set up once (as they are in
the sidecar, whose start-up is not timed either) and so that its runs can be interleaved with
the sidecar's epochs. Each command prints one line: the seconds the download took, and the CPU
seconds (user + system, every thread of this process) it cost.

    pool BUCKET PREFIX THREADS   every object under PREFIX with a THREADS-wide get_object pool
    crt BUCKET PREFIX INFLIGHT   every object under PREFIX through awscrt's S3Client (AWS's C runtime, as
                                 in boto3[crt]), INFLIGHT GETs at a time, bodies into a Python callback
    crtget BUCKET KEY            one object through awscrt's S3Client as GET_OBJECT (its own parallel
                                 ranged download), body into a Python callback
    single BUCKET KEY            one GET, body read in 1 MiB pieces into /dev/null
    transfer BUCKET KEY          s3transfer's parallel ranged download (download_fileobj) into /dev/null
    fifo BUCKET KEY PATH         one GET into the FIFO at PATH (1 MiB pipe), for a reader the caller times:
                                 the same sink as the sidecar's, so the FIFO's own cost is visible

The endpoint and keys come from the environment (AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID, ...).
"""

from __future__ import annotations

import os
import resource
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
from botocore.config import Config

MIB = 1 << 20


def make_client() -> Any:
    return boto3.session.Session().client("s3", config=Config(max_pool_connections=64))


def pool(client: Any, bucket: str, keys: list[str], threads: int) -> float:
    null = os.open(os.devnull, os.O_WRONLY)

    def get(key: str) -> int:
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
        data = body.read()
        os.write(null, data)
        return len(data)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as ex:
        total = sum(ex.map(get, keys))
    elapsed = time.perf_counter() - t0
    os.close(null)
    assert total > 0
    return elapsed


def _keys(client: Any, bucket: str, prefix: str) -> list[str]:
    return [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for o in page.get("Contents", [])]


class Crt:
    """awscrt's S3 client, as a user of the C runtime would set it up: defaults, plus the endpoint and keys."""

    def __init__(self) -> None:
        from awscrt import auth, http, s3

        self.http, self.s3 = http, s3
        endpoint = os.environ["AWS_ENDPOINT_URL_S3"]
        self.host = endpoint.split("://", 1)[1].rstrip("/")
        region = os.environ.get("AWS_REGION", "us-east-1")
        creds = auth.AwsCredentialsProvider.new_static(os.environ["AWS_ACCESS_KEY_ID"],
                                                       os.environ["AWS_SECRET_ACCESS_KEY"])
        tls = s3.S3RequestTlsMode.ENABLED if endpoint.startswith("https") else s3.S3RequestTlsMode.DISABLED
        self.client = s3.S3Client(region=region, tls_mode=tls, signing_config=s3.create_default_s3_signing_config(
            region=region, credential_provider=creds))

    def get(self, bucket: str, key: str, kind: Any, done: threading.Semaphore, total: list[int]) -> Any:
        """Send one GET; `done` is released when it ends."""
        from urllib.parse import quote

        def on_body(chunk: Any, offset: int, **_: Any) -> None:
            total[0] += len(chunk)

        def on_done(error: BaseException | None, **_: Any) -> None:
            if error is not None:
                total[1] += 1
            done.release()

        request = self.http.HttpRequest("GET", f"/{bucket}/{quote(key, safe='/~')}",
                                        self.http.HttpHeaders([("Host", self.host)]))
        return self.client.make_request(type=kind, request=request, on_body=on_body, on_done=on_done,
                                        operation_name="GetObject")

    def many(self, keys: list[str], bucket: str, inflight: int) -> int:
        """Every key, `inflight` GETs at a time (each sent when one finishes); the bytes received."""
        room = threading.Semaphore(inflight)
        total = [0, 0]  # bytes, failures
        for key in keys:
            room.acquire()
            self.get(bucket, key, self.s3.S3RequestType.DEFAULT, room, total)
        for _ in range(inflight):
            room.acquire()
        assert total[1] == 0, f"{total[1]} awscrt GETs failed"
        return total[0]

    def one(self, bucket: str, key: str) -> int:
        done, total = threading.Semaphore(0), [0, 0]
        request = self.get(bucket, key, self.s3.S3RequestType.GET_OBJECT, done, total)
        done.acquire()
        assert total[1] == 0 and request is not None, "the awscrt GET failed"
        return total[0]


def crt_many(crt: Crt, bucket: str, keys: list[str], inflight: int) -> float:
    t0 = time.perf_counter()
    assert crt.many(keys, bucket, inflight) > 0
    return time.perf_counter() - t0


def crt_one(crt: Crt, bucket: str, key: str) -> float:
    t0 = time.perf_counter()
    assert crt.one(bucket, key) > 0
    return time.perf_counter() - t0


def _get_into(client: Any, bucket: str, key: str, fd: int) -> float:
    """Seconds one plain GET takes, its body written to fd a megabyte at a time."""
    t0 = time.perf_counter()
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    while data := body.read(MIB):
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    return time.perf_counter() - t0


def single(client: Any, bucket: str, key: str) -> float:
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        return _get_into(client, bucket, key, null)
    finally:
        os.close(null)


def single_into_fifo(client: Any, bucket: str, key: str, path: str) -> float:
    """A single GET written into a FIFO (blocking, 1 MiB pipe): the sidecar's sink without the sidecar."""
    import fcntl

    fd = os.open(path, os.O_WRONLY)  # blocks until the caller's reader opens it
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, MIB)
        return _get_into(client, bucket, key, fd)
    finally:
        os.close(fd)


def transfer(client: Any, bucket: str, key: str) -> float:
    """boto3's own parallel download with its default TransferConfig (10 threads, 8 MiB parts)."""
    with open(os.devnull, "wb") as f:
        t0 = time.perf_counter()
        client.download_fileobj(bucket, key, f)
        return time.perf_counter() - t0


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    client = make_client()
    crt: Crt | None = None
    print("ready", flush=True)
    for line in sys.stdin:
        cmd, *args = line.split()
        if cmd in ("pool", "crt"):  # keys listed before the clock starts: these measure the fetching
            keys = _keys(client, args[0], args[1])
        if cmd.startswith("crt"):
            crt = crt or Crt()  # nor is the client's set-up timed
        cpu = cpu_seconds()
        if cmd == "pool":
            seconds = pool(client, args[0], keys, int(args[2]))
        elif cmd == "single":
            seconds = single(client, args[0], args[1])
        elif cmd == "fifo":
            seconds = single_into_fifo(client, args[0], args[1], args[2])
        elif cmd == "transfer":
            seconds = transfer(client, args[0], args[1])
        elif cmd == "crt" and crt:
            seconds = crt_many(crt, args[0], keys, int(args[2]))
        elif cmd == "crtget" and crt:
            seconds = crt_one(crt, args[0], args[1])
        elif cmd == "quit":
            return
        else:
            raise SystemExit(f"unknown command {cmd!r}")
        print(f"{seconds:.6f} {cpu_seconds() - cpu:.6f}", flush=True)


if __name__ == "__main__":
    main()
