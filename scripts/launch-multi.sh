#!/usr/bin/env bash
# launch-multi.sh: start, stop or inspect a slos-serve cluster spread over several machines.
#
#   scripts/launch-multi.sh start  CONFIG   # workers (via ssh), wait healthy, coordinator, wait
#   scripts/launch-multi.sh status CONFIG   # pid and gRPC health of every process
#   scripts/launch-multi.sh stop   CONFIG   # SIGTERM each process group, then SIGKILL leftovers
#
# CONFIG format: see scripts/cluster.example.conf.
#
# Environment:
#   SSH   the ssh command, split on spaces (default: "ssh -o BatchMode=yes"), e.g.
#         SSH="ssh -o BatchMode=yes -i $HOME/.ssh/cluster -l serve". Hosts named `localhost`
#         or `127.0.0.1` are run locally, without ssh.
#
# Every process runs under `setsid nohup` on its host, so it leads its own process group
# (with the vLLM engine processes it spawns); its pid goes to LOG_DIR/NAME.pid and its output
# to LOG_DIR/NAME.log on that host (NAME = ROLE-HOST-PORT). `stop` signals those groups.
# A session per process also means a CPU autogroup per process where Linux's autogroup
# scheduling is on: with several engines on a host with few cores, that starved other
# processes for seconds here (see README, Known issues); run one worker per host there, or
# `sysctl kernel.sched_autogroup_enabled=0`. (`slos-serve up` keeps one session.)
# start prints the coordinator's address (HOST:PORT) on stdout; progress goes to stderr.
# Exit codes: 0 ok, 1 failure (start stops whatever it had started), 2 usage or config error;
# status exits 1 when any process is not running or not SERVING.
#
# Needs bash >= 4.4 here; bash, setsid, nohup and ps (procps) on every host.

set -euo pipefail

PROG=${0##*/}
SSH=${SSH:-ssh -o BatchMode=yes}
read -r -a SSH_CMD <<<"$SSH"
((${#SSH_CMD[@]})) || SSH_CMD=(ssh -o BatchMode=yes)

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }
usage() {
    printf 'usage: %s {start|stop|status} CONFIG\n' "$PROG" >&2
    exit 2
}

# ------------------------------------------------------------------------------------------
# The parts of this command, one job each, next to this script:
#   launch-multi/host-ops.sh  what runs on a host (start, state, stop, tail, health)
#   launch-multi/config.sh    CONFIG parsed and checked; each process's command line
SELF=$(readlink -f -- "${BASH_SOURCE[0]}" 2>/dev/null || echo "${BASH_SOURCE[0]}")
LIB=$(cd "$(dirname "$SELF")" && pwd)/launch-multi
[[ -r $LIB/host-ops.sh && -r $LIB/config.sh ]] \
    || { printf '%s: %s/ is missing or incomplete\n' "$PROG" "$LIB" >&2; exit 2; }
REMOTE=$(<"$LIB/host-ops.sh")
# shellcheck source=launch-multi/config.sh
source "$LIB/config.sh"

is_local() { [[ $1 == localhost || $1 == 127.0.0.1 ]]; }

# on_host HOST OP ARGS...: runs an operation of $REMOTE on HOST.
on_host() {
    local host=$1 quoted=""
    shift
    if is_local "$host"; then
        bash -c "$REMOTE" launch-multi "$@"
    else
        printf -v quoted ' %q' "$@"
        "${SSH_CMD[@]}" "$host" "bash -s --$quoted" <<<"$REMOTE"
    fi
}

# ------------------------------------------------------------------------------------------
# Queries. Results go to globals: STATE[i], PID[i], HEALTH[i]; HOST_ERROR[host].
declare -A STATE=() PID=() HEALTH=() HOST_ERROR=()

# query_state I...: one ssh per host.
query_state() {
    local -A by_host=() index=()
    local -a args
    local i h name st pid
    for i in "$@"; do by_host[${P_HOST[$i]}]+=" $i"; done
    for h in "${!by_host[@]}"; do
        args=() index=()
        for i in ${by_host[$h]}; do
            args+=("${P_NAME[$i]}" "${P_SUB[$i]}" "${P_PORT[$i]}")
            index[${P_NAME[$i]}]=$i
            STATE[$i]=unreachable PID[$i]=-
        done
        if on_host "$h" state "${CFG[log_dir]}" "${args[@]}" >"$TMP/state" 2>"$TMP/err"; then
            while read -r name st pid; do
                [[ -n ${index[$name]:-} ]] || continue
                STATE[${index[$name]}]=$st PID[${index[$name]}]=$pid
            done <"$TMP/state"
        else
            HOST_ERROR[$h]=$(tr '\n' ' ' <"$TMP/err")
        fi
    done
}

# query_health WAIT_S I...: checked from the coordinator's host (it must reach every
# worker); waits up to WAIT_S for all of them to be SERVING.
query_health() {
    local wait_s=$1 i target status
    shift
    local -a targets=()
    local -A index=()
    for i in "$@"; do
        targets+=("$(address "$i")"); index[$(address "$i")]=$i; HEALTH[$i]=UNKNOWN
    done
    local h=${P_HOST[$COORD]}
    if ! on_host "$h" health "${CFG[python]}" "${COMMAND[0]}" "$wait_s" "${targets[@]}" \
            >"$TMP/health" 2>"$TMP/err"; then
        HOST_ERROR[$h]="health check failed: $(tail -n 5 "$TMP/err" | tr '\n' ' ')"
        return 1
    fi
    while read -r target status; do
        [[ -n ${index[$target]:-} ]] && HEALTH[${index[$target]}]=$status
    done <"$TMP/health"
    return 0
}

print_log_tail() {  # I
    local i=$1
    printf '  last lines of %s:%s/%s.log:\n' "${P_HOST[$i]}" "${CFG[log_dir]}" "${P_NAME[$i]}" >&2
    on_host "${P_HOST[$i]}" tail "${CFG[log_dir]}" "${P_NAME[$i]}" 20 2>&1 | sed 's/^/    | /' >&2 \
        || true
}

# ------------------------------------------------------------------------------------------
# stop
stop_procs() {  # I...: the coordinator first, then every worker host in parallel
    local rc=0 i h
    local -a workers=()
    local -A by_host=()
    for i in "$@"; do
        if ((i == COORD)); then stop_on_host "${P_HOST[$i]}" "$i" || rc=1
        else workers+=("$i"); fi
    done
    for i in "${workers[@]}"; do by_host[${P_HOST[$i]}]+=" $i"; done
    local -a jobs=()
    local k=0
    for h in "${!by_host[@]}"; do
        # shellcheck disable=SC2086  # the list is of integers
        stop_on_host "$h" ${by_host[$h]} >"$TMP/stop.$k" 2>&1 &
        jobs+=("$!")
        k=$((k + 1))
    done
    for i in "${!jobs[@]}"; do
        wait "${jobs[$i]}" || rc=1
        cat "$TMP/stop.$i" >&2
    done
    return "$rc"
}

stop_on_host() {  # HOST I...
    local h=$1 i name result
    shift
    local -a args=()
    for i in "$@"; do args+=("${P_NAME[$i]}" "${P_SUB[$i]}" "${P_PORT[$i]}"); done
    local out err
    out=$(mktemp "$TMP/out.XXXXXX") err=$(mktemp "$TMP/err.XXXXXX")
    if on_host "$h" stop "${CFG[log_dir]}" "${CFG[stop_timeout]}" "${args[@]}" >"$out" 2>"$err"
    then
        while read -r name result; do log "$h: $name: $result"; done <"$out"
        return 0
    fi
    while read -r name result; do log "$h: $name: $result"; done <"$out"
    log "FAILED to stop on $h: $(tr '\n' ' ' <"$err")"
    return 1
}

cmd_stop() {
    local -a procs
    mapfile -t procs < <(all_procs)
    if stop_procs "${procs[@]}"; then
        log "stopped"
    else
        die "some processes could not be stopped (see above)"
    fi
}

# ------------------------------------------------------------------------------------------
# start
STARTED=()

on_exit() {
    local rc=$?
    trap - EXIT INT TERM
    if ((rc != 0 && ${#STARTED[@]})); then
        if ((rc > 128)); then log "interrupted: stopping the ${#STARTED[@]} process(es) started"
        else log "start failed: stopping the ${#STARTED[@]} process(es) it started"; fi
        stop_procs "${STARTED[@]}" || log "cleanup incomplete: run '$PROG stop $CONFIG'"
    fi
    rm -rf "$TMP"
    exit "$rc"
}

start_proc() {  # I
    local i=$1 pid logfile
    proc_argv "$i"
    if ! on_host "${P_HOST[$i]}" start "${CFG[log_dir]}" "${P_NAME[$i]}" "${P_SUB[$i]}" \
            "${P_PORT[$i]}" "${CFG[model]}" -- "${ARGV[@]}" >"$TMP/out" 2>"$TMP/err"; then
        die "cannot start ${P_ROLE[$i]} $(address "$i"): $(tr '\n' ' ' <"$TMP/err")"
    fi
    read -r pid logfile <"$TMP/out"
    STARTED+=("$i")
    log "started ${P_ROLE[$i]} $(address "$i") (pid $pid on ${P_HOST[$i]}, log $logfile)"
}

wait_healthy() {  # I...: until each answers SERVING; fails if one exits or on timeout
    local deadline=$((SECONDS + CFG[start_timeout])) i last=$SECONDS
    local -a pending=("$@") still
    while ((${#pending[@]})); do
        if ! query_health 5 "${pending[@]}"; then
            die "on ${P_HOST[$COORD]}: ${HOST_ERROR[${P_HOST[$COORD]}]}"
        fi
        still=()
        for i in "${pending[@]}"; do
            if [[ ${HEALTH[$i]} == SERVING ]]; then
                log "${P_ROLE[$i]} $(address "$i") is healthy"
            else
                still+=("$i")
            fi
        done
        pending=("${still[@]}")
        ((${#pending[@]})) || break
        query_state "${pending[@]}"
        for i in "${pending[@]}"; do
            case ${STATE[$i]} in
                running) ;;
                unreachable) die "cannot reach ${P_HOST[$i]} with '$SSH': ${HOST_ERROR[${P_HOST[$i]}]}" ;;
                *)
                    log "${P_ROLE[$i]} $(address "$i") exited during start"
                    print_log_tail "$i"
                    die "${P_ROLE[$i]} on ${P_HOST[$i]} failed to start"
                    ;;
            esac
        done
        if ((SECONDS >= deadline)); then
            for i in "${pending[@]}"; do
                log "${P_ROLE[$i]} $(address "$i") not healthy (${HEALTH[$i]})"
                print_log_tail "$i"
            done
            die "not healthy after ${CFG[start_timeout]} s"
        fi
        if ((SECONDS - last >= 10)); then
            last=$SECONDS
            log "waiting for ${#pending[@]} process(es) to become healthy..."
        fi
    done
}

cmd_start() {
    local i began=$SECONDS
    local -a workers procs busy=()
    mapfile -t workers < <(seq 0 $((COORD - 1)))
    mapfile -t procs < <(all_procs)
    query_state "${procs[@]}"
    for i in "${procs[@]}"; do
        case ${STATE[$i]} in
            running | orphans) busy+=("${P_ROLE[$i]} $(address "$i") (pid ${PID[$i]})") ;;
            unreachable) die "cannot reach ${P_HOST[$i]} with '$SSH': ${HOST_ERROR[${P_HOST[$i]}]}" ;;
        esac
    done
    if ((${#busy[@]})); then
        local joined
        printf -v joined '%s, ' "${busy[@]}"
        die "already running: ${joined%, }; run '$PROG stop $CONFIG' first"
    fi

    trap on_exit EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    for i in "${workers[@]}"; do start_proc "$i"; done
    wait_healthy "${workers[@]}"
    start_proc "$COORD"
    wait_healthy "$COORD"
    STARTED=()
    log "cluster ready in $((SECONDS - began)) s; coordinator at $(address "$COORD")"
    address "$COORD"
}

# ------------------------------------------------------------------------------------------
# status
cmd_status() {
    local i ok=1 h
    local -a procs
    mapfile -t procs < <(all_procs)
    query_state "${procs[@]}"
    query_health 0 "${procs[@]}" || true
    printf '%-12s %-28s %-8s %-12s %s\n' ROLE ADDRESS PID PROCESS HEALTH
    for i in "${procs[@]}"; do
        printf '%-12s %-28s %-8s %-12s %s\n' "${P_ROLE[$i]}" "$(address "$i")" "${PID[$i]}" \
            "${STATE[$i]}" "${HEALTH[$i]}"
        [[ ${STATE[$i]} == running && ${HEALTH[$i]} == SERVING ]] || ok=0
    done
    for h in "${!HOST_ERROR[@]}"; do log "$h: ${HOST_ERROR[$h]}"; done
    ((ok))
}

# ------------------------------------------------------------------------------------------
(($# == 2)) || usage
ACTION=$1 CONFIG=$2
case $ACTION in start | stop | status) ;; *) usage ;; esac
parse_config
TMP=$(mktemp -d "${TMPDIR:-/tmp}/launch-multi.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
"cmd_$ACTION"
