# syntax=docker/dockerfile:1
#
# edgekit on-device agent for Raspberry Pi 4 / 5 on a 64-bit OS (linux/arm64): LiteRT (.tflite) on the
# Pi's CPU. Build and run lines: docker/README.md.
#
# Only the LiteRT interpreter (ai-edge-litert) is installed, not the whole `tflite` extra: litert-torch
# and ai-edge-quantizer convert and quantize PyTorch models, which edgekit does on the workstation, and
# they pull JAX, transformers and the LiteRT converter (about 1 GB more) onto the Pi. The agent only
# needs the interpreter to run and profile the .tflite files built elsewhere.
#
# Base: python:3.11.15-slim-bookworm = the Docker Official Python 3.11.15 image on Debian 12 (bookworm),
# slim variant, multi-arch (linux/arm64 is used here).

# ---- build: a virtual environment in /opt/edgekit; the source tree and compilers stay in this stage ----
FROM python:3.11.15-slim-bookworm AS build
# Must equal the torch pin in pyproject.toml (tests/test_docker.py checks it).
ARG TORCH_VERSION=2.13.0
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/edgekit/bin:$PATH

# - gcc only for a dependency without an aarch64 wheel; it stays in this stage.
# - PyTorch (an edgekit core dependency) as the CPU build, from PyTorch's own CPU index.
# DL3008 (apt versions unpinned): the pinned base image fixes the Debian release; exact Debian versions
# vanish from the archive at each point release and would break the build.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/* \
    && python -m venv /opt/edgekit \
    && pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}"

WORKDIR /src
COPY pyproject.toml README.md ./
COPY edgekit/ edgekit/
COPY targets/ targets/

# Naming torch again makes pip fail loudly if pyproject's pin ever leaves TORCH_VERSION behind.
# ai-edge-litert's bound is the one in pyproject's `tflite` extra (tests/test_docker.py checks it).
# DL3013 (pin versions in pip): ".[agent]" is this repository's own source; its dependencies' bounds
# are pyproject.toml's.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[agent]" "ai-edge-litert>=2.3" "torch==${TORCH_VERSION}"

# ---- runtime ----
FROM python:3.11.15-slim-bookworm
LABEL org.opencontainers.image.title="edgekit-agent:rpi" \
      org.opencontainers.image.description="edgekit on-device agent: LiteRT on Raspberry Pi 4/5 (64-bit)"

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

RUN test "${EDGEKIT_UID}" -ne 0 \
    && existing="$(awk -F: -v uid="${EDGEKIT_UID}" '$3 == uid { print $1 }' /etc/passwd)" \
    && if [ -n "${existing}" ]; then userdel "${existing}"; fi \
    && groupadd --non-unique --gid "${EDGEKIT_GID}" edgekit \
    && useradd --no-log-init --uid "${EDGEKIT_UID}" --gid edgekit \
        --home-dir /var/lib/edgekit --shell /usr/sbin/nologin edgekit \
    && install -d -o edgekit -g edgekit -m 0750 /var/lib/edgekit

COPY --from=build /opt/edgekit /opt/edgekit

# Jobs and caches survive restarts and image updates in this volume.
VOLUME ["/var/lib/edgekit"]
WORKDIR /var/lib/edgekit
USER ${EDGEKIT_UID}:${EDGEKIT_GID}
EXPOSE 8700

# A long start period: importing the stack on a Pi 4 takes a while.
HEALTHCHECK --interval=30s --timeout=5s --start-period=90s --retries=3 \
    CMD ["/opt/edgekit/bin/python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8700/v1/health', timeout=4)"]

# The token is mounted read-only at /run/secrets/edgekit-token (a Docker secret or a bind mount).
ENTRYPOINT ["edgekit"]
CMD ["agent", "serve", "--host", "0.0.0.0", "--port", "8700", "--token-file", "/run/secrets/edgekit-token", "--workdir", "/var/lib/edgekit"]
