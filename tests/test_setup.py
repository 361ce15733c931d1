"""The newcomer's set-up (issue 14): `make demo` on Debian's own python3 with a bare PATH leaves
the system interpreter untouched, and a test run leaves no temporary files behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import REPO, base_env

SYSTEM_PYTHON = "/usr/bin/python3"
BARE_ENV = {"PATH": "/usr/bin:/bin"}  # what `env -i PATH=/usr/bin:/bin make demo` gives make

SITE_DIRS = ("import site, sys; "
             "print(*{p for p in [*site.getsitepackages(), site.getusersitepackages()] if p}, sep='\\n')")


def _system_python_can_make_venvs() -> str | None:
    """Why the test cannot run here, or None."""
    if not shutil.which("make") or not shutil.which("git"):
        return "make and git are needed"
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"no {SYSTEM_PYTHON}"
    check = "import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 10))"
    if subprocess.run([SYSTEM_PYTHON, "-c", check], env=BARE_ENV, capture_output=True).returncode:
        return f"{SYSTEM_PYTHON} is older than 3.10 or cannot make virtual environments"
    return None


def _site_packages() -> dict[str, list[str]]:
    """Every site-packages folder of the system interpreter (user site included) and what it holds."""
    out = subprocess.run([SYSTEM_PYTHON, "-c", SITE_DIRS], env=BARE_ENV, capture_output=True, text=True, check=True)
    return {d: sorted(os.listdir(d)) if os.path.isdir(d) else [] for d in out.stdout.split()}


def _checkout(dest: Path) -> Path:
    """The repository's tracked files as they are now (a fresh clone, uncommitted edits included)."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_make_demo_on_the_system_python_with_a_bare_path(tmp_path):
    reason = _system_python_can_make_venvs()
    if reason:
        pytest.skip(reason)
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    repo = _checkout(tmp_path / "clone")
    before = _site_packages()

    first = subprocess.run(["make", "demo"], cwd=repo, env=BARE_ENV, capture_output=True, text=True, timeout=840)
    output = first.stdout + first.stderr
    assert first.returncode == 0, output[-4000:]
    for n in range(3):
        assert f"channel=train epoch={n} " in first.stdout and f"channel=validation epoch={n} " in first.stdout, output
    assert "demo: the algorithm read 3 epochs of 2 channels; the sidecar exited 0" in first.stdout
    venv = repo / ".venv"
    prefix = subprocess.run([str(venv / "bin" / "python"), "-c", "import sys, sagemaker_pipe; "
                             "print(sys.prefix, sagemaker_pipe.__file__)"], capture_output=True, text=True,
                            cwd=tmp_path, env=BARE_ENV)
    assert prefix.stdout.split() == [str(venv), str(repo / "sagemaker_pipe" / "__init__.py")], prefix
    assert _site_packages() == before, "make demo changed the system interpreter's site-packages"

    started = time.monotonic()
    again = subprocess.run(["make", "demo"], cwd=repo, env=BARE_ENV, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-4000:]
    assert "pip install" not in again.stdout, "the second run installed again although pyproject.toml is unchanged"
    assert time.monotonic() - started < 60


def test_make_says_what_to_install_without_a_usable_python(tmp_path):
    if not shutil.which("make"):
        pytest.skip("make is needed")
    repo = tmp_path / "clone"
    repo.mkdir()
    shutil.copy2(REPO / "Makefile", repo / "Makefile")
    fake = tmp_path / "bin"
    fake.mkdir()
    old = fake / "python3"  # a Python too old for the project: make must look further, then give up
    old.write_text("#!/bin/sh\nexit 1\n")
    old.chmod(0o755)
    env = {"PATH": str(fake)}  # nothing else: /bin holds python3 on most systems
    make = shutil.which("make")
    done = subprocess.run([make, "venv"], cwd=repo, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert "no Python 3.10 or newer on the PATH" in done.stderr, done.stderr
    assert not (repo / ".venv").exists()

    no_venv = fake / "python-without-venv"  # a 3.10+ Python whose venv module is missing (Debian without python3-venv)
    no_venv.write_text(f"#!/bin/sh\ncase \"$*\" in *ensurepip*) exit 1;; esac\nexec {sys.executable} \"$@\"\n")
    no_venv.chmod(0o755)
    done = subprocess.run([make, "venv", f"PYTHON={no_venv}"], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode != 0
    assert "apt-get install python3-venv" in done.stderr, done.stderr
    assert not (repo / ".venv").exists()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_test_run_leaves_no_temporary_files():
    """A small run that uses tmp_path, FIFOs, the installed command and a SeaweedFS server: nothing stays."""
    temp = Path(tempfile.mkdtemp(prefix="t", dir="/tmp"))  # short: SeaweedFS's unix sockets go under it
    tests = ["tests/test_s3_infra.py::test_seaweed_checks_signatures",
             "tests/test_data_errors.py::test_mid_epoch_errors_name_channel_object_and_setting[not-gzip]"]
    try:
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], cwd=REPO,
                             env=base_env(TMPDIR=str(temp)), capture_output=True, text=True, timeout=200)
        assert run.returncode == 0 and "2 passed" in run.stdout, run.stdout[-3000:] + run.stderr[-3000:]
        assert sorted(os.listdir(temp)) == []
    finally:
        shutil.rmtree(temp, ignore_errors=True)
