# The dualpool gateway: `dualpool serve` and nothing else (no emulator, simulator,
# planner, tokenizers or plots). Build: docker build -t dualpool .
# Run:   docker run -p 8000:8000 -v $PWD/fleet.yaml:/etc/dualpool/fleet.yaml dualpool
#
# The install steps are deploy/install-gateway.sh, the same script the test of
# the lean install runs in a fresh venv (tests/deploy/test_lean_install.py).

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
# Extras beside the gateway: redis (shared calibration); emulate,redis for the
# image of deploy/overlays/emulated.
ARG EXTRAS=redis
ENV PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/dualpool/bin:$PATH
COPY deploy/install-gateway.sh /usr/local/bin/install-gateway.sh
COPY --from=build /wheels /wheels
RUN install-gateway.sh /opt/dualpool /wheels "$EXTRAS" \
    && rm -rf /wheels \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin dualpool \
    && mkdir -p /var/lib/dualpool \
    && chown dualpool /var/lib/dualpool
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2)"]
ENTRYPOINT ["dualpool", "serve"]
CMD ["--config", "/etc/dualpool/fleet.yaml"]
