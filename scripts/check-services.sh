#!/usr/bin/env bash
# Makes PostgreSQL and RabbitMQ ready for the tests and the demo (called by
# `make test` and `make demo`), or says exactly what to run.
#
# For a service on this machine (host 127.*, localhost, ::1 or a socket
# directory) that does not answer:
#   * not installed: installs it with apt-get when it can (root, or
#     passwordless sudo), and configures what the tests need:
#       PostgreSQL: trust for user postgres over TCP from 127.0.0.1 and ::1
#         (the tests connect to postgres://postgres@127.0.0.1:5432 without a
#         password), in the cluster the package has just created only; an
#         existing cluster's pg_hba.conf is never changed;
#       RabbitMQ: the package's defaults (guest/guest on port 5672); the node
#         is named rabbit@localhost when the host name does not resolve.
#     Without systemd the packages must not start anything themselves: a
#     policy-rc.d that denies it is in place during the install, unless one is
#     already there.
#   * installed but stopped: starts it (pg_ctlcluster, rabbitmq-server
#     -detached; through systemd when systemd runs) and waits for it.
# A service on another host is never started or installed. Then checks what
# the tests do: `psql -U postgres` logs in without a password and
# `rabbitmqctl` works for the current user. Exits 1, saying what to run,
# when something is still missing.
#
# Environment (defaults in brackets):
#   PGHOST [127.0.0.1]  PGPORT [5432]   AMQP_HOST [127.0.0.1]  AMQP_PORT [5672]
#   SERVICE_WAIT_SECONDS [60]  how long to wait for a service that was started
#   CHECK_SERVICES_INSTALL [auto]  "no": never install, only say what to run
# Hooks for scripts/test-check-services.sh (leave them unset):
#   CHECK_SERVICES_TCP_CMD  a command run as `CMD HOST PORT`, exit 0 when the
#                           port accepts connections (default: bash /dev/tcp)
#   LAS_SETUP_ROOT          prefix of the system paths this script reads and
#                           writes (/etc/postgresql, /etc/rabbitmq,
#                           /usr/sbin/policy-rc.d, /run/systemd/system)
set -uo pipefail

PGHOST="${PGHOST:-127.0.0.1}"
PGPORT="${PGPORT:-5432}"
AMQP_HOST="${AMQP_HOST:-127.0.0.1}"
AMQP_PORT="${AMQP_PORT:-5672}"
WAIT="${SERVICE_WAIT_SECONDS:-60}"
INSTALL="${CHECK_SERVICES_INSTALL:-auto}"
TCP_CMD="${CHECK_SERVICES_TCP_CMD:-}"
ROOT="${LAS_SETUP_ROOT:-}"
SELF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"

say() { printf 'check-services: %s\n' "$*"; }
err() { printf 'check-services: ERROR: %s\n' "$*" >&2; }
have() { command -v "$1" >/dev/null 2>&1; }

# The path of a command: on PATH, or in /usr/sbin (Debian installs
# rabbitmq-server and rabbitmqctl there, which is not on a user's PATH).
find_cmd() {
    if have "$1"; then
        command -v "$1"
    elif [ -x "$ROOT/usr/sbin/$1" ]; then
        printf '%s\n' "$ROOT/usr/sbin/$1"
    else
        return 1
    fi
}

is_local() {
    case "$1" in
        127.* | localhost | ::1 | /*) return 0 ;;
        *) return 1 ;;
    esac
}

is_root() { [ "$(id -u)" -eq 0 ]; }
have_sudo() { have sudo && sudo -n true 2>/dev/null; }
# "sudo " when commands this script prints for the user need it.
SUDO=""
is_root || SUDO="sudo "

# Runs a command as root: directly when we are root, else through
# passwordless sudo when that is available.
as_root() {
    if is_root; then
        "$@"
    elif have_sudo; then
        sudo -n "$@"
    else
        return 1
    fi
}

systemd_running() { [ -d "$ROOT/run/systemd/system" ]; }

# True when a TCP connection to host:port succeeds within 2 seconds.
tcp_open() {
    if [ -n "$TCP_CMD" ]; then
        "$TCP_CMD" "$1" "$2" >/dev/null 2>&1
        return
    fi
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

# --- Installing ---------------------------------------------------------------

POLICY="$ROOT/usr/sbin/policy-rc.d"
POLICY_MARK="# Written by las-worker scripts/check-services.sh for one apt-get install: services are started by that script."
remove_our_policy() {
    if [ -f "$POLICY" ] && grep -qF "$POLICY_MARK" "$POLICY" 2>/dev/null; then
        as_root rm -f "$POLICY"
    fi
}

# A UTF-8 locale for the install: pg_createcluster takes the new cluster's
# encoding from it, and without one it would be SQL_ASCII.
install_locale() {
    local cur="${LC_ALL:-${LC_CTYPE:-${LANG:-}}}"
    case "$cur" in
        *[Uu][Tt][Ff]-8* | *[Uu][Tt][Ff]8*) printf '%s\n' "$cur" ;;
        *) printf 'C.UTF-8\n' ;;
    esac
}

# apt_install PACKAGE...: apt-get update and install, as root.
apt_install() {
    local log rc=0 loc
    log="$(mktemp)"
    loc="$(install_locale)"
    if ! systemd_running && [ ! -e "$POLICY" ]; then
        # Without systemd the packages' init scripts would start the services
        # in a way this script does not manage, or fail the install.
        printf '#!/bin/sh\n%s\nexit 101\n' "$POLICY_MARK" | as_root tee "$POLICY" >/dev/null \
            && as_root chmod 755 "$POLICY"
        trap remove_our_policy EXIT
    fi
    local -a apt=(env DEBIAN_FRONTEND=noninteractive LANG="$loc" LC_ALL="$loc"
        apt-get -q -y -o DPkg::Lock::Timeout=300)
    as_root "${apt[@]}" update >"$log" 2>&1 \
        && as_root "${apt[@]}" install --no-install-recommends "$@" >>"$log" 2>&1 \
        || rc=$?
    remove_our_policy
    trap - EXIT
    if [ "$rc" -ne 0 ]; then
        err "apt-get install $* failed (exit $rc); its last lines:"
        tail -n 20 "$log" | sed 's/^/    /' >&2
    fi
    rm -f "$log"
    return "$rc"
}

# --- PostgreSQL -----------------------------------------------------------------

# pg_ctl_cluster VERSION CLUSTER ACTION, as root; through systemd when it runs.
pg_ctl_cluster() {
    if systemd_running; then
        as_root pg_ctlcluster "$1" "$2" "$3"
    else
        as_root pg_ctlcluster --skip-systemctl-redirect "$1" "$2" "$3"
    fi
}

# "VERSION CLUSTER STATUS" of each cluster on $PGPORT, one a line.
pg_clusters() {
    local ver cluster port status _rest
    if have pg_lsclusters; then
        pg_lsclusters -h 2>/dev/null | while read -r ver cluster port status _rest; do
            [ "$port" = "$PGPORT" ] && printf '%s %s %s\n' "$ver" "$cluster" "$status"
        done
    elif [ -d "$ROOT/etc/postgresql" ]; then
        for ver in "$ROOT"/etc/postgresql/*/; do
            ver="$(basename "$ver")"
            [ -d "$ROOT/etc/postgresql/$ver/main" ] && printf '%s main unknown\n' "$ver"
        done
    fi
    return 0
}

# The commands that start PostgreSQL here, for the user to run.
pg_start_commands() {
    local ver cluster _status listed=""
    while read -r ver cluster _status; do
        listed=1
        if systemd_running; then
            printf '%spg_ctlcluster %s %s start\n' "$SUDO" "$ver" "$cluster"
        else
            printf '%spg_ctlcluster --skip-systemctl-redirect %s %s start\n' "$SUDO" "$ver" "$cluster"
        fi
    done < <(pg_clusters)
    # shellcheck disable=SC2016 # a command for the user to run, not expanded here
    [ -n "$listed" ] || printf '%spg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start\n' "$SUDO"
}

start_postgres() {
    if ! have pg_ctlcluster; then
        say "pg_ctlcluster is not installed here; cannot start PostgreSQL"
        return 1
    fi
    local started=1 ver cluster _status rc
    while read -r ver cluster _status; do
        say "starting PostgreSQL cluster $ver/$cluster (port $PGPORT)"
        # Exit 2: already running (it may still be starting up).
        rc=0
        pg_ctl_cluster "$ver" "$cluster" start || rc=$?
        if [ "$rc" -eq 0 ] || [ "$rc" -eq 2 ]; then started=0; fi
    done < <(pg_clusters)
    [ "$started" -eq 0 ] || say "could not start a PostgreSQL cluster for port $PGPORT"
    return "$started"
}

PG_HBA_MARK="# Added by las-worker scripts/check-services.sh: the tests and the demo log in as postgres without a password, from this machine only."

# In the clusters an install has just created: trust for user postgres over
# TCP from this machine, before any other line so it wins.
configure_new_postgres() {
    local ver cluster status hba tmp done_one=1
    while read -r ver cluster status; do
        hba="$ROOT/etc/postgresql/$ver/$cluster/pg_hba.conf"
        if ! as_root test -f "$hba"; then
            say "no $hba; cannot allow the tests' password-less login"
            continue
        fi
        if as_root grep -qF "$PG_HBA_MARK" "$hba"; then
            done_one=0
            continue
        fi
        tmp="$(mktemp)"
        if ! {
            printf '%s\n' "$PG_HBA_MARK"
            printf 'host all postgres 127.0.0.1/32 trust\n'
            printf 'host all postgres ::1/128 trust\n\n'
            as_root cat "$hba"
        } >"$tmp" || ! as_root cp "$tmp" "$hba"; then
            rm -f "$tmp"
            err "could not write $hba"
            continue
        fi
        rm -f "$tmp"
        say "configured $hba: trust for user postgres from 127.0.0.1 and ::1"
        [ "$status" = "online" ] && pg_ctl_cluster "$ver" "$cluster" reload
        done_one=0
    done < <(pg_clusters)
    return "$done_one"
}

# --- RabbitMQ -------------------------------------------------------------------

rabbitmq_start_command() {
    if systemd_running; then
        printf '%ssystemctl start rabbitmq-server\n' "$SUDO"
    else
        printf '%srabbitmq-server -detached\n' "$SUDO"
    fi
}

start_rabbitmq() {
    local server
    if ! server="$(find_cmd rabbitmq-server)"; then
        say "rabbitmq-server is not installed here; cannot start RabbitMQ"
        return 1
    fi
    if systemd_running; then
        say "starting RabbitMQ (systemctl start rabbitmq-server; this takes 10-20 s)"
        as_root systemctl start rabbitmq-server
    else
        say "starting RabbitMQ (rabbitmq-server -detached; this takes 10-20 s)"
        as_root "$server" -detached >/dev/null 2>&1
    fi
}

# After an install without systemd: RabbitMQ names its node rabbit@<short host
# name> and does not boot when that name does not resolve (common in
# containers); rabbit@localhost always does.
configure_new_rabbitmq() {
    systemd_running && return 0
    local env="$ROOT/etc/rabbitmq/rabbitmq-env.conf" host
    grep -qs '^NODENAME=' "$env" && return 0
    host="$(hostname -s 2>/dev/null || true)"
    if [ -n "$host" ] && getent hosts "$host" >/dev/null 2>&1; then
        return 0
    fi
    say "host name '${host:-?}' does not resolve: naming the RabbitMQ node rabbit@localhost in $env"
    printf 'NODENAME=rabbit@localhost\n' | as_root tee -a "$env" >/dev/null
}

# --- What to do, when this script cannot ----------------------------------------

# how_to_fix WHAT HOST [START_COMMANDS]
how_to_fix() {
    local what="$1" host="$2" start="${3:-}"
    {
        printf '\n  %s must be running for the end-to-end tests and the demo.\n' "$what"
        printf '  Do one of these, then run make test (or make demo) again:\n\n'
        if [ -n "$start" ]; then
            printf '    * start it on this machine:\n'
            printf '%s\n' "$start" | sed 's/^/        /'
        else
            printf '    * start it on %s (this script starts only services on this machine)\n' "$host"
        fi
        if have docker; then
            printf '    * with Docker (engine and compose plugin required):\n'
            printf '        docker compose -f deploy/compose.yaml up -d\n'
        fi
        printf '    * for the demo, services elsewhere: set PGHOST/PGPORT and AMQP_HOST/AMQP_PORT\n'
        printf '      (currently PostgreSQL %s:%s, RabbitMQ %s:%s); the tests always\n' "$PGHOST" "$PGPORT" "$AMQP_HOST" "$AMQP_PORT"
        printf '      use 127.0.0.1:5432 and 127.0.0.1:5672.\n\n'
    } >&2
}

# how_to_install REASON PACKAGE...
how_to_install() {
    local reason="$1"
    shift
    err "not installed on this machine: $*; $reason"
    {
        if [ -n "${APT_FAILED:-}" ]; then
            printf '\n  Fix what apt-get reported, then run make test (or make demo) again.\n'
            printf '  By hand: %sapt-get update && %sapt-get install --no-install-recommends %s\n' "$SUDO" "$SUDO" "$*"
        elif have apt-get; then
            printf '\n  As root, run this script once; it installs them with apt-get, configures\n'
            printf '  them for the tests and starts them:\n'
            printf '      %sbash %s\n' "$SUDO" "$SELF"
            [ "$INSTALL" = no ] && printf '  (with CHECK_SERVICES_INSTALL unset: it is "no" now)\n'
            printf '  (what it runs: apt-get update; apt-get install --no-install-recommends %s;\n' "$*"
            printf '  then it starts them and lets user postgres log in from 127.0.0.1 without a password)\n'
            printf '  Then run make test (or make demo) again.\n'
        else
            printf '\n  Install them with this system'"'"'s package manager (PostgreSQL with a\n'
            printf '  cluster on port %s that trusts user postgres from 127.0.0.1; RabbitMQ with\n' "$PGPORT"
            printf '  user guest/guest on port %s), then run make test (or make demo) again.\n' "$AMQP_PORT"
        fi
        if have docker; then
            printf '  Or with Docker (engine and compose plugin required):\n'
            printf '      docker compose -f deploy/compose.yaml up -d\n'
        fi
        printf '  Or, for the demo only, use services elsewhere: set PGHOST/PGPORT and\n'
        printf '  AMQP_HOST/AMQP_PORT (the tests always use 127.0.0.1:5432 and :5672).\n\n'
    } >&2
}

# --- Where each service stands ------------------------------------------------------

# up | remote (not up, on another host) | stopped (installed here) | missing
if pg_up; then
    pg_state=up
elif ! is_local "$PGHOST"; then
    pg_state=remote
elif have pg_ctlcluster; then
    pg_state=stopped
else
    pg_state=missing
fi
if amqp_up; then
    amqp_state=up
elif ! is_local "$AMQP_HOST"; then
    amqp_state=remote
elif find_cmd rabbitmq-server >/dev/null; then
    amqp_state=stopped
else
    amqp_state=missing
fi

failed=0
[ "$pg_state" = up ] && say "PostgreSQL is up at $PGHOST:$PGPORT"
[ "$amqp_state" = up ] && say "RabbitMQ is up at $AMQP_HOST:$AMQP_PORT"
if [ "$pg_state" = remote ]; then
    err "PostgreSQL is not reachable at $PGHOST:$PGPORT, which is not on this machine; not trying to start it"
    how_to_fix PostgreSQL "$PGHOST"
    failed=1
fi
if [ "$amqp_state" = remote ]; then
    err "RabbitMQ is not reachable at $AMQP_HOST:$AMQP_PORT, which is not on this machine; not trying to start it"
    how_to_fix RabbitMQ "$AMQP_HOST"
    failed=1
fi

# --- Install what is missing ----------------------------------------------------------

missing=()
[ "$pg_state" = missing ] && missing+=(postgresql)
[ "$amqp_state" = missing ] && missing+=(rabbitmq-server)
installed_pg="" installed_amqp=""
if [ "${#missing[@]}" -gt 0 ]; then
    say "not installed on this machine: ${missing[*]}"
    if [ "$INSTALL" = no ]; then
        how_to_install "CHECK_SERVICES_INSTALL=no, so this script does not install them" "${missing[@]}"
        failed=1
    elif ! have apt-get; then
        how_to_install "this script installs them only with apt-get (Debian, Ubuntu)" "${missing[@]}"
        failed=1
    elif ! is_root && ! have_sudo; then
        how_to_install "installing needs root or passwordless sudo" "${missing[@]}"
        failed=1
    else
        say "installing ${missing[*]} with apt-get (a minute or two)"
        if apt_install "${missing[@]}"; then
            say "installed ${missing[*]}"
            [ "$pg_state" = missing ] && { pg_state=stopped installed_pg=1; }
            [ "$amqp_state" = missing ] && { amqp_state=stopped installed_amqp=1; }
        else
            APT_FAILED=1 how_to_install "apt-get failed (see above)" "${missing[@]}"
            failed=1
        fi
    fi
fi
[ "$failed" -eq 0 ] || exit 1

if [ -n "$installed_pg" ] && ! configure_new_postgres; then
    err "found no new PostgreSQL cluster on port $PGPORT to configure"
    failed=1
fi
[ -n "$installed_amqp" ] && configure_new_rabbitmq

# --- Start what is stopped ----------------------------------------------------------------

started_pg="" started_amqp=""
if [ "$pg_state" = stopped ] && ! pg_up; then
    say "PostgreSQL is not reachable at $PGHOST:$PGPORT; it is installed here"
    if start_postgres && wait_for PostgreSQL pg_up; then
        say "PostgreSQL is up at $PGHOST:$PGPORT"
        started_pg=1
    else
        err "PostgreSQL is not reachable at $PGHOST:$PGPORT"
        is_root || have_sudo || say "starting it needs root or passwordless sudo"
        how_to_fix PostgreSQL "$PGHOST" "$(pg_start_commands)"
        failed=1
    fi
fi
if [ "$amqp_state" = stopped ] && ! amqp_up; then
    say "RabbitMQ is not reachable at $AMQP_HOST:$AMQP_PORT; it is installed here"
    if start_rabbitmq && wait_for RabbitMQ amqp_up; then
        say "RabbitMQ is up at $AMQP_HOST:$AMQP_PORT"
        started_amqp=1
    else
        err "RabbitMQ is not reachable at $AMQP_HOST:$AMQP_PORT"
        is_root || have_sudo || say "starting it needs root or passwordless sudo"
        how_to_fix RabbitMQ "$AMQP_HOST" "$(rabbitmq_start_command)"
        failed=1
    fi
fi
[ "$failed" -eq 0 ] || exit 1

# --- Deeper checks on local services ------------------------------------------
# The e2e tests log in as postgres without a password and create vhosts with
# rabbitmqctl, so a port that answers is not enough. Right after a start or a
# configuration change they get the same grace period as the port.

pg_login_out=""
pg_login_ok() {
    pg_login_out="$(psql -X -w -h "$PGHOST" -p "$PGPORT" -U postgres -d postgres -Atqc 'select 1' 2>&1)" \
        && [ "$pg_login_out" = "1" ]
}
# Done waiting: logged in, or refused for good (authentication).
pg_login_decided() {
    pg_login_ok && return 0
    case "$pg_login_out" in
        *password* | *authentication* | *pg_hba.conf*) return 0 ;;
        *) return 1 ;;
    esac
}
if is_local "$PGHOST" && have psql; then
    if pg_login_ok || { [ -n "$started_pg$installed_pg" ] && wait_for "psql -U postgres" pg_login_decided && pg_login_ok; }; then
        say "PostgreSQL accepts 'psql -U postgres' without a password"
    else
        err "PostgreSQL is up, but 'psql -h $PGHOST -p $PGPORT -U postgres -c \"select 1\"' failed:"
        printf '    %s\n' "$pg_login_out" >&2
        hba_files="$(pg_clusters | while read -r ver cluster _s; do printf '/etc/postgresql/%s/%s/pg_hba.conf ' "$ver" "$cluster"; done)"
        hba_files="${hba_files% }"
        cat >&2 <<EOF

  The tests connect as user postgres without a password. This script changes
  only clusters it installed itself; allow it in this one by putting these
  lines before the others in ${hba_files:-pg_hba.conf (psql: SHOW hba_file) }:
      host all postgres 127.0.0.1/32 trust
      host all postgres ::1/128      trust
  then reload it:
$(pg_start_commands | sed -e 's/ start$/ reload/' -e 's/^/      /')

EOF
        failed=1
    fi
fi

# As the current user, from PATH: that is how the tests call it.
rabbitmqctl_ok() { rabbitmqctl -q list_vhosts >/dev/null 2>&1; }
if is_local "$AMQP_HOST"; then
    ctl_failed=""
    if ! have rabbitmqctl; then
        err "rabbitmqctl is not on PATH ($PATH); the e2e tests create a vhost per test with it"
        if ctl="$(find_cmd rabbitmqctl)"; then
            printf '  It is at %s.\n' "$ctl" >&2
        fi
        ctl_failed=1
    elif rabbitmqctl_ok || { [ -n "$started_amqp$installed_amqp" ] && wait_for rabbitmqctl rabbitmqctl_ok; }; then
        say "rabbitmqctl list_vhosts works"
    else
        err "RabbitMQ is up, but 'rabbitmqctl list_vhosts' failed:"
        rabbitmqctl list_vhosts 2>&1 | sed 's/^/    /' >&2
        ctl_failed=1
    fi
    if [ -n "$ctl_failed" ]; then
        failed=1
        if is_root; then
            cat >&2 <<EOF

  The e2e tests create a vhost per test with rabbitmqctl. Make sure the node
  is fully booted and the command is on PATH, then run make test again:
      rabbitmqctl await_startup

EOF
        else
            cat >&2 <<EOF

  The e2e tests create a vhost per test with rabbitmqctl, as you. Debian's
  /usr/sbin/rabbitmqctl serves only root and the rabbitmq user: run make test
  as root, or give your user the node's cookie and the CLI itself:
      sudo install -m 400 -o "\$(id -un)" /var/lib/rabbitmq/.erlang.cookie ~/.erlang.cookie
      export PATH=/usr/lib/rabbitmq/bin:\$PATH

EOF
        fi
    fi
fi

[ "$failed" -eq 0 ] || exit 1
say "all services ready"
