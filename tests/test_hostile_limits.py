"""Hostile input and slow sources (issue 16), with real processes and files.

* the channel file: only a regular file of at most 16 MiB is read; a YAML alias bomb anywhere in it
  is one line and exit 2, fast and in little memory (SageMaker's own field limits: test_config_errors.py);
* a listed local file that became a symlink to /dev/zero, a FIFO, a folder or a larger file stops the
  job with one line, in the channel's own process and in reader processes alike, under a memory limit;
* at start-up (and in ``validate --check-sources``) files the sidecar may not read, and File-mode keys
  the target file system cannot hold, are an error before anything is written;
* prompt bytes: the first byte of an epoch of tiny S3 objects (3,000 here, 20,000 in bench/cases_latency.py)
  comes long before its end, and a throttled channel of small files arrives evenly, not all at the end.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import (
    assert_nothing_written,
    base_env,
    channel,
    error_line,
    pattern,
    sha,
    write_channel_file,
    write_tree,
)
from s3_helpers import data_error_line, s3_env

MIB = 1 << 20
pytestmark = pytest.mark.timeout(120)


# ------------------------------------------------------------------------------------------
# 1. the channel file
# ------------------------------------------------------------------------------------------

def _laughs(indent: str, levels: int = 9) -> str:
    """A "billion laughs": nine levels of nine aliases each (9**9 strings once expanded)."""
    lines = [f'{indent}l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"{indent}l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def _bomb(where: str, src: Path) -> str:
    chan = f"  - ChannelName: train\n    DataSource: {{S3DataSource: {{S3Uri: '{src}'}}}}\n"
    if where == "hyperparameters":
        return f"InputDataConfig:\n{chan}HyperParameters:\n{_laughs('  ')}"
    if where == "resource-config":
        return f"InputDataConfig:\n{chan}ResourceConfig:\n{_laughs('  ')}  Hosts: *l8\n"
    if where == "channel-field":
        return f"x:\n{_laughs('  ')}InputDataConfig:\n{chan}    ContentType: *l8\n"
    if where == "input-data-config":
        return f"x:\n{_laughs('  ')}InputDataConfig: *l8\n"
    return f"{_laughs('')}InputDataConfig: [*l8]\n"  # the document as a whole


@pytest.mark.parametrize("where", ["hyperparameters", "resource-config", "channel-field", "input-data-config",
                                   "document"])
def test_an_alias_bomb_anywhere_is_one_line_fast_and_small(where, tmp_path, ml_root, sidecar):
    src = write_tree(tmp_path / "src", {"f": b"data"})
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_bomb(where, src))
    assert bomb.stat().st_size < 1000
    good = write_channel_file(tmp_path / "good.yaml", [channel("train", src)])
    validate = [sys.executable, "-m", "sagemaker_pipe", "validate"]
    _, _, good_s, good_kib = _run_peak(validate + [str(good)], tmp_path / "good.err")
    rc, stderr, bomb_s, bomb_kib = _run_peak(validate + [str(bomb)], tmp_path / "bomb.err")
    assert rc == 2, stderr
    line = error_line(stderr)
    assert "bomb.yaml" in line, line
    assert bomb_s < good_s + 0.3, f"{bomb_s:.2f} CPU s against {good_s:.2f} for a good file"
    assert bomb_kib < good_kib + 8 * 1024, f"peak RSS {bomb_kib} KiB against {good_kib} KiB for a good file"
    side = sidecar.run("--config", bomb, "--ml-root", ml_root, "--epochs", "1", timeout=20)
    assert side.poll() == 2, side.stderr
    assert "bomb.yaml" in error_line(side.stderr)
    assert_nothing_written(ml_root)


def _run_peak(argv: list[str], errfile: Path, timeout: float = 30.0) -> tuple[int, str, float, int]:
    """Run a command to its end: exit status, stderr, CPU seconds, peak RSS in KiB (the kernel's
    counts, from wait4: CPU time, unlike wall time, does not grow with the machine's load)."""
    started = time.monotonic()
    with open(errfile, "wb") as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=base_env())
    while not (done := os.wait4(proc.pid, os.WNOHANG))[0]:
        if time.monotonic() - started > timeout:
            proc.kill()
            os.wait4(proc.pid, 0)
            pytest.fail(f"{argv} did not end within {timeout} s")
        time.sleep(0.005)
    proc.returncode = os.waitstatus_to_exitcode(done[1])
    usage = done[2]
    return proc.returncode, errfile.read_text(), usage.ru_utime + usage.ru_stime, usage.ru_maxrss


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "dev-urandom", "symlink-to-dev-zero", "folder", "over-16-mib"])
def test_a_channel_file_that_is_not_a_small_regular_file_is_refused(kind, tmp_path, ml_root, sidecar):
    path = tmp_path / "channels.yaml"
    if kind == "fifo":
        os.mkfifo(path)  # nobody ever writes it: reading it would block for ever
    elif kind == "dev-zero":
        path = Path("/dev/zero")
    elif kind == "dev-urandom":
        path = Path("/dev/urandom")
    elif kind == "symlink-to-dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "folder":
        path.mkdir()
    else:
        src = write_tree(tmp_path / "src", {"f": b"data"})
        write_channel_file(path, [channel("train", src)])
        with open(path, "a") as f:  # a valid job, then comments past the limit
            f.write(("# " + "x" * 1021 + "\n") * (16 * 1024 + 1))
    for argv in (["--config", path, "--ml-root", ml_root, "--epochs", "1"], ["validate", path]):
        proc = sidecar.run(*argv, timeout=15)
        assert proc.poll() == 2, proc.stderr
        assert str(path) in error_line(proc.stderr)
    assert_nothing_written(ml_root)


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
@pytest.mark.parametrize("data_type", ["ManifestFile", "AugmentedManifestFile"])
def test_a_manifest_that_is_not_a_regular_file_is_refused(data_type, kind, tmp_path, ml_root, sidecar):
    manifest = tmp_path / "m.json"
    if kind == "fifo":
        os.mkfifo(manifest)
    else:
        manifest.symlink_to("/dev/zero")
    extra = {"s3_AttributeNames": ["source-ref"]} if data_type == "AugmentedManifestFile" else {}
    cfg = write_channel_file(tmp_path / "ch.yaml", [channel("m", manifest, s3_S3DataType=data_type, **extra)])
    proc = sidecar.run("--config", cfg, "--ml-root", ml_root, "--epochs", "1", timeout=15)
    assert proc.poll() == 2, proc.stderr
    line = error_line(proc.stderr)
    assert "channel 'm'" in line and "not a regular file" in line, line
    assert_nothing_written(ml_root)


def test_a_channel_file_just_under_the_limit_is_read(tmp_path, ml_root, sidecar):
    src = write_tree(tmp_path / "src", {"f": b"data"})
    path = write_channel_file(tmp_path / "channels.yaml", [channel("train", src)])
    with open(path, "a") as f:
        f.write(("# " + "x" * 1021 + "\n") * (16 * 1024 - 1))
    assert 16 * MIB - 1024 < path.stat().st_size <= 16 * MIB
    proc = sidecar.run("validate", path, timeout=60)
    assert proc.poll() == 0, proc.stderr


# ------------------------------------------------------------------------------------------
# 3. a listed local file that changed before its turn
# ------------------------------------------------------------------------------------------

RUN = 4500  # small files in a row: past readers.MIN_UNITS, so reader processes read them


def _swap(target: Path, kind: str, tmp_path: Path) -> None:
    target.unlink()
    if kind == "symlink-to-dev-zero":
        target.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(target)  # no writer: an open or a read that waits would hang the epoch
    elif kind == "folder":
        target.mkdir()
    else:
        target.write_bytes(b"L" * (3 * MIB))


@pytest.mark.parametrize("kind", ["symlink-to-dev-zero", "fifo", "folder", "larger"])
@pytest.mark.parametrize("path", ["small-own-process", "small-reader-processes", "large-stream"])
def test_a_listed_file_that_changed_stops_the_job_in_bounded_memory(path, kind, tmp_path, ml_root, sidecar,
                                                                   consumer):
    """The writer is held inside a-big (the reader is gated) while the file is swapped; then one
    line, exit 1, no complete-looking epoch: under a 1 GiB address-space limit, which a read of
    /dev/zero to the end of memory would hit (and then say something else)."""
    rng = random.Random(16)
    files = {"a-big": rng.randbytes(4 * MIB)}
    files.update({f"m/{i:05d}": rng.randbytes(rng.randrange(1, 300)) for i in range(RUN)})
    files["z-large"] = rng.randbytes(MIB)
    src = write_tree(tmp_path / "src", files)
    target = src / ("z-large" if path == "large-stream" else f"m/{RUN - 10:05d}")
    cfg = write_channel_file(tmp_path / "ch.yaml", [channel("train", src)])
    readers = "2" if path == "small-reader-processes" else "0"
    side = sidecar.serve(cfg, ml_root, epochs=1, memory_mib=1024, env_extra={"SAGEMAKER_PIPE_READERS": readers})
    gate = tmp_path / "gate"
    reader = consumer(pattern(ml_root, "train"), 1, modes="gate:100000", gate=gate, out=tmp_path / "out")
    assert reader.next_line().get("event") == "gated"
    _swap(target, kind, tmp_path)
    gate.touch()
    assert side.wait(30) == 1, side.stderr
    line = data_error_line(side)
    assert target.name in line and "changed since it was listed" in line, line
    got = Path(reader.results()[0]["out"]).read_bytes()
    full = b"".join(files[k] for k in sorted(files))
    assert len(got) < len(full) and full.startswith(got)
    assert not (ml_root / "input" / "data" / "train_1").exists()


# ------------------------------------------------------------------------------------------
# 4. failures found before the first byte
# ------------------------------------------------------------------------------------------

AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m", "sagemaker_pipe"]


def test_files_the_sidecar_may_not_read_are_refused_at_start_up(world_dir, procs):
    """Run as another uid (tests run as root, which reads anything): five files of mode 0600 among
    readable ones are named (the first three, then how many more) before anything is written, by
    the sidecar and by `validate --check-sources` alike."""
    src = write_tree(world_dir / "src", {f"f{i}": b"x" * i for i in range(8)})
    locked = [f"f{i}" for i in (1, 2, 4, 5, 7)]
    for p in [world_dir / "src", *(world_dir / "src").iterdir()]:
        p.chmod(0o600 if p.name in locked else 0o755 if p.is_dir() else 0o644)
    ml = world_dir / "ml"
    ml.mkdir(mode=0o777)
    ml.chmod(0o777)
    cfg = write_channel_file(world_dir / "ch.yaml", [channel("train", src)])
    cfg.chmod(0o644)
    for argv in (["--config", cfg, "--ml-root", ml, "--epochs", "1"], ["validate", "--check-sources", cfg]):
        proc = procs.start(AS_NOBODY + [str(a) for a in argv], "sidecar", env=base_env(), cwd=world_dir)
        assert proc.wait(15) == 2, proc.stderr
        line = error_line(proc.stderr)
        assert "channel 'train'" in line and "5 files" in line and "and 2 more" in line, line
        assert all(str(src / name) in line for name in locked[:3]), line
    assert_nothing_written(ml)
    for p in (world_dir / "src").iterdir():
        p.chmod(0o644)
    proc = procs.start(AS_NOBODY + ["validate", "--check-sources", str(cfg)], "validate", env=base_env(),
                       cwd=world_dir)
    assert proc.wait(15) == 0, proc.stderr


def test_a_file_mode_key_with_a_300_byte_name_is_refused_before_anything_is_written(
        moto_s3, seeded_bucket, tmp_path, ml_root, sidecar):
    long_name = "n" * 300  # S3 takes it (keys go to 1,024 bytes); no Linux file system does
    bucket = seeded_bucket(moto_s3, {"d/ok": b"ok", f"d/sub/{long_name}": b"bad"})
    cfg = write_channel_file(tmp_path / "job.yaml", [channel("train", tmp_path / "job.yaml", InputMode="Pipe"),
                                                     channel("v", f"s3://{bucket}/d/", InputMode="File")])
    for argv in (["--config", cfg, "--ml-root", ml_root, "--epochs", "1"],
                 ["validate", "--check-sources", "--ml-root", ml_root, cfg]):
        proc = sidecar.run(*argv, env=s3_env(moto_s3), timeout=30)
        assert proc.poll() == 2, proc.stderr
        line = error_line(proc.stderr)
        assert "channel 'v'" in line and "path component of 300 bytes" in line and "allows 255" in line, line
    assert_nothing_written(ml_root)


def test_a_file_mode_path_longer_than_the_file_system_takes_is_refused(tmp_path, sidecar):
    """Each name fits, but the ml-root's path and the key together pass PATH_MAX (4,096 bytes)."""
    key = "/".join(["k" * 200] * 12) + "/f"  # 2,413 bytes: the source holds it
    src = write_tree(tmp_path / "src", {key: b"deep"})
    ml_root = tmp_path / "/".join(["m" * 200] * 9)  # does not exist yet: limits come from its nearest folder
    cfg = write_channel_file(tmp_path / "job.yaml", [channel("deep", src, InputMode="File")])
    proc = sidecar.run("--config", cfg, "--ml-root", ml_root, "--epochs", "1", timeout=20)
    assert proc.poll() == 2, proc.stderr
    line = error_line(proc.stderr)
    assert "channel 'deep'" in line and "allows 4095" in line, line
    assert not ml_root.exists() or not any((ml_root / "input").rglob("*.json"))


# ------------------------------------------------------------------------------------------
# 5. prompt bytes
# ------------------------------------------------------------------------------------------

TINY = 3000  # objects of a few bytes: together far under the 1 MiB a batch may gather


@pytest.mark.timeout(240)
def test_the_first_tiny_s3_object_reaches_the_reader_long_before_the_epoch_ends(seaweed_s3, bucket_name, tmp_path,
                                                                                ml_root, sidecar, consumer):
    """Before, small pieces waited in the batch until a megabyte gathered: an epoch of tiny objects
    came all at once at its very end (ml-io gives up after 60 s without data)."""
    from concurrent.futures import ThreadPoolExecutor

    from botocore.config import Config
    from s3_servers import empty_and_delete_bucket

    client = seaweed_s3.client(config=Config(max_pool_connections=16))
    client.create_bucket(Bucket=bucket_name)
    objects = {f"t/{i:05d}": b"%05d\n" % i for i in range(TINY)}
    try:
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda kv: client.put_object(Bucket=bucket_name, Key=kv[0], Body=kv[1]), objects.items()))
        cfg = write_channel_file(tmp_path / "ch.yaml", [channel("train", f"s3://{bucket_name}/t/")])
        side = sidecar.serve(cfg, ml_root, epochs=1, env=s3_env(seaweed_s3))
        got = consumer(pattern(ml_root, "train"), 1, wait=60, timeout=200).results(200)[0]
        assert side.wait(30) == 0, side.stderr
    finally:
        empty_and_delete_bucket(client, bucket_name)
    assert got["sha256"] == sha(b"".join(objects[k] for k in sorted(objects)))
    assert got["first_byte_s"] is not None and got["first_byte_s"] < 0.2 * got["seconds"], got


def test_a_throttled_channel_of_small_files_arrives_evenly(tmp_path, ml_root, sidecar, consumer):
    """100 files of 10 KB at 0.2 MB/s: about 5 s, the first bytes within half a second, and by
    each second of the epoch about its share (before: nothing for 5 s, then everything)."""
    rng = random.Random(5)
    files = {f"f{i:03d}": rng.randbytes(10_000) for i in range(100)}
    src = write_tree(tmp_path / "src", files)
    rate = 0.2e6
    cfg = write_channel_file(tmp_path / "ch.yaml", [channel("train", src, SageMakerPipe={"ThrottleMBps": 0.2})])
    side = sidecar.serve(cfg, ml_root, epochs=1)
    got = consumer(pattern(ml_root, "train"), 1, timeline=True).results(30)[0]
    assert side.wait(15) == 0, side.stderr
    assert got["sha256"] == sha(b"".join(files[k] for k in sorted(files)))
    assert got["first_byte_s"] < 0.5, got["first_byte_s"]
    timeline = got["timeline"]

    def by(t: float) -> int:
        return max([n for s, n in timeline if s <= t], default=0)

    for t in (1.0, 2.0, 3.0, 4.0):
        assert 0.6 * rate * t <= by(t) <= 1.4 * rate * t + 20_000, f"{by(t)} bytes by {t} s: {timeline[:5]}..."
