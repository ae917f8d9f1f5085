#!/usr/bin/env bash
# End-to-end demo of las-worker on this machine: two schools are linked, their
# LAS exports flow through RabbitMQ into PostgreSQL, one bad message is
# dead-lettered, and the result is shown.
#
# The demo has its own database (las_worker_demo) and RabbitMQ vhost
# (las-demo), both wiped at the start, so it can be run again and again and
# never touches the development database or the tests' vhosts.
#
#   scripts/demo.sh           run the demo (make demo)
#   scripts/demo.sh --clean   stop a leftover demo worker, drop the demo
#                             database and vhost, remove .demo/ (make clean-demo)
#
# Environment: DEMO_METRICS_ADDR [127.0.0.1:19464], PGHOST/PGPORT, AMQP_HOST/AMQP_PORT.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"

PGHOST="${PGHOST:-127.0.0.1}"
PGPORT="${PGPORT:-5432}"
AMQP_HOST="${AMQP_HOST:-127.0.0.1}"
AMQP_PORT="${AMQP_PORT:-5672}"
DEMO_DB="las_worker_demo"
DEMO_VHOST="las-demo"
METRICS_ADDR_DEMO="${DEMO_METRICS_ADDR:-127.0.0.1:19464}"
METRICS_URL="http://$METRICS_ADDR_DEMO"
DEMO_DIR="$ROOT/.demo"
WORKER_LOG="$DEMO_DIR/worker.log"
WORKER_PID_FILE="$DEMO_DIR/worker.pid"
BIN="$ROOT/target/debug/las-worker"
EXAMPLES="$ROOT/contracts/examples"

export DATABASE_URL="postgres://postgres@$PGHOST:$PGPORT/$DEMO_DB"
export AMQP_URL="amqp://guest:guest@$AMQP_HOST:$AMQP_PORT/$DEMO_VHOST"

if [ -t 1 ]; then
    BOLD=$'\e[1m' DIM=$'\e[2m' GREEN=$'\e[32m' RED=$'\e[31m' RESET=$'\e[0m'
else
    BOLD='' DIM='' GREEN='' RED='' RESET=''
fi

STEP=0
step() {
    STEP=$((STEP + 1))
    printf '\n%s==> %d. %s%s\n' "$BOLD" "$STEP" "$*" "$RESET"
}
heading() {
    printf '\n%s---- %s %s%s\n' "$BOLD" "$*" "$(printf -- '-%.0s' $(seq 1 $((60 - ${#1}))))" "$RESET"
}
info() { printf '    %s\n' "$*"; }
note() { printf '    %s%s%s\n' "$DIM" "$*" "$RESET"; }
ok() { printf '    %s✔ %s%s\n' "$GREEN" "$*" "$RESET"; }
die() {
    printf '\n%sdemo: ERROR: %s%s\n' "$RED" "$*" "$RESET" >&2
    exit 1
}
have() { command -v "$1" >/dev/null 2>&1; }

# The CLI with quiet logs: only warnings and errors, readable.
cli() { LOG_FORMAT=pretty RUST_LOG=warn "$BIN" "$@"; }
psql_admin() { psql -X -w -q -h "$PGHOST" -p "$PGPORT" -U postgres -d postgres -v ON_ERROR_STOP=1 "$@"; }

# Stops a demo worker left over from an interrupted run (only the one whose
# pid this script recorded, and only when it still is las-worker).
stop_leftover_worker() {
    [ -f "$WORKER_PID_FILE" ] || return 0
    local pid
    pid="$(cat "$WORKER_PID_FILE")"
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null \
        && grep -q las-worker "/proc/$pid/cmdline" 2>/dev/null; then
        info "stopping the demo worker left over from an earlier run (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 30); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 1
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$WORKER_PID_FILE"
}

drop_demo_database() {
    # FORCE (PostgreSQL 13+) ends sessions a crashed earlier run left behind.
    psql_admin -c "DROP DATABASE IF EXISTS $DEMO_DB WITH (FORCE)" 2>/dev/null \
        || psql_admin -c "DROP DATABASE IF EXISTS $DEMO_DB"
}

delete_demo_vhost() {
    if rabbitmqctl -q list_vhosts 2>/dev/null | grep -qx "$DEMO_VHOST"; then
        rabbitmqctl -q delete_vhost "$DEMO_VHOST" >/dev/null
    fi
}

if [ "${1:-}" = "--clean" ]; then
    stop_leftover_worker
    drop_demo_database && echo "dropped database $DEMO_DB"
    delete_demo_vhost && echo "deleted vhost $DEMO_VHOST"
    rm -rf "$DEMO_DIR" && echo "removed .demo/"
    exit 0
elif [ $# -gt 0 ]; then
    echo "usage: $0 [--clean]" >&2
    exit 2
fi

for tool in cargo curl psql rabbitmqctl; do
    have "$tool" || die "'$tool' is needed for the demo but is not installed"
done

# --- Messages counted on /metrics -------------------------------------------

metric_lines() { curl -fsS --max-time 2 "$METRICS_URL/metrics" 2>/dev/null | grep -E "^$1(\{| )" || true; }
# Sum of all las_messages_total series: every message the worker handled,
# whatever the outcome (applied, duplicate, stale, rejected).
messages_handled() { metric_lines las_messages_total | awk '{ s += $NF } END { print s + 0 }'; }

# queue_messages QUEUE: messages in a queue of the demo vhost, as RabbitMQ reports them.
queue_messages() {
    rabbitmqctl -s list_queues -p "$DEMO_VHOST" name messages 2>/dev/null \
        | awk -v q="$1" '$1 == q { print $2 }'
}

worker_alive() { [ -n "${WORKER_PID:-}" ] && kill -0 "$WORKER_PID" 2>/dev/null; }

show_worker_log_tail() {
    if [ -s "$WORKER_LOG" ]; then
        echo "---- last lines of $WORKER_LOG:" >&2
        tail -n 20 "$WORKER_LOG" >&2
    fi
}

# wait_handled N TIMEOUT: waits until the worker handled N messages.
wait_handled() {
    local want="$1" timeout="$2" got=0 i
    for ((i = 0; i < timeout * 4; i++)); do
        worker_alive || { show_worker_log_tail; die "the worker stopped unexpectedly"; }
        got="$(messages_handled)"
        [ "$got" -ge "$want" ] && return 0
        sleep 0.25
    done
    show_worker_log_tail
    die "the worker handled $got of $want messages within ${timeout}s"
}

# --- Clean up whatever happens ------------------------------------------------

WORKER_PID=""
WORKER_STARTED=""
cleanup() {
    local rc=$?
    if worker_alive; then
        echo "demo: stopping the worker (pid $WORKER_PID)" >&2
        kill -TERM "$WORKER_PID" 2>/dev/null || true
        wait "$WORKER_PID" 2>/dev/null || true
    fi
    rm -f "$WORKER_PID_FILE"
    if [ "$rc" -ne 0 ]; then
        if [ -n "$WORKER_STARTED" ]; then
            echo "demo: failed (exit $rc); the worker's log is in .demo/worker.log" >&2
        else
            echo "demo: failed (exit $rc)" >&2
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------------------------

printf '%slas-worker demo%s: two schools, from LAS export to portal profiles\n' "$BOLD" "$RESET"

step "Build las-worker"
note "cargo build -p las-worker (quiet; the first build takes a few minutes)"
cargo build -q -p las-worker
ok "built $(basename "$BIN") ($("$BIN" --version))"

step "Check PostgreSQL and RabbitMQ"
if ! bash "$ROOT/scripts/check-services.sh" | sed 's/^/    /'; then
    die "PostgreSQL or RabbitMQ is not ready (see above)"
fi

step "Fresh demo database and RabbitMQ vhost"
mkdir -p "$DEMO_DIR"
stop_leftover_worker
if curl -fsS --max-time 2 -o /dev/null "$METRICS_URL/healthz" 2>/dev/null; then
    die "something already listens on $METRICS_ADDR_DEMO; stop it or set DEMO_METRICS_ADDR"
fi
drop_demo_database
info "database $DEMO_DB dropped"
delete_demo_vhost
rabbitmqctl -q add_vhost "$DEMO_VHOST" >/dev/null
rabbitmqctl -q set_permissions -p "$DEMO_VHOST" guest ".*" ".*" ".*" >/dev/null
info "vhost $DEMO_VHOST (re)created, empty, guest may use it"
cli migrate
ok "database $DEMO_DB created and migrated (las-worker migrate)"
note "DATABASE_URL=$DATABASE_URL"
note "AMQP_URL=$AMQP_URL"

step "Start the worker in the background"
: >"$WORKER_LOG"
LOG_FORMAT=json METRICS_ADDR="$METRICS_ADDR_DEMO" "$BIN" run >>"$WORKER_LOG" 2>&1 &
WORKER_PID=$!
WORKER_STARTED=1
echo "$WORKER_PID" >"$WORKER_PID_FILE"
info "las-worker run, pid $WORKER_PID, JSON logs in .demo/worker.log"
for ((i = 0; i < 120; i++)); do
    worker_alive || { show_worker_log_tail; die "the worker exited during start-up"; }
    code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$METRICS_URL/readyz" 2>/dev/null || true)"
    [ "$code" = "200" ] && break
    sleep 0.25
done
[ "$code" = "200" ] || { show_worker_log_tail; die "$METRICS_URL/readyz did not answer 200 within 30 s (last: $code)"; }
ok "ready: $METRICS_URL/readyz answers 200"

step "Link the two schools to their portal"
cli publish "$EXAMPLES/link.parnassys.json" "$EXAMPLES/link.esis.json" | sed 's/^/    /'
info "12AB -> ParnasSys (link.parnassys.json), 34CD -> ESIS (link.esis.json)"
# Links and LAS changes travel through different queues; wait until both
# links are applied so the changes find their schools linked.
wait_handled 2 15
ok "both links applied"

step "Send the LAS changes, a school-year rollover and one bad message"
BROKEN="$DEMO_DIR/unknown-brin.json"
uuid="$(cat /proc/sys/kernel/random/uuid 2>/dev/null || echo 00000000-0000-4000-8000-00000000dead)"
# The first change of 12AB, but for school 99ZZ, which no portal is linked to.
head -n 1 "$EXAMPLES/school-12AB.ndjson" \
    | sed -e 's/"brin":"12AB"/"brin":"99ZZ"/' \
        -e "s/\"message_id\":\"[^\"]*\"/\"message_id\":\"$uuid\"/" >"$BROKEN"
n12="$(grep -c . "$EXAMPLES/school-12AB.ndjson")"
n34="$(grep -c . "$EXAMPLES/school-34CD.ndjson")"
cli publish "$EXAMPLES/school-12AB.ndjson" "$EXAMPLES/school-34CD.ndjson" \
    "$EXAMPLES/school_year.rolled_over.json" "$BROKEN" | sed 's/^/    /'
info "school-12AB.ndjson        $n12 changes (groups, students, guardians, staff)"
info "school-34CD.ndjson        $n34 changes"
info "school_year.rolled_over   1 change (12AB moves to the next school year)"
info "unknown-brin.json         1 change for school 99ZZ, which has no portal"
PUBLISHED=$((2 + n12 + n34 + 1 + 1))
wait_handled "$PUBLISHED" 30
ok "the worker handled all $PUBLISHED messages"

# ------------------------------------------------------------------------------

heading "Profiles per school (las-worker summary)"
cli summary | sed 's/^/    /'

# Las keys from contracts/examples/school-12AB.ndjson.
for who in student:L1001 guardian:O2001 staff:M3001; do
    kind="${who%%:*}" key="${who#*:}"
    heading "The $kind $key of school 12AB"
    note "las-worker show --brin 12AB --kind $kind --las-key $key"
    cli show --brin 12AB --kind "$kind" --las-key "$key" </dev/null | sed 's/^/    /' \
        || info "(no $kind with las key $key)"
done

heading "Queues in vhost $DEMO_VHOST (rabbitmqctl list_queues)"
DEAD_LETTERS="$(metric_lines las_dead_letters_total | awk '{ s += $NF } END { print s + 0 }')"
# rabbitmqctl's message counts of quorum queues lag a few seconds behind.
for ((i = 0; i < 40; i++)); do
    [ "$(queue_messages las-worker.dead-letter)" = "$DEAD_LETTERS" ] && break
    sleep 0.25
done
{
    echo "queue messages"
    rabbitmqctl -s list_queues -p "$DEMO_VHOST" name messages 2>/dev/null | sort
} | { if have column; then column -t; else cat; fi; } | sed 's/^/    /'
echo
info "Why the worker dead-lettered messages (from .demo/worker.log; the same"
info "reason travels with each message as headers x-las-reason-code and x-las-reason):"
grep -F 'message rejected to the dead-letter queue' "$WORKER_LOG" | while IFS= read -r line; do
    if have jq && reason="$(jq -r '"\(.fields.reason): \(.fields.detail)"' <<<"$line" 2>/dev/null)"; then
        info "  - $reason"
    else
        info "  - $line"
    fi
done

heading "Counters from $METRICS_URL/metrics"
FINAL_METRICS="$(metric_lines las_messages_total | sort; metric_lines las_dead_letters_total | sort)"
# shellcheck disable=SC2001
sed 's/^/    /' <<<"$FINAL_METRICS"

step "Stop the worker (SIGTERM)"
kill -TERM "$WORKER_PID"
rc=0
wait "$WORKER_PID" || rc=$?
rm -f "$WORKER_PID_FILE"
[ "$rc" -eq 0 ] || die "the worker exited with $rc after SIGTERM"
ok "the worker finished its batch in flight and exited 0"
WORKER_PID=""

ROLLOVER_OUTCOME="$(grep -F 'type="school_year.rolled_over"' <<<"$FINAL_METRICS" \
    | sed -n 's/.*outcome="\([a-z]*\)".*/\1/p' | head -n 1)"
if [ "$ROLLOVER_OUTCOME" = "rejected" ]; then
    ROLLOVER_TEXT="  * The school-year rollover of 12AB was not applied: this worker version
    does not implement it yet (rule R11), so it went to the dead-letter queue
    as 'unsupported', kept to be replayed after an upgrade."
else
    ROLLOVER_TEXT="  * The school-year rollover of 12AB came after the changes in the same
    queue and was handled in order (outcome: ${ROLLOVER_OUTCOME:-unknown})."
fi

cat <<EOF

${BOLD}What you just saw${RESET}
  * The portal linked school 12AB to ParnasSys and 34CD to ESIS
    (portal.link.v1 messages on exchange portal.requests).
  * The LAS exports of both schools arrived as las.change.v1 messages on
    exchange las.changes. The worker applied them in batches, one database
    transaction per batch, and turned them into portal profiles: the
    summary counts them per school, kind and status, and 'show' prints one.
$ROLLOVER_TEXT
  * The change for school 99ZZ was refused (no portal is linked to it) and
    moved to the dead-letter queue with its reason in the headers, instead
    of being retried forever or silently dropped.
  * The dead-letter queue las-worker.dead-letter now holds $DEAD_LETTERS message(s),
    each with its reason (headers x-las-reason-code, x-las-reason), waiting
    for a person to fix the cause and replay them.
  * /metrics counts every message by type and outcome; /readyz told us when
    the worker was consuming. On SIGTERM the worker finished its batch and
    stopped cleanly.

  Look further:   less .demo/worker.log      (the worker's JSON log)
                  DATABASE_URL=$DATABASE_URL \\
                    ./target/debug/las-worker summary
  Run again:      make demo    (starts from scratch every time)
  Clean up:       make clean-demo
EOF
