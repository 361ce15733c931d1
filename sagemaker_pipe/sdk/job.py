"""sagemaker-pipe's part of one local training job, whichever SDK runs it.

The SDK has laid out `<root>/<host>/input` (bind-mounted at /opt/ml/input) and written its
compose file; `PipeJob.start` then, before `docker compose up`:
  - writes every host's inputdataconfig.json with SageMaker's keys for every channel;
  - host mode: starts one engine per host on the host itself. Its ml-root is a private folder
    whose `input/data` is a link to the SDK's `<root>/<host>/input/data`, so the FIFOs land where
    the algorithm sees them and the engine's own config files never touch the SDK's;
  - sidecar mode: adds one sagemaker-pipe service per host to the compose file, sharing a data
    volume with the host's algorithm service, which waits for its health check;
  - watches for a failed data stream. On one it kills the algorithm services first, so the
    held-open FIFO never ends as a clean EOF, and the job fails with the engine's error line.
`PipeJob.finish` (when compose returns, or anything raises) stops the engines (sidecar mode:
`docker compose down --volumes`) and removes its own folder: nothing outlives the SDK's call.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from sagemaker_pipe.errors import PipeError
from sagemaker_pipe.layout import CONTAINER_CONFIG, CONTAINER_STATUS_FILE, DEFAULT_ML_ROOT, Layout, make_dirs
from sagemaker_pipe.sdk.channels import ChannelSplit
from sagemaker_pipe.supervise import Engine, first_failure, read_status

log = logging.getLogger("sagemaker_pipe.sdk")
READY_TIMEOUT_S = 600.0  # File-mode copies and the first FIFOs, per engine
WATCH_INTERVAL_S = 0.2
COMPOSE_TIMEOUT_S = 60.0
SIDECAR_SUFFIX = "-sagemaker-pipe"
DATA_VOLUME_SUFFIX = "-pipe-data"
SIDECAR_STATUS = PurePosixPath(CONTAINER_STATUS_FILE)  # the image's status file, in a folder we mount
CONTAINER_DATA = Layout.under(DEFAULT_ML_ROOT).data_dir  # /opt/ml/input/data, inside the containers
HEALTHCHECK = {
    "test": ["CMD", "python", "-m", "sagemaker_pipe", "status"],
    "interval": "2s", "timeout": "10s", "retries": 3, "start_period": "60s",
}


class DataStreamFailed(PipeError, RuntimeError):
    """A channel could not be streamed: the job failed, and the algorithm never saw a clean end of epoch."""


def aws_env(boto_session: Any, s3_endpoint_url: str | None) -> dict[str, str]:
    """The session's credentials, region and S3 endpoint, as the engine's environment."""
    env: dict[str, str] = {}
    creds = boto_session.get_credentials() if boto_session is not None else None
    if creds is not None:
        frozen = creds.get_frozen_credentials()
        env["AWS_ACCESS_KEY_ID"] = frozen.access_key
        env["AWS_SECRET_ACCESS_KEY"] = frozen.secret_key
        if frozen.token:
            env["AWS_SESSION_TOKEN"] = frozen.token
    region = getattr(boto_session, "region_name", None)
    if region:
        env["AWS_REGION"] = env["AWS_DEFAULT_REGION"] = region
    endpoint = s3_endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3")
    if endpoint:
        env["AWS_ENDPOINT_URL_S3"] = endpoint
    return env


class PipeJob:
    """Engines (or sidecar services) for every host of one job, their failure watch and their cleanup."""

    def __init__(self, split: ChannelSplit, hosts: Sequence[str], root: str | os.PathLike[str], *,
                 aws: Mapping[str, str], sidecar_image: str | None = None) -> None:
        self.split = split
        self.hosts = list(hosts)
        self.root = Path(root)
        self.aws = dict(aws) if split.uses_s3 else {}
        self.sidecar_image = sidecar_image
        self.work = Path(tempfile.mkdtemp(prefix="sagemaker-pipe-sdk-"))
        self.channel_file = self.work / "channels.json"
        self.channel_file.write_text(json.dumps(split.engine_doc, indent=2))
        self.channel_file.chmod(0o644)
        self.engines: dict[str, Engine] = {}
        self.error: str | None = None
        self._done = threading.Event()
        self._watcher: threading.Thread | None = None
        self._compose: list[str] = []

    # -- before `docker compose up`
    def start(self, compose: dict[str, Any], compose_file: Path, compose_cmd: Sequence[str]) -> dict[str, Any]:
        """Config files, then the engines or sidecar services; returns the compose document to run."""
        for host in self.hosts:
            layout = Layout.under(self.root / host)
            layout.write_config("inputdataconfig.json", self.split.input_data_config)
            make_dirs(layout.data_dir)  # SDK v3 makes no per-host data folder
        if not self.split.served:
            return compose
        self._compose = [*compose_cmd, "-f", str(compose_file)]
        if self.sidecar_image:
            compose = with_sidecars(compose, self)
            compose_file.write_text(yaml.dump(compose, default_flow_style=False))
        else:
            self._start_engines()
        self._watcher = threading.Thread(target=self._watch, name="sagemaker-pipe-watch", daemon=True)
        self._watcher.start()
        return compose

    def _start_engines(self) -> None:
        env = {**os.environ, **self.aws}
        for host in self.hosts:
            ml_root = self.work / host
            engine_side = Layout.under(ml_root)  # its data folder is the one the container mounts
            engine_side.input_dir.mkdir(parents=True)
            engine_side.data_dir.symlink_to(Layout.under(self.root / host).data_dir)
            self.engines[host] = Engine.start(self.channel_file, ml_root, hosts=self.hosts, current_host=host,
                                              env=env)
        for engine in self.engines.values():
            engine.wait_ready(READY_TIMEOUT_S)

    # -- while the algorithms run
    def _watch(self) -> None:
        while not self._done.wait(WATCH_INTERVAL_S):
            error = self._failure()
            if error is not None:
                self.error = error
                log.error("sagemaker-pipe: %s; stopping the algorithm containers", error)
                self._kill_algorithms()
                return

    def _failure(self) -> str | None:
        error = first_failure(list(self.engines.values()))
        for host in self.hosts if self.sidecar_image and error is None else ():
            status = read_status(self.status_dir(host) / SIDECAR_STATUS.name)
            if status.get("state") == "failed":
                return str(status.get("error") or "a data stream failed")
        return error

    def _kill_algorithms(self) -> None:
        self._run_compose("kill", *self.hosts)

    def _run_compose(self, *args: str) -> None:
        try:
            subprocess.run([*self._compose, *args], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                           timeout=COMPOSE_TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            log.error("sagemaker-pipe: docker compose %s failed (%s)", args[0], e)

    # -- after `docker compose up`, or when anything raised
    def finish(self) -> None:
        """Stop the engines and the watch, remove our folder. Safe to call more than once."""
        self._done.set()
        if self._watcher is not None:
            self._watcher.join()
        for host, engine in list(self.engines.items()):
            status, error = engine.stop()
            if error is not None and self.error is None:
                self.error = error
            elif status != 0 and self.error is None:
                self.error = f"the sagemaker-pipe engine for host {host} exited with status {status}"
            del self.engines[host]
        if self.sidecar_image and self._compose:  # the sidecars, and the volumes holding FIFOs and copies
            self._run_compose("down", "--volumes", "--timeout", "10")
            self._compose = []
        shutil.rmtree(self.work, ignore_errors=True)

    def check(self) -> None:
        """Raise the engine's one-line error if a data stream failed."""
        if self.error is not None:
            raise DataStreamFailed(self.error)

    def status_dir(self, host: str) -> Path:
        return self.work / "status" / host


def with_sidecars(compose: dict[str, Any], job: PipeJob) -> dict[str, Any]:
    """The SDK's compose document plus one sagemaker-pipe service per host, each algorithm waiting for it.

    The pair shares a named volume at /opt/ml/input/data (over the SDK's bind of the host's
    `input`): FIFOs made there live inside Docker's own file system, which is what Docker Desktop
    needs. The volume starts as the image's folder, owned by the image's user.
    """
    services = dict(compose["services"])
    volumes = dict(compose.get("volumes") or {})
    image = job.sidecar_image
    assert image is not None
    for host in job.hosts:
        sidecar = host + SIDECAR_SUFFIX
        data = host + DATA_VOLUME_SUFFIX
        volumes[data] = {}
        status = job.status_dir(host)
        status.mkdir(parents=True)
        status.chmod(0o777)  # written by the image's user
        environment = {
            "SAGEMAKER_PIPE_HOSTS": ",".join(job.hosts),
            "SAGEMAKER_PIPE_CURRENT_HOST": host,
            "SAGEMAKER_PIPE_HOLD_ON_FAILURE": "1",
            **job.aws,
        }
        services[sidecar] = {
            "image": image,
            "environment": [f"{k}={v}" for k, v in environment.items()],
            "volumes": [
                f"{job.channel_file}:{CONTAINER_CONFIG}:ro",
                f"{data}:{CONTAINER_DATA}",
                f"{status}:{SIDECAR_STATUS.parent}",
                *(f"{src}:{src}:ro" for src in job.split.local_sources),
            ],
            "healthcheck": HEALTHCHECK,
            "stop_signal": "SIGTERM",
            "stop_grace_period": "10s",
        }
        if "networks" in services[host]:
            services[sidecar]["networks"] = list(services[host]["networks"])
        algorithm = dict(services[host])
        algorithm["volumes"] = [*algorithm["volumes"], f"{data}:{CONTAINER_DATA}"]
        algorithm["depends_on"] = {sidecar: {"condition": "service_healthy"}}
        services[host] = algorithm
    return {**compose, "services": services, "volumes": volumes}
