"""Shared helpers for the S3 channel tests (test_s3_channels.py, test_s3_faults.py, test_sharding.py).

Independent of the sagemaker_pipe package, like conftest.py: the sidecar only ever runs as a
subprocess (``python -m sagemaker_pipe``) with the environment of ``S3Server.child_env()``, and the
expected bytes of an epoch are built here from the objects the test put into the bucket, with the
stdlib's gzip and tests/recordio.py.

* :class:`ModuleBuckets` -- one seeded bucket per server and test module (first PUTs into a new
  SeaweedFS bucket are slow, so a module seeds its data once and its tests share it).
* :class:`JobRunner` (each test module's ``s3_jobs`` fixture) -- write a channel file, start the sidecar with
  ``--epochs N`` plus one consumer process per channel that saves every epoch's bytes, then
  collect and check the results. Every process belongs to conftest's ``procs`` registry, so it is
  killed at teardown; every wait is bounded.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import random
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import recordio
from conftest import ERROR_PREFIX, base_env, channel, pattern, sha, write_channel_file
from s3_servers import S3Server, empty_and_delete_bucket

MIB = 1 << 20
EPOCHS = 3
SERVERS = {"moto": "moto_s3", "seaweedfs": "seaweed_s3"}  # a test's server name -> its fixture


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------

def blob(seed: int, n: int) -> bytes:
    """Deterministic pseudo-random bytes (the same object on every run, so failures reproduce)."""
    return random.Random(seed).randbytes(n)


def gz(data: bytes, level: int = 6) -> bytes:
    """One gzip member with a fixed mtime (reproducible bytes)."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=level, mtime=0) as f:
        f.write(data)
    return buf.getvalue()


def gz_members(*parts: bytes) -> bytes:
    """A multi-member gzip stream: one member per part, concatenated."""
    return b"".join(gz(p) for p in parts)


def stream_of(payloads: Iterable[bytes], record_io: bool) -> bytes:
    """The epoch byte stream a consumer must see for these payloads, in this order."""
    payloads = list(payloads)
    if record_io:
        return b"".join(recordio.encode(p) for p in payloads)
    return b"".join(payloads)


def literal(value: Any) -> bytes:
    """An augmented-manifest attribute that is not a -ref: a string as UTF-8, else compact JSON."""
    if isinstance(value, str):
        return value.encode("utf-8")
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


def prefix_keys(objects: Mapping[str, bytes], prefix: str) -> list[str]:
    """What S3Prefix streams: keys starting with ``prefix`` (plain string match), folder markers
    (``/``-terminated, empty) skipped, in ascending UTF-8 byte order."""
    keys = [k for k, v in objects.items()
            if k.startswith(prefix) and not (k.endswith("/") and len(v) == 0)]
    return sorted(keys, key=lambda k: k.encode("utf-8"))


def jsonl(lines: Iterable[Mapping[str, Any]]) -> bytes:
    return "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode("utf-8")


def tagged_unit(i: int, size: int, seed: int = 0) -> bytes:
    """A self-identifying payload ``<uNNN>`` + filler without ``<``: a stream of such payloads can be
    cut back into its units (:func:`unit_order`) without RecordIO framing."""
    rng = random.Random(seed * 100_003 + i)
    filler = bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz0123456789,\n") for _ in range(size))
    return f"<u{i:03d}>".encode() + filler


_TAG = re.compile(rb"<u(\d{3})>")


def unit_order(data: bytes) -> list[int]:
    """The unit numbers of :func:`tagged_unit` payloads in the order they appear in ``data``."""
    return [int(m.group(1)) for m in _TAG.finditer(data)]


def put_objects(client: Any, bucket: str, objects: Mapping[str, bytes], threads: int = 8) -> None:
    """PUT every object (in parallel: seeding a thousand keys one by one is slow)."""
    items = list(objects.items())
    if len(items) <= 4:
        for key, body in items:
            client.put_object(Bucket=bucket, Key=key, Body=body)
        return
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda kv: client.put_object(Bucket=bucket, Key=kv[0], Body=kv[1]), items))


class ModuleBuckets:
    """One bucket per server, seeded on first use with ``objects_for(bucket_name)`` and emptied and
    deleted by :meth:`cleanup` (call it from a module-scoped fixture's teardown)."""

    def __init__(self, stem: str, objects_for: Callable[[str], Mapping[str, bytes]]) -> None:
        self.stem = re.sub(r"[^a-z0-9-]+", "-", stem.lower()).strip("-")[:40]
        self.objects_for = objects_for
        self._made: dict[int, tuple[S3Server, str, dict[str, bytes]]] = {}

    def get(self, server: S3Server) -> tuple[str, dict[str, bytes]]:
        """(bucket name, {key: bytes}) on this server."""
        made = self._made.get(id(server))
        if made is None:
            bucket = f"{self.stem}-{uuid.uuid4().hex[:12]}"
            objects = dict(self.objects_for(bucket))
            client = server.client()
            client.create_bucket(Bucket=bucket)
            put_objects(client, bucket, objects)
            made = self._made[id(server)] = (server, bucket, objects)
        return made[1], made[2]

    def cleanup(self) -> None:
        for server, bucket, _ in self._made.values():
            try:
                empty_and_delete_bucket(server.client(), bucket)
            except Exception:  # cleanup only
                pass
        self._made.clear()


# --------------------------------------------------------------------------------------------
# running the sidecar
# --------------------------------------------------------------------------------------------

def s3_env(server: S3Server, *, endpoint_url: str | None = None, **extra: str) -> dict[str, str]:
    """conftest's base environment (repo on PYTHONPATH, no SAGEMAKER_PIPE_*), with the AWS
    variables of ``server.child_env`` (every inherited AWS_* dropped), plus ``extra``."""
    env = server.child_env(endpoint_url=endpoint_url, base=base_env())
    env.update(extra)
    return env


@dataclass
class ChannelRead:
    """What the consumer of one channel read: per-epoch records and the bytes of each epoch."""

    results: list[dict]
    data: list[bytes]

    def check(self, expected: bytes | Sequence[bytes], name: str = "") -> None:
        """Every epoch exactly ``expected`` (one stream for all epochs, or one per epoch)."""
        per_epoch = [expected] * len(self.data) if isinstance(expected, bytes) else list(expected)
        assert len(per_epoch) == len(self.data)
        for n, (got, want) in enumerate(zip(self.data, per_epoch, strict=True)):
            assert self.results[n]["is_fifo"], f"{name} epoch {n}: not a FIFO"
            if got != want:
                raise AssertionError(
                    f"channel {name} epoch {n}: read {len(got)} bytes sha {sha(got)[:12]}, expected "
                    f"{len(want)} bytes sha {sha(want)[:12]}; first difference at byte "
                    f"{_first_difference(got, want)}")


def _first_difference(a: bytes, b: bytes) -> int:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return min(len(a), len(b))


@dataclass
class RunningJob:
    runner: JobRunner
    name: str
    ml_root: Path
    config: Path
    proc: Any
    consumers: dict[str, Any]
    out_dirs: dict[str, Path]
    epochs: int
    reads: dict[str, ChannelRead] = field(default_factory=dict)

    def finish(self, timeout: float = 45.0, expect_rc: int | None = 0) -> dict[str, ChannelRead]:
        """Wait (bounded) for every consumer and the sidecar; return each channel's reads."""
        deadline = time.monotonic() + timeout
        while any(c.alive() for c in self.consumers.values()) and time.monotonic() < deadline:
            rc = self.proc.poll()
            if rc is not None and rc != expect_rc and expect_rc is not None:
                time.sleep(0.5)  # let a consumer blocked on a vanished FIFO show up as such
                raise AssertionError(f"sidecar exited {rc} while its consumers still read; stderr:\n"
                                     f"{self.proc.stderr}")
            time.sleep(0.05)
        for ch, cons in self.consumers.items():
            try:
                results = cons.results(timeout)
            except AssertionError as e:
                raise AssertionError(f"{e}\nsidecar rc={self.proc.poll()} stderr:\n{self.proc.stderr}") from None
            data = [(self.out_dirs[ch] / f"epoch_{n}.bin").read_bytes() for n in range(self.epochs)]
            assert [r["epoch"] for r in results] == list(range(self.epochs)), results
            for r, d in zip(results, data, strict=True):
                assert r["bytes"] == len(d) and r["sha256"] == sha(d)
            self.reads[ch] = ChannelRead(results, data)
        rc = self.proc.wait(timeout)
        if expect_rc is not None:
            assert rc == expect_rc, f"sidecar exited {rc}, expected {expect_rc}; stderr:\n{self.proc.stderr}"
        assert "Traceback" not in self.proc.stderr, self.proc.stderr
        return self.reads

    def config_json(self, name: str) -> Any:
        return json.loads((self.ml_root / "input" / "config" / name).read_text())


class JobRunner:
    """Start sidecars with consumers for S3 channel tests (fixture ``s3_jobs``)."""

    def __init__(self, sidecar: Any, consumer: Any, tmp_path: Path) -> None:
        self.sidecar = sidecar
        self.consumer = consumer
        self.tmp_path = tmp_path
        self.count = 0

    def start(
        self, server: S3Server, channels: Sequence[dict] | dict, *, epochs: int = EPOCHS,
        read: Sequence[str] | None = None, args: Sequence[str] = (), endpoint_url: str | None = None,
        env: dict[str, str] | None = None, env_extra: Mapping[str, str] | None = None,
        name: str | None = None, consumer_timeout: float = 50.0,
    ) -> RunningJob:
        """Write the channel file (a channel list or a whole job document), start the sidecar for
        ``epochs`` epochs and one consumer per channel in ``read`` (default: every channel)."""
        self.count += 1
        name = name or f"job{self.count}"
        root = self.tmp_path / name
        doc = channels if isinstance(channels, dict) else {"InputDataConfig": list(channels)}
        config = write_channel_file(root / "channels.yaml", doc)
        ml_root = root / "ml"
        if env is None:
            env = s3_env(server, endpoint_url=endpoint_url, **dict(env_extra or {}))
        proc = self.sidecar.serve(config, ml_root, *args, epochs=epochs, env=env)
        names = list(read) if read is not None else [c["ChannelName"] for c in doc["InputDataConfig"]]
        consumers, out_dirs = {}, {}
        for ch in names:
            out_dirs[ch] = root / "read" / ch
            consumers[ch] = self.consumer(pattern(ml_root, ch), epochs, out=out_dirs[ch],
                                          wait=30.0, timeout=consumer_timeout)
        return RunningJob(self, name, ml_root, config, proc, consumers, out_dirs, epochs)

    def run(self, server: S3Server, channels: Sequence[dict] | dict, **kwargs: Any) -> dict[str, ChannelRead]:
        """:meth:`start` and :meth:`RunningJob.finish`: the sidecar must exit 0."""
        timeout = kwargs.pop("timeout", 45.0)
        return self.start(server, channels, **kwargs).finish(timeout)

    def fail(
        self, server: S3Server | None, channels: Sequence[dict] | dict, *, args: Sequence[str] = (),
        env: dict[str, str] | None = None, endpoint_url: str | None = None, timeout: float = 45.0,
        name: str | None = None,
    ) -> tuple[Any, Path]:
        """Run a job that must fail before streaming: returns (finished process, ml-root)."""
        self.count += 1
        name = name or f"fail{self.count}"
        root = self.tmp_path / name
        doc = channels if isinstance(channels, dict) else {"InputDataConfig": list(channels)}
        config = write_channel_file(root / "channels.yaml", doc)
        ml_root = root / "ml"
        if env is None:
            assert server is not None
            env = s3_env(server, endpoint_url=endpoint_url)
        proc = self.sidecar.serve(config, ml_root, *args, epochs=EPOCHS, env=env)
        proc.wait(timeout)
        return proc, ml_root


def server_for(request: Any, name: str) -> S3Server:
    """The S3 server fixture a test parametrized by server name ("moto", "seaweedfs") runs against."""
    server: S3Server = request.getfixturevalue(SERVERS[name])
    return server


def s3_channel(name: str, uri: str, data_type: str = "S3Prefix", *, gzip: bool = False,
               record_io: bool = False, **fields: Any) -> dict:
    """conftest.channel with the S3 data type and the gzip / RecordIO switches spelled out."""
    ch = channel(name, uri, s3_S3DataType=data_type, **fields)
    if gzip:
        ch["CompressionType"] = "Gzip"
    if record_io:
        ch["RecordWrapperType"] = "RecordIO"
    return ch


def error_lines(stderr: str) -> list[str]:
    """The ``sagemaker-pipe: error:`` lines of a stderr (info and warning lines may precede them)."""
    return [line for line in stderr.splitlines() if line.startswith(ERROR_PREFIX)]


def data_error_line(proc: Any) -> str:
    """A mid-epoch failure: exit 1, no traceback, exactly one error line, and it is the last line."""
    stderr = proc.stderr
    assert proc.poll() == 1, f"expected exit 1, got {proc.poll()}; stderr:\n{stderr}"
    assert "Traceback" not in stderr, stderr
    lines = error_lines(stderr)
    assert len(lines) == 1, f"expected one error line:\n{stderr}"
    assert [ln for ln in stderr.splitlines() if ln.strip()][-1] == lines[0], stderr
    return lines[0]


def decode_records(data: bytes) -> list[bytes]:
    return recordio.decode(data)


def tree_files(root: os.PathLike | str) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*"))
