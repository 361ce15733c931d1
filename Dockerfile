# sagemaker-pipe sidecar image.
#
# Runs beside a SageMaker training-algorithm container, shares /opt/ml/input
# with it and streams every channel into the FIFOs
# /opt/ml/input/data/<channel>_<epoch>, as SageMaker's Pipe input mode does.
#
#   docker build -t sagemaker-pipe .
#   docker run --rm -v ml-input:/opt/ml/input \
#       -v "$PWD/channels.yaml:/config/channels.yaml:ro" -v "$PWD/data:/data:ro" \
#       sagemaker-pipe
#
# Build arguments:
#   BASE_IMAGE  any Debian-like image with Python >= 3.10 as `python`, pip,
#               groupadd/useradd
#               (default: the official python:3.11-slim)
#   UID, GID    numeric user/group the sidecar runs as (default 1000:1000);
#               `docker run --user` / compose `user:` may override them at run
#               time: nothing below needs root or a particular uid then.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG UID=1000
ARG GID=1000

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    SAGEMAKER_PIPE_CONFIG=/config/channels.yaml \
    SAGEMAKER_PIPE_ML_ROOT=/opt/ml \
    SAGEMAKER_PIPE_STATUS_FILE=/tmp/sagemaker-pipe/status.json

# Only what .dockerignore lets through: the package, its metadata and the
# entry point. Installed (not run from the source tree), then the tree goes.
COPY . /tmp/src
# The shared directories belong to UID and to group 0, group-writable, and
# nothing here is world-writable: a run-time uid other than UID creates its
# FIFOs through group 0 (`--user 4242:0`, the usual pattern for arbitrary
# uids). The FIFOs are made 0644 by sagemaker-pipe, so the algorithm
# container reads them under any uid.
RUN pip install --no-cache-dir "/tmp/src[fast]" \
    && install -d -m 0755 /app /config \
    && install -m 0644 /tmp/src/entrypoint.py /app/entrypoint.py \
    && rm -rf /tmp/src \
    && groupadd --gid "${GID}" --non-unique sagemaker-pipe \
    && useradd --uid "${UID}" --gid "${GID}" --non-unique --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin sagemaker-pipe \
    && install -d -m 0755 /opt/ml \
    && install -d -o "${UID}" -g 0 -m 0775 \
        /opt/ml/input /opt/ml/input/config /opt/ml/input/data \
    && python -c "import sagemaker_pipe"

# Shared with the algorithm container (a named volume in docker-compose.yml).
VOLUME ["/opt/ml/input"]

USER ${UID}:${GID}
WORKDIR /app

# Healthy once the config files and every channel's first FIFO exist (the
# status command reads SAGEMAKER_PIPE_STATUS_FILE, which the sidecar writes).
HEALTHCHECK --interval=5s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "-m", "sagemaker_pipe", "status"]

# Exec form, no shell: SIGTERM (docker stop) goes straight to sagemaker-pipe,
# which removes its FIFOs and exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "/app/entrypoint.py"]
