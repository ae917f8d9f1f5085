#!/usr/bin/env bash
# Three-node RabbitMQ cluster on this machine, for the cluster tests (issue #17).
#
# It runs the installed rabbitmq-server (Debian package, 3.10, Erlang/OTP 25)
# three times, each node with its own name, ports, data, log and config under
# DIR, and joins them into one cluster. It coexists with the machine's own
# broker (rabbit@localhost on 5672/25672): it never reads /etc/rabbitmq,
# /var/lib/rabbitmq or that broker's cookie, and never stops anything of it.
#
# Usage (DIR: a temporary folder, empty or not existing yet; absolute or not):
#   rabbitmq-cluster.sh start DIR [BASE_PORT]  start and join the three nodes
#   rabbitmq-cluster.sh stop DIR               stop every node, remove DIR (idempotent)
#   rabbitmq-cluster.sh urls DIR               print the KEY=VALUE lines of start again
#   rabbitmq-cluster.sh status DIR             cluster_status, asked of the first node that answers
#   rabbitmq-cluster.sh node-stop DIR N        graceful stop of node N (the whole VM; rabbitmqctl stop)
#   rabbitmq-cluster.sh node-start DIR N       start node N again (or start_app when only the app is stopped)
#   rabbitmq-cluster.sh node-kill DIR N        kill -9 node N's beam.smp (nothing else)
#   rabbitmq-cluster.sh leader DIR QUEUE [VHOST]   the running node leading a quorum queue (VHOST default /)
#   rabbitmq-cluster.sh members DIR QUEUE [VHOST]  the nodes holding a replica of a quorum queue
#   rabbitmq-cluster.sh alarm-on DIR N         memory alarm on node N (watermark 0); returns once it is raised
#   rabbitmq-cluster.sh alarm-off DIR N        watermark back to normal; returns once the alarm is cleared
#   rabbitmq-cluster.sh ctl DIR N ARGS...      rabbitmqctl ARGS against node N (right HOME, cookie, node name)
#   rabbitmq-cluster.sh queues DIR N ARGS...   rabbitmq-queues ARGS against node N
#   rabbitmq-cluster.sh diag DIR N ARGS...     rabbitmq-diagnostics ARGS against node N
# N is 1, 2 or 3. Node N listens for AMQP on 127.0.0.1:BASE_PORT+N-1 and for
# Erlang distribution on 127.0.0.1:BASE_PORT+20000+N-1, and is named after its
# AMQP port: las<port>@localhost (short names), so clusters on different
# BASE_PORTs can run side by side. BASE_PORT defaults to 5701: nodes
# las5701@localhost, las5702@localhost, las5703@localhost on 5701-5703 and
# 25701-25703 (the system broker keeps rabbit@localhost, 5672 and 25672).
#
# Output. Progress and errors go to stderr. On success `start` (and `urls`)
# print exactly these lines on stdout, nothing else, URLS and NODES last:
#   DIR=/tmp/x
#   PORTS=5701,5702,5703
#   DIST_PORTS=25701,25702,25703
#   URLS=amqp://guest:guest@127.0.0.1:5701/%2f,amqp://guest:guest@127.0.0.1:5702/%2f,amqp://guest:guest@127.0.0.1:5703/%2f
#   NODES=las5701@localhost,las5702@localhost,las5703@localhost
# (URLS and NODES are in node order: the i-th URL is the i-th node.)
# `leader` prints LEADER_INDEX=N then LEADER_NODE=las<port>@localhost;
# `members` prints MEMBERS=las<port>@localhost,... (node order). Other subcommands print on
# stdout only what rabbitmqctl prints. Exit status 0 means done; `start` exits
# 0 only when cluster_status lists the three nodes as running.
#
# Users. Run as root (as CI does), the nodes and every rabbitmqctl run as the
# `rabbitmq` user (setpriv), and DIR is chowned to it: its parent directories
# must be traversable by that user (/tmp is; a 0700 temporary directory of
# root is not: pass the temporary directory itself, or a folder under /tmp).
# Run as any other user, everything runs as that user. Each node has its own
# HOME (DIR/nodeN/home) holding the cluster's own .erlang.cookie (mode 400);
# the server and the CLI run with that HOME and a clean environment (env -i),
# so nothing of the caller's RABBITMQ_* or ERL_* variables leaks in.
#
# Quorum queues. RabbitMQ 3.10 places a new quorum queue on
# `quorum_cluster_size` nodes (default 3, from rabbit.app; override per queue
# with the x-quorum-initial-group-size argument) chosen among ALL cluster
# members, running or not. On this three-node cluster a queue declared with
# only `x-queue-type: quorum` therefore gets a replica on every node: the
# worker or a policy has nothing to add. Members are fixed at declaration (a
# node joining later gets no replica without `rabbitmq-queues grow`), so
# declare queues after `start` returned, which is when all three have joined.
# On a five-node cluster the same declaration gets three replicas, not five.
# The leader goes to the node the declaring client is connected to
# (queue_leader_locator client-local).
#
# Restarts. Stop and start one node at a time (node-stop N; node-start N), as
# a rolling upgrade does. A 3.10 node that was not the last of the cluster to
# stop waits at boot for the others (up to 10 x 30 s) before it gives up, so
# after stopping several nodes start the last one stopped first.
#
# Alarms. A memory alarm raised on one node blocks publishing connections on
# every node of the cluster (resource alarms are cluster-wide), not only the
# connections to that node.
#
# Environment knobs: RABBITMQ_CLUSTER_STARTUP_TIMEOUT (seconds per wait, 120),
# RABBITMQ_CLUSTER_USER (the user the nodes run as when run by root; rabbitmq),
# RABBITMQ_CLUSTER_ERL_ARGS (emulator flags of the nodes; '+S 1:1').
set -euo pipefail

RMQ_BIN=/usr/lib/rabbitmq/bin
NODE_COUNT=3
NODE_HOST=localhost
NODE_PREFIX=las
DEFAULT_BASE_PORT=5701
WATERMARK=0.4
STARTUP_TIMEOUT=${RABBITMQ_CLUSTER_STARTUP_TIMEOUT:-120}
RUN_USER=${RABBITMQ_CLUSTER_USER:-rabbitmq}
MARKER=cluster.env
# Scheduler flags for a small machine: one scheduler per node (three nodes
# share two cores with PostgreSQL and the workers; boot time measured the
# same as with the default two), distribution on the loopback interface only.
# node_env also unbinds the schedulers (RABBITMQ_SCHEDULER_BIND_TYPE=u):
# RabbitMQ binds them by default, which would pin every node's only
# scheduler to CPU 0.
SERVER_ERL_ARGS=${RABBITMQ_CLUSTER_ERL_ARGS:-'+S 1:1'}' -kernel inet_dist_use_interface {127,0,0,1}'

prog=rabbitmq-cluster
log() { printf '%s: %s\n' "$prog" "$*" >&2; }
die() {
    printf '%s: error: %s\n' "$prog" "$*" >&2
    exit 1
}
usage() {
    sed -n '/^# Usage/,/^#$/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}
now_ms() { date +%s%3N; }
elapsed() { # elapsed START_MS -> "12.3 s"
    local ms=$(($(now_ms) - $1))
    printf '%d.%d s' $((ms / 1000)) $((ms % 1000 / 100))
}

# ---------------------------------------------------------------- layout ----

set_dir() { # set_dir PATH: DIR becomes absolute
    [[ -n "${1:-}" ]] || usage
    DIR=$(realpath -m -- "$1")
    [[ "$DIR" != / ]] || die "DIR must not be /"
}

# Named after its AMQP port, so that clusters on other BASE_PORTs can run at
# the same time (node names are machine-wide, in epmd).
node_name() { echo "${NODE_PREFIX}$(amqp_port "$1")@${NODE_HOST}"; }
node_dir() { echo "$DIR/node$1"; }
amqp_port() { echo $((BASE_PORT + $1 - 1)); }
dist_port() { echo $((BASE_PORT + 20000 + $1 - 1)); }
pid_file() { echo "$DIR/node$1/rabbitmq.pid"; }
node_log() { echo "$DIR/node$1/log/$(node_name "$1").log"; }
console_log() { echo "$DIR/node$1/log/console.log"; }

check_index() {
    [[ "${1:-}" =~ ^[1-9][0-9]*$ ]] && (($1 <= NODE_COUNT)) ||
        die "node index must be 1..$NODE_COUNT, got '${1:-}'"
}

# Loads what `start` recorded; every subcommand but start needs it.
load_cluster() {
    [[ -f "$DIR/$MARKER" ]] || die "$DIR is not a cluster directory of this script (no $MARKER): was it started?"
    # shellcheck disable=SC1090
    . "$DIR/$MARKER"
}

# ------------------------------------------------------ running commands ----

# The command prefix that runs a program as the cluster's user.
AS_USER=()
set_user() {
    if [[ $EUID -eq 0 ]]; then
        id -u "$RUN_USER" >/dev/null 2>&1 ||
            die "user '$RUN_USER' does not exist (is the rabbitmq-server package installed?)"
        AS_USER=(setpriv --reuid="$RUN_USER" --regid="$(id -g "$RUN_USER")" --init-groups --)
        OWNER="$RUN_USER:$(id -gn "$RUN_USER")"
    else
        AS_USER=()
        OWNER=
    fi
}

# The complete environment of node N's server and of the CLI talking to it.
node_env() {
    local n=$1 d
    d=$(node_dir "$n")
    NODE_ENV=(
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
        LANG=C.UTF-8 LC_ALL=C.UTF-8
        HOME="$d/home"
        ERL_EPMD_ADDRESS=127.0.0.1
        RABBITMQ_CONF_ENV_FILE="$d/rabbitmq-env.conf"
        RABBITMQ_NODENAME="$(node_name "$n")"
        RABBITMQ_USE_LONGNAME=false
        RABBITMQ_DIST_PORT="$(dist_port "$n")"
        RABBITMQ_MNESIA_BASE="$d/mnesia"
        RABBITMQ_LOG_BASE="$d/log"
        RABBITMQ_CONFIG_FILE="$d/rabbitmq.conf"
        RABBITMQ_CONFIG_FILES="$d/conf.d"
        RABBITMQ_ADVANCED_CONFIG_FILE="$d/advanced.config"
        RABBITMQ_ENABLED_PLUGINS_FILE="$d/enabled_plugins"
        RABBITMQ_PID_FILE="$d/rabbitmq.pid"
        RABBITMQ_SCHEDULER_BIND_TYPE=u
        RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="$SERVER_ERL_ARGS"
    )
}

# tool N TOOL ARGS...: a RabbitMQ CLI tool against node N.
tool() {
    local n=$1 t=$2
    shift 2
    node_env "$n"
    local limit=()
    [[ -z "${TOOL_TIMEOUT:-}" ]] || limit=(timeout "$TOOL_TIMEOUT")
    (cd "$DIR" && "${limit[@]}" "${AS_USER[@]}" env -i "${NODE_ENV[@]}" \
        "$RMQ_BIN/$t" -n "$(node_name "$n")" "$@")
}
ctl() {
    local n=$1
    shift
    tool "$n" rabbitmqctl "$@"
}

# ------------------------------------------------------------ processes ----

# Pids of the processes of node N: every process whose environment says it
# belongs to node N's data directory (the server's sh wrapper, beam.smp and
# its port programs, CLI runs against it), except epmd, which is shared
# with the system broker and stays.
node_pids() {
    local marker p comm
    marker="RABBITMQ_MNESIA_BASE=$(node_dir "$1")/mnesia"
    for p in /proc/[0-9]*; do
        [[ "${p#/proc/}" != "$$" ]] || continue
        grep -qzxF -- "$marker" "$p/environ" 2>/dev/null || continue
        comm=$(cat "$p/comm" 2>/dev/null) || continue
        [[ "$comm" != epmd ]] || continue
        echo "${p#/proc/}"
    done
}

# The pid of node N's beam.smp, or nothing: the pid file's pid when that
# process is alive, is a beam and belongs to node N.
beam_pid() {
    local f pid
    f=$(pid_file "$1")
    [[ -s "$f" ]] || return 0
    pid=$(tr -dc 0-9 <"$f")
    [[ -n "$pid" && -d /proc/$pid ]] || return 0
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == beam.smp ]] || return 0
    grep -qzxF -- "RABBITMQ_MNESIA_BASE=$(node_dir "$1")/mnesia" "/proc/$pid/environ" 2>/dev/null || return 0
    echo "$pid"
}

# wait_gone TIMEOUT PID...: true once none of the pids exists.
wait_gone() {
    local t=$1 p left
    shift
    for ((i = 0; i < t * 10; i++)); do
        left=0
        for p in "$@"; do [[ -d /proc/$p ]] && left=1; done
        ((left)) || return 0
        sleep 0.1
    done
    return 1
}

port_in_use() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }

# port_pids PORT...: pids of the processes listening on the ports.
port_pids() {
    local p
    for p in "$@"; do
        ss -Hltnp "sport = :$p" 2>/dev/null | grep -o 'pid=[0-9]*' | cut -d= -f2
    done | sort -u
}

port_owners() { # a readable list of who listens on the ports
    local pid out=()
    for pid in $(port_pids "$@"); do
        out+=("pid $pid ($(cat "/proc/$pid/comm" 2>/dev/null)$(env_of "$pid" RABBITMQ_NODENAME | sed 's/^/ /'))")
    done
    ((${#out[@]})) || out=("unknown processes")
    echo "${out[*]}"
}

env_of() { # env_of PID NAME: the value of NAME in the process's environment
    tr '\0' '\n' <"/proc/$1/environ" 2>/dev/null | sed -n "s/^$2=//p" | head -n 1
}

# reap_orphans PORT...: a node of this script whose cluster directory is
# gone (a test that removed its temporary folder without `stop`) still holds
# the ports: kill it and the rest of its processes. Nothing else is touched.
reap_orphans() {
    local pid base cdir nodedir
    for pid in $(port_pids "$@"); do
        base=$(env_of "$pid" RABBITMQ_MNESIA_BASE)
        [[ "$base" == */node[0-9]*/mnesia ]] || continue
        nodedir=${base%/mnesia}
        cdir=${nodedir%/node*}
        [[ "$(env_of "$pid" RABBITMQ_CONF_ENV_FILE)" == "$nodedir/rabbitmq-env.conf" ]] || continue
        [[ ! -e "$cdir/$MARKER" ]] || continue
        log "killing orphaned node $(env_of "$pid" RABBITMQ_NODENAME) (pid $pid) of the removed cluster directory $cdir"
        (
            DIR=$cdir
            kill_leftovers "${nodedir##*/node}"
        )
    done
}

# Launch node N's server in the background, in its own session, output to
# its console log. Sets LAUNCHED_PID (the rabbitmq-server sh wrapper, which
# exits when the VM does).
launch_node() {
    local n=$1 d
    d=$(node_dir "$n")
    node_env "$n"
    rm -f "$(pid_file "$n")"
    (
        cd "$d" || exit 1
        exec setsid "${AS_USER[@]}" env -i "${NODE_ENV[@]}" "$RMQ_BIN/rabbitmq-server"
    ) >>"$(console_log "$n")" 2>&1 </dev/null &
    LAUNCHED_PID=$!
    # Watched through /proc, not `wait`; no job report when it is killed.
    disown "$LAUNCHED_PID"
}

# await_node N WRAPPER_PID: returns once the rabbit application of node N
# is running; fails early when the launched process exits.
await_node() {
    local n=$1 wrapper=$2 deadline
    deadline=$((SECONDS + STARTUP_TIMEOUT))
    # The pid file appears once the VM has its node name; no CLI run (each
    # costs about a second of CPU) until then.
    until [[ -s "$(pid_file "$n")" ]]; do
        [[ -d /proc/$wrapper ]] || {
            log "node $n ($(node_name "$n")) exited during startup"
            return 1
        }
        ((SECONDS < deadline)) || {
            log "node $n did not write its pid file within ${STARTUP_TIMEOUT} s"
            return 1
        }
        sleep 0.2
    done
    if ! ctl "$n" await_startup --timeout "$STARTUP_TIMEOUT" >/dev/null; then
        log "node $n ($(node_name "$n")) did not finish booting"
        return 1
    fi
}

show_logs() { # show_logs N...: tail of the logs of nodes, to stderr
    local n f
    for n in "$@"; do
        for f in "$(console_log "$n")" "$(node_log "$n")"; do
            [[ -s "$f" ]] || continue
            log "---- $f (first and last lines)"
            if (($(wc -l <"$f") > 30)); then
                head -n 5 "$f" >&2
                echo '[...]' >&2
                tail -n 25 "$f" >&2
            else
                cat "$f" >&2
            fi
        done
    done
}

# Stop node N: rabbitmqctl stop (graceful, waits for the VM to exit), then
# SIGKILL whatever of it is left after GRACE seconds.
stop_node() {
    local n=$1 grace=${2:-60} pid
    pid=$(beam_pid "$n")
    if [[ -n "$pid" ]]; then
        TOOL_TIMEOUT=$grace ctl "$n" stop --idempotent "$(pid_file "$n")" >/dev/null 2>&1 ||
            log "node $n: rabbitmqctl stop failed or timed out; killing it"
        wait_gone 5 "$pid" || true
    fi
    kill_leftovers "$n"
}

kill_leftovers() {
    local n=$1 pids
    mapfile -t pids < <(node_pids "$n")
    ((${#pids[@]})) || return 0
    kill -KILL "${pids[@]}" 2>/dev/null || true
    wait_gone 10 "${pids[@]}" || log "node $n: processes ${pids[*]} survived SIGKILL"
}

# ---------------------------------------------------------- subcommands ----

print_urls() {
    local n ports=() dports=() urls=() nodes=()
    for ((n = 1; n <= NODE_COUNT; n++)); do
        ports+=("$(amqp_port "$n")")
        dports+=("$(dist_port "$n")")
        urls+=("amqp://guest:guest@127.0.0.1:$(amqp_port "$n")/%2f")
        nodes+=("$(node_name "$n")")
    done
    local IFS=,
    echo "DIR=$DIR"
    echo "PORTS=${ports[*]}"
    echo "DIST_PORTS=${dports[*]}"
    echo "URLS=${urls[*]}"
    echo "NODES=${nodes[*]}"
}

write_node_files() {
    local n=$1 d cookie=$2
    d=$(node_dir "$n")
    mkdir -p "$d/home" "$d/mnesia" "$d/log" "$d/conf.d"
    printf '# empty: keeps /etc/rabbitmq/rabbitmq-env.conf (the system broker'"'"'s) out\n' >"$d/rabbitmq-env.conf"
    printf '[].\n' >"$d/enabled_plugins"
    cat >"$d/rabbitmq.conf" <<EOF
# node $n of the las-worker test cluster (scripts/rabbitmq-cluster.sh)
listeners.tcp.1 = 127.0.0.1:$(amqp_port "$n")
loopback_users.guest = true
vm_memory_high_watermark.relative = $WATERMARK
disk_free_limit.absolute = 50MB
log.file.level = info
log.console = false
cluster_name = las-test-$BASE_PORT
EOF
    : >"$(console_log "$n")"
    printf '%s' "$cookie" >"$d/home/.erlang.cookie"
    chmod 400 "$d/home/.erlang.cookie"
}

cmd_start() {
    set_dir "${1:-}"
    BASE_PORT=${2:-$DEFAULT_BASE_PORT}
    [[ "$BASE_PORT" =~ ^[0-9]+$ ]] && ((BASE_PORT >= 1024 && BASE_PORT + 20000 + NODE_COUNT <= 65535)) ||
        die "BASE_PORT must be a number from 1024 to $((65535 - 20000 - NODE_COUNT)), got '$BASE_PORT'"
    [[ -x "$RMQ_BIN/rabbitmq-server" ]] || die "$RMQ_BIN/rabbitmq-server not found: install the rabbitmq-server package"
    set_user

    CREATED_DIR=0
    if [[ -e "$DIR" ]]; then
        [[ -d "$DIR" ]] || die "$DIR exists and is not a directory"
        [[ ! -e "$DIR/$MARKER" ]] || die "$DIR already holds a cluster: '$0 stop $DIR' first"
        [[ -z "$(ls -A "$DIR")" ]] || die "$DIR is not empty: give an empty or new directory"
    else
        CREATED_DIR=1
    fi
    local n p busy=()
    for ((n = 1; n <= NODE_COUNT; n++)); do
        for p in "$(amqp_port "$n")" "$(dist_port "$n")"; do
            port_in_use "$p" && busy+=("$p")
        done
    done
    if ((${#busy[@]})); then
        reap_orphans "${busy[@]}"
        busy=()
        for ((n = 1; n <= NODE_COUNT; n++)); do
            for p in "$(amqp_port "$n")" "$(dist_port "$n")"; do
                port_in_use "$p" && busy+=("$p")
            done
        done
        ((${#busy[@]} == 0)) || die "port(s) ${busy[*]} already in use: $(port_owners "${busy[@]}") (a running cluster? '$0 stop' its DIR, or pass another BASE_PORT)"
    fi

    local t0 t1
    t0=$(now_ms)
    # From here a failure removes what this run created, or (once nodes
    # were launched) stops them and keeps their logs.
    LAUNCHED=0
    trap 'start_failed' EXIT
    trap 'exit 130' INT TERM
    mkdir -p "$DIR"
    # The marker first: from here on `stop DIR` cleans up whatever exists.
    printf 'BASE_PORT=%s\nRUN_AS=%s\n' "$BASE_PORT" "${OWNER:-$(id -un)}" >"$DIR/$MARKER"
    local cookie
    cookie=$(head -c 30 /dev/urandom | od -An -tx1 | tr -d ' \n' | tr a-f A-F)
    for ((n = 1; n <= NODE_COUNT; n++)); do write_node_files "$n" "$cookie"; done
    chmod 755 "$DIR"
    if [[ -n "$OWNER" ]]; then
        chown -R "$OWNER" "$DIR"
        "${AS_USER[@]}" test -w "$DIR/node1/mnesia" ||
            die "user $RUN_USER cannot reach $DIR: a parent directory is not traversable by it (use a directory under /tmp, or make the parents o+x)"
    fi

    LAUNCHED=1
    log "starting $NODE_COUNT nodes in $DIR (AMQP ports $(amqp_port 1)-$(amqp_port $NODE_COUNT))"
    local wrappers=()
    for ((n = 1; n <= NODE_COUNT; n++)); do
        launch_node "$n"
        wrappers[n]=$LAUNCHED_PID
    done
    # Await the three boots in parallel.
    local waits=()
    for ((n = 1; n <= NODE_COUNT; n++)); do
        await_node "$n" "${wrappers[n]}" &
        waits[n]=$!
    done
    local failed=()
    for ((n = 1; n <= NODE_COUNT; n++)); do
        wait "${waits[n]}" || failed+=("$n")
    done
    if ((${#failed[@]})); then
        show_logs "${failed[@]}"
        die "node(s) ${failed[*]} did not start"
    fi
    t1=$(now_ms)
    log "nodes booted in $(elapsed "$t0")"

    local seed
    seed=$(node_name 1)
    for ((n = 2; n <= NODE_COUNT; n++)); do
        ctl "$n" stop_app >/dev/null &&
            ctl "$n" join_cluster "$seed" >/dev/null &&
            ctl "$n" start_app >/dev/null || {
            show_logs "$n"
            die "node $n could not join $seed"
        }
    done
    log "joined in $(elapsed "$t1")"

    # Done only when the cluster says so.
    local status running=0
    status=$(ctl 1 cluster_status --formatter json) || die "cluster_status failed"
    for ((n = 1; n <= NODE_COUNT; n++)); do
        if sed -n 's/.*"running_nodes":\[\([^]]*\)\].*/\1/p' <<<"$status" | grep -qF "\"$(node_name "$n")\""; then
            running=$((running + 1))
        fi
    done
    ((running == NODE_COUNT)) || die "cluster_status lists $running of $NODE_COUNT nodes as running: $status"

    trap - EXIT INT TERM
    log "cluster of $NODE_COUNT running in $(elapsed "$t0")"
    print_urls
}

start_failed() {
    local rc=$?
    trap - EXIT
    ((rc != 0)) || return 0
    local n
    if ((LAUNCHED)); then
        log "start failed: stopping the nodes (their logs stay in $DIR; '$0 stop $DIR' removes it)"
        for ((n = 1; n <= NODE_COUNT; n++)); do kill_leftovers "$n"; done
    elif ((CREATED_DIR)); then
        rm -rf -- "$DIR"
    else
        find "$DIR" -mindepth 1 -delete 2>/dev/null || true
    fi
    exit "$rc"
}

cmd_stop() {
    set_dir "${1:-}"
    if [[ ! -e "$DIR" ]]; then
        log "$DIR does not exist: nothing to stop"
        return 0
    fi
    if [[ ! -f "$DIR/$MARKER" ]]; then
        # An empty directory (a start that failed before writing anything) goes.
        [[ -z "$(ls -A "$DIR")" ]] || die "$DIR is not a cluster directory of this script (no $MARKER); not touching it"
        rmdir "$DIR"
        return 0
    fi
    load_cluster
    set_user
    local t0 n
    t0=$(now_ms)
    # All nodes at once: the data is thrown away, no need for an orderly exit.
    local pids=()
    for ((n = 1; n <= NODE_COUNT; n++)); do
        stop_node "$n" 30 &
        pids+=($!)
    done
    wait "${pids[@]}" || true
    for ((n = 1; n <= NODE_COUNT; n++)); do kill_leftovers "$n"; done
    rm -rf -- "$DIR"
    log "stopped and removed $DIR in $(elapsed "$t0")"
}

cmd_node_stop() {
    set_dir "${1:-}"
    check_index "${2:-}"
    load_cluster
    set_user
    local n=$2 t0
    t0=$(now_ms)
    if [[ -z "$(beam_pid "$n")" ]]; then
        log "node $n ($(node_name "$n")) is not running"
        kill_leftovers "$n"
        return 0
    fi
    stop_node "$n" 60
    log "node $n ($(node_name "$n")) stopped in $(elapsed "$t0")"
}

cmd_node_start() {
    set_dir "${1:-}"
    check_index "${2:-}"
    load_cluster
    set_user
    local n=$2 t0
    t0=$(now_ms)
    if [[ -n "$(beam_pid "$n")" ]]; then
        # The VM runs: start the app if it is stopped (start_app is a no-op otherwise).
        ctl "$n" start_app >/dev/null
        ctl "$n" await_startup --timeout "$STARTUP_TIMEOUT" >/dev/null
    else
        kill_leftovers "$n"
        launch_node "$n"
        await_node "$n" "$LAUNCHED_PID" || {
            show_logs "$n"
            die "node $n did not start"
        }
    fi
    log "node $n ($(node_name "$n")) running in $(elapsed "$t0")"
}

cmd_node_kill() {
    set_dir "${1:-}"
    check_index "${2:-}"
    load_cluster
    local n=$2 pid
    pid=$(beam_pid "$n")
    [[ -n "$pid" ]] || die "node $n ($(node_name "$n")) is not running"
    kill -KILL "$pid"
    wait_gone 10 "$pid" || die "beam.smp $pid of node $n survived SIGKILL"
    log "killed node $n ($(node_name "$n")), beam.smp pid $pid"
}

# first_up: the index of the first node whose rabbit app answers.
first_up() {
    local n
    for ((n = 1; n <= NODE_COUNT; n++)); do
        [[ -n "$(beam_pid "$n")" ]] || continue
        if ctl "$n" eval 'rabbit:is_running().' 2>/dev/null | grep -qx true; then
            echo "$n"
            return 0
        fi
    done
    die "no node of the cluster in $DIR is running"
}

node_index() { # node_index NAME -> N, or nothing
    local n
    for ((n = 1; n <= NODE_COUNT; n++)); do
        [[ "$1" != "$(node_name "$n")" ]] || {
            echo "$n"
            return 0
        }
    done
}

# queue_info QUEUE VHOST COLUMN: the column of the queue, from any node.
queue_info() {
    local q=$1 vhost=$2 col=$3 up out
    up=$(first_up)
    out=$(ctl "$up" list_queues -p "$vhost" --no-table-headers --quiet name "$col") ||
        die "list_queues failed on node $up"
    awk -F'\t' -v q="$q" '$1 == q { print $2; found = 1 } END { exit !found }' <<<"$out" ||
        die "no queue '$q' in vhost '$vhost'"
}

cmd_leader() {
    set_dir "${1:-}"
    [[ -n "${2:-}" ]] || usage
    load_cluster
    set_user
    local leader idx deadline
    # Right after the leader's node died the queue record still names it
    # until the election is over (about a second): wait for a live leader.
    deadline=$((SECONDS + 30))
    while :; do
        leader=$(queue_info "$2" "${3:-/}" leader)
        idx=$(node_index "$leader")
        [[ -n "$idx" ]] || die "queue '$2' has no leader in this cluster (leader: '$leader')"
        [[ -z "$(beam_pid "$idx")" ]] || break
        ((SECONDS < deadline)) || die "queue '$2': its leader $leader is down and no other node took over within 30 s"
        sleep 1
    done
    echo "LEADER_INDEX=$idx"
    echo "LEADER_NODE=$leader"
}

cmd_members() {
    set_dir "${1:-}"
    [[ -n "${2:-}" ]] || usage
    load_cluster
    set_user
    local raw m out=()
    raw=$(queue_info "$2" "${3:-/}" members)
    # raw is like [las5701@localhost, las5703@localhost]; print in node order.
    for ((n = 1; n <= NODE_COUNT; n++)); do
        m=$(node_name "$n")
        grep -qE "(^|[^a-z0-9_])${m}([^a-z0-9_]|$)" <<<"$raw" && out+=("$m")
    done
    local IFS=,
    echo "MEMBERS=${out[*]}"
}

# wait_alarm N on|off: until check_local_alarms of node N reports the state.
wait_alarm() {
    local n=$1 want=$2 deadline
    deadline=$((SECONDS + 30))
    while ((SECONDS < deadline)); do
        if tool "$n" rabbitmq-diagnostics check_local_alarms >/dev/null 2>&1; then
            [[ $want == off ]] && return 0
        else
            [[ $want == on ]] && return 0
        fi
        sleep 0.5
    done
    die "node $n: memory alarm not $want after 30 s"
}

cmd_alarm() {
    local state=$1
    set_dir "${2:-}"
    check_index "${3:-}"
    load_cluster
    set_user
    local n=$3
    if [[ $state == on ]]; then
        # 0 raises the alarm at once (documented way to block all publishing).
        ctl "$n" set_vm_memory_high_watermark 0 >/dev/null
    else
        ctl "$n" set_vm_memory_high_watermark "$WATERMARK" >/dev/null
    fi
    wait_alarm "$n" "$state"
    log "node $n ($(node_name "$n")): memory alarm $state"
}

cmd_tool() {
    local t=$1
    set_dir "${2:-}"
    check_index "${3:-}"
    load_cluster
    set_user
    local n=$3
    shift 3
    tool "$n" "$t" "$@"
}

main() {
    local sub=${1:-}
    [[ -n "$sub" ]] || usage
    shift
    case "$sub" in
    start) cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    urls)
        set_dir "${1:-}"
        load_cluster
        print_urls
        ;;
    status)
        set_dir "${1:-}"
        load_cluster
        set_user
        ctl "$(first_up)" cluster_status
        ;;
    node-stop) cmd_node_stop "$@" ;;
    node-start) cmd_node_start "$@" ;;
    node-kill) cmd_node_kill "$@" ;;
    leader) cmd_leader "$@" ;;
    members) cmd_members "$@" ;;
    alarm-on) cmd_alarm on "$@" ;;
    alarm-off) cmd_alarm off "$@" ;;
    ctl) cmd_tool rabbitmqctl "$@" ;;
    queues) cmd_tool rabbitmq-queues "$@" ;;
    diag) cmd_tool rabbitmq-diagnostics "$@" ;;
    -h | --help | help) usage ;;
    *)
        log "unknown subcommand '$sub'"
        usage
        ;;
    esac
}

main "$@"
