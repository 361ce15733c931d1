"""File and FastFile channels (issue 7): objects copied once into <ml-root>/input/data/<channel>/.

The sidecar runs as a real process (``python -m sagemaker_pipe``); every copied file is compared
by sha256 with the source object it came from (local folders, and S3 on a moto server on
127.0.0.1), and the copy must be complete before the first FIFO of any channel exists.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
from pathlib import Path

import pytest
from conftest import (
    assert_epochs,
    assert_nothing_written,
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
from s3_helpers import MIB, blob, gz, s3_env

pytestmark = pytest.mark.timeout(90)


def hashes(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file below root (no FIFOs, no temporary leftovers allowed)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_dir():
            continue
        assert stat.S_ISREG(p.lstat().st_mode), f"{p} is not a regular file"
        out[p.relative_to(root).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def source_hashes(files: dict[str, bytes]) -> dict[str, str]:
    return {k: hashlib.sha256(v).hexdigest() for k, v in files.items()}


VALIDATION = {
    "a.csv": b"a,1\na,2\n",
    "nested/deeper/b.bin": os.urandom(3 * MIB + 7),  # copied kernel-side in steps
    "nested/c.csv.gz": gz(b"compressed, and copied as it is\n" * 50),
    "empty.txt": b"",
    "é ü.txt": "ünïcödé ✓\n".encode(),
}


def test_file_and_fastfile_channels_are_copied_byte_exact_before_the_first_fifo(tmp_path, ml_root, sidecar,
                                                                                consumer):
    train = write_tree(tmp_path / "train", {"t.bin": os.urandom(70_000)})
    val = write_tree(tmp_path / "val", VALIDATION)
    fast = write_tree(tmp_path / "fast", {"x/y.bin": os.urandom(5000)})
    status = tmp_path / "status.json"
    cfg = write_channel_file(tmp_path / "job.yaml", {
        "TrainingInputMode": "Pipe",
        "InputDataConfig": [
            channel("train", train),
            channel("validation", val, InputMode="File", CompressionType="Gzip", RecordWrapperType="RecordIO"),
            channel("fast", fast, InputMode="FastFile"),
        ]})
    side = sidecar.serve(cfg, ml_root, "--status-file", status)
    data = ml_root / "input" / "data"
    wait_for_path(fifo(ml_root, "train", 0), timeout=30)
    # the moment the first FIFO exists, every File-mode file and every config file is complete
    assert hashes(data / "validation") == source_hashes(VALIDATION)
    assert hashes(data / "fast") == source_hashes({"x/y.bin": (fast / "x/y.bin").read_bytes()})
    conf = json.loads((ml_root / "input/config/inputdataconfig.json").read_text())
    assert {k: v["TrainingInputMode"] for k, v in conf.items()} == {
        "train": "Pipe", "validation": "File", "fast": "FastFile"}
    assert sorted(os.listdir(data)) == ["fast", "train_0", "validation"]  # no FIFO for File channels
    for p in (data / "validation").rglob("*"):
        assert stat.S_IMODE(p.stat().st_mode) == (0o755 if p.is_dir() else 0o644)
    wait_until(lambda: status.exists() and json.loads(status.read_text()).get("ready"), 10, "ready status")
    assert_epochs(consumer(pattern(ml_root, "train"), epochs=2).results(), expected_stream(train), range(2))
    assert side.alive(), side.stderr
    side.send(signal.SIGTERM)
    assert side.wait(10) == 0, side.stderr
    assert "CompressionType Gzip applies only in Pipe mode" in side.stderr
    assert "RecordWrapperType RecordIO applies only in Pipe mode" in side.stderr
    assert hashes(data / "validation") == source_hashes(VALIDATION)  # the data stays for the algorithm
    assert not (data / "train_2").exists()


def test_file_only_job_with_epochs_exits_0_once_written(tmp_path, ml_root, sidecar):
    val = write_tree(tmp_path / "val", VALIDATION)
    cfg = write_channel_file(tmp_path / "job.yaml", {"TrainingInputMode": "File",
                                                      "InputDataConfig": [channel("validation", val)]})
    side = sidecar.run("--config", cfg, "--ml-root", ml_root, "--epochs", "1", timeout=30)
    assert side.poll() == 0, side.stderr
    assert hashes(ml_root / "input/data/validation") == source_hashes(VALIDATION)
    assert sorted(os.listdir(ml_root / "input/data")) == ["validation"]
    assert "File channel validation: copied 5 objects" in side.stderr


def test_file_only_job_without_epochs_reports_ready_and_waits_until_stopped(tmp_path, ml_root, sidecar):
    val = write_tree(tmp_path / "val", {"v.csv": b"1,2\n"})
    status = tmp_path / "st" / "status.json"
    cfg = write_channel_file(tmp_path / "job.yaml", [channel("validation", val, InputMode="File")])
    side = sidecar.serve(cfg, ml_root, "--status-file", status)
    wait_until(lambda: status.exists() and json.loads(status.read_text()).get("ready"), 15, "ready status")
    doc = json.loads(status.read_text())
    assert doc["progress"]["validation"]["state"] == "copied"
    assert doc["progress"]["validation"]["bytes"] == 4
    assert (ml_root / "input/data/validation/v.csv").read_bytes() == b"1,2\n"
    wait_until(lambda: not side.alive() or json.loads(status.read_text())["updated"] > doc["updated"], 6,
               "a status refresh")
    assert side.alive(), side.stderr
    side.send(signal.SIGTERM)
    assert side.wait(10) == 0, side.stderr
    assert not status.exists()


def test_an_earlier_runs_files_are_replaced(tmp_path, ml_root, sidecar):
    val = write_tree(tmp_path / "val", {"new.csv": b"new\n"})
    write_tree(ml_root / "input/data/validation", {"old.csv": b"old\n", "old/deep.csv": b"x"})
    cfg = write_channel_file(tmp_path / "job.yaml", [channel("validation", val, InputMode="File")])
    side = sidecar.run("--config", cfg, "--ml-root", ml_root, "--epochs", "1")
    assert side.poll() == 0, side.stderr
    assert hashes(ml_root / "input/data/validation") == source_hashes({"new.csv": b"new\n"})


def test_sharded_file_channel_gives_each_host_a_disjoint_share(tmp_path, sidecar):
    files = {f"part-{i:02d}.csv": f"row {i}\n".encode() for i in range(10)}
    src = write_tree(tmp_path / "src", files)
    cfg = write_channel_file(tmp_path / "job.yaml", [channel("train", src, InputMode="File",
                                                             s3_S3DataDistributionType="ShardedByS3Key")])
    got = {}
    for host in ("algo-1", "algo-2"):
        root = tmp_path / host
        side = sidecar.run("--config", cfg, "--ml-root", root, "--epochs", "1", "--hosts", "algo-1,algo-2",
                           "--current-host", host)
        assert side.poll() == 0, side.stderr
        got[host] = hashes(root / "input/data/train")
    assert got["algo-1"] and got["algo-2"]
    assert not set(got["algo-1"]) & set(got["algo-2"])
    assert {**got["algo-1"], **got["algo-2"]} == source_hashes(files)


def test_a_local_manifest_keeps_its_entry_keys(tmp_path, ml_root, sidecar):
    objs = write_tree(tmp_path / "objs", {"a/one.bin": os.urandom(100), "two.bin": os.urandom(200),
                                          "unlisted.bin": b"not in the manifest"})
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps([{"prefix": str(objs) + "/"}, "a/one.bin", "two.bin"]))
    cfg = write_channel_file(tmp_path / "job.yaml", [channel("m", manifest, InputMode="File",
                                                             s3_S3DataType="ManifestFile")])
    side = sidecar.run("--config", cfg, "--ml-root", ml_root, "--epochs", "1")
    assert side.poll() == 0, side.stderr
    assert hashes(ml_root / "input/data/m") == {k: hashlib.sha256((objs / k).read_bytes()).hexdigest()
                                                for k in ("a/one.bin", "two.bin")}


# --------------------------------------------------------------------------------------------
# S3 (moto on 127.0.0.1)
# --------------------------------------------------------------------------------------------

S3_OBJECTS = {
    "data/train/a.csv": b"a,1\n",
    "data/train/big.bin": blob(11, 3 * MIB + 5),  # several ranged parts with SAGEMAKER_PIPE_S3_PART_MB=1
    "data/train/sub/c.bin": blob(12, 4099),
    "data/train/sub/": b"",  # folder marker: skipped
    "data/train/empty.bin": b"",
    "data/train/é.txt": "é\n".encode(),
    "data/training.csv": b"a plain string prefix matches me\n",
    "data/other/x": b"not under the prefix",
    "gz/1.gz": gz(b"stays compressed\n" * 10),
}


def test_s3_prefix_and_manifest_file_channels_copy_byte_exact(moto_s3, seeded_bucket, tmp_path, ml_root, sidecar):
    bucket = seeded_bucket(moto_s3, S3_OBJECTS)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps([{"prefix": f"s3://{bucket}/data/"}, "train/sub/c.bin", "other/x"]))
    cfg = write_channel_file(tmp_path / "job.yaml", {"TrainingInputMode": "File", "InputDataConfig": [
        channel("prefix", f"s3://{bucket}/data/tr"),
        channel("manifest", manifest, s3_S3DataType="ManifestFile"),
        channel("gz", f"s3://{bucket}/gz/", CompressionType="Gzip"),
    ]})
    side = sidecar.run("--config", cfg, "--ml-root", ml_root, "--epochs", "1", timeout=60,
                       env=s3_env(moto_s3, SAGEMAKER_PIPE_S3_PART_MB="1"))
    assert side.poll() == 0, side.stderr
    data = ml_root / "input/data"
    # S3Prefix keys are relative to the prefix's folder ("data/"), folder markers skipped
    want = {k[len("data/"):]: v for k, v in S3_OBJECTS.items()
            if k.startswith("data/tr") and not k.endswith("/")}
    assert hashes(data / "prefix") == source_hashes(want)
    assert hashes(data / "manifest") == source_hashes({"train/sub/c.bin": S3_OBJECTS["data/train/sub/c.bin"],
                                                       "other/x": S3_OBJECTS["data/other/x"]})
    assert hashes(data / "gz") == source_hashes({"1.gz": S3_OBJECTS["gz/1.gz"]})


@pytest.mark.parametrize("bad_key, why", [
    ("data/../escape.txt", "contains '..'"),
    ("data//etc/passwd", "is absolute"),
    ("data/a//b.txt", "empty or '.' path component"),
    ("data/./dot.txt", "empty or '.' path component"),
])
def test_keys_that_would_escape_the_folder_are_refused(moto_s3, seeded_bucket, tmp_path, ml_root, sidecar,
                                                        bad_key, why):
    bucket = seeded_bucket(moto_s3, {"data/ok.txt": b"ok", bad_key: b"bad"})
    cfg = write_channel_file(tmp_path / "job.yaml", [
        channel("train", tmp_path, InputMode="Pipe"),
        channel("validation", f"s3://{bucket}/data/", InputMode="File")])
    side = sidecar.run("--config", cfg, "--ml-root", ml_root, env=s3_env(moto_s3))
    assert side.poll() == 2, side.stderr
    line = error_line(side.stderr)
    assert "channel 'validation'" in line and repr(bad_key[len("data/"):]) in line and why in line, line
    assert_nothing_written(ml_root)


def test_s3_manifest_key_with_dotdot_is_refused(moto_s3, seeded_bucket, tmp_path, ml_root, sidecar):
    bucket = seeded_bucket(moto_s3, {"p/../../outside": b"x", "p/fine": b"y"})
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps([{"prefix": f"s3://{bucket}/p/"}, "fine", "../../outside"]))
    cfg = write_channel_file(tmp_path / "job.yaml", [channel("m", manifest, InputMode="File",
                                                             s3_S3DataType="ManifestFile")])
    side = sidecar.run("--config", cfg, "--ml-root", ml_root, "--epochs", "1", env=s3_env(moto_s3))
    assert side.poll() == 2, side.stderr
    line = error_line(side.stderr)
    assert "channel 'm'" in line and "'../../outside'" in line, line
    assert_nothing_written(ml_root)


def test_a_key_that_is_also_a_folder_is_refused(moto_s3, seeded_bucket, tmp_path, ml_root, sidecar):
    bucket = seeded_bucket(moto_s3, {"d/a": b"file", "d/a/b": b"file below it"})
    cfg = write_channel_file(tmp_path / "job.yaml", [channel("v", f"s3://{bucket}/d/", InputMode="File")])
    side = sidecar.run("--config", cfg, "--ml-root", ml_root, "--epochs", "1", env=s3_env(moto_s3))
    assert side.poll() == 2, side.stderr
    line = error_line(side.stderr)
    assert "channel 'v'" in line and "'a'" in line and "'a/b'" in line, line
    assert_nothing_written(ml_root)


def test_sigterm_while_a_download_stalls_exits_0_at_once_and_leaves_no_partial_file(
        moto_s3, seeded_bucket, fault_proxy, tmp_path, ml_root, sidecar):
    bucket = seeded_bucket(moto_s3, {"d/a.bin": blob(21, 100_000), "d/big.bin": blob(22, 3 * MIB)})
    proxy = fault_proxy(moto_s3)
    proxy.stall(25, after_bytes=200_000, times=None, method="GET", path_regex=f"^/{bucket}/d/big\\.bin$")
    status = tmp_path / "status.json"
    pipe_src = write_tree(tmp_path / "pipe", {"p.bin": b"p"})
    cfg = write_channel_file(tmp_path / "job.yaml", [channel("v", f"s3://{bucket}/d/", InputMode="File"),
                                                     channel("t", pipe_src)])
    side = sidecar.serve(cfg, ml_root, "--status-file", status,
                         env=s3_env(moto_s3, endpoint_url=proxy.endpoint_url))
    folder = ml_root / "input/data/v"
    wait_until(lambda: folder.exists() and any(p.name.startswith(".big.bin.") for p in folder.iterdir()), 20,
               "big.bin being copied")
    assert read_json(status)["ready"] is False
    st = sidecar.run("status", "--status-file", status)
    assert st.poll() == 1 and st.stdout.startswith("not ready (config files, File-mode data or first FIFOs"), st.stdout
    assert not fifo(ml_root, "t", 0).exists()  # no FIFO of any channel before the File-mode data is there
    side.send(signal.SIGTERM)
    assert side.wait(5) == 0, side.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["a.bin"]
    assert not fifo(ml_root, "t", 0).exists() and not status.exists()


def read_json(path: Path):
    return json.loads(path.read_text())
