# syntax=docker/dockerfile:1
#
# support-bot as a container: a build stage makes the wheel of the project and of every
# dependency; the runtime stage installs them from there (no compiler, no network, no pip
# cache in the image) and runs as an unprivileged user.
#
#   docker build -t support-bot .
#   docker run --env-file support-bot.env -p 127.0.0.1:8080:8080 \
#       -v support-bot-data:/var/lib/support-bot/data \
#       -v support-bot-store:/var/lib/support-bot/store support-bot
#
# Configuration: the file named by SUPPORT_BOT_CONFIG (/etc/support-bot/bot.toml: mount
# yours there, read-only), or, when there is no such file, the SUPPORT_BOT_<SECTION>_<KEY>
# variables alone. The variables set below are the container's layout; like any variable
# they win over the file.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- build: the project's wheel, then wheels of everything it depends on ----------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m pip install "build>=1.2,<2"
WORKDIR /src
# Only what the wheel is made of (.dockerignore keeps the rest, secrets included, out).
COPY pyproject.toml README.md constraints.txt ./
COPY bot/ bot/
COPY handlers/ handlers/
COPY locales/ locales/
# The dependencies at the versions CI tested (constraints.txt, written by scripts/lock).
RUN python -m build --wheel --outdir /wheels . \
    && python -m pip wheel --wheel-dir /wheels -c constraints.txt /wheels/support_bot-*.whl

# -- runtime ----------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG UID=10001
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# The wheels are mounted for this step only: they never become a layer of the image.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m pip install --no-index --find-links=/wheels support-bot \
    && groupadd --system --gid "${UID}" support-bot \
    && useradd --system --uid "${UID}" --gid support-bot --no-create-home \
        --home-dir /var/lib/support-bot --shell /usr/sbin/nologin support-bot \
    && install -d -o support-bot -g support-bot -m 0700 \
        /var/lib/support-bot /var/lib/support-bot/data /var/lib/support-bot/store \
    && install -d -m 0755 /etc/support-bot

# Inside a container the listeners must face the container's network (the host decides what
# is published: see compose.yaml, which keeps the metrics port on the host's loopback);
# SQLite and the end-to-end encryption key store live on the two volumes.
ENV SUPPORT_BOT_CONFIG=/etc/support-bot/bot.toml \
    SUPPORT_BOT_WEB_LISTEN=0.0.0.0:8080 \
    SUPPORT_BOT_METRICS_LISTEN=0.0.0.0:9464 \
    SUPPORT_BOT_DATABASE_URL=sqlite:///var/lib/support-bot/data/support-bot.sqlite3 \
    SUPPORT_BOT_MATRIX_STORE_PATH=/var/lib/support-bot/store

USER ${UID}:${UID}
WORKDIR /var/lib/support-bot
# data: the SQLite database (unused with PostgreSQL). store: the encryption keys: lose them
# and the bot can no longer read its encrypted rooms; back both up.
VOLUME ["/var/lib/support-bot/data", "/var/lib/support-bot/store"]
EXPOSE 8080 9464

# /healthz is 503 when the database does not answer or the Matrix sync loop is stalled, 200
# while starting. The slim image has no curl: Python asks, on the port of web.listen.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('SUPPORT_BOT_WEB_LISTEN', ':8080').rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=8)"]

# SIGTERM lets the batch being handled finish and the outbox drain (up to ~40 s): give
# `docker stop` the time (`--time 45`, compose's stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["support-bot"]
CMD ["run"]

LABEL org.opencontainers.image.title="support-bot" \
      org.opencontainers.image.description="Matrix front desk for a LimeSurvey support service sold as one-hour tickets"
