"""Shared fixtures and helpers for the engine tests.

Everything here is independent of the sagemaker_pipe package: the package is only ever run as a
subprocess (``python -m sagemaker_pipe`` or ``entrypoint.py``), and the expected bytes of an epoch
are computed by :func:`expected_stream` from the source files with this module's own listing,
gunzip and RecordIO code (tests/recordio.py).

Every process started through the ``sidecar`` / ``consumer`` / ``run`` fixtures is killed (by its
pid / process group, which the fixture created) at teardown, and every wait is bounded.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import queue
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

TESTS = Path(__file__).resolve().parent
# The tree whose sagemaker_pipe package and entrypoint.py are tested: this repository, unless
# PIPE_TESTS_REPO names another checkout (an installed copy, a mutated copy for mutation testing).
REPO = Path(os.environ.get("PIPE_TESTS_REPO") or TESTS.parent).resolve()
if str(TESTS) not in sys.path:  # recordio.py, consumers.py, s3_fixtures.py and its helpers
    sys.path.insert(0, str(TESTS))

if (TESTS / "s3_fixtures.py").exists():
    pytest_plugins = ["s3_fixtures"]

import recordio  # noqa: E402  (tests/recordio.py, after the sys.path line above)

ERROR_PREFIX = "sagemaker-pipe: error:"
CONSUMER = str(TESTS / "consumers.py")
ENTRYPOINT = str(REPO / "entrypoint.py")
COMMAND = Path(sys.executable).parent / "sagemaker-pipe"  # the console script pip installed beside this Python


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------

def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def wait_for_path(path: os.PathLike | str, timeout: float = 10.0) -> None:
    """Wait (bounded) until ``path`` exists (a dangling name counts); fail the test otherwise."""
    deadline = time.monotonic() + timeout
    while not os.path.lexists(path):
        if time.monotonic() >= deadline:
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.005)


def wait_gone(path: os.PathLike | str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while os.path.lexists(path):
        if time.monotonic() >= deadline:
            raise AssertionError(f"{path} still exists after {timeout} s")
        time.sleep(0.01)


def wait_until(pred: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(0.01)


def is_fifo(path: os.PathLike | str) -> bool:
    try:
        return stat.S_ISFIFO(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    """Create ``root`` with the given files (relative paths with ``/``)."""
    root.mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def channel(name: str, uri: str | os.PathLike, **fields: Any) -> dict:
    """A CreateTrainingJob channel; ``S3DataSource`` keys may be given as s3_<key>.

    channel("train", "/data/train", CompressionType="Gzip", s3_S3DataDistributionType="ShardedByS3Key")
    """
    source: dict[str, Any] = {"S3Uri": str(uri), "S3DataType": "S3Prefix"}
    for key in list(fields):
        if key.startswith("s3_"):
            source[key[3:]] = fields.pop(key)
    ch: dict[str, Any] = {"ChannelName": name, "DataSource": {"S3DataSource": source}}
    ch.update(fields)
    return ch


def write_channel_file(path: Path, doc: Any, fmt: str = "yaml") -> Path:
    """Write a channel file: ``doc`` is a list of channels or a whole job document."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "json":
        path.write_text(json.dumps(doc, indent=2))
    else:
        path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    return path


def list_objects(src: Path) -> list[tuple[bytes, Path]]:
    """Every regular file below ``src`` (symlinks to files followed), in ascending byte order of
    the path relative to ``src`` with ``/`` separators -- what S3 would list for the same tree."""
    found = []
    for dirpath, _dirnames, filenames in os.walk(src):
        for name in filenames:
            p = Path(dirpath) / name
            if os.path.isfile(p):  # follows symlinks; skips FIFOs, sockets, dangling links
                rel = os.fsencode(p.relative_to(src).as_posix())
                found.append((rel, p))
    found.sort(key=lambda item: item[0])
    return found


def object_payloads(src: Path, gunzip: bool = False) -> list[bytes]:
    out = []
    for _rel, p in list_objects(src):
        data = p.read_bytes()
        if gunzip:
            data = gzip.decompress(data)  # handles multi-member streams
        out.append(data)
    return out


def expected_stream(src: Path, gunzip: bool = False, record_io: bool = False) -> bytes:
    payloads = object_payloads(src, gunzip)
    if record_io:
        return b"".join(recordio.encode(p) for p in payloads)
    return b"".join(payloads)


def data_entries(data_dir: Path) -> list[str]:
    try:
        return sorted(os.listdir(data_dir))
    except FileNotFoundError:
        return []


def assert_nothing_written(ml_root: Path) -> None:
    """Nothing below <ml-root>/input/config or <ml-root>/input/data (the dirs may exist)."""
    for sub in ("input/config", "input/data"):
        d = ml_root / sub
        if d.exists():
            assert sorted(os.listdir(d)) == [], f"{d} is not empty after an error"


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, f"traceback on stderr:\n{stderr}"
    assert len(lines) == 1, f"expected exactly one stderr line, got {len(lines)}:\n{stderr}"
    line = lines[0]
    assert line.startswith(ERROR_PREFIX), f"stderr line does not start with {ERROR_PREFIX!r}: {line!r}"
    return line


def homogeneous_resources(host: str, hosts: list[str], instance_type: str = "local") -> dict:
    """resourceconfig.json as SageMaker writes it for a job without instance groups (one group,
    `homogeneousCluster`); `local` is what the sidecar writes without ResourceConfig.InstanceType."""
    return {"current_host": host, "current_instance_type": instance_type, "current_group_name": "homogeneousCluster",
            "hosts": hosts, "network_interface_name": "eth0",
            "instance_groups": [{"instance_group_name": "homogeneousCluster", "instance_type": instance_type,
                                 "hosts": hosts}]}


def base_env(**extra: str) -> dict[str, str]:
    """The environment for every spawned process: no inherited SAGEMAKER_PIPE_* settings, the repo
    importable from any cwd, and AWS settings that can only ever reach 127.0.0.1."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAGEMAKER_PIPE_")}
    # A sidecar standing alone holds a failed epoch's FIFO open for 10 s before exit 1; tests of
    # other things end at once (test_failure_hold.py tests the hold itself, with its own values).
    env["SAGEMAKER_PIPE_FAILURE_HOLD"] = "0"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("AWS_ACCESS_KEY_ID", "testing")
    env.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    env.setdefault("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    env.update(extra)
    return env


# --------------------------------------------------------------------------------------------
# processes
# --------------------------------------------------------------------------------------------

class Proc:
    """A spawned process with stderr captured to a file (stdout too unless a reader is attached)."""

    def __init__(self, argv: list[str], logdir: Path, name: str, *, env: dict | None = None,
                 cwd: os.PathLike | str | None = None, umask: int = -1, user: int | None = None,
                 capture_stdout_lines: bool = False):
        self.argv = argv
        self.stderr_path = logdir / f"{name}.stderr"
        self.stdout_path = logdir / f"{name}.stdout"
        self._err = open(self.stderr_path, "wb")
        self._out = None
        stdout: Any
        if capture_stdout_lines:
            stdout = subprocess.PIPE
        else:
            self._out = open(self.stdout_path, "wb")
            stdout = self._out
        kwargs: dict[str, Any] = {}
        if user is not None:
            kwargs["user"] = user
            kwargs["group"] = user
            kwargs["extra_groups"] = []
        self.popen = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=self._err,
            env=env if env is not None else base_env(), cwd=cwd, umask=umask,
            start_new_session=True, **kwargs)
        self.pid = self.popen.pid

    # -- state
    def poll(self) -> int | None:
        return self.popen.poll()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait(self, timeout: float = 20.0) -> int:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"process {self.argv} still running after {timeout} s; stderr:\n{self.stderr}") from None

    @property
    def stderr(self) -> str:
        self._err.flush()
        return self.stderr_path.read_bytes().decode("utf-8", "replace")

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_bytes().decode("utf-8", "replace") if self._out else ""

    def send(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def kill(self) -> None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)  # the group this fixture created for it
            except (ProcessLookupError, PermissionError):
                try:
                    self.popen.kill()
                except ProcessLookupError:
                    pass
        else:
            # The leader is gone; make sure nothing it started lingers in its group.
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            self.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        for f in (self._err, self._out):
            if f:
                f.close()
        if self.popen.stdout:
            self.popen.stdout.close()


class Consumer(Proc):
    """tests/consumers.py in its own process; its JSON lines are collected by a thread."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, capture_stdout_lines=True, **kwargs)
        self.lines: queue.Queue[dict] = queue.Queue()
        self.seen: list[dict] = []
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            try:
                self.lines.put(json.loads(raw))
            except ValueError:
                self.lines.put({"error": f"unparsable consumer output {raw!r}"})

    def next_line(self, timeout: float = 15.0) -> dict:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"consumer {self.argv} printed nothing within {timeout} s; "
                                 f"stderr:\n{self.stderr}") from None
        self.seen.append(line)
        return line

    def _drain(self) -> None:
        while True:
            try:
                self.seen.append(self.lines.get_nowait())
            except queue.Empty:
                break

    def results(self, timeout: float = 30.0) -> list[dict]:
        """Wait for the consumer to finish and return its per-epoch records."""
        try:
            rc = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._drain()
            raise AssertionError(f"consumer {self.argv[2]} still running after {timeout} s; "
                                 f"printed so far: {self.seen}; stderr: {self.stderr}") from None
        self._thread.join(timeout=5)
        self._drain()
        errors = [r for r in self.seen if "error" in r]
        assert not errors and rc == 0, f"consumer failed (rc={rc}): {errors}\nstderr:\n{self.stderr}"
        return [r for r in self.seen if "epoch" in r]


class ProcessRegistry:
    def __init__(self, logdir: Path):
        self.logdir = logdir
        self.procs: list[Proc] = []
        self.count = 0

    def _name(self, kind: str) -> str:
        self.count += 1
        return f"{self.count:02d}-{kind}"

    def start(self, argv: list[str], kind: str = "proc", **kwargs: Any) -> Proc:
        p = Proc(argv, self.logdir, self._name(kind), **kwargs)
        self.procs.append(p)
        return p

    def start_consumer(self, argv: list[str], **kwargs: Any) -> Consumer:
        c = Consumer(argv, self.logdir, self._name("consumer"), **kwargs)
        self.procs.append(c)
        return c

    def cleanup(self) -> None:
        for p in reversed(self.procs):
            p.kill()


_RUN_TEMP = pytest.StashKey[Path]()  # the run's temp folder, made by pytest_configure


def pytest_configure(config: pytest.Config) -> None:
    """Every temporary file of the run in one folder under the system's temp, removed at the end.

    Without it pytest keeps its last three runs and the S3 servers and SeaweedFS's logs stay in
    /tmp (about 1.4 GB after a full run). TMPDIR reaches every process the tests start. A
    --basetemp given on the command line is the user's and is kept.
    """
    if config.option.basetemp or hasattr(config, "workerinput"):
        return
    base = Path(tempfile.mkdtemp(prefix="smp-tests-"))  # short: unix sockets go under it
    config.stash[_RUN_TEMP] = base
    config.option.basetemp = str(base / "pytest")
    os.environ["TMPDIR"] = str(base)
    tempfile.tempdir = None  # gettempdir() reads TMPDIR again


def pytest_unconfigure(config: pytest.Config) -> None:
    base = config.stash.get(_RUN_TEMP, None)
    if base is not None:
        shutil.rmtree(base, ignore_errors=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


@pytest.fixture
def procs(request, tmp_path: Path):
    logdir = tmp_path / "_logs"
    logdir.mkdir()
    reg = ProcessRegistry(logdir)
    try:
        yield reg
    finally:
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            # Shown under "Captured stdout teardown": every process's state and stderr tail.
            for p in reg.procs:
                state = "running" if p.alive() else f"exit {p.popen.returncode}"
                print(f"--- {p.stderr_path.name} ({state}): {' '.join(map(str, p.argv))}")
                print(p.stderr[-3000:])
        reg.cleanup()


@pytest.fixture
def ml_root(tmp_path: Path) -> Path:
    """The ml-root of the test (``<tmp>/ml``); data dir is ml_root/input/data."""
    return tmp_path / "ml"


class Sidecar:
    """Factory for sagemaker-pipe processes (``sys.executable -m sagemaker_pipe``, ``entrypoint.py``,
    or with installed=True the installed ``sagemaker-pipe`` command; cwd defaults to a scratch dir, not the repo)."""

    def __init__(self, reg: ProcessRegistry, tmp_path: Path):
        self.reg = reg
        self.cwd = tmp_path / "_cwd"
        self.cwd.mkdir(exist_ok=True)

    def __call__(self, *args: str, env: dict | None = None, env_extra: dict | None = None,
                 cwd: os.PathLike | str | None = None, umask: int = -1, user: int | None = None,
                 entrypoint: bool = False, nofile: int | None = None, installed: bool = False,
                 memory_mib: int | None = None) -> Proc:
        argv = [sys.executable, ENTRYPOINT] if entrypoint else [sys.executable, "-m", "sagemaker_pipe"]
        if installed:  # the `sagemaker-pipe` command a user types (make test installs it into .venv)
            if not COMMAND.exists():
                pytest.fail(f"{COMMAND} is not installed: run the tests with `make test`, or pip install -e . first")
            argv = [str(COMMAND)]
        argv += [str(a) for a in args]
        if nofile is not None:  # a low open-files limit: a descriptor leak fails fast
            argv = ["sh", "-c", f'ulimit -n {int(nofile)} && exec "$@"', "sh", *argv]
        if memory_mib is not None:  # an address-space limit (reader processes inherit it): reading without bound fails
            argv = ["sh", "-c", f'ulimit -v {int(memory_mib) << 10} && exec "$@"', "sh", *argv]
        if env is None:
            env = base_env(**(env_extra or {}))
        return self.reg.start(argv, "sidecar", env=env, cwd=cwd or self.cwd, umask=umask, user=user)

    def serve(self, config: Path, ml_root: Path, *extra: str, epochs: int | None = None,
              **kwargs: Any) -> Proc:
        args = ["--config", str(config), "--ml-root", str(ml_root)]
        if epochs is not None:
            args += ["--epochs", str(epochs)]
        return self(*args, *extra, **kwargs)

    def run(self, *args: str, timeout: float = 20.0, **kwargs: Any) -> Proc:
        """Run to completion (bounded) and return the finished Proc."""
        p = self(*args, **kwargs)
        p.wait(timeout)
        return p


@pytest.fixture
def sidecar(procs: ProcessRegistry, tmp_path: Path) -> Sidecar:
    return Sidecar(procs, tmp_path)


@pytest.fixture
def consumer(procs: ProcessRegistry, tmp_path: Path):
    """consumer(pattern, epochs=3, modes="full", start=0, out=None, gate=None) -> Consumer."""

    def start(pattern: os.PathLike | str, epochs: int = 3, modes: str = "full", start: int = 0,
              out: os.PathLike | str | None = None, wait: float = 15.0, timeout: float = 50.0,
              user: int | None = None, gate: os.PathLike | str | None = None,
              timeline: bool = False) -> Consumer:
        argv = [sys.executable, CONSUMER, str(pattern), "--epochs", str(epochs), "--start", str(start),
                "--modes", modes, "--wait", str(wait), "--timeout", str(timeout)]
        if out is not None:
            Path(out).mkdir(parents=True, exist_ok=True)
            argv += ["--out", str(out)]
        if gate is not None:
            argv += ["--gate", str(gate)]
        if timeline:
            argv.append("--timeline")
        return procs.start_consumer(argv, env=base_env(), cwd=tmp_path, user=user)

    return start


@pytest.fixture
def shell(procs: ProcessRegistry, tmp_path: Path):
    """shell(script) -> Proc running ``sh -c script`` (for ``cat FIFO | sha256sum``)."""

    def start(script: str) -> Proc:
        return procs.start(["sh", "-c", script], "shell", env=base_env(), cwd=tmp_path)

    return start


def pattern(ml_root: Path, name: str) -> str:
    return str(ml_root / "input" / "data" / f"{name}_{{n}}")


def fifo(ml_root: Path, name: str, n: int) -> Path:
    return ml_root / "input" / "data" / f"{name}_{n}"


def assert_epochs(results: list[dict], expected: bytes, epochs: Iterable[int]) -> None:
    epochs = list(epochs)
    assert [r["epoch"] for r in results] == epochs
    for r in results:
        assert r["is_fifo"], f"epoch {r['epoch']}: not a FIFO"
        assert (r["bytes"], r["sha256"]) == (len(expected), sha(expected)), (
            f"epoch {r['epoch']}: read {r['bytes']} bytes sha {r['sha256'][:12]}, "
            f"expected {len(expected)} bytes sha {sha(expected)[:12]}")


@pytest.fixture
def cat_reader(shell):
    """cat_reader(fifo_prefix, epochs) -> Proc that, for each epoch n, waits (bounded, 15 s) for
    ``<prefix>_<n>`` to be a FIFO and runs ``cat <prefix>_<n> | sha256sum``. Use cat_hashes(proc)."""

    def start(prefix: os.PathLike | str, epochs: int = 3, start: int = 0) -> Proc:
        script = (
            f'P="{prefix}"\n'
            f"for n in $(seq {start} {start + epochs - 1}); do\n"
            '  i=0\n'
            '  while [ ! -p "${P}_$n" ]; do\n'
            '    i=$((i+1)); if [ $i -gt 1500 ]; then echo "missing ${P}_$n" >&2; exit 3; fi\n'
            '    sleep 0.01\n'
            '  done\n'
            '  cat "${P}_$n" | sha256sum\n'
            "done\n")
        return shell(script)

    return start


def cat_hashes(proc: Proc, timeout: float = 30.0) -> list[str]:
    rc = proc.wait(timeout)
    assert rc == 0, f"cat reader failed rc={rc}: {proc.stderr}"
    return [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]


def wait_stale_replaced(paths: Iterable[Path], must_exist: Iterable[Path] = (), timeout: float = 10.0) -> None:
    """Wait until every stale path (all made with permissions other than 0644 by the test) is gone
    or is a fresh 0644 FIFO, and each of ``must_exist`` (the first FIFOs) is a fresh FIFO: a
    consumer that opened a stale FIFO before the sidecar replaced it would block forever on the
    old inode (a race of the test, not of the sidecar)."""
    required = set(must_exist)

    def fresh(p: Path) -> bool:
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            return p not in required
        return stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o644

    paths = list(paths) + sorted(required)
    wait_until(lambda: all(fresh(p) for p in paths), timeout,
               f"stale files replaced or removed: {[p.name for p in paths if not fresh(p)]}")


@pytest.fixture
def world_dir():
    """A scratch folder outside pytest's 0700 tmp tree that any uid can traverse (for tests that
    read FIFOs as another user). Removed at teardown."""
    d = Path(tempfile.mkdtemp(prefix="sagemaker-pipe-test-", dir="/tmp"))
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


# The sidecar's exit status after each stop signal: SIGTERM is its normal stop (docker stop,
# compose down), SIGINT is Ctrl-C, reported as a shell does (128 + 2) so scripts stop too.
SIGNAL_EXIT = {signal.SIGTERM: 0, signal.SIGINT: 130}
