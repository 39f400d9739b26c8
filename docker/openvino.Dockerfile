# syntax=docker/dockerfile:1
#
# edgekit on-device agent for Intel machines (x86-64): OpenVINO on the CPU, the integrated GPU (/dev/dri)
# and the NPU (/dev/accel), plus ONNX Runtime. Build and run lines: docker/README.md.
#
# Base: openvino/ubuntu24_runtime:2026.0.0 = Intel's OpenVINO 2026.0.0 runtime image (Ubuntu 24.04,
# Python 3.12, linux/amd64), chosen for the user-space drivers it carries: Intel's GPU compute runtime
# (OpenCL, Level Zero) and NPU driver (Level Zero). edgekit runs the pip `openvino` of the SAME version
# from its own virtual environment; the image's bundled Python API is kept off the path.
ARG OPENVINO_VERSION=2026.0.0

# ---- build: a virtual environment in /opt/edgekit; the source tree stays in this stage ----
FROM openvino/ubuntu24_runtime:${OPENVINO_VERSION} AS build
ARG OPENVINO_VERSION
# Must equal the torch pin in pyproject.toml (tests/test_docker.py checks it).
ARG TORCH_VERSION=2.13.0
# The base image runs as its `openvino` user; installing into /opt needs root. DL3002 (last USER is
# root): this stage is discarded, the final stage runs as edgekit.
# hadolint ignore=DL3002
USER 0
# PYTHONPATH (set by the base to its bundled OpenVINO) is cleared so pip installs and later imports
# the venv's own openvino.
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH= \
    PATH=/opt/edgekit/bin:$PATH

# PyTorch (an edgekit core dependency) as the CPU build, from PyTorch's own CPU index, before anything
# else can pull a CUDA build.
RUN /usr/bin/python3 -m venv /opt/edgekit \
    && pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}"

WORKDIR /src
COPY pyproject.toml README.md ./
COPY edgekit/ edgekit/
COPY targets/ targets/

# Naming torch again makes pip fail loudly if pyproject's pin ever leaves TORCH_VERSION behind.
# DL3013 (pin versions in pip): ".[extras]" is this repository's own source; its dependencies' bounds
# are pyproject.toml's.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[agent,openvino,onnxruntime]" "torch==${TORCH_VERSION}" "openvino==${OPENVINO_VERSION}"

# ---- runtime ----
FROM openvino/ubuntu24_runtime:${OPENVINO_VERSION}
LABEL org.opencontainers.image.title="edgekit-agent:openvino" \
      org.opencontainers.image.description="edgekit on-device agent: OpenVINO (CPU, iGPU, NPU) and ONNX Runtime"
# Root only to create the user; the last USER below is edgekit's.
USER 0

# The agent's user, edgekit (never uid 0). Give it your uid if the token file is yours alone
# (docker/README.md). An image user that already has the uid gives it up, so that the numeric
# USER below resolves to edgekit and its groups.
ARG EDGEKIT_UID=1000
ARG EDGEKIT_GID=1000
ENV PATH=/opt/edgekit/bin:$PATH \
    PYTHONPATH= \
    LD_LIBRARY_PATH= \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/var/lib/edgekit \
    XDG_CACHE_HOME=/var/lib/edgekit/.cache

# video: /dev/dri/card*. The render nodes (/dev/dri/renderD*, /dev/accel/accel*) belong to the host's
# `render` group, whose gid differs between hosts: `docker run --group-add` gives it (docker/README.md).
RUN test "${EDGEKIT_UID}" -ne 0 \
    && existing="$(awk -F: -v uid="${EDGEKIT_UID}" '$3 == uid { print $1 }' /etc/passwd)" \
    && if [ -n "${existing}" ]; then userdel "${existing}"; fi \
    && groupadd --non-unique --gid "${EDGEKIT_GID}" edgekit \
    && useradd --no-log-init --uid "${EDGEKIT_UID}" --gid edgekit --groups video \
        --home-dir /var/lib/edgekit --shell /usr/sbin/nologin edgekit \
    && install -d -o edgekit -g edgekit -m 0750 /var/lib/edgekit

COPY --from=build /opt/edgekit /opt/edgekit

# Jobs, compiled models and caches survive restarts and image updates in this volume.
VOLUME ["/var/lib/edgekit"]
WORKDIR /var/lib/edgekit
USER ${EDGEKIT_UID}:${EDGEKIT_GID}
EXPOSE 8700

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/opt/edgekit/bin/python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8700/v1/health', timeout=4)"]

# The token is mounted read-only at /run/secrets/edgekit-token (a Docker secret or a bind mount).
ENTRYPOINT ["edgekit"]
CMD ["agent", "serve", "--host", "0.0.0.0", "--port", "8700", "--token-file", "/run/secrets/edgekit-token", "--workdir", "/var/lib/edgekit"]
