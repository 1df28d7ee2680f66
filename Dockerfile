# The gateway image: hpc-gateway alone (no testbed), run as an unprivileged user, state on volumes,
# configured by environment variables (HPC_<SETTING>, see docs/operations.md).
#
#   docker build -t hpc-gateway .
#   docker run --rm hpc-gateway token ops --role admin          # a token and the hash to configure
#   docker run -d -p 8080:8080 -e HPC_TOKENS='ops:admin:sha256$...' \
#       -v hpc-data:/var/lib/hpc-gateway -v hpc-staging:/var/spool/hpc-gateway hpc-gateway
#
# Keys go into /var/lib/hpc-gateway/keys, host keys into /var/lib/hpc-gateway/known_hosts (or pin them
# per infrastructure). tests/integration/test_cli_docker.py runs this file's ENTRYPOINT/CMD with its ENV
# outside a container, so what is written here is what is tested.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/hpc-gateway
# Dependencies first: they change less often than the code, so this layer stays cached.
COPY requirements.txt ./
RUN pip install -r requirements.txt
COPY setup.py README.md ./
COPY openapi/ openapi/
COPY src/hpc/ src/hpc/
RUN pip install --no-deps . && rm -rf /opt/hpc-gateway/build

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
