# syntax=docker/dockerfile:1.7
# avatar-bridge container image.
#
#   docker build -t avatar-bridge .
#   docker run ... (see docs/deployment.md: socket bind-mount, env, `docker stop -t 30`)
#
# Two stages: the builder makes /app/.venv from the lock file; the runtime stage copies only that
# venv onto python:3.11-slim and runs as a fixed non-root UID.
# tests/deploy/test_docker.py lints this file and replays its pip steps in a clean venv.

ARG PYTHON_IMAGE=python:3.11-slim

# ----- builder ------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
RUN python -m venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH

# Dependencies first, in their own layer: it is rebuilt only when the lock or pyproject changes.
# Only the runtime dependencies are installed (the lock also pins the dev tools), each at the
# version the lock file pins; the constraint makes any drift from the lock an install error.
COPY requirements.lock pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > runtime-requirements.txt \
    && pip install --constraint requirements.lock --requirement runtime-requirements.txt

# Then the project itself, without touching the dependencies installed above.
COPY README.md ./
COPY bridge ./bridge
RUN pip install --no-deps . \
    && pip check \
    && avatar-bridge --version

# ----- runtime ------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="avatar-bridge" \
      org.opencontainers.image.description="PCM on a local socket in, a lip-synced LiveAvatar avatar in a Stream call out" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed UID/GID so host bind mounts (the socket directory) can be owned or grouped to match.
# The two directories exist before VOLUME so a new named volume inherits their owner and mode.
RUN groupadd --system --gid 10001 avatar-bridge \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin avatar-bridge \
    && install -d -o 10001 -g 10001 -m 0750 /run/avatar-bridge /var/lib/avatar-bridge

COPY --from=builder /app/.venv /app/.venv

ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    AVATAR_BRIDGE_INGEST__SOCKET_PATH=/run/avatar-bridge/bridge.sock \
    AVATAR_BRIDGE_STATE_DIR=/var/lib/avatar-bridge \
    AVATAR_BRIDGE_LOG__FORMAT=json

# The socket directory is shared with the clients (bind-mount or a pod's emptyDir); the state
# directory holds the paid-session ledger, which must survive a restart so orphans get stopped.
VOLUME ["/run/avatar-bridge", "/var/lib/avatar-bridge"]

USER 10001:10001
WORKDIR /var/lib/avatar-bridge

# Admin API (health, readiness, metrics); it listens on 127.0.0.1 unless
# AVATAR_BRIDGE_ADMIN__HOST=0.0.0.0 is set, so publishing it is an explicit choice.
EXPOSE 8787

# Probes the admin API from inside the container with Python's urllib: no curl in the image.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["avatar-bridge", "health"]

# The daemon drains on SIGTERM (limits.drain_timeout_s, default 20 s): stop with `-t 30` or more.
STOPSIGNAL SIGTERM

# Exec form: the daemon is PID 1 and gets SIGTERM itself (it installs its own handlers).
ENTRYPOINT ["avatar-bridge"]
CMD ["run"]
