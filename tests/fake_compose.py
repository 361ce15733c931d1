"""A stand-in for `docker compose` (SAGEMAKER_PIPE_COMPOSE) that plays each service as a host process.

Only what `sagemaker-pipe run --image` uses: `-p P -f FILE up --abort-on-container-failure`,
`ps -a --format json` and `down`. A service's image is a Python script, run as `python IMAGE
COMMAND...` with SAGEMAKER_BASE_DIR set to the host folder its /opt/ml/... bind mounts come from
(all four must share it: that checks the mounts); its environment is the service's. As compose
does, `up` stops every service once one fails, and on SIGTERM stops them all (SIGTERM, the
service's stop_grace_period, SIGKILL); exit codes are kept, docker-style (128+N for signal N),
in FILE.state.json for `ps`. The real thing runs in tests/container/run.sh.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

TARGETS = {"/opt/ml/input": "input", "/opt/ml/model": "model", "/opt/ml/output": "output",
           "/opt/ml/checkpoints": "checkpoints"}


def main(argv: list[str]) -> int:
    project = argv[argv.index("-p") + 1]
    file = Path(argv[argv.index("-f") + 1])
    state = Path(f"{file}.state.json")
    if "up" in argv:
        return up(yaml.safe_load(file.read_text()), project, state, "--abort-on-container-failure" in argv)
    if "ps" in argv:
        codes = json.loads(state.read_text()) if state.exists() else {}
        for service, code in codes.items():
            print(json.dumps({"Service": service, "Project": project, "State": "exited", "ExitCode": code}))
        return 0
    if "down" in argv:
        state.unlink(missing_ok=True)
        return 0
    print(f"fake_compose: unsupported command {argv}", file=sys.stderr)
    return 2


def up(doc: dict, project: str, state: Path, abort_on_failure: bool) -> int:
    assert doc["name"] == project, (doc["name"], project)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    procs: dict[str, subprocess.Popen[bytes]] = {}
    graces = {}
    for name, service in doc["services"].items():
        roots = {Path(v["source"]).parent for v in service["volumes"]}
        names = {v["target"]: Path(v["source"]).name for v in service["volumes"]}
        assert len(roots) == 1 and names == TARGETS, service["volumes"]
        assert [v.get("read_only", False) for v in service["volumes"]] == [True, False, False, False]
        assert service["hostname"] == name and service["networks"] == ["sagemaker"]
        env = dict(os.environ, **service.get("environment", {}), SAGEMAKER_BASE_DIR=str(roots.pop()))
        procs[name] = subprocess.Popen([sys.executable, service["image"], *service["command"]], env=env,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        graces[name] = float(service.get("stop_grace_period", "10s").rstrip("s"))
    codes: dict[str, int] = {}
    while len(codes) < len(procs):
        for name, p in procs.items():
            if name not in codes and p.poll() is not None:
                codes[name] = 128 - p.returncode if p.returncode < 0 else p.returncode
                state.write_text(json.dumps(codes))
        if stopping or (abort_on_failure and any(codes.values())):
            for p in procs.values():
                if p.poll() is None:
                    p.terminate()
            deadline = time.monotonic() + max(graces.values())
            while any(p.poll() is None for p in procs.values()) and time.monotonic() < deadline:
                time.sleep(0.05)
            for p in procs.values():
                if p.poll() is None:
                    p.kill()
                p.wait()
            stopping.clear()
            abort_on_failure = False
        time.sleep(0.05)
    return 1 if any(codes.values()) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
