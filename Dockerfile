# msde serving image: TorchServe 0.12 + the msde archive. CPU by default, CUDA on request.
#
#   make image                                   # msde:<version>, see tools/image.sh
#   docker build -t msde:1.0.0 .                 # the same with normal internet access
#   docker build --build-arg VARIANT=cuda -t msde:1.0.0-cuda .
#   docker run --rm -p 8080:8080 -p 8082:8082 msde:1.0.0
#
# What goes in is the serving set of pyproject.toml (the handler's dependencies and the
# `serving` extra) at the versions of requirements.lock, the file the test suite's
# environment is installed from: no second hand-kept list (tools/lockfile.py).
#
# VARIANT=cpu (default): torch from the PyTorch CPU wheel index (TORCH_INDEX_URL), because
# the x86_64 torch wheel on the default index is the CUDA build and would bring gigabytes of
# CUDA libraries a CPU pod never loads. VARIANT=cuda: torch from the default index (the CUDA
# build with its CUDA libraries) and onnxruntime-gpu in place of onnxruntime, for the
# handler's GPU path (docs/deploy.md, "CUDA variant"); the host needs the NVIDIA driver and
# container toolkit.
#
# The archive is not built here: it needs the trained student, which lives outside the
# repository. The builder takes a prebuilt one from the build context (MAR build argument)
# and refuses to continue unless it is a well-formed TorchServe archive.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------- builder --
FROM ${PYTHON_IMAGE} AS builder
# (each ARG is declared just before its first use: a build argument in scope is part of the
# cache key of every later RUN, and the venv layer should not be rebuilt for a new archive)
ARG VARIANT=cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Empty: the lock's torch. A builder that cannot reach that build may name another one
# (tools/image.sh does, from a local wheelhouse, and says so); the check below still
# requires the variant's torch build.
ARG TORCH_VERSION=
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
COPY pyproject.toml requirements.lock ./
COPY tools/lockfile.py tools/
# A TLS-intercepting proxy's CA bundle may come in as the build secret `pip_cert`: mounted
# for this step only, it never lands in a layer (make image-test checks every layer).
RUN --mount=type=secret,id=pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && python -m venv /opt/venv \
    && python tools/lockfile.py constraints ${TORCH_VERSION:+--pin "torch==${TORCH_VERSION}"} \
        > constraints.txt \
    && case "${VARIANT}" in \
        cpu) /opt/venv/bin/pip install --no-deps --index-url "${TORCH_INDEX_URL}" \
                 -c constraints.txt torch \
             && python tools/lockfile.py requirements serving > requirements.txt ;; \
        cuda) python tools/lockfile.py requirements serving cuda --drop onnxruntime \
                 > requirements.txt ;; \
        *) echo "VARIANT must be cpu or cuda, not ${VARIANT}" >&2 && exit 1 ;; \
    esac \
    && /opt/venv/bin/pip install -c constraints.txt -r requirements.txt \
    && /opt/venv/bin/python tools/lockfile.py check-installed --constraints constraints.txt \
    && /opt/venv/bin/python -c "import sys, torch; cuda = sys.argv[1] == 'cuda'; \
assert (torch.version.cuda is not None) == cuda and (cuda or '+cpu' in torch.__version__), \
torch.__version__; print('torch', torch.__version__)" "${VARIANT}"

ARG MAR=model_store/msde.mar
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

ARG VERSION=unversioned
ARG VARIANT=cpu
LABEL org.opencontainers.image.title="msde" \
      org.opencontainers.image.description="Masked facial-expression recognition on TorchServe" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT" \
      io.msde.variant="${VARIANT}"

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
