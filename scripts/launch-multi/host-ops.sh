# launch-multi host operations: the part of scripts/launch-multi.sh that runs on a host.
#
# Run as `bash -s -- OP ARGS...` (over ssh, this file on stdin) or
# `bash -c "$(<this file)" launch-multi OP ARGS...` (locally); OP is one of start, state,
# stop, tail, health (the op_* functions below). A process is named by a triple
# NAME SUBCOMMAND PORT; SUBCOMMAND and PORT identify its command line, so a pid file whose
# pid was reused by some other program is never signalled.
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
