# Ferry image: Celery workers by default; the same image runs Flower and the `ferry` CLI.
#
#   docker build -t ferry .
#   docker run --rm -e FERRY_DATABASE_URL=... -e FERRY_REDIS_URL=... ferry             # a worker
#   docker run --rm -e FERRY_DATABASE_URL=... -e FERRY_REDIS_URL=... ferry ferry status 7
#
# Configuration comes only from the environment at run time (FERRY_DATABASE_URL,
# FERRY_REDIS_URL, FERRY_ACTOR, OTEL_*, FLOWER_BASIC_AUTH): nothing secret is baked in.
# Backfill specs are not part of the image: mount them (docker-compose.yml mounts ./specs
# on /specs and puts it on PYTHONPATH) or build a small image FROM this one.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 ferry \
 && useradd --system --uid 10001 --gid ferry --create-home --home-dir /home/ferry ferry

WORKDIR /src
COPY pyproject.toml README.md ./
COPY coordinator ./coordinator
COPY workers ./workers
COPY migrations ./migrations
COPY transforms ./transforms
RUN pip install --no-cache-dir . \
 && rm -rf build ./*.egg-info

# Run from outside the source tree so that the installed distribution is what gets imported.
WORKDIR /home/ferry
# Numeric so that runtimes enforcing "run as non-root" (Kubernetes runAsNonRoot) can check it.
USER 10001:10001

CMD ["celery", "-A", "workers", "worker", "--loglevel", "INFO", "--concurrency", "2"]
