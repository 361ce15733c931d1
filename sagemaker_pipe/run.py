"""`sagemaker-pipe run`: one local training job, start to finish, with SageMaker's container contract.

    sagemaker-pipe run --config job.yaml -- python train.py        # the algorithm as a process
    sagemaker-pipe run --config job.yaml --image IMAGE [--hosts N]  # as a container per host

The engine (supervise.Engine, with --hold-on-failure) writes the config files and serves every
channel; the algorithm then starts with SAGEMAKER_BASE_DIR (the root sagemaker-training reads)
and TRAINING_JOB_NAME, or as `IMAGE train` with /opt/ml mounted from the host. When it exits,
/opt/ml/model and /opt/ml/output/data are packed into model.tar.gz and output.tar.gz, the
failure file is reported, and `run` exits with the algorithm's status. A failed data stream
stops the algorithm before its epoch can end, and `run` exits 1 naming the object.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from sagemaker_pipe import container
from sagemaker_pipe.compose import MAX_HOSTS, host_names, parse_command, parse_env
from sagemaker_pipe.config import load_job
from sagemaker_pipe.errors import ConfigError
from sagemaker_pipe.layout import Layout, make_dirs
from sagemaker_pipe.options import PROG, Parser, seconds
from sagemaker_pipe.supervise import GRACE_S, Engine, watch

DEFAULT_ML_ROOT = "sagemaker-pipe-run/ml"
READY_TIMEOUT_S = 600.0  # File-mode channels are copied before the engine is ready
FAILURE_CHARS = 1024  # as much of the failure file as SageMaker keeps in FailureReason
# Sidecar options handed on to every engine: option -> takes a value
ENGINE_OPTIONS = {"--epochs": True, "--throttle-mbps": True, "--progress-interval": True, "--log-format": True,
                  "--debug": False}


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog=f"{PROG} run", description="Run a training job locally: serve its channels, run the algorithm (a "
                "command after --, or --image IMAGE), pack its model and output, exit with its status.",
                epilog="Exit status: the algorithm's (128+N when signal N ended it); 1 when a data stream "
                "failed; 2 for a bad option or channel file, or an ml-root in use.")
    p.add_argument("--config", "-c", required=True, help="channel file (YAML or JSON)")
    p.add_argument("--ml-root", default=DEFAULT_ML_ROOT, help=f"folder standing for /opt/ml (default "
                   f"{DEFAULT_ML_ROOT}; with --hosts N, one folder per host below it)")
    p.add_argument("--output", metavar="DIR", help="where model.tar.gz and output.tar.gz go (default: the folder "
                   "`output` beside the ml-root)")
    p.add_argument("--job-name", help="TRAINING_JOB_NAME for the algorithm (default: the channel file's name)")
    p.add_argument("--grace", default=str(GRACE_S), metavar="S",
                   help=f"seconds between SIGTERM and SIGKILL when the algorithm is stopped (default {GRACE_S:g})")
    p.add_argument("--image", nargs="?", const="", metavar="IMAGE", help="run the algorithm as this image on the "
                   "local Docker engine (`IMAGE train`); alone, the channel file's TrainingImage")
    p.add_argument("--hosts", metavar="N", help="with --image: number of hosts, algo-1 ... algo-N (default: the "
                   "channel file's, else 1)")
    p.add_argument("--algorithm-command", metavar="CMD", help="with --image: the container's command, a JSON list "
                   "or one word (default train)")
    p.add_argument("--env", "-e", action="append", default=[], metavar="KEY=VALUE",
                   help="with --image: environment variable for every algorithm container (repeatable)")
    p.add_argument("--epochs", help="engine: stop serving after N epochs of every channel")
    p.add_argument("--throttle-mbps", metavar="N|CHANNEL=N,...", help="engine: pace channels to N MB/s")
    p.add_argument("--progress-interval", metavar="S", help="engine: a progress line every S seconds")
    p.add_argument("--log-format", help="engine: text (default) or json")
    p.add_argument("-d", "--debug", action="store_true", help="engine: log every object")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...: the algorithm, as a process")
    return p


@dataclass(frozen=True)
class Host:
    """One host of the job: its name and its ml-root on this machine."""

    name: str
    layout: Layout


def run_main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    config = Path(args.config)
    job = load_job(config)  # exit 2 on a bad channel file, before anything is written
    image = None
    if args.image is not None:
        image = args.image or job.training_image
        if not image:
            raise ConfigError("run: --image needs an IMAGE (the channel file has no AlgorithmSpecification."
                              "TrainingImage)")
        if command:
            raise ConfigError("run: give either --image IMAGE or -- CMD ARGS..., not both")
    elif not command:
        raise ConfigError("run: no algorithm: give -- CMD ARGS... or --image IMAGE")
    elif args.hosts or args.algorithm_command or args.env:
        raise ConfigError("run: --hosts, --algorithm-command and -e go with --image")
    count = _hosts(args.hosts, len(job.hosts)) if image else 1
    grace = seconds(args.grace, "run: --grace", GRACE_S, zero=True) or 0.0
    ml_root = Path(args.ml_root).absolute()
    output = Path(args.output).absolute() if args.output else ml_root.parent / "output"
    job_name = args.job_name or re.sub(r"[^A-Za-z0-9-]+", "-", config.stem).strip("-") or "local-job"
    names = host_names(count)
    hosts = [Host(n, Layout.under(ml_root if count == 1 else ml_root / n)) for n in names]
    extra = _engine_args(args)
    algorithm_command = parse_command(args.algorithm_command)
    env = parse_env(args.env) if image else {}
    stop = _Stop()

    engines: list[Engine] = []
    try:
        for h in hosts:
            engines.append(Engine.start(  # a process is one host of the channel file's cluster
                config, h.layout.root or ml_root, hosts=names if image else None,
                current_host=h.name if image else None, extra_args=extra, label=h.name if count > 1 else ""))
        for e in engines:
            e.wait_ready(READY_TIMEOUT_S)
        if stop():  # stopped while the engines got ready: no algorithm to start
            return 128 + (stop.signum or signal.SIGTERM)
        for h in hosts:
            _fresh_outputs(h.layout, shared=image is not None)
        if image is None:
            algorithm = _start_process(command, hosts[0].layout, job_name)
            status, failure = watch(engines, algorithm, grace=grace, stop_requested=stop)
            statuses = {hosts[0].name: status}
        else:
            statuses, failure = container.run_hosts(
                [(h.name, h.layout) for h in hosts], image, algorithm_command, {"TRAINING_JOB_NAME": job_name, **env},
                project=f"sagemaker-pipe-run-{os.getpid()}", grace=grace, engines=engines, stop=stop,
                compose_file=ml_root / "compose.yaml")
    finally:
        results = [e.stop() for e in engines]
    if failure is None:
        failure = next((err for rc, err in results if rc != 0 and err), None)
    return _report(hosts, statuses, failure, output, stop.signum)


def _report(hosts: list[Host], statuses: dict[str, int], failure: str | None, output: Path,
            signum: int | None) -> int:
    """Pack each host's model and output data, print the outcome; the run's exit status."""
    many = len(hosts) > 1
    for h in hosts:
        packed = _pack(h.layout, output / h.name if many else output)
        if packed:
            _say(f"{h.name + ': ' if many else ''}{', '.join(str(p) for p in packed)}")
    if failure is not None:
        _error(failure)
        return 1
    failed = {h.name: statuses.get(h.name, 1) for h in hosts if statuses.get(h.name, 1) != 0}
    for h in hosts:
        if h.name in failed:
            reason = _failure_reason(h.layout)
            who = f"{h.name} " if many else ""
            _error(f"algorithm {who}exited with status {failed[h.name]}" + (f": {reason}" if reason else ""))
    # The status of the host that failed, rather than of those stopped because of it (SIGTERM, SIGKILL).
    stopped = (128 + signal.SIGTERM, 128 + signal.SIGKILL)
    worst = next((s for s in failed.values() if s not in stopped), next(iter(failed.values()), 0))
    if worst == 0 and signum is not None:
        return 128 + signum  # stopped: not a successful job, even if the algorithm said 0
    if worst == 0:
        _say("algorithm exited 0")
    return worst


def _start_process(command: list[str], layout: Layout, job_name: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, SAGEMAKER_BASE_DIR=str(layout.root), TRAINING_JOB_NAME=job_name)
    env = {k: v for k, v in env.items() if not k.startswith("SAGEMAKER_PIPE_")}
    _say(f"starting {' '.join(command)} with SAGEMAKER_BASE_DIR={layout.root}")
    try:
        # A session of its own: stopping it reaches every process it started, and a Ctrl-C goes
        # through run (SIGTERM, grace, SIGKILL) as SageMaker stops a job.
        return subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, start_new_session=True)
    except OSError as e:
        raise ConfigError(f"run: cannot start {command[0]}: {e.strerror}") from None


def _fresh_outputs(layout: Layout, shared: bool) -> None:
    """Empty model/ and output/ as SageMaker gives every job; checkpoints/ is kept (a job may resume).

    `shared`: a container may run under any uid, so the folders it writes are open to all.
    """
    for folder in (layout.model_dir, layout.output_dir):
        if folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder)
        else:
            folder.unlink(missing_ok=True)
    for folder in (layout.model_dir, layout.output_data_dir, layout.checkpoints_dir):
        make_dirs(folder)
    if shared:
        for folder in (layout.model_dir, layout.output_dir, layout.output_data_dir, layout.checkpoints_dir):
            os.chmod(folder, 0o777)


def _pack(layout: Layout, output: Path) -> list[Path]:
    """model.tar.gz and output.tar.gz (each written whole, then renamed), for the folders that hold anything."""
    packed = []
    for folder, name in ((layout.model_dir, "model.tar.gz"), (layout.output_data_dir, "output.tar.gz")):
        if not folder.is_dir() or not any(folder.iterdir()):
            continue
        make_dirs(output)
        target = output / name
        fd, tmp = tempfile.mkstemp(dir=output, prefix=f".{name}.", suffix=".tmp")
        os.close(fd)
        try:
            with tarfile.open(tmp, "w:gz") as tar:
                for item in sorted(folder.iterdir()):
                    tar.add(item, arcname=item.name)
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        packed.append(target)
    return packed


def _failure_reason(layout: Layout) -> str | None:
    try:
        text = layout.failure_file.read_text(encoding="utf-8", errors="replace")[:FAILURE_CHARS]
    except OSError:
        return None
    return " ".join(text.split()) or None


class _Stop:
    """SIGINT/SIGTERM to run: remembered here, acted on by the watch loop (which polls it)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            _say(f"{signal.Signals(signum).name} received: stopping the algorithm")
        self.signum = signum

    def __call__(self) -> bool:
        return self.signum is not None


def _engine_args(args: argparse.Namespace) -> list[str]:
    out: list[str] = []
    for option, takes_value in ENGINE_OPTIONS.items():
        value = getattr(args, option.lstrip("-").replace("-", "_"))
        if takes_value and value is not None:
            out += [option, value]
        elif not takes_value and value:
            out.append(option)
    return out


def _hosts(value: str | None, default: int) -> int:
    if value is None:
        return default
    try:
        n = int(value)
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_HOSTS:
        raise ConfigError(f"run: --hosts must be a whole number from 1 to {MAX_HOSTS} (got {value!r})")
    return n


def _say(message: str) -> None:
    print(f"sagemaker-pipe: run: {message}", file=sys.stderr, flush=True)


def _error(message: str) -> None:
    print(f"sagemaker-pipe: error: {' '.join(message.split())}", file=sys.stderr, flush=True)

