# syntax=docker/dockerfile:1
#
# edgekit on-device agent for NVIDIA Jetson (Orin family) on JetPack 6.1 / 6.2 (L4T R36.4, Ubuntu 22.04,
# CUDA 12.6, TensorRT 10.3, Python 3.10). Build and run lines: docker/README.md.
#
# TensorRT and its Python bindings come from the base image (JetPack's own build for this L4T release):
# the `tensorrt` extra is NOT installed, because PyPI's TensorRT wheels are not built for Jetson's
# integrated GPU. cuda-python comes from pip. The base image's L4T release must match the device's
# (`cat /etc/nv_tegra_release` on the Jetson: R36, REVISION 4.x).
#
# Base: nvcr.io/nvidia/l4t-tensorrt:r10.3.0-runtime = NVIDIA's TensorRT 10.3 runtime image for JetPack 6.x
# (L4T R36, arm64; CUDA 12.6 and cuDNN 9.3 runtimes, TensorRT 10.3 with its Python bindings).
# Fallback if the runtime image lacks the Python bindings (the build stops and says so):
#   --build-arg BASE_IMAGE=nvcr.io/nvidia/l4t-jetpack:r36.4.0   (the whole JetPack 6.1, L4T R36.4.0; ~5 GB)
ARG BASE_IMAGE=nvcr.io/nvidia/l4t-tensorrt:r10.3.0-runtime

# ---- build: a virtual environment in /opt/edgekit; the source tree and compilers stay in this stage ----
FROM ${BASE_IMAGE} AS build
# Must equal the torch pin in pyproject.toml (tests/test_docker.py checks it).
ARG TORCH_VERSION=2.13.0
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/edgekit/bin:$PATH

# - gcc and the headers only for a dependency without an aarch64 wheel; they stay in this stage.
# - --system-site-packages: JetPack's TensorRT bindings live in the system Python's dist-packages.
# - PyTorch (an edgekit core dependency) as the CPU build, from PyTorch's own CPU index, before anything
#   else can pull a CUDA build; the agent needs it to load models, TensorRT does the GPU work.
# DL3008 (apt versions unpinned): the pinned base image fixes the Ubuntu release; exact Debian versions
# vanish from the archive at each point release and would break the build.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv python3-dev gcc \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv --system-site-packages /opt/edgekit \
    && pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}"

WORKDIR /src
COPY pyproject.toml README.md ./
COPY edgekit/ edgekit/
COPY targets/ targets/

# Naming torch again makes pip fail loudly if pyproject's pin ever leaves TORCH_VERSION behind.
# cuda-python 12.6.x matches JetPack 6.1/6.2's CUDA 12.6 (a later CUDA needs a newer L4T driver).
# DL3013 (pin versions in pip): ".[extras]" is this repository's own source; its dependencies' bounds
# are pyproject.toml's.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[agent,onnxruntime]" "torch==${TORCH_VERSION}" "cuda-python>=12.6,<12.7" \
    && python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('tensorrt') is None and 'no TensorRT Python bindings in the base image: rebuild with --build-arg BASE_IMAGE=nvcr.io/nvidia/l4t-jetpack:r36.4.0')"

# ---- runtime ----
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="edgekit-agent:jetson" \
      org.opencontainers.image.description="edgekit on-device agent: TensorRT 10.3 on JetPack 6.1/6.2 (L4T R36.4)"

# The agent's user, edgekit (never uid 0). Give it your uid if the token file is yours alone
# (docker/README.md). An image user that already has the uid gives it up, so that the numeric
# USER below resolves to edgekit and its groups.
ARG EDGEKIT_UID=1000
ARG EDGEKIT_GID=1000
ENV PATH=/opt/edgekit/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/var/lib/edgekit \
    XDG_CACHE_HOME=/var/lib/edgekit/.cache

# video: Jetson's GPU device nodes (/dev/nvhost-*, /dev/nvgpu/*) belong to that group.
RUN test "${EDGEKIT_UID}" -ne 0 \
    && existing="$(awk -F: -v uid="${EDGEKIT_UID}" '$3 == uid { print $1 }' /etc/passwd)" \
    && if [ -n "${existing}" ]; then userdel "${existing}"; fi \
    && groupadd --non-unique --gid "${EDGEKIT_GID}" edgekit \
    && useradd --no-log-init --uid "${EDGEKIT_UID}" --gid edgekit --groups video \
        --home-dir /var/lib/edgekit --shell /usr/sbin/nologin edgekit \
    && install -d -o edgekit -g edgekit -m 0750 /var/lib/edgekit

COPY --from=build /opt/edgekit /opt/edgekit

# Jobs, built engines and caches survive restarts and image updates in this volume.
VOLUME ["/var/lib/edgekit"]
WORKDIR /var/lib/edgekit
USER ${EDGEKIT_UID}:${EDGEKIT_GID}
EXPOSE 8700

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/opt/edgekit/bin/python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8700/v1/health', timeout=4)"]

# The token is mounted read-only at /run/secrets/edgekit-token (a Docker secret or a bind mount).
ENTRYPOINT ["edgekit"]
CMD ["agent", "serve", "--host", "0.0.0.0", "--port", "8700", "--token-file", "/run/secrets/edgekit-token", "--workdir", "/var/lib/edgekit"]
