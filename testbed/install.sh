#!/usr/bin/env bash
# Install the packages and the S3 server venv the local HPC testbed needs.
# Idempotent, non-interactive; run as root on Debian 12. Fast (< 2 s) when all is in place.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
VENV=/opt/hpc-testbed/venv
MOTO_VERSION=5.2.5
PKGS=(openssh-server openssh-client munge slurm-wlm slurm-wlm-torque nginx-light
      python3-numpy python3-scipy python3-venv curl procps iproute2 postgresql)

log() { echo "[install] $*"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "[install] ERROR: must run as root" >&2
    exit 1
fi

# --- Debian packages -------------------------------------------------------
missing=()
for p in "${PKGS[@]}"; do
    st=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
    [ "$st" = installed ] || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ ! -x /usr/sbin/policy-rc.d ]; then
        # Keep postinst scripts from starting system daemons (sshd on :22, nginx on :80, ...).
        log "no /usr/sbin/policy-rc.d: creating a temporary one that denies daemon starts"
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    log "apt-get update (missing: ${missing[*]})"
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    log "apt-get install ${missing[*]}"
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}" >/dev/null
    log "packages installed"
else
    log "packages: all present"
fi

for c in sshd munged slurmctld slurmd nginx; do
    command -v "$c" >/dev/null 2>&1 || [ -x "/usr/sbin/$c" ] || { echo "[install] ERROR: $c not found after install" >&2; exit 1; }
done

# --- moto S3 server venv -----------------------------------------------------
have_moto() {
    [ -x "$VENV/bin/moto_server" ] && [ -x "$VENV/bin/python" ] &&
        [ "$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("moto"))' 2>/dev/null)" = "$MOTO_VERSION" ] &&
        "$VENV/bin/python" -c 'import boto3, flask' >/dev/null 2>&1
}
if have_moto; then
    log "venv: moto $MOTO_VERSION present in $VENV"
else
    PY=/usr/bin/python3
    [ -x "$PY" ] || PY=$(command -v python3)
    if [ ! -x "$VENV/bin/python" ]; then
        log "creating venv $VENV with $PY"
        mkdir -p "$(dirname "$VENV")"
        rm -rf "$VENV"
        "$PY" -m venv "$VENV"
    fi
    log "pip install moto[server]==$MOTO_VERSION boto3 into $VENV"
    # grep drops pip's noise about missing optional local index folders
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "moto[server]==$MOTO_VERSION" boto3 2>&1 |
        { grep -v 'is ignored: it is neither a file nor a directory' || true; }
    have_moto || { echo "[install] ERROR: moto venv check failed" >&2; exit 1; }
    log "venv ready"
fi
