#!/bin/sh
# Entry point of the gateway image (see Dockerfile): prepares the data and staging directories on their
# volumes, warns when no token is configured, then replaces itself with hpc-gateway, so that the
# gateway is the container's main process and gets its SIGTERM.
#
#   docker run IMAGE                      -> hpc-gateway serve
#   docker run IMAGE token ops --role admin
#   docker run IMAGE job list --url ...   (any hpc-gateway command; db upgrade, db current)
#   docker run -it IMAGE sh               (anything else runs as a command)
set -eu

data="${HPC_DATA_DIR:-/var/lib/hpc-gateway}"
staging="${HPC_STAGING_DIR:-$data/staging}"
mkdir -p "$data/keys" "$staging"
# A fresh named volume is created owned by the image's user; a bind mount may belong to someone else.
chmod 700 "$data" "$data/keys" 2>/dev/null || echo "docker-entrypoint: cannot restrict $data to its owner" >&2

[ $# -gt 0 ] || set -- serve
command="$1"
if [ "$command" = serve ] && [ -z "${HPC_TOKENS:-}" ] && [ -z "${HPC_CONFIG:-}" ] \
   && [ "${HPC_AUTH_ENABLED:-1}" != 0 ] && [ "${HPC_AUTH_ENABLED:-1}" != false ]; then
  echo "docker-entrypoint: no HPC_TOKENS and no HPC_CONFIG: every request will be refused with 401." >&2
  echo "docker-entrypoint: make a token with 'docker run --rm IMAGE token NAME --role admin'." >&2
fi

case "$command" in
  serve|token|infra|job|transfer|db|-*) exec hpc-gateway "$@" ;;
  *) exec "$@" ;;
esac
