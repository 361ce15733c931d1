"""Process faults (issue 6): what test_lifecycle.py's signal tests do not check.

* SIGTERM / SIGINT in the middle of a large object read slowly, and between epochs: exit 0 and no
  temporary file left anywhere (config folder: only the three JSON files, no ``.tmp``; data folder
  empty; no status-file temporaries);
* SIGKILL (no clean-up at all) and a restart in the same ml-root: the stale FIFOs are replaced and
  the new run's epochs are byte-exact;
* the reader process killed mid-epoch (the writer gets EPIPE) is survived: the sidecar goes on and
  the next epoch, read by a new reader, is exact.
"""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import time
from pathlib import Path

import pytest
from conftest import (
    SIGNAL_EXIT,
    assert_epochs,
    channel,
    expected_stream,
    fifo,
    is_fifo,
    pattern,
    wait_for_path,
    wait_until,
    write_channel_file,
    write_tree,
)

CONFIG_FILES = ["hyperparameters.json", "inputdataconfig.json", "resourceconfig.json"]


def job(tmp_path: Path) -> tuple[Path, Path, Path]:
    big = write_tree(tmp_path / "big", {"a-huge.bin": random.Random(5).randbytes(12 << 20), "b-tail": b"tail\n"})
    small = write_tree(tmp_path / "small", {f"s{i}": f"small {i}\n".encode() * (i + 1) for i in range(5)})
    cfg = write_channel_file(tmp_path / "ch.yaml", {"InputDataConfig": [channel("big", big), channel("small", small)],
                                                    "HyperParameters": {"lr": 0.1}})
    return cfg, big, small


def assert_no_leftovers(ml_root: Path, status_dir: Path) -> None:
    config = ml_root / "input" / "config"
    data = ml_root / "input" / "data"
    assert sorted(os.listdir(config)) == CONFIG_FILES, f"config folder: {sorted(os.listdir(config))}"
    for name in CONFIG_FILES:
        json.loads((config / name).read_text())  # whole, valid files
    assert os.listdir(data) == [], f"data folder not empty: {os.listdir(data)}"
    left = [p.name for p in status_dir.iterdir()]
    assert left == [], f"status folder not empty after exit: {left}"
    tmp = [str(p) for p in ml_root.rglob("*") if p.name.endswith(".tmp")]
    assert tmp == [], f"temporary files left: {tmp}"


def stop_with(side, sig: int) -> None:
    os.kill(side.pid, sig)
    rc = side.wait(10)
    assert rc == SIGNAL_EXIT[sig], f"exit {rc} after {signal.Signals(sig).name}:\n{side.stderr}"
    assert "Traceback" not in side.stderr, side.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_signal_mid_large_object_with_slow_reader_leaves_no_temporary_file(sig, tmp_path, ml_root, sidecar,
                                                                            consumer):
    cfg, big, small = job(tmp_path)
    status_dir = tmp_path / "status"
    status_dir.mkdir()
    side = sidecar.serve(cfg, ml_root, "--status-file", status_dir / "ready.json")
    slow = consumer(pattern(ml_root, "big"), 1, modes="slow:4096:0.002", timeout=30)
    wait_for_path(fifo(ml_root, "big", 1))  # the reader opened epoch 0
    time.sleep(0.7)  # well inside the 12 MiB object
    assert side.alive()
    stop_with(side, sig)
    assert_no_leftovers(ml_root, status_dir)
    slow.wait(10)  # its writer is gone: EOF, a short epoch the reader sees as such
    rec = slow.next_line(10)
    assert rec["bytes"] < (12 << 20), "the slow reader cannot have read everything"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_signal_between_epochs_leaves_no_temporary_file(sig, tmp_path, ml_root, sidecar, consumer):
    cfg, big, small = job(tmp_path)
    status_dir = tmp_path / "status"
    status_dir.mkdir()
    side = sidecar.serve(cfg, ml_root, "--status-file", status_dir / "ready.json")
    res = consumer(pattern(ml_root, "small"), 2).results()
    assert_epochs(res, expected_stream(small), range(2))
    wait_for_path(fifo(ml_root, "small", 2))
    stop_with(side, sig)
    assert_no_leftovers(ml_root, status_dir)


def test_sigkill_then_restart_in_the_same_ml_root(tmp_path, ml_root, sidecar, consumer):
    cfg, big, small = job(tmp_path)
    first = sidecar.serve(cfg, ml_root)
    stalled = consumer(pattern(ml_root, "big"), 1, modes="stall:1000")
    assert stalled.next_line().get("event") == "stalled"
    assert_epochs(consumer(pattern(ml_root, "small"), 1).results(), expected_stream(small), [0])
    wait_for_path(fifo(ml_root, "big", 1))
    wait_for_path(fifo(ml_root, "small", 1))
    first.popen.send_signal(signal.SIGKILL)
    first.wait(5)
    stalled.popen.send_signal(signal.SIGKILL)
    stalled.wait(5)
    data = ml_root / "input" / "data"
    stale = sorted(n for n in os.listdir(data) if is_fifo(data / n))
    assert {"big_1", "small_1"} <= set(stale), f"SIGKILL should leave its FIFOs behind: {stale}"
    # A leftover regular file under a FIFO name too (e.g. a crashed copy)
    (data / "small_2").write_bytes(b"stale junk")
    for n in os.listdir(data):
        os.chmod(data / n, 0o600)  # a stale name is marked by its mode: a new FIFO may reuse its inode number

    status = tmp_path / "ready.json"
    second = sidecar.serve(cfg, ml_root, "--status-file", status, epochs=3)
    # ready: config written, stale names cleared, first FIFOs made (the file may say "ready": false first)
    wait_until(lambda: status.exists() and json.loads(status.read_text()).get("ready"), 15, "status file ready")
    for name in ("big_0", "small_0"):
        assert is_fifo(data / name)
        assert stat.S_IMODE(os.lstat(data / name).st_mode) == 0o644, f"{name} was not replaced"
    assert not (data / "small_2").exists() or is_fifo(data / "small_2")
    r_big = consumer(pattern(ml_root, "big"), 3, timeout=50)
    r_small = consumer(pattern(ml_root, "small"), 3)
    assert_epochs(r_small.results(), expected_stream(small), range(3))
    assert_epochs(r_big.results(50), expected_stream(big), range(3))
    assert second.wait(20) == 0, second.stderr
    assert os.listdir(data) == [], os.listdir(data)
    assert "Traceback" not in second.stderr


def test_reader_killed_mid_epoch_next_epoch_is_exact(tmp_path, ml_root, sidecar, consumer):
    cfg, big, small = job(tmp_path)
    side = sidecar.serve(cfg, ml_root, epochs=3)
    victim = consumer(pattern(ml_root, "big"), 1, modes="stall:100000")
    assert victim.next_line().get("event") == "stalled"
    wait_for_path(fifo(ml_root, "big", 1))
    time.sleep(0.3)  # the writer fills the pipe and waits for room
    victim.popen.send_signal(signal.SIGKILL)
    victim.wait(5)
    # the writer sees EPIPE, ends epoch 0 quietly; epochs 1 and 2 go to a new reader, exact
    wait_until(lambda: not (ml_root / "input" / "data" / "big_0").exists(), 10, "big_0 removed after EPIPE")
    assert side.alive(), side.stderr
    after = consumer(pattern(ml_root, "big"), 2, start=1, timeout=40)
    assert_epochs(after.results(40), expected_stream(big), [1, 2])
    assert_epochs(consumer(pattern(ml_root, "small"), 3).results(), expected_stream(small), range(3))
    assert side.wait(20) == 0, side.stderr
    assert "Traceback" not in side.stderr
