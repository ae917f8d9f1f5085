#!/usr/bin/env bash
# End-to-end demo of las-worker on this machine: the go-live of a school that
# already uses the portal. Two schools are linked; 12AB's existing accounts are
# coupled to their LAS records (by e-mail, and one by the school's decision),
# the first run renames a school-made group and keeps its items, a parent's
# edit becomes a suggestion e-mail, another service receives the sync events,
# and one bad message is dead-lettered.
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

printf '%slas-worker demo%s: go-live at a school that already uses the portal\n' "$BOLD" "$RESET"

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
LOG_FORMAT=json METRICS_ADDR="$METRICS_ADDR_DEMO" MAIL_DIR="$DEMO_DIR/mail" "$BIN" run >>"$WORKER_LOG" 2>&1 &
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

step "Another service binds a queue to the sync events"
cli events bind --queue demo-sync-events | sed 's/^/    /'
note "las-worker events bind --queue demo-sync-events  (exchange las.sync-events, routing key #)"

step "Link the two schools to their portal"
cli publish "$EXAMPLES/link.parnassys.json" "$EXAMPLES/link.esis.json" | sed 's/^/    /'
info "12AB -> ParnasSys (link.parnassys.json), 34CD -> ESIS (link.esis.json)"
# Links and LAS changes travel through different queues; wait until both
# links are applied so the changes find their schools linked.
wait_handled 2 15
HANDLED=2
ok "both links applied"

step "The portal of 12AB before go-live: accounts, a school-made group, a link administrator"
note "(the demo plays the portal here and writes its rows with psql)"
psql_demo() { psql -X -w -q -h "$PGHOST" -p "$PGPORT" -U postgres -d "$DEMO_DB" -v ON_ERROR_STOP=1 "$@"; }
psql_demo <<'SQL'
WITH s AS (SELECT id FROM schools WHERE brin = '12AB')
INSERT INTO profiles (school_id, kind, las_key, status, first_name, last_name, email, role, preferences, last_login_at)
SELECT s.id, p.kind, NULL, 'active', p.first, p.last, p.email, p.role, '{"taal": "nl"}', now() - interval '2 days'
FROM s, (VALUES
    ('guardian', 'Marieke', 'V.', 'Marieke.Voorbeeld@example.org', NULL),
    ('guardian', 'Petra', 'de Proef', 'petra.deproef@example.org', NULL),
    ('guardian', 'P.', 'de Proef', 'petra.deproef@example.org', NULL),
    ('staff', 'Oud', 'Teamlid', 'oud.teamlid@example.org', 'Intern begeleider')) AS p(kind, first, last, email, role);
WITH s AS (SELECT id FROM schools WHERE brin = '12AB'),
     g AS (INSERT INTO portal_groups (school_id, name, group_type) SELECT id, 'Groep 3A', 'year' FROM s RETURNING id, school_id)
INSERT INTO group_items (school_id, group_id, item_type, title)
SELECT g.school_id, g.id, t.type, t.title FROM g, (VALUES ('news', 'Welkom in groep 3'), ('photo_album', 'Schoolreisje')) AS t(type, title);
INSERT INTO portal_users (school_id, display_name, email, role)
SELECT id, 'Juf Anouk (koppelbeheerder)', 'koppeling@school12ab.example', 'link_admin' FROM schools WHERE brin = '12AB';
SQL
{
    echo "id kind name e-mail las_key"
    psql_demo -At -F ' ' -c "SELECT p.id, p.kind, replace(p.first_name || '_' || p.last_name, ' ', '_'), p.email, coalesce(p.las_key, '(none)') FROM profiles p ORDER BY p.id"
} | { if have column; then column -t; else cat; fi; } | sed 's/^/    /'
GROUP_3A="$(psql_demo -At -c "SELECT id FROM portal_groups WHERE name = 'Groep 3A'")"
info "portal group $GROUP_3A 'Groep 3A' (made by the school) with 2 group-bound items; a link administrator receives suggestions"

step "Rehearse the go-live: import --dry-run of 12AB's full export"
note "las-worker import --dry-run --summary-only contracts/examples/school-12AB.ndjson"
cli import --dry-run --summary-only "$EXAMPLES/school-12AB.ndjson" 2>/dev/null | grep -E '^(dry run|messages|coupling)' | sed 's/^/    /'

step "Go live: the LAS exports arrive, with one bad message"
BROKEN="$DEMO_DIR/unknown-brin.json"
uuid() { cat /proc/sys/kernel/random/uuid 2>/dev/null || echo "00000000-0000-4000-8000-$(printf '%012d' "$RANDOM")"; }
# The first change of 12AB, but for school 99ZZ, which no portal is linked to.
head -n 1 "$EXAMPLES/school-12AB.ndjson" \
    | sed -e 's/"brin":"12AB"/"brin":"99ZZ"/' \
        -e "s/\"message_id\":\"[^\"]*\"/\"message_id\":\"$(uuid)\"/" >"$BROKEN"
n12="$(grep -c . "$EXAMPLES/school-12AB.ndjson")"
n34="$(grep -c . "$EXAMPLES/school-34CD.ndjson")"
cli publish "$EXAMPLES/school-12AB.ndjson" "$EXAMPLES/school-34CD.ndjson" "$BROKEN" | sed 's/^/    /'
info "school-12AB.ndjson        $n12 changes (groups, students, guardians, staff)"
info "school-34CD.ndjson        $n34 changes"
info "unknown-brin.json         1 change for school 99ZZ, which has no portal"
HANDLED=$((HANDLED + n12 + n34 + 1))
wait_handled "$HANDLED" 30
ok "the worker handled all $HANDLED messages so far"

step "First run: the school maps LAS group G3 onto its own 'Groep 3A'"
FIRST_RUN="$DEMO_DIR/link-first-run.json"
sed -e "s/\"message_id\": \"[^\"]*\"/\"message_id\": \"$(uuid)\"/" \
    -e "s/\"group_mapping\": null/\"group_mapping\": [{\"las_group_key\": \"G3\", \"portal_group_id\": $GROUP_3A}]/" \
    "$EXAMPLES/link.parnassys.json" >"$FIRST_RUN"
cli publish "$FIRST_RUN" | sed 's/^/    /'
HANDLED=$((HANDLED + 1))
wait_handled "$HANDLED" 15
{
    echo "id name las_key items"
    psql_demo -At -F ' ' -c "SELECT g.id, replace(coalesce(g.name, '-'), ' ', '_'), coalesce(g.las_key, '(none)'), (SELECT count(*) FROM group_items i WHERE i.group_id = g.id) FROM portal_groups g JOIN schools s ON s.id = g.school_id WHERE s.brin = '12AB' ORDER BY g.id"
} | { if have column; then column -t; else cat; fi; } | sed 's/^/    /'
ok "'Groep 3A' (id $GROUP_3A) is renamed to the LAS name 'Groep 3' at once and keeps its items (R7)"
note "the group the worker had made for G3 before the mapping is detached and empty: las-worker groups leftovers --brin 12AB"

heading "Niet gekoppelde profielen (las-worker profiles unlinked --brin 12AB)"
cli profiles unlinked --brin 12AB | sed 's/^/    /'
info "Marieke's account was coupled by its e-mail; the LAS record O2003 waits: two"
info "accounts share its e-mail. 'Oud Teamlid' is claimed by no LAS record."

step "The school couples O2003 to the first of the two accounts (portal.coupling.v1)"
PETRA="$(psql_demo -At -c "SELECT min(id) FROM profiles WHERE email = 'petra.deproef@example.org' AND las_key IS NULL")"
COUPLE="$DEMO_DIR/coupling.json"
printf '{"schema": "portal.coupling.v1", "message_id": "%s", "brin": "12AB", "action": "couple", "entity_kind": "guardian", "las_key": "O2003", "portal_profile_id": %s}\n' \
    "$(uuid)" "$PETRA" >"$COUPLE"
cli publish "$COUPLE" | sed 's/^/    /'
HANDLED=$((HANDLED + 1))
wait_handled "$HANDLED" 15
ok "guardian O2003 is portal profile $PETRA now: $(psql_demo -At -c "SELECT las_key FROM profiles WHERE id = $PETRA")"

step "Marieke proposes a new address and mobile number in the portal (portal.parent_edit.v1)"
cli publish "$EXAMPLES/parent_edit.json" | sed 's/^/    /'
HANDLED=$((HANDLED + 1))
wait_handled "$HANDLED" 15
for ((i = 0; i < 40; i++)); do
    EML="$(find "$DEMO_DIR/mail" -name '*.eml' 2>/dev/null | head -n 1)"
    [ -n "$EML" ] && break
    sleep 0.25
done
[ -n "$EML" ] || die "no suggestion e-mail appeared in .demo/mail"
heading "The suggestion e-mail to the school (R10), $(basename "$EML")"
# The plain-text part; the HTML part below it says the same.
sed '/^Content-Type: text\/html/,$d' "$EML" | sed 's/^/    /'

heading "Profiles per school (las-worker summary)"
cli summary | sed 's/^/    /'

heading "Marieke's account after go-live (las-worker show --brin 12AB --kind guardian --las-key O2001)"
cli show --brin 12AB --kind guardian --las-key O2001 </dev/null | sed 's/^/    /'

heading "Sync events another service received (las-worker events take --queue demo-sync-events)"
EVENTS="$DEMO_DIR/sync-events.ndjson"
: >"$EVENTS"
# The relay publishes after the commit: wait for both couplings' events.
for ((i = 0; i < 40; i++)); do
    cli events take --queue demo-sync-events >>"$EVENTS"
    [ "$(grep -c '"profile.coupled"' "$EVENTS")" -ge 2 ] && break
    sleep 0.25
done
sed -n 's/.*"event_type":"\([a-z._]*\)".*/\1/p' "$EVENTS" | sort | uniq -c | sed 's/^/    /'
info "the couplings (ids only, never names):"
grep -F '"profile.coupled"' "$EVENTS" | sed 's/^/      /'

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

cat <<EOF

${BOLD}What you just saw: a go-live at a school that already uses the portal${RESET}
  * The portal linked school 12AB to ParnasSys and 34CD to ESIS
    (portal.link.v1 on exchange portal.requests).
  * 12AB already had accounts. A dry run of its export showed the coupling
    plan before anything was written (R13).
  * The LAS exports arrived as las.change.v1 on exchange las.changes. Marieke's
    account was coupled to her LAS record by its e-mail: she keeps her login and
    preferences, and the LAS's fields replace the portal's (R1-R5). The record
    whose e-mail two accounts share waited, invisible, until the school coupled
    it with a portal.coupling.v1 message. 'Oud Teamlid' is listed as claimed by
    no LAS record: the LAS will never sync it.
  * The first run mapped LAS group G3 onto the school's 'Groep 3A': it took the
    LAS name at once and kept its news item and photo album (R7).
  * A parent's edit did not change the portal (the LAS is leading) but became a
    suggestion e-mail to the school's link administrator (R10).
  * Another service's queue received the sync events: profile.coupled for the
    couplings, profile.created for the new profiles, ids only.
  * The change for school 99ZZ was refused (no portal is linked to it) and
    moved to the dead-letter queue with its reason in the headers; it holds
    $DEAD_LETTERS message(s) now, waiting for a person to fix and replay them.
  * /metrics counts every message by type and outcome; on SIGTERM the worker
    finished its batch and stopped cleanly.

  Look further:   less .demo/worker.log      (the worker's JSON log)
                  DATABASE_URL=$DATABASE_URL \\
                    ./target/debug/las-worker summary
  Run again:      make demo    (starts from scratch every time)
  Clean up:       make clean-demo
EOF
