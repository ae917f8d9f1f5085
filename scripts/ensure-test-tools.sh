#!/usr/bin/env bash
# Tools the test suite needs beyond cargo and the two services:
# promtool (Debian package `prometheus`) checks /metrics in tests/tests/operations.rs.
# Installs what is missing where that is possible (root with apt-get), and says
# what to do otherwise. Never lets the tests skip silently.
set -euo pipefail

if command -v promtool >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing promtool (Debian package prometheus) for the metrics test"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    # The package starts a Prometheus server we do not need.
    (systemctl stop prometheus 2>/dev/null || pkill -x prometheus 2>/dev/null || true)
    command -v promtool >/dev/null 2>&1 && exit 0
fi
echo "promtool is missing: install it (Debian: sudo apt-get install prometheus) and run make test again" >&2
exit 1
