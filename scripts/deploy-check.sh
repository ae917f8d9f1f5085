#!/usr/bin/env bash
# Validates deploy/ (and the AsyncAPI contract) as far as this machine can
# without a cluster, a Docker engine or a network beyond the package
# registries. `make deploy-check`; CI runs it after `make lint`.
# docs/operations.md ("What make deploy-check validates") lists what is and
# is not validated.
#
# Installs what is missing: Python tools into a venv under
# target/deploy-venv (pip), promtool from Debian's `prometheus` package
# (apt-get, as root), @asyncapi/cli through npx, the dashboard generator's
# pinned library into target/dashboard-venv (deploy/grafana/generate.sh).
# Fails loudly on any problem.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"
VENV="$ROOT/target/deploy-venv"
WORK="$ROOT/target/deploy-check"
# Pinned so that a check that passes today passes tomorrow.
PY_TOOLS=(yamllint==1.38.0 kubernetes-validate==1.37.0 PyYAML==6.0.3 check-jsonschema==0.39.0)
ASYNCAPI_CLI="@asyncapi/cli@6.2.0"
# Custom resources: no schema here; scripts/deploy_check.py checks their structure.
CRD_KINDS_RE='^(ScaledObject|TriggerAuthentication|ServiceMonitor|PrometheusRule)$'

say() { printf 'deploy-check: %s\n' "$*"; }
step() { printf '\n== deploy-check: %s\n' "$*"; }
die() {
    printf 'deploy-check: FAILED: %s\n' "$*" >&2
    exit 1
}
have() { command -v "$1" >/dev/null 2>&1; }

# --- tools --------------------------------------------------------------------
step "tools"
have python3 || die "python3 is required (apt-get install python3 python3-venv)"
stamp="$VENV/.tools-$(printf '%s ' "${PY_TOOLS[@]}" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    say "installing ${PY_TOOLS[*]} into $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PY_TOOLS[@]}" \
        || die "pip install ${PY_TOOLS[*]} failed"
    touch "$stamp"
fi
PY="$VENV/bin/python"

if ! have promtool; then
    if [ "$(id -u)" -eq 0 ] && have apt-get; then
        say "promtool missing: apt-get install prometheus"
        apt-get update -qq || die "apt-get update failed"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null \
            || die "apt-get install prometheus failed"
    fi
    have promtool || die "promtool is required: apt-get install prometheus (Debian), as root"
fi

# kustomize: kubectl has it built in; a standalone kustomize works too.
if have kubectl && kubectl kustomize --help >/dev/null 2>&1; then
    KUSTOMIZE=(kubectl kustomize)
elif have kustomize; then
    KUSTOMIZE=(kustomize build)
else
    die "kustomize is required to build deploy/k8s: install kubectl (it has 'kubectl kustomize') or kustomize"
fi
have npx || die "npx (Node.js, npm) is required for the AsyncAPI check: apt-get install nodejs npm"

say "python tools: $("$VENV/bin/yamllint" --version), kubernetes-validate $("$VENV/bin/kubernetes-validate" --version 2>&1 | tail -n1)"
say "promtool: $(promtool --version 2>&1 | head -n1)"
say "kustomize: ${KUSTOMIZE[*]} ($("${KUSTOMIZE[0]}" version --client 2>/dev/null | grep -i kustomize || echo "version unknown"))"

rm -rf "$WORK"
mkdir -p "$WORK"

# --- JSON ---------------------------------------------------------------------
step "JSON files parse (python3 -m json.tool)"
while IFS= read -r -d '' f; do
    python3 -m json.tool "$f" >/dev/null || die "$f is not valid JSON"
    say "ok $f"
done < <(find deploy -name '*.json' -print0 | sort -z)

# --- Grafana dashboard --------------------------------------------------------
step "Grafana dashboard: regenerated from deploy/grafana/dashboard.py, equal to the committed JSON"
# The JSON is generated, never edited: regenerate it (with the alert
# thresholds of the current PrometheusRule) and compare.
bash deploy/grafana/generate.sh "$WORK/las-worker.generated.json" || die "deploy/grafana/dashboard.py failed"
if ! diff -u deploy/grafana/las-worker.json "$WORK/las-worker.generated.json" >"$WORK/dashboard.diff"; then
    head -n 80 "$WORK/dashboard.diff" >&2
    die "deploy/grafana/las-worker.json is not what deploy/grafana/dashboard.py generates: run \`make dashboard\` and commit the JSON (never edit it by hand)"
fi
say "ok deploy/grafana/las-worker.json"

# --- YAML lint ----------------------------------------------------------------
step "yamllint (config .yamllint)"
# Strict (warnings fail) for deploy/; the contract, which others edit, with
# warnings allowed.
"$VENV/bin/yamllint" --strict -c .yamllint deploy .yamllint || die "yamllint found problems in deploy/"
"$VENV/bin/yamllint" -c .yamllint contracts/asyncapi.yaml || die "yamllint found errors in contracts/asyncapi.yaml"
say "ok"

# --- Kubernetes ---------------------------------------------------------------
step "kustomize build, then kubernetes-validate --strict and structure checks"
builds=("deploy/k8s/base")
for o in deploy/k8s/overlays/*/; do builds+=("${o%/}"); done
built=()
for b in "${builds[@]}"; do
    out="$WORK/$(echo "$b" | tr / _).yaml"
    "${KUSTOMIZE[@]}" "$b" >"$out" || die "kustomize build $b failed"
    say "built $b -> $out ($(grep -c '^kind:' "$out") resources)"
    built+=("$out")
done

validate() {
    local f="$1" log
    log="$WORK/validate-$(basename "$f").log"
    if ! "$VENV/bin/kubernetes-validate" --strict "$f" >"$log" 2>&1; then
        cat "$log" >&2
        die "kubernetes-validate --strict rejected $f"
    fi
    # A kind without a schema is only a warning to kubernetes-validate; allow
    # it for the known custom resources only (a typo in a core kind's
    # apiVersion would look the same).
    local unknown
    unknown="$(grep -o "Couldn't find schema for kind [A-Za-z]*" "$log" | awk '{print $NF}' | grep -Ev "$CRD_KINDS_RE" || true)"
    if [ -n "$unknown" ]; then
        cat "$log" >&2
        die "$f: no schema for kind(s) $(echo "$unknown" | sort -u | tr '\n' ' ')(not a known custom resource)"
    fi
    grep -E '^(ERROR|WARN)' "$log" | grep -v "Couldn't find schema" && die "kubernetes-validate reported problems in $f"
    say "ok $f ($(grep -c ' passed for resource ' "$log") core resources against their schemas; custom resources: structure only)"
}
for f in "${built[@]}"; do validate "$f"; done
# Each manifest file on its own too (a file an overlay leaves out is still checked).
for f in deploy/k8s/base/*.yaml deploy/k8s/overlays/*/*.yaml; do
    case "$(basename "$f")" in
        kustomization.yaml | *-patch.yaml) continue ;;
    esac
    validate "$f"
done
"$PY" scripts/deploy_check.py manifests --base "${built[0]}" || die "structure checks of the base failed"
if [ "${#built[@]}" -gt 1 ]; then
    "$PY" scripts/deploy_check.py manifests "${built[@]:1}" || die "structure checks of an overlay failed"
fi
say "ok: structure, security context, secret references, selectors, KEDA, ServiceMonitor, PrometheusRule"

# --- Prometheus rules ---------------------------------------------------------
step "promtool check rules / test rules (PrometheusRule), PromQL of the dashboard"
"$PY" scripts/deploy_check.py rules-file deploy/k8s/base/prometheusrule.yaml "$WORK/las-worker.rules.yaml" \
    || die "the PrometheusRule failed its checks"
promtool check rules "$WORK/las-worker.rules.yaml" || die "promtool check rules failed"
cp deploy/prometheus/*.test.yaml "$WORK/"
promtool test rules "$WORK"/*.test.yaml || die "promtool test rules (deploy/prometheus/*.test.yaml) failed"
"$PY" scripts/deploy_check.py dashboard-rules deploy/grafana/las-worker.json "$WORK/dashboard.rules.yaml"
promtool check rules "$WORK/dashboard.rules.yaml" >/dev/null || {
    promtool check rules "$WORK/dashboard.rules.yaml" >&2 || true
    die "a dashboard query is not valid PromQL"
}
say "ok"

# --- Dockerfile, compose, dashboard, definitions ------------------------------
step "Dockerfile, compose (compose-spec schema), Grafana dashboard, RabbitMQ definitions"
"$PY" scripts/deploy_check.py static || die "static checks failed"
"$VENV/bin/check-jsonschema" --builtin-schema vendor.compose-spec deploy/compose.yaml \
    || die "deploy/compose.yaml does not match the compose specification"
say "ok"

# --- AsyncAPI -----------------------------------------------------------------
step "AsyncAPI contract ($ASYNCAPI_CLI validate contracts/asyncapi.yaml)"
export SUPPRESS_NO_CONFIG_WARNING=1
npx -y "$ASYNCAPI_CLI" config analytics --disable >/dev/null 2>&1 || true
npx -y "$ASYNCAPI_CLI" validate contracts/asyncapi.yaml --fail-severity error \
    || die "contracts/asyncapi.yaml is not a valid AsyncAPI document"

printf '\ndeploy-check: all checks passed\n'
