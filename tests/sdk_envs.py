"""A cached venv per SageMaker SDK, installed from PyPI by pip: the two SDKs cannot share one environment.

    ~/.cache/sagemaker-pipe-tests/sdk-v2-sagemaker-2.257.7-py311/bin/python

The folder's name holds the pinned versions and the Python version, so a new pin gets a new venv.
It is built under a temporary name and renamed when complete (parallel runs take a lock), and the
install time is kept in `install-seconds` inside it. A failed install raises SdkInstallError, which
says whether the cause looks like the network (the tests then skip, unless CI or REQUIRE_SDK_TESTS
is set); any other pip failure fails them. `python sdk_envs.py v2` prints the venv's python
(tests/container/run.sh uses it; exit 77 on a network failure).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

PINS = {"v2": ["sagemaker==2.257.7"], "v3": ["sagemaker-train==1.27.0"]}
CACHE = Path(os.environ.get("SAGEMAKER_PIPE_SDK_CACHE") or Path.home() / ".cache" / "sagemaker-pipe-tests")
INSTALL_TIMEOUT_S = 1200
NETWORK_HINTS = ("Could not find a version", "No matching distribution", "NewConnectionError", "ConnectTimeout",
                 "Max retries exceeded", "Temporary failure in name resolution", "Network is unreachable",
                 "ReadTimeoutError", "ProxyError")


class SdkInstallError(Exception):
    def __init__(self, message: str, network: bool) -> None:
        super().__init__(message)
        self.network = network


def required() -> bool:
    """CI (or REQUIRE_SDK_TESTS) must run the SDK tests: a network failure fails them there."""
    flag = os.environ.get("REQUIRE_SDK_TESTS") or os.environ.get("CI") or ""
    return flag.strip().lower() in ("1", "true", "yes")


def sdk_python(kind: str) -> Path:
    """The python of the cached venv holding SDK `kind` ("v2" or "v3"), made on first use."""
    pins = PINS[kind]
    name = f"sdk-{kind}-{'-'.join(p.replace('==', '-') for p in pins)}-py{sys.version_info[0]}{sys.version_info[1]}"
    venv = CACHE / name
    python = venv / "bin" / "python"
    if python.exists():
        return python
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if python.exists():  # made by another run while this one waited
            return python
        building = CACHE / f"{name}.building"
        shutil.rmtree(building, ignore_errors=True)
        started = time.monotonic()
        subprocess.run([sys.executable, "-m", "venv", str(building)], check=True)
        pip = subprocess.run([str(building / "bin" / "python"), "-m", "pip", "install", "-q", *pins],
                             capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
        if pip.returncode != 0:
            shutil.rmtree(building, ignore_errors=True)
            last = (pip.stderr.strip().splitlines() or ["no output"])[-1]
            raise SdkInstallError(f"pip install {' '.join(pins)} failed: {last}",
                                  network=any(hint in pip.stderr for hint in NETWORK_HINTS))
        seconds = time.monotonic() - started
        (building / "install-seconds").write_text(f"{seconds:.1f}\n")
        os.rename(building, venv)
        print(f"\n[sdk_envs] installed {' '.join(pins)} in {seconds:.0f} s into {venv}", file=sys.stderr)
    return python


if __name__ == "__main__":
    try:
        print(sdk_python(sys.argv[1]))
    except SdkInstallError as e:
        print(e, file=sys.stderr)
        sys.exit(77 if e.network else 1)
