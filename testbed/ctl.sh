#!/usr/bin/env bash
# Fault injection / inspection for the local testbed.
#   ctl.sh status                      which daemons run (rc 1 if any is stopped)
#   ctl.sh stop|start|restart DAEMON   DAEMON: sshd slurmctld slurmd munged sge_qmaster sge_execd nginx moto postgres
# start reuses the configs written by up.sh and waits until ready
# (sshd: port accepts; slurmctld: sinfo answers; sge_qmaster: qconf answers; sge_execd: the queue takes
# jobs; moto: new keys, testbed.env rewritten).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"

DAEMONS="sshd slurmctld slurmd munged sge_qmaster sge_execd nginx moto postgres"
usage() { echo "usage: $0 status | {stop|start|restart} {${DAEMONS// /|}}" >&2; exit 2; }

do_start() {
    case $1 in
        sshd)
            [ -s "$TB/ssh/sshd_config" ] || die "no $TB/ssh/sshd_config: run up.sh first"
            start_sshd ;;
        slurmctld)
            [ -s "$SLURM_CONF" ] || die "no $SLURM_CONF: run up.sh first"
            start_slurmctld
            wait_sinfo_answers 30
            log "slurmctld: sinfo answers" ;;
        slurmd)
            start_slurmd
            wait_slurm_ready 30 ;;
        munged) start_munged ;;
        sge_qmaster)
            [ -s "$SGE_COMMON/bootstrap" ] || die "no $SGE_COMMON/bootstrap: run up.sh first"
            start_sge_qmaster ;;
        sge_execd)
            start_sge_execd
            wait_sge_ready 60 ;;
        nginx)
            [ -s "$TB/nginx/nginx.conf" ] || die "no $TB/nginx/nginx.conf: run up.sh first"
            start_nginx ;;
        moto)
            start_moto
            write_env ;;
        postgres) start_postgres ;;
        *) usage ;;
    esac
}

[ $# -ge 1 ] || usage
case $1 in
    status)
        status_all ;;
    stop | start | restart)
        [ $# -eq 2 ] || usage
        require_root
        case " $DAEMONS " in *" $2 "*) ;; *) usage ;; esac
        take_lock
        if [ "$1" != start ]; then stop_daemon "$2"; fi
        if [ "$1" != stop ]; then do_start "$2"; fi ;;
    *) usage ;;
esac
