"""Compare the algorithm's per-epoch report with the host's expectation.

    python compare.py EXPECTED ALGORITHM_LOG

EXPECTED holds lines ``<channel> <epoch> <bytes> <sha256>`` (expected.py).
In ALGORITHM_LOG every line with a sha256 (64 hex digits) is one channel epoch;
its channel, epoch and byte count are read from ``key=value`` words
(channel=, epoch=, bytes=) or else, in that order, from the other words of the
line. Exits 0 when both sets are equal, else prints the differences.
"""
from __future__ import annotations

import re
import sys

HEX64 = re.compile(r"\b[0-9a-f]{64}\b")


def parse_report(text: str) -> set[tuple[str, int, int, str]]:
    found = set()
    for line in text.splitlines():
        m = HEX64.search(line)
        if not m:
            continue
        digest = m.group(0)
        kv = dict(re.findall(r"([A-Za-z_]+)[=:]\s*([^\s,;]+)", line))
        low = {k.lower(): v for k, v in kv.items()}
        channel = low.get("channel")
        epoch = low.get("epoch")
        size = low.get("bytes") or low.get("size") or low.get("length")
        if channel is None or epoch is None or size is None:
            words = [w for w in re.split(r"[\s,;]+", HEX64.sub(" ", line)) if w]
            words = [w.split("=", 1)[-1] for w in words]
            nums = [w for w in words if w.isdigit()]
            names = [w for w in words if not w.isdigit()]
            channel = channel if channel is not None else (names[0] if names else "?")
            epoch = epoch if epoch is not None else (nums[0] if nums else "-1")
            size = size if size is not None else (nums[1] if len(nums) > 1 else "-1")
        found.add((channel, int(epoch), int(size), digest))
    return found


def main() -> int:
    expected_path, report_path = sys.argv[1:3]
    expected = set()
    with open(expected_path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                ch, n, size, digest = line.split()
                expected.add((ch, int(n), int(size), digest))
    with open(report_path, encoding="utf-8", errors="replace") as f:
        got = parse_report(f.read())
    if expected and got == expected:
        print(f"compare: {len(got)} channel epochs match", file=sys.stderr)
        return 0
    for item in sorted(expected - got):
        print("compare: missing or different:", *item, file=sys.stderr)
    for item in sorted(got - expected):
        print("compare: unexpected:", *item, file=sys.stderr)
    if not expected:
        print("compare: nothing expected", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
