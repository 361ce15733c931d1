"""Long runs of small files go through reader processes (sagemaker_pipe/readers.py).

Every test here runs the real sidecar on more than readers.MIN_UNITS small files, so the
reader processes are really used; each checks the bytes a real consumer read against the
source, and that no reader process outlives the sidecar.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest
import recordio
from conftest import (
    SIGNAL_EXIT,
    assert_epochs,
    assert_nothing_written,
    channel,
    error_line,
    expected_stream,
    fifo,
    pattern,
    wait_until,
    write_channel_file,
)
from s3_helpers import data_error_line, stream_of

from sagemaker_pipe.readers import MIN_UNITS

COUNT = MIN_UNITS + 404  # one run, long enough for the reader processes
pytestmark = pytest.mark.timeout(90)


def small_tree(root: Path, seed: int = 1) -> dict[str, bytes]:
    """COUNT small files of mixed sizes (empty, odd lengths, up to the 64 KiB small-file limit)
    in sub-folders, and one large file last in key order (streamed after the run)."""
    rng = random.Random(seed)
    files: dict[str, bytes] = {}
    for i in range(COUNT):
        size = 0 if i == 7 else 65536 if i == 8 else rng.choice((rng.randrange(1, 9000), rng.randrange(1, 300)))
        files[f"{i // 1000:02d}/f{i:05d}.bin"] = rng.randbytes(size)
    files["zz-large"] = rng.randbytes(300_000)
    for key, data in files.items():
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def reader_pids(parent: int) -> set[int]:
    """The sidecar's reader processes (children of any of its threads)."""
    found = set()
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{d}/cmdline").read_bytes()
            status = Path(f"/proc/{d}/status").read_text()
        except OSError:
            continue
        if b"sagemaker_pipe.readers" in cmd and f"\nPPid:\t{parent}\n" in status:
            found.add(int(d))
    return found


def wait_readers(parent: int, n: int) -> set[int]:
    """Wait (bounded) until the sidecar has at least n reader processes; returns them."""
    return wait_until(lambda: (found if len(found := reader_pids(parent)) >= n else None), 15,
                      f"{n} reader processes")


def gone(pids: set[int]) -> bool:
    return not any(Path(f"/proc/{p}").exists() for p in pids)


@pytest.mark.parametrize("readers", ["0", "2"])
def test_long_runs_are_byte_exact_in_every_framing(readers, tmp_path, ml_root, sidecar, consumer):
    """Plain, RecordIO and throttled channels on the same files, with and without reader processes."""
    src = tmp_path / "src"
    small_tree(src)
    cfg = write_channel_file(tmp_path / "ch.yaml", [
        channel("plain", src), channel("rec", src, RecordWrapperType="RecordIO"),
        channel("slow", src, SageMakerPipe={"ThrottleMBps": 200})])
    side = sidecar.serve(cfg, ml_root, epochs=2, env_extra={"SAGEMAKER_PIPE_READERS": readers})
    gate = tmp_path / "gate"
    plain = consumer(pattern(ml_root, "plain"), 2, modes="gate:100000,full", gate=gate)
    rec = consumer(pattern(ml_root, "rec"), 2)
    slow = consumer(pattern(ml_root, "slow"), 2)
    assert plain.next_line().get("event") == "gated"
    expected = 3 * int(readers)  # each channel keeps its own readers for the whole job
    pids = wait_readers(side.pid, expected) if expected else reader_pids(side.pid)
    assert len(pids) == expected, pids
    gate.touch()
    assert_epochs(plain.results(), expected_stream(src), range(2))
    assert_epochs(rec.results(), expected_stream(src, record_io=True), range(2))
    assert_epochs(slow.results(), expected_stream(src), range(2))
    assert side.wait(30) == 0, side.stderr
    assert gone(pids), "reader processes outlived the sidecar"


def test_shuffled_epochs_are_the_same_bytes_with_and_without_readers(tmp_path, sidecar, consumer):
    """Orders go out round robin and come back in order: the shuffled stream is exactly the
    channel's own process's, epoch by epoch."""
    src = tmp_path / "src"
    files = small_tree(src, seed=2)
    del files["zz-large"]
    (src / "zz-large").unlink()
    cfg = write_channel_file(tmp_path / "ch.yaml", [
        channel("train", src, RecordWrapperType="RecordIO", ShuffleConfig={"Seed": 5})])
    runs = {}
    for readers in ("0", "2"):
        ml_root = tmp_path / f"ml-{readers}"
        side = sidecar.serve(cfg, ml_root, epochs=3, env_extra={"SAGEMAKER_PIPE_READERS": readers})
        res = consumer(pattern(ml_root, "train"), 3, out=tmp_path / f"out-{readers}").results()
        assert side.wait(30) == 0, side.stderr
        runs[readers] = [(r["bytes"], r["sha256"]) for r in res]
        records = recordio.decode(Path(res[0]["out"]).read_bytes())
        assert sorted(records) == sorted(files.values())
    assert runs["2"] == runs["0"]
    assert len(set(runs["2"])) == 3, "the epochs were not shuffled differently"


@pytest.mark.parametrize("change", ["remove", "truncate", "grow"])
def test_a_file_changed_before_its_turn(change, tmp_path, ml_root, sidecar, consumer):
    """Removed, shrunk or grown (past the small-file limit): exit 1 naming it, the reader got a true
    prefix and no next FIFO; a grown file is not what was listed either."""
    src = tmp_path / "src"
    files = small_tree(src, seed=3)
    keys = sorted(files)
    target = keys[COUNT - 50]  # far beyond what the readers can have read ahead
    cfg = write_channel_file(tmp_path / "ch.yaml", [channel("train", src, RecordWrapperType="RecordIO")])
    side = sidecar.serve(cfg, ml_root, epochs=2, env_extra={"SAGEMAKER_PIPE_READERS": "2"})
    gate = tmp_path / "gate"
    reader = consumer(pattern(ml_root, "train"), 1, modes="gate:100000", gate=gate, out=tmp_path / "out")
    assert reader.next_line().get("event") == "gated"
    pids = wait_readers(side.pid, 2)
    if change == "remove":
        (src / target).unlink()
    elif change == "truncate":
        os.truncate(src / target, len(files[target]) // 2)
    else:
        files[target] = b"G" * 100_000
        (src / target).write_bytes(files[target])
    gate.touch()
    got = Path(reader.results()[0]["out"]).read_bytes()
    full = stream_of([files[k] for k in keys], True)
    assert side.wait(20) == 1, side.stderr
    line = data_error_line(side)
    assert target.rsplit("/", 1)[1] in line, line
    if change != "remove":
        assert "changed since it was listed" in line, line
    assert len(got) < len(full) and full.startswith(got)
    assert not fifo(ml_root, "train", 1).exists()
    assert gone(pids)


@pytest.mark.parametrize("throttle", [False, True], ids=["plain", "throttled"])
def test_early_closes_keep_the_readers_and_later_epochs_exact(throttle, tmp_path, ml_root, sidecar, consumer):
    """Answers in flight when the algorithm closes early (mid-answer, or before the first byte) are
    taken off the pipes, so the same readers serve the next epochs, and those are exact."""
    src = tmp_path / "src"
    small_tree(src, seed=4)
    fields = {"SageMakerPipe": {"ThrottleMBps": 400}} if throttle else {}
    cfg = write_channel_file(tmp_path / "ch.yaml", [channel("train", src, RecordWrapperType="RecordIO", **fields)])
    side = sidecar.serve(cfg, ml_root, epochs=4, env_extra={"SAGEMAKER_PIPE_READERS": "2"})
    res = consumer(pattern(ml_root, "train"), 4, modes="partial:300001,openclose,partial:1234567,full",
                   out=tmp_path / "out").results()
    want = expected_stream(src, record_io=True)
    assert [r["bytes"] for r in res[:3]] == [300_001, 0, 1_234_567]
    for r in (res[0], res[2]):
        assert want.startswith(Path(r["out"]).read_bytes()), f"epoch {r['epoch']}: not a prefix of the data"
    assert_epochs(res[3:], want, [3])
    assert side.wait(20) == 0, side.stderr
    assert side.stderr.count("reader-processes=2 started") == 1, side.stderr
    assert not reader_pids(side.pid)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_a_signal_mid_run_ends_the_readers_too(sig, tmp_path, ml_root, sidecar, consumer):
    src = tmp_path / "src"
    small_tree(src, seed=5)
    cfg = write_channel_file(tmp_path / "ch.yaml", [channel("train", src)])
    side = sidecar.serve(cfg, ml_root, env_extra={"SAGEMAKER_PIPE_READERS": "2"})
    reader = consumer(pattern(ml_root, "train"), 1, modes="stall:100000")
    assert reader.next_line().get("event") == "stalled"
    pids = wait_readers(side.pid, 2)
    time.sleep(0.3)  # the readers fill their pipes and wait
    t0 = time.monotonic()
    side.send(sig)
    assert side.wait(10) == SIGNAL_EXIT[sig], side.stderr
    assert time.monotonic() - t0 <= 2.0
    assert "Traceback" not in side.stderr, side.stderr
    assert gone(pids)


def test_a_reader_process_killed_is_one_line_and_exit_1(tmp_path, ml_root, sidecar, consumer):
    src = tmp_path / "src"
    small_tree(src, seed=6)
    cfg = write_channel_file(tmp_path / "ch.yaml", [channel("train", src)])
    side = sidecar.serve(cfg, ml_root, epochs=1, env_extra={"SAGEMAKER_PIPE_READERS": "2"})
    gate = tmp_path / "gate"
    reader = consumer(pattern(ml_root, "train"), 1, modes="gate:100000", gate=gate)
    assert reader.next_line().get("event") == "gated"
    pids = wait_readers(side.pid, 2)
    os.kill(min(pids), signal.SIGKILL)
    gate.touch()
    got = reader.results()[0]
    side.wait(20)
    line = data_error_line(side)
    assert "reader process" in line and "train" in line and "signal 9" in line, line
    assert got["bytes"] < len(expected_stream(src))
    assert gone(pids)


def test_a_bad_readers_setting_is_one_line_naming_it(tmp_path, ml_root, sidecar):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"a")
    cfg = write_channel_file(tmp_path / "ch.yaml", [channel("train", src)])
    proc = sidecar.run("--config", cfg, "--ml-root", ml_root, "--epochs", "1",
                       env_extra={"SAGEMAKER_PIPE_READERS": "lots"})
    assert proc.poll() == 2, proc.stderr
    line = error_line(proc.stderr)
    assert "SAGEMAKER_PIPE_READERS" in line and "lots" in line, line
    assert_nothing_written(ml_root)

