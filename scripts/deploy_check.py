#!/usr/bin/env python3
"""Structure and cross-reference checks of deploy/, run by scripts/deploy-check.sh
inside its venv (PyYAML). What a schema validator cannot see: that the
manifests refer to each other correctly, meet the security requirements, and
name only metrics the worker exports.

Sub-commands:
  manifests [--base] BUILT.yaml...
                            checks on `kustomize build` outputs (--base: the
                            base, whose image an overlay sets)
  rules-file PRULE OUT      writes the PrometheusRule's spec as a plain rules file
  dashboard-rules JSON OUT  writes the dashboard's queries as recording rules
                            (so promtool checks their PromQL)
  static                    Dockerfile, compose, dashboard, definitions, alerts

Exits 1 with one line per problem.
"""

import json
import re
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
PROBLEMS = []

SECRET = "las-worker-secrets"
SECRET_KEYS = {"AMQP_URL", "DATABASE_URL"}
# KEDA's own broker URL (a monitoring-only user, deploy/rabbitmq/keda-user.json),
# never the worker's.
KEDA_SECRET_KEY = "KEDA_AMQP_URL"
CHANGES_QUEUE = "las-worker.changes"
METRICS_PORT = 9464
DASHBOARD = "deploy/grafana/las-worker.json"
# kubectl apply (client side) keeps the whole ConfigMap in an annotation of at
# most 256 KiB; stay well below.
DASHBOARD_MAX_BYTES = 200_000
CRD_KINDS = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}


def problem(where, text):
    PROBLEMS.append(f"{where}: {text}")


def need(cond, where, text):
    if not cond:
        problem(where, text)
    return cond


def dig(obj, *path, default=None):
    for p in path:
        if isinstance(obj, dict) and p in obj:
            obj = obj[p]
        elif isinstance(obj, list) and isinstance(p, int) and p < len(obj):
            obj = obj[p]
        else:
            return default
    return obj


def only_keys(obj, allowed, where):
    """A strict key check for the CRD parts we use (no schema for them here)."""
    if not isinstance(obj, dict):
        problem(where, f"expected a mapping, got {type(obj).__name__}")
        return
    unknown = set(obj) - set(allowed)
    need(not unknown, where, f"unknown field(s) {sorted(unknown)} (allowed: {sorted(allowed)})")


# --- metrics the worker exports ---------------------------------------------

def known_metrics():
    """`las_*` names in the worker's sources and the README's metrics table."""
    names = set()
    for path in (ROOT / "worker" / "src").rglob("*.rs"):
        names |= set(re.findall(r'"(las_[a-z0-9_]+)"', path.read_text()))
    readme = (ROOT / "README.md").read_text()
    for line in readme.splitlines():
        if line.startswith("| `"):
            first = line.strip("|").split("|")[0]
            names |= set(re.findall(r"`(las_[a-z0-9_]+)`", first))
    return names


def metric_names_in(expr):
    """Metric names a PromQL expression uses (las_*, process_*); histogram
    series (_bucket, _sum, _count) count as their family. Recorded series
    (level:metric:operations, with colons) are the rules' own, not the
    worker's."""
    expr = re.sub(r'"[^"]*"', '""', expr)  # label values are not names
    expr = re.sub(r"(?<![\w:])[a-zA-Z_][a-zA-Z0-9_]*:[a-zA-Z0-9_:]*", "", expr)
    names = set(re.findall(r"\b((?:las|process)_[a-zA-Z0-9_]+)\b", expr))
    return {re.sub(r"_(bucket|sum|count)$", "", n) if n.startswith("las_") else n for n in names}


def check_metric_names(exprs, where):
    known = known_metrics()
    for expr in exprs:
        for name in metric_names_in(expr):
            if name.startswith("process_"):
                continue
            if name in known:
                continue
            problem(where, f"metric {name} is not exported by the worker (expr: {expr.strip()[:120]})")


# --- built manifests --------------------------------------------------------

def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def check_manifests(paths, base=False):
    for path in paths:
        docs = load_docs(path)
        where = Path(path).name
        by_kind = {}
        for d in docs:
            need("apiVersion" in d and "kind" in d and dig(d, "metadata", "name"), where,
                 f"resource without apiVersion/kind/metadata.name: {str(d)[:80]}")
            by_kind.setdefault(d.get("kind"), []).append(d)
        need("Secret" not in by_kind, where, "a Secret is in the manifests; secrets are created in the cluster, never committed")

        deployments = by_kind.get("Deployment", [])
        if not need(len(deployments) == 1, where, f"expected one Deployment, found {len(deployments)}"):
            continue
        dep = deployments[0]
        dname = dep["metadata"]["name"]
        ns = dep["metadata"].get("namespace")
        w = f"{where} Deployment/{dname}"
        pod = dig(dep, "spec", "template", "spec", default={})
        pod_labels = dig(dep, "spec", "template", "metadata", "labels", default={})
        sel = dig(dep, "spec", "selector", "matchLabels", default={})
        need(sel and all(pod_labels.get(k) == v for k, v in sel.items()), w, "selector does not match the pod labels")
        need(pod.get("terminationGracePeriodSeconds") == 30, w,
             "terminationGracePeriodSeconds must be 30 (the worker drains within 25 s + 2 s)")
        need(dig(pod, "securityContext", "runAsNonRoot") is True, w, "pod securityContext.runAsNonRoot must be true")
        need(dig(pod, "securityContext", "seccompProfile", "type") == "RuntimeDefault", w,
             "pod seccompProfile must be RuntimeDefault")
        containers = pod.get("containers", [])
        need(len(containers) == 1, w, "expected one container")
        for c in containers:
            cw = f"{w} container {c.get('name')}"
            sc = c.get("securityContext", {})
            need(sc.get("allowPrivilegeEscalation") is False, cw, "allowPrivilegeEscalation must be false")
            need(sc.get("readOnlyRootFilesystem") is True, cw, "readOnlyRootFilesystem must be true")
            need(sc.get("runAsNonRoot") is True, cw, "runAsNonRoot must be true")
            need(dig(sc, "capabilities", "drop") == ["ALL"], cw, "capabilities.drop must be [ALL]")
            need(dig(sc, "seccompProfile", "type") == "RuntimeDefault", cw, "seccompProfile must be RuntimeDefault")
            need(base or ":" in c.get("image", "") or "@" in c.get("image", ""), cw,
                 f"image {c.get('image')!r} has no tag or digest (set it in the overlay)")
            ports = {p.get("name"): p.get("containerPort") for p in c.get("ports", [])}
            need(ports.get("metrics") == METRICS_PORT, cw, f"port `metrics` must be {METRICS_PORT}")
            for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                need(dig(c, probe, "httpGet", "path") == path, cw, f"{probe} must GET {path}")
                need(dig(c, probe, "httpGet", "port") in ("metrics", METRICS_PORT), cw, f"{probe} must use port metrics")
            res = c.get("resources", {})
            need(dig(res, "requests", "cpu") and dig(res, "requests", "memory") and dig(res, "limits", "memory"),
                 cw, "resources need cpu/memory requests and a memory limit")
            secret_refs = {}
            for e in c.get("env", []):
                ref = dig(e, "valueFrom", "secretKeyRef")
                if ref:
                    secret_refs[e["name"]] = (ref.get("name"), ref.get("key"))
                elif e.get("name") in SECRET_KEYS:
                    problem(cw, f"{e['name']} must come from a secretKeyRef, not a literal")
            for key in sorted(SECRET_KEYS):
                need(secret_refs.get(key) == (SECRET, key), cw, f"{key} must come from secret {SECRET}, key {key}")
            for key, ref in secret_refs.items():
                need(ref == (SECRET, key), cw, f"{key} must come from secret {SECRET}, key {key}, got {ref}")
            for e in c.get("env", []):
                if e.get("name", "").endswith(("_TOKEN", "_PASSWORD")) and "value" in e:
                    problem(cw, f"{e['name']} holds a secret: use a secretKeyRef")
            cms = [dig(r, "configMapRef", "name") for r in c.get("envFrom", []) if "configMapRef" in r]
            for cm in cms:
                found = [m for m in by_kind.get("ConfigMap", []) if m["metadata"]["name"] == cm]
                if need(found, cw, f"envFrom ConfigMap {cm} is not in the manifests"):
                    data = found[0].get("data", {})
                    need(data.get("METRICS_ADDR", "").startswith("0.0.0.0:"), f"{where} ConfigMap/{cm}",
                         "METRICS_ADDR must listen on 0.0.0.0 in a pod")
                    for k in SECRET_KEYS | {"MAIL_API_TOKEN"}:
                        need(k not in data, f"{where} ConfigMap/{cm}", f"{k} holds a secret: it belongs in the Secret")
            need(cms, cw, "settings must come from a ConfigMap (envFrom)")

        for other in docs:
            m_ns = other["metadata"].get("namespace")
            if other.get("kind") != "Namespace":
                need(m_ns == ns, where, f"{other['kind']}/{other['metadata']['name']} is in namespace {m_ns!r}, the Deployment in {ns!r}")

        services = by_kind.get("Service", [])
        need(len(services) == 1, where, "expected one Service (metrics)")
        for s in services:
            sw = f"{where} Service/{s['metadata']['name']}"
            ssel = dig(s, "spec", "selector", default={})
            need(ssel and all(pod_labels.get(k) == v for k, v in ssel.items()), sw, "selector does not match the worker's pods")
            sports = {p.get("name"): p for p in dig(s, "spec", "ports", default=[])}
            need(dig(sports, "metrics", "port") == METRICS_PORT, sw, f"port `metrics` must be {METRICS_PORT}")

        for p in by_kind.get("PodDisruptionBudget", []):
            pw = f"{where} PodDisruptionBudget/{p['metadata']['name']}"
            psel = dig(p, "spec", "selector", "matchLabels", default={})
            need(psel and all(pod_labels.get(k) == v for k, v in psel.items()), pw, "selector does not match the worker's pods")
        need(by_kind.get("PodDisruptionBudget"), where, "no PodDisruptionBudget")

        nps = by_kind.get("NetworkPolicy", [])
        if need(nps, where, "no NetworkPolicy"):
            np = nps[0]
            nw = f"{where} NetworkPolicy/{np['metadata']['name']}"
            nsel = dig(np, "spec", "podSelector", "matchLabels", default={})
            need(nsel and all(pod_labels.get(k) == v for k, v in nsel.items()), nw, "podSelector does not match the worker's pods")
            need(set(dig(np, "spec", "policyTypes", default=[])) == {"Ingress", "Egress"}, nw, "policyTypes must be Ingress and Egress")
            eg_ports = {(p.get("protocol", "TCP"), p.get("port")) for r in dig(np, "spec", "egress", default=[]) for p in r.get("ports", [])}
            for want in (("TCP", 5672), ("TCP", 5432), ("UDP", 53), ("TCP", 53), ("TCP", 443)):
                need(want in eg_ports, nw, f"egress must allow {want[1]}/{want[0]}")
            in_ports = {p.get("port") for r in dig(np, "spec", "ingress", default=[]) for p in r.get("ports", [])}
            need(in_ports == {METRICS_PORT}, nw, f"ingress must allow only {METRICS_PORT}")

        # CRDs: no schema here, so a strict key check of what we use plus references.
        for d in docs:
            if d.get("apiVersion", "").split("/")[0] in ("keda.sh", "monitoring.coreos.com"):
                need((d["apiVersion"], d["kind"]) in CRD_KINDS, where, f"unexpected custom resource {d['apiVersion']} {d['kind']}")
        auths = {a["metadata"]["name"]: a for a in by_kind.get("TriggerAuthentication", [])}
        for a in auths.values():
            aw = f"{where} TriggerAuthentication/{a['metadata']['name']}"
            only_keys(a, {"apiVersion", "kind", "metadata", "spec"}, aw)
            only_keys(a.get("spec"), {"secretTargetRef", "env", "hashiCorpVault", "podIdentity", "azureKeyVault",
                                      "configMapTargetRef", "awsSecretManager", "gcpSecretManager", "boundServiceAccountToken"}, aw)
            for ref in dig(a, "spec", "secretTargetRef", default=[]):
                only_keys(ref, {"parameter", "name", "key"}, aw)
                need(ref.get("name") == SECRET and ref.get("key") == KEDA_SECRET_KEY, aw,
                     f"secretTargetRef must use secret {SECRET}, key {KEDA_SECRET_KEY} (KEDA's monitoring-only user, "
                     f"not the worker's credentials), got {ref}")
                need(ref.get("parameter") in ("host", "username", "password"), aw, f"unknown rabbitmq parameter {ref.get('parameter')}")
        sos = by_kind.get("ScaledObject", [])
        need(len(sos) == 1, where, "expected one KEDA ScaledObject")
        for so in sos:
            ow = f"{where} ScaledObject/{so['metadata']['name']}"
            only_keys(so, {"apiVersion", "kind", "metadata", "spec"}, ow)
            spec = so.get("spec", {})
            only_keys(spec, {"scaleTargetRef", "pollingInterval", "cooldownPeriod", "initialCooldownPeriod", "idleReplicaCount",
                             "minReplicaCount", "maxReplicaCount", "fallback", "advanced", "triggers"}, ow)
            only_keys(spec.get("scaleTargetRef"), {"apiVersion", "kind", "name", "envSourceContainerName"}, f"{ow} scaleTargetRef")
            need(dig(spec, "scaleTargetRef", "name") == dname and dig(spec, "scaleTargetRef", "kind", default="Deployment") == "Deployment",
                 ow, f"scaleTargetRef must be Deployment {dname}")
            lo, hi = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
            need(isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi, ow,
                 "1 <= minReplicaCount <= maxReplicaCount (never scale the worker to zero: the daily job runs in it)")
            need("replicas" not in dep["spec"], ow,
                 f"Deployment sets replicas ({dep['spec'].get('replicas')}): KEDA owns the count; "
                 "every kubectl apply would scale a busy worker down to it")
            need("cooldownPeriod" not in spec, ow,
                 "cooldownPeriod only delays a scale to zero, which minReplicaCount >= 1 rules out: drop it")
            fb = spec.get("fallback")
            if need(isinstance(fb, dict), ow, "fallback (failureThreshold, replicas) required: the count KEDA keeps when it "
                                              "cannot read the queue"):
                only_keys(fb, {"failureThreshold", "replicas", "behavior"}, f"{ow} fallback")
                need(isinstance(fb.get("failureThreshold"), int) and fb["failureThreshold"] >= 1, ow,
                     "fallback.failureThreshold must be a positive integer")
                need(isinstance(fb.get("replicas"), int) and lo <= fb["replicas"] <= hi, ow,
                     f"fallback.replicas must lie in minReplicaCount..maxReplicaCount ({lo}..{hi})")
            for t in spec.get("triggers", []):
                tw = f"{ow} trigger"
                only_keys(t, {"type", "metadata", "authenticationRef", "name", "metricType", "useCachedMetrics"}, tw)
                need(t.get("type") == "rabbitmq", tw, "type must be rabbitmq")
                md = t.get("metadata", {})
                only_keys(md, {"host", "hostFromEnv", "protocol", "mode", "value", "activationValue", "queueName", "vhostName",
                               "useRegex", "excludeUnacknowledged", "pageSize", "operation", "timeout", "unsafeSsl",
                               "usernameFromEnv", "passwordFromEnv"}, f"{tw} metadata")
                need(md.get("queueName") == CHANGES_QUEUE, tw, f"queueName must be {CHANGES_QUEUE}")
                need(md.get("mode") == "QueueLength", tw, "mode must be QueueLength")
                for k in ("value", "activationValue"):
                    need(isinstance(md.get(k), str) and md[k].replace(".", "", 1).isdigit(), tw,
                         f"{k} must be a number in a string")
                need(md.get("protocol", "auto") in ("amqp", "auto", "http"), tw, "protocol must be amqp, http or auto")
                need("host" not in md, tw, "the broker URL holds a password: use the TriggerAuthentication")
                need(dig(t, "authenticationRef", "name") in auths, tw, "authenticationRef must name a TriggerAuthentication in the manifests")
        sms = by_kind.get("ServiceMonitor", [])
        need(len(sms) == 1, where, "expected one ServiceMonitor")
        for sm in sms:
            mw = f"{where} ServiceMonitor/{sm['metadata']['name']}"
            only_keys(sm, {"apiVersion", "kind", "metadata", "spec"}, mw)
            only_keys(sm.get("spec"), {"selector", "endpoints", "namespaceSelector", "jobLabel", "targetLabels", "podTargetLabels",
                                       "sampleLimit", "attachMetadata"}, mw)
            msel = dig(sm, "spec", "selector", "matchLabels", default={})
            matched = [s for s in services if all(dig(s, "metadata", "labels", default={}).get(k) == v for k, v in msel.items())]
            need(msel and matched, mw, "selector matches no Service")
            for ep in dig(sm, "spec", "endpoints", default=[]):
                only_keys(ep, {"port", "path", "interval", "scrapeTimeout", "scheme", "honorLabels", "relabelings",
                               "metricRelabelings", "targetPort"}, f"{mw} endpoint")
                need(any(ep.get("port") in {p.get("name") for p in dig(s, "spec", "ports", default=[])} for s in matched),
                     mw, f"endpoint port {ep.get('port')!r} is not a port name of the Service")
                need(ep.get("path", "/metrics") == "/metrics", mw, "path must be /metrics")
            need(not dig(sm, "spec", "jobLabel"), mw, "jobLabel changes the job label the alerts use (las-worker)")
            need(sm["metadata"]["name"] == "las-worker" and all(s["metadata"]["name"] == "las-worker" for s in matched), mw,
                 "the alerts expect job=\"las-worker\" (the Service's name)")
        # kube-prometheus-stack selects ServiceMonitors and PrometheusRules by
        # the label `release: <Helm release>`; an overlay sets it on both.
        releases = {d["kind"]: dig(d, "metadata", "labels", "release") for d in sms + by_kind.get("PrometheusRule", [])}
        need(len(set(releases.values())) <= 1, where,
             f"ServiceMonitor and PrometheusRule must carry the same `release` label (kube-prometheus-stack selector): {releases}")
        if base:
            need(not any(releases.values()), where, "the `release` label is an overlay value (the Helm release name), not the base's")
        dashboards = [m for m in by_kind.get("ConfigMap", [])
                      if dig(m, "metadata", "labels", "grafana_dashboard") == "1"]
        if need(len(dashboards) == 1, where, "expected one ConfigMap labelled grafana_dashboard: \"1\" (the dashboard)"):
            cm = dashboards[0]
            cw = f"{where} ConfigMap/{cm['metadata']['name']}"
            need(dig(cm, "data", "las-worker.json") == (ROOT / DASHBOARD).read_text(), cw,
                 f"data.las-worker.json must be {DASHBOARD} as committed")
            need(not re.search(r"-[a-z0-9]{10}$", cm["metadata"]["name"]), cw,
                 "no name hash suffix: each change would leave the old dashboard ConfigMap for the sidecar")

        prs = by_kind.get("PrometheusRule", [])
        need(len(prs) == 1, where, "expected one PrometheusRule")
        for pr in prs:
            rw = f"{where} PrometheusRule/{pr['metadata']['name']}"
            only_keys(pr, {"apiVersion", "kind", "metadata", "spec"}, rw)
            only_keys(pr.get("spec"), {"groups"}, rw)
            alerts = {r.get("alert") for g in dig(pr, "spec", "groups", default=[]) for r in g.get("rules", [])}
            for a in ("LasWorkerDown", "LasWorkerAllDown", "LasWorkerConsumerDown", "LasWorkerNoConsumer", "LasWorkerNoProgress",
                      "LasSyncFreshnessBudgetBurn", "LasSyncFreshnessBudgetSlowBurn",
                      "LasWorkerDeadLetters", "LasDeadLetterQueueGrowing", "LasWorkerDatabaseRetrying",
                      "LasWorkerDatabasePoolSaturated", "LasSnapshotOverdue", "LasEmailOutboxStuck", "LasEmailsGivenUp",
                      "LasEventOutboxStuck", "LasDailyJobStale", "LasSnapshotHeld", "LasDeadLettersExpiring"):
                need(a in alerts, rw, f"alert {a} missing")
            for gone in ("LasSchoolNotSynced", "LasWorkerSyncLagHigh"):
                need(gone not in alerts, rw, f"alert {gone} was replaced (issue #16): LasSnapshotOverdue, the freshness burn-rate alerts")


# --- rules ------------------------------------------------------------------

def repository_url():
    """[workspace.package] repository in Cargo.toml: the runbook links' base."""
    with open(ROOT / "Cargo.toml", "rb") as f:
        return dig(tomllib.load(f), "workspace", "package", "repository", default="")


def rules_file(prule, out):
    docs = load_docs(prule)
    need(len(docs) == 1 and docs[0].get("kind") == "PrometheusRule", prule, "expected one PrometheusRule")
    spec = docs[0]["spec"]
    exprs = []
    docs_text = (ROOT / "docs" / "operations.md").read_text() if (ROOT / "docs" / "operations.md").exists() else ""
    repo = repository_url()
    need(repo.startswith("https://"), "Cargo.toml", "[workspace.package] repository (an https URL) is the base of the runbook links")
    for g in spec.get("groups", []):
        for r in g.get("rules", []):
            exprs.append(r.get("expr", ""))
            if "alert" in r:
                w = f"{prule} alert {r['alert']}"
                need(dig(r, "labels", "severity") in ("critical", "warning", "info"), w, "labels.severity must be critical, warning or info")
                need(dig(r, "annotations", "summary"), w, "annotations.summary missing")
                # An absolute link (Alertmanager, Grafana and PagerDuty show it
                # as is) to a heading of docs/operations.md named after the
                # alert; GitHub's anchor for "### LasWorkerDown" is #lasworkerdown.
                rb = dig(r, "annotations", "runbook_url", default="")
                want = f"{repo}/blob/main/docs/operations.md#{r['alert'].lower()}"
                need(rb == want, w, f"runbook_url {rb!r} must be {want!r}")
                need(re.search(rf"^#+ {re.escape(r['alert'])}$", docs_text, re.M), w,
                     f"docs/operations.md has no heading `### {r['alert']}` (its runbook)")
                need("runbook" not in dig(r, "annotations", default={}), w, "annotation runbook: use runbook_url")
    check_metric_names(exprs, prule)
    Path(out).write_text(yaml.safe_dump(spec, sort_keys=False))


def dashboard_rules(path, out):
    dash = json.loads(Path(path).read_text())
    rules = []
    for p in all_panels(dash):
        for t in p.get("targets", []):
            expr = t.get("expr", "")
            expr = expr.replace("$__rate_interval", "5m").replace("$namespace", ".*").replace("$job", ".*")
            rules.append({"record": f"dashboard:panel_{p['id']}:{t.get('refId', 'A').lower()}", "expr": expr})
    Path(out).write_text(yaml.safe_dump({"groups": [{"name": "dashboard-queries", "rules": rules}]}, sort_keys=False))


def all_panels(dash):
    out = []
    for p in dash.get("panels", []):
        out.append(p)
        out.extend(p.get("panels", []))
    return out


# --- static files -----------------------------------------------------------

# The dashboard's rows, in order (deploy/grafana/dashboard.py), and the
# panels the overview must have.
DASHBOARD_ROWS = ["overview", "e-mail and suggestions", "event outbox", "snapshots", "queues", "database pool"]
OVERVIEW_PANELS = ["throughput", "reject ratio", "freshness slo", "backlog", "consumers", "replicas", "version"]
# The only variables a query may use: a test substitutes them and runs the
# query against Prometheus.
QUERY_VARIABLES = {"namespace", "__rate_interval"}


def check_dashboard():
    path = ROOT / DASHBOARD
    w = DASHBOARD
    text = path.read_text()
    dash = json.loads(text)
    need(len(text.encode()) <= DASHBOARD_MAX_BYTES, w,
         f"{len(text.encode())} bytes: over {DASHBOARD_MAX_BYTES}, too big for `kubectl apply` of its ConfigMap")
    need(isinstance(dash.get("schemaVersion"), int) and 36 <= dash["schemaVersion"] <= 41, w, "schemaVersion should be about 39")
    need(dash.get("uid") and dash.get("title"), w, "uid and title required")
    variables = {v.get("name"): v for v in dig(dash, "templating", "list", default=[])}
    need(dig(variables, "datasource", "type") == "datasource" and dig(variables, "datasource", "query") == "prometheus",
         w, "a datasource variable `datasource` of type prometheus is required")
    need(dig(variables, "namespace", "type") == "query" and dig(variables, "namespace", "allValue") == ".*",
         w, "a query variable `namespace` (All = .*) is required")
    ids = [p.get("id") for p in all_panels(dash)]
    need(len(ids) == len(set(ids)) and None not in ids, w, "panel ids must be unique")
    exprs = []
    for p in all_panels(dash):
        pw = f"{w} panel {p.get('id')} {p.get('title')!r}"
        need(all(k in dig(p, "gridPos", default={}) for k in ("h", "w", "x", "y")), pw, "gridPos incomplete")
        if p.get("type") == "row":
            continue
        need(dig(p, "datasource", "uid") == "${datasource}", pw, "datasource must be ${datasource}")
        need(p.get("targets"), pw, "no query")
        for t in p.get("targets", []):
            need(dig(t, "datasource", "uid") in (None, "${datasource}"), pw, "target datasource must be ${datasource}")
            expr = t.get("expr", "")
            need(expr, pw, "empty expr")
            used = set(re.findall(r"\$\{?(\w+)", expr))
            need(used <= QUERY_VARIABLES, pw, f"query uses variables {sorted(used - QUERY_VARIABLES)}; "
                 f"only {sorted(QUERY_VARIABLES)} (a test runs every query)")
            need("namespace=~\"$namespace\"" in expr, pw, f"query does not filter by $namespace: {expr[:100]}")
            exprs.append(expr)
    check_metric_names(exprs, w)
    need("las_school_last_sync_timestamp_seconds" not in " ".join(exprs), w,
         "las_school_last_sync_timestamp_seconds is gone (issue #16): use the school aggregates")
    rows = [p.get("title", "").lower() for p in dash.get("panels", []) if p.get("type") == "row"]
    found = [next((i for i, r in enumerate(rows) if r.startswith(want)), None) for want in DASHBOARD_ROWS]
    need(None not in found and found == sorted(found) and found[0] == 0, w,
         f"rows must start with {DASHBOARD_ROWS} in this order; found {rows}")
    overview = []
    for p in dash.get("panels", [])[1:]:
        if p.get("type") == "row":
            break
        overview.append(p.get("title", "").lower())
    for want in OVERVIEW_PANELS:
        need(any(t.startswith(want) for t in overview), w, f"the overview row has no {want!r} panel")
    titles = " | ".join(p.get("title", "") for p in all_panels(dash)).lower()
    for want in ("dead letters", "sync lag", "batch size", "batch duration", "rule decisions", "intake",
                 "consumers up", "connections", "retries", "memory", "cpu", "e-mail outbox", "event outbox",
                 "snapshots held", "snapshot overdue", "time since last commit", "wait for a connection"):
        need(want in titles, w, f"no panel about {want!r}")
    # Alert thresholds drawn: each panel that names an alert in its
    # description has threshold steps beyond the base colour.
    for p in all_panels(dash):
        if "Threshold drawn from the alert rules" in p.get("description", ""):
            steps = dig(p, "fieldConfig", "defaults", "thresholds", "steps", default=[])
            need(len(steps) >= 2, f"{w} panel {p.get('id')} {p.get('title')!r}", "names an alert but draws no threshold")


def check_dockerfile():
    w = "deploy/Dockerfile"
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    lines = [l.strip() for l in text.splitlines() if l.strip() and not l.strip().startswith("#")]
    froms = [l for l in lines if l.upper().startswith("FROM ")]
    need(len(froms) >= 2, w, "multi-stage build expected")
    need(froms and froms[0].split()[1].startswith("rust:1-bookworm"), w, "builder must be rust:1-bookworm")
    final = froms[-1].split()[1] if froms else ""
    need(final.startswith("gcr.io/distroless/cc-debian12:nonroot") or final.startswith("debian:bookworm-slim"), w,
         f"runtime image {final!r}: distroless cc-debian12:nonroot or debian slim expected")
    need(re.search(r"cargo build --release.*-p las-worker", text), w, "must build las-worker in release")
    need(re.search(r"^EXPOSE 9464$", text, re.M), w, "EXPOSE 9464")
    need(re.search(r'^ENTRYPOINT \["/las-worker", "run"\]$', text, re.M), w, 'ENTRYPOINT ["/las-worker", "run"]')
    need(re.search(r"METRICS_ADDR=0\.0\.0\.0:9464", text), w, "METRICS_ADDR=0.0.0.0:9464 in the runtime image")
    users = [l for l in lines if l.upper().startswith("USER ")]
    need(users and users[-1].split()[1].split(":")[0] not in ("root", "0"), w, "the runtime user must not be root")
    ignore = ROOT / "deploy" / "Dockerfile.dockerignore"
    need(ignore.exists() and "target" in ignore.read_text(), "deploy/Dockerfile.dockerignore", "must exist and exclude target/")
    for copied in re.findall(r"^COPY (?!--from)(\S+)", text, re.M):
        need((ROOT / copied).exists(), w, f"COPY {copied}: no such path in the repository (the context is the repository root)")


def check_compose():
    w = "deploy/compose.yaml"
    c = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    worker = dig(c, "services", "worker")
    if not need(worker, w, "no worker service"):
        return
    need(dig(worker, "build", "dockerfile") == "deploy/Dockerfile" and dig(worker, "build", "context") == "..", w,
         "worker must build deploy/Dockerfile with the repository root as context")
    for svc in ("rabbitmq", "postgres"):
        need(dig(worker, "depends_on", svc, "condition") == "service_healthy", w, f"worker must wait for {svc} to be healthy")
        need(dig(c, "services", svc, "healthcheck"), w, f"{svc} needs a healthcheck")
    env = worker.get("environment", {})
    need("@rabbitmq:5672/" in env.get("AMQP_URL", ""), w, "AMQP_URL must point at the rabbitmq service")
    need("@postgres:5432/" in env.get("DATABASE_URL", ""), w, "DATABASE_URL must point at the postgres service")
    need(env.get("METRICS_ADDR") == "0.0.0.0:9464", w, "METRICS_ADDR must be 0.0.0.0:9464")
    need(any(str(p).endswith("9464:9464") for p in worker.get("ports", [])), w, "port 9464 must be published")


def check_definitions():
    w = "deploy/rabbitmq/definitions.json"
    d = json.loads((ROOT / "deploy" / "rabbitmq" / "definitions.json").read_text())
    need(d.get("vhosts") == [{"name": "/"}], w, 'exactly one vhost, "/"')
    for k in ("users", "permissions", "topic_permissions"):
        need(not d.get(k), w, f"{k} must not be in the file (no users or passwords)")
    cm = yaml.safe_load((ROOT / "deploy" / "k8s" / "base" / "configmap.yaml").read_text())
    limit = int(dig(cm, "data", "DELIVERY_LIMIT", default="20"))
    # Policies (docs/operations.md, "Delivery limit and dead-lettering"): the
    # input queues' policy repeats their arguments (a queue argument wins
    # for dead-lettering; for delivery-limit the lower of the two counts);
    # the dead-letter queue's gives it a limit the worker's sweeps and `dlq`
    # commands never reach (RabbitMQ 4 would default to 20 and drop), and not
    # -1 (RabbitMQ 3.x refuses a negative delivery-limit in a policy; 4.x
    # documents -1 as a queue argument only).
    policy_keys = {"delivery-limit": "x-delivery-limit", "dead-letter-exchange": "x-dead-letter-exchange",
                   "dead-letter-routing-key": "x-dead-letter-routing-key",
                   "dead-letter-strategy": "x-dead-letter-strategy", "overflow": "x-overflow"}
    policies = d.get("policies", [])
    for pol in policies:
        pw = f"{w} policy {pol.get('name')}"
        need(pol.get("vhost") == "/" and pol.get("apply-to") in ("queues", "quorum_queues"), pw,
             "vhost / and apply-to queues")
        unknown = set(dig(pol, "definition", default={})) - set(policy_keys)
        need(not unknown, pw, f"unexpected keys {sorted(unknown)}")
    for q in d.get("queues", []):
        args = q.get("arguments", {})
        if "x-delivery-limit" in args:
            need(args["x-delivery-limit"] == limit, w,
                 f"{q['name']}: x-delivery-limit {args['x-delivery-limit']} != DELIVERY_LIMIT {limit} in the ConfigMap")
        matching = sorted((p for p in policies if re.search(p.get("pattern", "$^"), q["name"])),
                          key=lambda p: -p.get("priority", 0))
        if not need(matching, w, f"{q['name']}: no policy matches it"):
            continue
        pol = matching[0]
        need(len(matching) == 1 or matching[1].get("priority", 0) < pol.get("priority", 0), w,
             f"{q['name']}: policies {[p['name'] for p in matching]} tie (RabbitMQ applies one of them)")
        defn = pol.get("definition", {})
        if "x-dead-letter-exchange" in args:
            for k, arg in policy_keys.items():
                if k == "delivery-limit":
                    need(defn.get(k) == limit, w, f"{q['name']}: policy {pol['name']} delivery-limit {defn.get(k)} != DELIVERY_LIMIT {limit}")
                else:
                    need(defn.get(k) == args.get(arg), w,
                         f"{q['name']}: policy {pol['name']} {k} {defn.get(k)!r} != argument {arg} {args.get(arg)!r}")
        else:
            dl = defn.get("delivery-limit")
            need(isinstance(dl, int) and dl >= 100000, w,
                 f"{q['name']}: policy {pol['name']} needs a delivery-limit >= 100000 (not -1): "
                 "every sweep and `dlq` command is a delivery, and RabbitMQ 4 drops a quorum queue's message after 20 by default")
    # KEDA's monitoring-only user: no password in the file, no permission on
    # any resource (its passive queue.declare needs none), at most the
    # management tag (http mode).
    kw = "deploy/rabbitmq/keda-user.json"
    k = json.loads((ROOT / "deploy" / "rabbitmq" / "keda-user.json").read_text())
    need(set(k) <= {"rabbitmq_version", "users", "permissions"}, kw, "only users and permissions")
    users = {u.get("name"): u for u in k.get("users", [])}
    need(list(users) == ["las-worker-keda"], kw, "exactly the user las-worker-keda")
    for u in users.values():
        need(u.get("password_hash") == "", kw, "password_hash must be empty: the password is set in the broker, never committed")
        need(set(u.get("tags", [])) <= {"management"}, kw, f"tags {u.get('tags')}: none (amqp) or management (http) only")
    for perm in k.get("permissions", []):
        need(perm.get("user") in users and perm.get("vhost") == "/", kw, f"permission {perm}: user las-worker-keda, vhost /")
        need(all(perm.get(x) == "^$" for x in ("configure", "write", "read")), kw,
             f"permission {perm}: configure, write and read must be ^$ (nothing)")
    # The full comparison with what the worker declares is an e2e test
    # (tests/tests/operations.rs, rabbitmq_definitions_match_the_declared_topology).


def main(argv):
    cmd = argv[1] if len(argv) > 1 else ""
    if cmd == "manifests":
        if argv[2:3] == ["--base"]:
            check_manifests(argv[3:], base=True)
        else:
            check_manifests(argv[2:])
    elif cmd == "rules-file":
        rules_file(argv[2], argv[3])
    elif cmd == "dashboard-rules":
        dashboard_rules(argv[2], argv[3])
    elif cmd == "static":
        check_dockerfile()
        check_compose()
        check_dashboard()
        check_definitions()
    else:
        print(__doc__, file=sys.stderr)
        return 2
    for p in PROBLEMS:
        print(f"deploy-check: PROBLEM: {p}", file=sys.stderr)
    return 1 if PROBLEMS else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
