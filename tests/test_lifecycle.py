"""The FIFO lifecycle (PIPE_MODE.md sections 1, 2): creation ahead of time, removal, early close,
stale files, signals, --epochs, config files, permissions, run forms."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import threading
import time
from pathlib import Path

import pytest
from conftest import (
    SIGNAL_EXIT,
    assert_epochs,
    base_env,
    cat_hashes,
    channel,
    expected_stream,
    fifo,
    homogeneous_resources,
    is_fifo,
    pattern,
    sha,
    wait_for_path,
    wait_gone,
    wait_stale_replaced,
    write_channel_file,
    write_tree,
)

FIFO_NAME = re.compile(r"^(?P<ch>[A-Za-z0-9.\-_]+)_(?P<n>\d+)$")


def two_sources(tmp_path: Path) -> tuple[Path, Path]:
    a = write_tree(tmp_path / "src-a", {"a1": b"alpha-one\n" * 300, "sub/a2": bytes(range(256)) * 40})
    b = write_tree(tmp_path / "src-b", {"b1": b"beta\n", "b2": b"\x00\x01\x02" * 1000})
    return a, b


def two_channel_job(tmp_path: Path, **job) -> tuple[Path, Path, Path]:
    a, b = two_sources(tmp_path)
    doc = {"InputDataConfig": [channel("alpha", a), channel("beta", b)]}
    doc.update(job)
    return write_channel_file(tmp_path / "channels.yaml", doc), a, b


def fifos_in(data_dir: Path) -> list[str]:
    if not data_dir.exists():
        return []
    return sorted(n for n in os.listdir(data_dir) if is_fifo(data_dir / n))


def no_pipe_names_left(data_dir: Path, channels: list[str]) -> None:
    left = [n for n in (os.listdir(data_dir) if data_dir.exists() else [])
            if (m := FIFO_NAME.match(n)) and m["ch"] in channels]
    assert left == [], f"left behind in {data_dir}: {left}"
    assert fifos_in(data_dir) == [], f"FIFOs left behind: {fifos_in(data_dir)}"


class Watcher:
    """Polls (every ~2 ms, bounded) whether any of ``paths`` ever exists."""

    def __init__(self, paths: list[Path], limit: float = 40.0):
        self.paths = paths
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self._limit = limit
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        deadline = time.monotonic() + self._limit
        while not self._stop.is_set() and time.monotonic() < deadline:
            for p in self.paths:
                if os.path.lexists(p):
                    self.seen.add(p.name)
            time.sleep(0.002)

    def stop(self) -> set[str]:
        self._stop.set()
        self._t.join(5)
        return self.seen


# ------------------------------------------------------------------------------------------
# creation ahead of time, independence of channels, removal
# ------------------------------------------------------------------------------------------

def test_first_fifos_at_start_next_only_when_epoch_starts(tmp_path, ml_root, sidecar, consumer):
    cfg, a, b = two_channel_job(tmp_path)
    side = sidecar.serve(cfg, ml_root)
    for ch in ("alpha", "beta"):
        wait_for_path(fifo(ml_root, ch, 0))
        assert is_fifo(fifo(ml_root, ch, 0)), f"{ch}_0 is not a FIFO"
    time.sleep(0.3)
    assert not fifo(ml_root, "alpha", 1).exists(), "alpha_1 created before epoch 0 started"
    assert not fifo(ml_root, "beta", 1).exists(), "beta_1 created before epoch 0 started"
    assert side.alive()
    # One epoch of alpha starts: alpha_1 appears; beta stays at 0.
    c = consumer(pattern(ml_root, "alpha"), 1)
    assert_epochs(c.results(), expected_stream(a), [0])
    assert c.seen[-1]["next_exists_at_eof"] is True
    assert is_fifo(fifo(ml_root, "alpha", 1))
    assert not fifo(ml_root, "beta", 1).exists()
    assert side.alive()


def test_absent_reader_does_not_delay_other_channel(tmp_path, ml_root, sidecar, consumer, cat_reader):
    cfg, a, b = two_channel_job(tmp_path)
    side = sidecar.serve(cfg, ml_root)
    c_beta = consumer(pattern(ml_root, "beta"), 4)
    assert_epochs(c_beta.results(), expected_stream(b), range(4))
    # alpha's reader never came: alpha is still waiting at epoch 0
    assert is_fifo(fifo(ml_root, "alpha", 0))
    assert not fifo(ml_root, "alpha", 1).exists()
    assert side.alive(), side.stderr
    # Each channel has its own epoch counter: alpha starts at 0 now, beta is at 4.
    late = cat_reader(ml_root / "input" / "data" / "alpha", 3)
    assert cat_hashes(late) == [sha(expected_stream(a))] * 3
    c_beta2 = consumer(pattern(ml_root, "beta"), 1, start=4)
    assert_epochs(c_beta2.results(), expected_stream(b), [4])
    assert side.alive(), side.stderr


def test_stalled_reader_does_not_stall_other_channel(tmp_path, ml_root, sidecar, consumer):
    big = write_tree(tmp_path / "big", {"huge": os.urandom(6 << 20)})
    cfg, a, b = two_channel_job(tmp_path)
    cfg = write_channel_file(tmp_path / "three.yaml", [channel("big", big), channel("alpha", a),
                                                       channel("beta", b)])
    side = sidecar.serve(cfg, ml_root)
    stalled = consumer(pattern(ml_root, "big"), 1, modes="stall:1000")
    ev = stalled.next_line()
    assert ev.get("event") == "stalled", ev
    time.sleep(0.2)  # the writer of "big" is now blocked on a full pipe
    ca = consumer(pattern(ml_root, "alpha"), 3)
    cb = consumer(pattern(ml_root, "beta"), 3, modes="slow:4096:0")
    assert_epochs(ca.results(), expected_stream(a), range(3))
    assert_epochs(cb.results(), expected_stream(b), range(3))
    assert side.alive(), side.stderr


def test_twenty_channels_served_concurrently(tmp_path, ml_root, sidecar, cat_reader):
    srcs = {}
    chans = []
    for i in range(20):
        name = f"ch{i:02d}"
        srcs[name] = write_tree(tmp_path / "srcs" / name, {"f": f"channel {i}\n".encode() * (i + 1),
                                                           "g/h": bytes([i]) * 1000})
        chans.append(channel(name, srcs[name]))
    cfg = write_channel_file(tmp_path / "twenty.yaml", {"InputDataConfig": chans})
    side = sidecar.serve(cfg, ml_root)
    # readers start in reverse order of the channel list
    readers = {name: cat_reader(ml_root / "input" / "data" / name, 3) for name in reversed(list(srcs))}
    for name, r in readers.items():
        assert cat_hashes(r) == [sha(expected_stream(srcs[name]))] * 3, name
    assert side.alive(), side.stderr


def test_next_fifo_exists_at_eof_and_finished_fifos_are_removed(tmp_path, ml_root, sidecar, consumer):
    cfg, a, b = two_channel_job(tmp_path)
    side = sidecar.serve(cfg, ml_root)
    ca = consumer(pattern(ml_root, "alpha"), 4)
    cb = consumer(pattern(ml_root, "beta"), 4, modes="slow:1000:0")
    for c, src, ch in ((ca, a, "alpha"), (cb, b, "beta")):
        res = c.results()
        assert_epochs(res, expected_stream(src), range(4))
        missing = [r["epoch"] for r in res if r["next_exists_at_eof"] is not True]
        assert not missing, f"{ch}: FIFO n+1 did not exist when epoch n ended, for n in {missing}"
        for n in range(4):
            wait_gone(fifo(ml_root, ch, n))
        assert is_fifo(fifo(ml_root, ch, 4))
    assert side.alive(), side.stderr


def test_mlio_style_nonblocking_readers(tmp_path, ml_root, sidecar, consumer):
    """ml-io opens each FIFO O_NONBLOCK with only 3 tries 1 s apart and select()s for data: the
    next FIFO must be there at once, and a non-blocking reader must get the whole epoch."""
    cfg, a, b = two_channel_job(tmp_path)
    side = sidecar.serve(cfg, ml_root)
    wait_for_path(fifo(ml_root, "alpha", 0))
    wait_for_path(fifo(ml_root, "beta", 0))
    ca = consumer(pattern(ml_root, "alpha"), 4, modes="mlio")
    cb = consumer(pattern(ml_root, "beta"), 4, modes="mlio")
    for c, src in ((ca, a), (cb, b)):
        res = c.results()
        assert_epochs(res, expected_stream(src), range(4))
        assert [r["open_attempts"] for r in res] == [1] * 4, res
    assert side.alive(), side.stderr


# ------------------------------------------------------------------------------------------
# readers that stop early
# ------------------------------------------------------------------------------------------

def test_early_close_and_open_close_end_the_epoch_quietly(tmp_path, ml_root, sidecar, consumer, shell):
    big = write_tree(tmp_path / "big", {f"f{i}": os.urandom(150_000) for i in range(3)})
    cfg = write_channel_file(tmp_path / "ch.yaml", {"InputDataConfig": [
        channel("train", big), channel("aux", tmp_path / "src-aux")]})
    write_tree(tmp_path / "src-aux", {"x": b"aux data\n" * 10})
    side = sidecar.serve(cfg, ml_root)
    expected = expected_stream(big)
    c = consumer(pattern(ml_root, "train"), 6,
                 modes="partial:10,openclose,full,partial:300000,openclose,full")
    c_aux = consumer(pattern(ml_root, "aux"), 6, modes="openclose,full,partial:1,full")
    res = c.results()
    assert [r["epoch"] for r in res] == list(range(6))
    assert all(r["is_fifo"] for r in res)
    assert (res[0]["bytes"], res[0]["sha256"]) == (10, sha(expected[:10]))
    assert res[1]["bytes"] == 0
    assert (res[2]["bytes"], res[2]["sha256"]) == (len(expected), sha(expected))
    assert (res[3]["bytes"], res[3]["sha256"]) == (300000, sha(expected[:300000]))
    assert (res[5]["bytes"], res[5]["sha256"]) == (len(expected), sha(expected))
    aux = expected_stream(tmp_path / "src-aux")
    r_aux = c_aux.results()
    assert [(r["epoch"], r["bytes"]) for r in r_aux] == [(0, 0), (1, len(aux)), (2, 1), (3, len(aux)),
                                                         (4, len(aux)), (5, len(aux))]
    assert r_aux[1]["sha256"] == sha(aux)
    # and `head -c` (a real early-closing reader) on the next epochs
    h = shell(f'head -c 5 "{fifo(ml_root, "train", 6)}" | sha256sum')
    assert cat_hashes(h) == [sha(expected[:5])]
    c2 = consumer(pattern(ml_root, "train"), 1, start=7)
    assert_epochs(c2.results(), expected, [7])
    time.sleep(0.2)
    assert side.alive(), f"the sidecar died after an early close:\n{side.stderr}"
    assert "Traceback" not in side.stderr, side.stderr
    assert "sagemaker-pipe: error" not in side.stderr, f"an early close was logged as an error:\n{side.stderr}"


# ------------------------------------------------------------------------------------------
# stale files from an earlier run
# ------------------------------------------------------------------------------------------

def test_stale_fifos_and_regular_files_are_replaced(tmp_path, ml_root, sidecar, consumer):
    cfg, a, b = two_channel_job(tmp_path)
    data = ml_root / "input" / "data"
    data.mkdir(parents=True)
    stale = {"alpha_0": "fifo", "alpha_1": "file", "alpha_5": "file", "alpha_12": "fifo",
             "beta_0": "file", "beta_1": "fifo"}
    for name, kind in stale.items():
        if kind == "fifo":
            os.mkfifo(data / name)
        else:
            (data / name).write_bytes(b"stale regular file " + name.encode())
        os.chmod(data / name, 0o600)  # a fresh FIFO is 0644: tells the two apart
    (data / "unrelated.txt").write_bytes(b"not ours")

    side = sidecar.serve(cfg, ml_root)
    wait_stale_replaced([data / name for name in stale], must_exist=[data / "alpha_0", data / "beta_0"])
    assert is_fifo(data / "alpha_0") and is_fifo(data / "beta_0")
    ca = consumer(pattern(ml_root, "alpha"), 3)
    cb = consumer(pattern(ml_root, "beta"), 3)
    ra, rb = ca.results(), cb.results()
    assert_epochs(ra, expected_stream(a), range(3))
    assert_epochs(rb, expected_stream(b), range(3))
    for r in ra + rb:
        assert r["perm"] == "0o644", f"epoch {r['epoch']}: stale FIFO reused ({r['perm']})"
    for name in ("alpha_5", "alpha_12"):
        assert not (data / name).exists(), f"stale {name} not removed"
    assert (data / "unrelated.txt").read_bytes() == b"not ours", "an unrelated file was touched"
    assert side.alive(), side.stderr


# ------------------------------------------------------------------------------------------
# signals
# ------------------------------------------------------------------------------------------

def assert_clean_exit(side, sig: int, data: Path, channels: list[str]) -> None:
    t0 = time.monotonic()
    os.kill(side.pid, sig)
    try:
        rc = side.popen.wait(timeout=10)
    except Exception:
        raise AssertionError(f"no exit within 10 s after {signal.Signals(sig).name}:\n{side.stderr}") from None
    dt = time.monotonic() - t0
    assert rc == SIGNAL_EXIT[sig], f"exit status {rc} after {signal.Signals(sig).name}:\n{side.stderr}"
    assert dt <= 2.0, f"exit took {dt:.2f} s after {signal.Signals(sig).name}"
    no_pipe_names_left(data, channels)
    assert "Traceback" not in side.stderr, side.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_signal_while_waiting_for_readers(sig, tmp_path, ml_root, sidecar):
    cfg, a, b = two_channel_job(tmp_path)
    side = sidecar.serve(cfg, ml_root)
    wait_for_path(fifo(ml_root, "alpha", 0))
    wait_for_path(fifo(ml_root, "beta", 0))
    time.sleep(0.2)
    assert_clean_exit(side, sig, ml_root / "input" / "data", ["alpha", "beta"])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_signal_while_blocked_writing_to_a_stalled_reader(sig, tmp_path, ml_root, sidecar, consumer):
    big = write_tree(tmp_path / "big", {"huge": os.urandom(8 << 20)})
    small = write_tree(tmp_path / "small", {"s": b"small"})
    cfg = write_channel_file(tmp_path / "ch.yaml", [channel("big", big), channel("small", small)])
    side = sidecar.serve(cfg, ml_root)
    stalled = consumer(pattern(ml_root, "big"), 1, modes="stall:1000")
    ev = stalled.next_line()
    assert ev.get("event") == "stalled" and ev["bytes"] == 1000, ev
    wait_for_path(fifo(ml_root, "big", 1))
    time.sleep(0.3)  # the writer fills the pipe and blocks
    assert side.alive()
    assert_clean_exit(side, sig, ml_root / "input" / "data", ["big", "small"])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_signal_between_epochs_after_reads(sig, tmp_path, ml_root, sidecar, consumer):
    cfg, a, b = two_channel_job(tmp_path)
    side = sidecar.serve(cfg, ml_root)
    c = consumer(pattern(ml_root, "alpha"), 2, modes="full,partial:3")
    res = c.results()
    assert res[0]["sha256"] == sha(expected_stream(a))
    wait_for_path(fifo(ml_root, "alpha", 2))
    assert_clean_exit(side, sig, ml_root / "input" / "data", ["alpha", "beta"])


@pytest.mark.timeout(10)
def test_a_signal_while_the_main_thread_holds_the_stop_lock_does_not_deadlock():
    """The sidecar's main loop sits in stop.wait(0.1), which holds the Event's lock for a moment
    ten times a second. A signal handled in that moment must not need the lock: the handler used
    to call stop.set() itself, and a CI run hung there."""
    from sagemaker_pipe.sidecar import stop_on_signals

    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    wakeup = signal.set_wakeup_fd(-1)
    stop = threading.Event()
    try:
        stop_on_signals(stop)
        with stop._cond:  # type: ignore[attr-defined]  # the lock stop.wait() holds
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)  # the Python-level handler runs in here, in this thread, with the lock held
            assert not stop.is_set()
        assert stop.wait(5), "the signal was lost"
    finally:
        signal.set_wakeup_fd(wakeup)
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def test_sigterm_via_entrypoint(tmp_path, ml_root, sidecar):
    cfg, a, b = two_channel_job(tmp_path)
    side = sidecar(entrypoint=True, env_extra={"SAGEMAKER_PIPE_CONFIG": str(cfg),
                                               "SAGEMAKER_PIPE_ML_ROOT": str(ml_root)})
    wait_for_path(fifo(ml_root, "alpha", 0))
    wait_for_path(fifo(ml_root, "beta", 0))
    assert_clean_exit(side, signal.SIGTERM, ml_root / "input" / "data", ["alpha", "beta"])


# ------------------------------------------------------------------------------------------
# --epochs N
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_epochs", [1, 2])
def test_epochs_limit_exits_zero_and_never_creates_fifo_n(n_epochs, tmp_path, ml_root, sidecar, consumer):
    cfg, a, b = two_channel_job(tmp_path)
    watch = Watcher([fifo(ml_root, ch, k) for ch in ("alpha", "beta") for k in (n_epochs, n_epochs + 1)])
    side = sidecar.serve(cfg, ml_root, epochs=n_epochs)
    ca = consumer(pattern(ml_root, "alpha"), n_epochs)
    ra = ca.results()
    assert_epochs(ra, expected_stream(a), range(n_epochs))
    assert ra[-1]["next_exists_at_eof"] is False, f"alpha_{n_epochs} existed at the end of the last epoch"
    time.sleep(0.3)
    assert side.alive(), "exited before every channel had its epochs"
    cb = consumer(pattern(ml_root, "beta"), n_epochs)
    assert_epochs(cb.results(), expected_stream(b), range(n_epochs))
    rc = side.wait(10)
    seen = watch.stop()
    assert rc == 0, side.stderr
    assert seen == set(), f"FIFOs beyond --epochs {n_epochs} were created: {sorted(seen)}"
    no_pipe_names_left(ml_root / "input" / "data", ["alpha", "beta"])


# ------------------------------------------------------------------------------------------
# config files
# ------------------------------------------------------------------------------------------

class ConfigWatcher:
    """Watches, from before the sidecar starts, for the first FIFO and the config files; records
    which config files existed at the moment the first FIFO was seen, and any config file that was
    ever seen incomplete (not valid JSON): they must be written atomically."""

    NAMES = ("inputdataconfig.json", "resourceconfig.json", "hyperparameters.json")

    def __init__(self, ml_root: Path, first_fifos: list[Path]):
        self.conf = ml_root / "input" / "config"
        self.first_fifos = first_fifos
        self.at_first_fifo: dict[str, bool] | None = None
        self.partial: list[str] = []
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            for name in self.NAMES:
                p = self.conf / name
                try:
                    json.loads(p.read_bytes())
                except FileNotFoundError:
                    pass
                except ValueError:
                    self.partial.append(name)
            if any(os.path.lexists(f) for f in self.first_fifos):
                self.at_first_fifo = {n: (self.conf / n).exists() for n in self.NAMES}
                return
            time.sleep(0.001)

    def result(self) -> tuple[dict | None, list[str]]:
        self._t.join(25)
        return self.at_first_fifo, self.partial


def read_conf(ml_root: Path, name: str):
    return json.loads((ml_root / "input" / "config" / name).read_text())


def test_config_files_written_before_first_fifo_with_exact_content(tmp_path, ml_root, sidecar, consumer):
    a, b = two_sources(tmp_path)
    c_src = write_tree(tmp_path / "src-c", {"c": b"c"})
    cfg = write_channel_file(tmp_path / "job.yaml", {
        "TrainingInputMode": "Pipe",
        "HyperParameters": {"lr": 0.1, "batch_size": 32, "optimizer": "adam", "note": "a b c"},
        "ResourceConfig": {"CurrentHost": "algo-2", "Hosts": ["algo-3", "algo-1", "algo-2"]},
        "InputDataConfig": [
            channel("train", a, ContentType="text/csv"),
            channel("validation", b, RecordWrapperType="RecordIO", ContentType="application/x-recordio",
                    InputMode="Pipe"),
            channel("test", c_src, CompressionType="None", ShuffleConfig={"Seed": 3}),
        ],
    })
    watcher = ConfigWatcher(ml_root, [fifo(ml_root, ch, 0) for ch in ("train", "validation", "test")])
    side = sidecar.serve(cfg, ml_root)
    wait_for_path(fifo(ml_root, "train", 0))
    at_first, partial = watcher.result()
    assert at_first == {n: True for n in ConfigWatcher.NAMES}, f"config files at the first FIFO: {at_first}"
    assert partial == [], f"config files seen half-written: {partial}"
    assert sorted(os.listdir(ml_root / "input" / "config")) == sorted(ConfigWatcher.NAMES)
    assert read_conf(ml_root, "inputdataconfig.json") == {
        "train": {"TrainingInputMode": "Pipe", "S3DistributionType": "FullyReplicated",
                  "RecordWrapperType": "None", "ContentType": "text/csv"},
        "validation": {"TrainingInputMode": "Pipe", "S3DistributionType": "FullyReplicated",
                       "RecordWrapperType": "RecordIO", "ContentType": "application/x-recordio"},
        "test": {"TrainingInputMode": "Pipe", "S3DistributionType": "FullyReplicated",
                 "RecordWrapperType": "None"},
    }
    assert read_conf(ml_root, "resourceconfig.json") == homogeneous_resources("algo-2", ["algo-1", "algo-2", "algo-3"])
    assert read_conf(ml_root, "hyperparameters.json") == {
        "lr": "0.1", "batch_size": "32", "optimizer": "adam", "note": "a b c"}
    c = consumer(pattern(ml_root, "train"), 1)
    assert_epochs(c.results(), expected_stream(a), [0])
    assert side.alive(), side.stderr


def test_config_file_defaults(tmp_path, ml_root, sidecar):
    a, b = two_sources(tmp_path)
    cfg = write_channel_file(tmp_path / "list.yaml", [
        channel("train", a), channel("other", b, s3_S3DataDistributionType="ShardedByS3Key")])
    side = sidecar.serve(cfg, ml_root)
    wait_for_path(fifo(ml_root, "train", 0))
    wait_for_path(fifo(ml_root, "other", 0))
    assert read_conf(ml_root, "inputdataconfig.json") == {
        "train": {"TrainingInputMode": "Pipe", "S3DistributionType": "FullyReplicated",
                  "RecordWrapperType": "None"},
        "other": {"TrainingInputMode": "Pipe", "S3DistributionType": "ShardedByS3Key",
                  "RecordWrapperType": "None"},
    }
    assert read_conf(ml_root, "resourceconfig.json") == homogeneous_resources("algo-1", ["algo-1"])
    assert read_conf(ml_root, "hyperparameters.json") == {}
    assert side.alive(), side.stderr


@pytest.mark.parametrize("form", ["job-yaml", "describe-json"])
def test_channel_input_mode_defaults_to_job_training_input_mode(form, tmp_path, ml_root, sidecar):
    a, b = two_sources(tmp_path)
    chans = [channel("piped", a, InputMode="Pipe"), channel("inherits", b),
             channel("fast", b, InputMode="FastFile")]
    if form == "job-yaml":
        doc = {"TrainingInputMode": "File", "InputDataConfig": chans}
        cfg = write_channel_file(tmp_path / "job.yaml", doc)
    else:
        doc = {"TrainingJobName": "j", "AlgorithmSpecification": {
            "TrainingImage": "img", "TrainingInputMode": "File"}, "InputDataConfig": chans,
            "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 5}}
        cfg = write_channel_file(tmp_path / "describe.json", doc, fmt="json")
    side = sidecar.serve(cfg, ml_root)
    wait_for_path(fifo(ml_root, "piped", 0))
    got = read_conf(ml_root, "inputdataconfig.json")
    assert {k: v["TrainingInputMode"] for k, v in got.items()} == {
        "piped": "Pipe", "inherits": "File", "fast": "FastFile"}
    assert side.alive(), side.stderr
    side.send(signal.SIGTERM)
    assert side.wait(5) == 0


# ------------------------------------------------------------------------------------------
# permissions
# ------------------------------------------------------------------------------------------

def test_fifos_are_0644_under_umask_077(tmp_path, ml_root, sidecar, consumer):
    cfg, a, b = two_channel_job(tmp_path)
    side = sidecar.serve(cfg, ml_root, umask=0o077)
    wait_for_path(fifo(ml_root, "beta", 0))
    assert stat.S_IMODE(os.lstat(fifo(ml_root, "beta", 0)).st_mode) == 0o644
    c = consumer(pattern(ml_root, "alpha"), 3)
    res = c.results()
    assert_epochs(res, expected_stream(a), range(3))
    assert [r["perm"] for r in res] == ["0o644"] * 3
    assert stat.S_IMODE(os.lstat(fifo(ml_root, "alpha", 3)).st_mode) == 0o644
    assert side.alive(), side.stderr


@pytest.mark.parametrize("dirs", ["made-by-test", "made-by-sidecar"])
def test_another_uid_can_read_the_fifos_under_umask_077(dirs, world_dir, procs, sidecar):
    """The algorithm may run under any uid: `cat` as nobody reads every epoch. With
    "made-by-sidecar" the sidecar (umask 077) also creates <ml-root>/input/data itself."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run the reader as another uid")
    src = write_tree(world_dir / "src", {"a": b"readable by anyone\n" * 100})
    other = write_tree(world_dir / "other", {"o": b"o"})
    for p in [world_dir / "src", world_dir / "other", *(world_dir / "src").iterdir(), world_dir / "other" / "o"]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    ml = world_dir / "ml"
    if dirs == "made-by-test":
        (ml / "input" / "data").mkdir(parents=True)
        for p in (ml, ml / "input", ml / "input" / "data"):
            os.chmod(p, 0o755)
    cfg = write_channel_file(world_dir / "ch.yaml", [channel("train", src), channel("other", other)])
    side = sidecar.serve(cfg, ml, umask=0o077)
    wait_for_path(fifo(ml, "train", 0))
    script = (f'for n in 0 1 2; do i=0; while [ ! -p "{ml}/input/data/train_$n" ]; do i=$((i+1)); '
              f'[ $i -gt 300 ] && exit 3; sleep 0.01; done; cat "{ml}/input/data/train_$n" | sha256sum; done')
    reader = procs.start(["sh", "-c", script], "nobody-cat", env=base_env(), cwd=world_dir, user=65534)
    rc = reader.wait(20)
    modes = {str(p.relative_to(world_dir)): oct(stat.S_IMODE(os.stat(p).st_mode))
             for p in (ml, ml / "input", ml / "input" / "data")}
    assert rc == 0, f"uid 65534 could not read the FIFOs (rc={rc}); folder modes {modes}; {reader.stderr}"
    assert [line.split()[0] for line in reader.stdout.splitlines()] == [sha(expected_stream(src))] * 3
    for name in ("inputdataconfig.json", "resourceconfig.json", "hyperparameters.json"):
        mode = stat.S_IMODE(os.stat(ml / "input" / "config" / name).st_mode)
        assert mode & 0o444 == 0o444, f"{name} is not readable by other uids ({oct(mode)})"
    assert side.alive(), side.stderr


# ------------------------------------------------------------------------------------------
# run forms: entrypoint.py and python -m with environment variables
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("form", ["entrypoint", "module"])
def test_environment_variables_configure_the_run(form, tmp_path, ml_root, sidecar, consumer, cat_reader):
    cfg, a, b = two_channel_job(tmp_path)
    env = {"SAGEMAKER_PIPE_CONFIG": str(cfg), "SAGEMAKER_PIPE_ML_ROOT": str(ml_root),
           "SAGEMAKER_PIPE_EPOCHS": "3"}
    side = sidecar(entrypoint=(form == "entrypoint"), env_extra=env, cwd=tmp_path / "src-a")
    ca = consumer(pattern(ml_root, "alpha"), 3)
    cb = cat_reader(ml_root / "input" / "data" / "beta", 3)
    assert_epochs(ca.results(), expected_stream(a), range(3))
    assert cat_hashes(cb) == [sha(expected_stream(b))] * 3
    assert side.wait(10) == 0, side.stderr
    assert read_conf(ml_root, "hyperparameters.json") == {}
    no_pipe_names_left(ml_root / "input" / "data", ["alpha", "beta"])


def test_entrypoint_container_defaults_are_overridable(tmp_path, ml_root, sidecar):
    """Without SAGEMAKER_PIPE_CONFIG, entrypoint.py reads /config/channels.yaml; on this machine that
    file does not exist, so the run must fail cleanly naming it (and never touch /opt/ml)."""
    if os.path.exists("/config/channels.yaml"):
        pytest.skip("/config/channels.yaml exists on this machine")
    side = sidecar(entrypoint=True, env_extra={"SAGEMAKER_PIPE_ML_ROOT": str(ml_root)})
    rc = side.wait(15)
    assert rc == 2, side.stderr
    lines = [line for line in side.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("sagemaker-pipe: error:"), side.stderr
    assert "/config/channels.yaml" in lines[0]
