"""The original tool's command line: ``python -m sagemaker_pipe [-d] [-x] [-r] [--epochs N]
CHANNEL_NAME SRC DEST`` -> FIFOs DEST/CHANNEL_NAME_<epoch>, no config files anywhere."""

from __future__ import annotations

import gzip
import os
import signal
import time
from pathlib import Path

import pytest
import recordio
from conftest import (
    SIGNAL_EXIT,
    cat_hashes,
    error_line,
    expected_stream,
    object_payloads,
    sha,
    wait_for_path,
    wait_stale_replaced,
    write_tree,
)

EPOCHS = 3


def legacy_sources(tmp_path: Path) -> tuple[Path, Path]:
    a = write_tree(tmp_path / "src-a", {
        "a/b": b"a/b\n", "a.b": b"a.b\n", "a0": b"a0\n", "A": b"A\n", "_": b"_\n",
        "nested/deep/x.csv": b"1,2\n" * 100, ".hidden": b"hidden\n", "empty": b""})
    b = write_tree(tmp_path / "src-b", {
        "p1.gz": gzip.compress(b"first\n" * 50), "p2.gz": gzip.compress(b"m1\n") + gzip.compress(b"m2\n"),
        "p3.gz": gzip.compress(b"")})
    return a, b


def assert_only_fifos_of(dest: Path, channels: list[str]) -> None:
    for name in os.listdir(dest):
        ch, _, n = name.rpartition("_")
        assert ch in channels and n.isdigit(), f"unexpected file {name} in {dest}"


def no_config_written(tmp_path: Path, sidecar) -> None:
    assert not list(tmp_path.glob("**/inputdataconfig.json")), "legacy form wrote config files"
    assert not list(tmp_path.glob("**/resourceconfig.json"))
    assert not list(sidecar.cwd.iterdir()), f"files written in the cwd: {list(sidecar.cwd.iterdir())}"


def test_legacy_plain_two_processes_into_one_dest(tmp_path, sidecar, consumer, cat_reader):
    a, b = legacy_sources(tmp_path)
    dest = tmp_path / "dest"
    dest.mkdir()
    p1 = sidecar("train", str(a), str(dest))
    p2 = sidecar("raw", str(b), str(dest))
    c = consumer(str(dest / "train_{n}"), EPOCHS)
    cat = cat_reader(dest / "raw", EPOCHS)
    res = c.results()
    exp = expected_stream(a)
    assert [r["epoch"] for r in res] == list(range(EPOCHS))
    assert all(r["is_fifo"] and r["sha256"] == sha(exp) for r in res), res
    assert all(r["next_exists_at_eof"] for r in res)
    assert cat_hashes(cat) == [sha(expected_stream(b))] * EPOCHS
    assert p1.alive() and p2.alive(), p1.stderr + p2.stderr
    assert_only_fifos_of(dest, ["train", "raw"])
    no_config_written(tmp_path, sidecar)


def test_legacy_relative_paths_resolve_against_the_cwd(tmp_path, sidecar, consumer, cat_reader):
    a, b = legacy_sources(tmp_path)
    p1 = sidecar("train", "src-a", "dest", cwd=tmp_path)
    p2 = sidecar("-x", "gz", "./src-b", "dest", cwd=tmp_path)
    wait_for_path(tmp_path / "dest" / "train_0")
    c = consumer(str(tmp_path / "dest" / "train_{n}"), EPOCHS)
    cat = cat_reader(tmp_path / "dest" / "gz", EPOCHS)
    assert [r["sha256"] for r in c.results()] == [sha(expected_stream(a))] * EPOCHS
    assert cat_hashes(cat) == [sha(expected_stream(b, gunzip=True))] * EPOCHS
    assert p1.alive() and p2.alive(), p1.stderr + p2.stderr
    assert_only_fifos_of(tmp_path / "dest", ["train", "gz"])


@pytest.mark.parametrize("flags", [["-x"], ["-r"], ["-x", "-r"], ["-d", "-x", "-r"]],
                         ids=["gunzip", "recordio", "gunzip+recordio", "debug+gunzip+recordio"])
def test_legacy_gunzip_and_recordio_flags(flags, tmp_path, sidecar, consumer, cat_reader):
    a, b = legacy_sources(tmp_path)
    gunzip, rio = "-x" in flags, "-r" in flags
    dest = tmp_path / "dest"
    dest.mkdir()
    p1 = sidecar(*flags, "gz", str(b), str(dest))
    p2 = sidecar(*[f for f in flags if f != "-x"], "plain", str(a), str(dest))
    c = consumer(str(dest / "gz_{n}"), EPOCHS, out=tmp_path / "out")
    cat = cat_reader(dest / "plain", EPOCHS)
    res = c.results()
    exp = expected_stream(b, gunzip=gunzip, record_io=rio)
    assert [r["sha256"] for r in res] == [sha(exp)] * EPOCHS, (len(exp), [r["bytes"] for r in res])
    if rio:
        for r in res:
            assert recordio.decode(Path(r["out"]).read_bytes()) == object_payloads(b, gunzip=gunzip)
    assert cat_hashes(cat) == [sha(expected_stream(a, record_io=rio))] * EPOCHS
    assert p1.alive() and p2.alive(), p1.stderr + p2.stderr
    if "-d" in flags:
        for name in ("p1.gz", "p2.gz", "p3.gz"):
            assert name in p1.stderr, f"-d did not log {name}:\n{p1.stderr}"
    no_config_written(tmp_path, sidecar)


def test_legacy_epochs_limit_and_stale_fifo(tmp_path, sidecar, consumer):
    a, _ = legacy_sources(tmp_path)
    dest = tmp_path / "dest"
    dest.mkdir()
    os.mkfifo(dest / "train_0")        # a stale FIFO crashed the original tool
    (dest / "train_1").write_bytes(b"stale")
    os.chmod(dest / "train_0", 0o600)
    os.chmod(dest / "train_1", 0o600)
    p = sidecar("--epochs", "2", "train", str(a), str(dest))
    wait_stale_replaced([dest / "train_0", dest / "train_1"], must_exist=[dest / "train_0"])
    c = consumer(str(dest / "train_{n}"), 2)
    res = c.results()
    assert [r["sha256"] for r in res] == [sha(expected_stream(a))] * 2
    assert [r["is_fifo"] for r in res] == [True, True]
    assert res[-1]["next_exists_at_eof"] is False, "train_2 created despite --epochs 2"
    assert p.wait(10) == 0, p.stderr
    assert not (dest / "train_2").exists()
    assert os.listdir(dest) == [], f"left behind: {os.listdir(dest)}"
    no_config_written(tmp_path, sidecar)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_legacy_signal_removes_fifos(sig, tmp_path, sidecar, consumer):
    a, _ = legacy_sources(tmp_path)
    dest = tmp_path / "dest"
    dest.mkdir()
    p = sidecar("train", str(a), str(dest))
    c = consumer(str(dest / "train_{n}"), 1)
    c.results()
    wait_for_path(dest / "train_1")
    t0 = time.monotonic()
    os.kill(p.pid, sig)
    rc = p.wait(10)
    assert rc == SIGNAL_EXIT[sig], p.stderr
    assert time.monotonic() - t0 <= 2.0
    assert os.listdir(dest) == [], f"left behind: {os.listdir(dest)}"


@pytest.mark.parametrize("what", ["missing-src", "empty-src", "bad-name", "epochs-zero"])
def test_legacy_bad_arguments(what, tmp_path, sidecar):
    a, _ = legacy_sources(tmp_path)
    dest = tmp_path / "dest"
    dest.mkdir()
    empty = tmp_path / "empty"
    empty.mkdir()
    args = {
        "missing-src": ["train", str(tmp_path / "missing"), str(dest)],
        "empty-src": ["train", str(empty), str(dest)],
        "bad-name": ["bad name", str(a), str(dest)],
        "epochs-zero": ["--epochs", "0", "train", str(a), str(dest)],
    }[what]
    token = {"missing-src": "missing", "empty-src": ("empty", "train"), "bad-name": "bad name",
             "epochs-zero": "epochs"}[what]
    p = sidecar.run(*args, timeout=15)
    assert p.popen.returncode == 2, p.stderr
    line = error_line(p.stderr)
    options = token if isinstance(token, tuple) else (token,)
    assert any(o in line for o in options), line
    assert os.listdir(dest) == []
