#!/usr/bin/env bash
# The programs `make test` and `make demo` need besides cargo and the two
# services (scripts/check-services.sh sees to those). Installs what is missing
# with apt-get where it can (root, or passwordless sudo), and says exactly what
# to run otherwise. Never lets the tests skip silently.
#
#   ensure-test-tools.sh          for make test
#   ensure-test-tools.sh --demo   for make demo
#
#   program     Debian package      needed by
#   cc          gcc, libc6-dev      the build: ring's C code; rustc links through cc
#   psql        postgresql-client   tests and demo (databases are dropped with it)
#   kill        procps              tests (they stop the worker with kill -TERM)
#   promtool    prometheus          tests (tests/tests/operations.rs checks /metrics)
#   prometheus  prometheus          tests (the live Prometheus test runs the server)
#   curl        curl                demo (it reads /readyz and /metrics)
#   jq, column  jq, bsdextrautils   demo, optional: installed when possible, for
#                                   readable output; the demo runs without them
#
# The prometheus package starts a Prometheus server as a service; the tests
# run their own. So, without systemd, a policy-rc.d denies every service start
# during the install (unless one is already there); with systemd, the new
# service is disabled and stopped after the install. No other Prometheus is
# touched.
#
# Hook for scripts/test-check-services.sh (leave it unset):
#   LAS_SETUP_ROOT  prefix of the system paths this script reads and writes
#                   (/usr/sbin/policy-rc.d, /run/systemd/system)
set -uo pipefail

ROOT="${LAS_SETUP_ROOT:-}"
say() { printf 'ensure-test-tools: %s\n' "$*"; }
err() { printf 'ensure-test-tools: ERROR: %s\n' "$*" >&2; }
# An executable on PATH (not a shell builtin: the tests run these as programs).
have() { type -P "$1" >/dev/null 2>&1; }

case "${1:-}" in
    "") mode=test need=(cc psql kill promtool prometheus) want=() ;;
    --demo) mode=demo need=(cc psql curl) want=(jq column) ;;
    *)
        echo "usage: $0 [--demo]" >&2
        exit 2
        ;;
esac

package_of() {
    case "$1" in
        cc) echo "gcc libc6-dev" ;;
        psql) echo postgresql-client ;;
        kill) echo procps ;;
        promtool | prometheus) echo prometheus ;;
        column) echo bsdextrautils ;;
        *) echo "$1" ;;
    esac
}

is_root() { [ "$(id -u)" -eq 0 ]; }
have_sudo() { have sudo && sudo -n true 2>/dev/null; }
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

missing=() packages=()
add_packages() {
    local p
    for p in $(package_of "$1"); do
        case " ${packages[*]} " in *" $p "*) ;; *) packages+=("$p") ;; esac
    done
}
for tool in "${need[@]}"; do
    have "$tool" && continue
    missing+=("$tool")
    add_packages "$tool"
done
can_install=""
have apt-get && { is_root || have_sudo; } && can_install=1
optional=()
if [ -n "$can_install" ]; then
    for tool in "${want[@]}"; do
        have "$tool" && continue
        optional+=("$tool")
        add_packages "$tool"
    done
fi
[ "${#missing[@]}" -eq 0 ] && [ "${#optional[@]}" -eq 0 ] && exit 0

SUDO=""
is_root || SUDO="sudo "
instructions() {
    if have apt-get; then
        printf '  Run, as root:\n      %sapt-get update && %sapt-get install --no-install-recommends %s\n' \
            "$SUDO" "$SUDO" "${packages[*]}"
    else
        printf '  Install them with this system'"'"'s package manager (Debian packages: %s).\n' "${packages[*]}"
    fi
    printf '  then run make %s again.\n' "$mode"
} >&2

all=("${missing[@]}" "${optional[@]}")
say "missing: ${all[*]}"
if [ -z "$can_install" ]; then
    if have apt-get; then
        err "${missing[*]} not installed; installing needs root or passwordless sudo"
    else
        err "${missing[*]} not installed; this script installs only with apt-get"
    fi
    instructions
    exit 1
fi

POLICY="$ROOT/usr/sbin/policy-rc.d"
POLICY_MARK="# Written by las-worker scripts/ensure-test-tools.sh for one apt-get install: no services wanted."
remove_our_policy() {
    if [ -f "$POLICY" ] && grep -qF "$POLICY_MARK" "$POLICY" 2>/dev/null; then
        as_root rm -f "$POLICY"
    fi
}
if ! systemd_running && [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\n%s\nexit 101\n' "$POLICY_MARK" | as_root tee "$POLICY" >/dev/null \
        && as_root chmod 755 "$POLICY"
    trap remove_our_policy EXIT
fi

new_prometheus=""
case " ${packages[*]} " in *" prometheus "*) new_prometheus=1 ;; esac
say "installing ${packages[*]} with apt-get"
log="$(mktemp)"
apt=(env DEBIAN_FRONTEND=noninteractive apt-get -q -y -o DPkg::Lock::Timeout=300)
rc=0
as_root "${apt[@]}" update >"$log" 2>&1 \
    && as_root "${apt[@]}" install --no-install-recommends "${packages[@]}" >>"$log" 2>&1 \
    || rc=$?
remove_our_policy
trap - EXIT
if [ "$rc" -ne 0 ]; then
    err "apt-get install ${packages[*]} failed (exit $rc); its last lines:"
    tail -n 20 "$log" | sed 's/^/    /' >&2
    rm -f "$log"
    if [ "${#missing[@]}" -eq 0 ]; then
        say "the $mode runs without ${optional[*]}"
        exit 0
    fi
    instructions
    exit 1
fi
rm -f "$log"
if [ -n "$new_prometheus" ] && systemd_running; then
    # The package has just enabled and started its server: not wanted here.
    as_root systemctl disable --now prometheus >/dev/null 2>&1 \
        || say "could not stop the prometheus service the package started (systemctl disable --now prometheus)"
fi

still=()
for tool in "${missing[@]}"; do
    have "$tool" || still+=("$tool")
done
if [ "${#still[@]}" -gt 0 ]; then
    err "still missing after the install: ${still[*]}"
    instructions
    exit 1
fi
say "installed ${packages[*]}"
