# streaming-message as a container image, for Fly.io (fly.toml) or any container host:
#   docker build -t streaming-message .
#   docker run -p 8000:8000 -v sm-data:/data -e SSE_TOKEN=... streaming-message
# Only the runtime files go in: the server, its schema, the bundled quotes and the prebuilt
# frontend (no Node).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOST=0.0.0.0 \
    PORT=8000 \
    DATA_DIR=/data

# A user of its own that owns the data directory (a new volume takes that ownership).
RUN useradd --system --uid 10001 --no-create-home --home-dir /app app \
    && mkdir -p /data \
    && chown app:app /data

WORKDIR /app
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt
COPY app.py schema.sql quotes.json ./
COPY frontend/dist ./frontend/dist/

USER app
VOLUME /data
EXPOSE 8000
# Liveness (/healthz), not readiness (/readyz): what acts on an unhealthy container
# (swarm, autoheal, an orchestrator) restarts it, and a restart cures a wedged process but
# not a full disk or an unreachable Redis: it would only cut every stream, again and again.
# Those are /readyz's, for a proxy that routes around the machine (fly.toml's check).
# The slim image has no curl: ask /healthz with Python.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ['PORT'], timeout=4)"]
# SIGTERM: the server ends every stream with a final event and commits what is pending.
STOPSIGNAL SIGTERM
CMD ["python", "app.py"]
