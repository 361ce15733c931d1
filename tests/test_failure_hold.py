"""A failed stream is never a clean EOF; no reader is left blocked in open(); one sidecar per ml-root.

The reader here is `cat FIFO > file` (a process that treats EOF as the end of the data): while the
sidecar holds a failed epoch's write end, cat must still be running; it ends only once the sidecar
is stopped (--hold-on-failure) or gives up (standing alone: its reader closed, or the hold ran out).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from conftest import base_env, channel, fifo, pattern, wait_for_path, wait_until, write_channel_file, write_tree
from s3_helpers import data_error_line, gz

pytestmark = pytest.mark.timeout(60)
GOOD = os.urandom(300_000)


def bad_gzip_job(tmp_path: Path) -> Path:
    """A gunzip channel whose second object is not gzip, and a healthy second channel."""
    src = write_tree(tmp_path / "gz", {"a.gz": gz(GOOD), "b.gz": b"plain text, not gzip\n" * 50, "c.gz": gz(b"c")})
    other = write_tree(tmp_path / "other", {"o": b"o" * 10})
    return write_channel_file(tmp_path / "ch.yaml", [channel("train", src, CompressionType="Gzip"),
                                                     channel("other", other)])


def status(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}


def leftovers(ml_root: Path) -> list[str]:
    """FIFOs and the lock: everything a stopped sidecar must have removed."""
    data = ml_root / "input" / "data"
    names = sorted(os.listdir(data)) if data.exists() else []
    return names + [".sagemaker-pipe.lock"] * (ml_root / "input" / ".sagemaker-pipe.lock").exists()


def test_hold_on_failure_keeps_the_epoch_open_until_sigterm(tmp_path, ml_root, sidecar, shell):
    cfg = bad_gzip_job(tmp_path)
    status_file = tmp_path / "status.json"
    side = sidecar.serve(cfg, ml_root, "--hold-on-failure", "--status-file", status_file)
    out = tmp_path / "out"
    wait_for_path(fifo(ml_root, "train", 0))
    cat = shell(f'cat "{fifo(ml_root, "train", 0)}" > "{out}"')
    failed = wait_until(lambda: status(status_file).get("state") == "failed" and status(status_file), 15,
                        "state failed in the status file")
    assert "b.gz" in failed["error"] and failed["ready"] is False, failed
    time.sleep(1.5)
    assert cat.alive(), "the reader got an EOF for the failed epoch"
    assert side.alive(), f"the sidecar exited before it was stopped:\n{side.stderr}"
    assert GOOD.startswith(out.read_bytes())  # only bytes from before the bad object
    side.send(signal.SIGTERM)
    assert side.wait(10) == 1
    assert "b.gz" in data_error_line(side)
    assert cat.wait(5) == 0
    assert leftovers(ml_root) == [] and not status_file.exists()


def test_standing_alone_the_hold_ends_when_the_reader_closes(tmp_path, ml_root, sidecar, shell):
    cfg = bad_gzip_job(tmp_path)
    side = sidecar.serve(cfg, ml_root, "--failure-hold", "30")
    wait_for_path(fifo(ml_root, "train", 0))
    reader = shell(f'exec cat "{fifo(ml_root, "train", 0)}" > /dev/null')
    wait_until(lambda: "stream failed" in side.stderr, 15, "the failure logged")
    time.sleep(1)
    assert reader.alive() and side.alive(), "an EOF (or an exit) before the reader closed"
    t0 = time.monotonic()
    reader.send(signal.SIGKILL)  # the algorithm dies: nobody is left to protect
    assert side.wait(10) == 1
    assert time.monotonic() - t0 < 5
    assert "b.gz" in data_error_line(side)
    assert leftovers(ml_root) == []


def test_standing_alone_the_hold_is_bounded(tmp_path, ml_root, sidecar, shell):
    cfg = bad_gzip_job(tmp_path)
    side = sidecar.serve(cfg, ml_root, env=base_env(SAGEMAKER_PIPE_FAILURE_HOLD="2"))
    wait_for_path(fifo(ml_root, "train", 0))
    cat = shell(f'cat "{fifo(ml_root, "train", 0)}" > /dev/null')
    wait_until(lambda: "stream failed" in side.stderr, 15, "the failure logged")
    t0 = time.monotonic()
    time.sleep(1)
    assert cat.alive(), "an EOF before the hold ran out"
    assert side.wait(10) == 1
    assert 0.8 <= time.monotonic() - t0 < 5
    assert "b.gz" in data_error_line(side)
    assert cat.wait(5) == 0 and leftovers(ml_root) == []


@pytest.mark.parametrize("how", ["sigterm", "failure"])
def test_no_reader_stays_blocked_in_open_of_the_next_fifo(how, tmp_path, ml_root, sidecar, shell, consumer):
    """A reader already inside open() of epoch 1 while epoch 0 is still being written returns from it."""
    big = os.urandom(4 << 20)  # more than a pipe holds: the writer blocks inside it while the gate is shut
    second = b"plain text, not gzip\n" * 50 if how == "failure" else gz(b"b")
    src = write_tree(tmp_path / "gz", {"a.gz": gz(big, level=1), "b.gz": second})
    cfg = write_channel_file(tmp_path / "ch.yaml", [channel("train", src, CompressionType="Gzip")])
    side = sidecar.serve(cfg, ml_root, "--failure-hold", "1")
    gate = tmp_path / "gate"
    gated = consumer(pattern(ml_root, "train"), 1, modes="gate:100000", gate=gate)
    assert gated.next_line().get("event") == "gated"
    wait_for_path(fifo(ml_root, "train", 1))
    nxt = shell(f'cat "{fifo(ml_root, "train", 1)}" > "{tmp_path / "next"}"')
    time.sleep(0.5)  # inside open(): the worker is busy with epoch 0, nobody has epoch 1's write end
    assert nxt.alive()
    if how == "sigterm":
        side.send(signal.SIGTERM)
        assert side.wait(10) == 0
    else:
        gate.touch()
        assert side.wait(15) == 1
        assert "b.gz" in data_error_line(side)
    assert nxt.wait(5) == 0, "the reader of the next FIFO still blocked after the sidecar ended"
    assert (tmp_path / "next").read_bytes() == b""
    assert leftovers(ml_root) == []


def test_a_second_sidecar_on_the_same_ml_root_exits_2_naming_the_first(tmp_path, ml_root, sidecar):
    src = write_tree(tmp_path / "src", {"a": b"a"})
    cfg = write_channel_file(tmp_path / "ch.yaml", [channel("train", src)])
    first = sidecar.serve(cfg, ml_root)
    wait_for_path(fifo(ml_root, "train", 0))
    config_before = (ml_root / "input" / "config" / "inputdataconfig.json").stat().st_mtime_ns
    second = sidecar.run("--config", cfg, "--ml-root", ml_root)
    assert second.poll() == 2
    lines = [ln for ln in second.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and f"pid {first.pid}" in lines[0] and str(ml_root) in lines[0], second.stderr
    assert first.alive()
    assert (ml_root / "input" / "config" / "inputdataconfig.json").stat().st_mtime_ns == config_before
    first.send(signal.SIGTERM)
    assert first.wait(10) == 0
    assert leftovers(ml_root) == []


def test_a_lock_left_by_a_killed_sidecar_is_taken_over(tmp_path, ml_root, sidecar, consumer):
    src = write_tree(tmp_path / "src", {"a": b"abc"})
    cfg = write_channel_file(tmp_path / "ch.yaml", [channel("train", src)])
    first = sidecar.serve(cfg, ml_root)
    wait_for_path(fifo(ml_root, "train", 0))
    first.send(signal.SIGKILL)
    first.wait(5)
    assert (ml_root / "input" / ".sagemaker-pipe.lock").read_text().strip() == str(first.pid)
    second = sidecar.serve(cfg, ml_root, epochs=1)
    wait_until(lambda: " ready: " in second.stderr, 10, "the second sidecar ready")  # its own train_0
    results = consumer(pattern(ml_root, "train"), 1).results()
    assert results[0]["bytes"] == 3
    assert second.wait(10) == 0
    assert leftovers(ml_root) == []


def test_the_start_up_line_names_each_channel_s_first_fifo_and_folder(tmp_path, ml_root, sidecar):
    src = write_tree(tmp_path / "src", {"a": b"a"})
    cfg = write_channel_file(tmp_path / "ch.yaml", [channel("train", src),
                                                     channel("files", src, InputMode="File")])
    side = sidecar.serve(cfg, ml_root)
    line = wait_until(lambda: next((ln for ln in side.stderr.splitlines() if " ready: " in ln), None), 10,
                      "the ready line")
    assert f"train {fifo(ml_root, 'train', 0)}" in line
    assert f"files (File) {ml_root / 'input' / 'data' / 'files'}/" in line
    side.send(signal.SIGTERM)
    assert side.wait(10) == 0


def test_a_held_failure_ends_when_the_supervisor_dies(tmp_path, ml_root, procs, shell):
    """A supervisor killed by SIGKILL cannot stop its engine: the engine notices it is gone."""
    cfg = bad_gzip_job(tmp_path)
    pid_file = tmp_path / "engine.pid"
    script = (f"import subprocess, sys, time\n"
              f"p = subprocess.Popen([sys.executable, '-m', 'sagemaker_pipe', '--config', {str(cfg)!r}, "
              f"'--ml-root', {str(ml_root)!r}, '--hold-on-failure'])\n"
              f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
              f"time.sleep(600)\n")
    supervisor = procs.start([sys.executable, "-c", script], "supervisor", env=base_env())
    wait_for_path(fifo(ml_root, "train", 0))
    reader = shell(f'cat "{fifo(ml_root, "train", 0)}" > /dev/null')
    engine = int(wait_until(lambda: pid_file.exists() and pid_file.read_text(), 10, "the engine's pid"))
    time.sleep(1)
    assert reader.alive()
    os.kill(supervisor.pid, signal.SIGKILL)  # only the supervisor: the engine is in its group too
    wait_until(lambda: not Path(f"/proc/{engine}").exists() or "Z" in Path(f"/proc/{engine}/stat").read_text()
               .split(")")[-1].split()[0], 10, "the engine gone")
    assert reader.wait(5) == 0
    assert leftovers(ml_root) == []


def test_the_supervise_engine_contract(tmp_path, ml_root, shell):
    """supervise.Engine as `run` and the SDK add-on use it: ready, failure(), stop() -> (1, the line)."""
    from sagemaker_pipe.errors import ConfigError
    from sagemaker_pipe.supervise import Engine

    cfg = bad_gzip_job(tmp_path)
    engine = Engine.start(cfg, ml_root, hosts=["algo-1", "algo-2"], current_host="algo-2", env=base_env())
    try:
        engine.wait_ready(15)
        config = json.loads((ml_root / "input" / "config" / "resourceconfig.json").read_text())
        assert (config["current_host"], config["hosts"]) == ("algo-2", ["algo-1", "algo-2"])
        assert engine.failure() is None
        cat = shell(f'cat "{fifo(ml_root, "train", 0)}" > /dev/null')
        failure = wait_until(engine.failure, 15, "the engine's failure")
        assert "b.gz" in failure
        time.sleep(1)
        assert cat.alive(), "an EOF before the engine was stopped"
        second = Engine.start(cfg, ml_root, env=base_env())
        with pytest.raises(ConfigError, match=f"pid {engine.proc.pid}"):
            second.wait_ready(15)
        assert second.stop() == (2, second.error)
    finally:
        status, error = engine.stop()
    assert status == 1 and error is not None and "b.gz" in error
    assert cat.wait(5) == 0
    assert leftovers(ml_root) == []
