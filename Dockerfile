# syntax=docker/dockerfile:1
# PanaversityFS server image.
#
#   docker build -t panaversity-fs .
#   docker run -p 8080:8080 -v pfs-data:/data \
#       -e PANAVERSITY_ALLOWED_HOSTS='["localhost"]' \
#       -e PANAVERSITY_JWT_SECRET="$(openssl rand -hex 32)" panaversity-fs
#
# The server binds 0.0.0.0 here, and a public bind refuses to start (exit status 2) unless
# PANAVERSITY_ALLOWED_HOSTS lists, as JSON, the host names clients use (DNS-rebinding
# protection; loopback names and the container's own address are always accepted), and
# authentication is on (a JWT secret of at least 32 bytes, or a JWKS URL).
# With no other settings it keeps a SQLite file and the bytes in the /data volume. Production
# sets DATABASE_URL (PostgreSQL) and PANAVERSITY_STORAGE_BACKEND=s3 plus the S3 settings; see
# docs/configuration.md. An empty database is migrated at start (PANAVERSITY_AUTO_MIGRATE);
# `panaversity-fs db upgrade` and `alembic upgrade head` (from /app) also work in the image.

ARG PYTHON_IMAGE=python:3.11-slim
ARG UV_VERSION=0.13.9

FROM ghcr.io/astral-sh/uv:${UV_VERSION} AS uv

# Both stages use the same Python image: the venv's interpreter link points at its Python, and
# the editable install's .pth points at /app/src, so paths must be identical in both.
FROM ${PYTHON_IMAGE} AS builder
COPY --from=uv /uv /uvx /bin/
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /app
# Dependencies first, in their own layer: source edits do not reinstall them.
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-project
# README.md is the package's readme: the build backend needs it.
COPY README.md alembic.ini ./
COPY src ./src
# UV_COMPILE_BYTECODE covers the dependencies only; the editable project is compiled here
# because the runtime user cannot write __pycache__ under /app.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev \
    && python -m compileall -q src

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 panaversity \
    && useradd --system --uid 10001 --gid panaversity --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin panaversity \
    && mkdir /data \
    && chown panaversity:panaversity /data
WORKDIR /app
COPY --from=builder /app/.venv /app/.venv
COPY --from=builder /app/src /app/src
COPY --from=builder /app/alembic.ini /app/alembic.ini
ENV PATH="/app/.venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DATABASE_URL=sqlite+aiosqlite:////data/panaversity_fs.db \
    PANAVERSITY_SERVER_HOST=0.0.0.0 \
    PANAVERSITY_SERVER_PORT=8080 \
    PANAVERSITY_STORAGE_ROOT=/data
# Numeric, so orchestrators that require a non-root user can verify it without /etc/passwd.
USER 10001:10001
EXPOSE 8080
# slim has no curl; the venv's Python asks /health on the configured port (exit 1 unless 200).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/app/.venv/bin/python", "-c", "import http.client, os; c = http.client.HTTPConnection('127.0.0.1', int(os.environ.get('PANAVERSITY_SERVER_PORT', '8080')), timeout=4); c.request('GET', '/health'); raise SystemExit(0 if c.getresponse().status == 200 else 1)"]
# SIGTERM drains requests and ends with status 0.
CMD ["/app/.venv/bin/panaversity-fs", "serve"]
