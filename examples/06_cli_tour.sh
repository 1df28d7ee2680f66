#!/usr/bin/env bash
# The same ground as the Python examples, with the hpc-gateway command line: clusters, a job waited for
# with a live state line, its output, an HTTP and an S3 transfer with progress bars, a result shipped back.
# Every command also takes --json (used below where a script needs a value out of the answer).
#
#   bash examples/06_cli_tour.sh        # needs HPC_URL and HPC_TOKEN, and the fixture (see common.py)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-$here/../.venv/bin/python}"
[ -x "$python" ] || python=python3
cli="${HPC_GATEWAY_CLI:-$(command -v hpc-gateway || echo "$here/../.venv/bin/hpc-gateway")}"

# S3 store, HTTP server and cluster from the fixture, as HPC_S3_* / HPC_HTTP_* / HPC_INFRASTRUCTURE:
# the CLI reads HPC_S3_ENDPOINT, HPC_S3_REGION, HPC_S3_ACCESS_KEY, HPC_S3_SECRET_KEY and
# HPC_INFRASTRUCTURE from the environment, so no secret shows on a command line.
eval "$("$python" "$here/common.py" --shell)"
step() { printf '\n== %s\n' "$*"; }

step "the registered clusters, and what Slurm or PBS reports now"
"$cli" infra list
"$cli" infra telemetry "$HPC_INFRASTRUCTURE"

step "a job: a command after --, waited for; with --json its record goes to a script; then its output"
record="$("$cli" job submit --json --name cli-tour --walltime 00:05:00 --watch-period 1 --wait -- \
  bash -c 'echo "hello from $(hostname)"; echo "to stderr" >&2')"
id="$(printf '%s' "$record" | "$python" -c 'import json, sys; job = json.load(sys.stdin); print(job["id"])')"
printf '%s' "$record" | "$python" -c 'import json, sys; job = json.load(sys.stdin); print("state", job["state"], "exit code", job["exit_code"])'
"$cli" job logs "$id"
"$cli" job logs "$id" --stderr

step "a job that fails: the exit code says so"
if "$cli" job submit --watch-period 1 --wait -- bash -c 'exit 7'; then
  echo "expected a failure" >&2; exit 1
else
  echo "exit code $? (1: the job ended without success)"
fi

step "HTTP -> cluster, with a progress bar"
mkdir -p "$HPC_HTTP_ROOT/hpc-examples" && chmod 755 "$HPC_HTTP_ROOT/hpc-examples"
seq 1 50000 > "$HPC_HTTP_ROOT/hpc-examples/numbers.txt" && chmod 644 "$HPC_HTTP_ROOT/hpc-examples/numbers.txt"
"$cli" transfer http "$HPC_HTTP_URL/hpc-examples/numbers.txt" hpc-examples/cli/numbers.txt --wait

step "S3 -> cluster -> S3"
PYTHONPATH="$here" "$python" - <<'PY'
import common
store = common.s3_store()
common.s3_client(store).put_object(Bucket=store["bucket"], Key="cli/input.txt", Body=b"from the CLI tour\n" * 1000)
PY
"$cli" transfer s3-in "s3://$HPC_S3_BUCKET/cli/input.txt" hpc-examples/cli/input.txt --wait
"$cli" job submit --workdir hpc-examples/cli --watch-period 1 --wait -- bash -c 'wc -l input.txt > count.txt'
"$cli" transfer s3-out hpc-examples/cli/count.txt "s3://$HPC_S3_BUCKET/cli/count.txt" --wait

PYTHONPATH="$here" "$python" -c '
import common
store = common.s3_store()
body = common.s3_client(store).get_object(Bucket=store["bucket"], Key="cli/count.txt")["Body"].read()
print("s3://%s/cli/count.txt: %s" % (store["bucket"], body.decode().strip()))'

step "the last transfers"
"$cli" transfer list --limit 3
