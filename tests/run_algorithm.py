"""A training algorithm for tests of `sagemaker-pipe run`: SageMaker's contract, driven by environment.

It finds its root as the SageMaker training toolkit does (SAGEMAKER_BASE_DIR, else /opt/ml), reads
EPOCHS epochs of every Pipe channel named in inputdataconfig.json, and treats EOF as the end of
an epoch, as a naive algorithm would. Each epoch read becomes a JSON line in RESULTS:
{"channel", "epoch", "bytes", "sha256"}; the first line says {"job", "argv", "hosts"}.

    HOOK_AFTER=N HOOK=truncate:PATH:SIZE | killpg:PID   act once N bytes of the first epoch are read
    MODEL=text / OUTPUT=text      written to model/model.txt and output/data/out.txt
    FAILURE=text                  written to output/failure
    EXIT=n / SIGNAL=n             how it ends: exit status n, or killed by signal n
    IGNORE_TERM=1                 ignore SIGTERM; HANG=1: never end by itself (after reading)
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import time


def main() -> None:
    root = os.environ.get("SAGEMAKER_BASE_DIR", "/opt/ml")
    env = os.environ
    if env.get("IGNORE_TERM"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    results = open(env["RESULTS"], "a", buffering=1)  # noqa: SIM115 (kept open for the whole run)
    with open(os.path.join(root, "input", "config", "inputdataconfig.json")) as f:
        channels = json.load(f)
    with open(os.path.join(root, "input", "config", "resourceconfig.json")) as f:
        resources = json.load(f)
    results.write(json.dumps({"job": env.get("TRAINING_JOB_NAME"), "argv": sys.argv[1:],
                              "host": resources["current_host"], "hosts": resources["hosts"]}) + "\n")
    hook_after = int(env.get("HOOK_AFTER", "-1"))
    pipes = sorted(n for n, c in channels.items() if c["TrainingInputMode"] == "Pipe")
    for epoch in range(int(env.get("EPOCHS", "1"))):
        for name in pipes:
            digest, total = hashlib.sha256(), 0
            with open(os.path.join(root, "input", "data", f"{name}_{epoch}"), "rb") as fifo:
                while chunk := fifo.read(1 << 16):
                    digest.update(chunk)
                    total += len(chunk)
                    if 0 <= hook_after <= total:
                        hook(env["HOOK"])
                        hook_after = -1
            results.write(json.dumps({"channel": name, "epoch": epoch, "bytes": total,
                                      "sha256": digest.hexdigest()}) + "\n")
    for key, path in (("MODEL", ("model", "model.txt")), ("OUTPUT", ("output", "data", "out.txt")),
                      ("FAILURE", ("output", "failure"))):
        if key in env:
            with open(os.path.join(root, *path), "w") as f:
                f.write(env[key])
    while env.get("HANG"):
        time.sleep(0.1)
    if env.get("SIGNAL"):
        os.kill(os.getpid(), int(env["SIGNAL"]))
    sys.exit(int(env.get("EXIT", "0")))


def hook(spec: str) -> None:
    kind, _, arg = spec.partition(":")
    if kind == "truncate":
        path, _, size = arg.rpartition(":")
        os.truncate(path, int(size))
    elif kind == "killpg":
        os.killpg(int(arg), signal.SIGKILL)


if __name__ == "__main__":
    main()
