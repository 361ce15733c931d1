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
"""

import hashlib
import json
import os
import struct
import sys
import time

ML_ROOT = os.environ.get("ML_ROOT", "/opt/ml")
EPOCHS = int(os.environ.get("EPOCHS", "3"))
WAIT_S = float(os.environ.get("WAIT_S", "60"))
SHOW_RECORDS = os.environ.get("SHOW_RECORDS", "") not in ("", "0")
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
    host = ""
    if SHOW_RECORDS:
        resource = os.path.join(ML_ROOT, "input", "config", "resourceconfig.json")
        wait_for(resource)
        with open(resource) as f:
            cluster = json.load(f)
        host = cluster["current_host"]
        print(f"host={host} hosts={','.join(cluster['hosts'])}", flush=True)
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
            print(f"channel={name} epoch={epoch} bytes={len(data)}{records} "
                  f"sha256={hashlib.sha256(data).hexdigest()}", flush=True)
            seen.append({"channel": name, "epoch": epoch, "bytes": len(data),
                         "sha256": hashlib.sha256(data).hexdigest()})
    model = os.path.join(ML_ROOT, "model")
    if os.path.isdir(model) and os.access(model, os.W_OK):
        with open(os.path.join(model, "model.json"), "w") as f:
            json.dump({"host": host or None, "epochs": seen}, f, indent=1)
    if FAILURE is not None:
        with open(os.path.join(ML_ROOT, "output", "failure"), "w") as f:
            f.write(FAILURE)
        sys.exit(int(os.environ.get("EXIT_CODE", "1")))


if __name__ == "__main__":
    main()
