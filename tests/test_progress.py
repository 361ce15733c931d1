"""Status while it runs (issue 7): the status file's progress, `sagemaker-pipe status`, JSON logs,
progress lines and --exit-when-idle, each through a real sidecar process."""

from __future__ import annotations

import json
import os
import re
import signal
import time

import pytest
from conftest import (
    assert_epochs,
    channel,
    error_line,
    expected_stream,
    fifo,
    pattern,
    wait_for_path,
    wait_until,
    write_channel_file,
    write_tree,
)

pytestmark = pytest.mark.timeout(60)
MIB = 1 << 20


def two_channels(tmp_path, size=2 * MIB):
    a = write_tree(tmp_path / "a", {"a.bin": os.urandom(size)})
    b = write_tree(tmp_path / "b", {"b.bin": os.urandom(1000)})
    v = write_tree(tmp_path / "v", {"v.csv": b"1,2,3\n"})
    cfg = write_channel_file(tmp_path / "job.yaml", [channel("alpha", a), channel("beta", b),
                                                     channel("val", v, InputMode="File")])
    return cfg, a, b


def read_status(path):
    return json.loads(path.read_text())


def test_status_file_has_progress_refreshed_while_it_runs(tmp_path, ml_root, sidecar, consumer):
    cfg, a, b = two_channels(tmp_path, size=8 * MIB)  # each epoch outlasts a refresh even past the pipe buffer
    status = tmp_path / "status.json"
    side = sidecar.serve(cfg, ml_root, "--status-file", status)
    wait_until(lambda: status.exists() and read_status(status)["ready"], 15, "ready")
    first = read_status(status)
    assert first["channels"] == ["alpha", "beta", "val"] and first["pid"] == side.pid
    assert first["progress"]["alpha"] == {**first["progress"]["alpha"], "mode": "Pipe", "state": "waiting",
                                          "epoch": 0, "bytes": 0, "epochs_complete": 0}
    assert first["progress"]["val"]["state"] == "copied" and first["progress"]["val"]["bytes"] == 6
    # a reader that takes 2 epochs of alpha, slowly: progress shows up between refreshes (every 2 s)
    reader = consumer(pattern(ml_root, "alpha"), epochs=2, modes="slow:65536:0.02")
    seen = wait_until(lambda: (lambda d: d if d["progress"]["alpha"]["state"] == "reading"
                               and 0 < d["progress"]["alpha"]["epoch_bytes"] else None)(read_status(status)),
                      10, "a status with alpha mid-epoch")
    assert seen["updated"] > first["updated"]
    assert seen["progress"]["alpha"]["mb_per_s"] > 0
    assert_epochs(reader.results(), expected_stream(a), range(2))
    done = wait_until(lambda: (lambda d: d if d["progress"]["alpha"]["epochs_complete"] == 2 else None)(
        read_status(status)), 6, "two complete epochs in the status file")
    assert done["progress"]["alpha"]["bytes"] == 2 * 8 * MIB
    assert done["progress"]["alpha"]["epoch"] == 2 and done["progress"]["alpha"]["state"] == "waiting"
    assert done["progress"]["beta"]["bytes"] == 0

    st = sidecar.run("status", "--status-file", status)
    assert st.poll() == 0, st.stderr
    lines = st.stdout.splitlines()
    assert lines[0].startswith(f"ready: sidecar pid {side.pid}, up ")
    assert lines[1].split() == ["CHANNEL", "MODE", "STATE", "EPOCH", "EPOCHS", "DONE", "BYTES", "MB/S", "LAST", "EPOCH"]
    alpha = next(line for line in lines if line.startswith("alpha "))
    assert "waiting for reader" in alpha and "16.8 MB" in alpha
    assert any(line.startswith("val ") and "copied" in line for line in lines)
    js = sidecar.run("status", "--json", env_extra={"SAGEMAKER_PIPE_STATUS_FILE": str(status)})
    assert js.poll() == 0 and json.loads(js.stdout)["progress"]["alpha"]["epochs_complete"] == 2

    side.send(signal.SIGTERM)
    assert side.wait(10) == 0
    gone = sidecar.run("status", "--status-file", status)
    assert gone.poll() == 1
    assert gone.stdout.startswith("not ready (no status file at ")


def test_status_of_a_stale_file_is_not_ready(tmp_path, sidecar):
    status = tmp_path / "status.json"
    status.write_text(json.dumps({"ready": True, "pid": 1, "updated": time.time() - 600, "interval_s": 2.0,
                                  "channels": ["t"], "progress": {}}))
    p = sidecar.run("status", "--status-file", status)
    assert p.poll() == 1
    assert re.search(r"last updated 60\d s ago", p.stdout), p.stdout  # 600 s and the time to start status
    bare = sidecar.run("status", "--ml-root", tmp_path / "ml")  # no status file named: the ml-root's
    assert bare.poll() == 1
    assert bare.stdout.startswith(f"not ready (no status file at {tmp_path}/ml/input/.sagemaker-pipe/status.json")


def test_json_log_format_makes_every_line_a_json_object(tmp_path, ml_root, sidecar, consumer):
    cfg, a, b = two_channels(tmp_path, size=300_000)
    side = sidecar.serve(cfg, ml_root, "--log-format", "json", "--progress-interval", "0.3", epochs=2)
    wait_for_path(fifo(ml_root, "alpha", 0))
    time.sleep(0.8)  # a few progress lines while nobody reads
    for name, src in (("alpha", a), ("beta", b)):
        assert_epochs(consumer(pattern(ml_root, name), epochs=2).results(), expected_stream(src), range(2))
    assert side.wait(20) == 0, side.stderr
    records = [json.loads(line) for line in side.stderr.splitlines() if line.strip()]
    assert records and all({"ts", "level", "msg"} <= set(r) for r in records)
    assert all(r["ts"].endswith("Z") and r["level"] in ("info", "warning") for r in records)
    epochs = [r for r in records if "epoch" in r and "objects" in r]
    assert sorted((r["channel"], r["epoch"]) for r in epochs) == [("alpha", 0), ("alpha", 1), ("beta", 0),
                                                                  ("beta", 1)]
    for r in epochs:
        assert r["bytes"] == (300_000 if r["channel"] == "alpha" else 1000)
        assert r["objects"] == 1 and isinstance(r["seconds"], float)
    progress = [r for r in records if r["msg"].startswith("progress: ")]
    assert progress and all(r["state"] in ("waiting", "reading") for r in progress)
    assert any(r["channel"] == "alpha" and r["state"] == "waiting" and "alpha_0" in r["msg"] for r in progress)
    copied = [r for r in records if r.get("mode") == "File" and "objects" in r]
    assert copied[0]["channel"] == "val" and copied[0]["bytes"] == 6


def test_json_log_format_by_environment_and_the_error_line(tmp_path, ml_root, sidecar):
    cfg = write_channel_file(tmp_path / "j.yaml", [channel("t", tmp_path / "missing")])
    p = sidecar.run("--config", cfg, "--ml-root", ml_root, env_extra={"SAGEMAKER_PIPE_LOG_FORMAT": "json"})
    assert p.poll() == 2
    (line,) = p.stderr.splitlines()
    rec = json.loads(line)
    assert rec["level"] == "error" and rec["exit_status"] == 2
    assert rec["msg"].startswith("sagemaker-pipe: error: channel 't':")


def test_progress_lines_name_the_fifo_nobody_opened(tmp_path, ml_root, sidecar):
    src = write_tree(tmp_path / "s", {"x": b"x"})
    cfg = write_channel_file(tmp_path / "j.yaml", [channel("train", src)])
    side = sidecar.serve(cfg, ml_root, "--progress-interval", "0.5")
    wait_until(lambda: side.stderr.count("progress: train waiting") >= 2, 10, "two progress lines")
    line = next(line for line in side.stderr.splitlines() if "progress: train waiting" in line)
    assert f"for a reader to open {fifo(ml_root, 'train', 0)}" in line
    side.send(signal.SIGTERM)
    assert side.wait(10) == 0


def test_progress_interval_0_is_quiet(tmp_path, ml_root, sidecar):
    src = write_tree(tmp_path / "s", {"x": b"x"})
    cfg = write_channel_file(tmp_path / "j.yaml", [channel("train", src)])
    side = sidecar.serve(cfg, ml_root, env_extra={"SAGEMAKER_PIPE_PROGRESS_INTERVAL": "0"})
    wait_for_path(fifo(ml_root, "train", 0))
    time.sleep(1.0)
    side.send(signal.SIGTERM)
    assert side.wait(10) == 0
    assert "progress:" not in side.stderr


def test_exit_when_idle_after_every_pipe_channel_served_an_epoch(tmp_path, ml_root, sidecar, consumer):
    cfg, a, b = two_channels(tmp_path, size=100_000)
    side = sidecar.serve(cfg, ml_root, "--exit-when-idle", "1")
    # only alpha is read: beta has no complete epoch yet, so the sidecar must keep serving
    assert_epochs(consumer(pattern(ml_root, "alpha"), epochs=1).results(), expected_stream(a), range(1))
    time.sleep(2.0)
    assert side.alive(), side.stderr
    # beta read like TensorFlow's repeat(2): two epochs, then one more FIFO opened and closed unread
    results = consumer(pattern(ml_root, "beta"), epochs=3, modes="full,full,openclose").results()
    assert [r["bytes"] for r in results] == [1000, 1000, 0]
    t0 = time.monotonic()
    assert side.wait(10) == 0, side.stderr
    assert time.monotonic() - t0 < 5
    assert "exiting (--exit-when-idle)" in side.stderr
    assert sorted(os.listdir(ml_root / "input" / "data")) == ["val"]  # every FIFO removed


def test_exit_when_idle_does_not_fire_while_a_reader_is_reading(tmp_path, ml_root, sidecar, consumer):
    src = write_tree(tmp_path / "s", {"big.bin": os.urandom(3 * MIB)})
    cfg = write_channel_file(tmp_path / "j.yaml", [channel("train", src)])
    side = sidecar.serve(cfg, ml_root, env_extra={"SAGEMAKER_PIPE_EXIT_WHEN_IDLE": "0.5"})
    # epoch 0 read at once; epoch 1 read slowly over ~3 s, far longer than the idle limit
    results = consumer(pattern(ml_root, "train"), epochs=2, modes="full,slow:65536:0.06").results()
    assert_epochs(results, expected_stream(src), range(2))
    assert side.wait(10) == 0, side.stderr


@pytest.mark.parametrize("args, want", [
    (["--exit-when-idle", "0"], "--exit-when-idle must be a positive number of seconds (got '0')"),
    (["--exit-when-idle", "soon"], "--exit-when-idle must be a positive number of seconds (got 'soon')"),
    (["--progress-interval", "-1"], "--progress-interval must be a non-negative number of seconds (got '-1')"),
    (["--log-format", "xml"], "--log-format must be one of text, json (got 'xml')"),
])
def test_bad_values_are_one_line_exit_2(tmp_path, ml_root, sidecar, args, want):
    src = write_tree(tmp_path / "s", {"x": b"x"})
    cfg = write_channel_file(tmp_path / "j.yaml", [channel("train", src)])
    p = sidecar.run("--config", cfg, "--ml-root", ml_root, *args)
    assert p.poll() == 2
    assert want in error_line(p.stderr)
    assert not (ml_root / "input").exists()
