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
# The part that runs on a host: `bash -s -- OP ARGS...` (over ssh, script on stdin) or
# `bash -c "$REMOTE" launch-multi OP ARGS...` (locally). A process is named by a triple
# NAME SUBCOMMAND PORT; SUBCOMMAND and PORT identify its command line, so a pid file whose
# pid was reused by some other program is never signalled.
REMOTE=$(cat <<'REMOTE_EOF'
set -euo pipefail

leader_alive() {  # PID: exists and is not a zombie
    local s
    s=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
    [[ -n $s && $s != Z* ]]
}
group_alive() {  # PGID: some non-zombie member left
    ps -e -o pgid= -o stat= 2>/dev/null \
        | awk -v g="$1" '$1 == g && $2 !~ /^Z/ { found = 1 } END { exit !found }'
}
owned() {  # PID SUBCOMMAND PORT: is it our process?
    local args
    args=$(ps -ww -o args= -p "$1" 2>/dev/null) || return 1
    [[ " $args " == *" $2 "* && " $args " == *" --port $3 "* ]]
}
state_of() {  # PIDFILE SUBCOMMAND PORT -> "STATE PID"
    local pid=""
    [[ -s $1 ]] || { echo "stopped -"; return; }
    read -r pid <"$1" || true
    [[ $pid =~ ^[0-9]+$ ]] || { echo "stale -"; return; }
    if leader_alive "$pid"; then
        if owned "$pid" "$2" "$3"; then echo "running $pid"; else echo "stale $pid"; fi
    elif group_alive "$pid"; then
        echo "orphans $pid"  # the leader died, processes of its group remain
    else
        echo "exited $pid"
    fi
}

op_start() {  # LOG_DIR NAME SUBCOMMAND PORT MODEL -- COMMAND...
    local log_dir=$1 name=$2 sub=$3 port=$4 model=$5
    shift 6
    local pidfile=$log_dir/$name.pid logfile=$log_dir/$name.log tool st pid
    for tool in setsid nohup ps awk; do
        command -v "$tool" >/dev/null || { echo "$tool not found on $(hostname)" >&2; exit 1; }
    done
    local cmd0=$1 a
    if [[ $1 == env ]]; then
        for a in "${@:2}"; do [[ $a == *=* ]] || { cmd0=$a; break; }; done
    fi
    command -v "$cmd0" >/dev/null \
        || { echo "command not found on $(hostname): $cmd0 (set 'command' in CONFIG)" >&2; exit 1; }
    [[ -d $model ]] || { echo "model directory not found on $(hostname): $model" >&2; exit 1; }
    mkdir -p "$log_dir" || exit 1
    read -r st pid < <(state_of "$pidfile" "$sub" "$port")
    case $st in
        running | orphans) echo "already running (pid $pid, $pidfile): stop it first" >&2; exit 1 ;;
    esac
    rm -f "$pidfile"
    # The new session's leader writes its own pid, then becomes the server.
    # shellcheck disable=SC2016
    PYTHONUNBUFFERED=1 setsid sh -c 'echo $$ >"$0"; exec nohup "$@"' "$pidfile" "$@" \
        </dev/null >"$logfile" 2>&1 &
    for _ in $(seq 100); do
        [[ -s $pidfile ]] && break
        sleep 0.05
    done
    [[ -s $pidfile ]] || { echo "no pid file after start: $pidfile (log: $logfile)" >&2; exit 1; }
    read -r pid <"$pidfile"
    echo "$pid $logfile"
}

op_state() {  # LOG_DIR (NAME SUBCOMMAND PORT)...
    local log_dir=$1
    shift
    while (($# >= 3)); do
        echo "$1 $(state_of "$log_dir/$1.pid" "$2" "$3")"
        shift 3
    done
}

op_stop() {  # LOG_DIR GRACE_S (NAME SUBCOMMAND PORT)...
    local log_dir=$1 grace=$2 rc=0 st pid i
    shift 2
    local -a names=() pids=()
    while (($# >= 3)); do
        read -r st pid < <(state_of "$log_dir/$1.pid" "$2" "$3")
        case $st in
            running | orphans)
                kill -TERM -- "-$pid" 2>/dev/null || true
                names+=("$1"); pids+=("$pid") ;;
            stale) echo "$1 not-running (pid $pid belongs to another program: not signalled)"
                   rm -f "$log_dir/$1.pid" ;;
            *) echo "$1 not-running"; rm -f "$log_dir/$1.pid" ;;
        esac
        shift 3
    done
    local ticks left
    for ((ticks = 0; ticks <= grace * 5; ticks++)); do  # 0.2 s each
        left=0
        for i in "${!pids[@]}"; do group_alive "${pids[$i]}" && left=1; done
        ((left)) || break
        sleep 0.2
    done
    for i in "${!pids[@]}"; do
        if group_alive "${pids[$i]}"; then
            kill -KILL -- "-${pids[$i]}" 2>/dev/null || true
            for ((ticks = 0; ticks < 50; ticks++)); do
                group_alive "${pids[$i]}" || break
                sleep 0.1
            done
            if group_alive "${pids[$i]}"; then
                echo "${names[$i]} STILL-RUNNING (process group ${pids[$i]})"; rc=1; continue
            fi
            echo "${names[$i]} killed (pid ${pids[$i]}: SIGTERM not obeyed within ${grace} s)"
        else
            echo "${names[$i]} stopped (pid ${pids[$i]})"
        fi
        rm -f "$log_dir/${names[$i]}.pid"
    done
    return "$rc"
}

op_tail() {  # LOG_DIR NAME LINES
    tail -n "$3" "$1/$2.log" 2>/dev/null || echo "(no log at $1/$2.log)"
}

op_health() {  # PYTHON COMMAND0 WAIT_S TARGET...: "TARGET STATUS" per target
    # Polls (4 per second) until every target is SERVING or WAIT_S is over.
    local py=$1 cmd0=$2 path
    shift 2
    if [[ -z $py ]]; then
        # The python of the environment slos-serve is installed in.
        path=$(command -v "$cmd0" 2>/dev/null || true)
        if [[ $path == */* && -x ${path%/*}/python ]]; then py=${path%/*}/python
        elif [[ ${cmd0##*/} == python* ]]; then py=$cmd0
        else py=python3; fi
    fi
    "$py" -c '
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

wait_s, targets = float(sys.argv[1]), sys.argv[2:]
options = [("grpc.enable_http_proxy", 0), ("grpc.initial_reconnect_backoff_ms", 200),
           ("grpc.min_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 500)]
stubs = {t: health_pb2_grpc.HealthStub(grpc.insecure_channel(t, options=options))
         for t in targets}
status = {}
deadline = time.monotonic() + wait_s
while True:
    for target, stub in stubs.items():
        if status.get(target) == "SERVING":
            continue
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=3)
            status[target] = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        except grpc.RpcError as exc:
            code = exc.code()
            status[target] = "UNREACHABLE" if code == grpc.StatusCode.UNAVAILABLE else code.name
    if time.monotonic() >= deadline or all(s == "SERVING" for s in status.values()):
        break
    time.sleep(0.25)
for target in targets:
    print(target, status[target], flush=True)
' "$@"
}

op=$1
shift
"op_$op" "$@"
REMOTE_EOF
)

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
# CONFIG
declare -A CFG=(
    [command]=slos-serve [python]="" [log_dir]=/tmp/slos-serve [engine]=vllm
    [coordinator_port]=50051 [tiers]="" [worker_args]="" [coordinator_args]="" [env]=""
    [scheduler]=slos [profile]=""
    [start_timeout]=600 [stop_timeout]=20
)
KEYS=" model command python log_dir engine coordinator_host coordinator_port tiers"
KEYS+=" worker_args coordinator_args env start_timeout stop_timeout scheduler profile "
# Processes: index 0..N-2 the workers in CONFIG order, index N-1 the coordinator.
P_ROLE=() P_SUB=() P_HOST=() P_PORT=() P_KV=() P_CPUS=() P_NAME=()

config_error() { printf '%s: %s: %s\n' "$PROG" "$CONFIG" "$*" >&2; exit 2; }
is_port() { [[ $1 =~ ^[0-9]+$ ]] && (($1 >= 1 && $1 <= 65535)); }
add_proc() {  # ROLE SUBCOMMAND HOST PORT KV_PORT CPUS
    P_ROLE+=("$1") P_SUB+=("$2") P_HOST+=("$3") P_PORT+=("$4") P_KV+=("$5") P_CPUS+=("$6")
    P_NAME+=("$1-${3//[^A-Za-z0-9._-]/_}-$4")
}

parse_config() {
    [[ -r $CONFIG ]] || { printf '%s: cannot read config %s\n' "$PROG" "$CONFIG" >&2; exit 2; }
    local line n=0 key value i j
    local -A seen_port=() seen_kv=()
    local -a words
    while IFS= read -r line || [[ -n $line ]]; do
        n=$((n + 1))
        line=${line%%#*}
        line=${line#"${line%%[![:space:]]*}"}
        line=${line%"${line##*[![:space:]]}"}
        [[ -z $line ]] && continue
        if [[ $line =~ ^([A-Za-z_]+)[[:space:]]*=[[:space:]]*(.*)$ ]]; then
            key=${BASH_REMATCH[1]} value=${BASH_REMATCH[2]}
            [[ $KEYS == *" $key "* ]] || config_error "line $n: unknown setting '$key'"
            CFG[$key]=$value
            continue
        fi
        read -r -a words <<<"$line"
        case ${words[0]} in
            prefill | decode)
                ((${#words[@]} == 4 || ${#words[@]} == 5)) \
                    || config_error "line $n: expected '${words[0]} HOST PORT KV_PORT [CPUS]'"
                is_port "${words[2]}" || config_error "line $n: bad PORT '${words[2]}'"
                is_port "${words[3]}" || config_error "line $n: bad KV_PORT '${words[3]}'"
                [[ ${#words[@]} == 4 || ${words[4]} =~ ^[0-9][0-9,-]*$ ]] \
                    || config_error "line $n: bad CPUS '${words[4]}' (e.g. 0, 0-3, 0,2)"
                add_proc "${words[0]}" "${words[0]}-worker" "${words[1]}" "${words[2]}" \
                    "${words[3]}" "${words[4]:-}"
                ;;
            *) config_error "line $n: expected 'KEY = VALUE', 'prefill ...' or 'decode ...'" ;;
        esac
    done <"$CONFIG"

    [[ -n ${CFG[model]:-} ]] || config_error "'model' is not set"
    [[ -n ${CFG[coordinator_host]:-} ]] || config_error "'coordinator_host' is not set"
    is_port "${CFG[coordinator_port]}" || config_error "bad coordinator_port"
    [[ ${CFG[engine]} == vllm || ${CFG[engine]} == sim ]] \
        || config_error "engine must be vllm or sim, not '${CFG[engine]}'"
    [[ ${CFG[scheduler]} == slos || ${CFG[scheduler]} == vllm ]] \
        || config_error "scheduler must be slos or vllm, not '${CFG[scheduler]}'"
    if [[ ${CFG[scheduler]} == slos && -z ${CFG[profile]} ]]; then
        [[ ${CFG[engine]} == sim ]] || config_error "scheduler=slos needs 'profile': the JSON \
of 'slos-serve profile' on the workers' hardware, at this path on every host"
        CFG[profile]=sim-engine
    fi
    for key in model log_dir tiers; do
        [[ -z ${CFG[$key]} || ${CFG[$key]} == /* ]] \
            || config_error "$key must be an absolute path (it is used on every host)"
    done
    for key in start_timeout stop_timeout; do
        [[ ${CFG[$key]} =~ ^[0-9]+$ ]] || config_error "$key must be a whole number of seconds"
    done
    [[ ${CFG[command]} =~ [^[:space:]] ]] || config_error "'command' is empty"
    local roles=" ${P_ROLE[*]} "
    [[ $roles == *" prefill "* ]] || config_error "no prefill worker"
    [[ $roles == *" decode "* ]] || config_error "no decode worker"
    add_proc coordinator coordinator "${CFG[coordinator_host]}" "${CFG[coordinator_port]}" "" ""

    for i in "${!P_NAME[@]}"; do
        j="${P_HOST[$i]}:${P_PORT[$i]}"
        [[ -z ${seen_port[$j]:-} ]] || config_error "$j is used twice (${seen_port[$j]}, ${P_ROLE[$i]})"
        seen_port[$j]=${P_ROLE[$i]}
        [[ -n ${P_KV[$i]} ]] || continue
        j="${P_HOST[$i]}:${P_KV[$i]}"
        [[ -z ${seen_kv[$j]:-} ]] || config_error "KV port $j is used twice"
        seen_kv[$j]=1
    done
    COORD=$((${#P_NAME[@]} - 1))
    read -r -a COMMAND <<<"${CFG[command]}"
    read -r -a ENV_WORDS <<<"${CFG[env]}"
}

# argv of process I on its host.
proc_argv() {
    local i=$1 a
    ARGV=()
    if ((${#ENV_WORDS[@]})); then ARGV+=(env "${ENV_WORDS[@]}"); fi
    ARGV+=("${COMMAND[@]}" "${P_SUB[$i]}" --host "${P_HOST[$i]}" --port "${P_PORT[$i]}")
    if ((i == COORD)); then
        local -a prefill=() decode=() extra
        for a in "${!P_NAME[@]}"; do
            case ${P_ROLE[$a]} in
                prefill) prefill+=("${P_HOST[$a]}:${P_PORT[$a]}") ;;
                decode) decode+=("${P_HOST[$a]}:${P_PORT[$a]}") ;;
            esac
        done
        ARGV+=(--prefill "$(IFS=,; echo "${prefill[*]}")" --decode "$(IFS=,; echo "${decode[*]}")")
        ARGV+=(--model "${CFG[model]}")
        if [[ -n ${CFG[tiers]} ]]; then ARGV+=(--tiers "${CFG[tiers]}"); fi
        ARGV+=(--scheduler "${CFG[scheduler]}")
        if [[ -n ${CFG[profile]} ]]; then ARGV+=(--profile "${CFG[profile]}"); fi
        read -r -a extra <<<"${CFG[coordinator_args]}"
    else
        ARGV+=(--kv-port "${P_KV[$i]}" --model "${CFG[model]}" --engine "${CFG[engine]}")
        if [[ -n ${P_CPUS[$i]} ]]; then ARGV+=(--cpus "${P_CPUS[$i]}"); fi
        ARGV+=(--scheduler "${CFG[scheduler]}")
        if [[ ${CFG[engine]} == vllm && -n ${CFG[profile]} ]]; then
            ARGV+=(--profile "${CFG[profile]}")
        fi
        read -r -a extra <<<"${CFG[worker_args]}"
    fi
    ARGV+=("${extra[@]}")
}

address() { echo "${P_HOST[$1]}:${P_PORT[$1]}"; }
all_procs() { seq 0 "$COORD"; }

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
