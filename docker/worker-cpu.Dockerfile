# Tunery cpu worker: file validation, evaluation, housekeeping (queue "cpu"); also the scheduler.
# Same dependencies as the web image; only the command differs.
# Build from the repository root: docker build -f docker/worker-cpu.Dockerfile .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TUNERY_DATA_DIR=/var/lib/tunery

RUN groupadd --system tunery && useradd --system --gid tunery --home /app tunery
WORKDIR /app

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
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

CMD ["celery", "-A", "tunery", "worker", "--queues", "cpu", "--concurrency", "2", "--loglevel", "INFO"]
