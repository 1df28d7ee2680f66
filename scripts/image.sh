#!/usr/bin/env bash
# Builds the gateway's container image with podman on Debian 12, as root, without any image registry:
# the base is made from Debian packages (debootstrap --variant=minbase, then podman import) and the
# Dockerfile is built on it (--build-arg BASE=...). pip inside the build reaches PyPI.
#
#   bash scripts/image.sh install       the Debian packages: podman, buildah, runc, debootstrap, slirp4netns
#   bash scripts/image.sh base          the base image localhost/hpc-gateway-base:bookworm
#   bash scripts/image.sh build         base + gateway image; prints the image reference on stdout
#   bash scripts/image.sh podman ARG... podman with this machine's runtime settings (see below)
#
# Both builds are cached: the base by its inputs (suite, mirror, packages; the debootstrap tree is kept
# as a tarball in $HPC_IMAGE_CACHE), the gateway image by the hash of everything it is built from
# (Dockerfile, .dockerignore, requirements.txt, setup.py, README.md, openapi/, src/hpc/, the entry point,
# the base image's id). A re-run with nothing changed takes about a second; older gateway images are
# removed when a new one is built.
#
# Runtime settings (docs/operations.md, "Building the image here"): podman's default runtime, crun,
# fails on this machine (setrlimit RLIMIT_NOFILE/NPROC: Operation not permitted; then "cgroups in hybrid
# mode not supported": cgroup v1 controllers are mounted). runc with nofile/nproc limits at or below
# the current ones works, for `podman run` and for the RUN steps of `podman build`. They are written to
# $HPC_IMAGE_CACHE/containers.conf and used through CONTAINERS_CONF, so the machine's own podman
# configuration is left alone.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cache="${HPC_IMAGE_CACHE:-/var/cache/hpc-gateway-image}"
suite=bookworm
base_ref="localhost/hpc-gateway-base:$suite"
image_name="localhost/hpc-gateway"
# python3-venv: the image's Python 3.11 and its venv module (Debian's python3 refuses pip installs
# outside a venv, PEP 668); ca-certificates: pip's TLS to PyPI.
base_packages="python3-venv,ca-certificates"
packages=(podman buildah runc debootstrap slirp4netns)

log() { echo "[image] $*" >&2; }

install_packages() {
  local missing=() p st
  for p in "${packages[@]}"; do
    st=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
    [ "$st" = installed ] || missing+=("$p")
  done
  [ "${#missing[@]}" -eq 0 ] && return
  log "apt-get install ${missing[*]}"
  # No recommends: they would add crun (the runtime that fails here) and rootless helpers.
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
}

write_containers_conf() {
  local nofile nproc pid_max
  mkdir -p "$cache"
  # At or below this shell's own limits (this root lacks CAP_SYS_RESOURCE, so raising one is refused),
  # and nproc at most kernel.pid_max: here 32768 works and 32769 is refused like a raise.
  nofile=$(ulimit -n); nproc=$(ulimit -u)
  [ "$nofile" != unlimited ] || nofile=1048576
  pid_max=$(cat /proc/sys/kernel/pid_max 2>/dev/null || echo 32768)
  [ "$nproc" != unlimited ] && [ "$nproc" -le "$pid_max" ] || nproc=$pid_max
  cat > "$cache/containers.conf.new" <<EOF
# Written by scripts/image.sh: runc and explicit ulimits (crun fails on this machine, see the script).
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]

[engine]
runtime = "runc"
EOF
  mv "$cache/containers.conf.new" "$cache/containers.conf"
  export CONTAINERS_CONF="$cache/containers.conf"
}

# The Debian mirror apt already uses (deb822 sources first, then sources.list).
debian_mirror() {
  local uri
  uri=$(awk '/^URIs:/ {print $2}' /etc/apt/sources.list.d/*.sources 2>/dev/null \
          | grep -E '/debian/?$' | head -n1 || true)
  [ -n "$uri" ] || uri=$(awk '$1 == "deb" && $2 ~ /\/debian\/?$/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  echo "${uri:-http://deb.debian.org/debian}"
}

build_base() {
  local mirror key tarball tree
  mirror=$(debian_mirror)
  key=$(printf '%s\n' "$suite" "$mirror" "$base_packages" "minbase" | sha256sum | cut -c1-16)
  if [ "$(podman image inspect --format '{{index .Labels "hpc.base.key"}}' "$base_ref" 2>/dev/null)" = "$key" ]; then
    return
  fi
  tarball="$cache/base-$suite-$key.tar"
  if [ ! -s "$tarball" ]; then
    tree="$cache/rootfs-$suite"
    rm -rf "$tree"
    log "debootstrap --variant=minbase $suite from $mirror (about a minute)"
    debootstrap --variant=minbase --include="$base_packages" "$suite" "$tree" "$mirror" >"$cache/debootstrap.log" 2>&1 \
      || { tail -n 20 "$cache/debootstrap.log" >&2; exit 1; }
    # Package caches and lists are not part of an image (and differ on every run).
    chroot "$tree" apt-get clean
    rm -rf "$tree"/var/lib/apt/lists/* "$tree"/var/log/* "$tree"/var/cache/debconf/*-old
    chroot "$tree" dpkg-query -W -f='${Package} ${Version}\n' > "$cache/base-$suite-$key.packages"
    tar -C "$tree" --numeric-owner --sort=name -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$tree"
    rm -f $(ls "$cache"/base-"$suite"-*.tar 2>/dev/null | grep -v -F "$tarball") 2>/dev/null || true
  fi
  log "podman import $tarball -> $base_ref"
  podman import --quiet --change "LABEL hpc.base.key=$key" --change "LABEL hpc.base.mirror=$mirror" \
    --change 'CMD ["/bin/bash"]' "$tarball" "$base_ref" >/dev/null
}

# The hash of everything the gateway image is built from, and of the base it is built on.
image_key() {
  local base_id
  base_id=$(podman image inspect --format '{{.Id}}' "$base_ref")
  (
    cd "$repo"
    printf 'base %s\n' "$base_id"
    find Dockerfile .dockerignore requirements.txt setup.py README.md openapi src/hpc scripts/docker-entrypoint.sh \
         -type f ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
  ) | sha256sum | cut -c1-16
}

build_image() {
  local key ref cert started
  key=$(image_key)
  ref="$image_name:$key"
  if podman image exists "$ref"; then
    echo "$ref"
    return
  fi
  # A TLS-inspecting proxy between this machine and PyPI is trusted by the system's CA bundle: it goes
  # to pip as a build secret (mounted for the RUN step only, in no layer of the image).
  cert="${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}"
  started=$(date +%s)
  log "podman build $ref (BASE=$base_ref)"
  # --format docker keeps the HEALTHCHECK (the OCI image format has no such field).
  podman build --format docker --layers --build-arg "BASE=$base_ref" --secret "id=pip_cert,src=$cert" \
    --label "hpc.image.key=$key" -t "$ref" -f "$repo/Dockerfile" "$repo" >"$cache/build.log" 2>&1 \
    || { tail -n 40 "$cache/build.log" >&2; exit 1; }
  log "built $ref in $(( $(date +%s) - started )) s"
  # Only the newest gateway image is kept; the base and the layer cache stay.
  podman images --format '{{.Repository}}:{{.Tag}}' "$image_name" | grep -v -x -F "$ref" \
    | xargs -r podman rmi >/dev/null 2>&1 || true
  podman image prune -f >/dev/null 2>&1 || true
  echo "$ref"
}

if [ "$(id -u)" -ne 0 ]; then
  echo "[image] must run as root (rootful podman)" >&2
  exit 1
fi
command="${1:-build}"
[ $# -gt 0 ] && shift
case "$command" in
  install) install_packages ;;
  base) install_packages; write_containers_conf; build_base ;;
  build) install_packages; write_containers_conf; build_base; build_image ;;
  podman) write_containers_conf; exec podman "$@" ;;
  *) echo "usage: $0 install|base|build|podman ARG..." >&2; exit 2 ;;
esac
