"""CLI manners (issue 14), through the installed `sagemaker-pipe` command: --help, a closed stdout,
Ctrl-C, `status` of an ml-root, and a verdict whose words match its numbers."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from conftest import (
    COMMAND,
    REPO,
    SIGNAL_EXIT,
    base_env,
    channel,
    error_line,
    fifo,
    pattern,
    wait_for_path,
    wait_until,
    write_channel_file,
    write_tree,
)

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from sagemaker_pipe.channel import EpochStats  # noqa: E402
from sagemaker_pipe.cli import SUBCOMMANDS  # noqa: E402

pytestmark = pytest.mark.timeout(60)
COMMANDS = ["run", "validate", "from-job", "status", "compose"]


def run(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(COMMAND), *map(str, args)], capture_output=True, text=True, timeout=30,
                          env=base_env(), **kwargs)


def small_job(tmp_path):
    data = write_tree(tmp_path / "train", {"a.csv": b"1,2\n" * 10, "b.csv": b"3,4\n" * 10})
    return write_channel_file(tmp_path / "job.yaml", [channel("train", data), channel("more", data)])


# --------------------------------------------------------------------------------------------
# --help
# --------------------------------------------------------------------------------------------

def test_help_leads_with_the_sidecar_form_and_lists_the_commands():
    done = run("--help")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("usage: sagemaker-pipe --config FILE [--ml-root DIR] [--epochs N]"), lines[0]
    assert "(the sidecar)" in lines[0]
    section = lines.index("commands:")
    listed = [line.split()[0] for line in lines[section + 1: section + 1 + len(COMMANDS)]]
    assert listed == COMMANDS, done.stdout
    assert sorted(COMMANDS) == sorted(SUBCOMMANDS), "a command of the CLI is missing from --help (or from here)"
    for name in COMMANDS:
        sub = run(name, "--help")
        assert sub.returncode == 0 and sub.stdout.startswith(f"usage: sagemaker-pipe {name}"), sub.stdout


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_every_option_has_help_text(command):
    done = run(*([command] if command else []), "--help")
    assert done.returncode == 0, done.stderr
    text = done.stdout
    options = text[text.index("\noptions:\n") + 10:].split("\n\n")[0].splitlines()
    entries: list[list[str]] = []
    for line in options:
        if re.match(r"  -", line):
            entries.append([line])
        else:
            entries[-1].append(line)
    assert len(entries) >= 2
    for entry in entries:
        head = entry[0].strip()
        has_help = re.search(r"\S  +\S", head) is not None or len(entry) > 1
        assert has_help, f"`sagemaker-pipe {command} --help`: option without help text: {head!r}"


# --------------------------------------------------------------------------------------------
# a closed stdout, Ctrl-C
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("form", ["validate", "validate-json", "from-job", "status", "help"])
def test_a_closed_stdout_ends_quietly(form, tmp_path):
    """`sagemaker-pipe validate ... | head`: the reader is gone before we write (its end closed first)."""
    job = small_job(tmp_path)
    describe = tmp_path / "describe.json"
    describe.write_text(json.dumps({"TrainingJobName": "j", "InputDataConfig": [
        channel("train", "s3://bucket/train/")]}))
    args = {"validate": ["validate", job], "validate-json": ["validate", job, "--json"],
            "from-job": ["from-job", describe, "--map", f"s3://bucket={tmp_path}"],
            "status": ["status", "--ml-root", tmp_path / "nothing-here"], "help": ["--help"]}[form]
    r, w = os.pipe()
    os.close(r)
    try:
        proc = subprocess.run([str(COMMAND), *map(str, args)], stdout=w, stderr=subprocess.PIPE, text=True,
                              timeout=30, env=base_env())
    finally:
        os.close(w)
    assert proc.stderr == "", proc.stderr
    assert proc.returncode == (0 if form == "help" else 128 + signal.SIGPIPE)  # argparse drops help it cannot write


def wait_for_reader(path) -> int:
    """The write end of FIFO `path`, once a process has opened it for reading (bounded)."""
    deadline = time.monotonic() + 15
    while True:
        try:
            return os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as e:
            if e.errno != errno.ENXIO or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _ctrl_c_as_in_a_terminal() -> None:
    """SIGINT at its default: a shell starts background jobs (`make test &`) with it ignored, and
    Python then rightly leaves it ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _fifo_args(command: str, stuck) -> list:
    return {"validate": ["validate", stuck], "from-job": ["from-job", stuck],
            "status": ["status", "--status-file", stuck],
            "compose": ["compose", "--hosts", "2", "--algorithm-image", "a", "--channels", stuck]}[command]


@pytest.mark.parametrize("command", ["from-job", "status"])
def test_ctrl_c_exits_130_while_a_command_reads(command, tmp_path):
    """Each command blocked reading its input (a FIFO nobody writes to) gets SIGINT. (A channel
    file is never read from a FIFO: validate and compose refuse one at once, next test.)"""
    stuck = tmp_path / "stuck"
    os.mkfifo(stuck)
    args = _fifo_args(command, stuck)
    proc = subprocess.Popen([str(COMMAND), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=base_env(), cwd=tmp_path, start_new_session=True,
                            preexec_fn=_ctrl_c_as_in_a_terminal)
    w = wait_for_reader(stuck)
    try:
        time.sleep(0.2)  # into read(), which now waits for bytes that never come
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        os.close(w)
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and out == "", err


@pytest.mark.parametrize("command", ["validate", "compose"])
def test_a_fifo_as_the_channel_file_is_refused_at_once(command, tmp_path):
    """Only a regular file is read as a channel file (issue 16): no wait on a FIFO nobody writes."""
    stuck = tmp_path / "stuck"
    os.mkfifo(stuck)
    proc = subprocess.run([str(COMMAND), *map(str, _fifo_args(command, stuck))], capture_output=True, text=True,
                          timeout=20, env=base_env(), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "not a regular file" in error_line(proc.stderr) and proc.stdout == "", proc.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_the_sidecar_exits_0_on_sigterm_and_130_on_ctrl_c(sig, tmp_path, ml_root, sidecar):
    side = sidecar.serve(small_job(tmp_path), ml_root, installed=True)
    wait_for_path(fifo(ml_root, "train", 0))
    side.send(sig)
    assert side.wait(10) == SIGNAL_EXIT[sig], side.stderr
    assert "Traceback" not in side.stderr
    assert not fifo(ml_root, "train", 0).exists()


# --------------------------------------------------------------------------------------------
# status
# --------------------------------------------------------------------------------------------

def test_status_finds_the_ml_roots_status_file_and_sees_a_killed_sidecar_at_once(tmp_path, ml_root, sidecar):
    side = sidecar.serve(small_job(tmp_path), ml_root, installed=True)
    ready = wait_until(lambda: (lambda d: d if d.returncode == 0 else None)(run("status", "--ml-root", ml_root)),
                       15, "status --ml-root says ready")
    assert ready.stdout.startswith(f"ready: sidecar pid {side.pid}, up "), ready.stdout
    by_env = subprocess.run([str(COMMAND), "status", "--json"], capture_output=True, text=True, timeout=30,
                            env=base_env(SAGEMAKER_PIPE_ML_ROOT=str(ml_root)))
    assert by_env.returncode == 0 and json.loads(by_env.stdout)["pid"] == side.pid, by_env.stderr

    side.popen.send_signal(signal.SIGKILL)  # no clean-up: its status file stays, saying ready
    side.wait(10)
    assert (ml_root / "input" / ".sagemaker-pipe" / "status.json").exists()
    started = time.monotonic()
    gone = run("status", "--ml-root", ml_root)
    assert gone.returncode == 1
    assert gone.stdout.startswith(f"not ready (the sidecar (pid {side.pid}) is no longer running)"), gone.stdout
    assert time.monotonic() - started < 5


def test_the_default_status_file_goes_with_the_sidecar(tmp_path, ml_root, sidecar):
    side = sidecar.serve(small_job(tmp_path), ml_root, installed=True)
    status = ml_root / "input" / ".sagemaker-pipe" / "status.json"
    wait_until(lambda: status.exists() and json.loads(status.read_text())["ready"], 15, "ready")
    side.send(signal.SIGTERM)
    assert side.wait(10) == 0, side.stderr
    assert sorted(os.listdir(ml_root / "input")) == ["config", "data"]
    gone = run("status", "--ml-root", ml_root)
    assert gone.returncode == 1 and gone.stdout.startswith("not ready (no status file at "), gone.stdout


# --------------------------------------------------------------------------------------------
# the verdict
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seconds, blocked, starved, verdict", [
    (0.002, 0.0, 0.00196, "too-short"),  # the demo's first epoch: 98% starved of two milliseconds
    (1.0, 0.0, 0.98, "input-bound"),
    (1.0, 0.9, 0.01, "algorithm-bound"),
    (1.0, 0.01, 0.02, "balanced"),  # neither waited much
    (1.0, 0.4, 0.4, "balanced"),  # both alike
])
def test_the_verdict_names_what_the_shares_say(seconds, blocked, starved, verdict):
    stats = EpochStats("train", 0, 1, 1000, seconds, blocked, starved, True)
    assert stats.verdict == verdict
    assert stats.line().endswith(f"verdict={verdict}")


def test_no_epoch_line_calls_a_mostly_starved_reader_balanced(tmp_path, ml_root, sidecar, consumer):
    side = sidecar.serve(small_job(tmp_path), ml_root, epochs=3, installed=True)
    for name in ("train", "more"):
        consumer(pattern(ml_root, name), epochs=3).results()
    assert side.wait(20) == 0, side.stderr
    lines = [dict(re.findall(r"(\S+)=(\S+)", line)) for line in side.stderr.splitlines() if " epoch=" in line]
    assert len(lines) == 6, side.stderr
    for f in lines:
        starved, blocked = (float(f[k].rstrip("%")) for k in ("reader-starved", "writer-blocked"))
        if max(starved, blocked) >= 50:
            assert f["verdict"] != "balanced", f
