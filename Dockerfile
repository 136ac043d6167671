# metastudio-receiver: one replica per container.
#
#   docker build -t metastudio-receiver .
#   docker run --rm -v ./receiver.toml:/config/receiver.toml:ro --env-file secrets.env \
#       metastudio-receiver metastudio-receiver migrate     # the schema, as its own step
#   docker run -d -p 8080:8080 -v ./receiver.toml:/config/receiver.toml:ro --env-file secrets.env \
#       metastudio-receiver                                 # serve (refuses an old schema)
#
# examples/deploy/ holds a compose file for N replicas behind a load balancer on PostgreSQL.
# CI builds this file and runs the image (tests/system/test_container.py, with podman).

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md alembic.ini ./
COPY receiver ./receiver
COPY migrations ./migrations
# Every dependency ships as a wheel, so the image needs no compiler. /venv is copied whole.
RUN python -m venv /venv && /venv/bin/pip install --only-binary=:all: . \
    && /venv/bin/pip uninstall -y pip setuptools wheel

FROM python:3.11-slim
# FORWARDED_ALLOW_IPS: uvicorn trusts X-Forwarded-For / -Proto only from these addresses; "*"
# fits a container reachable only through its load balancer. Narrow it when that is not so.
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/venv/bin:$PATH FORWARDED_ALLOW_IPS="*"
COPY --from=build /venv /venv
RUN useradd --system --uid 10001 --no-create-home --home-dir /data receiver \
    && mkdir -p /data /config && chown receiver /data
USER receiver
WORKDIR /data
VOLUME /data
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status == 200 else 1)"]
# SIGTERM (Docker's default stop signal): uvicorn stops accepting, the group-commit writer commits
# what is queued, then the process exits.
# --no-migrate: the schema is migrated as its own step (see above); a replica does not need DDL
# rights, and refuses to start on a schema older than its code.
CMD ["metastudio-receiver", "serve", "--no-migrate", "--host", "0.0.0.0", "--port", "8080", \
     "--config", "/config/receiver.toml"]
