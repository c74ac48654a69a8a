# syntax=docker/dockerfile:1.7
# The pipeline image: the base_image of every KFP component, and the scoring worker.
# One Dockerfile, two variants (targets); names and tags come from components/images.py:
#   make images            (builds both, plus serving/ and mlflow/)
#   docker build --target cpu -t "$(python3 components/images.py pipeline)" .
#   docker build --target gpu -t "$(python3 components/images.py pipeline-gpu)" .
# The GPU variant installs the `gpu` extra (tensorflow[and-cuda]): CUDA and cuDNN come as
# pip wheels, so a plain Python base works and the host only needs the NVIDIA driver.

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src

FROM build AS venv-gpu
# The project itself, not a registry name: its dependency ranges live in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[gpu]"

FROM build AS venv-cpu
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[cpu]"

FROM ${PYTHON_IMAGE} AS runtime
ARG GIT_COMMIT=unknown
# The KFP v2 launcher stages artifacts under /minio, /s3, /gcs and /oci (LocalPathForURI
# in the launcher): they must exist and belong to the non-root user.
RUN groupadd --system --gid 10001 clazzify \
 && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/clazzify \
      --shell /usr/sbin/nologin clazzify \
 && mkdir -p /minio /s3 /gcs /oci \
 && chown clazzify:clazzify /minio /s3 /gcs /oci
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/clazzify \
    MPLCONFIGDIR=/tmp/matplotlib \
    TF_CPP_MIN_LOG_LEVEL=2 \
    CLAZZIFY_GIT_COMMIT=${GIT_COMMIT}
WORKDIR /home/clazzify
CMD ["clazzify", "--help"]

FROM runtime AS gpu
COPY --from=venv-gpu /opt/venv /opt/venv
USER 10001:10001

# Last stage: what a plain `docker build .` produces.
FROM runtime AS cpu
COPY --from=venv-cpu /opt/venv /opt/venv
USER 10001:10001
