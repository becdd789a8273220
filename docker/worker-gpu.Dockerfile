# Tunery gpu worker: runs fine-tuning jobs (queue "gpu"), one at a time.
# torch comes from the CUDA wheel index; its wheels carry the CUDA libraries, so the host needs
# only the NVIDIA driver and the NVIDIA container toolkit.
# Build from the repository root: docker build -f docker/worker-gpu.Dockerfile .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TUNERY_DATA_DIR=/var/lib/tunery \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

RUN groupadd --system tunery && useradd --system --gid tunery --home /app tunery
WORKDIR /app

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==2.13.0"

COPY contract/ contract/
COPY pyproject.toml manage.py README.md ./
COPY platform/ platform/
COPY workers/ workers/
COPY client/ client/
COPY verticals/ verticals/
RUN pip install ./contract . $(for p in verticals/*/; do [ -f "$p/pyproject.toml" ] && echo "./$p"; done)

RUN mkdir -p /var/lib/tunery && chown -R tunery:tunery /var/lib/tunery
USER tunery

# Concurrency 1 and prefetch 1: one job per GPU worker; a fresh child per task returns GPU memory.
CMD ["celery", "-A", "tunery", "worker", "--queues", "gpu", "--concurrency", "1", "--prefetch-multiplier", "1", "--max-tasks-per-child", "1", "--loglevel", "INFO"]
