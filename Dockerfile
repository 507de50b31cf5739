# syntax=docker/dockerfile:1
# One image for every Dagster process of covid_lakehouse: the code server (default CMD), the
# webserver and the daemon differ only by command (see docker-compose.yml). The default (last) stage,
# runtime, is the production image: it holds the product only. The `dev` stage adds the stand-ins
# (covid_lakehouse_dev: the offline mock APIs) for compose's demo profile.
#
#   docker build -t covid-lakehouse:local .                      # production
#   docker build --target dev -t covid-lakehouse-dev:local .     # mock APIs (demo)
#
# Build stage: resolve and install into a virtualenv; the runtime stage copies only that venv, so no
# pip cache, build backend or source tree ends up in the image.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv "$VIRTUAL_ENV"
WORKDIR /src

# Dependencies first, from pyproject.toml alone, against an empty stand-in package: this layer (the
# slow one) is rebuilt only when the dependencies change, not on every code change.
COPY pyproject.toml ./
RUN --mount=type=cache,target=/root/.cache/pip \
    mkdir covid_lakehouse && touch covid_lakehouse/__init__.py README.md \
    && pip install . \
    && pip uninstall --yes covid-lakehouse \
    && rm -rf covid_lakehouse README.md build ./*.egg-info

# Then the project itself (non-editable: package data such as the bundled snapshots is installed).
COPY README.md ./
COPY covid_lakehouse ./covid_lakehouse
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --no-deps . \
    && pip check


# The stand-ins on top of the build: the same venv, reinstalled with covid_lakehouse_dev. Only
# compose's mock-apis service (build.target: dev) runs it; nothing here reaches the runtime stage.
FROM build AS dev

COPY covid_lakehouse_dev ./covid_lakehouse_dev
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --no-deps . \
    && pip check \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin mockapi

USER mockapi
EXPOSE 8080
CMD ["covid-lakehouse", "mock-apis", "--host", "0.0.0.0", "--port", "8080"]


FROM ${PYTHON_IMAGE} AS runtime

# tini as PID 1: forwards SIGTERM to the Dagster process and reaps the run-worker subprocesses that
# the code server starts (DefaultRunLauncher), also where no `init: true` is set (Kubernetes).
RUN apt-get update \
    && apt-get install --yes --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*

# A fixed, unprivileged uid/gid (Kubernetes runAsUser/fsGroup can match it).
ARG APP_UID=10001
RUN groupadd --system --gid "${APP_UID}" dagster \
    && useradd --system --uid "${APP_UID}" --gid dagster --create-home --home-dir /home/dagster \
        --shell /usr/sbin/nologin dagster

ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    COVID_LAKEHOUSE_HOME=/opt/dagster/state

# Code and instance config belong to root (read-only for the app); only state directories are the
# app's: $DAGSTER_HOME/storage (compute logs, local artifacts: a volume in compose) and
# COVID_LAKEHOUSE_HOME.
COPY --from=build /opt/venv /opt/venv
WORKDIR /opt/dagster/app
COPY deploy/ ./deploy/
COPY deploy/dagster.compose.yaml ${DAGSTER_HOME}/dagster.yaml
RUN mkdir -p "${DAGSTER_HOME}/storage" "${COVID_LAKEHOUSE_HOME}" \
    && chown dagster:dagster "${DAGSTER_HOME}" "${DAGSTER_HOME}/storage" "${COVID_LAKEHOUSE_HOME}" \
    && chmod 0444 "${DAGSTER_HOME}/dagster.yaml"

USER dagster:dagster

# 3000: dagster-webserver; 4000: the code location's gRPC server.
EXPOSE 3000 4000

ENTRYPOINT ["/usr/bin/tini", "--"]
# No HEALTHCHECK here: each service's check differs (gRPC ping, HTTP, daemon heartbeat) and lives in
# docker-compose.yml / the Kubernetes probes.
CMD ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", "-m", "covid_lakehouse.definitions"]
