#!/usr/bin/env bash
# The demo job: the sidecar on the bundled example data in a temporary ml-root, beside the
# example algorithm, which reads 3 epochs of both channels and prints counts and hashes.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
root=$(mktemp -d)
sidecar=
trap '[ -n "$sidecar" ] && kill "$sidecar" 2>/dev/null; rm -rf "$root"' EXIT
"$PYTHON" -m sagemaker_pipe --config config/local.yaml --ml-root "$root" --epochs 3 &
sidecar=$!
ML_ROOT="$root" EPOCHS=3 WAIT_S=30 "$PYTHON" examples/algorithm/train.py
wait "$sidecar"
sidecar=
echo "demo: the algorithm read 3 epochs of 2 channels; the sidecar exited 0"
