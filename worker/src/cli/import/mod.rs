//! `las-worker import`: applies a file of LAS messages (the wire contract,
//! one message per line) through the same rules and the same batched store
//! code as the consumer, without a broker. For first runs from an export and
//! for reproducing problems.
//!
//! Every chunk of `BATCH_SIZE` lines is one transaction, like a consumer
//! batch; a chunk the database refuses is applied message by message so only
//! the refused message is rejected. Rejected lines are reported and counted,
//! not dead-lettered. `--dry-run` runs the same code in one transaction that
//! is rolled back at the end (each chunk in a savepoint), so later chunks see
//! what earlier chunks would have done and nothing is written.

use crate::domain::batch::profile_kind;
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::NaiveDate;
use clap::Args;
use las_contracts::Change;
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, Postgres, Transaction};

use super::{OutputFormat, json_line};

mod report;
use crate::adapters::db::{BatchEffects, MessageOutcome, Store, StoreError, unclaimed_profiles};
use crate::app::pipeline::{Applied, BatchApplier, RetryControl, apply_isolating, refused};
use crate::domain::message::{self, Inbound, Rejection};
use crate::domain::rules::{Action, Contact, Decision, Field, LasProfile, ProfileKind};
use report::*;
use tokio::sync::watch;

/// Attempts per chunk when the database is unavailable (about a minute).
const TRANSIENT_ATTEMPTS: usize = 10;

#[derive(Debug, Clone, Args)]
pub struct ImportArgs {
    /// Message files: a `.json` file holds one message, any other file
    /// (`.ndjson`) one message per line; `-` reads lines from standard input.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Write nothing: run the same code in a transaction that is rolled back,
    /// and print per profile what would change and why.
    #[arg(long)]
    pub dry_run: bool,
    /// Output: text for people, json for scripts (JSON lines).
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
    /// Also print old and new values. They are personal data: without this
    /// flag only field names, rule ids and LAS keys are printed.
    #[arg(long)]
    pub show_values: bool,
    /// Print only the rejected lines and the totals.
    #[arg(long)]
    pub summary_only: bool,
    /// Messages per transaction, as the consumer's BATCH_SIZE.
    #[arg(long, env = "BATCH_SIZE", default_value_t = 400)]
    pub batch_size: usize,
    /// Pin "today" (YYYY-MM-DD) for the intake rules (R9); default: today in
    /// Europe/Amsterdam.
    #[arg(long, env = "LAS_TODAY")]
    pub today: Option<NaiveDate>,
    /// The portal's address for the links in suggestion e-mails (R10), as
    /// the worker's PORTAL_BASE_URL.
    #[arg(long, env = "PORTAL_BASE_URL")]
    pub portal_base_url: Option<String>,
}

/// Runs the import; exit code 0 when no line was rejected, 1 when some were.
pub async fn run(store: &Store, args: &ImportArgs) -> anyhow::Result<ExitCode> {
    if args.batch_size == 0 || args.batch_size > 5000 {
        eprintln!("las-worker: --batch-size (BATCH_SIZE) must be between 1 and 5000");
        return Ok(ExitCode::from(2));
    }
    // Open every file first: a missing file stops the import before it writes.
    let mut inputs = Vec::with_capacity(args.files.len());
    for path in &args.files {
        inputs.push(Input::open(path)?);
    }
    let today = args.today.unwrap_or_else(crate::app::clock::local_today);
    let mut dry = match args.dry_run {
        true => Some(store.pool().begin().await.context("starting the dry run")?),
        false => None,
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut totals = Totals {
        record: "totals",
        dry_run: args.dry_run,
        ..Totals::default()
    };
    let mut progress = Progress::new();
    let mut chunk: Vec<Item> = Vec::with_capacity(args.batch_size);
    for input in &mut inputs {
        while let Some((line, body)) = input.next()? {
            chunk.push(Item {
                file: input.name.clone(),
                line,
                parsed: message::parse(&body),
            });
            if chunk.len() >= args.batch_size {
                let items = std::mem::take(&mut chunk);
                process_chunk(
                    store,
                    dry.as_mut(),
                    today,
                    args,
                    &items,
                    &mut totals,
                    &mut out,
                )
                .await?;
                progress.tick(&totals);
            }
        }
    }
    if !chunk.is_empty() {
        process_chunk(
            store,
            dry.as_mut(),
            today,
            args,
            &chunk,
            &mut totals,
            &mut out,
        )
        .await?;
    }
    progress.finish(&totals);
    // R13: the portal profiles no LAS record claimed, as the import leaves them.
    let brins: Vec<String> = totals.brins.iter().cloned().collect();
    totals.coupling.unclaimed = match dry.as_mut() {
        Some(tx) => unclaimed_profiles(tx, &brins).await,
        None => {
            let mut conn = store.pool().acquire().await?;
            unclaimed_profiles(&mut conn, &brins).await
        }
    }
    .context("counting the portal profiles no LAS record claimed")?;
    if let Some(tx) = dry {
        tx.rollback().await.context("rolling back the dry run")?;
    }
    match args.format {
        OutputFormat::Json => json_line(&mut out, &totals)?,
        OutputFormat::Text => write_totals(&mut out, &totals)?,
    }
    out.flush()?;
    Ok(if totals.rejected > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Applies one chunk and reports every line of it.
async fn process_chunk(
    store: &Store,
    dry: Option<&mut Transaction<'static, Postgres>>,
    today: NaiveDate,
    args: &ImportArgs,
    items: &[Item],
    totals: &mut Totals,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let msgs: Vec<Inbound> = items
        .iter()
        .filter_map(|i| i.parsed.as_ref().ok().cloned())
        .collect();
    let applied = if msgs.is_empty() {
        Chunk::default()
    } else {
        apply(store, dry, today, args.show_values, &msgs).await?
    };
    let values = if args.show_values {
        field_values(&msgs, &applied.outcomes, &applied.before)
    } else {
        vec![Vec::new(); msgs.len()]
    };
    for ((k, n), v) in applied.effects.profiles {
        *totals.profiles.entry(format!("{k}:{n}")).or_default() += v;
        if n == "created" || n == "held" {
            totals.coupling.new_profiles += v;
        }
    }
    for (k, v) in &applied.effects.couplings {
        match *k {
            "auto" | "manual" => totals.coupling.coupled += v,
            "waiting" => totals.coupling.waiting += v,
            _ => {}
        }
    }
    totals
        .brins
        .extend(msgs.iter().map(|m| m.brin().to_owned()));
    let mut results = applied.outcomes.iter().zip(values);
    for item in items {
        totals.messages += 1;
        let mut record = match &item.parsed {
            Err(r) => rejected_record(item, None, r),
            Ok(m) => {
                let Some((outcome, values)) = results.next() else {
                    anyhow::bail!("the store returned fewer outcomes than messages");
                };
                message_record(item, m, outcome, values, args.dry_run)
            }
        };
        record.dry_run = args.dry_run;
        totals.count(&record);
        let show = !args.summary_only || record.outcome == "rejected";
        if show {
            match args.format {
                OutputFormat::Json => json_line(out, &record)?,
                OutputFormat::Text => write_record(out, &record, args.dry_run)?,
            }
        }
    }
    out.flush()?;
    Ok(())
}

/// One line of input.
struct Item {
    file: String,
    line: usize,
    parsed: Result<Inbound, Rejection>,
}

/// A message file being read.
struct Input {
    name: String,
    source: Source,
}

enum Source {
    Single(Option<Vec<u8>>),
    Lines {
        reader: Box<dyn BufRead + Send>,
        line: usize,
    },
}

impl Input {
    fn open(path: &std::path::Path) -> anyhow::Result<Input> {
        if path.as_os_str() == "-" {
            return Ok(Input {
                name: "<stdin>".into(),
                source: Source::Lines {
                    reader: Box::new(std::io::BufReader::new(std::io::stdin())),
                    line: 0,
                },
            });
        }
        let name = path.display().to_string();
        let source = if path.extension().is_some_and(|e| e == "json") {
            let body =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            Source::Single(Some(body.trim_ascii().to_vec()))
        } else {
            let file =
                std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
            Source::Lines {
                reader: Box::new(std::io::BufReader::new(file)),
                line: 0,
            }
        };
        Ok(Input { name, source })
    }

    /// The next non-blank message: (line number, body).
    fn next(&mut self) -> anyhow::Result<Option<(usize, Vec<u8>)>> {
        match &mut self.source {
            Source::Single(body) => Ok(body.take().map(|b| (1, b))),
            Source::Lines { reader, line } => loop {
                let mut buf = Vec::new();
                let n = reader
                    .read_until(b'\n', &mut buf)
                    .with_context(|| format!("reading {}", self.name))?;
                if n == 0 {
                    return Ok(None);
                }
                *line += 1;
                let body = buf.trim_ascii();
                if !body.is_empty() {
                    return Ok(Some((*line, body.to_vec())));
                }
            },
        }
    }
}

/// What a chunk did: one outcome per valid message, the profiles' contact
/// values before the chunk (only with `--show-values`), and the counts.
#[derive(Default)]
struct Chunk {
    outcomes: Vec<MessageOutcome>,
    before: Snapshot,
    effects: BatchEffects,
}

type ProfileKey = (String, ProfileKind, String);
type Snapshot = HashMap<ProfileKey, Contact>;

/// Applies a chunk through the consumer's pipeline (`app::pipeline`): the
/// same retry policy while the database is unavailable (giving up after
/// `TRANSIENT_ATTEMPTS`, about a minute: an operator is waiting), and the
/// same isolation of a message the database refuses.
async fn apply(
    store: &Store,
    dry: Option<&mut Transaction<'static, Postgres>>,
    today: NaiveDate,
    show_values: bool,
    msgs: &[Inbound],
) -> anyhow::Result<Chunk> {
    let mut applier = ImportApplier {
        store,
        dry,
        today,
        show_values,
    };
    // An import is stopped with Ctrl-C, which ends the process: chunks
    // committed so far stay, the one in flight is rolled back.
    let (_never, shutdown) = watch::channel(false);
    let control = RetryControl {
        shutdown: &shutdown,
        max_attempts: Some(TRANSIENT_ATTEMPTS),
        metrics: None,
    };
    match apply_isolating(&mut applier, msgs, &control).await {
        Ok(Applied::Batch(chunk)) => Ok(chunk),
        Ok(Applied::OneByOne(each)) => {
            let mut all = Chunk::default();
            for (m, r) in msgs.iter().zip(each) {
                match r {
                    Ok(c) => {
                        all.outcomes.push(
                            c.outcomes
                                .into_iter()
                                .next()
                                .unwrap_or(MessageOutcome::Stale),
                        );
                        all.before.extend(c.before);
                        for (k, v) in c.effects.profiles {
                            *all.effects.profiles.entry(k).or_default() += v;
                        }
                        for (k, v) in c.effects.couplings {
                            *all.effects.couplings.entry(k).or_default() += v;
                        }
                    }
                    Err(e) => all.outcomes.push(refused(m, &e)),
                }
            }
            Ok(all)
        }
        Err(e) => Err(e.into()),
    }
}

/// `import`'s applier: a transaction per chunk, or a savepoint of the dry
/// run's transaction (kept for the next chunks, rolled back at the end).
struct ImportApplier<'a> {
    store: &'a Store,
    dry: Option<&'a mut Transaction<'static, Postgres>>,
    today: NaiveDate,
    show_values: bool,
}

impl BatchApplier for ImportApplier<'_> {
    type Applied = Chunk;
    async fn apply(&mut self, msgs: &[Inbound]) -> Result<Chunk, StoreError> {
        match self.dry.as_deref_mut() {
            Some(outer) => {
                let sp = sqlx::Connection::begin(&mut **outer).await?;
                apply_in(self.store, sp, self.today, self.show_values, msgs).await
            }
            None => {
                let tx = self.store.pool().begin().await?;
                apply_in(self.store, tx, self.today, self.show_values, msgs).await
            }
        }
    }
}

async fn apply_in(
    store: &Store,
    mut tx: Transaction<'_, Postgres>,
    today: NaiveDate,
    show_values: bool,
    msgs: &[Inbound],
) -> Result<Chunk, StoreError> {
    let before = if show_values {
        snapshot(&mut tx, msgs).await?
    } else {
        Snapshot::new()
    };
    let (tx, outcomes, effects) = store.apply_batch_in(tx, msgs, today).await?;
    tx.commit().await?;
    Ok(Chunk {
        outcomes,
        before,
        effects,
    })
}

fn profile_key(m: &Inbound) -> Option<ProfileKey> {
    let Inbound::Change(c) = m else { return None };
    let kind = profile_kind(&c.change)?;
    let key = c.change.las_key()?.trim().to_owned();
    Some((c.brin.clone(), kind, key))
}

/// The contact values of the chunk's profiles as they are now.
async fn snapshot(conn: &mut PgConnection, msgs: &[Inbound]) -> Result<Snapshot, StoreError> {
    let keys: Vec<ProfileKey> = msgs.iter().filter_map(profile_key).collect();
    if keys.is_empty() {
        return Ok(Snapshot::new());
    }
    crate::adapters::db::views::current_contacts(conn, &keys).await
}

/// The LAS record's values, normalized as the rules see them (R2: trimmed,
/// blank is none).
fn las_contact(m: &Inbound) -> Option<Contact> {
    let Inbound::Change(c) = m else { return None };
    match &c.change {
        Change::StudentUpserted(r) => Some(LasProfile::from_student(r).contact),
        Change::GuardianUpserted(r) => Some(LasProfile::from_guardian(r).contact),
        Change::StaffUpserted(r) => Some(LasProfile::from_staff(r).contact),
        _ => None,
    }
}

/// (old, new) per decision of every message, for `--show-values`: the old
/// value from the profile before the chunk, carried from message to message
/// of one profile in version order (the order the store applies them in);
/// the new one from the decision: the LAS value when changed, none when
/// cleared, the old value otherwise.
type Values = Vec<(Option<String>, Option<String>)>;

fn field_values(msgs: &[Inbound], outcomes: &[MessageOutcome], before: &Snapshot) -> Vec<Values> {
    let mut out: Vec<Values> = vec![Vec::new(); msgs.len()];
    let mut order: Vec<(ProfileKey, u64, usize)> = msgs
        .iter()
        .enumerate()
        .filter_map(|(i, m)| match (m, profile_key(m)) {
            (Inbound::Change(c), Some(k)) => Some((k, c.version, i)),
            _ => None,
        })
        .collect();
    order.sort();
    let mut state: HashMap<ProfileKey, HashMap<Field, Option<String>>> = HashMap::new();
    for (key, _, i) in order {
        let Some(MessageOutcome::Applied { decisions }) = outcomes.get(i) else {
            continue;
        };
        let current = state.entry(key.clone()).or_insert_with(|| {
            let c = before.get(&key).cloned().unwrap_or_default();
            Field::ALL.iter().map(|f| (*f, c.text(*f))).collect()
        });
        let las = las_contact(&msgs[i]).unwrap_or_default();
        for d in decisions {
            let Some(f) = d.field else {
                out[i].push((None, None));
                continue;
            };
            let old = current.get(&f).cloned().flatten();
            let new = match d.action {
                Action::Overwritten => las.text(f),
                Action::Cleared => None,
                _ => old.clone(),
            };
            current.insert(f, new.clone());
            out[i].push((old, new));
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::domain::rules::Rule;

    fn guardian(version: u64, phone: Option<&str>, email: Option<&str>) -> Inbound {
        let body = serde_json::json!({
            "schema": "las.change.v1", "message_id": uuid::Uuid::new_v4(), "brin": "12AB",
            "source": {"system": "parnassys", "environment_id": "e", "label": null},
            "emitted_at": "2026-11-20T06:00:00Z", "version": version,
            "change": {"type": "guardian.upserted", "las_key": "G1", "phone": phone, "email": email}
        });
        message::parse(&serde_json::to_vec(&body).unwrap()).unwrap()
    }

    fn d(rule: Rule, action: Action, field: Field) -> Decision {
        Decision {
            rule,
            action,
            field: Some(field),
        }
    }

    #[test]
    fn values_follow_the_decisions_in_version_order() {
        // Given in reverse order: v2 clears the phone and keeps the e-mail,
        // v1 set both. The store applies v1 first.
        let msgs = vec![
            guardian(2, Some(" "), None),
            guardian(1, Some("0612"), Some("a@b.nl")),
        ];
        let outcomes = vec![
            MessageOutcome::Applied {
                decisions: vec![
                    d(Rule::R2, Action::Cleared, Field::Phone),
                    d(Rule::R4, Action::Kept, Field::Email),
                ],
            },
            MessageOutcome::Applied {
                decisions: vec![
                    d(Rule::R1, Action::Overwritten, Field::Phone),
                    d(Rule::R1, Action::Overwritten, Field::Email),
                ],
            },
        ];
        let before = Snapshot::new();
        let v = field_values(&msgs, &outcomes, &before);
        assert_eq!(v[1][0], (None, Some("0612".into())));
        assert_eq!(v[1][1], (None, Some("a@b.nl".into())));
        assert_eq!(v[0][0], (Some("0612".into()), None));
        assert_eq!(v[0][1], (Some("a@b.nl".into()), Some("a@b.nl".into())));
    }

    #[test]
    fn text_without_values_names_fields_only() {
        let item = Item {
            file: "f.ndjson".into(),
            line: 3,
            parsed: Ok(guardian(1, Some("0612345678"), None)),
        };
        let Ok(m) = &item.parsed else { panic!() };
        let outcome = MessageOutcome::Applied {
            decisions: vec![d(Rule::R1, Action::Overwritten, Field::Phone)],
        };
        let rec = message_record(&item, m, &outcome, vec![], true);
        let mut buf = Vec::new();
        write_record(&mut buf, &rec, true).unwrap();
        let text = String::from_utf8(buf).unwrap();
        assert!(
            text.starts_with(
                "f.ndjson:3: guardian G1 (12AB, v1, guardian.upserted): would be applied"
            ),
            "{text}"
        );
        assert!(text.contains("R1 changed phone"), "{text}");
        assert!(!text.contains("0612345678"), "{text}");
        let json = serde_json::to_string(&rec).unwrap();
        assert!(!json.contains("0612345678"), "{json}");
    }
}
