"""Check which objects each host of a multi-host job was given, from the algorithms' output.

    python shares.py --channel-file config/sharded.yaml --map /data=examples/data \
        --hosts 3 --epochs 3 [--expect-reshuffle train] LOG_ALGO_1 LOG_ALGO_2 LOG_ALGO_3

Each LOG is one host's output of examples/algorithm/train.py run with SHOW_RECORDS=1:

    host=algo-2 hosts=algo-1,algo-2,algo-3
    record host=algo-2 channel=train epoch=0 index=0 bytes=134 sha256=<payload hex>
    channel=train epoch=0 bytes=636 records=4 sha256=<epoch hex>

(a compose log prefix `algo-2-1  | ` before each line is ignored). For every RecordIO channel in
Pipe mode the objects are identified by the sha256 of their payload, computed here from the
files (listing order as S3 would list them, gunzipped when CompressionType is Gzip),
independently of the sagemaker_pipe package. Per epoch:

- ShardedByS3Key: every object is given to exactly one host (the shares are disjoint and their
  union is all objects) and each host gets floor(M/N) or ceil(M/N) of the M objects; without
  ShuffleConfig each host's objects come in listing order and the assignment is the same in
  every epoch; `--expect-reshuffle CHANNEL` requires it to change in some epoch;
- FullyReplicated: every host gets every object exactly once (in listing order without ShuffleConfig).

Also: the logs name hosts algo-1..algo-N once each, every host saw the same host list, and each
epoch line's record count matches its record lines. Prints one line per channel epoch; exits 0
when every check holds, 1 otherwise (each failure on its own line).
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

import yaml

PREFIX = re.compile(r"^[^|]*\|\s?")  # compose's "service-1  | " log prefix
KV = re.compile(r"([a-z0-9_]+)=(\S+)")


def listing(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    found = [Path(d) / n for d, _, names in os.walk(root) for n in names if (Path(d) / n).is_file()]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix().encode("utf-8", "surrogateescape"))


def map_uri(uri: str, maps: list[tuple[str, str]], base: Path) -> Path:
    for prefix, host in maps:
        p = prefix.rstrip("/")
        if uri == p or uri.startswith(p + "/"):
            return Path(host.rstrip("/") + uri[len(p):])
    if "://" in uri:
        raise SystemExit(f"shares.py: no --map for {uri}")
    return Path(uri) if os.path.isabs(uri) else base / uri


def channel_objects(channel_file: Path, maps: list[tuple[str, str]]) -> dict[str, dict]:
    """RecordIO Pipe channels: distribution, shuffled or not, and the objects' (name, sha256) in listing order."""
    doc = yaml.safe_load(channel_file.read_text(encoding="utf-8"))
    channels = doc.get("InputDataConfig") if isinstance(doc, dict) else doc
    job_mode = doc.get("TrainingInputMode", "Pipe") if isinstance(doc, dict) else "Pipe"
    out = {}
    for ch in channels:
        s3 = ch["DataSource"]["S3DataSource"]
        if (ch.get("InputMode") or job_mode).lower() != "pipe" or ch.get("RecordWrapperType") != "RecordIO":
            continue
        if s3.get("S3DataType", "S3Prefix") != "S3Prefix":
            raise SystemExit(f"shares.py: {ch['ChannelName']}: only S3Prefix channels are supported")
        root = map_uri(s3["S3Uri"], maps, channel_file.resolve().parent)
        objects = []
        for path in listing(root):
            data = path.read_bytes()
            if ch.get("CompressionType", "None") == "Gzip":
                data = gzip.decompress(data)
            objects.append((path.relative_to(root).as_posix() if root.is_dir() else path.name,
                            hashlib.sha256(data).hexdigest()))
        if not objects:
            raise SystemExit(f"shares.py: {ch['ChannelName']}: no file below {root}")
        if len({h for _, h in objects}) != len(objects):
            raise SystemExit(f"shares.py: {ch['ChannelName']}: two objects have the same content")
        out[ch["ChannelName"]] = {
            "sharded": s3.get("S3DataDistributionType", "FullyReplicated") == "ShardedByS3Key",
            "shuffled": ch.get("ShuffleConfig") is not None,
            "objects": objects,
        }
    return out


def parse_log(text: str) -> tuple[str | None, list[str], dict, dict]:
    """(host, hosts, records[(channel, epoch)] -> [sha256...], epoch_counts[(channel, epoch)] -> records=)."""
    host, hosts = None, []
    records: dict[tuple[str, int], list[str]] = defaultdict(list)
    counts: dict[tuple[str, int], int] = {}
    for raw in text.splitlines():
        line = PREFIX.sub("", raw, count=1) if "|" in raw else raw
        kv = dict(KV.findall(line))
        if line.startswith("host="):
            host, hosts = kv["host"], kv["hosts"].split(",")
        elif line.startswith("record "):
            key = (kv["channel"], int(kv["epoch"]))
            if int(kv["index"]) != len(records[key]):
                raise SystemExit(f"shares.py: record lines of {key} out of order: {line}")
            records[key].append(kv["sha256"])
        elif line.startswith("channel=") and "records" in kv:
            counts[(kv["channel"], int(kv["epoch"]))] = int(kv["records"])
    return host, hosts, records, counts


def check(channels: dict[str, dict], logs: dict[str, str], n_hosts: int, epochs: int,
          reshuffle: set[str]) -> list[str]:
    problems: list[str] = []
    names = [f"algo-{i}" for i in range(1, n_hosts + 1)]
    parsed = {}
    for label, text in logs.items():
        host, hosts, records, counts = parse_log(text)
        if host is None:
            problems.append(f"{label}: no host= line (was SHOW_RECORDS=1 set?)")
            continue
        if host in parsed:
            problems.append(f"{label}: host {host} appears in two logs")
        if hosts != names:
            problems.append(f"{label}: {host} sees hosts {hosts}, expected {names}")
        parsed[host] = (records, counts)
    if sorted(parsed) != sorted(names):
        problems.append(f"logs name hosts {sorted(parsed)}, expected {names}")
        return problems
    for name, ch in channels.items():
        objects = ch["objects"]
        by_hash = {h: o for o, h in objects}
        order = [h for _, h in objects]
        assignments = []
        for epoch in range(epochs):
            shares = {}
            for host in names:
                records, counts = parsed[host]
                got = records.get((name, epoch), [])
                if counts.get((name, epoch)) != len(got):
                    problems.append(f"{name} epoch {epoch} {host}: epoch line says records="
                                    f"{counts.get((name, epoch))}, {len(got)} record lines")
                unknown = [h for h in got if h not in by_hash]
                if unknown:
                    problems.append(f"{name} epoch {epoch} {host}: {len(unknown)} records match no object")
                shares[host] = got
                if not ch["shuffled"] and got != [h for h in order if h in got]:
                    problems.append(f"{name} epoch {epoch} {host}: objects not in listing order (no ShuffleConfig)")
            everything = Counter(h for got in shares.values() for h in got)
            if ch["sharded"]:
                twice = sorted(by_hash.get(h, h) for h, c in everything.items() if c > 1)
                missing = sorted(o for o, h in objects if h not in everything)
                low, high = len(objects) // n_hosts, -(-len(objects) // n_hosts)
                if twice:
                    problems.append(f"{name} epoch {epoch}: shares overlap: {', '.join(twice)}")
                if missing:
                    problems.append(f"{name} epoch {epoch}: no host got {', '.join(missing)}")
                for host, got in shares.items():
                    if not low <= len(got) <= high:
                        problems.append(f"{name} epoch {epoch} {host}: {len(got)} objects, expected {low} to {high}")
                verdict = "disjoint, union = all" if not twice and not missing else "WRONG"
            else:
                for host, got in shares.items():
                    if Counter(got) != Counter(order):
                        problems.append(f"{name} epoch {epoch} {host}: not every object exactly once "
                                        f"(FullyReplicated)")
                verdict = "every host got all"
            assignments.append({host: frozenset(got) for host, got in shares.items()})
            detail = "; ".join(f"{host}: {' '.join(by_hash.get(h, '?') for h in got) or '-'}"
                               for host, got in shares.items())
            print(f"{name} epoch {epoch} ({len(objects)} objects, {verdict}): {detail}")
        if ch["sharded"] and len(assignments) > 1:
            changes = any(a != assignments[0] for a in assignments[1:])
            if not ch["shuffled"] and changes:
                problems.append(f"{name}: assignment changes between epochs without ShuffleConfig")
            if name in reshuffle and not changes:
                problems.append(f"{name}: the same assignment in every epoch despite ShuffleConfig")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--channel-file", type=Path, required=True)
    ap.add_argument("--map", action="append", default=[], help="URI_PREFIX=HOST_DIR")
    ap.add_argument("--hosts", type=int, required=True)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--expect-reshuffle", action="append", default=[], metavar="CHANNEL")
    ap.add_argument("logs", nargs="+", type=Path)
    args = ap.parse_args(argv)
    maps = [tuple(m.split("=", 1)) for m in args.map]
    channels = channel_objects(args.channel_file, maps)  # type: ignore[arg-type]
    if not channels:
        print("shares: no RecordIO Pipe channel to check", file=sys.stderr)
        return 1
    logs = {str(p): p.read_text(encoding="utf-8", errors="replace") for p in args.logs}
    problems = check(channels, logs, args.hosts, args.epochs, set(args.expect_reshuffle))
    for p in problems:
        print(f"shares: FAIL {p}", file=sys.stderr)
    if not problems:
        print(f"shares: {len(channels)} channels x {args.epochs} epochs on {args.hosts} hosts: all shares right",
              file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
