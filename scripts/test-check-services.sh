#!/usr/bin/env bash
# Tests scripts/check-services.sh branch by branch, and the installing branches
# of scripts/ensure-test-tools.sh (run by `make test`).
#
# Each case runs the script with PATH set to a directory of its own: fake
# apt-get, pg_ctlcluster, pg_lsclusters, pg_isready, psql, rabbitmq-server,
# rabbitmqctl, systemctl, id, sudo, hostname and getent that record their calls
# and keep their state in files, beside links to the few real tools the script
# needs (sed, grep, ...). The port check goes through the script's
# CHECK_SERVICES_TCP_CMD hook and its system paths (/etc/postgresql,
# /usr/sbin/policy-rc.d, ...) through LAS_SETUP_ROOT, both pointed into a
# temporary directory. Nothing here touches the machine's packages, files or
# running PostgreSQL and RabbitMQ.
#
#   bash scripts/test-check-services.sh        all cases
#   bash scripts/test-check-services.sh -v     also print each case's output
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SCRIPT="$HERE/check-services.sh"
TOOLS="$HERE/ensure-test-tools.sh"
BASH_BIN="$(command -v bash)"
VERBOSE=""
[ "${1:-}" = "-v" ] && VERBOSE=1

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# Real tools check-services.sh may use; everything else it calls is a fake.
REAL_TOOLS=(bash cat sed grep basename dirname mkdir rm chmod cp tee sleep timeout head tail mktemp env test)

PASS=0
FAIL=0
C="" # the current case's directory

# ---- Fakes -------------------------------------------------------------------

# stub DIR NAME BODY: an executable fake that logs its call, then runs BODY.
stub() {
    mkdir -p "$1"
    {
        printf '#!%s\n' "$BASH_BIN"
        # shellcheck disable=SC2016 # expanded when the fake runs
        printf 'printf "%%s\\n" "%s $*" >>"$CASE_DIR/calls.log"\n' "$2"
        printf '%s\n' "$3"
    } >"$1/$2"
    chmod 755 "$1/$2"
}

# What the fake packages install, into BIN and ROOT (a case's bin/ and root/,
# or the package's directory the fake apt-get copies from).
# shellcheck disable=SC2016 # the bodies are expanded when the fakes run
make_postgresql() {
    local bin="$1" root="$2"
    mkdir -p "$root/etc/postgresql/15/main"
    # Debian's default: passwords over TCP.
    printf '%s\n' 'local all postgres peer' \
        'host all all 127.0.0.1/32 scram-sha-256' \
        'host all all ::1/128 scram-sha-256' >"$root/etc/postgresql/15/main/pg_hba.conf"
    stub "$bin" pg_lsclusters '
status=down; [ -e "$CASE_DIR/state/open-5432" ] && status=online
echo "15 main 5432 $status postgres /var/lib/postgresql/15/main /var/log/postgresql/postgresql-15-main.log"'
    stub "$bin" pg_ctlcluster '
[ "$1" = --skip-systemctl-redirect ] && shift
case "$3" in
  start) [ -e "$CASE_DIR/state/pg-start-fails" ] && exit 1
         [ -e "$CASE_DIR/state/open-5432" ] && exit 2
         : >"$CASE_DIR/state/open-5432" ;;
  reload) ;;
  *) exit 1 ;;
esac'
    stub "$bin" pg_isready '
host=""; port=5432
while [ $# -gt 0 ]; do case "$1" in -h) host="$2"; shift ;; -p) port="$2"; shift ;; esac; shift; done
case "$host" in 127.0.0.1|localhost) [ -e "$CASE_DIR/state/open-$port" ] ;; *) exit 2 ;; esac'
    # Like PostgreSQL: the first host line for 127.0.0.1 that matches user
    # postgres decides.
    stub "$bin" psql '
[ -e "$CASE_DIR/state/open-5432" ] || { echo "psql: error: connection refused" >&2; exit 2; }
while read -r type db user addr method; do
  [ "$type" = host ] && [ "$addr" = 127.0.0.1/32 ] || continue
  [ "$user" = all ] || [ "$user" = postgres ] || continue
  [ "$method" = trust ] && { echo 1; exit 0; }
  break
done <"$LAS_SETUP_ROOT/etc/postgresql/15/main/pg_hba.conf"
echo "psql: error: fe_sendauth: no password supplied" >&2; exit 2'
}

# shellcheck disable=SC2016 # the bodies are expanded when the fakes run
make_rabbitmq() {
    local bin="$1" root="$2"
    mkdir -p "$root/etc/rabbitmq"
    printf '# Defaults to rabbit. This can be useful if you want to run more than one node\n#NODENAME=rabbit\n' \
        >"$root/etc/rabbitmq/rabbitmq-env.conf"
    stub "$bin" rabbitmq-server '
[ "$1" = -detached ] && : >"$CASE_DIR/state/open-5672"'
    stub "$bin" rabbitmqctl '
[ -e "$CASE_DIR/state/open-5672" ] || { echo "Error: unable to perform an operation on node" >&2; exit 69; }
echo /'
}

# new_case NAME [OPTION...]; options:
#   pg=installed|missing   amqp=installed|missing   (default: installed)
#   open=pg,amqp           the ports that answer at the start (default: none)
#   uid=0|1000             sudo=yes (passwordless sudo; default: none)
#   systemd=yes            apt=ok|fail|none (default: ok)
#   hba=password           an installed cluster asks passwords over TCP
#                          (Debian's default; default here: it trusts 127.0.0.1,
#                          as on a machine already set up)
#   policy=existing        a policy-rc.d of someone else's is in place
#   resolves=yes           the host name resolves (default: it does not)
#   pg-start=fails
# shellcheck disable=SC2016 # the bodies are expanded when the fakes run
new_case() {
    local name="$1" opt pg=installed amqp=installed open="" uid=0 sudo="" systemd="" apt=ok
    local hba="" policy="" resolves="" pgfail=""
    shift
    for opt in "$@"; do
        case "$opt" in
            pg=*) pg="${opt#pg=}" ;;
            amqp=*) amqp="${opt#amqp=}" ;;
            open=*) open="${opt#open=}" ;;
            uid=*) uid="${opt#uid=}" ;;
            sudo=yes) sudo=1 ;;
            systemd=yes) systemd=1 ;;
            apt=*) apt="${opt#apt=}" ;;
            hba=password) hba=password ;;
            policy=existing) policy=1 ;;
            resolves=yes) resolves=1 ;;
            pg-start=fails) pgfail=1 ;;
            *) echo "new_case: unknown option $opt" >&2; exit 2 ;;
        esac
    done
    C="$WORK/$name"
    mkdir -p "$C/bin" "$C/root/usr/sbin" "$C/state" "$C/pkgs"
    : >"$C/calls.log"
    local tool
    for tool in "${REAL_TOOLS[@]}"; do
        ln -s "$(command -v "$tool")" "$C/bin/$tool"
    done
    [ -n "$systemd" ] && mkdir -p "$C/root/run/systemd/system"
    [ -n "$policy" ] && printf '#!/bin/sh\nexit 101\n' >"$C/root/usr/sbin/policy-rc.d"
    [ -n "$pgfail" ] && : >"$C/state/pg-start-fails"
    case ",$open," in *,pg,*) : >"$C/state/open-5432" ;; esac
    case ",$open," in *,amqp,*) : >"$C/state/open-5672" ;; esac

    # Installed now, or by the fake apt-get later.
    if [ "$pg" = installed ]; then
        make_postgresql "$C/bin" "$C/root"
        [ "$hba" = password ] || sed -i '1i host all all 127.0.0.1/32 trust' "$C/root/etc/postgresql/15/main/pg_hba.conf"
    fi
    make_postgresql "$C/pkgs/postgresql/bin" "$C/pkgs/postgresql/root"
    if [ "$amqp" = installed ]; then
        make_rabbitmq "$C/bin" "$C/root"
    fi
    make_rabbitmq "$C/pkgs/rabbitmq-server/bin" "$C/pkgs/rabbitmq-server/root"

    stub "$C/bin" id "
case \"\$1\" in -u) echo $uid ;; -un) echo $([ "$uid" = 0 ] && echo root || echo dev) ;; *) echo 'uid=$uid' ;; esac"
    [ -n "$sudo" ] && stub "$C/bin" sudo '
[ "$1" = -n ] && shift
"$@"'
    stub "$C/bin" hostname 'echo fresh-box'
    if [ -n "$resolves" ]; then
        stub "$C/bin" getent 'echo "10.0.0.7 fresh-box"'
    else
        stub "$C/bin" getent 'exit 2'
    fi
    stub "$C/bin" systemctl '
[ "$1 $2" = "start rabbitmq-server" ] && : >"$CASE_DIR/state/open-5672"
exit 0'
    case "$apt" in
        none) ;;
        *)
            # The fake apt-get notes what an install would see: the
            # policy-rc.d in place and the locale.
            stub "$C/bin" apt-get "
fail=$([ "$apt" = fail ] && echo 1)"'
policy=none
[ -e "$LAS_SETUP_ROOT/usr/sbin/policy-rc.d" ] && grep -q "exit 101" "$LAS_SETUP_ROOT/usr/sbin/policy-rc.d" && policy=deny
echo "apt-env DEBIAN_FRONTEND=${DEBIAN_FRONTEND:-} LANG=${LANG:-} LC_ALL=${LC_ALL:-} policy-rc.d=$policy" >>"$CASE_DIR/calls.log"
for a in "$@"; do
  case "$a" in update) exit 0 ;; install) install=1 ;; -*|DPkg*) ;; *)
    [ -n "${install:-}" ] || continue
    [ -n "$fail" ] && { echo "E: Unable to locate package $a" >&2; exit 100; }
    cp -R "$CASE_DIR/pkgs/$a/bin/." "$CASE_DIR/bin/"
    cp -R "$CASE_DIR/pkgs/$a/root/." "$LAS_SETUP_ROOT/" ;;
  esac
done'
            ;;
    esac
    # The port check of the script's CHECK_SERVICES_TCP_CMD hook: only this
    # machine's ports can be open.
    stub "$C/hooks" tcp '
case "$1" in 127.0.0.1|localhost) [ -e "$CASE_DIR/state/open-$2" ] ;; *) exit 1 ;; esac'
}

# run_case [VAR=VALUE...]: runs check-services.sh (or what TARGET names) in
# the current case with a clean environment; sets RC, and the files out, err
# and calls.log.
TARGET=("$SCRIPT")
run_case() {
    RC=0
    /usr/bin/env -i PATH="$C/bin" HOME="$C" CASE_DIR="$C" LAS_SETUP_ROOT="$C/root" \
        CHECK_SERVICES_TCP_CMD="$C/hooks/tcp" SERVICE_WAIT_SECONDS=2 "$@" \
        "$BASH_BIN" "${TARGET[@]}" >"$C/out" 2>"$C/err" || RC=$?
    if [ -n "$VERBOSE" ]; then
        echo "---- $(basename "$C"): exit $RC"
        sed 's/^/  out| /' "$C/out"
        sed 's/^/  err| /' "$C/err"
        sed 's/^/  call| /' "$C/calls.log"
    fi
}

# ---- Assertions ----------------------------------------------------------------

CASE_OK=1
fail() {
    echo "  FAIL: $*"
    CASE_OK=""
}
expect_rc() { [ "$RC" -eq "$1" ] || fail "exit $RC, expected $1"; }
# called PATTERN: a fake was called with a line matching the extended regexp.
called() { grep -Eq -- "$1" "$C/calls.log" || fail "no call matching /$1/"; }
not_called() {
    if grep -Eq -- "$1" "$C/calls.log"; then
        fail "unexpected call: $(grep -E -- "$1" "$C/calls.log" | head -n 1)"
    fi
}
# says FILE TEXT: out or err contains the fixed text.
says() { grep -Fq -- "$2" "$C/$1" || fail "$1 lacks: $2"; }
file_has() { grep -Fqx -- "$2" "$1" || fail "${1#"$C"/} lacks the line: $2"; }
file_lacks() { if grep -Fq -- "$2" "$1"; then fail "${1#"$C"/} has: $2"; fi; }
absent() { [ ! -e "$1" ] || fail "${1#"$C"/} exists"; }

end_case() {
    if [ -n "$CASE_OK" ]; then
        PASS=$((PASS + 1))
        echo "ok   $(basename "$C")"
    else
        FAIL=$((FAIL + 1))
        echo "FAIL $(basename "$C") (exit $RC); its output:"
        sed 's/^/  out| /' "$C/out"
        sed 's/^/  err| /' "$C/err"
        sed 's/^/  call| /' "$C/calls.log"
    fi
    CASE_OK=1
}

# Any start, directly or through sudo.
NO_START='^(sudo -n )?(pg_ctlcluster .*start|rabbitmq-server|systemctl start)'
HBA="root/etc/postgresql/15/main/pg_hba.conf"

# ---- Cases ----------------------------------------------------------------------

new_case both-up open=pg,amqp
run_case
expect_rc 0
not_called 'apt-get|sudo'
not_called "$NO_START"
says out "all services ready"
end_case

new_case installed-but-stopped
run_case
expect_rc 0
not_called 'apt-get'
called '^pg_ctlcluster --skip-systemctl-redirect 15 main start$'
called '^rabbitmq-server -detached$'
says out "PostgreSQL is up at 127.0.0.1:5432"
says out "all services ready"
end_case

new_case stopped-under-systemd systemd=yes
run_case
expect_rc 0
called '^pg_ctlcluster 15 main start$'
called '^systemctl start rabbitmq-server$'
not_called 'skip-systemctl-redirect|rabbitmq-server -detached'
end_case

new_case stopped-one-only open=amqp
run_case
expect_rc 0
called '^pg_ctlcluster --skip-systemctl-redirect 15 main start$'
not_called '^rabbitmq-server'
end_case

new_case not-installed-root pg=missing amqp=missing
run_case
expect_rc 0
called '^apt-get .*update$'
called '^apt-get .*install --no-install-recommends postgresql rabbitmq-server$'
# No systemd: the packages' own start is denied during the install, and the
# denial is gone afterwards; the new cluster is created UTF-8.
called '^apt-env DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 LC_ALL=C.UTF-8 policy-rc.d=deny$'
absent "$C/root/usr/sbin/policy-rc.d"
file_has "$C/$HBA" 'host all postgres 127.0.0.1/32 trust'
file_has "$C/$HBA" 'host all postgres ::1/128 trust'
[ "$(sed -n 2p "$C/$HBA")" = 'host all postgres 127.0.0.1/32 trust' ] || fail "the trust lines are not first in pg_hba.conf"
file_has "$C/root/etc/rabbitmq/rabbitmq-env.conf" 'NODENAME=rabbit@localhost'
called '^pg_ctlcluster --skip-systemctl-redirect 15 main start$'
called '^rabbitmq-server -detached$'
says out "PostgreSQL accepts 'psql -U postgres' without a password"
says out "all services ready"
end_case

new_case not-installed-again pg=missing amqp=missing
run_case
RC1="$RC"
rm -f "$C/state/open-5432" "$C/state/open-5672"
: >"$C/calls.log"
run_case
expect_rc 0
[ "$RC1" -eq 0 ] || fail "first run exit $RC1"
# Second run: installed, so only started; nothing configured twice.
not_called 'apt-get'
called '^pg_ctlcluster --skip-systemctl-redirect 15 main start$'
[ "$(grep -c 'host all postgres 127.0.0.1/32 trust' "$C/$HBA")" -eq 1 ] || fail "pg_hba.conf changed twice"
[ "$(grep -c NODENAME=rabbit@localhost "$C/root/etc/rabbitmq/rabbitmq-env.conf")" -eq 1 ] || fail "rabbitmq-env.conf changed twice"
end_case

new_case not-installed-policy-kept pg=missing amqp=missing policy=existing resolves=yes
run_case LANG=nl_NL.UTF-8
expect_rc 0
called 'LANG=nl_NL.UTF-8 LC_ALL=nl_NL.UTF-8 policy-rc.d=deny$'
file_has "$C/root/usr/sbin/policy-rc.d" 'exit 101'
file_lacks "$C/root/usr/sbin/policy-rc.d" 'las-worker'
# The host name resolves: the node keeps its default name.
file_lacks "$C/root/etc/rabbitmq/rabbitmq-env.conf" 'NODENAME=rabbit@localhost'
end_case

new_case not-installed-systemd pg=missing amqp=missing systemd=yes
run_case
expect_rc 0
# With systemd the packages start their services themselves.
called 'policy-rc.d=none$'
absent "$C/root/usr/sbin/policy-rc.d"
called '^pg_ctlcluster 15 main start$'
called '^systemctl start rabbitmq-server$'
end_case

new_case not-installed-sudo pg=missing amqp=installed open=amqp uid=1000 sudo=yes
run_case
expect_rc 0
called '^sudo -n env DEBIAN_FRONTEND=noninteractive .*apt-get .*install --no-install-recommends postgresql$'
called '^sudo -n pg_ctlcluster --skip-systemctl-redirect 15 main start$'
file_has "$C/$HBA" 'host all postgres 127.0.0.1/32 trust'
end_case

new_case not-installed-no-root pg=missing amqp=missing uid=1000
run_case
expect_rc 1
not_called 'apt-get'
not_called "$NO_START"
says err "ERROR: not installed on this machine: postgresql rabbitmq-server; installing needs root or passwordless sudo"
says err "As root, run this script once; it installs them with apt-get, configures"
says err "      sudo bash $SCRIPT"
says err "apt-get install --no-install-recommends postgresql rabbitmq-server"
says err "Then run make test (or make demo) again."
end_case

new_case not-installed-install-off pg=missing open=amqp
run_case CHECK_SERVICES_INSTALL=no
expect_rc 1
not_called 'apt-get'
says err "not installed on this machine: postgresql; CHECK_SERVICES_INSTALL=no"
says err "      bash $SCRIPT"
end_case

new_case not-installed-no-apt pg=missing amqp=missing apt=none
run_case
expect_rc 1
says err "this script installs them only with apt-get"
says err "Install them with this system's package manager"
end_case

new_case apt-get-fails pg=missing amqp=missing apt=fail
run_case
expect_rc 1
says err "apt-get install postgresql rabbitmq-server failed (exit 100)"
says err "E: Unable to locate package postgresql"
says err "Fix what apt-get reported, then run make test (or make demo) again."
absent "$C/root/usr/sbin/policy-rc.d"
not_called "$NO_START"
end_case

new_case stopped-no-root uid=1000
run_case
expect_rc 1
not_called '^pg_ctlcluster|^rabbitmq-server'
says out "starting it needs root or passwordless sudo"
says err "        sudo pg_ctlcluster --skip-systemctl-redirect 15 main start"
says err "        sudo rabbitmq-server -detached"
end_case

new_case pg-does-not-start open=amqp pg-start=fails
run_case
expect_rc 1
called '^pg_ctlcluster --skip-systemctl-redirect 15 main start$'
says err "ERROR: PostgreSQL is not reachable at 127.0.0.1:5432"
says err "        pg_ctlcluster --skip-systemctl-redirect 15 main start"
end_case

new_case remote-hosts
run_case PGHOST=db.example.org AMQP_HOST=mq.example.org
expect_rc 1
not_called 'apt-get'
not_called "$NO_START"
says err "PostgreSQL is not reachable at db.example.org:5432, which is not on this machine; not trying to start it"
says err "RabbitMQ is not reachable at mq.example.org:5672, which is not on this machine; not trying to start it"
end_case

new_case remote-not-installed-here pg=missing amqp=missing
run_case PGHOST=db.example.org AMQP_HOST=mq.example.org
expect_rc 1
not_called 'apt-get'
not_called "$NO_START"
end_case

new_case existing-cluster-asks-password open=pg,amqp hba=password
cp "$C/$HBA" "$C/hba.before"
run_case
expect_rc 1
# An existing cluster's authentication is never changed, only explained.
cmp -s "$C/hba.before" "$C/$HBA" || fail "pg_hba.conf of an existing cluster was changed"
says err "fe_sendauth: no password supplied"
says err "      host all postgres 127.0.0.1/32 trust"
says err "      pg_ctlcluster --skip-systemctl-redirect 15 main reload"
end_case

new_case stopped-cluster-asks-password open=amqp hba=password
run_case
expect_rc 1
called '^pg_ctlcluster --skip-systemctl-redirect 15 main start$'
says err "fe_sendauth: no password supplied"
# A refused password does not change by waiting.
[ "$(grep -c '^psql' "$C/calls.log")" -le 3 ] || fail "waited for a login that was refused"
end_case

new_case existing-cluster-trusts open=pg,amqp
run_case
expect_rc 0
says out "PostgreSQL accepts 'psql -U postgres' without a password"
end_case

new_case rabbitmqctl-not-for-user open=pg,amqp uid=1000
# Debian's wrapper in /usr/sbin, not on a user's PATH.
mkdir -p "$C/root/usr/sbin"
mv "$C/bin/rabbitmqctl" "$C/bin/rabbitmq-server" "$C/root/usr/sbin/"
run_case
expect_rc 1
says err "rabbitmqctl is not on PATH"
says err "It is at $C/root/usr/sbin/rabbitmqctl."
# shellcheck disable=SC2016 # literal text the script prints
says err 'sudo install -m 400 -o "$(id -un)" /var/lib/rabbitmq/.erlang.cookie ~/.erlang.cookie'
# shellcheck disable=SC2016 # literal text the script prints
says err 'export PATH=/usr/lib/rabbitmq/bin:$PATH'
end_case

# ---- ensure-test-tools.sh ---------------------------------------------------------

# tools_case NAME "PRESENT..." [new_case option...]: the programs in PRESENT
# are installed; the fake apt-get installs the others from their packages.
tools_case() {
    local name="$1" present="$2" spec t
    shift 2
    new_case "$name" pg=missing amqp=missing "$@"
    for spec in gcc:cc libc6-dev: procps:kill postgresql-client:psql prometheus:promtool,prometheus \
        curl:curl jq:jq bsdextrautils:column; do
        mkdir -p "$C/pkgs/${spec%%:*}/bin" "$C/pkgs/${spec%%:*}/root"
        t="${spec#*:}"
        for t in ${t//,/ }; do
            stub "$C/pkgs/${spec%%:*}/bin" "$t" 'exit 0'
        done
    done
    for t in $present; do
        stub "$C/bin" "$t" 'exit 0'
    done
    stub "$C/bin" pkill 'exit 0'
}
TARGET=("$TOOLS")
tools_case tools-present "cc psql kill promtool prometheus"
run_case
expect_rc 0
not_called 'apt-get'
end_case

tools_case tools-prometheus-missing "cc psql kill"
run_case
expect_rc 0
called '^apt-get .*install --no-install-recommends prometheus$'
# The package's server is never started, and no other Prometheus is stopped.
called 'policy-rc.d=deny$'
absent "$C/root/usr/sbin/policy-rc.d"
not_called '^(pkill|systemctl)'
says out "installed prometheus"
end_case

tools_case tools-prometheus-missing-systemd "cc psql kill" systemd=yes
run_case
expect_rc 0
called 'policy-rc.d=none$'
called '^systemctl disable --now prometheus$'
not_called '^pkill'
end_case

tools_case tools-missing-no-root "cc" uid=1000
run_case
expect_rc 1
not_called 'apt-get'
says err "ERROR: psql kill promtool prometheus not installed; installing needs root or passwordless sudo"
says err "      sudo apt-get update && sudo apt-get install --no-install-recommends postgresql-client procps prometheus"
says err "  then run make test again."
end_case

tools_case tools-apt-get-fails "" apt=fail
run_case
expect_rc 1
says err "E: Unable to locate package gcc"
absent "$C/root/usr/sbin/policy-rc.d"
end_case

TARGET=("$TOOLS" --demo)
tools_case tools-demo-fresh ""
run_case
expect_rc 0
called '^apt-get .*install --no-install-recommends gcc libc6-dev postgresql-client curl jq bsdextrautils$'
end_case

tools_case tools-demo-optional-only "cc psql curl"
run_case
expect_rc 0
called '^apt-get .*install --no-install-recommends jq bsdextrautils$'
end_case

tools_case tools-demo-optional-no-root "cc psql curl" uid=1000
run_case
expect_rc 0
not_called 'apt-get'
end_case

echo
echo "test-check-services: $PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
