"""`sagemaker-pipe compose`: a compose file for one training job on several hosts.

    sagemaker-pipe compose --hosts 3 --algorithm-image IMAGE > docker-compose.hosts.yml

prints a Docker Compose file with one algorithm container and one sidecar per host. Without
--hosts the hosts come from the channel file's ResourceConfig (InstanceCount, or InstanceGroups:
see config.parse_cluster), and each sidecar derives the same cluster from the file. Host i
(`algo-i`, as SageMaker names them) is the algorithm service `algo-i` (hostname `algo-i` on the
network `sagemaker`, started as SageMaker starts a training image: `IMAGE train`) and the sidecar
`algo-i-sidecar`; the pair shares the named volume `algo-i-input` at /opt/ml/input, and the
algorithm has volumes of its own for /opt/ml/model and /opt/ml/output (`algo-i-model`,
`algo-i-output`). Every sidecar reads the same channel file (bind-mounted
read-only at /config/channels.yaml) and is told the host list and its own name
(SAGEMAKER_PIPE_CURRENT_HOST, and SAGEMAKER_PIPE_HOSTS with --hosts), so it writes that host's
resourceconfig.json and streams that host's share of every ShardedByS3Key channel. Each
algorithm starts once its sidecar is healthy.

Paths in the channel file are the ones the sidecar container sees: local channels must live
under /data, where `--data DIR` is mounted read-only (as in docker-compose.yml and
config/compose.yaml). The channel file is validated, and every local channel checked to exist
under DIR, before anything is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import posixpath
import re
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from sagemaker_pipe.config import Channel, Job, parse_job, read_document
from sagemaker_pipe.errors import ConfigError
from sagemaker_pipe.layout import CONTAINER_CONFIG, DEFAULT_ML_ROOT, Layout
from sagemaker_pipe.options import PROG, Parser

DEFAULT_CHANNELS = "config/sharded.yaml"
DEFAULT_DATA = "examples/data"
DEFAULT_SIDECAR_IMAGE = "sagemaker-pipe:local"
DEFAULT_PROJECT = "sagemaker-pipe-hosts"
NETWORK = "sagemaker"
CONTAINER_DATA = "/data"
ML = Layout.under(DEFAULT_ML_ROOT)  # the paths inside the containers
INPUT = str(ML.input_dir)
TRAIN_COMMAND = ["train"]  # SageMaker runs `docker run IMAGE train`
MAX_HOSTS = 100
# Passed through to the sidecars (from the shell running compose) when a channel reads s3://.
AWS_VARIABLES = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE",
)
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
PROJECT_RE = re.compile(r"[a-z0-9][a-z0-9_-]*")
IMAGE_RE = re.compile(r"[^\s]+")


def host_names(count: int) -> list[str]:
    return [f"algo-{i}" for i in range(1, count + 1)]


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog=f"{PROG} compose",
        description="Print a Docker Compose file running one job on N hosts: per host an algorithm "
        "container (hostname algo-i) and a sagemaker-pipe sidecar sharing its /opt/ml/input.",
        epilog="Paths in the channel file are as the sidecars see them: local channels under /data.",
    )
    p.add_argument("--hosts", metavar="N", help="number of hosts (algo-1 ... algo-N; default: the channel file's "
                   "ResourceConfig, InstanceCount or InstanceGroups)")
    p.add_argument("--algorithm-image", metavar="IMAGE", help="the training image to run on every host (default: "
                   "the channel file's AlgorithmSpecification.TrainingImage, which from-job keeps)")
    p.add_argument("--algorithm-command", metavar="CMD", help="the algorithm containers' command, as a JSON list or "
                   "one word (default [\"train\"], as SageMaker starts training images)")
    p.add_argument("--channels", default=DEFAULT_CHANNELS, metavar="FILE",
                   help=f"channel file, mounted read-only into every sidecar (default {DEFAULT_CHANNELS})")
    p.add_argument("--data", metavar="DIR",
                   help=f"host folder mounted read-only at /data in every sidecar (default {DEFAULT_DATA}; "
                   "only mounted when a channel reads a local path)")
    p.add_argument("--sidecar-image", default=DEFAULT_SIDECAR_IMAGE, metavar="IMAGE",
                   help=f"sagemaker-pipe image (default {DEFAULT_SIDECAR_IMAGE}, which docker-compose.yml builds)")
    p.add_argument("--env", "-e", action="append", default=[], metavar="KEY=VALUE",
                   help="environment variable for every algorithm container (repeatable)")
    p.add_argument("--project-name", default=DEFAULT_PROJECT, metavar="NAME",
                   help=f"compose project name written into the file (default {DEFAULT_PROJECT})")
    return p


def compose_main(argv: list[str]) -> int:
    """`sagemaker-pipe compose ...`: print the compose file on stdout."""
    args = build_parser().parse_args(argv)
    doc = build_compose(
        hosts=_count(args.hosts) if args.hosts is not None else None,
        algorithm_image=args.algorithm_image,
        algorithm_command=parse_command(args.algorithm_command),
        channels=Path(args.channels),
        data=Path(args.data) if args.data is not None else None,
        sidecar_image=args.sidecar_image,
        algorithm_env=parse_env(args.env),
        project=args.project_name,
    )
    print(render(doc, argv), end="")
    return 0


def build_compose(
    hosts: int | None,
    algorithm_image: str | None,
    channels: Path,
    data: Path | None = None,
    sidecar_image: str = DEFAULT_SIDECAR_IMAGE,
    algorithm_env: dict[str, str] | None = None,
    project: str = DEFAULT_PROJECT,
    algorithm_command: list[str] | None = None,
) -> dict[str, Any]:
    """The compose document (a plain dict) for `hosts` hosts, None: the file's ResourceConfig; inputs checked first."""
    if hosts is not None and not 1 <= hosts <= MAX_HOSTS:
        raise ConfigError(f"compose: --hosts must be 1 to {MAX_HOSTS} (got {hosts})")
    check_project(project)
    given = host_names(hosts) if hosts is not None else None
    job = _container_job(channels, given)
    names = given if given is not None else list(job.hosts)
    if len(names) > MAX_HOSTS:
        raise ConfigError(f"compose: the channel file's ResourceConfig has {len(names)} hosts; at most {MAX_HOSTS}")
    job_channels = list(job.channels)
    algorithm_image = algorithm_image or job.training_image
    if algorithm_image is None:
        raise ConfigError("compose: give --algorithm-image IMAGE (the channel file has no "
                          "AlgorithmSpecification.TrainingImage)")
    for what, image in (("--algorithm-image", algorithm_image), ("--sidecar-image", sidecar_image)):
        if not IMAGE_RE.fullmatch(image):
            raise ConfigError(f"compose: {what} must be an image name (got {image!r})")
    local = [c for c in job_channels if not c.uri.startswith("s3://")]
    uses_s3 = len(local) < len(job_channels)
    data_dir = _data_dir(data, local)

    mounts: list[dict[str, Any]] = [_bind(channels, CONTAINER_CONFIG)]
    if data_dir is not None:
        mounts.append(_bind(data_dir, CONTAINER_DATA))

    services: dict[str, Any] = {}
    for host in names:
        sidecar = f"{host}-sidecar"
        volume = f"{host}-input"
        environment: dict[str, str | None] = {"SAGEMAKER_PIPE_CONFIG": CONTAINER_CONFIG}
        if hosts is not None:
            environment["SAGEMAKER_PIPE_HOSTS"] = ",".join(names)
        environment["SAGEMAKER_PIPE_CURRENT_HOST"] = host
        if uses_s3:
            environment.update(dict.fromkeys(AWS_VARIABLES))  # null: taken from the shell when set there
        services[host] = algorithm_service(
            host, algorithm_image, algorithm_command, algorithm_env,
            [_volume(volume, INPUT, read_only=True),
             _volume(f"{host}-model", str(ML.model_dir)), _volume(f"{host}-output", str(ML.output_dir))])
        services[host]["depends_on"] = {sidecar: {"condition": "service_healthy"}}
        services[sidecar] = {
            "image": sidecar_image,
            "environment": environment,
            "volumes": [*mounts, _volume(volume, INPUT)],
            # Local channels need no network; S3 channels use the project's default network.
            **({} if uses_s3 else {"network_mode": "none"}),
            # Nothing is written outside the shared volume and /tmp (status file).
            "read_only": True,
            "tmpfs": ["/tmp"],
            "healthcheck": {
                "test": ["CMD", "python", "-m", "sagemaker_pipe", "status"],
                "interval": "2s",
                "timeout": "10s",
                "retries": 3,
                "start_period": "60s",
            },
            "stop_signal": "SIGTERM",
            "stop_grace_period": "10s",
            # `docker compose up` shows (and waits for) the algorithms only.
            "attach": False,
        }
    return {
        "name": project,
        "services": services,
        "networks": {NETWORK: {}},
        "volumes": {f"{host}-{kind}": {} for host in names for kind in ("input", "model", "output")},
    }


def algorithm_service(host: str, image: str, command: list[str] | None, env: dict[str, str] | None,
                      volumes: list[dict[str, Any]]) -> dict[str, Any]:
    """Host `host`'s algorithm container, started as SageMaker starts a training image (`IMAGE train`).

    Shared with `run --image`, which mounts host folders instead of named volumes.
    """
    return {
        "image": image,
        "command": list(command or TRAIN_COMMAND),
        "hostname": host,
        "networks": [NETWORK],
        "volumes": volumes,
        **({"environment": dict(env)} if env else {}),
    }


def parse_command(text: str | None) -> list[str] | None:
    """--algorithm-command: a JSON list of strings, or one word."""
    if text is None:
        return None
    if text.lstrip().startswith("["):
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"--algorithm-command must be a JSON list of strings or one word (got {text!r})")
        return value
    if not text.strip() or any(c.isspace() for c in text):
        raise ConfigError(f"--algorithm-command must be a JSON list of strings or one word (got {text!r})")
    return [text]


def check_project(project: str) -> None:
    if not PROJECT_RE.fullmatch(project):
        raise ConfigError(f"compose: --project-name must be lower-case letters, digits, '-' and '_' (got {project!r})")


def render(doc: dict[str, Any], argv: list[str] | None = None) -> str:
    """YAML with a comment saying how it was made and how to run it."""
    command = " ".join(["sagemaker-pipe", "compose", *map(_quote, argv or [])])
    algos = [name for name in doc["services"] if not name.endswith("-sidecar")]
    header = (
        f"# Generated by: {command}\n"
        f"# One SageMaker training job on {len(algos)} hosts ({', '.join(algos)}): per host an algorithm\n"
        "# container and a sagemaker-pipe sidecar sharing its /opt/ml/input volume.\n"
        "#   docker compose -f THIS_FILE up --abort-on-container-failure\n"
        "#       # shows the algorithms; returns when all have exited, non-zero as soon as one fails.\n"
        "#       # A sidecar whose data stream fails exits 1, which `up` does not watch (docs/run.md);\n"
        "#       # `sagemaker-pipe run --image IMAGE --hosts N` fails the job on it.\n"
        "#   docker compose -f THIS_FILE down -v # stops the sidecars, removes the volumes\n"
    )
    return header + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120)


class _Dumper(yaml.SafeDumper):
    """Safe YAML without anchors (every service spells out its own mounts); short lists on one line."""

    def ignore_aliases(self, data: Any) -> bool:
        return True

    def represent_list(self, data: Any) -> yaml.Node:
        flow = all(isinstance(item, (str, int, float, bool)) for item in data)
        return self.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _Dumper.represent_list)


def _container_job(path: Path, hosts: list[str] | None) -> Job:
    """The channel file validated as the sidecars will read it: relative paths against /config."""
    doc = read_document(path)
    if hosts is None and not (isinstance(doc, dict) and "ResourceConfig" in doc):
        raise ConfigError(f"compose: give --hosts N, or a ResourceConfig (InstanceCount or InstanceGroups) in {path}")
    base = PurePosixPath(CONTAINER_CONFIG).parent
    return parse_job(doc, base_dir=Path(base), source=str(path), hosts=hosts)


def _data_dir(data: Path | None, local: list[Channel]) -> Path | None:
    """The host folder behind /data, checked against every local channel; None when none is local."""
    if not local:
        return None
    folder = data if data is not None else Path(DEFAULT_DATA)
    if not folder.is_dir():
        hint = "" if data is not None else " (give --data DIR: the host folder the sidecars see as /data)"
        raise ConfigError(f"compose: data folder {folder} is not a folder{hint}")
    for c in local:
        uri = posixpath.normpath(c.uri)
        if uri != CONTAINER_DATA and not uri.startswith(CONTAINER_DATA + "/"):
            raise ConfigError(
                f"compose: channel {c.name!r}: local S3Uri is {uri} in the sidecar containers (relative paths "
                f"start from {posixpath.dirname(CONTAINER_CONFIG)}), outside {CONTAINER_DATA}: the sidecars see "
                f"only {CONTAINER_DATA} (--data DIR), so give paths below it, as they see them"
            )
        on_host = folder / uri[len(CONTAINER_DATA):].lstrip("/")
        if not on_host.exists():
            raise ConfigError(f"compose: channel {c.name!r}: {c.uri} would be {on_host}, which does not exist")
    return folder


def _bind(path: Path, target: str) -> dict[str, Any]:
    return {"type": "bind", "source": os.path.abspath(path), "target": target, "read_only": True}


def _volume(name: str, target: str, read_only: bool = False) -> dict[str, Any]:
    return {"type": "volume", "source": name, "target": target, **({"read_only": True} if read_only else {})}


def _count(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"compose: --hosts must be a whole number (got {value!r})") from None


def parse_env(items: list[str]) -> dict[str, str]:
    """-e KEY=VALUE options (compose, run --image)."""
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not ENV_NAME_RE.fullmatch(key):
            raise ConfigError(f"compose: --env must be KEY=VALUE (got {item!r})")
        env[key] = value
    return env


def _quote(arg: str) -> str:
    arg = " ".join(arg.splitlines())  # the command goes into a one-line comment
    return arg if re.fullmatch(r"[A-Za-z0-9_./:=,+-]+", arg) else "'" + arg.replace("'", "'\\''") + "'"
