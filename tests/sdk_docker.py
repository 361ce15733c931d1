"""A stand-in for the `docker` command the SageMaker SDKs' local mode runs, for tests without Docker.

    docker compose version                       -> a v2 version line (the SDKs look for "v2")
    docker compose -f FILE up ... --abort-on-container-exit
    docker compose -f FILE kill [SERVICE...]
    docker compose -f FILE down ...              -> removes the named volumes
    docker images -q IMAGE                       -> nothing (no image is present)
    docker pull IMAGE                            -> fails: nothing can be pulled

`up` plays every service of the SDK's compose file as a host process:
  - an algorithm service (any other image) runs tests/sdk_algorithm.py, which reads /opt/ml paths
    through the service's bind mounts (FAKE_MOUNTS: container path -> host path, longest prefix wins);
  - the service whose image is $FAKE_DOCKER_SIDECAR_IMAGE plays the sagemaker-pipe image: the real
    entrypoint.py, with the image's environment, in a folder of symlinks standing for its file system;
  - an image named `missing/...` cannot be pulled: `up` fails before starting anything.
`depends_on: {S: {condition: service_healthy}}` waits for S's health check (run for real);
`--abort-on-container-exit` stops every service when one exits and exits with its status, as
compose v2 does. Service pids are kept next to the compose file for `kill`; named volumes are
folders next to it until `down`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
ALGORITHM = TESTS / "sdk_algorithm.py"
# The sagemaker-pipe image's environment (Dockerfile ENV) and entry point.
IMAGE_ENV = {
    "SAGEMAKER_PIPE_CONFIG": "/config/channels.yaml",
    "SAGEMAKER_PIPE_ML_ROOT": "/opt/ml",
    "SAGEMAKER_PIPE_STATUS_FILE": "/tmp/sagemaker-pipe/status.json",
}
HEALTH_TIMEOUT_S = 60.0
STOP_GRACE_S = 10.0


def main(argv: list[str]) -> int:
    if argv[:2] == ["compose", "version"]:
        print("Docker Compose version v2.29.7")
        return 0
    if argv[:2] == ["images", "-q"]:
        return 0
    if argv[:1] == ["pull"]:
        print(f"Error response from daemon: pull access denied for {argv[1]}", file=sys.stderr)
        return 1
    if argv[:1] == ["compose"] and "-f" in argv:
        i = argv.index("-f")
        compose_file, rest = Path(argv[i + 1]), argv[i + 2:]
        if rest[:1] == ["up"]:
            if "--detach" in rest:
                print("sdk_docker: --detach is not played", file=sys.stderr)
                return 1
            return Up(compose_file).run()
        if rest[:1] == ["kill"]:
            return kill(compose_file, rest[1:])
        if rest[:1] == ["down"]:
            shutil.rmtree(volumes_dir(compose_file), ignore_errors=True)
            return 0
    print(f"sdk_docker: unsupported command: docker {' '.join(argv)}", file=sys.stderr)
    return 1


def volumes_dir(compose_file: Path) -> Path:
    return compose_file.parent / ".fake-docker-volumes"


def pids_file(compose_file: Path) -> Path:
    return compose_file.with_name(compose_file.name + ".fake-pids.json")


def kill(compose_file: Path, services: list[str]) -> int:
    try:
        pids = json.loads(pids_file(compose_file).read_text())
    except (OSError, ValueError):
        return 0
    for name, pid in pids.items():
        if not services or name in services:
            _signal_group(pid, signal.SIGKILL)
    return 0


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def _env_dict(environment: Any) -> dict[str, str]:
    if isinstance(environment, dict):
        return {str(k): str(v) for k, v in environment.items() if v is not None}
    return dict(item.split("=", 1) for item in environment or [])


def _mounts(service: dict[str, Any], volumes: Path) -> dict[str, str]:
    """container path -> host path for every mount (`host:container[:mode]`; a named volume is a folder)."""
    out = {}
    for volume in service.get("volumes", []):
        source, container = volume.split(":")[:2]
        out[container] = source if source.startswith("/") else str(volumes / source)
    return out


class Up:
    def __init__(self, compose_file: Path) -> None:
        self.file = compose_file
        self.doc = yaml.safe_load(compose_file.read_text())
        self.procs: dict[str, subprocess.Popen] = {}
        self.farm = compose_file.parent / ".fake-docker"
        self.sidecar_image = os.environ.get("FAKE_DOCKER_SIDECAR_IMAGE", "")
        self.lock = threading.Lock()

    def run(self) -> int:
        services = self.doc["services"]
        for svc in services.values():
            if str(svc.get("image", "")).startswith("missing/"):
                print(f"Error response from daemon: pull access denied for {svc['image']}", flush=True)
                return 1
        try:
            order = self._start_order(services)
            for name in order:
                for dep, cond in (services[name].get("depends_on") or {}).items():
                    if cond.get("condition") == "service_healthy" and not self._healthy(dep, services[dep]):
                        print(f"dependency failed to start: container {dep} is unhealthy", flush=True)
                        return 1
                self._start(name, services[name])
            return self._wait_first_exit()
        finally:
            self._stop_all()
            pids_file(self.file).unlink(missing_ok=True)

    @staticmethod
    def _start_order(services: dict[str, Any]) -> list[str]:
        order: list[str] = []
        while len(order) < len(services):
            for name, svc in services.items():
                if name not in order and all(d in order for d in (svc.get("depends_on") or {})):
                    order.append(name)
        return order

    def _start(self, name: str, svc: dict[str, Any]) -> None:
        for host in _mounts(svc, volumes_dir(self.file)).values():
            if not os.path.exists(host):
                os.makedirs(host)  # as docker does for a missing bind source
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FAKE_", "SAGEMAKER_PIPE_"))}
        if svc.get("image") == self.sidecar_image:
            root = self._sidecar_farm(name, svc)
            env.update({k: str(root) + v for k, v in IMAGE_ENV.items()})
            env.update(_env_dict(svc.get("environment")))
            env["PYTHONPATH"] = str(REPO)
            argv = [sys.executable, str(REPO / "entrypoint.py")]
        else:
            env.update(_env_dict(svc.get("environment")))
            env["FAKE_MOUNTS"] = json.dumps(_mounts(svc, volumes_dir(self.file)))
            env["FAKE_SERVICE"] = name
            argv = [sys.executable, str(ALGORITHM), *([svc["command"]] if "command" in svc else [])]
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
        with self.lock:
            self.procs[name] = proc
            pids_file(self.file).write_text(json.dumps({n: p.pid for n, p in self.procs.items()}))
        threading.Thread(target=self._pump, args=(name, proc), daemon=True).start()

    def _sidecar_farm(self, name: str, svc: dict[str, Any]) -> Path:
        """A folder standing for the container's file system: each mount a symlink, each tmpfs a folder."""
        root = self.farm / name
        for container, host in sorted(_mounts(svc, volumes_dir(self.file)).items()):
            link = root / container.lstrip("/")
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(host)
        for tmpfs in svc.get("tmpfs", []):
            (root / tmpfs.split(":")[0].lstrip("/")).mkdir(parents=True, exist_ok=True)
        return root

    def _healthy(self, name: str, svc: dict[str, Any]) -> bool:
        test = svc["healthcheck"]["test"]
        assert test[0] == "CMD" and test[1] == "python", test
        proc = self.procs[name]
        env = {**os.environ, **{k: str(self.farm / name) + v for k, v in IMAGE_ENV.items()}, "PYTHONPATH": str(REPO)}
        deadline = time.monotonic() + HEALTH_TIMEOUT_S
        while time.monotonic() < deadline and proc.poll() is None:
            if subprocess.run([sys.executable, *test[2:]], env=env, capture_output=True).returncode == 0:
                return True
            time.sleep(0.2)
        return False

    def _pump(self, name: str, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(f"{name}  | {line.decode(errors='replace')}")
            sys.stdout.flush()

    def _wait_first_exit(self) -> int:
        while True:
            with self.lock:
                for name, proc in self.procs.items():
                    if (code := proc.poll()) is not None:
                        print(f"{name} exited with code {code}", flush=True)
                        print("Aborting on container exit...", flush=True)
                        return code
            time.sleep(0.05)

    def _stop_all(self) -> None:
        with self.lock:
            procs = list(self.procs.values())
        for proc in procs:
            if proc.poll() is None:
                _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait()
        shutil.rmtree(self.farm, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
