"""Soak: many epochs of three channels with every kind of reader, nothing lost, nothing leaked (issue 6).

Channels: ``local`` (a local folder: small files on the <= 64 KiB fast path and a 200 KiB file on the
splice path), ``gz`` (S3 on moto, CompressionType Gzip) and ``rec`` (S3 on moto, RecordIO with
ShuffleConfig). Each channel's reader cycles through whole epochs, half epochs closed early, open and
close at once, and slow reads (``rec``: 1 byte per ms for a whole epoch).

* every full epoch is byte-exact (``rec``: its records are the multiset of the objects, and the
  order changes from epoch to epoch); every partial epoch is an exact prefix;
* open descriptors (``/proc/<pid>/fd``), threads (``/proc/<pid>/task``) and RSS (VmRSS) of the
  sidecar are flat from epoch ~10 % to the end (numbers printed; run with ``-s`` or ``-rP``).

The short version (60 epochs, ~30 s) runs in the normal suite. The long one is only run with the
``soak`` marker::

    SOAK_EPOCHS=1000 python -m pytest -m soak tests/test_soak.py -s
"""

from __future__ import annotations

import gzip
import os
import random
import statistics
import time
from pathlib import Path

import pytest
import recordio
from conftest import channel, pattern, sha, write_channel_file, write_tree
from s3_helpers import gz, s3_env

SHORT_EPOCHS = 60


def _blob(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


LOCAL_FILES = {
    **{f"small/{i:02d}.csv": (f"row {i}," * (50 + 37 * i)).encode() for i in range(30)},
    "zz-big.bin": _blob(1, 200 * 1024 + 3),  # above the 64 KiB small-file path: splice
    "mid/one-byte": b"x",
    "mid/empty": b"",
}
GZ_PLAIN = {f"gz/{i:02d}.json.gz": _blob(10 + i, 40_000 + 1000 * i) for i in range(5)}
GZ_OBJECTS = {k: gz(v) for k, v in GZ_PLAIN.items()}
REC_OBJECTS = {f"rec/{i:02d}.rec": f"<record {i}>".encode() * (3 + i % 7) for i in range(24)}


def mode_for(n: int, total: int, slow: dict[str, str], name: str, full_len: int) -> str:
    """The reader's behaviour in epoch n: mostly whole epochs, with early closes and slow reads."""
    if n == total - 1 or n < 2:
        return "full"
    if n % max(total // 3, 20) == 7:
        return slow[name]
    r = n % 10
    if r == 3:
        return f"partial:{max(1, full_len // 2)}"
    if r == 5:
        return "openclose"
    if r == 8:
        return "partial:1"
    return "full"


def proc_sample(pid: int) -> tuple[int, int, int] | None:
    """(open fds, threads, VmRSS kB) of a live process, or None once it is gone."""
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        threads = len(os.listdir(f"/proc/{pid}/task"))
        rss = 0
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
        return fds, threads, rss
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None


def run_soak(epochs: int, tmp_path: Path, sidecar, consumer, moto_s3, seeded_bucket, budget: float) -> dict:
    local = write_tree(tmp_path / "local", LOCAL_FILES)
    bucket = seeded_bucket(moto_s3, {**GZ_OBJECTS, **REC_OBJECTS})
    seed = 1234
    cfg = write_channel_file(tmp_path / "soak.yaml", {"InputDataConfig": [
        channel("local", local),
        channel("gz", f"s3://{bucket}/gz/", CompressionType="Gzip"),
        channel("rec", f"s3://{bucket}/rec/", RecordWrapperType="RecordIO", ShuffleConfig={"Seed": seed}),
    ]})
    local_stream = b"".join(LOCAL_FILES[k] for k in sorted(LOCAL_FILES, key=str.encode))
    gz_stream = b"".join(gzip.decompress(GZ_OBJECTS[k]) for k in sorted(GZ_OBJECTS))
    rec_payloads = sorted(REC_OBJECTS.values())
    rec_len = sum(len(recordio.encode(p)) for p in rec_payloads)
    full = {"local": local_stream, "gz": gz_stream}
    lengths = {"local": len(local_stream), "gz": len(gz_stream), "rec": rec_len}
    slow = {"local": "slow:512:0.001", "gz": "slow:512:0.001", "rec": "slow:1:0.001"}
    modes = {ch: [mode_for(n, epochs, slow, ch, lengths[ch]) for n in range(epochs)] for ch in lengths}

    ml_root = tmp_path / "ml"
    side = sidecar.serve(cfg, ml_root, epochs=epochs, env=s3_env(moto_s3))
    cons = {ch: consumer(pattern(ml_root, ch), epochs, modes=",".join(modes[ch]), wait=30, timeout=budget,
                         out=(tmp_path / "rec_out") if ch == "rec" else None)
            for ch in lengths}

    records: dict[str, list[dict]] = {ch: [] for ch in cons}
    samples: list[tuple[int, int, int, int]] = []  # (epochs done by the slowest reader, fds, threads, rss)
    deadline = time.monotonic() + budget
    while time.monotonic() < deadline:
        for ch, c in cons.items():
            while not c.lines.empty():
                rec = c.lines.get_nowait()
                assert "error" not in rec, f"{ch}: {rec}\n{c.stderr}"
                if "epoch" in rec:
                    records[ch].append(rec)
        done = min(len(r) for r in records.values())
        s = proc_sample(side.pid) if side.alive() else None
        if s is not None:
            samples.append((done, *s))
        if done == epochs or (not side.alive() and not any(c.alive() for c in cons.values())):
            break
        time.sleep(0.02)
    rc = side.wait(30)
    assert rc == 0, f"sidecar exited {rc}:\n{side.stderr}"
    assert "Traceback" not in side.stderr
    for ch, c in cons.items():
        c.wait(30)
        while not c.lines.empty():
            rec = c.lines.get_nowait()
            assert "error" not in rec, f"{ch}: {rec}"
            if "epoch" in rec:
                records[ch].append(rec)
        assert [r["epoch"] for r in records[ch]] == list(range(epochs)), f"{ch}: {len(records[ch])} epochs read"

    # -- every epoch's bytes
    full_epochs = 0
    orders = set()
    for ch, recs in records.items():
        for r in recs:
            mode = modes[ch][r["epoch"]].split(":")[0]
            assert r["is_fifo"]
            if mode in ("full", "slow"):
                full_epochs += 1
                if ch == "rec":
                    data = Path(r["out"]).read_bytes()
                    got = recordio.decode(data)
                    assert sorted(got) == rec_payloads, f"rec epoch {r['epoch']}: records differ"
                    orders.add(tuple(got))
                else:
                    assert (r["bytes"], r["sha256"]) == (lengths[ch], sha(full[ch])), f"{ch} epoch {r['epoch']}"
            elif mode == "partial":
                want = int(modes[ch][r["epoch"]].split(":")[1])
                assert r["bytes"] == want, f"{ch} epoch {r['epoch']}: {r['bytes']} bytes of a {want}-byte prefix"
                if ch != "rec":
                    assert r["sha256"] == sha(full[ch][:want]), f"{ch} epoch {r['epoch']}: not a prefix"
            else:
                assert r["bytes"] == 0
    assert len(orders) > 1, "the shuffled channel had the same order in every epoch"

    # -- leaks: the 10-25 % window against the last 15 %
    base = [s for s in samples if 0.10 * epochs <= s[0] < 0.25 * epochs]
    end = [s for s in samples if s[0] >= 0.85 * epochs]
    assert base and end, f"too few samples: {len(samples)}"

    def stats(win: list, i: int) -> tuple[int, int, float]:
        vals = [s[i] for s in win]
        return min(vals), max(vals), statistics.median(vals)

    report = {name: (stats(base, i), stats(end, i)) for i, name in ((1, "fds"), (2, "threads"), (3, "rss_kb"))}
    print(f"\nsoak: {epochs} epochs x 3 channels, {full_epochs} full epochs checked, "
          f"{len(orders)} distinct shuffle orders, {len(samples)} samples")
    for name, (b, e) in report.items():
        print(f"  {name:8s} epoch 10-25%: min/max/median {b[0]}/{b[1]}/{b[2]:.0f}   "
              f"last 15%: {e[0]}/{e[1]}/{e[2]:.0f}")
    (b_fd, e_fd), (b_th, e_th), (b_rss, e_rss) = report["fds"], report["threads"], report["rss_kb"]
    assert e_fd[1] <= b_fd[1] + 4, f"open descriptors grew: {report['fds']}"
    assert e_th[1] <= b_th[1] + 2, f"threads grew: {report['threads']}"
    assert e_rss[2] <= b_rss[2] * 1.2 + 10_000, f"RSS grew: {report['rss_kb']}"
    return report


@pytest.mark.timeout(120)
def test_soak_short(tmp_path, sidecar, consumer, moto_s3, seeded_bucket):
    run_soak(SHORT_EPOCHS, tmp_path, sidecar, consumer, moto_s3, seeded_bucket, budget=90)


@pytest.mark.soak
@pytest.mark.timeout(4 * 3600)
def test_soak_long(request, tmp_path, sidecar, consumer, moto_s3, seeded_bucket):
    if "soak" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("long soak: run with  SOAK_EPOCHS=1000 python -m pytest -m soak tests/test_soak.py -s")
    epochs = int(os.environ.get("SOAK_EPOCHS", "1000"))
    run_soak(epochs, tmp_path, sidecar, consumer, moto_s3, seeded_bucket, budget=4 * 3600 - 120)
