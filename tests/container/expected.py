"""Expected bytes of every channel epoch, computed on the host.

    PYTHONPATH=REPO python expected.py --channel-file config/compose.yaml \
        --map /data=examples/data --epochs 3

prints one line per channel and epoch: ``<channel> <epoch> <bytes> <sha256>``.

``--map PREFIX=HOST_DIR`` translates the channel file's URIs (as the sidecar
container sees them: ``/data/train``, ``s3://bucket/train/``) into host paths.

The bytes are computed here, independently of the sagemaker_pipe package,
following shared/PIPE_MODE.md section 3 for S3Prefix channels: every regular
file below the root in ascending UTF-8 byte order of its relative path, each
gunzipped when ``CompressionType: Gzip``, each wrapped as one RecordIO record
when ``RecordWrapperType: RecordIO``. Only the order of a shuffled channel's
objects (``ShuffleConfig``: a permutation the spec leaves to the implementation)
is taken from the package's own planner (``sagemaker_pipe.plan``), and this
script checks that it is a permutation of the listing and that unshuffled
channels keep the listing order. Manifests and sharding over several hosts are
refused, so that a silent mismatch is impossible.

    python expected.py --can-read-s3 REPO

exits 0 when the sagemaker_pipe package in REPO has S3 support.
"""
from __future__ import annotations

import argparse
import copy
import gzip
import hashlib
import os
import struct
import sys
from pathlib import Path

import yaml

RECORDIO_MAGIC = 0xCED7230A


def channels_of(doc) -> list[dict]:
    if isinstance(doc, dict):
        doc = doc.get("InputDataConfig")
    if not isinstance(doc, list):
        raise SystemExit("expected.py: channel file has no list of channels")
    return doc


def map_uri(uri: str, maps: list[tuple[str, str]], base: Path) -> Path:
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    for prefix, host in maps:
        p = prefix.rstrip("/")
        if uri == p or uri.startswith(p + "/"):
            return Path(host.rstrip("/") + uri[len(p):])
    if "://" in uri:
        raise SystemExit(f"expected.py: no --map for {uri}")
    return Path(uri) if os.path.isabs(uri) else base / uri


def listing(root: Path) -> list[Path]:
    """Regular files below root, in the order S3 would list the same tree."""
    if root.is_file():
        return [root]
    found = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            if path.is_file():
                found.append(path)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix().encode("utf-8", "surrogateescape"))


def recordio(payload: bytes) -> bytes:
    if len(payload) >= 1 << 29:
        raise SystemExit("expected.py: payload too large for one RecordIO record")
    return struct.pack("<II", RECORDIO_MAGIC, len(payload)) + payload + b"\0" * (-len(payload) % 4)


def package_orders(doc, hosts_doc: list[dict], base: Path, epochs: int) -> dict[str, list[list[Path]]]:
    """The package's object order per channel and epoch, for the same channels on host paths."""
    from sagemaker_pipe.config import parse_job
    from sagemaker_pipe.plan import plan_job

    doc = copy.deepcopy(doc)
    if isinstance(doc, dict):
        doc["InputDataConfig"] = hosts_doc
    else:
        doc = hosts_doc
    out = {}
    for plan in plan_job(parse_job(doc, base_dir=base, source="expected.py")):
        orders = []
        for n in range(epochs):
            order = []
            for unit in plan.epoch(n):
                if len(unit.parts) != 1:
                    raise SystemExit(f"expected.py: {plan.channel.name}: units of several parts not supported")
                order.append(Path(unit.parts[0].uri))
            orders.append(order)
        out[plan.channel.name] = orders
    return out


def expected_lines(channel_file: Path, maps: list[tuple[str, str]], epochs: int) -> list[str]:
    doc = yaml.safe_load(channel_file.read_text(encoding="utf-8"))
    base = channel_file.resolve().parent
    channels = channels_of(doc)
    if isinstance(doc, dict) and doc.get("ResourceConfig"):
        raise SystemExit("expected.py: ResourceConfig (several hosts) is not supported")
    host_channels, roots = [], {}
    for ch in channels:
        ch = copy.deepcopy(ch)
        s3 = ch["DataSource"]["S3DataSource"]
        name = ch["ChannelName"]
        if s3.get("S3DataType", "S3Prefix") != "S3Prefix":
            raise SystemExit(f"expected.py: {name}: S3DataType {s3['S3DataType']} is not supported")
        roots[name] = map_uri(s3["S3Uri"], maps, base)
        s3["S3Uri"] = str(roots[name])
        host_channels.append(ch)
    orders = package_orders(doc, host_channels, base, epochs)

    lines = []
    for ch in channels:
        name = ch["ChannelName"]
        mode = ch.get("InputMode") or (doc.get("TrainingInputMode") if isinstance(doc, dict) else None) or "Pipe"
        if mode.lower() != "pipe":
            continue
        files = listing(roots[name])
        if not files:
            raise SystemExit(f"expected.py: {name}: no file below {roots[name]}")
        gz = ch.get("CompressionType", "None") == "Gzip"
        rio = ch.get("RecordWrapperType", "None") == "RecordIO"
        payload = {}
        for path in files:
            data = path.read_bytes()
            data = gzip.decompress(data) if gz else data
            payload[path.resolve()] = recordio(data) if rio else data
        for n in range(epochs):
            order = [p.resolve() for p in orders[name][n]]
            if sorted(order) != sorted(payload):
                raise SystemExit(f"expected.py: {name}: the package's epoch {n} is not a permutation of the listing")
            if not ch.get("ShuffleConfig") and order != [p.resolve() for p in files]:
                raise SystemExit(f"expected.py: {name}: the package's epoch {n} is not in listing order")
            data = b"".join(payload[p] for p in order)
            lines.append(f"{name} {n} {len(data)} {hashlib.sha256(data).hexdigest()}")
    return lines


def can_read_s3(repo: Path) -> bool:
    return (repo / "sagemaker_pipe" / "sources" / "s3.py").is_file()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--channel-file", type=Path)
    ap.add_argument("--map", action="append", default=[], help="URI_PREFIX=HOST_DIR")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--can-read-s3", metavar="REPO", type=Path)
    args = ap.parse_args()
    if args.can_read_s3:
        return 0 if can_read_s3(args.can_read_s3) else 1
    maps = [tuple(m.split("=", 1)) for m in args.map]
    print("\n".join(expected_lines(args.channel_file, maps, args.epochs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
