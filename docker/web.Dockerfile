# Tunery control plane (web, cpu worker and scheduler share this image).
# Build from the repository root: docker build -f docker/web.Dockerfile .
FROM python:3.11-slim AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TUNERY_DATA_DIR=/var/lib/tunery

RUN groupadd --system tunery && useradd --system --gid tunery --home /app tunery
WORKDIR /app

# torch from the CPU wheel index: the web and cpu-worker images never need CUDA.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==2.13.0"

COPY contract/ contract/
COPY pyproject.toml manage.py README.md ./
COPY platform/ platform/
COPY workers/ workers/
COPY client/ client/
COPY verticals/ verticals/
RUN pip install ./contract . $(for p in verticals/*/; do [ -f "$p/pyproject.toml" ] && echo "./$p"; done)

# The admin's static files, collected at build time and served by WhiteNoise inside gunicorn.
RUN python manage.py collectstatic --noinput && mkdir -p /var/lib/tunery && chown -R tunery:tunery /var/lib/tunery
USER tunery
EXPOSE 8000

# The control plane: gunicorn with tunery.gunicorn_conf (threaded workers, preloaded app; the demo
# runs the same). WEB_CONCURRENCY processes, TUNERY_WEB_THREADS threads each; serving sees
# WEB_CONCURRENCY and shares the cores out.
ENV WEB_CONCURRENCY=4
CMD ["sh", "-c", "exec gunicorn -c python:tunery.gunicorn_conf tunery.wsgi:application --bind 0.0.0.0:8000 --access-logfile - --forwarded-allow-ips='*'"]
