# Shared functions of the local HPC testbed (sourced by up.sh, down.sh, ctl.sh).
# Everything binds to 127.0.0.1. Daemons are tracked by pid files; nothing uses systemd.
# shellcheck shell=bash

TB=${HPC_TESTBED_DIR:-/var/lib/hpc-testbed}
VENV=/opt/hpc-testbed/venv
TB_USER=hpcuser
SSH_PORT=2222
S3_PORT=9000
HTTP_PORT=8081
PG_PORT=5433
PG_BIN=/usr/lib/postgresql/15/bin
CTLD_PORT=6817
SLURMD_PORT=6818
SLURM_CONF=/etc/slurm/slurm.conf
JOBCOMP=/var/log/slurm/jobcomp.log
MUNGE_PID=/run/munge/munged.pid
# Son of Grid Engine (unpacked by install.sh): an upstream-style SGE_ROOT with cell "default".
SGE_ROOT=/opt/hpc-testbed/sge
SGE_CELL=default
SGE_ARCH=lx-amd64
SGE_ADMIN=sgeadmin
SGE_QMASTER_PORT=6444
SGE_EXECD_PORT=6445
SGE_QUEUE=all.q
SGE_COMMON=$SGE_ROOT/$SGE_CELL/common
SGE_SPOOL=$SGE_ROOT/$SGE_CELL/spool
SGE_SETTINGS=$SGE_COMMON/settings.sh
S3_REGION=us-east-1

log() { echo "[testbed] $*"; }
die() { echo "[testbed] ERROR: $*" >&2; exit 1; }

# monotonic-ish timer for summaries
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.2f", b-a}'; }

require_root() { [ "$(id -u)" -eq 0 ] || die "must run as root"; }

# Serialize up/down/ctl across concurrent callers. fd 9 is closed in every daemon we start.
take_lock() {
    mkdir -p "$TB"
    exec 9>"$TB/.lock"
    flock -w 180 9 || die "could not get $TB/.lock within 180 s (another up/down/ctl running?)"
}

# ---------------------------------------------------------------- processes
# A pid is alive if /proc/PID exists and its state is not Z (zombie: killed daemons are
# reparented to a PID 1 that reaps them only after a while).
pid_alive() {
    local pid=$1 st
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    st=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1) || return 1
    [ -n "$st" ] && [ "$st" != Z ]
}

# pidfile_pid FILE COMM: print the pid if FILE names a live process whose comm is COMM.
pidfile_pid() {
    local file=$1 comm=$2 pid
    [ -s "$file" ] || return 1
    pid=$(tr -dc '0-9' <"$file")
    pid_alive "$pid" || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$comm" ] || return 1
    echo "$pid"
}

# Daemon table: name -> pid file, comm
pidfile_of() {
    case $1 in
        sshd) echo "$TB/pids/sshd.pid" ;;
        munged) echo "$MUNGE_PID" ;;
        slurmctld) echo "$TB/pids/slurmctld.pid" ;;
        slurmd) echo "$TB/pids/slurmd.pid" ;;
        nginx) echo "$TB/pids/nginx.pid" ;;
        moto) echo "$TB/pids/moto.pid" ;;
        postgres) echo "$TB/pids/postgres.pid" ;;
        # Grid Engine's daemons fork and write their own pid files in their spool directories.
        sge_qmaster) echo "$SGE_SPOOL/qmaster/qmaster.pid" ;;
        # execd names its spool directory after the host name it resolved at start ("localhost" here,
        # as 127.0.0.1 resolves back to it); the cell has one execution host.
        sge_execd) compgen -G "$SGE_SPOOL/*/execd.pid" | head -1 || echo "$SGE_SPOOL/$(hostname)/execd.pid" ;;
        *) die "unknown daemon $1" ;;
    esac
}
comm_of() {
    case $1 in
        moto) echo moto_server ;;
        *) echo "$1" ;;
    esac
}
port_of() {
    case $1 in
        sshd) echo $SSH_PORT ;; slurmctld) echo $CTLD_PORT ;; slurmd) echo $SLURMD_PORT ;;
        nginx) echo $HTTP_PORT ;; moto) echo $S3_PORT ;; munged) echo "" ;; postgres) echo $PG_PORT ;;
        sge_qmaster) echo $SGE_QMASTER_PORT ;; sge_execd) echo $SGE_EXECD_PORT ;;
    esac
}
daemon_pid() { pidfile_pid "$(pidfile_of "$1")" "$(comm_of "$1")"; }
daemon_running() { daemon_pid "$1" >/dev/null; }

# spawn NAME LOGFILE CMD...: start a foreground daemon in its own session, record its pid.
spawn() {
    local name=$1 logf=$2; shift 2
    setsid "$@" </dev/null >>"$logf" 2>&1 9>&- &
    echo $! >"$(pidfile_of "$name")"
}

# stop_daemon NAME: TERM, wait up to 5 s, then KILL. Only the pid from our pid file.
stop_daemon() {
    local name=$1 file pid i
    file=$(pidfile_of "$name")
    if ! pid=$(daemon_pid "$name"); then
        rm -f "$file"
        log "$name: not running"
        return 0
    fi
    # PostgreSQL takes TERM as "wait for every client to leave"; INT is its fast shutdown.
    # sge_qmaster's controlled shutdown takes a few seconds; Grid Engine's own rc script repeats TERM
    # every 2 s for up to 40 s before KILL (util/rctemplates/sgemaster_template).
    local sig=TERM secs=5
    [ "$name" = postgres ] && sig=INT
    [ "$name" = sge_qmaster ] && secs=30
    kill -"$sig" "$pid" 2>/dev/null || true
    for ((i = 1; i <= secs * 10; i++)); do
        pid_alive "$pid" || break
        [ "$name" = sge_qmaster ] && ((i % 20 == 0)) && kill -TERM "$pid" 2>/dev/null
        sleep 0.1
    done
    if pid_alive "$pid"; then
        log "$name: still alive after $secs s, sending KILL"
        kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 20; i++)); do pid_alive "$pid" || break; sleep 0.1; done
    fi
    rm -f "$file"
    log "$name: stopped (pid $pid)"
}

# ---------------------------------------------------------------- ports
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# listeners on a TCP port (any address), as ss lines
port_listeners() { ss -Hltnp "( sport = :$1 )" 2>/dev/null || true; }

# marker in /proc/PID/cmdline that identifies the testbed's own instance of a daemon
marker_of() {
    case $1 in
        sshd) echo "$TB/ssh/sshd_config" ;;
        nginx) echo "$TB/nginx/nginx.conf" ;;
        moto) echo "$VENV/bin/moto_server" ;;
        slurmctld) echo "/usr/sbin/slurmctld" ;;
        slurmd) echo "/usr/sbin/slurmd" ;;
        sge_qmaster) echo "$SGE_ROOT/bin/$SGE_ARCH/sge_qmaster" ;;
        sge_execd) echo "$SGE_ROOT/bin/$SGE_ARCH/sge_execd" ;;
        *) echo "" ;;
    esac
}

# adopt_orphan NAME: if NAME's pid file is stale but a testbed instance of NAME holds its port
# (pid file lost or overwritten), record that pid again instead of failing on a busy port.
adopt_orphan() {
    local name=$1 port marker pid
    daemon_running "$name" && return 1
    port=$(port_of "$name"); marker=$(marker_of "$name")
    [ -n "$port" ] && [ -n "$marker" ] || return 1
    for pid in $(port_listeners "$port" | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -un); do
        pid_alive "$pid" || continue
        [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$(comm_of "$name")" ] || continue
        tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$marker" || continue
        echo "$pid" >"$(pidfile_of "$name")"
        log "$name: adopted running instance pid $pid (pid file was stale)"
        return 0
    done
    return 1
}

# ensure_port_free NAME: before starting NAME, its port must be free.
ensure_port_free() {
    local name=$1 port lines
    port=$(port_of "$name")
    [ -n "$port" ] || return 0
    lines=$(port_listeners "$port")
    [ -z "$lines" ] && return 0
    # a dying instance of ours may still hold it for a moment
    sleep 0.5
    lines=$(port_listeners "$port")
    [ -z "$lines" ] && return 0
    die "port $port (for $name) is held by another program:
$lines
Stop that program or free the port, then re-run."
}

wait_port() { # wait_port PORT SECONDS WHAT
    local port=$1 secs=$2 what=$3 i
    for ((i = 0; i < secs * 10; i++)); do
        port_open "$port" && return 0
        sleep 0.1
    done
    die "$what did not accept connections on 127.0.0.1:$port within $secs s"
}

# write_file FILE MODE: write stdin to FILE only if the content differs. Sets CHANGED=1 if written.
write_file() {
    local file=$1 mode=${2:-644} tmp
    tmp=$(mktemp "$file.XXXXXX")
    cat >"$tmp"
    if [ -f "$file" ] && cmp -s "$tmp" "$file"; then
        rm -f "$tmp"
    else
        chmod "$mode" "$tmp"
        mv -f "$tmp" "$file"
        CHANGED=1
    fi
}

dirs() {
    install -d -m 755 "$TB" "$TB/www" "$TB/logs" "$TB/ssh" "$TB/nginx" "$TB/nginx/logs" "$TB/nginx/tmp"
    install -d -m 700 "$TB/keys" "$TB/pids" "$TB/s3"
}

# ---------------------------------------------------------------- sshd
setup_ssh() {
    local shadow
    if ! id "$TB_USER" >/dev/null 2>&1; then
        useradd -m -s /bin/bash "$TB_USER"
        log "created user $TB_USER"
    fi
    shadow=$(getent shadow "$TB_USER" | cut -d: -f2)
    # useradd leaves '!' (locked) and sshd then refuses: "account is locked"
    if [[ $shadow == '!'* ]] || [ -z "$shadow" ]; then usermod -p '*' "$TB_USER"; fi

    [ -s "$TB/ssh/host_ed25519" ] || { ssh-keygen -q -t ed25519 -N '' -C testbed-host -f "$TB/ssh/host_ed25519"; log "generated host key"; }
    [ -s "$TB/keys/id_ed25519" ] || { ssh-keygen -q -t ed25519 -N '' -C testbed-client -f "$TB/keys/id_ed25519"; log "generated client key"; }
    [ -s "$TB/keys/id_ed25519_pw" ] || { ssh-keygen -q -t ed25519 -N testpass -C testbed-client-pw -f "$TB/keys/id_ed25519_pw"; log "generated passphrase client key"; }

    local home
    home=$(getent passwd "$TB_USER" | cut -d: -f6)
    install -d -m 700 -o "$TB_USER" -g "$TB_USER" "$home/.ssh"
    touch "$home/.ssh/authorized_keys"
    local k
    for k in "$TB/keys/id_ed25519.pub" "$TB/keys/id_ed25519_pw.pub"; do
        grep -qxF "$(cat "$k")" "$home/.ssh/authorized_keys" || cat "$k" >>"$home/.ssh/authorized_keys"
    done
    chown "$TB_USER:" "$home/.ssh/authorized_keys"
    chmod 600 "$home/.ssh/authorized_keys"
    install -d -m 755 /run/sshd

    CHANGED=0
    write_file "$TB/ssh/sshd_config" 644 <<EOF
Port $SSH_PORT
ListenAddress 127.0.0.1
HostKey $TB/ssh/host_ed25519
PidFile $TB/pids/sshd.pid
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
AllowUsers $TB_USER
UsePAM no
Subsystem sftp internal-sftp
MaxStartups 100:30:200
MaxSessions 64
EOF
    SSHD_CONF_CHANGED=$CHANGED
    echo "[127.0.0.1]:$SSH_PORT $(cut -d' ' -f1-2 "$TB/ssh/host_ed25519.pub")" | write_file "$TB/keys/known_hosts" 644
}

start_sshd() {
    adopt_orphan sshd || true
    if daemon_running sshd; then
        if [ "${SSHD_CONF_CHANGED:-0}" = 1 ]; then log "sshd: config changed, restarting"; stop_daemon sshd; else log "sshd: running (pid $(daemon_pid sshd))"; return 0; fi
    fi
    rm -f "$TB/pids/sshd.pid"
    ensure_port_free sshd
    /usr/sbin/sshd -t -f "$TB/ssh/sshd_config" || die "sshd config test failed ($TB/ssh/sshd_config)"
    /usr/sbin/sshd -f "$TB/ssh/sshd_config" -E "$TB/logs/sshd.log" 9>&- || die "sshd failed to start, see $TB/logs/sshd.log"
    wait_port $SSH_PORT 10 sshd
    local i
    for ((i = 0; i < 20; i++)); do daemon_running sshd && break; sleep 0.05; done
    daemon_running sshd || die "sshd: no live pid in $TB/pids/sshd.pid"
    log "sshd: started on 127.0.0.1:$SSH_PORT (pid $(daemon_pid sshd))"
}

# ---------------------------------------------------------------- munge
start_munged() {
    if daemon_running munged; then log "munged: running (pid $(daemon_pid munged))"; return 0; fi
    [ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
    install -d -m 755 -o munge -g munge /run/munge /var/log/munge /var/lib/munge
    rm -f "$MUNGE_PID"
    # --force: take over a stale socket left by a killed munged
    runuser -u munge -- /usr/sbin/munged --num-threads=4 --force 9>&- || die "munged failed to start, see /var/log/munge/munged.log"
    local i
    for ((i = 0; i < 50; i++)); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
        sleep 0.1
    done
    munge -n | unmunge | grep -q 'STATUS: *Success' || die "munge self-test failed"
    log "munged: started (pid $(daemon_pid munged))"
}

# ---------------------------------------------------------------- slurm
setup_slurm() {
    local cpus mem
    cpus=$(nproc)
    mem=$(awk '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
    install -d -m 755 /etc/slurm
    install -d -m 755 -o slurm -g slurm /var/spool/slurmctld /var/log/slurm
    install -d -m 755 /var/spool/slurmd
    [ -e "$JOBCOMP" ] || install -m 644 -o slurm -g slurm /dev/null "$JOBCOMP"
    chmod 644 "$JOBCOMP"
    CHANGED=0
    write_file "$SLURM_CONF" 644 <<EOF
# Written by hpc-gateway testbed/up.sh -- single-node test cluster on 127.0.0.1
ClusterName=testbed
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$JOBCOMP
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
EnforcePartLimits=ALL
MinJobAge=600
# bench/replicas.py keeps 10,000 jobs queued (default limit 10000, finished jobs included until MinJobAge)
MaxJobCount=50000
KillWait=5
SlurmdTimeout=30
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
# State=DOWN: jobs queue here (Reason=PartitionDown) and never start, so benchmarks can keep thousands of
# jobs active without taking the 2 CPUs from other tests' jobs.
PartitionName=parked Nodes=localhost MaxTime=INFINITE State=DOWN
EOF
    SLURM_CONF_CHANGED=$CHANGED
}

start_slurmctld() {
    adopt_orphan slurmctld || true
    if daemon_running slurmctld; then
        if [ "${SLURM_CONF_CHANGED:-0}" = 1 ]; then log "slurmctld: config changed, restarting"; stop_daemon slurmctld; else log "slurmctld: running (pid $(daemon_pid slurmctld))"; return 0; fi
    fi
    ensure_port_free slurmctld
    spawn slurmctld "$TB/logs/slurmctld.out" /usr/sbin/slurmctld -D -i
    wait_port $CTLD_PORT 15 slurmctld
    log "slurmctld: started on 127.0.0.1:$CTLD_PORT (pid $(daemon_pid slurmctld))"
}

start_slurmd() {
    adopt_orphan slurmd || true
    if daemon_running slurmd; then
        if [ "${SLURM_CONF_CHANGED:-0}" = 1 ]; then log "slurmd: config changed, restarting"; stop_daemon slurmd; else log "slurmd: running (pid $(daemon_pid slurmd))"; return 0; fi
    fi
    ensure_port_free slurmd
    spawn slurmd "$TB/logs/slurmd.out" /usr/sbin/slurmd -D -N localhost
    wait_port $SLURMD_PORT 15 slurmd
    log "slurmd: started on 127.0.0.1:$SLURMD_PORT (pid $(daemon_pid slurmd))"
}

node_state() { timeout 5 sinfo -h -n localhost -o %T 2>/dev/null | head -1; }

# wait until the node is usable (idle; mixed/allocated when jobs run). Resume it if down/drained.
wait_slurm_ready() {
    local secs=${1:-30} i st="" resumed=0
    for ((i = 0; i < secs * 5; i++)); do
        st=$(node_state || true)
        case $st in
            idle | mixed | allocated | completing) log "slurm: node localhost is $st"; return 0 ;;
            down | drained | draining | drain | fail | failing)
                if [ $resumed = 0 ]; then
                    log "slurm: node is $st, resuming"
                    scontrol update nodename=localhost state=resume || true
                    resumed=1
                fi ;;
        esac
        sleep 0.2
    done
    die "slurm node not idle after $secs s (sinfo state: '${st:-no answer}'); see /var/log/slurm/slurmctld.log, /var/log/slurm/slurmd.log"
}

wait_sinfo_answers() {
    local secs=${1:-30} i
    for ((i = 0; i < secs * 5; i++)); do
        timeout 5 sinfo -h >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    die "sinfo got no answer from slurmctld within $secs s"
}

# ---------------------------------------------------------------- Grid Engine
# A one-host cell: sge_qmaster :6444 and sge_execd :6445 (Grid Engine binds every address: it has no
# listen-address setting), queue all.q with 2 slots (nproc) and a parallel environment smp. Classic
# (plain file) spooling under $SGE_ROOT/default/spool, so a killed qmaster leaves no database to repair.
# Client commands need SGE_ROOT/SGE_CELL and $SGE_ROOT/bin/lx-amd64 on PATH: $SGE_SETTINGS, as upstream.
# sge PROG ARGS...: run one of Grid Engine's programs with the cell's environment (at most 30 s).
sge() {
    local prog=$1; shift
    timeout 30 env SGE_ROOT="$SGE_ROOT" SGE_CELL="$SGE_CELL" SGE_QMASTER_PORT=$SGE_QMASTER_PORT \
        SGE_EXECD_PORT=$SGE_EXECD_PORT "$SGE_ROOT/bin/$SGE_ARCH/$prog" "$@"
}
sge_admin() { local prog=$1; shift; runuser -u "$SGE_ADMIN" -- env SGE_ROOT="$SGE_ROOT" SGE_CELL="$SGE_CELL" "$SGE_ROOT/bin/$SGE_ARCH/$prog" "$@"; }

setup_sge() {
    local host d
    host=$(hostname)
    [ -x "$SGE_ROOT/bin/$SGE_ARCH/sge_qmaster" ] || die "$SGE_ROOT/bin/$SGE_ARCH/sge_qmaster missing: run testbed/install.sh"
    if ! id "$SGE_ADMIN" >/dev/null 2>&1; then
        useradd --system --user-group --no-create-home --home-dir "$SGE_ROOT" --shell /usr/sbin/nologin "$SGE_ADMIN"
        log "created user $SGE_ADMIN"
    fi
    install -d -m 755 -o "$SGE_ADMIN" -g "$SGE_ADMIN" "$SGE_ROOT/$SGE_CELL" "$SGE_COMMON" "$SGE_SPOOL"
    install -d -m 755 "$TB/sge" "$TB/sge/adminhosts" "$TB/sge/submithosts" "$TB/sge/exechosts" "$TB/sge/pes" "$TB/sge/cqueues"
    CHANGED=0
    write_file "$SGE_COMMON/bootstrap" 644 <<EOF
# Version: 8.1.9
admin_user              $SGE_ADMIN
default_domain          none
ignore_fqdn             true
spooling_method         classic
spooling_lib            libspoolc
spooling_params         $SGE_COMMON;$SGE_SPOOL/qmaster
binary_path             $SGE_ROOT/bin
qmaster_spool_dir       $SGE_SPOOL/qmaster
security_mode           none
job_spooling            true
listener_threads        2
worker_threads          2
scheduler_threads       1
EOF
    echo "$host" | write_file "$SGE_COMMON/act_qmaster" 644
    # The host resolves to 127.0.0.1, which resolves back to "localhost": without this alias commlib
    # refuses clients ("client IP resolved to host name localhost. This is not identical to clients
    # host name vm").
    if [ "$host" != localhost ]; then echo "$host localhost" | write_file "$SGE_COMMON/host_aliases" 644; fi
    SGE_CONF_CHANGED=$CHANGED
    write_file "$SGE_SETTINGS" 644 <<EOF
# Grid Engine client environment (as an upstream installation's settings.sh); source it: . $SGE_SETTINGS
SGE_ROOT=$SGE_ROOT; export SGE_ROOT
SGE_CELL=$SGE_CELL; export SGE_CELL
SGE_CLUSTER_NAME=testbed; export SGE_CLUSTER_NAME
SGE_QMASTER_PORT=$SGE_QMASTER_PORT; export SGE_QMASTER_PORT
SGE_EXECD_PORT=$SGE_EXECD_PORT; export SGE_EXECD_PORT
PATH=\$SGE_ROOT/bin/$SGE_ARCH:\$PATH; export PATH
EOF
    chown "$SGE_ADMIN:$SGE_ADMIN" "$SGE_COMMON"/*

    # The cell's objects, applied by configure_sge (qconf) once qmaster runs; the first three also seed
    # the spool before the first start (qconf needs an admin host and a manager to exist).
    CHANGED=0
    write_file "$TB/sge/global.conf" 644 <<EOF
conf_version           0
execd_spool_dir        $SGE_SPOOL
mailer                 /bin/true
xterm                  /usr/bin/xterm
load_sensor            none
prolog                 none
epilog                 none
shell_start_mode       unix_behavior
login_shells           bash,sh,ksh,csh,tcsh
min_uid                100
min_gid                100
user_lists             none
xuser_lists            none
projects               none
xprojects              none
enforce_project        false
enforce_user           auto
load_report_time       00:00:10
max_unheard            00:05:00
reschedule_unknown     00:00:00
loglevel               log_warning
administrator_mail     none
set_token_cmd          none
pag_cmd                none
token_extend_time      none
shepherd_cmd           none
qmaster_params         none
execd_params           none
reporting_params       accounting=true reporting=false flush_time=00:00:01 joblog=false sharelog=00:00:00
finished_jobs          100
gid_range              65400-65500
qlogin_command         builtin
qlogin_daemon          builtin
rlogin_command         builtin
rlogin_daemon          builtin
rsh_command            builtin
rsh_daemon             builtin
max_aj_instances       2000
max_aj_tasks           75000
max_u_jobs             0
max_jobs               0
max_advance_reservations 0
auto_user_oticket      0
auto_user_fshare       0
auto_user_default_project none
auto_user_delete_time  86400
delegated_file_staging false
reprioritize           0
jsv_url                none
jsv_allowed_mod        ac,h,i,e,o,j,M,N,p,w
EOF
    SGE_GLOBAL_CHANGED=$CHANGED
    echo "hostname $host" | write_file "$TB/sge/adminhosts/$host" 644
    echo "hostname $host" | write_file "$TB/sge/submithosts/$host" 644
    CHANGED=0
    write_file "$TB/sge/exechosts/$host" 644 <<EOF
hostname              $host
load_scaling          NONE
complex_values        NONE
user_lists            NONE
xuser_lists           NONE
projects              NONE
xprojects             NONE
usage_scaling         NONE
report_variables      NONE
EOF
    SGE_EXECHOST_CHANGED=$CHANGED
    # smp: all slots of a job on one host (sge_pe(5) allocation_rule $pe_slots).
    CHANGED=0
    write_file "$TB/sge/pes/smp" 644 <<EOF
pe_name            smp
slots              999
user_lists         NONE
xuser_lists        NONE
start_proc_args    NONE
stop_proc_args     NONE
allocation_rule    \$pe_slots
control_slaves     FALSE
job_is_first_task  TRUE
urgency_slots      min
accounting_summary FALSE
qsort_args         NONE
EOF
    SGE_PE_CHANGED=$CHANGED
    # load_thresholds NONE: on a loaded shared box np_load_avg would put the queue in alarm state and
    # stop scheduling. terminate_method NONE (the default): qdel and h_rt end a job with SIGKILL, as on
    # most sites, so the gateway must (and does) read the outcome from qacct.
    CHANGED=0
    write_file "$TB/sge/cqueues/$SGE_QUEUE" 644 <<EOF
qname                 $SGE_QUEUE
hostlist              $host
seq_no                0
load_thresholds       NONE
suspend_thresholds    NONE
nsuspend              1
suspend_interval      00:05:00
priority              0
min_cpu_interval      00:05:00
processors            UNDEFINED
qtype                 BATCH INTERACTIVE
ckpt_list             NONE
pe_list               smp
rerun                 FALSE
slots                 $(nproc)
tmpdir                /tmp
shell                 /bin/bash
prolog                NONE
epilog                NONE
shell_start_mode      unix_behavior
starter_method        NONE
suspend_method        NONE
resume_method         NONE
terminate_method      NONE
notify                00:00:60
owner_list            NONE
user_lists            NONE
xuser_lists           NONE
subordinate_list      NONE
complex_values        NONE
projects              NONE
xprojects             NONE
calendar              NONE
initial_state         default
s_rt                  INFINITY
h_rt                  INFINITY
s_cpu                 INFINITY
h_cpu                 INFINITY
s_fsize               INFINITY
h_fsize               INFINITY
s_data                INFINITY
h_data                INFINITY
s_stack               INFINITY
h_stack               INFINITY
s_core                INFINITY
h_core                INFINITY
s_rss                 INFINITY
h_rss                 INFINITY
s_vmem                INFINITY
h_vmem                INFINITY
EOF
    SGE_QUEUE_CHANGED=$CHANGED

    if [ ! -e "$SGE_SPOOL/qmaster/.testbed-initialised" ]; then
        log "grid engine: initialising the cell's spool in $SGE_SPOOL/qmaster"
        install -d -m 755 -o "$SGE_ADMIN" -g "$SGE_ADMIN" "$SGE_SPOOL/qmaster"
        sge_admin spoolinit classic libspoolc "$SGE_COMMON;$SGE_SPOOL/qmaster" init >/dev/null
        sge_admin spooldefaults configuration "$TB/sge/global.conf"
        sge_admin spooldefaults complexes "$SGE_ROOT/util/resources/centry"
        sge_admin spooldefaults usersets "$SGE_ROOT/util/resources/usersets"
        sge_admin spooldefaults managers "$SGE_ADMIN" root
        sge_admin spooldefaults adminhosts "$TB/sge/adminhosts"
        sge_admin spooldefaults submithosts "$TB/sge/submithosts"
        touch "$SGE_SPOOL/qmaster/.testbed-initialised"
        SGE_GLOBAL_CHANGED=0
    fi
    for d in "$SGE_SPOOL" "$SGE_SPOOL/qmaster"; do chown "$SGE_ADMIN:$SGE_ADMIN" "$d"; done
}

qmaster_answers() { sge qconf -sh >/dev/null 2>&1; }

start_sge_qmaster() {
    adopt_orphan sge_qmaster || true
    if daemon_running sge_qmaster; then
        if [ "${SGE_CONF_CHANGED:-0}" = 1 ]; then log "sge_qmaster: cell files changed, restarting"; stop_daemon sge_qmaster
        else log "sge_qmaster: running (pid $(daemon_pid sge_qmaster))"; return 0; fi
    fi
    ensure_port_free sge_qmaster
    # sge_qmaster forks (its own session), switches to $SGE_ADMIN and writes its pid file.
    (cd / && sge sge_qmaster) </dev/null >>"$TB/logs/sge_qmaster.out" 2>&1 9>&- ||
        die "sge_qmaster failed to start, see $SGE_SPOOL/qmaster/messages and $TB/logs/sge_qmaster.out"
    wait_port $SGE_QMASTER_PORT 20 sge_qmaster
    local i
    for ((i = 0; i < 150; i++)); do qmaster_answers && break; sleep 0.2; done
    qmaster_answers || die "sge_qmaster does not answer qconf within 30 s, see $SGE_SPOOL/qmaster/messages"
    daemon_running sge_qmaster || die "sge_qmaster: no live pid in $(pidfile_of sge_qmaster)"
    log "sge_qmaster: started on :$SGE_QMASTER_PORT (pid $(daemon_pid sge_qmaster))"
}

# sge_apply KIND NAME FILE CHANGED: add the object if qmaster does not have it, modify it if FILE changed.
sge_apply() {
    local kind=$1 name=$2 file=$3 changed=$4 show add mod out
    case $kind in
        exechost) show=-se add=-Ae mod=-Me ;;
        pe) show=-sp add=-Ap mod=-Mp ;;
        queue) show=-sq add=-Aq mod=-Mq ;;
    esac
    if ! sge qconf "$show" "$name" >/dev/null 2>&1; then
        out=$(sge qconf "$add" "$file" 2>&1) || die "qconf $add $file failed: $out"
        log "grid engine: added $kind $name"
    elif [ "$changed" = 1 ]; then
        out=$(sge qconf "$mod" "$file" 2>&1) || die "qconf $mod $file failed: $out"
        log "grid engine: updated $kind $name"
    fi
}

# Objects and scheduler settings, applied through qmaster (idempotent).
configure_sge() {
    local host sconf
    host=$(hostname)
    if [ "${SGE_GLOBAL_CHANGED:-0}" = 1 ]; then
        sge qconf -Mconf "$TB/sge/global.conf" >/dev/null 2>&1 || die "qconf -Mconf $TB/sge/global.conf failed"
        log "grid engine: updated the global configuration"
    fi
    sge_apply exechost "$host" "$TB/sge/exechosts/$host" "${SGE_EXECHOST_CHANGED:-0}"
    sge_apply pe smp "$TB/sge/pes/smp" "${SGE_PE_CHANGED:-0}"
    sge_apply queue "$SGE_QUEUE" "$TB/sge/cqueues/$SGE_QUEUE" "${SGE_QUEUE_CHANGED:-0}"
    # Schedule within a second of a submit or a job's end (default: every 15 s).
    sconf=$(sge qconf -ssconf) || die "qconf -ssconf failed"
    if ! grep -qE '^schedule_interval +0:0:1$' <<<"$sconf" || ! grep -qE '^flush_submit_sec +1$' <<<"$sconf" ||
        ! grep -qE '^flush_finish_sec +1$' <<<"$sconf"; then
        sed -E -e 's/^(schedule_interval +).*/\10:0:1/' -e 's/^(flush_submit_sec +).*/\11/' \
            -e 's/^(flush_finish_sec +).*/\11/' <<<"$sconf" >"$TB/sge/sched.conf"
        sge qconf -Msconf "$TB/sge/sched.conf" >/dev/null 2>&1 || die "qconf -Msconf $TB/sge/sched.conf failed"
        log "grid engine: scheduler runs every second"
    fi
}

start_sge_execd() {
    adopt_orphan sge_execd || true
    if daemon_running sge_execd; then
        if [ "${SGE_CONF_CHANGED:-0}" = 1 ]; then log "sge_execd: cell files changed, restarting"; stop_daemon sge_execd
        else log "sge_execd: running (pid $(daemon_pid sge_execd))"; return 0; fi
    fi
    ensure_port_free sge_execd
    (cd / && sge sge_execd) </dev/null >>"$TB/logs/sge_execd.out" 2>&1 9>&- ||
        die "sge_execd failed to start, see $SGE_SPOOL/*/messages and $TB/logs/sge_execd.out"
    wait_port $SGE_EXECD_PORT 20 sge_execd
    local i
    for ((i = 0; i < 50; i++)); do daemon_running sge_execd && break; sleep 0.1; done
    daemon_running sge_execd || die "sge_execd: no live pid in $(pidfile_of sge_execd)"
    log "sge_execd: started on :$SGE_EXECD_PORT (pid $(daemon_pid sge_execd))"
}

# The queue instance's state letters (qstat(1) -f "states"): empty when it takes jobs.
sge_queue_state() {
    sge qstat -f -q "$SGE_QUEUE@$(hostname)" 2>/dev/null |
        awk -v q="$SGE_QUEUE@$(hostname)" '$1 == q { print (NF >= 6 ? $6 : "") }'
}

# Wait until the queue instance takes jobs: execd reported (no "u"), not in error or disabled.
wait_sge_ready() {
    local secs=${1:-30} i st="?" fixed=0
    for ((i = 0; i < secs * 5; i++)); do
        st=$(sge_queue_state || echo "?")
        case $st in
            "") log "grid engine: queue $SGE_QUEUE@$(hostname) takes jobs"; return 0 ;;
            *E* | *d*)
                if [ $fixed = 0 ]; then
                    log "grid engine: queue instance state '$st', clearing errors and enabling it"
                    sge qmod -c "$SGE_QUEUE" >/dev/null 2>&1 || true
                    sge qmod -e "$SGE_QUEUE" >/dev/null 2>&1 || true
                    fixed=1
                fi ;;
        esac
        sleep 0.2
    done
    die "grid engine queue $SGE_QUEUE@$(hostname) not ready after $secs s (state '$st'); see $SGE_SPOOL/qmaster/messages, $SGE_SPOOL/*/messages"
}

# ---------------------------------------------------------------- nginx
setup_nginx() {
    install -d -m 755 "$TB/www"
    chmod 755 "$TB" "$TB/www"
    [ -e "$TB/www/index.html" ] || echo '<html><body>hpc-gateway testbed</body></html>' >"$TB/www/index.html"
    [ -e "$TB/www/hello.txt" ] || echo 'hello from the hpc-gateway testbed' >"$TB/www/hello.txt"
    chmod 644 "$TB/www/index.html" "$TB/www/hello.txt"
    CHANGED=0
    write_file "$TB/nginx/nginx.conf" 644 <<EOF
worker_processes 1;
daemon off;
pid $TB/pids/nginx.pid;
error_log $TB/nginx/logs/error.log warn;
events { worker_connections 256; }
http {
  access_log $TB/nginx/logs/access.log;
  client_body_temp_path $TB/nginx/tmp/body;
  proxy_temp_path $TB/nginx/tmp/proxy;
  fastcgi_temp_path $TB/nginx/tmp/fcgi;
  uwsgi_temp_path $TB/nginx/tmp/uwsgi;
  scgi_temp_path $TB/nginx/tmp/scgi;
  types { text/html html; text/plain txt; application/json json; }
  default_type application/octet-stream;
  sendfile on;
  server { listen 127.0.0.1:$HTTP_PORT; root $TB/www; autoindex on; }
}
EOF
    NGINX_CONF_CHANGED=$CHANGED
}

start_nginx() {
    adopt_orphan nginx || true
    if daemon_running nginx; then
        if [ "${NGINX_CONF_CHANGED:-0}" = 1 ]; then log "nginx: config changed, restarting"; stop_daemon nginx; else log "nginx: running (pid $(daemon_pid nginx))"; return 0; fi
    fi
    ensure_port_free nginx
    nginx -q -t -c "$TB/nginx/nginx.conf" -p "$TB/nginx/" || die "nginx config test failed ($TB/nginx/nginx.conf)"
    spawn nginx "$TB/logs/nginx.out" nginx -c "$TB/nginx/nginx.conf" -p "$TB/nginx/"
    wait_port $HTTP_PORT 10 nginx
    log "nginx: started on 127.0.0.1:$HTTP_PORT (pid $(daemon_pid nginx))"
}

# ---------------------------------------------------------------- moto (S3)
# Credentials live only in moto's memory: a new key pair is made whenever moto (re)starts.
s3_creds_ok() {
    [ -s "$TB/s3/credentials" ] || return 1
    # shellcheck disable=SC1091
    (. "$TB/s3/credentials" && AK=$TESTBED_S3_ACCESS_KEY SK=$TESTBED_S3_SECRET_KEY "$VENV/bin/python" - <<'EOF'
import os, boto3
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url="http://127.0.0.1:9000", region_name="us-east-1",
                  aws_access_key_id=os.environ["AK"], aws_secret_access_key=os.environ["SK"],
                  config=Config(retries={"max_attempts": 1}, connect_timeout=3, read_timeout=10))
s3.list_buckets()
EOF
    ) >/dev/null 2>&1
}

start_moto() {
    adopt_orphan moto || true
    if daemon_running moto; then
        if s3_creds_ok; then log "moto: running (pid $(daemon_pid moto)), saved keys work"; return 0; fi
        log "moto: running but saved keys do not work (state reset?), restarting"
        stop_daemon moto
    fi
    ensure_port_free moto
    [ -x "$VENV/bin/moto_server" ] || die "$VENV/bin/moto_server missing: run testbed/install.sh"
    INITIAL_NO_AUTH_ACTION_COUNT=3 spawn moto "$TB/logs/moto.log" "$VENV/bin/moto_server" -H 127.0.0.1 -p $S3_PORT
    wait_port $S3_PORT 20 moto_server
    # exactly 3 unauthenticated actions: create_user, create_access_key, put_user_policy
    local out
    out=$(umask 077 && "$VENV/bin/python" - <<'EOF'
import json, boto3
from botocore.config import Config
from botocore.exceptions import ClientError
EP, REGION = "http://127.0.0.1:9000", "us-east-1"
cfg = Config(retries={"max_attempts": 1})
iam = boto3.client("iam", endpoint_url=EP, region_name=REGION, aws_access_key_id="bootstrap",
                   aws_secret_access_key="bootstrap", config=cfg)
iam.create_user(UserName="testbed")
key = iam.create_access_key(UserName="testbed")["AccessKey"]
iam.put_user_policy(UserName="testbed", PolicyName="s3-all", PolicyDocument=json.dumps({
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
ak, sk = key["AccessKeyId"], key["SecretAccessKey"]
s3 = boto3.client("s3", endpoint_url=EP, region_name=REGION, aws_access_key_id=ak,
                  aws_secret_access_key=sk, config=cfg)
s3.create_bucket(Bucket="testbed-probe")
s3.delete_bucket(Bucket="testbed-probe")
for bad_ak, bad_sk, want in ((ak[:-4] + "XXXX", sk, "InvalidAccessKeyId"), (ak, sk[:-4] + "xxxx", "SignatureDoesNotMatch")):
    bad = boto3.client("s3", endpoint_url=EP, region_name=REGION, aws_access_key_id=bad_ak,
                       aws_secret_access_key=bad_sk, config=cfg)
    try:
        bad.list_buckets()
    except ClientError as e:
        code = e.response["Error"]["Code"]
        assert code == want, f"wrong key gave {code}, expected {want}"
    else:
        raise SystemExit("moto accepted a wrong key: auth is not enforced")
print(f"TESTBED_S3_ACCESS_KEY={ak}\nTESTBED_S3_SECRET_KEY={sk}")
EOF
    ) || die "moto IAM bootstrap/verification failed, see $TB/logs/moto.log"
    (umask 077 && echo "$out" >"$TB/s3/credentials")
    chmod 600 "$TB/s3/credentials"
    log "moto: started on 127.0.0.1:$S3_PORT (pid $(daemon_pid moto)), IAM user testbed, keys verified, wrong keys refused"
}

# ---------------------------------------------------------------- PostgreSQL
# A store for gateway replicas (tests of the PostgreSQL dialect and of several replicas). Its own data
# directory, loopback only, trust authentication: a test database, never a production set-up.
start_postgres() {
    local data=$TB/postgres/data
    if daemon_running postgres; then log "postgres: running (pid $(daemon_pid postgres))"; return 0; fi
    [ -x "$PG_BIN/postgres" ] || die "$PG_BIN/postgres missing: run testbed/install.sh"
    install -d -m 700 -o postgres -g postgres "$TB/postgres"
    if [ ! -s "$data/PG_VERSION" ]; then
        runuser -u postgres -- "$PG_BIN/initdb" -D "$data" -A trust -U postgres --no-instructions >/dev/null
    fi
    ensure_port_free postgres
    rm -f "$data/postmaster.pid"
    runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$data" -l "$TB/postgres/postgres.log" -w -t 30 \
        -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -c unix_socket_directories=$TB/postgres -c fsync=off" \
        start 9>&- >/dev/null || die "postgres did not start, see $TB/postgres/postgres.log"
    head -1 "$data/postmaster.pid" >"$(pidfile_of postgres)"
    log "postgres: started on 127.0.0.1:$PG_PORT (pid $(daemon_pid postgres))"
}

# ---------------------------------------------------------------- env file
write_env() {
    local hk_type hk_b64 fp ak sk
    read -r hk_type hk_b64 _ <"$TB/ssh/host_ed25519.pub"
    fp=$(ssh-keygen -lf "$TB/ssh/host_ed25519.pub" | awk '{print $2}')
    ak=$(sed -n 's/^TESTBED_S3_ACCESS_KEY=//p' "$TB/s3/credentials" 2>/dev/null || true)
    sk=$(sed -n 's/^TESTBED_S3_SECRET_KEY=//p' "$TB/s3/credentials" 2>/dev/null || true)
    CHANGED=0
    write_file "$TB/testbed.env" 600 <<EOF
TESTBED_DIR=$TB
TESTBED_SSH_HOST=127.0.0.1
TESTBED_SSH_PORT=$SSH_PORT
TESTBED_SSH_USER=$TB_USER
TESTBED_SSH_KEY=$TB/keys/id_ed25519
TESTBED_SSH_KEY_PW=$TB/keys/id_ed25519_pw
TESTBED_SSH_KEY_PASSPHRASE=testpass
TESTBED_KNOWN_HOSTS=$TB/keys/known_hosts
TESTBED_HOST_KEY_TYPE=$hk_type
TESTBED_HOST_KEY_B64=$hk_b64
TESTBED_HOST_KEY_FINGERPRINT=$fp
TESTBED_HOSTNAME=$(hostname)
TESTBED_SLURM_CPUS=$(nproc)
TESTBED_SLURM_PARTITION=debug
TESTBED_SLURM_NODE=localhost
TESTBED_JOBCOMP=$JOBCOMP
TESTBED_SGE_ROOT=$SGE_ROOT
TESTBED_SGE_SETTINGS=$SGE_SETTINGS
TESTBED_SGE_QUEUE=$SGE_QUEUE
TESTBED_S3_ENDPOINT=http://127.0.0.1:$S3_PORT
TESTBED_S3_ACCESS_KEY=$ak
TESTBED_S3_SECRET_KEY=$sk
TESTBED_S3_REGION=$S3_REGION
TESTBED_HTTP_URL=http://127.0.0.1:$HTTP_PORT
TESTBED_HTTP_ROOT=$TB/www
TESTBED_PG_URL=postgresql+psycopg://postgres@127.0.0.1:$PG_PORT/postgres
EOF
}

ALL_DAEMONS="sshd munged slurmctld slurmd sge_qmaster sge_execd nginx moto postgres"

status_all() {
    local d pid port addr rc=0
    for d in $ALL_DAEMONS; do
        port=$(port_of "$d")
        if pid=$(daemon_pid "$d"); then
            case $d in sge_*) addr="*:$port" ;; *) addr=${port:+127.0.0.1:$port} ;; esac  # Grid Engine binds all
            printf '%-12s running  pid %-8s %s\n' "$d" "$pid" "$addr"
        else
            printf '%-12s stopped\n' "$d"
            rc=1
        fi
    done
    return $rc
}
