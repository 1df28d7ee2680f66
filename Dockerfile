# The gateway image: hpc-gateway alone (no testbed), run as an unprivileged user, state on volumes,
# configured by environment variables (HPC_<SETTING>, see docs/operations.md).
#
#   docker build -t hpc-gateway .
#   docker run --rm hpc-gateway token ops --role admin          # a token and the hash to configure
#   docker run -d -p 8080:8080 -e HPC_TOKENS='ops:admin:sha256$...' \
#       -v hpc-data:/var/lib/hpc-gateway -v hpc-staging:/var/spool/hpc-gateway hpc-gateway
#
# Keys go into /var/lib/hpc-gateway/keys, host keys into /var/lib/hpc-gateway/known_hosts (or pin them
# per infrastructure). Built here without a registry by scripts/image.sh (podman, a Debian base made with
# debootstrap); src/tests/integration/test_image.py builds it and runs a job and a transfer through it.

# BASE: any Debian 12 (bookworm) image with Python 3.11 and its venv module. The public default needs a
# registry; scripts/image.sh builds one from Debian packages instead (no registry) and passes it here.
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/hpc-gateway/venv/bin:$PATH

WORKDIR /opt/hpc-gateway
# Dependencies first: they change less often than the code, so this layer stays cached. They go into a
# venv: Debian's own python3 refuses pip installs outside one (PEP 668), and the public image's is fine
# with one too. A proxy CA the build host trusts may come in as the build secret pip_cert (mounted for
# this step only, in no layer): scripts/image.sh passes the system's CA bundle.
COPY requirements.txt ./
RUN --mount=type=secret,id=pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
 && python3 -m venv /opt/hpc-gateway/venv \
 && pip install -r requirements.txt
COPY setup.py README.md ./
COPY openapi/ openapi/
COPY src/hpc/ src/hpc/
# A regular (non-editable) install, built as a wheel: the package, its OpenAPI spec and its Alembic
# migrations are copied into the venv (pip fetches the build tools, hence the secret again).
RUN --mount=type=secret,id=pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
 && pip install --no-deps --use-pep517 . && rm -rf /opt/hpc-gateway/build /opt/hpc-gateway/src/*.egg-info

RUN groupadd --system --gid 10001 hpc \
 && useradd --system --uid 10001 --gid hpc --home-dir /var/lib/hpc-gateway --shell /usr/sbin/nologin hpc \
 && install -d -o hpc -g hpc -m 700 /var/lib/hpc-gateway /var/lib/hpc-gateway/keys /var/spool/hpc-gateway
COPY scripts/docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh

# data_dir holds the SQLite database, keys/, known_hosts and secret.key; staging_dir the spooled bytes
# of transfers in flight. Set HPC_DATABASE_URL=postgresql+psycopg://... to use PostgreSQL instead.
ENV HPC_DATA_DIR=/var/lib/hpc-gateway \
    HPC_STAGING_DIR=/var/spool/hpc-gateway \
    HPC_LISTEN_HOST=0.0.0.0 \
    HPC_LISTEN_PORT=8080 \
    HPC_LOG_LEVEL=INFO
VOLUME ["/var/lib/hpc-gateway", "/var/spool/hpc-gateway"]
EXPOSE 8080
USER hpc

HEALTHCHECK --interval=30s --timeout=5s --start-period=10s \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('HPC_LISTEN_PORT', '8080'), timeout=4)"]
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["serve"]
