# launch-multi CONFIG: the cluster description, parsed and checked; sourced by
# scripts/launch-multi.sh (which sets PROG, and CONFIG before it calls parse_config).
#
# Results: CFG[key] (the settings), the process table P_ROLE/P_SUB/P_HOST/P_PORT/P_KV/
# P_CPUS/P_NAME (index 0..N-2 the workers in CONFIG order, N-1 the coordinator), COORD
# (the coordinator's index), COMMAND and ENV_WORDS (the command and env settings, split);
# `proc_argv I` sets ARGV to process I's command line on its host.
# shellcheck shell=bash
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
