"""Run inside the sidecar image by run.sh: a run of small files long enough for reader processes.

It proves what the host's tests cannot: that the image's own Python and installed package start
reader processes as the image's non-root user, and that the FIFO gets exactly the files' bytes.
Prints one line; exit 0 only if the sha256 matches, readers were seen and the sidecar exited 0.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

from sagemaker_pipe.readers import MIN_UNITS

work = Path("/tmp/readers-check")
src = work / "src"
rng = random.Random(7)
want = hashlib.sha256()
files = {f"{i // 1000:02d}/f{i:05d}": rng.randbytes(rng.randrange(0, 9000)) for i in range(MIN_UNITS + 100)}
for key in sorted(files):
    path = src / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(files[key])
    want.update(files[key])
config = work / "channels.json"
config.write_text(json.dumps([{"ChannelName": "train", "RecordWrapperType": "None", "DataSource": {
    "S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": str(src)}}}]))
side = subprocess.Popen([sys.executable, "-m", "sagemaker_pipe", "--config", str(config),
                         "--ml-root", str(work / "ml"), "--epochs", "1"])
fifo = work / "ml" / "input" / "data" / "train_0"
deadline = time.monotonic() + 60
while not fifo.exists() and time.monotonic() < deadline and side.poll() is None:
    time.sleep(0.05)
got = hashlib.sha256()
readers = 0
with open(fifo, "rb") as f:
    while chunk := f.read(1 << 16):
        got.update(chunk)
        if not readers:
            readers = sum(1 for pid in os.listdir("/proc") if pid.isdigit()
                          and b"sagemaker_pipe.readers" in Path(f"/proc/{pid}/cmdline").read_bytes())
rc = side.wait(60)
same = got.hexdigest() == want.hexdigest()
print(f"{len(files)} files as uid {os.getuid()}: {readers} reader processes, sha256 "
      f"{'matches' if same else 'DIFFERS'}, sidecar exit {rc}", flush=True)
sys.exit(0 if same and readers and rc == 0 else 1)
