#!/usr/bin/env bash
# The whole test suite on a fresh Debian 12 machine as root: installs what is missing, brings up the
# local testbed (sshd, Slurm, PBS wrappers, S3, HTTP on 127.0.0.1), checks the generated models against
# the spec, then runs the unit and integration tests against the live testbed. Extra arguments go to pytest.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"

bash scripts/setup.sh
bash testbed/up.sh
./generate.sh --check

export HPC_REQUIRE_TESTBED=1
export PYTHONPATH="$repo/src"
exec .venv/bin/python -m pytest -p no:cacheprovider -q -ra --durations=15 src/tests "$@"
