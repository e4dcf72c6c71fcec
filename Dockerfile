# driftline: the monitor service image (also runs `driftline simulate` when built with
# the demo extra, as docker-compose.yml does).
#
#   docker build -t driftline .                                  # production: no extras
#   docker build -t driftline:demo --build-arg EXTRAS='[demo]' .  # + river, for `simulate`
#
# Two stages: the build stage installs into a virtualenv, the runtime stage copies only
# that virtualenv (no pip cache, no build tools, no sources) and runs as a non-root user.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ARG EXTRAS=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/driftline
WORKDIR /src
# Dependencies first, so that a code change does not reinstall them.
COPY pyproject.toml README.md LICENSE ./
COPY driftline ./driftline
COPY monitor ./monitor
COPY detectors ./detectors
COPY sinks ./sinks
RUN /opt/driftline/bin/pip install ".${EXTRAS}"

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="driftline" \
      org.opencontainers.image.description="Streaming drift monitor and retraining/rollback trigger for ML models" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 driftline \
 && useradd --system --uid 10001 --gid driftline --home-dir /var/lib/driftline --no-create-home driftline \
 && mkdir -p /var/lib/driftline /etc/driftline \
 && chown driftline:driftline /var/lib/driftline
COPY --from=build /opt/driftline /opt/driftline
ENV PATH=/opt/driftline/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    DRIFTLINE_STATE_DIR=/var/lib/driftline \
    DRIFTLINE_PROMETHEUS__PORT=9308
USER driftline
WORKDIR /var/lib/driftline
VOLUME ["/var/lib/driftline"]
EXPOSE 9308
# Liveness from the metrics server's /healthz (the slim image has no curl).
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('DRIFTLINE_PROMETHEUS__PORT', '9308'), timeout=2)"]
ENTRYPOINT ["driftline"]
CMD ["run"]
