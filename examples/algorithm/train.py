#!/usr/bin/env python3
"""A tiny Pipe-mode "algorithm": reads EPOCHS epochs of every Pipe channel and prints what it got.

Standard library only, so it runs in any Python image. For each channel and epoch it prints
`channel=<name> epoch=<n> bytes=<b> records=<r> sha256=<hex>` (records only for RecordIO
channels) and exits 0; it exits 1 if its config file or a FIFO does not appear within WAIT_S seconds.

With SHOW_RECORDS=1 it also says which host it is (`host=<name> hosts=<a,b,...>`, from
resourceconfig.json) and, before each RecordIO channel's epoch line, prints one line per record:
`record host=<name> channel=<name> epoch=<n> index=<i> bytes=<b> sha256=<hex of the payload>`;
with one record per object this tells which objects the host was given.

As a SageMaker training image it also leaves a model: /opt/ml/model/model.json (what it read,
when that folder exists, as under `sagemaker-pipe run --image`). With FAILURE=text it writes
that text to /opt/ml/output/failure (SageMaker's failure reason) and exits EXIT_CODE (default 1).

With WRITE_MODEL=1 it also writes its lines to /opt/ml/model/<host>.txt, then waits (up to WAIT_S)
until every host has written its own: the SageMaker SDK's local mode shares /opt/ml/model between
hosts and stops all of them as soon as one exits.
"""

import hashlib
import json
import os
import struct
import sys
import time

ML_ROOT = os.environ.get("ML_ROOT") or os.environ.get("SAGEMAKER_BASE_DIR", "/opt/ml")  # the latter: under `run`
EPOCHS = int(os.environ.get("EPOCHS", "3"))
WAIT_S = float(os.environ.get("WAIT_S", "60"))
SHOW_RECORDS = os.environ.get("SHOW_RECORDS", "") not in ("", "0")
WRITE_MODEL = os.environ.get("WRITE_MODEL", "") not in ("", "0")
FAILURE = os.environ.get("FAILURE")
MAGIC = 0xCED7230A


def wait_for(path: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            sys.exit(f"train.py: {path} did not appear within {WAIT_S:.0f} s")
        time.sleep(0.05)


def count_records(data: bytes) -> int:
    """Walk the RecordIO framing as a consumer would; fail loudly on a broken stream."""
    pos = count = 0
    while pos < len(data):
        magic, word = struct.unpack_from("<II", data, pos)
        if magic != MAGIC:
            sys.exit(f"train.py: bad RecordIO magic at byte {pos}")
        length = word & ((1 << 29) - 1)
        pos += 8 + length + (-length % 4)
        count += 1
    return count


def payloads(data: bytes) -> list[bytes]:
    """The payload of every record (the stream is checked by count_records first)."""
    out, pos = [], 0
    while pos < len(data):
        length = struct.unpack_from("<I", data, pos + 4)[0] & ((1 << 29) - 1)
        out.append(data[pos + 8 : pos + 8 + length])
        pos += 8 + length + (-length % 4)
    return out


def main() -> None:
    config = os.path.join(ML_ROOT, "input", "config", "inputdataconfig.json")
    wait_for(config)
    with open(config) as f:
        channels = json.load(f)
    pipes = sorted(name for name, c in channels.items() if c["TrainingInputMode"].lower() == "pipe")
    host, hosts, lines = "", [], []
    if SHOW_RECORDS or WRITE_MODEL:
        resource = os.path.join(ML_ROOT, "input", "config", "resourceconfig.json")
        wait_for(resource)
        with open(resource) as f:
            cluster = json.load(f)
        host, hosts = cluster["current_host"], cluster["hosts"]
    if SHOW_RECORDS:
        print(f"host={host} hosts={','.join(hosts)}", flush=True)
    seen = []
    for epoch in range(EPOCHS):
        for name in pipes:
            path = os.path.join(ML_ROOT, "input", "data", f"{name}_{epoch}")
            wait_for(path)
            with open(path, "rb") as fifo:
                data = fifo.read()
            records = f" records={count_records(data)}" if channels[name]["RecordWrapperType"] == "RecordIO" else ""
            if SHOW_RECORDS and records:
                for i, payload in enumerate(payloads(data)):
                    print(f"record host={host} channel={name} epoch={epoch} index={i} bytes={len(payload)} "
                          f"sha256={hashlib.sha256(payload).hexdigest()}", flush=True)
            digest = hashlib.sha256(data).hexdigest()
            lines.append(f"channel={name} epoch={epoch} bytes={len(data)}{records} sha256={digest}")
            print(lines[-1], flush=True)
            seen.append({"channel": name, "epoch": epoch, "bytes": len(data), "sha256": digest})
    model = os.path.join(ML_ROOT, "model")
    if os.path.isdir(model) and os.access(model, os.W_OK):
        with open(os.path.join(model, "model.json"), "w") as f:
            json.dump({"host": host or None, "epochs": seen}, f, indent=1)
    if WRITE_MODEL:
        write_model(host, hosts, lines)
    if FAILURE is not None:
        with open(os.path.join(ML_ROOT, "output", "failure"), "w") as f:
            f.write(FAILURE)
        sys.exit(int(os.environ.get("EXIT_CODE", "1")))


def write_model(host: str, hosts: list, lines: list) -> None:
    model = os.path.join(ML_ROOT, "model")
    with open(os.path.join(model, f".{host}.txt"), "w") as f:
        f.write("".join(line + "\n" for line in lines))
    os.replace(os.path.join(model, f".{host}.txt"), os.path.join(model, f"{host}.txt"))
    for other in hosts:
        wait_for(os.path.join(model, f"{other}.txt"))


if __name__ == "__main__":
    main()
