#!/usr/bin/env bash
# Install the packages and the S3 server venv the local HPC testbed needs.
# Idempotent, non-interactive; run as root on Debian 12. Fast (< 2 s) when all is in place.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
VENV=/opt/hpc-testbed/venv
MOTO_VERSION=5.2.5
PKGS=(openssh-server openssh-client munge slurm-wlm slurm-wlm-torque nginx-light
      python3-numpy python3-scipy python3-venv curl procps iproute2 postgresql
      libdb5.3 libhwloc15 libjemalloc2 libmunge2 libssl3 libtirpc3 libpam0g libcrypt1 libtinfo6)
# Son of Grid Engine: Debian 12's packages, unpacked (not installed) into an upstream-style SGE_ROOT.
# Debian declares gridengine-client and slurm-wlm-torque conflicting (both ship /usr/bin/qsub, qstat,
# qdel, qalter, qhold, qrls), and apt removes the Torque wrappers to install Grid Engine. The testbed
# needs both, so the four .debs are unpacked with dpkg-deb into $SGE_ROOT/{bin,lib}/lx-amd64 and
# $SGE_ROOT/util: dpkg does not know these files and nothing lands in /usr/bin. The libraries they
# link against are in PKGS above.
SGE_ROOT=/opt/hpc-testbed/sge
SGE_VERSION=8.1.9+dfsg-10
SGE_DEBS=(gridengine-common gridengine-client gridengine-master gridengine-exec)

log() { echo "[install] $*"; }
CLEANUP=()
trap 'rm -rf "${CLEANUP[@]}"' EXIT

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
        CLEANUP+=(/usr/sbin/policy-rc.d)
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

# --- Son of Grid Engine (see SGE_ROOT above) ---------------------------------------------------------
have_sge() {
    [ "$(cat "$SGE_ROOT/.unpacked" 2>/dev/null)" = "$SGE_VERSION" ] &&
        [ -x "$SGE_ROOT/bin/lx-amd64/sge_qmaster" ] && [ -x "$SGE_ROOT/bin/lx-amd64/qsub" ]
}
if have_sge; then
    log "grid engine: $SGE_VERSION unpacked in $SGE_ROOT"
else
    tmp=$(mktemp -d)
    CLEANUP+=("$tmp")
    log "grid engine: downloading ${SGE_DEBS[*]} (version $SGE_VERSION*)"
    # apt-get download runs as _apt, which needs to write the directory.
    chmod 777 "$tmp"
    if ! (cd "$tmp" && apt-get download -qq "${SGE_DEBS[@]}" 2>/dev/null); then
        apt-get -o DPkg::Lock::Timeout=600 update -qq
        (cd "$tmp" && apt-get download -qq "${SGE_DEBS[@]}")
    fi
    for p in "${SGE_DEBS[@]}"; do
        deb=$(ls "$tmp/${p}_"*.deb)
        v=$(dpkg-deb -f "$deb" Version)
        case $v in "$SGE_VERSION"*) ;; *) echo "[install] ERROR: $p is version $v, expected $SGE_VERSION*" >&2; exit 1 ;; esac
        dpkg-deb -x "$deb" "$tmp/root"
    done
    rm -rf "$SGE_ROOT/bin" "$SGE_ROOT/lib" "$SGE_ROOT/utilbin" "$SGE_ROOT/util"
    install -d -m 755 "$SGE_ROOT" "$SGE_ROOT/bin/lx-amd64" "$SGE_ROOT/lib/lx-amd64" "$SGE_ROOT/utilbin"
    cp -a "$tmp/root/usr/lib/gridengine/." "$SGE_ROOT/bin/lx-amd64/"
    mv "$SGE_ROOT/bin/lx-amd64/"libspool*.so "$SGE_ROOT/lib/lx-amd64/"
    # Debian's spooldefaults/spooledit are shell wrappers setting LD_LIBRARY_PATH for the .bin programs:
    # in this layout their RUNPATH ($ORIGIN/../../lib/lx-amd64) finds libspool*.so. db_dump/db_load
    # point at Berkeley DB tools that classic spooling does not need.
    for p in spooldefaults spooledit; do mv -f "$SGE_ROOT/bin/lx-amd64/$p.bin" "$SGE_ROOT/bin/lx-amd64/$p"; done
    rm -f "$SGE_ROOT/bin/lx-amd64/db_dump" "$SGE_ROOT/bin/lx-amd64/db_load"
    ln -s ../bin/lx-amd64 "$SGE_ROOT/utilbin/lx-amd64"
    cp -a "$tmp/root/usr/share/gridengine/util" "$SGE_ROOT/util"
    [ "$("$SGE_ROOT/util/arch")" = lx-amd64 ] || { echo "[install] ERROR: $SGE_ROOT/util/arch is not lx-amd64" >&2; exit 1; }
    missing_libs=$(for f in "$SGE_ROOT"/bin/lx-amd64/* "$SGE_ROOT"/lib/lx-amd64/*; do
        [ "$(head -c 4 "$f" | tail -c 3)" = ELF ] && ldd "$f" | grep 'not found'; done | sort -u || true)
    [ -z "$missing_libs" ] || { echo "[install] ERROR: grid engine libraries missing:
$missing_libs" >&2; exit 1; }
    echo "$SGE_VERSION" >"$SGE_ROOT/.unpacked"
    log "grid engine: $SGE_VERSION unpacked in $SGE_ROOT"
fi
# Debian builds Grid Engine to load its spooling library from /usr/lib/gridengine/<spooling_lib>.so
# (the only path compiled into the binaries, `strings sge_qmaster`): point that at the unpacked one.
if [ "$(readlink /usr/lib/gridengine 2>/dev/null)" != "$SGE_ROOT/lib/lx-amd64" ]; then
    [ ! -e /usr/lib/gridengine ] || [ -L /usr/lib/gridengine ] ||
        { echo "[install] ERROR: /usr/lib/gridengine exists (gridengine installed with dpkg?): remove it first" >&2; exit 1; }
    ln -sfn "$SGE_ROOT/lib/lx-amd64" /usr/lib/gridengine
    log "grid engine: /usr/lib/gridengine -> $SGE_ROOT/lib/lx-amd64"
fi
