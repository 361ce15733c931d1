"""Is the algorithm input-bound? The per-epoch verdict, the throttle, and the shutdown summary."""

from __future__ import annotations

import json
import os
import re

from conftest import (
    assert_epochs,
    channel,
    error_line,
    expected_stream,
    pattern,
    wait_until,
    write_channel_file,
    write_tree,
)

MIB = 1 << 20


def epoch_lines(stderr: str, name: str) -> list[dict[str, str]]:
    lines = [line for line in stderr.splitlines() if f" channel={name} epoch=" in line]
    return [dict(re.findall(r"(\S+)=(\S+)", line)) for line in lines]


def seconds_share(fields: dict[str, str], key: str) -> float:
    return float(fields[key].rstrip("%")) / 100


def test_slow_reader_is_algorithm_bound(tmp_path, ml_root, sidecar, consumer):
    src = write_tree(tmp_path / "src", {"big.bin": os.urandom(4 * MIB)})
    cfg = write_channel_file(tmp_path / "c.yaml", [channel("train", src)])
    side = sidecar.serve(cfg, ml_root, epochs=2)
    reader = consumer(pattern(ml_root, "train"), epochs=2, modes="slow:65536:0.01")
    assert_epochs(reader.results(timeout=40), expected_stream(src), range(2))
    assert side.wait(20) == 0, side.stderr
    lines = epoch_lines(side.stderr, "train")
    assert [f["verdict"] for f in lines] == ["algorithm-bound"] * 2, side.stderr
    assert all(seconds_share(f, "writer-blocked") > 0.5 for f in lines), side.stderr


def test_throttled_source_is_input_bound(tmp_path, ml_root, sidecar, consumer):
    src = write_tree(tmp_path / "src", {"a.bin": os.urandom(MIB), "b.bin": os.urandom(MIB // 2)})
    cfg = write_channel_file(tmp_path / "c.yaml", [channel("train", src)])
    side = sidecar.serve(cfg, ml_root, "--throttle-mbps", "train=3", epochs=2)
    reader = consumer(pattern(ml_root, "train"), epochs=2)
    assert_epochs(reader.results(timeout=40), expected_stream(src), range(2))
    assert side.wait(20) == 0, side.stderr
    lines = epoch_lines(side.stderr, "train")
    assert [f["verdict"] for f in lines] == ["input-bound"] * 2, side.stderr
    # 1.5 MiB at 3 MB/s takes about half a second; the throttle must really have paced it
    assert all(float(f["seconds"]) > 0.4 for f in lines), side.stderr
    summary = [line for line in side.stderr.splitlines() if "summary channel=train" in line]
    assert len(summary) == 1 and "epochs=2" in summary[0] and "verdict=input-bound" in summary[0], side.stderr


def test_throttle_from_the_channel_file_paces_only_that_channel(tmp_path, ml_root, sidecar, consumer):
    slow = write_tree(tmp_path / "slow", {"s.bin": os.urandom(MIB)})
    fast = write_tree(tmp_path / "fast", {"f.bin": os.urandom(MIB)})
    cfg = write_channel_file(tmp_path / "c.yaml", [
        channel("slow", slow, SageMakerPipe={"ThrottleMBps": 4}),
        channel("fast", fast),
    ])
    side = sidecar.serve(cfg, ml_root, epochs=1)
    slow_reader = consumer(pattern(ml_root, "slow"), epochs=1)
    fast_reader = consumer(pattern(ml_root, "fast"), epochs=1)
    assert_epochs(fast_reader.results(timeout=40), expected_stream(fast), range(1))
    assert_epochs(slow_reader.results(timeout=40), expected_stream(slow), range(1))
    assert side.wait(20) == 0, side.stderr
    (slow_line,) = epoch_lines(side.stderr, "slow")
    (fast_line,) = epoch_lines(side.stderr, "fast")
    assert float(slow_line["seconds"]) > 0.2, side.stderr
    assert slow_line["verdict"] == "input-bound", side.stderr
    assert fast_line["verdict"] != "input-bound" or float(fast_line["seconds"]) < 0.2, side.stderr


def test_bad_throttle_values_are_config_errors(tmp_path, ml_root, sidecar):
    src = write_tree(tmp_path / "src", {"a": b"a"})
    cfg = write_channel_file(tmp_path / "c.yaml", [channel("train", src)])
    for bad in ("0", "fast", "nochannel=3", "train=-1"):
        proc = sidecar.run("--config", str(cfg), "--ml-root", str(ml_root), "--throttle-mbps", bad)
        assert proc.popen.returncode == 2, proc.stderr
        assert "--throttle-mbps" in error_line(proc.stderr)
    cfg = write_channel_file(tmp_path / "d.yaml", [channel("train", src, SageMakerPipe={"ThrottleMBps": "x"})])
    proc = sidecar.run("--config", str(cfg), "--ml-root", str(ml_root))
    assert proc.popen.returncode == 2
    assert "SageMakerPipe.ThrottleMBps" in error_line(proc.stderr)


def test_status_shows_the_last_epochs_verdict(tmp_path, ml_root, sidecar, consumer):
    src = write_tree(tmp_path / "src", {"a.bin": os.urandom(MIB)})
    cfg = write_channel_file(tmp_path / "c.yaml", [channel("train", src)])
    status = tmp_path / "status.json"
    side = sidecar.serve(cfg, ml_root, "--throttle-mbps", "4", "--status-file", str(status))
    reader = consumer(pattern(ml_root, "train"), epochs=1)
    assert_epochs(reader.results(timeout=40), expected_stream(src), range(1))

    def last_epoch():
        try:
            return json.loads(status.read_text())["progress"]["train"].get("last_epoch")
        except (OSError, ValueError, KeyError):
            return None

    last = wait_until(last_epoch, timeout=15, what="the status file to show epoch 0's figures")
    assert last["epoch"] == 0 and last["verdict"] == "input-bound", last
    shown = sidecar.run("status", "--status-file", str(status))
    assert shown.popen.returncode == 0, shown.stderr
    assert "input-bound (writer blocked" in shown.stdout, shown.stdout
    assert side.alive(), side.stderr
