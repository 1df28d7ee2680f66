#!/usr/bin/env bash
# The fast edit-test loop: the linter and the unit tests alone, in seconds, with no testbed (nothing is
# started, nothing leaves the machine). Needs the venv scripts/setup.sh makes (run that once first).
# Extra arguments go to pytest, e.g. `bash scripts/check.sh -k arrays -x`.
# The whole suite (integration tests against the live testbed) is scripts/test.sh.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"

if [ ! -x .venv/bin/ruff ]; then
    echo "no .venv with the dev tools here: run 'bash scripts/setup.sh' once" >&2
    exit 2
fi
.venv/bin/ruff check --output-format concise .
export PYTHONPATH="$repo/src"
unset HPC_REQUIRE_TESTBED
exec .venv/bin/python -m pytest -p no:cacheprovider -q src/tests/unit "$@"
