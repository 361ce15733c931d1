"""`sagemaker-pipe run`: a whole local job, with a real algorithm process (tests/run_algorithm.py).

The algorithm finds its root through SAGEMAKER_BASE_DIR (as sagemaker-training does) and treats
EOF as the end of an epoch; what it read is compared byte for byte with the source. After every
run: no process of the job, no FIFO and no lock is left.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tarfile
import time
from pathlib import Path

import pytest
import yaml
from conftest import (
    TESTS,
    base_env,
    channel,
    expected_stream,
    sha,
    wait_for_path,
    wait_until,
    write_channel_file,
    write_tree,
)
from s3_helpers import gz
from s3_servers import MotoServer

pytestmark = pytest.mark.timeout(90)
RUN = [sys.executable, "-m", "sagemaker_pipe", "run"]
ALGO = str(TESTS / "run_algorithm.py")
ERROR = "sagemaker-pipe: error: "


def job(tmp_path: Path, **train_files: bytes) -> Path:
    train = write_tree(tmp_path / "train", train_files or {"a": os.urandom(200_000), "b/c": b"c" * 5000})
    val = write_tree(tmp_path / "val", {"v1.gz": gz(b"v1" * 4000), "v2.gz": gz(os.urandom(3000))})
    return write_channel_file(tmp_path / "job.yaml", {
        "InputDataConfig": [channel("train", train), channel("val", val, CompressionType="Gzip")],
        "HyperParameters": {"epochs": "2"}})


class Job:
    """One `run` process and what its algorithm reported."""

    def __init__(self, procs, tmp_path: Path, *args: object, algo_env: dict[str, str] | None = None,
                 env: dict[str, str] | None = None, ml_root: Path | None = None):
        self.tmp_path = tmp_path
        self.results = tmp_path / "results.jsonl"
        self.ml_root = ml_root or tmp_path / "ml"
        env = dict(env or base_env(), RESULTS=str(self.results), **(algo_env or {}))
        self.proc = procs.start([*RUN, "--ml-root", str(self.ml_root), *map(str, args)], "run", env=env,
                                cwd=tmp_path)

    def wait(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout)

    def lines(self) -> list[dict]:
        return [json.loads(x) for x in self.results.read_text().splitlines()] if self.results.exists() else []

    def epochs(self) -> list[dict]:
        return [x for x in self.lines() if "epoch" in x]

    def last_error(self) -> str:
        errors = [x for x in self.proc.stderr.splitlines() if x.startswith(ERROR)]
        assert errors, self.proc.stderr
        assert "Traceback" not in self.proc.stderr, self.proc.stderr
        return errors[-1]

    def assert_clean(self) -> None:
        """No process mentioning this test's folder, no FIFO, no lock."""
        data = self.ml_root / "input" / "data"
        left = list(data.glob("*")) if data.exists() else []
        left += list(self.ml_root.glob("**/.sagemaker-pipe.lock"))
        assert left == [], left
        assert processes_mentioning(str(self.tmp_path)) == []


def processes_mentioning(text: str) -> list[str]:
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
            except OSError:
                continue
            if text in cmd:
                found.append(f"{d.name}: {cmd}")
    return found


def tar_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def test_the_algorithm_reads_exact_epochs_and_its_model_and_output_are_packed(procs, tmp_path):
    cfg = job(tmp_path)
    run = Job(procs, tmp_path, "--config", cfg, "--", sys.executable, ALGO, tmp_path,
              algo_env={"EPOCHS": "3", "MODEL": "weights", "OUTPUT": "metrics"})
    assert run.wait() == 0, run.proc.stderr
    first = run.lines()[0]
    assert first == {"job": "job", "argv": [str(tmp_path)], "host": "algo-1", "hosts": ["algo-1"]}
    want = {"train": expected_stream(tmp_path / "train"), "val": expected_stream(tmp_path / "val", gunzip=True)}
    got = [(e["channel"], e["epoch"], e["bytes"], e["sha256"]) for e in run.epochs()]
    assert got == [(name, n, len(want[name]), sha(want[name])) for n in range(3) for name in ("train", "val")]
    output = tmp_path / "output"  # beside the ml-root
    assert tar_members(output / "model.tar.gz") == {"model.txt": b"weights"}
    assert tar_members(output / "output.tar.gz") == {"out.txt": b"metrics"}
    assert f"ready: train {run.ml_root / 'input' / 'data' / 'train_0'}" in run.proc.stderr
    run.assert_clean()


@pytest.mark.parametrize("ending, status", [("EXIT=0", 0), ("EXIT=3", 3), ("SIGNAL=10", 128 + 10)])
def test_the_algorithm_s_exit_status_is_the_run_s(ending, status, procs, tmp_path):
    key, value = ending.split("=")
    cfg = job(tmp_path)
    algo_env = {key: value, "FAILURE": "loss is NaN\nat step 7"} if status else {key: value}
    run = Job(procs, tmp_path, "--config", cfg, "--output", tmp_path / "out", "--", sys.executable, ALGO, tmp_path,
              algo_env=algo_env)
    assert run.wait() == status, run.proc.stderr
    if status:
        assert run.last_error() == f"{ERROR}algorithm exited with status {status}: loss is NaN at step 7"
    assert not (tmp_path / "out" / "model.tar.gz").exists()  # the algorithm wrote no model
    run.assert_clean()


@pytest.mark.parametrize("fault", ["invalid-gzip", "truncated-file"])
def test_a_failed_stream_is_never_an_eof_and_the_run_exits_1_naming_the_object(fault, procs, tmp_path):
    big = os.urandom(8 << 20)  # far more than a pipe holds
    if fault == "invalid-gzip":
        src = write_tree(tmp_path / "src", {"a.gz": gz(big, 1), "b.gz": b"not gzip at all\n" * 100})
        cfg = write_channel_file(tmp_path / "job.yaml", [channel("train", src, CompressionType="Gzip")])
        bad, algo_env = src / "b.gz", {}
    else:
        src = write_tree(tmp_path / "src", {"a": big, "z": b"z" * 100})
        cfg = write_channel_file(tmp_path / "job.yaml", [channel("train", src)])
        bad = src / "a"  # truncated by the algorithm itself once it has read 1 MiB of it
        algo_env = {"HOOK_AFTER": str(1 << 20), "HOOK": f"truncate:{bad}:{2 << 20}"}
    run = Job(procs, tmp_path, "--config", cfg, "--grace", "2", "--", sys.executable, ALGO, tmp_path,
              algo_env={"EPOCHS": "2", **algo_env})
    assert run.wait() == 1, run.proc.stderr
    line = run.last_error()
    assert str(bad) in line, line
    assert run.epochs() == [], "the algorithm saw the failed epoch end"
    run.assert_clean()


@pytest.mark.timeout(120)
def test_an_s3_object_lost_mid_epoch_when_the_server_dies(procs, tmp_path):
    with MotoServer() as server:
        client = server.client()
        client.create_bucket(Bucket="lost-mid-epoch")
        big = os.urandom(96 << 20)  # far more than the engine reads ahead
        client.put_object(Bucket="lost-mid-epoch", Key="data/big", Body=big)
        cfg = write_channel_file(tmp_path / "job.yaml", [channel("train", "s3://lost-mid-epoch/data/")])
        env = server.child_env(base=base_env(AWS_MAX_ATTEMPTS="2", SAGEMAKER_PIPE_S3_READ_TIMEOUT="3"))
        assert server.process is not None
        run = Job(procs, tmp_path, "--config", cfg, "--grace", "2", "--", sys.executable, ALGO, tmp_path,
                  env=env, algo_env={"HOOK_AFTER": str(1 << 20), "HOOK": f"killpg:{server.process.pid}"})
        assert run.wait(100) == 1, run.proc.stderr
        line = run.last_error()
        assert "s3://lost-mid-epoch/data/big" in line, line
        assert run.epochs() == [], "the algorithm saw the failed epoch end"
        run.assert_clean()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_run_stops_the_algorithm_then_the_engine(sig, procs, tmp_path):
    cfg = job(tmp_path)
    run = Job(procs, tmp_path, "--config", cfg, "--grace", "1", "--", sys.executable, ALGO, tmp_path,
              algo_env={"HANG": "1", "IGNORE_TERM": "1"})
    wait_until(lambda: len(run.epochs()) == 2, 30, "the algorithm's first epoch")
    t0 = time.monotonic()
    run.proc.send(sig)
    assert run.wait(20) == 128 + signal.SIGKILL  # it ignored SIGTERM: killed after the grace
    assert 0.9 <= time.monotonic() - t0 < 10
    run.assert_clean()


def test_an_algorithm_that_stops_on_sigterm_reports_it(procs, tmp_path):
    cfg = job(tmp_path)
    run = Job(procs, tmp_path, "--config", cfg, "--", sys.executable, ALGO, tmp_path, algo_env={"HANG": "1"})
    wait_until(lambda: len(run.epochs()) == 2, 30, "the algorithm's first epoch")
    run.proc.send(signal.SIGTERM)
    assert run.wait(20) == 128 + signal.SIGTERM
    run.assert_clean()


def test_run_on_an_ml_root_in_use_exits_2_naming_the_holder(procs, sidecar, tmp_path):
    cfg = job(tmp_path)
    ml_root = tmp_path / "ml"
    holder = sidecar.serve(cfg, ml_root)
    wait_for_path(ml_root / "input" / "data" / "train_0")
    run = Job(procs, tmp_path, "--config", cfg, "--", sys.executable, ALGO, tmp_path)
    assert run.wait() == 2
    assert f"pid {holder.pid}" in run.last_error()
    assert not run.results.exists()  # the algorithm never started
    assert holder.alive()


@pytest.mark.parametrize("args, words", [
    ([], "no algorithm"),
    (["--image", "img", "--", "x"], "not both"),
    (["--hosts", "2", "--", "x"], "--image"),
    (["--image"], "TrainingImage"),
    (["--grace", "-1", "--", "x"], "--grace"),
    (["--", "/nonexistent/algorithm"], "/nonexistent/algorithm"),
])
def test_bad_invocations_exit_2_with_one_line(args, words, procs, tmp_path):
    cfg = job(tmp_path)
    run = Job(procs, tmp_path, "--config", cfg, *args)
    assert run.wait() == 2
    assert words in run.last_error()
    run.assert_clean()


# ------------------------------------------------------------------------------------------
# --image: the compose file run writes, played by tests/fake_compose.py (the real engine: tests/container)
# ------------------------------------------------------------------------------------------

def image_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return base_env(SAGEMAKER_PIPE_COMPOSE=f"{sys.executable} {TESTS / 'fake_compose.py'}", **extra)


@pytest.mark.parametrize("hosts", [1, 3])
def test_image_runs_every_host_as_image_train_and_packs_each_model(hosts, procs, tmp_path):
    cfg = job(tmp_path)
    run = Job(procs, tmp_path, "--config", cfg, "--image", ALGO, "--hosts", hosts, "-e", "EPOCHS=2",
              "-e", "MODEL=m", env=image_env(tmp_path))
    assert run.wait() == 0, run.proc.stderr
    names = [f"algo-{i}" for i in range(1, hosts + 1)]
    firsts = [x for x in run.lines() if "argv" in x]
    assert sorted(x["host"] for x in firsts) == names
    assert all(x["argv"] == ["train"] and x["hosts"] == names and x["job"] == "job" for x in firsts)
    want = expected_stream(tmp_path / "train")
    train = [e for e in run.epochs() if e["channel"] == "train"]
    assert len(train) == 2 * hosts and all(e["sha256"] == sha(want) for e in train)
    for name in names:
        packed = tmp_path / "output" / (name if hosts > 1 else "") / "model.tar.gz"
        assert tar_members(packed) == {"model.txt": b"m"}
    compose = yaml.safe_load((run.ml_root / "compose.yaml").read_text())
    assert sorted(compose["services"]) == names
    assert all(s["command"] == ["train"] and s["image"] == ALGO for s in compose["services"].values())
    run.assert_clean()


def test_image_any_host_failing_fails_the_run_with_its_reason(procs, tmp_path):
    cfg = job(tmp_path)
    # every host exits 5 after writing its failure file; the first reason is printed per host
    run = Job(procs, tmp_path, "--config", cfg, "--image", ALGO, "--hosts", "2", "-e", "EXIT=5",
              "-e", "FAILURE=out of memory", env=image_env(tmp_path))
    assert run.wait() == 5, run.proc.stderr
    errors = [x for x in run.proc.stderr.splitlines() if x.startswith(ERROR)]
    assert any(x.endswith("exited with status 5: out of memory") for x in errors), errors
    run.assert_clean()


def test_image_a_failed_stream_stops_the_containers_and_exits_1(procs, tmp_path):
    src = write_tree(tmp_path / "src", {"a.gz": gz(os.urandom(8 << 20), 1), "b.gz": b"not gzip\n" * 100})
    cfg = write_channel_file(tmp_path / "job.yaml", [channel("train", src, CompressionType="Gzip")])
    run = Job(procs, tmp_path, "--config", cfg, "--image", ALGO, "--grace", "1", env=image_env(tmp_path))
    assert run.wait() == 1, run.proc.stderr
    assert str(src / "b.gz") in run.last_error()
    assert run.epochs() == []
    run.assert_clean()


def test_image_defaults_to_the_channel_file_s_training_image(procs, tmp_path):
    src = write_tree(tmp_path / "src", {"a": b"abc"})
    cfg = write_channel_file(tmp_path / "job.yaml", {"AlgorithmSpecification": {"TrainingImage": ALGO},
                                                     "InputDataConfig": [channel("train", src)]})
    run = Job(procs, tmp_path, "--config", cfg, "--image", env=image_env(tmp_path))
    assert run.wait() == 0, run.proc.stderr
    assert [e["bytes"] for e in run.epochs()] == [3]



