#!/usr/bin/env bash
# Several gateway replicas on this machine, behind a load balancer (docs/operations.md, "Several
# replicas"): N gateway processes on one PostgreSQL database (the testbed's, 127.0.0.1:5433), each with
# its own instance id, port, data and staging directory, all with one encryption key, the same tokens
# and the same SSH key directory, behind an nginx of their own on one 127.0.0.1 port.
#
#   bash scripts/replicas.sh up       start what is not running (idempotent); register tb-slurm, tb-pbs
#   bash scripts/replicas.sh status   each replica's /health directly, and the balancer's; rc 1 if one fails
#   bash scripts/replicas.sh down     stop the replicas (TERM: leases handed back) and the balancer
#   bash scripts/replicas.sh kill N   kill -9 replica N, as a crash would; `up` starts it again
#
# Environment (defaults in brackets):
#   REPLICAS_DIR [/var/lib/hpc-replicas]  state: pids, logs, tokens.env, secret.key, keys, nginx
#   REPLICAS_PORT [8090]                  the balancer; replica i listens on REPLICAS_PORT + i
#   REPLICAS_COUNT [3]
#   REPLICAS_DATABASE_URL                 [database hpc_replicas on the testbed's PostgreSQL, made if missing]
#   REPLICAS_REGISTER [1]                 0: do not register the testbed as tb-slurm and tb-pbs
#   HPC_*                                 passed to every replica started by this call, for example
#                                         HPC_POLL_LEASE_SECONDS=10 HPC_TRANSFER_LEASE_SECONDS=10
#
# The admin and user tokens (made once, kept in $REPLICAS_DIR/tokens.env, mode 0600) and the URL:
#   set -a; . /var/lib/hpc-replicas/tokens.env; set +a     # HPC_URL, HPC_TOKEN (admin), HPC_USER_TOKEN
# Only processes named in this script's pid files are ever signalled.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR=${REPLICAS_DIR:-/var/lib/hpc-replicas}
PORT=${REPLICAS_PORT:-8090}
COUNT=${REPLICAS_COUNT:-3}
REGISTER=${REPLICAS_REGISTER:-1}
TB=${HPC_TESTBED_DIR:-/var/lib/hpc-testbed}
PY="$repo/.venv/bin/python"
NGINX_CONF="$DIR/nginx/nginx.conf"

log() { echo "[replicas] $*"; }
die() { echo "[replicas] ERROR: $*" >&2; exit 1; }

[[ $PORT =~ ^[0-9]+$ && $COUNT =~ ^[1-9][0-9]?$ ]] || die "REPLICAS_PORT and REPLICAS_COUNT must be numbers"

replica_port() { echo $((PORT + $1)); }
pid_file() { echo "$DIR/pids/$1.pid"; }

# alive_pid NAME MARKER...: the pid in NAME's pid file, if that process lives and its command line holds
# every MARKER (a pid reused by another program is never taken for ours).
alive_pid() {
    local name=$1 file pid cmdline marker state
    shift
    file=$(pid_file "$name")
    [ -s "$file" ] || return 1
    pid=$(tr -dc '0-9' <"$file")
    [ -n "$pid" ] || return 1
    state=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1) || return 1
    [ -n "$state" ] && [ "$state" != Z ] || return 1
    cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    for marker in "$@"; do
        [[ $cmdline == *"$marker"* ]] || return 1
    done
    echo "$pid"
}
replica_pid() { alive_pid "replica-$1" "hpc.api.run" "--port $(replica_port "$1")"; }
nginx_pid() { alive_pid nginx "nginx" "$NGINX_CONF"; }

# hash_of TOKEN: its salted hash (the token passes in the environment, never on a command line).
hash_of() {
    T="$1" PYTHONPATH="$repo/src" "$PY" -c 'import os; from hpc.security import hash_token; print(hash_token(os.environ["T"]))'
}

http_code() { curl -s -o /dev/null -m "${2:-2}" -w '%{http_code}' "$1" || true; }

# stop_pid NAME PID SECONDS: TERM, then KILL after SECONDS.
stop_pid() {
    local name=$1 pid=$2 secs=$3 i
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < secs * 10; i++)); do
        [ -d "/proc/$pid" ] && [ "$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)" != Z ] || break
        sleep 0.1
    done
    if [ -d "/proc/$pid" ] && [ "$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)" != Z ]; then
        log "$name: still running after ${secs}s, sending KILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$(pid_file "$name")"
    log "$name: stopped (pid $pid)"
}

# write_if_changed FILE MODE: stdin to FILE when the content differs; rc 0 if written.
write_if_changed() {
    local file=$1 mode=$2 tmp
    tmp=$(mktemp "$file.XXXXXX")
    cat >"$tmp"
    if [ -f "$file" ] && cmp -s "$tmp" "$file"; then
        rm -f "$tmp"
        return 1
    fi
    chmod "$mode" "$tmp"
    mv -f "$tmp" "$file"
}

# ---------------------------------------------------------------- shared state (made once)
prepare() {
    [ -x "$PY" ] || die "$PY missing: run bash scripts/setup.sh"
    [ -s "$TB/testbed.env" ] || die "the testbed is not up ($TB/testbed.env missing): run bash testbed/up.sh"
    install -d -m 700 "$DIR" "$DIR/pids" "$DIR/keys"
    install -d -m 755 "$DIR/nginx" "$DIR/nginx/logs" "$DIR/nginx/tmp"
    local i
    for ((i = 1; i <= COUNT; i++)); do install -d -m 700 "$DIR/replica-$i"; done
    # One Fernet key for every replica: a secret one replica stored, another must read.
    [ -s "$DIR/secret.key" ] || (umask 077 && "$PY" -c \
        'from cryptography.fernet import Fernet; import sys; sys.stdout.write(Fernet.generate_key().decode())' \
        >"$DIR/secret.key")
    install -m 600 "$(sed -n 's/^TESTBED_SSH_KEY=//p' "$TB/testbed.env")" "$DIR/keys/testbed_ed25519"
    install -m 644 "$(sed -n 's/^TESTBED_KNOWN_HOSTS=//p' "$TB/testbed.env")" "$DIR/known_hosts"
    if [ ! -s "$DIR/tokens.env" ]; then
        local admin user hashes
        admin=$(PYTHONPATH="$repo/src" "$PY" -c 'from hpc.security import new_token; print(new_token())')
        user=$(PYTHONPATH="$repo/src" "$PY" -c 'from hpc.security import new_token; print(new_token())')
        (umask 077 && printf 'HPC_URL=http://127.0.0.1:%s\nHPC_TOKEN=%s\nHPC_USER_TOKEN=%s\n' "$PORT" "$admin" "$user" \
            >"$DIR/tokens.env")
        # The replicas get salted hashes only; the tokens themselves stay in tokens.env.
        hashes="replicas-admin:admin:$(hash_of "$admin"),replicas-user:user:$(hash_of "$user")"
        (umask 077 && printf "HPC_TOKENS='%s'\n" "$hashes" >"$DIR/tokens.hash")
    fi
    local url=${REPLICAS_DATABASE_URL:-}
    if [ -z "$url" ]; then
        local server
        server=$(sed -n 's/^TESTBED_PG_URL=//p' "$TB/testbed.env")
        [ -n "$server" ] || die "no TESTBED_PG_URL in $TB/testbed.env: is the testbed's PostgreSQL up?"
        url="${server%/*}/hpc_replicas"
        SERVER="$server" "$PY" - <<'EOF' || die "cannot reach the testbed's PostgreSQL"
import os
import sqlalchemy as sa
engine = sa.create_engine(os.environ["SERVER"], isolation_level="AUTOCOMMIT")
with engine.connect() as conn:
    if not conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = 'hpc_replicas'")).first():
        conn.execute(sa.text("CREATE DATABASE hpc_replicas"))
        print("[replicas] created database hpc_replicas")
EOF
    fi
    # Settings every replica shares; per replica: instance id, port, data (and so staging) directory.
    {
        # Single quotes: token hashes hold '$' (sha256$salt$digest).
        echo "HPC_DATABASE_URL='$url'"
        cat "$DIR/tokens.hash"
        echo "HPC_ENCRYPTION_KEY_FILE='$DIR/secret.key'"
        echo "HPC_KEY_DIR='$DIR/keys'"
        echo "HPC_KNOWN_HOSTS='$DIR/known_hosts'"
        echo "HPC_LISTEN_HOST='127.0.0.1'"
        echo "HPC_AUTH_ENABLED='true'"
        # The testbed's HTTP and S3 servers listen on loopback, which transfer sources may not use by default.
        echo "HPC_SOURCE_ALLOW_NETWORKS='${HPC_SOURCE_ALLOW_NETWORKS:-127.0.0.0/8}'"
    } | write_if_changed "$DIR/shared.env" 600 || true
}

# ---------------------------------------------------------------- replicas
# launch_replica I: start replica I unless it runs; rc 0 if it was started (then wait_replica I).
launch_replica() {
    local i=$1 port pid
    port=$(replica_port "$i")
    if pid=$(replica_pid "$i"); then
        log "replica-$i: running (pid $pid, 127.0.0.1:$port)"
        return 1
    fi
    if [ -n "$(ss -Hltn "( sport = :$port )" 2>/dev/null)" ]; then
        die "port $port (replica-$i) is held by another program; choose REPLICAS_PORT"
    fi
    (
        cd "$repo"
        set -a
        # shellcheck disable=SC1091
        . "$DIR/shared.env"
        set +a
        export HPC_INSTANCE_ID="replica-$i" HPC_DATA_DIR="$DIR/replica-$i" HPC_LISTEN_PORT="$port"
        export PYTHONPATH="$repo/src"
        unset HPC_CONFIG HPC_ENCRYPTION_KEY HPC_STAGING_DIR
        exec setsid "$PY" -m hpc.api.run --host 127.0.0.1 --port "$port" \
            </dev/null >>"$DIR/replica-$i/gateway.log" 2>&1 9>&-
    ) &
    echo $! >"$(pid_file "replica-$i")"
}

wait_replica() {
    local i=$1 port j
    port=$(replica_port "$i")
    for ((j = 0; j < 600; j++)); do
        [ "$(http_code "http://127.0.0.1:$port/health")" = 200 ] && break
        replica_pid "$i" >/dev/null || { tail -n 20 "$DIR/replica-$i/gateway.log" >&2; die "replica-$i exited at start"; }
        sleep 0.1
    done
    [ "$(http_code "http://127.0.0.1:$port/health")" = 200 ] || die "replica-$i did not answer on :$port within 60s"
    log "replica-$i: started (pid $(replica_pid "$i"), 127.0.0.1:$port, instance id replica-$i)"
}

# ---------------------------------------------------------------- the balancer
write_nginx_conf() {
    local i servers=""
    for ((i = 1; i <= COUNT; i++)); do
        servers+="    server 127.0.0.1:$(replica_port "$i") max_fails=1 fail_timeout=10s;"$'\n'
    done
    write_if_changed "$NGINX_CONF" 644 <<EOF
# Written by scripts/replicas.sh: a load balancer for $COUNT gateway replicas.
worker_processes 1;
daemon off;
pid $DIR/pids/nginx.pid;
error_log $DIR/nginx/logs/error.log warn;
events { worker_connections 1024; }
http {
  log_format upstreams '\$time_iso8601 \$status \$request_method \$uri \$request_time '
                       'upstream=\$upstream_addr upstream_status=\$upstream_status';
  access_log $DIR/nginx/logs/access.log upstreams;
  client_body_temp_path $DIR/nginx/tmp/body;
  proxy_temp_path $DIR/nginx/tmp/proxy;
  fastcgi_temp_path $DIR/nginx/tmp/fcgi;
  uwsgi_temp_path $DIR/nginx/tmp/uwsgi;
  scgi_temp_path $DIR/nginx/tmp/scgi;
  # Passive health checks (open-source nginx has no active ones): a replica that fails one request
  # (refused connection, reset, timeout) is left out for fail_timeout, then tried again with one request.
  upstream hpc_gateway {
$servers    keepalive 32;
  }
  server {
    listen 127.0.0.1:$PORT;
    client_max_body_size 16m;      # a job script may be 1 MiB; the gateway bounds every field itself
    location / {
      proxy_pass http://hpc_gateway;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$http_host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_connect_timeout 2s;    # a dead replica's host may drop packets instead of refusing them
      proxy_read_timeout 120s;     # the gateway bounds its SSH work by ssh_command_timeout (60 s)
      # The next replica gets a request when one refuses the connection, resets it or times out. nginx
      # passes a POST, PATCH or DELETE on only if it was not sent yet (non_idempotent is off): one that
      # reached a replica killed mid-request gets 502, and its client decides whether to retry.
      proxy_next_upstream error timeout;
      proxy_next_upstream_tries $COUNT;
    }
  }
}
EOF
}

start_nginx() {
    local pid changed=0 j
    write_nginx_conf && changed=1
    nginx -q -t -c "$NGINX_CONF" -p "$DIR/nginx/" || die "nginx config test failed ($NGINX_CONF)"
    if pid=$(nginx_pid); then
        if [ $changed = 1 ]; then
            kill -HUP "$pid"
            log "balancer: configuration changed, reloaded (pid $pid)"
        else
            log "balancer: running (pid $pid, http://127.0.0.1:$PORT)"
        fi
        return 0
    fi
    if [ -n "$(ss -Hltn "( sport = :$PORT )" 2>/dev/null)" ]; then
        die "port $PORT (the balancer) is held by another program; choose REPLICAS_PORT"
    fi
    setsid nginx -c "$NGINX_CONF" -p "$DIR/nginx/" </dev/null >>"$DIR/nginx/logs/nginx.out" 2>&1 9>&- &
    echo $! >"$(pid_file nginx)"
    for ((j = 0; j < 100; j++)); do
        [ "$(http_code "http://127.0.0.1:$PORT/health")" = 200 ] && break
        sleep 0.1
    done
    [ "$(http_code "http://127.0.0.1:$PORT/health")" = 200 ] || die "the balancer did not answer on :$PORT"
    log "balancer: started (pid $(nginx_pid), http://127.0.0.1:$PORT)"
}

register() {
    local name=$1 scheduler=$2 token code
    token=$(sed -n 's/^HPC_TOKEN=//p' "$DIR/tokens.env")
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "http://127.0.0.1:$PORT/infrastructure/$name")
    if [ "$code" = 200 ]; then
        log "$name: registered"
        return 0
    fi
    set -a
    # shellcheck disable=SC1091
    . "$TB/testbed.env"
    set +a
    curl -fsS -o /dev/null -X POST "http://127.0.0.1:$PORT/infrastructure" -H "Authorization: Bearer $token" \
        -H 'Content-Type: application/json' \
        -d "{\"name\": \"$name\", \"host\": \"$TESTBED_SSH_HOST\", \"port\": $TESTBED_SSH_PORT,
             \"username\": \"$TESTBED_SSH_USER\", \"hostname\": \"$TESTBED_HOSTNAME\", \"scheduler\": \"$scheduler\",
             \"ssh_key\": {\"type\": \"ssh-ed25519\", \"path\": \"testbed_ed25519\"},
             \"settings\": {\"mpi_launcher\": \"\"}}" || die "registering $name failed"
    log "$name: registered now ($scheduler)"
}

# ---------------------------------------------------------------- commands
up() {
    prepare
    local i started=()
    # All at once: they take turns on the schema lock, and a start costs 3-8 s of imports each.
    for ((i = 1; i <= COUNT; i++)); do launch_replica "$i" && started+=("$i"); done
    for i in "${started[@]}"; do wait_replica "$i"; done
    start_nginx
    if [ "$REGISTER" = 1 ]; then
        register tb-slurm slurm
        register tb-pbs pbs
    fi
    log "up: $COUNT replicas behind http://127.0.0.1:$PORT (tokens: $DIR/tokens.env)"
}

down() {
    local i pid
    # Replicas first: a clean stop hands back their leases at once (transfers resume elsewhere).
    for ((i = 1; i <= COUNT; i++)); do
        if pid=$(replica_pid "$i"); then stop_pid "replica-$i" "$pid" 30 & else rm -f "$(pid_file "replica-$i")"; fi
    done
    wait
    if pid=$(nginx_pid); then stop_pid nginx "$pid" 10; else rm -f "$(pid_file nginx)"; fi
    log "down"
}

status() {
    local i pid port code rc=0
    for ((i = 1; i <= COUNT; i++)); do
        port=$(replica_port "$i")
        if pid=$(replica_pid "$i"); then
            code=$(http_code "http://127.0.0.1:$port/health")
            printf 'replica-%-3s pid %-8s 127.0.0.1:%-6s /health %s\n' "$i" "$pid" "$port" "$code"
            [ "$code" = 200 ] || rc=1
        else
            printf 'replica-%-3s stopped  127.0.0.1:%s\n' "$i" "$port"
            rc=1
        fi
    done
    if pid=$(nginx_pid); then
        code=$(http_code "http://127.0.0.1:$PORT/health")
        printf 'balancer    pid %-8s 127.0.0.1:%-6s /health %s\n' "$pid" "$PORT" "$code"
        [ "$code" = 200 ] || rc=1
    else
        printf 'balancer    stopped  127.0.0.1:%s\n' "$PORT"
        rc=1
    fi
    [ -s "$DIR/shared.env" ] && leases
    return $rc
}

# Who holds which work now, from the shared database (informational: never changes the rc).
leases() {
    (
        set -a
        # shellcheck disable=SC1091
        . "$DIR/shared.env"
        set +a
        "$PY" - <<'EOF'
import os
from collections import Counter
from datetime import datetime, timezone

import sqlalchemy as sa

engine = sa.create_engine(os.environ["HPC_DATABASE_URL"])
now = datetime.now(timezone.utc)
try:
    with engine.connect() as conn:
        polls = conn.execute(sa.text("SELECT name, poll_owner, poll_until FROM infrastructures ORDER BY name")).all()
        work = Counter()
        for table, kind in (("jobs", "submissions"), ("transfers", "transfers")):
            for owner, in conn.execute(sa.text(f"SELECT lease_owner FROM {table} WHERE lease_owner IS NOT NULL")):
                work[(owner.split("/")[0], kind)] += 1
except sa.exc.SQLAlchemyError as exc:
    print(f"leases: the database cannot be read ({type(exc).__name__})")
    raise SystemExit(0)
for name, owner, until in polls:
    if owner and until:
        left = (until - now).total_seconds()
        print(f"poll lease  {name:<12} {owner} ({left:.1f}s left)")
    else:
        print(f"poll lease  {name:<12} nobody")
for (owner, kind), count in sorted(work.items()):
    print(f"leased      {owner:<12} {count} {kind}")
EOF
    ) || true
}

kill_replica() {
    local i=${1:-} pid
    [[ $i =~ ^[0-9]+$ ]] && ((i >= 1 && i <= COUNT)) || die "usage: replicas.sh kill N (1..$COUNT)"
    pid=$(replica_pid "$i") || die "replica-$i is not running"
    kill -KILL "$pid"
    log "replica-$i: killed (kill -9 $pid) at $(date +%s.%N)"
}

command=${1:-}
case $command in
    up | down | kill)
        install -d -m 700 "$DIR"
        exec 9>"$DIR/.lock"
        flock -w 120 9 || die "another replicas.sh holds $DIR/.lock"
        case $command in
            up) up ;;
            down) down ;;
            kill) kill_replica "${2:-}" ;;
        esac
        ;;
    status) status ;;
    *) echo "usage: $0 up|down|status|kill N" >&2; exit 2 ;;
esac
