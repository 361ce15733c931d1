"""Container test: a real SDK v2 `Estimator.fit()` in local mode on 2 instances, Pipe channels from sagemaker-pipe.

    <sdk v2 venv>/bin/python sdk_fit.py --image ALGO --data examples/data --root DIR [--sidecar-image IMG]

Run by tests/container/run.sh against its private Docker engine, with the repository on
PYTHONPATH and `docker compose` on PATH. The example algorithm (examples/algorithm, WRITE_MODEL=1)
reads 2 epochs of `train` (fully replicated, RecordIO) and `sharded` (ShardedByS3Key, RecordIO)
from the FIFOs on each host and writes its lines into /opt/ml/model. Checks: fit() returns; the
model.tar.gz holds every host's file; each host's `train` epochs are byte-exact; each epoch the
hosts' `sharded` records add up to every object. Exit 0 when all hold, else 1 with the reason.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import struct
import sys
import tarfile
from pathlib import Path

EPOCHS = 2
LINE = re.compile(r"channel=(\S+) epoch=(\d+) bytes=(\d+) records=(\d+) sha256=([0-9a-f]{64})")


def recordio(payload: bytes) -> bytes:
    return struct.pack("<II", 0xCED7230A, len(payload)) + payload + b"\0" * (-len(payload) % 4)


def objects(folder: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted(folder.rglob("*"), key=lambda p: p.relative_to(folder).as_posix())
            if p.is_file()]


def fit(args: argparse.Namespace) -> Path:
    import boto3
    from sagemaker.estimator import Estimator
    from sagemaker.inputs import TrainingInput

    from sagemaker_pipe.sdk import PipeLocalSession

    no_telemetry = {"SchemaVersion": "1.0", "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}}}
    session = PipeLocalSession(boto_session=boto3.Session(region_name="us-east-1"), sagemaker_config=no_telemetry,
                               sidecar_image=args.sidecar_image)
    # The example algorithm runs as uid 1001; the SDK's model folder is root's.
    session.config = {"local": {"local_code": True, "container_root": str(args.root),
                                "container_config": {"user": "0:0"}}}
    estimator = Estimator(
        image_uri=args.image, role="arn:aws:iam::123456789012:role/SageMakerRole", instance_count=2,
        instance_type="local", input_mode="Pipe", sagemaker_session=session,
        environment={"EPOCHS": str(EPOCHS), "WRITE_MODEL": "1"}, output_path=f"file://{args.root}/output",
    )
    estimator.fit({
        "train": TrainingInput((args.data / "train").as_uri(), record_wrapping="RecordIO"),
        "sharded": TrainingInput((args.data / "sharded" / "train").as_uri(), distribution="ShardedByS3Key",
                                 record_wrapping="RecordIO"),
    }, logs=False)
    return Path(estimator.model_data.removeprefix("file://"))


def check(model_tar: Path, data: Path) -> list[str]:
    problems = []
    with tarfile.open(model_tar) as tar:
        hosts = {Path(m.name).stem: tar.extractfile(m).read().decode() for m in tar.getmembers()  # type: ignore[union-attr]
                 if m.name.endswith(".txt")}
    if len(hosts) != 2:
        return [f"model.tar.gz holds {sorted(hosts)}, expected one file per host (2)"]
    train = b"".join(recordio(o) for o in objects(data / "train"))
    sharded = objects(data / "sharded" / "train")
    got = {host: {(m[1], int(m[2])): m for m in LINE.finditer(text)} for host, text in hosts.items()}
    for epoch in range(EPOCHS):
        for host, lines in got.items():
            m = lines.get(("train", epoch))
            if m is None or (int(m[3]), m[5]) != (len(train), hashlib.sha256(train).hexdigest()):
                problems.append(f"{host}: train epoch {epoch} is not byte-exact ({m and m[0]})")
        records = sum(int(lines[("sharded", epoch)][4]) for lines in got.values() if ("sharded", epoch) in lines)
        if records != len(sharded):
            problems.append(f"sharded epoch {epoch}: the hosts got {records} records, expected {len(sharded)}")
    return problems


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--image", required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--sidecar-image")
    args = p.parse_args()
    args.root.mkdir(parents=True, exist_ok=True)
    model_tar = fit(args)
    problems = [f"no model artifacts at {model_tar}"] if not model_tar.is_file() else check(model_tar, args.data)
    leftovers = [str(p) for p in args.root.rglob("*") if p.is_fifo()]
    if leftovers:
        problems.append(f"FIFOs left: {leftovers}")
    for line in problems:
        print(f"sdk_fit: {line}", file=sys.stderr)
    print(f"sdk_fit: fit() returned, {model_tar} ({os.path.getsize(model_tar)} bytes)" if not problems else
          "sdk_fit: FAILED")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
