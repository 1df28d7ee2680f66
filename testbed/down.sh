#!/usr/bin/env bash
# Stop the local HPC testbed's own daemons by their pid files (TERM, up to 5 s, then KILL).
# Idempotent. Keeps keys, configs and Slurm/Grid Engine state, so up.sh brings back the same clusters.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"
require_root
T0=$(now)
take_lock
for d in postgres moto nginx sge_execd sge_qmaster slurmd slurmctld munged sshd; do
    stop_daemon "$d"
done
echo "testbed down ($(elapsed "$T0") s)"
