"""`run --image`: the algorithm as a container per host on the local Docker engine, through compose.

The engines run here, on this machine (one per host's ml-root); each host's algorithm service
(compose.algorithm_service, as `sagemaker-pipe compose` makes it) bind-mounts that host's
input/, model/, output/ and checkpoints/ at /opt/ml/... and starts as `IMAGE train`. FIFOs work
across a bind mount on Linux (one kernel); Docker Desktop's file sharing does not carry them.

The compose command is `docker compose`, or SAGEMAKER_PIPE_COMPOSE (for example the path of a
docker-compose v2 binary). `up --abort-on-container-failure` stops every host once one fails,
as SageMaker fails the whole job; each host's exit status then comes from `ps`.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from sagemaker_pipe.compose import ML as CONTAINER
from sagemaker_pipe.compose import NETWORK, algorithm_service, check_project
from sagemaker_pipe.errors import ConfigError
from sagemaker_pipe.layout import Layout, write_atomic
from sagemaker_pipe.supervise import Engine, watch

COMPOSE_ENV = "SAGEMAKER_PIPE_COMPOSE"
DOWN_TIMEOUT_S = 120
STOP_MARGIN_S = 15.0  # beyond the containers' grace, for compose itself to stop them


def compose_command() -> list[str]:
    text = os.environ.get(COMPOSE_ENV, "").strip()
    return shlex.split(text) if text else ["docker", "compose"]


def compose_doc(hosts: Sequence[tuple[str, Layout]], image: str, command: list[str] | None,
                env: dict[str, str], project: str, grace: float) -> dict[str, Any]:
    """Per host: the algorithm service with that host's folders mounted at /opt/ml/..."""
    check_project(project)
    services = {}
    for name, layout in hosts:
        mounts = [(layout.input_dir, CONTAINER.input_dir, True), (layout.model_dir, CONTAINER.model_dir, False),
                  (layout.output_dir, CONTAINER.output_dir, False),
                  (layout.checkpoints_dir, CONTAINER.checkpoints_dir, False)]
        volumes = [{"type": "bind", "source": str(src), "target": str(dst), **({"read_only": True} if ro else {})}
                   for src, dst, ro in mounts]
        service = algorithm_service(name, image, command, env, volumes)
        service["stop_grace_period"] = f"{grace:g}s"
        services[name] = service
    return {"name": project, "services": services, "networks": {NETWORK: {}}}


def run_hosts(hosts: Sequence[tuple[str, Layout]], image: str, command: list[str] | None, env: dict[str, str], *,
              project: str, grace: float, engines: Sequence[Engine], stop: Callable[[], bool],
              compose_file: Path) -> tuple[dict[str, int], str | None]:
    """Run every host's container until all have exited (or one failed, or a stream failed, or a stop).

    Returns (exit status per host, the first stream failure or None); the containers are removed.
    """
    doc = compose_doc(hosts, image, command, env, project, grace)
    write_atomic(compose_file, yaml.safe_dump(doc, sort_keys=False))  # kept: the job, as compose ran it
    base = [*compose_command(), "-p", project, "-f", str(compose_file)]
    try:
        up = subprocess.Popen([*base, "up", "--abort-on-container-failure"], stdin=subprocess.DEVNULL,
                              start_new_session=True)
    except OSError as e:
        raise ConfigError(f"run: cannot start {base[0]} ({e.strerror}): install Docker Compose v2, or set "
                          f"{COMPOSE_ENV} to its command") from None
    try:
        _, failure = watch(engines, up, grace=grace + STOP_MARGIN_S, stop_requested=stop)
        statuses = _exit_statuses(base)
    finally:
        subprocess.run([*base, "down", "--remove-orphans", "--timeout", "0"], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=DOWN_TIMEOUT_S, check=False)
    return statuses, failure


def _exit_statuses(base: list[str]) -> dict[str, int]:
    """Each service's exit code from `compose ps -a --format json` (JSON lines, or one array in older versions)."""
    done = subprocess.run([*base, "ps", "-a", "--format", "json"], stdin=subprocess.DEVNULL, capture_output=True,
                          timeout=DOWN_TIMEOUT_S, check=False)
    text = done.stdout.decode("utf-8", "replace").strip()
    rows: list[Any] = []
    if text.startswith("["):
        rows = json.loads(text)
    else:
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return {str(r["Service"]): int(r.get("ExitCode", 1)) for r in rows if isinstance(r, dict) and "Service" in r}
