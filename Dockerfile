FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY receiver ./receiver
COPY migrations ./migrations
RUN pip install . && useradd --system --uid 10001 --home-dir /data receiver \
    && mkdir -p /data && chown receiver /data

USER receiver
WORKDIR /data
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status == 200 else 1)"]
# Run migrations as their own step first: docker run IMAGE metastudio-receiver migrate
CMD ["metastudio-receiver", "serve", "--host", "0.0.0.0", "--port", "8080", "--config", "/config/receiver.toml"]
