#!/usr/bin/env python3
"""Generates the Grafana dashboard of las-worker, deploy/grafana/las-worker.json.

Never edit the JSON by hand: change this file and run `make dashboard`
(which installs the pinned grafana-foundation-sdk, requirements.txt, into
target/dashboard-venv). `make deploy-check` regenerates the dashboard into a
temporary file and fails when it differs from the committed JSON.

The alert thresholds drawn on the panels are read from the alert rules,
deploy/k8s/base/prometheusrule.yaml, at generation time: a changed threshold
in the rules changes the dashboard (and deploy-check says to regenerate it);
a panel that names an alert the rules do not have fails the generation,
except the alerts issue #16 adds (`Rules.optional`): their thresholds are
drawn from the moment the rules have them.

Every panel target's `expr` is the whole query: the only Grafana variables in
it are `$namespace` (regex, "All" is `.*`) and `$__rate_interval`, so a test
can run each query against Prometheus after substituting those two.
docs/operations.md, section "The dashboard", describes the rows.
"""

from __future__ import annotations

import argparse
import ast
import json
import operator
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml
from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as pm

ROOT = Path(__file__).resolve().parent.parent.parent
RULES = ROOT / "deploy" / "k8s" / "base" / "prometheusrule.yaml"
OUT = ROOT / "deploy" / "grafana" / "las-worker.json"

DS = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
NS = 'namespace=~"$namespace"'
RI = "$__rate_interval"
# The freshness objective (issue #16): 99% of the LAS changes applied within
# 300 s of emitted_at. 300 is a bucket bound of las_sync_lag_seconds;
# Prometheus 3 stores classic-histogram bounds as floats ("300.0").
SLO_TARGET = 0.99
SLO_LE = 'le=~"300|300.0"'
# Grafana colours a value with the highest step at or below it; a rule
# `> 0` becomes a step just above 0, so that 0 itself stays green.
ABOVE_ZERO = 1e-9
SEVERITY_COLOR = {"critical": "red", "warning": "orange", "info": "blue"}
SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}


def sel(metric: str, *matchers: str, **labels: str) -> str:
    """`metric{namespace=~"$namespace", ...}`; a keyword `queue="portal"`
    adds `queue="portal"`, `queue="~changes|portal"` adds `queue=~"changes|portal"`."""
    for k, v in labels.items():
        matchers += (f'{k}=~"{v[1:]}"' if v.startswith("~") else f'{k}="{v}"',)
    return f"{metric}{{{', '.join((NS, *matchers))}}}"


def or_zero(expr: str) -> str:
    """0 instead of no result (a counter series that does not exist yet).
    `on()` makes it one series: the 0 is added only when there is none."""
    return f"{expr} or on() vector(0)"


# --- thresholds from the alert rules -------------------------------------------

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _number(text: str) -> float:
    """A constant arithmetic expression (`26 * 3600`), safely."""

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        raise ValueError(text)

    value = float(f"{ev(ast.parse(text.strip(), mode='eval')):.12g}")  # 14.4 * 0.01 is 0.144
    return int(value) if value.is_integer() else value


def _clauses(expr: str) -> list[str]:
    """The top-level `and` / `or` / `unless` operands of a PromQL expression."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(expr):
        c = expr[i]
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == '"':
            i = expr.index('"', i + 1)
        elif depth == 0:
            m = re.match(r"\s(and|or|unless)\s", expr[i:])
            if m:
                parts.append(expr[start:i])
                i += m.end()
                start = i
                continue
        i += 1
    parts.append(expr[start:])
    return [p.strip() for p in parts]


@dataclass(frozen=True)
class Threshold:
    alert: str
    op: str  # ">", ">=", "<", "<=", "=="
    value: float
    severity: str
    for_: str
    note: str = ""

    @property
    def color(self) -> str:
        return SEVERITY_COLOR.get(self.severity, "red")

    @property
    def high(self) -> bool:
        """True when the alert fires above the value, False below."""
        return self.op in (">", ">=")

    def text(self, unit: str = "") -> str:
        if unit == "%":
            shown = f"{self.value * 100:g}%"
        else:
            shown = f"{self.value:g}{(' ' + unit) if unit else ''}"
        during = f" for {self.for_}" if self.for_ else ""
        note = f" ({self.note})" if self.note else ""
        return f"{self.alert} ({self.severity}) fires at {self.op} {shown}{note}{during}"


def _unwrap(expr: str) -> str:
    """`(a > 1)` -> `a > 1`, for parentheses around the whole expression."""
    expr = expr.strip()
    while expr.startswith("("):
        depth = 0
        for i, c in enumerate(expr):
            depth += c == "("
            depth -= c == ")"
            if depth == 0:
                break
        if i != len(expr) - 1:
            break
        expr = expr[1:-1].strip()
    return expr


class Rules:
    """The alerts of the PrometheusRule, by name."""

    def __init__(self, path: Path):
        doc = yaml.safe_load(path.read_text())
        path = path.resolve()
        self.path = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        self.alerts = {
            r["alert"]: r for g in doc["spec"]["groups"] for r in g.get("rules", []) if "alert" in r
        }
        self.missing: list[str] = []

    def _rule(self, alert: str) -> dict:
        if alert not in self.alerts:
            sys.exit(f"dashboard.py: alert {alert} is not in {self.path}; "
                     f"update the panel that draws it in deploy/grafana/dashboard.py")
        return self.alerts[alert]

    def threshold(self, alert: str, *path: int, note: str = "") -> Threshold:
        """The comparison that ends a part of the alert's expression: `path`
        picks the top-level `and`/`or`/`unless` operand, and within it (after
        its parentheses) the operand of the next level, and so on; default
        the last operand. `... > 1800`, `(a > 14.4 * 0.01 and b > ...) or (...)`."""
        rule = self._rule(alert)
        operand = " ".join(rule["expr"].split())
        for i in path or (-1,):
            operand = _clauses(_unwrap(operand))[i]
            operand = _unwrap(re.sub(r"^(on|ignoring)\s*\([^)]*\)\s*(group_(left|right)\s*(\([^)]*\))?\s*)?",
                                     "", operand))
        m = re.search(r"(==|>=|<=|>|<)\s*(?:bool\s+)?([0-9.\s*/+()-]+)$", operand)
        try:
            value = _number(m.group(2)) if m else None
        except (ValueError, SyntaxError):
            value = None
        if value is None:
            sys.exit(f"dashboard.py: no `<op> <number>` at the end of {alert}'s expression "
                     f"(part {path}: {operand!r}); give the threshold with Rules.fixed")
        return Threshold(alert, m.group(1), value, rule["labels"]["severity"], rule.get("for", ""), note)

    def fixed(self, alert: str, op: str, value: float, note: str = "") -> Threshold:
        """For an alert whose expression has no trailing comparison
        (`absent(...)`): the threshold it amounts to, stated here."""
        rule = self._rule(alert)
        return Threshold(alert, op, value, rule["labels"]["severity"], rule.get("for", ""), note)

    def optional(self, alert: str, *path: int, note: str = "") -> list[Threshold]:
        """An alert that issue #16 adds to the rules or removes from them: its
        threshold while the rules have it, nothing (and a note on stderr)
        otherwise."""
        if alert in self.alerts:
            return [self.threshold(alert, *path, note=note)]
        if alert not in self.missing:
            self.missing.append(alert)
        return []


def steps(thresholds: list[Threshold], base: str = "green") -> list[dm.Threshold]:
    """Grafana threshold steps for alerts that fire above (or below) values."""
    if not thresholds:
        return [dm.Threshold(value=None, color=base)]
    if all(t.high for t in thresholds):
        out = [dm.Threshold(value=None, color=base)]
        for t in sorted(thresholds, key=lambda t: t.value):
            at = ABOVE_ZERO if t.op == ">" and t.value == 0 else t.value
            out.append(dm.Threshold(value=at, color=t.color))
        return out
    if not any(t.high for t in thresholds):
        # Fires at or below a value (`== 0`, `< 1`): bad below, green from
        # the first good value (counts and 0/1 gauges are integers).
        worst = max(thresholds, key=lambda t: SEVERITY_RANK.get(t.severity, 3))
        good = max(t.value + 1 if t.op in ("==", "<=") else t.value for t in thresholds)
        return [dm.Threshold(value=None, color=worst.color), dm.Threshold(value=good, color="green")]
    raise ValueError(f"mixed high and low thresholds on one panel: {thresholds}")


# --- panels --------------------------------------------------------------------

def q(expr: str, legend: str = "", instant: bool = False, table_format: bool = False):
    t = prometheus.Dataquery().expr(expr).datasource(DS)
    if legend:
        t = t.legend_format(legend)
    t = t.instant() if instant else t.range()
    if table_format:
        t = t.format(pm.PromQueryFormat.TABLE)
    return t


def _describe(description: str, thresholds: list[Threshold], unit_text: str) -> str:
    if not thresholds:
        return description
    drawn = "; ".join(t.text(unit_text) for t in thresholds)
    return (f"{description}\n\nThreshold drawn from the alert rules: {drawn}. "
            "Runbooks: docs/operations.md, section Alerts.")


def _targets(p, targets):
    for i, t in enumerate(targets):
        p = p.with_target(t.ref_id(chr(ord("A") + i)))
    return p


def ts(title, description, targets, unit="short", w=6, h=8, thresholds=(), unit_text="",
       stack=False, min0=True):
    """A time series panel; alert thresholds as dashed lines over shaded areas."""
    thresholds = list(thresholds)
    p = (
        timeseries.Panel()
        .title(title)
        .description(_describe(description, thresholds, unit_text))
        .datasource(DS)
        .span(w)
        .height(h)
        .unit(unit)
        .line_width(1)
        .fill_opacity(10)
        .show_points(cm.VisibilityMode.NEVER)
        .legend(cb.VizLegendOptions().display_mode(cm.LegendDisplayMode.LIST)
                .placement(cm.LegendPlacement.BOTTOM).show_legend(True))
        .tooltip(cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING))
        .thresholds(db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps(steps(thresholds)))
        .thresholds_style(cb.GraphThresholdsStyleConfig().mode(
            cm.GraphThresholdsStyleMode.DASHED_AND_AREA if thresholds else cm.GraphThresholdsStyleMode.OFF))
    )
    if min0:
        p = p.min(0)
    if stack:
        p = p.stacking(cb.StackingConfig().mode(cm.StackingMode.NORMAL).group("A"))
    return _targets(p, targets)


def st(title, description, targets, unit="short", w=3, h=4, thresholds=(), unit_text="",
       base="green", graph=True, name=False, decimals=None, color_mode=cm.BigValueColorMode.VALUE, step_list=None):
    """A stat panel coloured by the alert thresholds (without any: `base`)."""
    thresholds = list(thresholds)
    p = (
        stat.Panel()
        .title(title)
        .description(_describe(description, thresholds, unit_text))
        .datasource(DS)
        .span(w)
        .height(h)
        .unit(unit)
        .graph_mode(cm.BigValueGraphMode.AREA if graph else cm.BigValueGraphMode.NONE)
        .color_mode(color_mode)
        .text_mode(cm.BigValueTextMode.VALUE_AND_NAME if name else cm.BigValueTextMode.VALUE)
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .thresholds(db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE)
                    .steps(step_list or steps(thresholds, base)))
    )
    if decimals is not None:
        p = p.decimals(decimals)
    return _targets(p, targets)


def settings_table(title, description, expr, w=6, h=8):
    """The settings every replica reports (an info metric), one row per distinct set."""
    return _targets(
        table.Panel()
        .title(title)
        .description(description)
        .datasource(DS)
        .span(w)
        .height(h)
        .thresholds(db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps(steps([], "text")))
        .with_transformation(dm.DataTransformerConfig(id_val="organize", options={
            "excludeByName": {"Time": True},
            "renameByName": {"Value": "replicas"},
        })),
        [q(expr, instant=True, table_format=True)],
    )


class Layout:
    """Adds rows and panels to the dashboard in reading order and numbers
    them (the SDK places them on the grid, left to right)."""

    def __init__(self, dash: db.Dashboard):
        self.dash = dash
        self.next_id = 1

    def row(self, title: str, *panels) -> None:
        self.dash.with_row(db.Row(title).id(self.next_id))
        self.next_id += 1
        for p in panels:
            self.dash.with_panel(p.id(self.next_id))
            self.next_id += 1


# --- the dashboard -------------------------------------------------------------

def build(rules: Rules) -> dict:
    th = rules.threshold
    messages = sel("las_messages_total")
    lag_fast = sel("las_sync_lag_seconds_bucket", SLO_LE)
    lag_all = sel("las_sync_lag_seconds_count")
    # process_* names are not the worker's own: keep the worker's targets.
    worker = "and on (job, instance) las_build_info"

    def late_ratio(window: str) -> str:
        """Share of the applied changes later than 300 s over `window` (the
        error ratio the burn-rate alerts compare); 0 without changes."""
        return (f"1 - sum(rate({lag_fast}[{window}])) / (sum(rate({lag_all}[{window}])) > 0) "
                "or on() vector(0)")

    dash = (
        db.Dashboard("las-worker")
        .uid("las-worker")
        .description("LAS import worker (las-worker): generated by deploy/grafana/dashboard.py, do not edit. "
                     "Rows and alerts: docs/operations.md.")
        .tags(["las-worker", "ouderportaal"])
        .timezone("browser")
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .refresh("30s")
        .time("now-6h", "now")
        .with_variable(db.DatasourceVariable("datasource").label("Data source").type("prometheus"))
        .with_variable(
            db.QueryVariable("namespace")
            .label("Namespace")
            .datasource(DS)
            .query("label_values(las_build_info, namespace)")
            .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(dm.VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".*")
            .current(dm.VariableOption(selected=True, text="All", value="$__all"))
        )
    )
    layout = Layout(dash)

    layout.row(
        "Overview",
        st("Throughput", "Messages handled per second, all outcomes (las_messages_total).",
           [q(or_zero(f"sum(rate({messages}[{RI}]))"))], unit="suffix: msg/s", w=4, base="blue"),
        st("Reject ratio", "Share of the handled messages the worker rejected (dead-lettered with a reason).",
           [q(f"(sum(rate({sel('las_messages_total', outcome='rejected')}[{RI}])) or on() vector(0)) "
              f"/ (sum(rate({messages}[{RI}])) > 0) or on() vector(0)")],
           unit="percentunit", decimals=2, thresholds=[th("LasWorkerDeadLetters", 0)],
           unit_text="dead letters in 10 m"),
        st("Freshness SLO (30 d)",
           "Share of the applied LAS changes committed within 300 s of their emitted_at over the last 30 days "
           f"(las_sync_lag_seconds). Objective: {SLO_TARGET:.0%}, red below. 100% when no change was applied.",
           [q(f"sum(increase({lag_fast}[30d])) / (sum(increase({lag_all}[30d])) > 0) or on() vector(1)")],
           unit="percentunit", decimals=2, w=4, graph=False,
           step_list=[dm.Threshold(value=None, color="red"), dm.Threshold(value=SLO_TARGET, color="green")]),
        st("Backlog", "Ready messages in las-worker.changes and las-worker.portal (las_queue_messages; "
           "the messages consumers hold unacknowledged are not counted).",
           [q(or_zero(f"sum(max by (namespace, queue) "
                      f"({sel('las_queue_messages', queue='~changes|portal')}))"))],
           base="blue"),
        st("Consumers", "Replicas consuming each queue (las_consumer_up summed per queue).",
           [q(f"sum by (queue) ({sel('las_consumer_up')})", "{{queue}}")],
           thresholds=[th("LasWorkerNoConsumer")], graph=False, name=True),
        st("Replicas", "Worker processes Prometheus scrapes (count of las_build_info).",
           [q(or_zero(f"count({sel('las_build_info')})"))],
           thresholds=[rules.fixed("LasWorkerAllDown", "==", 0)], unit_text="replicas up"),
        st("Version", "Version and git revision running; the value is the number of replicas running it "
           "(two lines during a rollout).",
           [q(f"count by (version, revision) ({sel('las_build_info')})", "{{version}} {{revision}}",
              instant=True)],
           w=4, graph=False, name=True, base="text", color_mode=cm.BigValueColorMode.NONE),
        ts("Throughput by outcome", "Messages per second by outcome: applied, duplicate (a redelivery), "
           "stale (an older version), rejected (dead-lettered).",
           [q(f"sum by (outcome) (rate({messages}[{RI}]))", "{{outcome}}")],
           unit="suffix: msg/s", w=8, stack=True),
        ts("Freshness: changes later than 300 s",
           "Share of the applied LAS changes committed more than 300 s after emitted_at, over 5 m, 1 h and 6 h: "
           f"the error ratio of the freshness SLO ({SLO_TARGET:.0%} within 300 s; error budget "
           f"{1 - SLO_TARGET:.0%}). The burn-rate alerts compare it over pairs of windows.",
           [q(late_ratio("5m"), "over 5m"), q(late_ratio("1h"), "over 1h"), q(late_ratio("6h"), "over 6h")],
           unit="percentunit", w=8, unit_text="%",
           thresholds=rules.optional("LasSyncFreshnessBudgetBurn", 0, 0, note="over 1 h and 5 m")
           + rules.optional("LasSyncFreshnessBudgetBurn", 1, 0, note="over 6 h and 30 m")
           + rules.optional("LasSyncFreshnessBudgetSlowBurn", 0, note="over 3 d and 6 h")),
        ts("Backlog by queue", "Ready messages per queue of the worker (las_queue_messages).",
           [q(f"max by (namespace, queue) ({sel('las_queue_messages', queue='~changes|portal')})",
              "{{queue}}")], w=8),
    )

    layout.row(
        "E-mail and suggestions",
        ts("E-mails by outcome and reason", "Send attempts per minute (las_emails_total): sent, retry "
           "(rate_limited, server_error, timeout, connection), failed (rejected: given up).",
           [q(f"60 * sum by (outcome, reason) (rate({sel('las_emails_total')}[{RI}]))", "{{outcome}} {{reason}}")],
           unit="cpm", w=8),
        ts("E-mails given up (15 m)", "E-mails the mail API refused for good in the last 15 minutes "
           "(e.g. a revoked token, 401); they are not retried and the outbox does not grow.",
           [q(f"sum by (namespace) (increase({sel('las_emails_total', outcome='failed')}[15m]))",
              "given up {{namespace}}")],
           w=4, thresholds=[th("LasEmailsGivenUp")], unit_text="in 15 m"),
        ts("E-mail outbox", "E-mails pending or being sent (las_email_outbox_depth).",
           [q(f"max by (namespace) ({sel('las_email_outbox_depth')})", "waiting {{namespace}}")], w=4),
        ts("Oldest e-mail waiting", "Age of the oldest e-mail still in the outbox (0: none waits).",
           [q(f"max by (namespace) ({sel('las_email_outbox_oldest_seconds')})", "oldest {{namespace}}")],
           unit="s", w=4, thresholds=[th("LasEmailOutboxStuck")], unit_text="s"),
        ts("Suggestions (per hour)", "Suggestions from parents' edits (R10): opened, resolved, "
           "no_recipients (no school address to tell).",
           [q(f"sum by (event) (increase({sel('las_suggestions_total')}[1h]))", "{{event}}")], w=4),
    )

    layout.row(
        "Event outbox",
        ts("Sync events published", "Sync events per minute confirmed by the broker on las.sync-events.",
           [q(f"60 * sum(rate({sel('las_events_published_total')}[{RI}]))", "published")], unit="cpm", w=8),
        ts("Event outbox", "Sync events waiting to be published (las_event_outbox_depth).",
           [q(f"max by (namespace) ({sel('las_event_outbox_depth')})", "waiting {{namespace}}")], w=8),
        ts("Oldest sync event waiting", "Age of the oldest unpublished sync event (0: none waits).",
           [q(f"max by (namespace) ({sel('las_event_outbox_oldest_seconds')})", "oldest {{namespace}}")],
           unit="s", w=8, thresholds=[th("LasEventOutboxStuck")], unit_text="s"),
    )

    layout.row(
        "Snapshots, schools and the daily job",
        ts("Full snapshots (per hour)", "Full snapshots (R12) by outcome: applied, held, released, discarded.",
           [q(f"sum by (outcome) (increase({sel('las_snapshots_total')}[1h]))", "{{outcome}}")]),
        ts("Snapshots held", "Snapshots held back by the deletion guard or a count mismatch, waiting for "
           "an operator (las_snapshots_held).",
           [q(f"max by (namespace) ({sel('las_snapshots_held')})", "held {{namespace}}")],
           thresholds=[th("LasSnapshotHeld")]),
        ts("Schools with a snapshot overdue", "Schools that sent a full snapshot before but none within "
           "SNAPSHOT_OVERDUE_HOURS (las_schools_snapshot_overdue).",
           [q(f"max by (namespace) ({sel('las_schools_snapshot_overdue')})", "overdue {{namespace}}")],
           thresholds=rules.optional("LasSnapshotOverdue")),
        ts("Schools linked", "Schools linked to the portal (las_schools_linked).",
           [q(f"max by (namespace) ({sel('las_schools_linked')})", "linked {{namespace}}")]),
        ts("Daily job: time since last success", "Time since the daily job (R9 intake, R12 retention purge, "
           "journal pruning) last succeeded on any replica; it runs at start and after every midnight.",
           [q(f"time() - max by (namespace) ({sel('las_daily_job_last_success_timestamp_seconds')} > 0)",
              "since last success {{namespace}}")],
           unit="s", thresholds=[th("LasDailyJobStale")], unit_text="s"),
        ts("Daily job failures (1 h)", "Failed runs of the daily job in the last hour.",
           [q(f"sum by (namespace) (increase({sel('las_daily_job_runs_total', outcome='failed')}[1h]))",
              "failed {{namespace}}")],
           thresholds=[th("LasDailyJobFailed", 0)], unit_text="in 1 h"),
        ts("Retention (per day)", "Profiles whose personal data was purged (R12) and dead letters dropped "
           "after DEAD_LETTER_RETENTION_DAYS, per day.",
           [q(f"sum(increase({sel('las_profiles_purged_total')}[1d]))", "profiles purged"),
            q(f"sum(increase({sel('las_dead_letters_expired_total')}[1d]))", "dead letters expired")]),
        ts("Dead letters expiring within 7 days", "Dead letters that reach DEAD_LETTER_RETENTION_DAYS within "
           "a week, at the last sweep: replay or save them before they are dropped.",
           [q(f"max by (namespace) ({sel('las_dead_letters_expiring')})", "expiring {{namespace}}")],
           thresholds=[th("LasDeadLettersExpiring")]),
    )

    dlq_growth = f"max by (namespace) (delta({sel('las_queue_messages', queue='dead_letter')}[10m]))"
    layout.row(
        "Queues",
        ts("Ready messages by queue", "Ready messages in the worker's queues changes, portal and dead_letter "
           "(las_queue_messages, from a passive declare).",
           [q(f"max by (namespace, queue) ({sel('las_queue_messages')})", "{{queue}}")]),
        ts("Consumers by queue (broker)", "Consumers the broker counts on each queue (las_queue_consumers).",
           [q(f"max by (namespace, queue) ({sel('las_queue_consumers')})", "{{queue}}")]),
        ts("Consumers up per replica", "1 while a replica's consumer of a queue is connected and consuming "
           "(las_consumer_up).",
           [q(sel("las_consumer_up"), "{{instance}} {{queue}}")],
           thresholds=[th("LasWorkerConsumerDown"), th("LasWorkerNoConsumer")]),
        ts("Broker (re)connections (per 5 m)", "Broker connections opened per queue, and broker failures "
           "retried; more than one connection means reconnects.",
           [q(f"sum by (queue) (increase({sel('las_broker_connections_total')}[5m]))", "connections {{queue}}"),
            q(f"sum(increase({sel('las_transient_retries_total', component='broker')}[5m]))",
              "broker retries")]),
        ts("Time since last commit", "Time since the newest committed batch of any replica "
           "(las_last_commit_timestamp_seconds); grows when idle, a problem with a backlog.",
           [q(f"time() - max by (namespace) ({sel('las_last_commit_timestamp_seconds')} > 0)",
              "since last commit {{namespace}}")],
           unit="s", thresholds=rules.optional("LasWorkerNoProgress", 0, note="while changes wait"),
           unit_text="s"),
        ts("Batches in flight", "Batches being applied per replica (las_batches_in_flight).",
           [q(f"sum by (instance) ({sel('las_batches_in_flight')})", "{{instance}}")]),
        ts("Dead letters by reason (10 m)", "Messages the worker dead-lettered in the last 10 minutes, by "
           "reason code (x-las-reason-code).",
           [q(f"sum by (namespace, reason) (increase({sel('las_dead_letters_total')}[10m]))", "{{reason}}")],
           thresholds=[th("LasWorkerDeadLetters", 0)], unit_text="in 10 m"),
        ts("Dead-letter queue growth (10 m)", "Change of the messages in las-worker.dead-letter over 10 "
           "minutes, and that change minus what the worker dead-lettered itself: roughly the messages "
           "RabbitMQ dead-lettered after the delivery limit (x-death), which no worker counter sees.",
           [q(dlq_growth, "growth {{namespace}}"),
            q(f"{dlq_growth} - on (namespace) "
              f"sum by (namespace) (increase({sel('las_dead_letters_total')}[10m]))",
              "not from the worker {{namespace}}")],
           min0=False, thresholds=rules.optional("LasDeadLetterQueueGrowing")),
    )

    pool_in_use = sel("las_db_pool_connections", state="in_use")
    pool_wait = sel("las_db_pool_acquire_seconds_bucket")
    layout.row(
        "Database pool",
        ts("Pool connections", "Connections of all replicas by state, and the sum of their pool sizes.",
           [q(f"sum by (state) ({sel('las_db_pool_connections')})", "{{state}}"),
            q(f"sum({sel('las_db_pool_max_connections')})", "max")]),
        ts("Pool in use per replica", "Connections in use as a share of the replica's pool size.",
           [q(f"max by (instance) ({pool_in_use}) / max by (instance) ({sel('las_db_pool_max_connections')})",
              "{{instance}}")], unit="percentunit"),
        ts("Wait for a connection p50 / p99", "Time a task waited for a pooled connection "
           "(las_db_pool_acquire_seconds): p50 of all replicas, p99 per replica.",
           [q(f"histogram_quantile(0.5, sum by (le) (rate({pool_wait}[{RI}])))", "p50"),
            q(f"histogram_quantile(0.99, sum by (instance, le) (rate({pool_wait}[{RI}])))", "p99 {{instance}}")],
           unit="s", unit_text="s",
           thresholds=rules.optional("LasWorkerDatabasePoolSaturated", 0, note="p99, with the pool 90% in use")),
        ts("Database retries (5 m rate)", "Transient database failures retried per second; batches wait "
           "(nothing is dead-lettered) until PostgreSQL answers.",
           [q(f"sum by (namespace) (rate({sel('las_transient_retries_total', component='database')}[5m]))",
              "retries {{namespace}}")],
           unit="ops", thresholds=[th("LasWorkerDatabaseRetrying")], unit_text="per s"),
    )

    lag_bucket = sel("las_sync_lag_seconds_bucket")
    layout.row(
        "Import: messages, lag, batches, rules",
        ts("Messages by type and outcome", "Messages per second by message type and outcome.",
           [q(f"sum by (type, outcome) (rate({messages}[{RI}]))", "{{type}} {{outcome}}")],
           unit="suffix: msg/s", w=12),
        ts("Sync lag p50 / p99", "Commit time minus emitted_at of the applied LAS changes "
           "(las_sync_lag_seconds). The freshness SLO counts the changes above 300 s "
           "(alerts LasSyncFreshnessBudgetBurn, LasSyncFreshnessBudgetSlowBurn).",
           [q(f"histogram_quantile(0.5, sum by (le) (rate({lag_bucket}[{RI}])))", "p50"),
            q(f"histogram_quantile(0.99, sum by (le) (rate({lag_bucket}[{RI}])))", "p99")],
           unit="s", w=12, unit_text="s"),
        ts("Batch size p99 and mean", "Messages per applied batch, per queue.",
           [q(f"histogram_quantile(0.99, sum by (le, queue) (rate({sel('las_batch_size_messages_bucket')}[{RI}])))",
              "p99 {{queue}}"),
            q(f"sum by (queue) (rate({sel('las_batch_size_messages_sum')}[{RI}])) "
              f"/ sum by (queue) (rate({sel('las_batch_size_messages_count')}[{RI}]))", "mean {{queue}}")],
           w=8),
        ts("Batch duration p50 / p99", "Time to apply a batch, first delivery to commit, per queue.",
           [q(f"histogram_quantile(0.5, sum by (le, queue) "
              f"(rate({sel('las_batch_processing_seconds_bucket')}[{RI}])))", "p50 {{queue}}"),
            q(f"histogram_quantile(0.99, sum by (le, queue) "
              f"(rate({sel('las_batch_processing_seconds_bucket')}[{RI}])))", "p99 {{queue}}")],
           unit="s", w=8),
        ts("Rule decisions by rule", "Import rule decisions per second, by rule (R1..R13) and action.",
           [q(f"sum by (rule, action) (rate({sel('las_rule_decisions_total')}[{RI}]))", "{{rule}} {{action}}")],
           unit="ops", w=8),
        ts("Profile changes", "Profiles created, updated, deactivated, reactivated per second, by kind.",
           [q(f"sum by (kind, change) (rate({sel('las_profiles_total')}[{RI}]))", "{{kind}} {{change}}")],
           unit="ops"),
        ts("Intake (R9) and daily job runs (per hour)", "Children under 4 placed in, promoted out of or "
           "staying in intake, and daily job runs by outcome.",
           [q(f"sum by (event) (increase({sel('las_intake_events_total')}[1h]))", "{{event}}"),
            q(f"sum by (outcome) (increase({sel('las_daily_job_runs_total')}[1h]))", "daily job {{outcome}}")]),
        ts("Couplings (R13, per hour)", "LAS records coupled to existing portal profiles by outcome, and the "
           "records waiting for a school's decision now.",
           [q(f"sum by (outcome) (increase({sel('las_couplings_total')}[1h]))", "{{outcome}}"),
            q(f"max by (namespace) ({sel('las_coupling_waits')})", "waiting now {{namespace}}")]),
        ts("Year rollover (R11, per day)", "Group-bound items unlinked and year-bound records deleted.",
           [q(f"sum by (action) (increase({sel('las_rollover_total')}[1d]))", "{{action}}")]),
    )

    layout.row(
        "Process and settings",
        ts("Resident memory", "Resident memory per replica (the container limit is 512 MiB).",
           [q(f"process_resident_memory_bytes{{{NS}}} {worker}", "{{instance}}")], unit="bytes"),
        ts("CPU", "CPU seconds per second per replica.",
           [q(f"rate(process_cpu_seconds_total{{{NS}}}[{RI}]) {worker}", "{{instance}}")], unit="short"),
        ts("Open file descriptors and threads", "Per replica.",
           [q(f"process_open_fds{{{NS}}} {worker}", "fds {{instance}}"),
            q(f"process_threads{{{NS}}} {worker}", "threads {{instance}}")]),
        settings_table("Settings", "Non-secret settings of the replicas (las_settings_info); the last column is "
                       "the number of replicas running with them.",
                       f"count by (prefetch, batch_size, concurrency, pool_size) ({sel('las_settings_info')})"),
    )

    return dash.build()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Generates deploy/grafana/las-worker.json.")
    ap.add_argument("--rules", type=Path, default=RULES, help="the PrometheusRule the thresholds come from")
    ap.add_argument("--out", default=str(OUT), help="where to write the JSON (- for stdout)")
    args = ap.parse_args(argv)
    rules = Rules(args.rules)
    dash = build(rules)
    for alert in rules.missing:
        print(f"dashboard.py: note: alert {alert} is not in {rules.path}; its threshold is not drawn",
              file=sys.stderr)
    text = json.dumps(dash, cls=JSONEncoder, indent=2, sort_keys=True) + "\n"
    if args.out == "-":
        sys.stdout.write(text)
    else:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
