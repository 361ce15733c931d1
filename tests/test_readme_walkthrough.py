"""The README's "Five minutes to a local Pipe-mode job" runs as written (issue 7).

The shell block is taken from README.md, with `sagemaker-pipe` run as `python -m sagemaker_pipe`
from this checkout, and run by bash in a scratch folder.
"""

from __future__ import annotations

import re
import shlex
import sys

import pytest
from conftest import REPO, base_env

pytestmark = pytest.mark.timeout(60)


def walkthrough() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Five minutes to a local Pipe-mode job"):]
    return re.search(r"```sh\n(.*?)```", section, re.S).group(1)


def test_the_five_minute_walkthrough_runs(tmp_path, procs):
    block = walkthrough()
    assert "sagemaker-pipe --config job.yaml" in block and "cat ml/input/data/train_0" in block
    python = f"{shlex.quote(sys.executable)} -m sagemaker_pipe"
    script = "set -e\n" + re.sub(r"\bsagemaker-pipe\b", python, block) + "\nwait\n"
    p = procs.start(["bash", "-c", script], "walkthrough", cwd=tmp_path, env=base_env())
    assert p.wait(40) == 0, p.stderr
    out = p.stdout
    assert "objects:        2 objects, 12 bytes" in out
    assert "algorithm sees: ml/input/data/train_0, train_1, train_2, ... (one FIFO per epoch)" in out
    assert re.search(r"^ready: sidecar pid \d+", out, re.M)
    assert out.count("a,1\nb,2\nc,3\n") == 2  # two epochs, each the two files in key order
    assert "hyperparameters.json\ninputdataconfig.json\nresourceconfig.json" in out
    assert "SIGTERM received: removing FIFOs and exiting" in p.stderr
    assert sorted(x.name for x in (tmp_path / "demo/ml/input/data").iterdir()) == []
