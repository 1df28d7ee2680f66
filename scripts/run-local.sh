#!/usr/bin/env bash
# Runs the gateway doing its real job on this machine: installs what is missing, brings up the local
# testbed (a one-node Slurm with PBS wrappers, a one-node Grid Engine, S3, HTTP, all on 127.0.0.1),
# starts the gateway on 127.0.0.1:8080 with authentication on, registers the testbed three times
# (tb-slurm, tb-pbs, tb-sge), prints the URL and a fresh admin token, and stays in the foreground
# until Ctrl-C.
#
# A real cluster instead: register it with POST /infrastructure (its key file in $HPC_DATA_DIR/keys,
# its host key in $HPC_DATA_DIR/known_hosts or pinned in the request).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"

bash scripts/setup.sh
bash testbed/up.sh
set -a; . "${HPC_TESTBED_DIR:-/var/lib/hpc-testbed}/testbed.env"; set +a

data="${HPC_DATA_DIR:-/var/lib/hpc-gateway}"
port="${HPC_LISTEN_PORT:-8080}"
install -d -m 700 "$data" "$data/keys"
install -m 600 "$TESTBED_SSH_KEY" "$data/keys/testbed_ed25519"
# The testbed's host key is trusted explicitly (its known_hosts line), never on first use.
cp "$TESTBED_KNOWN_HOSTS" "$data/known_hosts"

token="$(.venv/bin/python -c 'from hpc.security import new_token; print(new_token())')"
hash="$(.venv/bin/python -c 'import sys; from hpc.security import hash_token; print(hash_token(sys.argv[1]))' "$token")"

# The testbed's HTTP and S3 servers listen on loopback: admit it as a transfer source.
export HPC_SOURCE_ALLOW_NETWORKS="${HPC_SOURCE_ALLOW_NETWORKS:-127.0.0.0/8,::1/128}"
export HPC_DATA_DIR="$data" HPC_LISTEN_PORT="$port" HPC_TOKENS="local-admin:admin:$hash"
.venv/bin/hpc-gateway serve &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid' INT TERM
url="http://127.0.0.1:$port"
for _ in $(seq 100); do
  curl -fs "$url/health" >/dev/null 2>&1 && break
  kill -0 $pid 2>/dev/null || { echo "the gateway exited; see the log above" >&2; exit 1; }
  sleep 0.2
done

register() {  # name scheduler [extra settings, JSON members]
  if [ "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "$url/infrastructure/$1")" = 200 ]; then
    echo "[run] $1 already registered"; return
  fi
  curl -fsS -X POST "$url/infrastructure" -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    -d "{\"name\": \"$1\", \"host\": \"$TESTBED_SSH_HOST\", \"port\": $TESTBED_SSH_PORT,
         \"username\": \"$TESTBED_SSH_USER\", \"hostname\": \"$TESTBED_HOSTNAME\", \"scheduler\": \"$2\",
         \"ssh_key\": {\"type\": \"ssh-ed25519\", \"path\": \"testbed_ed25519\"},
         \"settings\": {\"mpi_launcher\": \"\"${3:+, $3}}}" >/dev/null
  echo "[run] registered $1 ($2)"
}
register tb-slurm slurm
register tb-pbs pbs
# Grid Engine's programs come with its settings.sh: on the testbed /usr/bin/qsub is the Torque wrapper.
register tb-sge sge "\"command_setup_lines\": [\". $TESTBED_SGE_SETTINGS\"]"
# The examples' fixture (examples/README.md): these three clusters, the testbed's S3 store and web server.
.venv/bin/python examples/make_fixture.py "$data/fixture.infrastructure.yaml" --key testbed_ed25519 >/dev/null

cat <<MSG

hpc-gateway is serving at $url  (Swagger UI: $url/ui/)
admin token (shown once; a new one is made on every start):
  export HPC_URL=$url HPC_TOKEN=$token
try:
  curl -H "Authorization: Bearer \$HPC_TOKEN" \$HPC_URL/infrastructure/tb-slurm/telemetry
  .venv/bin/hpc-gateway job submit -i tb-slurm --wait -- hostname
  .venv/bin/python examples/05_end_to_end_serrano.py     (fixture: $data/fixture.infrastructure.yaml)
Ctrl-C stops the gateway (the testbed stays up: bash testbed/down.sh stops it).
MSG
wait $pid
