# syntax=docker/dockerfile:1.7
#
# The MGeo worker: `mgeo worker` with PyPI's CUDA build of torch on a slim Python image, as an
# unprivileged user.
#
#   docker build -t mgeo-worker .
#       No model inside: mount one and point MGEO_MODEL at it, or leave MGEO_MODEL unset for the
#       package's demonstration model:
#       docker run --gpus all -v /srv/mgeo-hf:/models/mgeo:ro -e MGEO_MODEL=/models/mgeo \
#           -e MGEO_BOOTSTRAP_SERVERS=kafka:9092 mgeo-worker
#
#   docker build --target worker-baked --build-context model=/srv/mgeo-hf -t mgeo-worker:mgeo .
#       A self-contained image with the model directory (a Hugging Face directory, e.g. the
#       output of `mgeo convert`) at /models/mgeo and MGEO_MODEL set to it. Without the
#       --build-context the directory is empty and the worker refuses to start, loudly.
#
# The same image runs on CPU-only hosts with MGEO_DEVICE=cpu.
#
# Python packages: deploy/requirements/worker.txt pins every one (torch at the version CI tests,
# transformers and tokenizers at the versions the test suite ran with; `deploy/lock.py` writes
# it). They are installed in a layer that sees only that file, so a source change rebuilds just
# the small layer that installs the package itself. torch comes from PyPI, whose Linux x86_64
# wheels are CUDA builds carrying their CUDA and cuDNN libraries as pip packages: the host
# needs only the NVIDIA driver and container toolkit. For another CUDA flavour of the same torch
# version pass e.g. --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130.

# CPython 3.11, as in CI (the lock file is resolved for it).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# The model to bake in; `--build-context model=DIR` replaces this empty stage.
FROM scratch AS model

# The dependency layer: only the lock file goes in, so it stays cached across source changes.
FROM ${PYTHON_IMAGE} AS deps

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_WARN_SCRIPT_LOCATION=1

ARG TORCH_INDEX_URL=""
RUN --mount=type=bind,source=deploy/requirements/worker.txt,target=/tmp/requirements.txt \
    --mount=type=cache,target=/root/.cache/pip \
    pip install --requirement /tmp/requirements.txt \
        ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} \
    && pip check \
    && python -c "import torch, transformers, tokenizers, safetensors, prometheus_client, confluent_kafka; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

# The package itself, without dependencies (all pinned above; tests/test_compose.py checks that
# the lock file covers pyproject.toml, and `pip check` here that the core ones are met). The
# source is bind-mounted, so no copy of it stays in a layer.
FROM deps AS runtime

RUN --mount=type=bind,target=/src,rw \
    pip install --no-deps --no-build-isolation /src \
    && pip check \
    && mgeo worker --help > /dev/null \
    && python -c "import mgeo.worker.app"

# What the NVIDIA container runtime mounts into the container: the CUDA driver API.
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility

# An unprivileged user with a fixed uid (Kubernetes' runAsNonRoot checks the number). Its cache
# directory holds Hugging Face, Triton and torch-inductor caches; mount an emptyDir there when
# the root filesystem is read-only.
RUN groupadd --gid 10001 mgeo \
    && useradd --uid 10001 --gid 10001 --home-dir /home/mgeo --create-home --shell /usr/sbin/nologin mgeo \
    && mkdir -p /models /home/mgeo/.cache \
    && chown -R 10001:10001 /home/mgeo

ENV HOME=/home/mgeo \
    XDG_CACHE_HOME=/home/mgeo/.cache \
    HF_HOME=/home/mgeo/.cache/huggingface \
    TRITON_CACHE_DIR=/home/mgeo/.cache/triton \
    TORCHINDUCTOR_CACHE_DIR=/home/mgeo/.cache/torchinductor \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    MGEO_METRICS_PORT=9400

USER 10001:10001
WORKDIR /home/mgeo

# /metrics (Prometheus), /healthz (liveness), /readyz (readiness).
EXPOSE 9400

# The HTTP server starts once the model is loaded, hence the long start period.
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('MGEO_METRICS_PORT', '9400'), timeout=4)"]

# SIGTERM drains: stop polling, finish in-flight work, flush, commit, exit within
# MGEO_SHUTDOWN_TIMEOUT (default 60 s); give containers a longer stop timeout than that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["mgeo"]
CMD ["worker"]

# A self-contained variant with the model baked in (see the top of this file).
FROM runtime AS worker-baked
COPY --from=model / /models/mgeo/
ENV MGEO_MODEL=/models/mgeo

# The default target: the runtime without a model.
FROM runtime AS worker
