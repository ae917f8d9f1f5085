#!/usr/bin/env bash
# Generates the Grafana dashboard from deploy/grafana/dashboard.py with the
# pinned libraries of deploy/grafana/requirements.txt, installed (pip) into a
# venv under target/dashboard-venv on first use.
#
#   bash deploy/grafana/generate.sh           writes deploy/grafana/las-worker.json (make dashboard)
#   bash deploy/grafana/generate.sh OUT.json  writes OUT.json (make deploy-check compares it)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
VENV="$PWD/target/dashboard-venv"
REQ=deploy/grafana/requirements.txt
out="${1:-deploy/grafana/las-worker.json}"

die() {
    printf 'dashboard: FAILED: %s\n' "$*" >&2
    exit 1
}

stamp="$VENV/.requirements-$(sha256sum "$REQ" | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    command -v python3 >/dev/null || die "python3 (3.11 or later) is required"
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "grafana-foundation-sdk needs Python 3.11 or later; python3 is $(python3 --version 2>&1)"
    printf 'dashboard: installing %s into %s\n' "$REQ" "$VENV" >&2
    rm -rf "$VENV"
    python3 -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQ" || die "pip install -r $REQ failed"
    touch "$stamp"
fi
"$VENV/bin/python" deploy/grafana/dashboard.py --out "$out" || die "deploy/grafana/dashboard.py failed"
