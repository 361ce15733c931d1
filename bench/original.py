"""The original tool's method (ishaaq/sagemaker-pipe), as the baseline the targets are stated against.

Same loop as the original: per epoch, mkfifo `<dest>/<channel>_<n>`, a blocking `open(..., 'bw',
buffering=0)` (default 64 KiB pipe), then `shutil.copyfileobj` per file from an `os.walk` of the
source, or `bucket.download_fileobj` per key from `bucket.objects.filter` for S3; delete the FIFO.
Only two liberties: it stops after --epochs, and `--gunzip` reads each file with `gzip.open`
directly instead of first copying the whole channel to a temporary file (which would only make
the baseline slower).

usage: original.py {local,gzip,s3} CHANNEL SRC DEST --epochs N
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
from collections.abc import Callable
from typing import BinaryIO
from urllib.parse import urlparse


def local_files(src: str) -> list[str]:
    out = []
    for root, _dirs, files in os.walk(src):
        for name in files:
            path = root + "/" + name
            if os.path.isfile(path):
                out.append(path)
    return out


def local_retriever(src: str, sink: BinaryIO) -> None:
    for path in local_files(src):
        with open(path, "rb") as f:
            shutil.copyfileobj(f, sink)


def gzip_retriever(src: str, sink: BinaryIO) -> None:
    for path in local_files(src):
        with gzip.open(path, "rb") as f:
            shutil.copyfileobj(f, sink)


def s3_retriever(src: str) -> Callable[[BinaryIO], None]:
    import boto3  # only the S3 mode pays for the import

    uri = urlparse(src)
    bucket = boto3.resource("s3").Bucket(uri.netloc)
    prefix = uri.path.lstrip("/")

    def retrieve(sink: BinaryIO) -> None:
        for obj in bucket.objects.filter(Prefix=prefix):
            bucket.download_fileobj(obj.key, sink)

    return retrieve


def run_pipe(channel: str, dest: str, epochs: int, retrieve: Callable[[BinaryIO], None]) -> None:
    os.makedirs(dest, exist_ok=True)
    for epoch in range(epochs):
        path = f"{dest}/{channel}_{epoch}"
        os.mkfifo(path)
        try:
            with open(path, mode="bw", buffering=0) as fifo:
                retrieve(fifo)
        finally:
            os.unlink(path)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["local", "gzip", "s3"])
    p.add_argument("channel")
    p.add_argument("src")
    p.add_argument("dest")
    p.add_argument("--epochs", type=int, required=True)
    a = p.parse_args()
    if a.mode == "s3":
        retrieve = s3_retriever(a.src)
    else:
        fn = local_retriever if a.mode == "local" else gzip_retriever
        src = a.src

        def retrieve(sink: BinaryIO) -> None:
            fn(src, sink)

    run_pipe(a.channel, a.dest, a.epochs, retrieve)


if __name__ == "__main__":
    main()
