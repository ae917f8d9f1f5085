#!/usr/bin/env bash
# Checks that PostgreSQL and RabbitMQ are reachable before the tests or the
# demo run. When one is down and it is installed on this machine, tries to
# start it and waits for it. Exits non-zero, with a message that says what to
# do, when a service still cannot be reached.
#
# Environment (defaults in brackets):
#   PGHOST [127.0.0.1]  PGPORT [5432]   AMQP_HOST [127.0.0.1]  AMQP_PORT [5672]
#   SERVICE_WAIT_SECONDS [60]  how long to wait for a service that was started
set -uo pipefail

PGHOST="${PGHOST:-127.0.0.1}"
PGPORT="${PGPORT:-5432}"
AMQP_HOST="${AMQP_HOST:-127.0.0.1}"
AMQP_PORT="${AMQP_PORT:-5672}"
WAIT="${SERVICE_WAIT_SECONDS:-60}"

say() { printf 'check-services: %s\n' "$*"; }
err() { printf 'check-services: ERROR: %s\n' "$*" >&2; }
have() { command -v "$1" >/dev/null 2>&1; }

is_local() {
    case "$1" in
        127.* | localhost | ::1 | /*) return 0 ;;
        *) return 1 ;;
    esac
}

# Runs a command as root: directly when we are root, else through
# passwordless sudo when that is available.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif have sudo && sudo -n true 2>/dev/null; then
        sudo -n "$@"
    else
        return 1
    fi
}

# True when a TCP connection to host:port succeeds within 2 seconds.
tcp_open() {
    # shellcheck disable=SC2016 # $1/$2 expand in the inner bash, on purpose
    timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" >/dev/null 2>&1
}

pg_up() {
    if have pg_isready; then
        pg_isready -q -h "$PGHOST" -p "$PGPORT" -t 2 >/dev/null 2>&1
    elif [[ "$PGHOST" == /* ]]; then
        [ -S "$PGHOST/.s.PGSQL.$PGPORT" ]
    else
        tcp_open "$PGHOST" "$PGPORT"
    fi
}

amqp_up() { tcp_open "$AMQP_HOST" "$AMQP_PORT"; }

# wait_for NAME CHECK_FUNCTION: polls for up to $WAIT seconds.
wait_for() {
    local name="$1" check="$2" waited=0
    while ! "$check"; do
        if [ "$waited" -ge "$WAIT" ]; then
            say "gave up waiting for $name after ${WAIT}s"
            return 1
        fi
        if [ $((waited % 10)) -eq 0 ] && [ "$waited" -gt 0 ]; then
            say "  still waiting for $name (${waited}s)..."
        fi
        sleep 1
        waited=$((waited + 1))
    done
    return 0
}

# pg_start VERSION CLUSTER: true when the cluster was started or was already
# running (pg_ctlcluster exits 2 then; it may still be starting up).
pg_start() {
    local rc=0
    as_root pg_ctlcluster --skip-systemctl-redirect "$1" "$2" start || rc=$?
    [ "$rc" -eq 0 ] || [ "$rc" -eq 2 ]
}

start_postgres() {
    if ! have pg_ctlcluster; then
        say "pg_ctlcluster is not installed here; cannot start PostgreSQL"
        return 1
    fi
    local started=1 ver cluster port _rest
    if have pg_lsclusters; then
        while read -r ver cluster port _rest; do
            [ "$port" = "$PGPORT" ] || continue
            say "starting PostgreSQL cluster $ver/$cluster (port $port)"
            pg_start "$ver" "$cluster" && started=0
        done < <(pg_lsclusters -h 2>/dev/null)
    elif [ -d /etc/postgresql ]; then
        for ver in /etc/postgresql/*/; do
            ver="$(basename "$ver")"
            [ -d "/etc/postgresql/$ver/main" ] || continue
            say "starting PostgreSQL cluster $ver/main"
            pg_start "$ver" main && started=0
        done
    fi
    [ "$started" -eq 0 ] || say "found no PostgreSQL cluster for port $PGPORT that this script could start"
    return "$started"
}

start_rabbitmq() {
    if ! have rabbitmq-server; then
        say "rabbitmq-server is not installed here; cannot start RabbitMQ"
        return 1
    fi
    say "starting RabbitMQ (rabbitmq-server -detached; this takes 10-20 s)"
    as_root rabbitmq-server -detached >/dev/null 2>&1
}

how_to_fix() {
    local what="$1"
    cat >&2 <<EOF

  $what must be running for the end-to-end tests and the demo.
  Do one of these, then run this check again (bash scripts/check-services.sh):

    * Debian/Ubuntu, services on this machine:
        apt-get install postgresql rabbitmq-server
        pg_ctlcluster --skip-systemctl-redirect \$(ls /etc/postgresql) main start
        rabbitmq-server -detached
EOF
    if have docker; then
        cat >&2 <<EOF
    * With Docker (engine and compose plugin required):
        docker compose -f deploy/compose.yaml up -d
EOF
    fi
    cat >&2 <<EOF
    * Services elsewhere: set PGHOST/PGPORT and AMQP_HOST/AMQP_PORT
      (currently PostgreSQL $PGHOST:$PGPORT, RabbitMQ $AMQP_HOST:$AMQP_PORT).

EOF
}

failed=0

# try_start NAME HOST START_FUNCTION CHECK_FUNCTION
try_start() {
    if ! is_local "$2"; then
        say "$1 at $2 is not on this machine; not trying to start it"
        return 1
    fi
    "$3" && wait_for "$1" "$4"
}

# --- PostgreSQL -------------------------------------------------------------
if pg_up; then
    say "PostgreSQL is up at $PGHOST:$PGPORT"
else
    say "PostgreSQL is not reachable at $PGHOST:$PGPORT"
    if try_start PostgreSQL "$PGHOST" start_postgres pg_up; then
        say "PostgreSQL is up at $PGHOST:$PGPORT"
    else
        err "PostgreSQL is not reachable at $PGHOST:$PGPORT"
        how_to_fix PostgreSQL
        failed=1
    fi
fi

# --- RabbitMQ ---------------------------------------------------------------
if amqp_up; then
    say "RabbitMQ is up at $AMQP_HOST:$AMQP_PORT"
else
    say "RabbitMQ is not reachable at $AMQP_HOST:$AMQP_PORT"
    if try_start RabbitMQ "$AMQP_HOST" start_rabbitmq amqp_up; then
        say "RabbitMQ is up at $AMQP_HOST:$AMQP_PORT"
    else
        err "RabbitMQ is not reachable at $AMQP_HOST:$AMQP_PORT"
        how_to_fix RabbitMQ
        failed=1
    fi
fi

[ "$failed" -eq 0 ] || exit 1

# --- Deeper checks on local services ------------------------------------------
# The e2e tests log in as postgres without a password and create vhosts with
# rabbitmqctl, so a port that answers is not enough.
if is_local "$PGHOST" && have psql; then
    if out="$(psql -X -w -h "$PGHOST" -p "$PGPORT" -U postgres -d postgres -Atqc 'select 1' 2>&1)" \
        && [ "$out" = "1" ]; then
        say "PostgreSQL accepts 'psql -U postgres' without a password"
    else
        err "PostgreSQL is up, but 'psql -h $PGHOST -p $PGPORT -U postgres -c \"select 1\"' failed:"
        printf '    %s\n' "$out" >&2
        cat >&2 <<EOF

  The tests connect as user postgres without a password. Allow that for local
  connections, e.g. in pg_hba.conf:
      host all all 127.0.0.1/32 trust
      host all all ::1/128      trust
  then reload: pg_ctlcluster --skip-systemctl-redirect \$(ls /etc/postgresql) main reload

EOF
        failed=1
    fi
fi

# As the current user: that is how the tests call it.
rabbitmqctl_ok() { rabbitmqctl -q list_vhosts >/dev/null 2>&1; }
if is_local "$AMQP_HOST" && have rabbitmqctl; then
    # Right after a start the port may answer before the CLI tools can talk to
    # the node; give it the same grace period.
    if rabbitmqctl_ok || wait_for "rabbitmqctl" rabbitmqctl_ok; then
        say "rabbitmqctl list_vhosts works"
    else
        err "RabbitMQ is up, but 'rabbitmqctl list_vhosts' failed:"
        rabbitmqctl list_vhosts 2>&1 | sed 's/^/    /' >&2
        cat >&2 <<EOF

  The e2e tests create a vhost per test with rabbitmqctl. Run them as root (or
  as a user that can read the node's Erlang cookie, ~/.erlang.cookie of the
  rabbitmq user), and make sure the node is fully booted:
      rabbitmqctl await_startup

EOF
        failed=1
    fi
fi

[ "$failed" -eq 0 ] || exit 1
say "all services ready"
