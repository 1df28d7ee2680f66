#!/usr/bin/env bash
# Bring the local HPC testbed up (idempotent): sshd :2222, munge, Slurm (slurmctld :6817, slurmd :6818),
# Grid Engine (sge_qmaster :6444, sge_execd :6445), moto S3 :9000, nginx :8081, PostgreSQL :5433 -- all
# on 127.0.0.1 (Grid Engine binds every address). Only dead daemons are (re)started.
# State dir: ${HPC_TESTBED_DIR:-/var/lib/hpc-testbed}; writes $TB/testbed.env at the end.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"
require_root
T0=$(now)

bash "$HERE/install.sh"
take_lock
dirs

setup_ssh
start_sshd
start_munged
setup_slurm
start_slurmctld
start_slurmd
wait_slurm_ready 30
for c in qsub qstat qdel pbsnodes; do
    command -v "$c" >/dev/null || die "Torque wrapper $c missing (package slurm-wlm-torque)"
done
T_SGE=$(now)
setup_sge
start_sge_qmaster
configure_sge
start_sge_execd
wait_sge_ready 60
log "grid engine: ready ($(elapsed "$T_SGE") s)"
setup_nginx
start_nginx
start_moto
start_postgres
write_env

if [ -f "$HERE/serrano/install.sh" ]; then
    log "running serrano/install.sh"
    TESTBED_DIR=$TB bash "$HERE/serrano/install.sh" 9>&- || die "serrano/install.sh failed"
fi

echo "testbed up ($(elapsed "$T0") s)"
status_all || true
cat <<EOF
  ssh:    ssh -p $SSH_PORT -i $TB/keys/id_ed25519 -o IdentitiesOnly=yes -o UserKnownHostsFile=$TB/keys/known_hosts $TB_USER@127.0.0.1
  slurm:  partition debug, node localhost, $(nproc) CPUs; jobcomp $JOBCOMP
  sge:    queue $SGE_QUEUE (pe smp), host $(hostname); client environment: . $SGE_SETTINGS
  s3:     http://127.0.0.1:$S3_PORT (keys in $TB/testbed.env)
  http:   http://127.0.0.1:$HTTP_PORT/ -> $TB/www
  env:    $TB/testbed.env
EOF
