"""The S3 baselines, as a long-lived child that times one download per command line on stdin.

Long-lived so that its client, imports and connection pool are set up once (as they are in
the sidecar, whose start-up is not timed either) and so that its runs can be interleaved with
the sidecar's epochs. Each command prints one line: the seconds the download took.

    pool BUCKET PREFIX THREADS   every object under PREFIX with a THREADS-wide get_object pool
    single BUCKET KEY            one GET, body read in 1 MiB pieces into /dev/null
    transfer BUCKET KEY          s3transfer's parallel ranged download (download_fileobj) into /dev/null
    fifo BUCKET KEY PATH         one GET into the FIFO at PATH (1 MiB pipe), for a reader the caller times:
                                 the same sink as the sidecar's, so the FIFO's own cost is visible

The endpoint and keys come from the environment (AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID, ...).
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
from botocore.config import Config

MIB = 1 << 20


def make_client() -> Any:
    return boto3.session.Session().client("s3", config=Config(max_pool_connections=64))


def pool(client: Any, bucket: str, prefix: str, threads: int) -> float:
    """Keys are listed before the clock starts: this measures the fetching, which is what a pool buys."""
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for o in page.get("Contents", [])]
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


def main() -> None:
    client = make_client()
    print("ready", flush=True)
    for line in sys.stdin:
        cmd, *args = line.split()
        if cmd == "pool":
            seconds = pool(client, args[0], args[1], int(args[2]))
        elif cmd == "single":
            seconds = single(client, args[0], args[1])
        elif cmd == "fifo":
            seconds = single_into_fifo(client, args[0], args[1], args[2])
        elif cmd == "transfer":
            seconds = transfer(client, args[0], args[1])
        elif cmd == "quit":
            return
        else:
            raise SystemExit(f"unknown command {cmd!r}")
        print(f"{seconds:.6f}", flush=True)


if __name__ == "__main__":
    main()
