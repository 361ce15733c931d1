"""Command line: the sidecar form, the original tool's form, and small subcommands.

Every PipeError becomes one line on stderr and its exit status; nothing else is printed on failure.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from sagemaker_pipe import __version__, commands, logs, malloc, readers
from sagemaker_pipe.compose import compose_main
from sagemaker_pipe.config import Channel, load_job, parse_job
from sagemaker_pipe.errors import ConfigError, PipeError
from sagemaker_pipe.layout import DEFAULT_ML_ROOT, Layout, status_file
from sagemaker_pipe.options import ENV, PROG, Parser, seconds
from sagemaker_pipe.plan import ChannelPlan, plan_channel, plan_job
from sagemaker_pipe.run import run_main
from sagemaker_pipe.sidecar import FAILURE_HOLD_S, INTERRUPTED, Sidecar

COMMANDS = {  # name -> what it does, for the top-level --help (each has its own --help)
    "run": "run one local training job: serve the channels, run the algorithm (a command or an image)",
    "validate": "check a channel file and print the plan the sidecar would serve",
    "from-job": "turn `aws sagemaker describe-training-job` JSON into a channel file",
    "status": "show a running sidecar's progress; exit 0 once it is ready (a health check)",
    "compose": "print a Docker Compose file running one job on several hosts",
}


def _usage() -> str:
    """The three forms, the sidecar's first."""
    forms = [(f"{PROG} --config FILE [--ml-root DIR] [--epochs N] [options]", "the sidecar"),
             (f"{PROG} COMMAND [--help] ...", ", ".join(COMMANDS)),
             (f"{PROG} [-d] [-x] [-r] CHANNEL_NAME SRC DEST", "the original tool's form")]
    width = max(len(form) for form, _ in forms)
    return "\n       ".join(f"{form:<{width}}   ({what})" for form, what in forms)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog=PROG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage=_usage(),
        description="Stream SageMaker training channels into Pipe-mode FIFOs, epoch after epoch.\n\n"
                    "commands:\n" + "".join(f"  {name:<10}{text}\n" for name, text in COMMANDS.items()),
        epilog="Options may also be set by environment:\n"
               + "".join(f"  {v:<34}--{k.replace('_', '-')}\n" for k, v in ENV.items()),
    )
    p.add_argument("legacy", nargs="*", metavar="CHANNEL_NAME SRC DEST", help="the original tool's arguments")
    p.add_argument("--config", "-c", metavar="FILE",
                   help="channel file (YAML or JSON) mirroring CreateTrainingJob's InputDataConfig")
    p.add_argument("--ml-root", metavar="DIR", help=f"folder standing for /opt/ml (default {DEFAULT_ML_ROOT})")
    p.add_argument("--epochs", metavar="N", help="stop after N epochs of every channel (default: serve until stopped)")
    p.add_argument("--hosts", metavar="HOST,...", help="comma-separated host names, for ShardedByS3Key "
                   "(default algo-1)")
    p.add_argument("--current-host", metavar="HOST", help="which of --hosts this sidecar serves")
    p.add_argument("--throttle-mbps", metavar="N|CHANNEL=N,...",
                   help="pace channels to N MB/s, to see how the algorithm copes with a slow source")
    p.add_argument("--status-file", metavar="FILE",
                   help="where to keep the JSON status `sagemaker-pipe status` reads (default "
                        "<ml-root>/input/.sagemaker-pipe/status.json)")
    p.add_argument("--log-format", metavar="text|json",
                   help="text (default) or json: one JSON object per log line, for CI")
    p.add_argument("--progress-interval", metavar="S", help="log each channel's progress every S seconds "
                   "(default 10; 0: off)")
    p.add_argument("--exit-when-idle", metavar="S", help="exit 0 once no FIFO has been opened for S seconds "
                   "after every Pipe channel served a complete epoch")
    p.add_argument("--hold-on-failure", action="store_const", const="1",
                   help="when a stream fails, keep its FIFO open (no EOF) until SIGTERM, then exit 1 "
                   "(for a supervisor that stops the algorithm first, as `run` does)")
    p.add_argument("--failure-hold", metavar="S", help="standing alone, how long a failed stream's FIFO stays "
                   f"open before exit 1, unless its reader closes first (default {FAILURE_HOLD_S:g})")
    p.add_argument("-x", "--gunzip", action="store_true", help="original form: gunzip each object")
    p.add_argument("-r", "--recordio", action="store_true", help="original form: wrap each object in RecordIO")
    p.add_argument("-d", "--debug", action="store_true", help="log every object")
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    return p


def main(argv: list[str] | None = None, defaults: dict[str, str] | None = None) -> int:
    """Entry point; `defaults` are the container's (entrypoint.py), below environment and options."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        command = SUBCOMMANDS.get(argv[0]) if argv else None
        status = command(argv[1:]) if command is not None else serve(argv, defaults or {})
        sys.stdout.flush()  # here, so that a reader gone (`| head`) is caught below, not at exit
        return status
    except PipeError as e:
        print(logs.error_line(PROG, one_line(str(e)), e.exit_status), file=sys.stderr)
        return e.exit_status
    except Terminated:  # SIGTERM before the sidecar took over: nothing was written yet, a normal stop
        return 0
    except KeyboardInterrupt:  # Ctrl-C: interrupted, as the shell counts it
        return INTERRUPTED
    except BrokenPipeError:  # whoever read our output stopped reading: end quietly, as `cat` would
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the flush at exit cannot fail
        return 128 + signal.SIGPIPE


def serve(argv: list[str], defaults: dict[str, str]) -> int:
    _interrupt_on_sigterm()
    args = build_parser().parse_args(argv)
    for key, var in ENV.items():
        if getattr(args, key) is None:
            setattr(args, key, os.environ.get(var) or defaults.get(key))
    logs.setup(args.log_format, args.debug)  # text or JSON lines; -d: every object
    malloc.keep_freed_buffers()  # before any thread allocates: chunk buffers are reused, not re-faulted
    epochs = _epochs(args.epochs)
    progress_interval = seconds(args.progress_interval, "--progress-interval", 10.0, zero=True) or 0.0
    exit_when_idle = seconds(args.exit_when_idle, "--exit-when-idle", None)
    failure_hold = seconds(args.failure_hold, "--failure-hold", FAILURE_HOLD_S, zero=True)
    hold_on_failure = _flag(args.hold_on_failure, "--hold-on-failure")
    readers.count()  # SAGEMAKER_PIPE_READERS, checked before anything is written

    if args.legacy:
        if len(args.legacy) != 3 or args.config:
            raise ConfigError("give either --config FILE, or CHANNEL_NAME SRC DEST (the original tool's form)")
        name, src, dest = args.legacy
        job = None
        plans = [plan_channel(_legacy_channel(name, src, args))]
        layout = Layout(data_dir=Path(dest), config_dir=None)
        status = Path(args.status_file) if args.status_file else None  # no ml-root to put one under
    else:
        if not args.config:
            raise ConfigError(f"no channel file: give --config FILE or set {ENV['config']}")
        if args.gunzip or args.recordio:
            raise ConfigError("-x and -r belong to the original tool's form; set CompressionType and "
                              "RecordWrapperType in the channel file instead")
        hosts = args.hosts.split(",") if args.hosts else None
        job = load_job(args.config, hosts=hosts, current_host=args.current_host)
        plans = plan_job(job)
        layout = Layout.under(args.ml_root or DEFAULT_ML_ROOT)
        status = status_file(args.status_file, args.ml_root or DEFAULT_ML_ROOT)
    plans = _throttled(plans, args.throttle_mbps)
    return Sidecar(job, plans, layout, epochs=epochs, status_file=status,
                   progress_interval=progress_interval, exit_when_idle=exit_when_idle,
                   hold_on_failure=hold_on_failure, failure_hold=failure_hold or 0.0).run()


# `sagemaker-pipe NAME ...`: each takes its own arguments and returns an exit status. (A channel
# of the original tool's form cannot be called by one of these names.)
SUBCOMMANDS: dict[str, Callable[[list[str]], int]] = {"status": commands.status}
SUBCOMMANDS.update({"validate": commands.validate, "from-job": commands.from_job})  # commands.py
SUBCOMMANDS["compose"] = compose_main  # a compose file for a job on several hosts (compose.py)
SUBCOMMANDS["run"] = run_main  # one local training job, algorithm included (run.py)


def _legacy_channel(name: str, src: str, args: argparse.Namespace) -> Channel:
    """The original tool's arguments, validated like a one-channel file relative to the working folder."""
    doc = [{
        "ChannelName": name,
        "DataSource": {"S3DataSource": {"S3Uri": src}},
        "CompressionType": "Gzip" if args.gunzip else "None",
        "RecordWrapperType": "RecordIO" if args.recordio else "None",
    }]
    return parse_job(doc, base_dir=Path.cwd(), source="arguments").channels[0]


def _throttled(plans: list[ChannelPlan], spec: str | None) -> list[ChannelPlan]:
    """Apply --throttle-mbps: `N` for every channel, or `name=N,...`; it wins over the channel file."""
    if not spec:
        return plans
    names = {p.channel.name for p in plans}
    rates: dict[str, float] = {}
    for item in spec.split(","):
        name, _, value = item.rpartition("=")
        try:
            rate = float(value)
        except ValueError:
            rate = 0
        if rate <= 0 or (name and name not in names):
            raise ConfigError(f"--throttle-mbps: {item!r} is not N or CHANNEL=N with a channel of this job")
        for n in [name] if name else names:
            rates[n] = rate
    return [replace(p, channel=replace(p.channel, throttle_mbps=rates.get(p.channel.name, p.channel.throttle_mbps)))
            for p in plans]


def _flag(value: str | None, option: str) -> bool:
    """An on/off option that an environment variable may set: 1/true/yes or 0/false/no/empty."""
    text = (value or "").strip().lower()
    if text in ("", "0", "false", "no"):
        return False
    if text in ("1", "true", "yes"):
        return True
    raise ConfigError(f"{option} must be 1 or 0 (got {value!r})")


def _epochs(value: str | None) -> int | None:
    if value is None or value == "":
        return None
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(f"--epochs must be a positive whole number (got {value!r})")
    return n


class Terminated(Exception):
    """SIGTERM arrived before the sidecar installed its own handlers."""


def _interrupt_on_sigterm() -> None:
    """Until the sidecar installs its own handlers, SIGTERM stops at once, with exit status 0."""
    def interrupt(signum: int, frame: object) -> None:
        raise Terminated

    signal.signal(signal.SIGTERM, interrupt)


def one_line(text: str) -> str:
    return " ".join(text.split())

