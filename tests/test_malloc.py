"""sagemaker_pipe.malloc: glibc is told to keep freed chunk buffers (speed is proven in bench/)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(30)
GLIBC = platform.libc_ver()[0] == "glibc"

PROBE = "from sagemaker_pipe import malloc; print(malloc.keep_freed_buffers())"


def _probe(env_extra: dict[str, str]) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=20, env=env)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_glibc_takes_the_settings():
    assert _probe({}) == "True"


@pytest.mark.parametrize("var", ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"])
def test_a_users_own_malloc_settings_are_left_alone(var):
    assert _probe({var: "1048576"}) == "False"
