//! The report of `las-worker import`: one record per input line (text or
//! JSON lines), the totals, and progress on standard error.

use super::*;

/// One line of the report.
#[derive(Debug, Serialize)]
pub(super) struct Record {
    pub(super) record: &'static str,
    pub(super) file: String,
    pub(super) line: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) message_id: Option<uuid::Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) brin: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub(super) message_type: Option<&'static str>,
    /// student, guardian, staff, group, school (a link) or school_year.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) entity: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) las_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) version: Option<u64>,
    /// applied, duplicate, stale or rejected.
    pub(super) outcome: &'static str,
    pub(super) dry_run: bool,
    pub(super) decisions: Vec<DecisionRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) reason_code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) reason: Option<String>,
}

#[derive(Debug, Serialize)]
pub(super) struct DecisionRecord {
    pub(super) rule: &'static str,
    pub(super) action: &'static str,
    /// `changed` (overwritten), `cleared`, `kept`, or the action's name.
    pub(super) change: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) field: Option<&'static str>,
    /// `R2:cleared:phone`, as in the change journal.
    pub(super) code: String,
    /// With `--show-values` only: the value before and after (null: blank).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) old: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) new: Option<Value>,
}

pub(super) fn change_label(a: Action) -> &'static str {
    match a {
        Action::Overwritten => "changed",
        Action::Cleared => "cleared",
        Action::Kept => "kept",
        other => other.as_str(),
    }
}

pub(super) fn decision_record(
    d: &Decision,
    values: Option<&(Option<String>, Option<String>)>,
) -> DecisionRecord {
    let text = |v: &Option<String>| v.clone().map(Value::String).unwrap_or(Value::Null);
    let (old, new) = match (d.field, values) {
        (Some(_), Some((o, n))) => (Some(text(o)), Some(text(n))),
        _ => (None, None),
    };
    DecisionRecord {
        rule: d.rule.as_str(),
        action: d.action.as_str(),
        change: change_label(d.action),
        field: d.field.map(Field::as_str),
        code: d.code(),
        old,
        new,
    }
}

/// The record of a line, before its outcome is known.
pub(super) fn base_record(item: &Item, m: Option<&Inbound>) -> Record {
    let mut rec = Record {
        record: "message",
        file: item.file.clone(),
        line: item.line,
        message_id: None,
        brin: None,
        message_type: None,
        entity: None,
        las_key: None,
        version: None,
        outcome: "rejected",
        dry_run: false,
        decisions: vec![],
        reason_code: None,
        reason: None,
    };
    let Some(m) = m else { return rec };
    rec.message_id = Some(m.message_id());
    rec.brin = Some(m.brin().to_owned());
    rec.message_type = Some(m.type_name());
    match m {
        Inbound::Change(c) => {
            rec.entity = Some(match &c.change {
                Change::GroupUpserted(_) | Change::GroupRemoved(_) => "group",
                Change::SchoolYearRolledOver(_) => "school_year",
                other => profile_kind(other)
                    .map(ProfileKind::as_str)
                    .unwrap_or("unknown"),
            });
            rec.las_key = c.change.las_key().map(|k| k.trim().to_owned());
            rec.version = Some(c.version);
        }
        Inbound::Link(_) => rec.entity = Some("school"),
        // A correction of a child's data (v1.3) is about the student.
        Inbound::ParentEdit(e) => match e.student_las_key.as_deref().map(str::trim) {
            Some(k) if !k.is_empty() => {
                rec.entity = Some("student");
                rec.las_key = Some(k.to_owned());
            }
            _ => {
                rec.entity = Some("guardian");
                rec.las_key = e.guardian_las_key.clone();
            }
        },
        Inbound::Erasure(e) => {
            rec.entity = Some(match e.entity_kind.trim() {
                "student" => "student",
                "guardian" => "guardian",
                "staff" => "staff",
                _ => "unknown",
            });
            rec.las_key = Some(e.las_key.trim().to_owned());
        }
        Inbound::Coupling(c) => {
            rec.entity = Some(match c.entity_kind.trim() {
                "student" => "student",
                "guardian" => "guardian",
                "staff" => "staff",
                _ => "unknown",
            });
            rec.las_key = Some(c.las_key.trim().to_owned());
        }
    }
    rec
}

pub(super) fn rejected_record(item: &Item, m: Option<&Inbound>, r: &Rejection) -> Record {
    let mut rec = base_record(item, m);
    if rec.message_id.is_none() {
        rec.message_id = r.message_id;
    }
    rec.reason_code = Some(r.reason.as_str());
    rec.reason = Some(r.text.clone());
    rec
}

pub(super) fn message_record(
    item: &Item,
    m: &Inbound,
    outcome: &MessageOutcome,
    values: Values,
    dry_run: bool,
) -> Record {
    let mut rec = match outcome {
        MessageOutcome::Rejected(r) => rejected_record(item, Some(m), r),
        other => {
            let mut rec = base_record(item, Some(m));
            rec.outcome = other.label();
            if let MessageOutcome::Applied { decisions } = other {
                rec.decisions = decisions
                    .iter()
                    .enumerate()
                    .map(|(i, d)| decision_record(d, values.get(i)))
                    .collect();
            }
            rec
        }
    };
    rec.dry_run = dry_run;
    rec
}

/// The totals line.
#[derive(Debug, Default, Serialize)]
pub(super) struct Totals {
    pub(super) record: &'static str,
    pub(super) dry_run: bool,
    pub(super) messages: u64,
    pub(super) applied: u64,
    pub(super) duplicate: u64,
    pub(super) stale: u64,
    pub(super) rejected: u64,
    /// Decisions per rule id.
    pub(super) rules: BTreeMap<String, u64>,
    /// Decisions per rule and action (`R2:cleared`).
    pub(super) actions: BTreeMap<String, u64>,
    /// Rejections per reason code.
    pub(super) reasons: BTreeMap<String, u64>,
    /// Profiles per kind and change (`student:created`).
    pub(super) profiles: BTreeMap<String, u64>,
    /// R13: the coupling plan of a go-live.
    pub(super) coupling: CouplingPlan,
    /// The schools the input named.
    #[serde(skip)]
    pub(super) brins: std::collections::BTreeSet<String>,
}

/// R13: what an import does with the portal profiles a school already has.
#[derive(Debug, Default, Serialize)]
pub(super) struct CouplingPlan {
    /// LAS records coupled to an existing portal profile.
    pub(super) coupled: u64,
    /// New portal profiles.
    pub(super) new_profiles: u64,
    /// LAS records waiting for the school's decision.
    pub(super) waiting: u64,
    /// Portal profiles of these schools no LAS record claimed.
    pub(super) unclaimed: i64,
}

impl Totals {
    pub(super) fn count(&mut self, r: &Record) {
        match r.outcome {
            "applied" => self.applied += 1,
            "duplicate" => self.duplicate += 1,
            "stale" => self.stale += 1,
            _ => self.rejected += 1,
        }
        if let Some(code) = r.reason_code {
            *self.reasons.entry(code.to_owned()).or_default() += 1;
        }
        for d in &r.decisions {
            *self.rules.entry(d.rule.to_owned()).or_default() += 1;
            *self
                .actions
                .entry(format!("{}:{}", d.rule, d.action))
                .or_default() += 1;
        }
    }
}

pub(super) fn quoted(v: &Option<Value>) -> String {
    match v {
        Some(Value::String(s)) => format!("{s:?}"),
        _ => "(blank)".to_owned(),
    }
}

pub(super) fn write_record(out: &mut impl Write, r: &Record, dry_run: bool) -> std::io::Result<()> {
    let what = match (r.entity, &r.las_key) {
        (Some("school"), _) => format!("school link {}", r.brin.as_deref().unwrap_or("?")),
        (Some(e), Some(k)) => format!("{e} {k}"),
        (Some(e), None) => e.to_owned(),
        (None, _) => "message".to_owned(),
    };
    let mut context = Vec::new();
    if r.entity != Some("school")
        && let Some(b) = &r.brin
    {
        context.push(b.clone());
    }
    if let Some(v) = r.version {
        context.push(format!("v{v}"));
    }
    if let Some(t) = r.message_type {
        context.push(t.to_owned());
    }
    let context = if context.is_empty() {
        String::new()
    } else {
        format!(" ({})", context.join(", "))
    };
    let outcome = match (r.outcome, dry_run) {
        ("applied", true) => "would be applied".to_owned(),
        ("applied", false) => "applied".to_owned(),
        ("duplicate", _) => {
            "duplicate (this message was applied before; nothing changes)".to_owned()
        }
        ("stale", _) => {
            "stale (the portal has this or a newer version; nothing changes)".to_owned()
        }
        (_, _) => format!(
            "rejected [{}] {}",
            r.reason_code.unwrap_or("unknown"),
            r.reason.as_deref().unwrap_or("")
        ),
    };
    writeln!(out, "{}:{}: {what}{context}: {outcome}", r.file, r.line)?;
    for d in &r.decisions {
        let field = d.field.map(|f| format!(" {f}")).unwrap_or_default();
        let values = match (d.change, &d.old, &d.new) {
            (_, None, _) => String::new(),
            ("kept" | "ignored" | "invalid_email", old, _) => format!(": {}", quoted(old)),
            (_, old, new) => format!(": {} -> {}", quoted(old), quoted(new)),
        };
        writeln!(out, "    {} {}{field}{values}", d.rule, d.change)?;
    }
    Ok(())
}

pub(super) fn rule_number(rule: &str) -> u32 {
    rule.trim_start_matches('R').parse().unwrap_or(u32::MAX)
}

pub(super) fn write_totals(out: &mut impl Write, t: &Totals) -> std::io::Result<()> {
    if t.dry_run {
        writeln!(
            out,
            "dry run: nothing was written (the transaction was rolled back)"
        )?;
    }
    writeln!(
        out,
        "messages {}, applied {}, duplicate {}, stale {}, rejected {}",
        t.messages, t.applied, t.duplicate, t.stale, t.rejected
    )?;
    let mut rules: Vec<(&String, &u64)> = t.rules.iter().collect();
    rules.sort_by_key(|(r, _)| rule_number(r));
    for (rule, n) in rules {
        let actions: Vec<String> = t
            .actions
            .iter()
            .filter_map(|(k, v)| {
                let (r, a) = k.split_once(':')?;
                (r == rule.as_str()).then(|| format!("{} {v}", change_label_str(a)))
            })
            .collect();
        writeln!(out, "  {rule}: {n} ({})", actions.join(", "))?;
    }
    if !t.profiles.is_empty() {
        let p: Vec<String> = t.profiles.iter().map(|(k, v)| format!("{k} {v}")).collect();
        writeln!(out, "profiles: {}", p.join(", "))?;
    }
    let c = &t.coupling;
    if c.coupled + c.waiting > 0 || c.unclaimed > 0 {
        writeln!(
            out,
            "coupling (R13): {} coupled to existing portal profiles, {} new profiles, {} waiting for the school, {} portal profiles no LAS record claimed",
            c.coupled, c.new_profiles, c.waiting, c.unclaimed
        )?;
    }
    if !t.reasons.is_empty() {
        let p: Vec<String> = t.reasons.iter().map(|(k, v)| format!("{k} {v}")).collect();
        writeln!(out, "rejected by reason: {}", p.join(", "))?;
    }
    Ok(())
}

pub(super) fn change_label_str(action: &str) -> &str {
    match action {
        "overwritten" => "changed",
        other => other,
    }
}

/// Progress on standard error: an in-place line on a terminal, otherwise a
/// plain line every 10,000 messages or 5 seconds.
pub(super) struct Progress {
    pub(super) tty: bool,
    pub(super) started: Instant,
    pub(super) last: Instant,
    pub(super) last_count: u64,
    pub(super) shown: bool,
}

impl Progress {
    pub(super) fn new() -> Self {
        let now = Instant::now();
        Progress {
            tty: std::io::stderr().is_terminal(),
            started: now,
            last: now,
            last_count: 0,
            shown: false,
        }
    }

    pub(super) fn line(t: &Totals, elapsed: Duration) -> String {
        let rate = t.messages as f64 / elapsed.as_secs_f64().max(0.001);
        format!(
            "import: {} messages, {} applied, {} rejected ({rate:.0}/s)",
            t.messages, t.applied, t.rejected
        )
    }

    pub(super) fn tick(&mut self, t: &Totals) {
        let due = if self.tty {
            self.last.elapsed() >= Duration::from_millis(200)
        } else {
            t.messages - self.last_count >= 10_000 || self.last.elapsed() >= Duration::from_secs(5)
        };
        if !due {
            return;
        }
        let line = Self::line(t, self.started.elapsed());
        if self.tty {
            eprint!("\r\x1b[2K{line}");
        } else {
            eprintln!("{line}");
        }
        self.last = Instant::now();
        self.last_count = t.messages;
        self.shown = true;
    }

    pub(super) fn finish(&mut self, t: &Totals) {
        if self.shown {
            let line = Self::line(t, self.started.elapsed());
            if self.tty {
                eprintln!("\r\x1b[2K{line}");
            } else {
                eprintln!("{line}");
            }
        }
    }
}
