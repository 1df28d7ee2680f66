#!/usr/bin/env bash
# Installs everything the gateway and its tests need on Debian 12 as root, idempotently:
# the testbed's Debian packages (testbed/install.sh), podman for the image test, a Python venv in .venv with the pinned
# requirements, and the gateway itself (editable). Re-runs take a few seconds.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"

bash testbed/install.sh
# wrk and hey: the HTTP load generators of bench/api.py (its smoke run is part of the test suite):
# wrk for closed-loop throughput, hey for latency at a fixed request rate.
if ! command -v wrk >/dev/null 2>&1 || ! command -v hey >/dev/null 2>&1; then
  echo "[setup] installing wrk and hey"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk hey >/dev/null
fi

# rclone: the peer bench/e2e.py measures the gateway against, for one big object and 2,000 small files (its smoke
# run is part of the test suite): what a user would reach for to copy between S3 and an SFTP server.
if ! command -v rclone >/dev/null 2>&1; then
  echo "[setup] installing rclone"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q rclone >/dev/null
fi

# podman, buildah, runc, debootstrap, slirp4netns: the container image test builds and runs the image
# (scripts/image.sh; the image itself is built, and cached, when that test runs).
bash scripts/image.sh install

python="${PYTHON:-python3}"
if ! "$python" -m venv --help >/dev/null 2>&1 || ! "$python" -c 'import ensurepip' >/dev/null 2>&1; then
  echo "[setup] installing python3-venv"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv python3-pip >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$python" -m venv .venv
fi
stamp=".venv/.requirements.sha256"
want="$(cat requirements.txt requirements-dev.txt setup.py | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing Python requirements"
  .venv/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt
  .venv/bin/pip install -q --disable-pip-version-check --no-deps -e .
  echo "$want" > "$stamp"
fi
echo "[setup] ready: $repo/.venv"
