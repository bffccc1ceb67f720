# syntax=docker/dockerfile:1
# msde serving image: TorchServe 0.12 + the msde archive, CPU only.
#
#   make archive            # model_store/msde.mar (the trained student + handler + detector)
#   docker build -t msde:0.1.0 .
#   docker run --rm -p 8080:8080 -p 8082:8082 msde:0.1.0
#
# Why CPU only: the handler loads the student with map_location="cpu" and runs the
# BlazeFace detector on onnxruntime's CPU provider, so CUDA libraries would be dead weight
# (several GB). torch is installed from the PyTorch CPU wheel index for that reason (the
# PyPI x86_64 wheel is the CUDA build). See docs/deploy.md.
#
# The archive is not built here: it needs the trained student, which lives outside the
# repository. The builder takes a prebuilt one from the build context (MAR build argument)
# and refuses to continue unless it is a well-formed TorchServe archive.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------- builder --
FROM ${PYTHON_IMAGE} AS builder
ARG MAR=model_store/msde.mar
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
# torch first, from the CPU index, so nothing later pulls the CUDA build from PyPI; then the
# serving dependencies only (the handler ships inside the archive), at the versions the test
# suite runs on (tests/deploy checks they agree with pyproject.toml).
RUN /opt/venv/bin/pip install --index-url "${TORCH_INDEX_URL}" torch==2.14.1 \
    && /opt/venv/bin/pip install \
        torch==2.14.1 \
        torchserve==0.12.0 \
        pyyaml==6.0.4 \
        pydantic==2.14.4 \
        numpy==2.4.6 \
        pillow==13.0.0 \
        onnxruntime==1.32.0 \
        opencv-python-headless==5.0.0.93 \
    && /opt/venv/bin/python -c "import torch; assert not torch.cuda.is_available() and '+cpu' in torch.__version__, torch.__version__"

COPY ${MAR} /opt/msde/model_store/msde.mar
RUN /opt/venv/bin/python -c "import json, sys, zipfile; m = json.loads(zipfile.ZipFile(sys.argv[1]).read('MAR-INF/MANIFEST.json')); h = m['model']['handler']; print('archive', m['model']['modelName'], m['model']['modelVersion'], 'handler', h)" /opt/msde/model_store/msde.mar

# ---------------------------------------------------------------------------- runtime --
FROM ${PYTHON_IMAGE} AS runtime
ARG MSDE_UID=10001

# Java 17 for TorchServe's frontend; iproute2 (ss) lets the entrypoint see in-flight
# requests while it drains. (man1 must exist for the JRE's postinst on slim images.) Debian
# point releases move exact versions; the base image tag pins the release.
# hadolint ignore=DL3008
RUN mkdir -p /usr/share/man/man1 \
    && apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless iproute2 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid "${MSDE_UID}" --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin msde \
    && install -d -o "${MSDE_UID}" -g "${MSDE_UID}" -m 0750 /var/lib/msde

COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /opt/msde/model_store /app/model_store
COPY deploy/entrypoint.sh deploy/healthcheck.py deploy/config.properties deploy/metrics.yaml /app/deploy/

WORKDIR /app
# The only writable place TorchServe needs: logs, the rendered config, key file, JVM tmp.
# Management stays on loopback inside the container; 8081 is exposed for deployments that
# set MSDE_MANAGEMENT_ADDRESS (with token authorization on).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    MSDE_TS_CONFIG=/app/deploy/config.properties \
    MSDE_MODEL_STORE=/app/model_store \
    MSDE_MODELS=msde=msde.mar \
    MSDE_LOG_DIR=/var/lib/msde/logs \
    MSDE_WORK_DIR=/var/lib/msde/run \
    MSDE_INFERENCE_ADDRESS=http://0.0.0.0:8080 \
    MSDE_MANAGEMENT_ADDRESS=http://127.0.0.1:8081 \
    MSDE_METRICS_ADDRESS=http://0.0.0.0:8082 \
    OMP_NUM_THREADS=1

USER ${MSDE_UID}:${MSDE_UID}
EXPOSE 8080 8081 8082
HEALTHCHECK --interval=15s --timeout=10s --start-period=120s --retries=3 \
    CMD ["/opt/venv/bin/python", "/app/deploy/healthcheck.py", "ready", "--quiet"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/app/deploy/entrypoint.sh"]
