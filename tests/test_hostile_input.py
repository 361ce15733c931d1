"""Hostile data and environments (issue 6), beyond test_engine.py, test_filemode.py and test_s3_faults.py.

* manifest keys that try to leave the manifest's local prefix (``../``, ``sub/../../``, absolute,
  NUL) are refused before anything is written (channel names: tests/test_fuzz_config.py);
* symlink loops under a local source do not hang the listing: it finishes and every real file is
  streamed exactly once;
* a source file that shrinks or vanishes mid-epoch stops the job with one line naming it (exit 1)
  instead of a short epoch: the RecordIO variants, a later file on the small-file path (< 64 KiB)
  and one on the stream path (test_engine.py has the plain variants);
* credentials given through the environment (AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN) never reach
  stdout or stderr, with ``-d``, on success and on error paths (endpoint down, access denied).
"""

from __future__ import annotations

import gzip
import json
import os
import random
import uuid
from pathlib import Path

import pytest
import recordio
from conftest import (
    assert_epochs,
    assert_nothing_written,
    channel,
    error_line,
    fifo,
    pattern,
    wait_for_path,
    write_channel_file,
    write_tree,
)
from s3_helpers import data_error_line, error_lines, s3_env, stream_of

# ------------------------------------------------------------------------------------------
# manifest keys escaping the prefix
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["../outside.bin", "sub/../../outside.bin", "/etc/hostname", "a\0b"],
                         ids=["dotdot", "nested-dotdot", "absolute", "nul"])
def test_local_manifest_keys_escaping_the_prefix_are_refused(key, tmp_path, ml_root, sidecar):
    (tmp_path / "outside.bin").write_bytes(b"data outside the prefix")
    src = write_tree(tmp_path / "src", {"fine": b"fine", "sub/x": b"x"})
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps([{"prefix": f"{src}/"}, "fine", key]))
    cfg = write_channel_file(tmp_path / "ch.yaml", [channel("m", manifest, s3_S3DataType="ManifestFile")])
    proc = sidecar.run("--config", cfg, "--ml-root", ml_root, "--epochs", "1", timeout=20)
    assert proc.poll() == 2, f"exit {proc.poll()}:\n{proc.stderr}"
    line = error_line(proc.stderr)
    assert "'m'" in line or str(manifest) in line, line
    assert_nothing_written(ml_root)


# ------------------------------------------------------------------------------------------
# symlink loops
# ------------------------------------------------------------------------------------------

@pytest.mark.timeout(30)
def test_symlink_loops_do_not_hang_and_every_real_file_is_streamed_once(tmp_path, ml_root, sidecar, consumer):
    files = {"a/one": b"one\n", "a/b/two": b"two\n" * 50, "c/three": os.urandom(100_000), "top": b"top\n"}
    src = write_tree(tmp_path / "src", files)
    os.symlink(".", src / "self-loop")  # src/self-loop -> src
    os.symlink("../..", src / "a" / "b" / "up-loop")  # -> src
    os.symlink("..", src / "c" / "parent-loop")  # -> src
    os.symlink(src / "a", src / "a" / "b" / "to-a")  # -> an ancestor
    cfg = write_channel_file(tmp_path / "ch.yaml", [channel("loops", src),
                                                    channel("rec", src, RecordWrapperType="RecordIO")])
    side = sidecar.serve(cfg, ml_root, epochs=2)
    keys = sorted(files, key=str.encode)
    want = b"".join(files[k] for k in keys)
    r_rec = consumer(pattern(ml_root, "rec"), 2, out=tmp_path / "rec")
    res = consumer(pattern(ml_root, "loops"), 2).results(25)
    assert [r["bytes"] for r in res] == [len(want)] * 2, "a file was streamed twice or not at all"
    assert_epochs(res, want, range(2))
    for r in r_rec.results(25):
        assert recordio.decode(Path(r["out"]).read_bytes()) == [files[k] for k in keys]
    assert side.wait(15) == 0, side.stderr


@pytest.mark.timeout(30)
def test_a_cycle_of_file_symlinks_is_refused_cleanly_not_hung(tmp_path, ml_root, sidecar):
    """Links that point at each other never resolve (ELOOP): a one-line error naming one of them,
    exit 2, nothing written. (A plain dangling link is skipped, like the tests' own listing.)"""
    src = write_tree(tmp_path / "src", {"real": b"real"})
    os.symlink("loop-b", src / "loop-a")
    os.symlink("loop-a", src / "loop-b")
    cfg = write_channel_file(tmp_path / "ch.yaml", [channel("train", src)])
    proc = sidecar.run("--config", cfg, "--ml-root", ml_root, "--epochs", "1", timeout=20)
    assert proc.poll() == 2, proc.stderr
    line = error_line(proc.stderr)
    assert "loop-a" in line or "loop-b" in line, line
    assert_nothing_written(ml_root)


# ------------------------------------------------------------------------------------------
# a source file that shrinks or vanishes mid-epoch
# ------------------------------------------------------------------------------------------

BIG = 6 << 20  # far more than a pipe buffer: the writer is blocked inside it when the gate holds


@pytest.mark.parametrize("record_io", [False, True], ids=["plain", "recordio"])
@pytest.mark.parametrize("kind", ["truncate-current", "remove-later-small", "remove-later-large",
                                  "truncate-later-large-to-zero", "truncate-later-small"])
def test_source_file_shrinking_or_vanishing_mid_epoch_is_an_error(kind, record_io, tmp_path, ml_root, sidecar,
                                                                   consumer):
    big = random.Random(3).randbytes(BIG)
    files = {"a-big": big, "m-small": b"m" * 1000, "n-large": random.Random(4).randbytes(300_000),
             "z-last": b"z" * 10}
    src = write_tree(tmp_path / "src", files)
    other = write_tree(tmp_path / "other", {"o": b"o"})
    fields = {"RecordWrapperType": "RecordIO"} if record_io else {}
    cfg = write_channel_file(tmp_path / "ch.yaml", [channel("train", src, **fields), channel("other", other)])
    side = sidecar.serve(cfg, ml_root, epochs=2)
    gate = tmp_path / "gate"
    reader = consumer(pattern(ml_root, "train"), 1, modes="gate:100000", gate=gate, out=tmp_path / "out")
    ev = reader.next_line()
    assert ev.get("event") == "gated", ev
    wait_for_path(fifo(ml_root, "train", 1))
    if kind == "truncate-current":
        target = src / "a-big"
        os.truncate(target, BIG // 2)
    elif kind == "remove-later-small":
        target = src / "m-small"  # read whole on the small-file path
        target.unlink()
    elif kind == "remove-later-large":
        target = src / "n-large"  # opened as a stream
        target.unlink()
    elif kind == "truncate-later-large-to-zero":
        target = src / "n-large"
        os.truncate(target, 0)
    else:
        target = src / "m-small"
        os.truncate(target, 10)
    gate.touch()
    rc = side.wait(20)
    got = reader.results()[0]
    full = stream_of([files[k] for k in sorted(files)], record_io)
    assert rc == 1, f"expected exit 1, got {rc}:\n{side.stderr}"
    line = data_error_line(side)
    assert target.name in line, line
    data = Path(got["out"]).read_bytes()
    assert len(data) < len(full), "the reader saw a complete-looking epoch"
    if not kind.startswith("truncate-later"):
        assert full.startswith(data), "the reader got bytes that are not the data"
    assert not (ml_root / "input" / "data" / "train_1").exists()


def test_file_replaced_by_a_larger_one_before_its_turn_stops_the_job(tmp_path, ml_root, sidecar, consumer):
    """The other direction: a later small file that grows (past the 64 KiB fast path) is not what
    was listed: exit 1 naming it, and the reader never sees a complete-looking epoch."""
    files = {"a-big": random.Random(5).randbytes(BIG), "m-small": b"m" * 1000}
    src = write_tree(tmp_path / "src", files)
    cfg = write_channel_file(tmp_path / "ch.yaml", [channel("train", src, RecordWrapperType="RecordIO")])
    side = sidecar.serve(cfg, ml_root, epochs=1)
    gate = tmp_path / "gate"
    reader = consumer(pattern(ml_root, "train"), 1, modes="gate:100000", gate=gate, out=tmp_path / "out")
    assert reader.next_line().get("event") == "gated"
    grown = b"M" * 100_000
    (src / "m-small").write_bytes(grown)
    gate.touch()
    got = Path(reader.results()[0]["out"]).read_bytes()
    assert side.wait(20) == 1, side.stderr
    line = data_error_line(side)
    assert "m-small" in line and "changed since it was listed" in line, line
    full = stream_of([files["a-big"], files["m-small"]], True)
    assert len(got) < len(full) and full.startswith(got)


# ------------------------------------------------------------------------------------------
# secrets from the environment never reach the logs
# ------------------------------------------------------------------------------------------

def _secrets() -> dict[str, str]:
    return {"AWS_SECRET_ACCESS_KEY": "SeCrEtKeY/" + uuid.uuid4().hex + "+zz",
            "AWS_SESSION_TOKEN": "SeSsIoNtOkEn" + uuid.uuid4().hex * 3}


def _assert_not_leaked(proc, secrets: dict[str, str], ml_root: Path | None = None) -> None:
    outputs = {"stderr": proc.stderr, "stdout": proc.stdout}
    if ml_root is not None and ml_root.exists():
        for p in ml_root.rglob("*"):
            if p.is_file():
                outputs[str(p)] = p.read_text(errors="replace")
    for name, value in secrets.items():
        for core in (value, value.split("/")[-1], value[12:40]):
            for where, text in outputs.items():
                assert core not in text, f"{name} (or part of it) appears in {where}"


def test_secrets_never_logged_with_debug_on_success(moto_s3, seeded_bucket, tmp_path, ml_root, sidecar, consumer):
    objects = {"p/a.bin": b"a" * 1000, "p/b.gz": gzip.compress(b"b" * 5000)}
    bucket = seeded_bucket(moto_s3, objects)
    secrets = _secrets()
    cfg = write_channel_file(tmp_path / "ch.yaml", [
        channel("plain", f"s3://{bucket}/p/a"),
        channel("zipped", f"s3://{bucket}/p/b", CompressionType="Gzip", RecordWrapperType="RecordIO")])
    side = sidecar.serve(cfg, ml_root, "-d", "--progress-interval", "0.2", epochs=2, env=s3_env(moto_s3, **secrets))
    assert_epochs(consumer(pattern(ml_root, "plain"), 2).results(), objects["p/a.bin"], range(2))
    assert_epochs(consumer(pattern(ml_root, "zipped"), 2).results(), recordio.encode(b"b" * 5000), range(2))
    assert side.wait(20) == 0, side.stderr
    assert "p/a.bin" in side.stderr, "-d should log each object"
    _assert_not_leaked(side, secrets, ml_root)


def test_secrets_never_logged_when_the_endpoint_is_down(moto_s3, tmp_path, ml_root, sidecar):
    from s3_servers import free_ports

    (port,) = free_ports(1)
    secrets = _secrets()
    cfg = write_channel_file(tmp_path / "ch.yaml", [channel("train", "s3://bucket/train/")])
    env = s3_env(moto_s3, endpoint_url=f"http://127.0.0.1:{port}", AWS_MAX_ATTEMPTS="2", **secrets)
    proc = sidecar.run("--config", cfg, "--ml-root", ml_root, "-d", timeout=50, env=env)
    assert proc.poll() == 2, proc.stderr
    assert len(error_lines(proc.stderr)) == 1 and "Traceback" not in proc.stderr, proc.stderr
    _assert_not_leaked(proc, secrets)
    assert_nothing_written(ml_root)


@pytest.mark.parametrize("where", ["listing", "object"])
def test_secrets_never_logged_when_access_is_denied(where, moto_s3, seeded_bucket, fault_proxy, tmp_path, ml_root,
                                                    sidecar, consumer):
    bucket = seeded_bucket(moto_s3, {"d/a": b"a" * 100, "d/b": b"b" * 100})
    proxy = fault_proxy(moto_s3)
    if where == "listing":
        proxy.status(403, times=None, method="GET", query="list-type=2")
    else:
        proxy.status(403, times=None, method="GET", path_regex=f"^/{bucket}/d/b$")
    secrets = _secrets()
    env = s3_env(moto_s3, endpoint_url=proxy.endpoint_url, AWS_MAX_ATTEMPTS="2", **secrets)
    cfg = write_channel_file(tmp_path / "ch.yaml", [channel("train", f"s3://{bucket}/d/")])
    side = sidecar.serve(cfg, ml_root, "-d", epochs=1, env=env)
    if where == "object":
        consumer(pattern(ml_root, "train"), 1, timeout=40)
    rc = side.wait(45)
    if where == "listing":
        assert rc == 2, side.stderr
        assert_nothing_written(ml_root)
    else:
        assert rc == 1, side.stderr
        assert "d/b" in data_error_line(side)
    _assert_not_leaked(side, secrets)
