"""The algorithm sdk_docker.py plays for each host of an SDK local-mode job: a Pipe-mode reader.

Reads /opt/ml through the service's bind mounts (FAKE_MOUNTS, container path -> host path;
the longest prefix wins, as nested mounts do in a container). From its config files it reads, for
every Pipe channel, `epochs` epochs (hyperparameter, default 2) from the FIFOs `<ch>_<n>`, and for
every File channel the files below `<ch>/`; it writes what it got (sha256 per epoch and, for
RecordIO channels, per record payload; sha256 per file) to /opt/ml/model/<current_host>.json,
then waits (bounded) until every host has written its own: the SDK stops all hosts as soon as
one exits. Hyperparameter `fail` = 1 makes it exit 1 after reading.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time

import recordio  # tests/recordio.py: this script's folder is on sys.path

MOUNTS: dict[str, str] = json.loads(os.environ.get("FAKE_MOUNTS", "{}"))
WAIT_S = 30.0


def host_path(container: str) -> str:
    best = max((c for c in MOUNTS if container == c or container.startswith(c.rstrip("/") + "/")), key=len)
    return MOUNTS[best] + container[len(best):]


def read_json(container: str) -> dict:
    with open(host_path(container)) as f:
        return json.load(f)


def wait_for(path: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            sys.exit(f"sdk_algorithm: {path} did not appear")
        time.sleep(0.02)


def file_sha(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main() -> None:
    config = read_json("/opt/ml/input/config/inputdataconfig.json")
    resource = read_json("/opt/ml/input/config/resourceconfig.json")
    hyper = read_json("/opt/ml/input/config/hyperparameters.json")
    epochs = int(json.loads(hyper.get("epochs", "2")))
    host = resource["current_host"]
    got: dict = {"host": host, "hosts": resource["hosts"], "inputdataconfig": config, "pipe": {}, "files": {}}
    for name in sorted(n for n, c in config.items() if c["TrainingInputMode"] != "Pipe"):
        folder = host_path(f"/opt/ml/input/data/{name}")
        paths = [os.path.join(d, f) for d, _, files in os.walk(folder) for f in files]
        got["files"][name] = {os.path.relpath(p, folder): file_sha(p) for p in paths}
    pipes = sorted(n for n, c in config.items() if c["TrainingInputMode"] == "Pipe")
    for epoch in range(epochs):
        for name in pipes:
            path = host_path(f"/opt/ml/input/data/{name}_{epoch}")
            wait_for(path)
            with open(path, "rb") as fifo:
                data = fifo.read()
            entry = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            if config[name].get("RecordWrapperType") == "RecordIO":
                entry["records"] = [hashlib.sha256(p).hexdigest() for p in recordio.decode(data)]  # strict
            got["pipe"].setdefault(name, []).append(entry)
            print(f"read channel={name} epoch={epoch} bytes={len(data)}", flush=True)
    model = host_path("/opt/ml/model")
    with open(os.path.join(model, f".{host}.tmp"), "w") as f:
        json.dump(got, f)
    os.replace(os.path.join(model, f".{host}.tmp"), os.path.join(model, f"{host}.json"))
    if json.loads(hyper.get("fail", "0")):
        sys.exit("sdk_algorithm: failing on purpose")
    deadline = time.monotonic() + WAIT_S
    while not all(os.path.exists(os.path.join(model, f"{h}.json")) for h in resource["hosts"]):
        if time.monotonic() > deadline:
            sys.exit("sdk_algorithm: the other hosts did not finish")
        time.sleep(0.05)


if __name__ == "__main__":
    main()
