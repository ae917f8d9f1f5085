//! The load generator of the benchmark (`src/bin/bench.rs`, issue #7), shared
//! with the tests that need a realistic load (the cluster fault tests, #17).
//!
//! Load (fixed seed): schools (2/3 ParnasSys, 1/3 ESIS), each linked first by
//! a `portal.link.v1`, with a few hundred students, their guardians (families
//! with siblings), staff and groups, exported concurrently (interleaved runs
//! per school), then a wave of updates: 10% of the profiles changed (some
//! fields blanked), 1% of the students removed, 1% stale versions (equal
//! version, new message id) and 1% duplicates (same message id).

use std::time::{Duration, Instant, SystemTime};

use anyhow::{Result, ensure};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use las_contracts::{ESIS_PORTAL_LABEL, LAS_CHANGES_EXCHANGE, PORTAL_REQUESTS_EXCHANGE};
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};
use uuid::Uuid;

/// "Today" for the worker and the generator, so R9 (under 4) never depends on
/// the date: give the worker `LAS_TODAY` = this.
pub const TODAY: &str = "2026-09-01";
/// `emitted_at` placeholder, overwritten in place (same length) at send time.
const TS_PLACEHOLDER: &str = "2026-09-01T06:00:00.000000Z";

#[derive(Debug, Clone)]
pub struct Msg {
    pub exchange: &'static str,
    pub routing_key: String,
    pub body: Vec<u8>,
    /// Byte offset of the `emitted_at` value in `body`.
    ts_at: usize,
    pub id: Uuid,
}

impl Msg {
    fn new(exchange: &'static str, routing_key: String, id: Uuid, v: &Value) -> Msg {
        let body = serde_json::to_vec(v).expect("a JSON value always serializes");
        let ts_at = body
            .windows(TS_PLACEHOLDER.len())
            .position(|w| w == TS_PLACEHOLDER.as_bytes())
            .expect("every generated message carries the emitted_at placeholder");
        Msg {
            exchange,
            routing_key,
            body,
            ts_at,
            id,
        }
    }

    /// Sets `emitted_at` to `t` (RFC 3339 with microseconds, same length).
    pub fn stamp(&mut self, t: SystemTime) {
        let s = chrono::DateTime::<chrono::Utc>::from(t)
            .format("%Y-%m-%dT%H:%M:%S%.6fZ")
            .to_string();
        debug_assert_eq!(s.len(), TS_PLACEHOLDER.len());
        self.body[self.ts_at..self.ts_at + s.len()].copy_from_slice(s.as_bytes());
    }
}

/// What the worker must report for a load, message by message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expect {
    pub changes: usize,
    pub applied: usize,
    pub duplicate: usize,
    pub stale: usize,
    /// Distinct student, guardian and staff profiles.
    pub profiles: usize,
    pub removed_students: usize,
    pub schools: usize,
}

pub struct Load {
    pub links: Vec<Msg>,
    pub changes: Vec<Msg>,
    pub expect: Expect,
    pub bytes: usize,
}

const FIRST: &[&str] = &[
    "Sanne", "Daan", "Fenna", "Sem", "Lotte", "Julia", "Noah", "Emma", "Lucas", "Tess", "Finn",
    "Mila", "Levi", "Zoë", "Bram", "Saar", "Mohamed", "Fatima", "Yara", "Luuk", "Anna", "Jesse",
    "Nina", "Thijs", "Karin", "Petra", "Peter", "Fleur", "Ahmed", "Eva", "Ruben", "Sophie",
];
const LAST: &[&str] = &[
    "Voorbeeld",
    "Proef",
    "Testmans",
    "Oefenen",
    "Proefdier",
    "Jansen",
    "Vries",
    "Bakker",
    "Visser",
    "Smit",
    "Meijer",
    "Mulder",
    "Bos",
    "Vos",
    "Peters",
    "Hendriks",
    "Dekker",
    "Brouwer",
    "Yılmaz",
    "El Amrani",
];
const PREFIX: &[&str] = &["van", "de", "van der", "van den", "ter"];
const STREETS: &[&str] = &[
    "Voorbeeldstraat",
    "Proefweg",
    "Nepplein",
    "Testdijk",
    "Schoolstraat",
    "Kerkweg",
    "Molenlaan",
    "Dorpsstraat",
    "Stationsweg",
    "Julianalaan",
];
const CITIES: &[&str] = &["Teststad", "Nepdorp", "Proefhuizen", "Oefenveen"];

fn uuid(rng: &mut StdRng) -> Uuid {
    let bytes: [u8; 16] = rng.random();
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

fn pick<'a>(rng: &mut StdRng, v: &[&'a str]) -> &'a str {
    v.choose(rng).copied().unwrap_or("x")
}

fn brin_of(i: usize) -> String {
    const B36: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let hi = i / 100;
    format!(
        "{:02}{}{}",
        i % 100,
        B36[(hi / 36) % 36] as char,
        B36[hi % 36] as char
    )
}

fn postcode(rng: &mut StdRng) -> String {
    let l = |r: &mut StdRng| (b'A' + r.random_range(0..26u8)) as char;
    format!("{} {}{}", rng.random_range(1000..10000), l(rng), l(rng))
}

fn phone(rng: &mut StdRng, mobile: bool) -> String {
    if mobile {
        format!("06-{:08}", rng.random_range(0..100_000_000u32))
    } else {
        format!(
            "0{}-{:06}",
            rng.random_range(10..99u32),
            rng.random_range(0..1_000_000u32)
        )
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Sys {
    Parnassys,
    Esis,
}

struct School {
    brin: String,
    source: Value,
    link: Msg,
}

struct SchoolLoad {
    school: School,
    export: Vec<Msg>,
    /// Updates, removals and stale versions, in no particular order.
    wave: Vec<Msg>,
    stale: usize,
    profiles: usize,
    removed_students: usize,
}

/// One profile as exported: its change object and version.
struct Exported {
    kind: &'static str,
    change: Value,
    version: u64,
}

impl School {
    fn change(&self, rng: &mut StdRng, version: u64, change: Value) -> Msg {
        let id = uuid(rng);
        let ty = change["type"].as_str().unwrap_or("unknown").to_owned();
        Msg::new(
            LAS_CHANGES_EXCHANGE,
            format!("las.{}.{ty}", self.brin),
            id,
            &json!({
                "schema": "las.change.v1",
                "message_id": id,
                "brin": self.brin,
                "source": self.source,
                "emitted_at": TS_PLACEHOLDER,
                "version": version,
                "change": change,
            }),
        )
    }
}

fn gen_school(index: usize, seed: u64) -> SchoolLoad {
    let mut rng =
        StdRng::seed_from_u64(seed ^ (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let brin = brin_of(index);
    let sys = if index % 3 == 2 {
        Sys::Esis
    } else {
        Sys::Parnassys
    };
    let (source, link_body) = match sys {
        Sys::Parnassys => {
            let env = format!("parnassys-{brin}-prod");
            (
                json!({"system": "parnassys", "environment_id": env, "label": null}),
                json!({"schema": "portal.link.v1", "brin": brin, "system": "parnassys",
                       "environment_id": env, "label": null, "default_staff_role": "Leerkracht",
                       "link_staff_to_groups": true, "retention_days": 365, "emitted_at": TS_PLACEHOLDER}),
            )
        }
        Sys::Esis => {
            let env = format!("esis-{brin}");
            (
                json!({"system": "esis", "environment_id": env, "label": ESIS_PORTAL_LABEL}),
                json!({"schema": "portal.link.v1", "brin": brin, "system": "esis",
                       "environment_id": env, "label": ESIS_PORTAL_LABEL, "default_staff_role": "Leerkracht",
                       "link_staff_to_groups": false, "esis_composite_groups": false,
                       "retention_days": 365, "emitted_at": TS_PLACEHOLDER}),
            )
        }
    };
    let link_id = uuid(&mut rng);
    let mut link_body = link_body;
    link_body["message_id"] = json!(link_id);
    let school = School {
        link: Msg::new(
            PORTAL_REQUESTS_EXCHANGE,
            format!("portal.{brin}.link"),
            link_id,
            &link_body,
        ),
        brin,
        source,
    };

    let students_n: usize = rng.random_range(200..=450);
    let today = chrono::NaiveDate::parse_from_str(TODAY, "%Y-%m-%d").expect("TODAY is a date");
    let mut export = Vec::new();

    // Groups: year groups 1..8 and the classes students are in.
    let mut classes: Vec<String> = Vec::new();
    let mut groups: Vec<Value> = Vec::new();
    match sys {
        Sys::Parnassys => {
            for y in 1..=8 {
                groups.push(json!({"type": "group.upserted", "las_key": format!("G{y}"),
                    "name": format!("Groep {y}"), "kind": "year", "year_group_keys": null, "student_keys": null}));
            }
            // A combination class 1/2 and one class per year from 3 on, a
            // second class for some years in larger schools.
            groups.push(
                json!({"type": "group.upserted", "las_key": "LG12", "name": "Groep 1/2",
                "kind": "class", "year_group_keys": ["G1", "G2"], "student_keys": null}),
            );
            classes.push("LG12".into());
            for y in 3..=8 {
                for suffix in ["A", "B"] {
                    if suffix == "B" && (students_n < 320 || rng.random_bool(0.5)) {
                        continue;
                    }
                    let key = format!("LG{y}{suffix}");
                    groups.push(json!({"type": "group.upserted", "las_key": key,
                        "name": format!("Groep {y}{suffix}"), "kind": "class",
                        "year_group_keys": [format!("G{y}")], "student_keys": null}));
                    classes.push(key);
                }
            }
        }
        Sys::Esis => {
            for y in 1..=8 {
                let key = format!("GRP-{y}");
                groups.push(json!({"type": "group.upserted", "las_key": key,
                    "name": format!("Groep {y}"), "kind": "group", "year_group_keys": null, "student_keys": null}));
                classes.push(key);
            }
            // A combination group: skipped while esis_composite_groups is off (R7).
            groups.push(
                json!({"type": "group.upserted", "las_key": "GRP-78", "name": "Groep 7/8",
                "kind": "group", "year_group_keys": ["GRP-7", "GRP-8"], "student_keys": null}),
            );
        }
    }

    let mut profiles: Vec<Exported> = Vec::new();
    let mut student_keys: Vec<String> = Vec::new();
    let esis = sys == Sys::Esis;
    for n in 0..students_n {
        let key = match sys {
            Sys::Parnassys => format!("L{:05}", 10_000 + n),
            Sys::Esis => format!("E-{}", 40_000 + n),
        };
        let age_days = rng.random_range((4 * 365 + 30)..(12 * 365));
        let birth = today - chrono::Duration::days(age_days);
        let class = classes.choose(&mut rng).cloned().unwrap_or_default();
        let prefix = rng.random_bool(0.3).then(|| pick(&mut rng, PREFIX));
        profiles.push(Exported {
            kind: "student",
            version: rng.random_range(1..=5),
            change: json!({"type": "student.upserted", "las_key": key,
                "first_name": pick(&mut rng, FIRST), "name_prefix": prefix, "last_name": pick(&mut rng, LAST),
                "birth_date": birth.format("%Y-%m-%d").to_string(),
                "street": format!("{} {}", pick(&mut rng, STREETS), rng.random_range(1..200)),
                "postcode": postcode(&mut rng), "city": pick(&mut rng, CITIES), "phone": null,
                "group_keys": [class]}),
        });
        student_keys.push(key);
    }
    // Subclasses (ParnasSys): hand-picked students.
    if sys == Sys::Parnassys {
        for name in ["LEES", "REKEN"] {
            let members: Vec<&String> = student_keys.sample(&mut rng, 12).collect();
            groups.push(
                json!({"type": "group.upserted", "las_key": format!("SLG-{name}"),
                "name": format!("Subgroep {name}"), "kind": "subclass", "year_group_keys": null,
                "student_keys": members}),
            );
        }
    }
    // Families: 1-3 siblings with 1-2 guardians.
    let mut next = 0;
    let mut guardian_n = 0;
    while next < student_keys.len() {
        let kids = rng.random_range(1..=3usize).min(student_keys.len() - next);
        let family = &student_keys[next..next + kids];
        next += kids;
        let last = pick(&mut rng, LAST);
        let city = pick(&mut rng, CITIES);
        let street = format!("{} {}", pick(&mut rng, STREETS), rng.random_range(1..200));
        let pc = postcode(&mut rng);
        for _ in 0..(if rng.random_bool(0.75) { 2 } else { 1 }) {
            let key = match sys {
                Sys::Parnassys => format!("O{:05}", 20_000 + guardian_n),
                Sys::Esis => format!("E-{}", 50_000 + guardian_n),
            };
            guardian_n += 1;
            let first = pick(&mut rng, FIRST);
            profiles.push(Exported {
                kind: "guardian",
                version: rng.random_range(1..=5),
                change: json!({"type": "guardian.upserted", "las_key": key,
                    "first_name": first, "name_prefix": null, "last_name": last,
                    "street": street, "postcode": pc, "city": city,
                    "phone": rng.random_bool(0.4).then(|| phone(&mut rng, false)),
                    "mobile": phone(&mut rng, true),
                    "emergency_phone": (esis && rng.random_bool(0.5)).then(|| phone(&mut rng, true)),
                    "email": format!("{}.{}{}@example.org", first.to_lowercase(), last.to_lowercase().replace(' ', ""), guardian_n),
                    "student_keys": family}),
            });
        }
    }
    // Staff: a teacher or two per class and some others.
    let staff_n = classes.len() + rng.random_range(2..8);
    for n in 0..staff_n {
        let key = match sys {
            Sys::Parnassys => format!("M{:04}", 3_000 + n),
            Sys::Esis => format!("E-{}", 60_000 + n),
        };
        let first = pick(&mut rng, FIRST);
        let last = pick(&mut rng, LAST);
        let teaches: Vec<&String> = if n < classes.len() {
            vec![&classes[n]]
        } else {
            let k = rng.random_range(0..=2);
            classes.sample(&mut rng, k).collect()
        };
        profiles.push(Exported {
            kind: "staff",
            version: rng.random_range(1..=5),
            change: json!({"type": "staff.upserted", "las_key": key,
                "first_name": first, "name_prefix": null, "last_name": last,
                "email": format!("{}.{}@school.example.org", first.to_lowercase(), n),
                "phone": phone(&mut rng, false),
                "mobile": rng.random_bool(0.5).then(|| phone(&mut rng, true)),
                "street": format!("{} {}", pick(&mut rng, STREETS), rng.random_range(1..200)),
                "postcode": postcode(&mut rng), "city": pick(&mut rng, CITIES),
                "emergency_phone": esis.then(|| phone(&mut rng, true)),
                "group_keys": teaches}),
        });
    }

    // The export: groups first, then students, guardians, staff (as a LAS sends it).
    for g in groups {
        let v = rng.random_range(1..=3);
        export.push(school.change(&mut rng, v, g));
    }
    for p in &profiles {
        export.push(school.change(&mut rng, p.version, p.change.clone()));
    }

    // The wave: 10% changed (some fields blanked), 1% of the students removed,
    // 1% stale versions of what was exported.
    let mut wave = Vec::new();
    let mut removed_students = 0;
    let mut stale = 0;
    for p in &profiles {
        let roll: f64 = rng.random();
        if roll < 0.10 {
            let mut c = p.change.clone();
            if rng.random_bool(0.4) {
                c["street"] = json!(format!(
                    "{} {}",
                    pick(&mut rng, STREETS),
                    rng.random_range(1..200)
                ));
                c["postcode"] = json!(postcode(&mut rng));
            }
            if p.kind != "student" {
                if rng.random_bool(0.3) {
                    c["mobile"] = json!(phone(&mut rng, true));
                }
                if rng.random_bool(0.2) {
                    c["email"] = json!(format!(
                        "nieuw.{}@example.org",
                        rng.random_range(0..1_000_000u32)
                    ));
                }
                // R2: blank clears; R4: a blank e-mail keeps the portal's.
                for (field, p_blank) in [("phone", 0.3), ("mobile", 0.15), ("email", 0.1)] {
                    if rng.random_bool(p_blank) {
                        c[field] = Value::Null;
                    }
                }
            } else if rng.random_bool(0.1) {
                c["group_keys"] = json!([classes.choose(&mut rng).cloned().unwrap_or_default()]);
            }
            for field in ["street", "postcode", "city"] {
                if rng.random_bool(0.05) {
                    c[field] = Value::Null;
                }
            }
            wave.push(school.change(&mut rng, p.version + 1, c));
        } else if roll < 0.11 && p.kind == "student" {
            removed_students += 1;
            wave.push(school.change(
                &mut rng,
                p.version + 1,
                json!({"type": "student.removed", "las_key": p.change["las_key"]}),
            ));
        }
        if rng.random_bool(0.01) {
            // The connector re-sent the exported version under a new message id.
            stale += 1;
            wave.push(school.change(&mut rng, p.version, p.change.clone()));
        }
    }
    SchoolLoad {
        school,
        export,
        wave,
        stale,
        profiles: profiles.len(),
        removed_students,
    }
}

impl Load {
    /// Schools until about `target` change messages (or exactly `schools`).
    pub fn generate(seed: u64, target: usize, schools: Option<usize>) -> Load {
        let mut loads: Vec<SchoolLoad> = Vec::new();
        let mut total = 0usize;
        loop {
            match schools {
                Some(n) if loads.len() >= n => break,
                None if total >= target => break,
                _ => {}
            }
            let s = gen_school(loads.len(), seed);
            // +1% duplicates added below.
            total += (s.export.len() + s.wave.len()) * 101 / 100;
            loads.push(s);
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let mut expect = Expect {
            schools: loads.len(),
            ..Expect::default()
        };
        let mut links = Vec::new();
        let mut exports: Vec<std::collections::VecDeque<Msg>> = Vec::new();
        let mut wave: Vec<Msg> = Vec::new();
        for s in loads {
            expect.stale += s.stale;
            expect.profiles += s.profiles;
            expect.removed_students += s.removed_students;
            links.push(s.school.link);
            exports.push(s.export.into());
            wave.extend(s.wave);
        }
        // Connectors export concurrently: runs of 1..40 messages per school.
        let mut changes: Vec<Msg> = Vec::with_capacity(total);
        let mut active: Vec<usize> = (0..exports.len()).collect();
        while !active.is_empty() {
            let slot = rng.random_range(0..active.len());
            let q = &mut exports[active[slot]];
            for _ in 0..rng.random_range(1..=40) {
                match q.pop_front() {
                    Some(m) => changes.push(m),
                    None => break,
                }
            }
            if q.is_empty() {
                active.swap_remove(slot);
            }
        }
        // Duplicates: 1% of all messages again, same message id.
        let dups = (changes.len() + wave.len()) / 100;
        for _ in 0..dups {
            let i = rng.random_range(0..changes.len() + wave.len());
            let m = if i < changes.len() {
                changes[i].clone()
            } else {
                wave[i - changes.len()].clone()
            };
            wave.push(m);
        }
        expect.duplicate = dups;
        wave.shuffle(&mut rng);
        changes.extend(wave);
        expect.changes = changes.len();
        expect.applied = expect.changes - expect.duplicate - expect.stale;
        let bytes = changes.iter().map(|m| m.body.len()).sum();
        Load {
            links,
            changes,
            expect,
            bytes,
        }
    }
}

/// The state a profile of a load must end in: that of its newest version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinalProfile {
    pub version: i64,
    /// Deactivated in the portal: the newest version is a removal, or (a
    /// guardian) every student it is linked to is removed (R12).
    pub deactivated: bool,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
}

impl Load {
    /// Each school's BRIN and LAS source (`source` of its change messages).
    pub fn sources(&self) -> Vec<(String, Value)> {
        self.links
            .iter()
            .map(|m| {
                let v: Value = serde_json::from_slice(&m.body).expect("a generated link is JSON");
                let brin = v["brin"].as_str().unwrap_or_default().to_owned();
                let source = json!({"system": v["system"], "environment_id": v["environment_id"], "label": v["label"]});
                (brin, source)
            })
            .collect()
    }

    /// The distinct message ids of the changes.
    pub fn distinct_ids(&self) -> Vec<Uuid> {
        let set: std::collections::BTreeSet<Uuid> = self.changes.iter().map(|m| m.id).collect();
        set.into_iter().collect()
    }

    /// Every student, guardian and staff profile of the load, by (BRIN,
    /// kind, LAS key), with the state of its newest version (a stale copy
    /// has the same version and content as the one it repeats).
    pub fn final_profiles(
        &self,
    ) -> std::collections::BTreeMap<(String, String, String), FinalProfile> {
        let mut out: std::collections::BTreeMap<(String, String, String), FinalProfile> =
            std::collections::BTreeMap::new();
        // A guardian's students, from its newest version.
        let mut students: std::collections::BTreeMap<(String, String, String), Vec<String>> =
            std::collections::BTreeMap::new();
        for m in &self.changes {
            let v: Value = serde_json::from_slice(&m.body).expect("a generated change is JSON");
            let ty = v["change"]["type"].as_str().unwrap_or_default();
            let Some((kind, op)) = ty.split_once('.') else {
                continue;
            };
            if !matches!(kind, "student" | "guardian" | "staff") {
                continue;
            }
            let key = (
                v["brin"].as_str().unwrap_or_default().to_owned(),
                kind.to_owned(),
                v["change"]["las_key"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            );
            let version = v["version"].as_i64().unwrap_or_default();
            let text = |f: &str| v["change"][f].as_str().map(str::to_owned);
            let state = FinalProfile {
                version,
                deactivated: op == "removed",
                first_name: text("first_name"),
                last_name: text("last_name"),
            };
            match out.get(&key) {
                Some(have) if have.version >= version => {}
                _ => {
                    let keys = v["change"]["student_keys"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|k| k.as_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default();
                    students.insert(key.clone(), keys);
                    out.insert(key, state);
                }
            }
        }
        for ((brin, kind, key), keys) in students {
            if kind != "guardian" || keys.is_empty() {
                continue;
            }
            let all_removed = keys.iter().all(|k| {
                out.get(&(brin.clone(), "student".to_owned(), k.clone()))
                    .is_some_and(|s| s.deactivated)
            });
            if all_removed && let Some(g) = out.get_mut(&(brin, kind, key)) {
                g.deactivated = true;
            }
        }
        out
    }
}

/// Publishes with publisher confirms, `window` unconfirmed at most; stamps
/// `emitted_at` with the send time. Fails unless every message is confirmed.
pub async fn publish(url: &str, msgs: &mut [Msg], window: usize) -> Result<Duration> {
    let conn = Connection::connect(url, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let started = Instant::now();
    let mut pending = std::collections::VecDeque::with_capacity(window);
    for m in msgs.iter_mut() {
        m.stamp(SystemTime::now());
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2);
        pending.push_back(
            ch.basic_publish(
                m.exchange.into(),
                m.routing_key.as_str().into(),
                BasicPublishOptions::default(),
                &m.body,
                props,
            )
            .await?,
        );
        if pending.len() >= window
            && let Some(c) = pending.pop_front()
        {
            ensure!(c.await?.is_ack(), "the broker refused a publish (nack)");
        }
    }
    for c in pending {
        ensure!(c.await?.is_ack(), "the broker refused a publish (nack)");
    }
    let took = started.elapsed();
    let _ = ch.close(200, "done".into()).await;
    let _ = conn.close(200, "done".into()).await;
    Ok(took)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn load_is_deterministic_and_counted() {
        let a = Load::generate(7, 3_000, None);
        let b = Load::generate(7, 3_000, None);
        assert_eq!(a.expect, b.expect);
        assert_eq!(a.changes.len(), a.expect.changes);
        assert!(
            a.changes
                .iter()
                .zip(&b.changes)
                .all(|(x, y)| x.body == y.body)
        );
        let ids: HashSet<Uuid> = a.changes.iter().map(|m| m.id).collect();
        assert_eq!(ids.len(), a.expect.changes - a.expect.duplicate);
        assert!(a.expect.stale > 0 && a.expect.duplicate > 0 && a.expect.removed_students > 0);
        assert_eq!(a.links.len(), a.expect.schools);
    }

    #[test]
    fn messages_are_valid_contract_messages() {
        let mut load = Load::generate(3, 2_000, None);
        for m in load.changes.iter_mut().chain(load.links.iter_mut()) {
            m.stamp(SystemTime::now());
            let v: Value = serde_json::from_slice(&m.body).expect("JSON");
            let (exchange, key) = crate::route(&v);
            assert_eq!(
                (exchange.as_str(), key.as_str()),
                (m.exchange, m.routing_key.as_str())
            );
            match m.exchange {
                LAS_CHANGES_EXCHANGE => {
                    serde_json::from_value::<las_contracts::LasChangeV1>(v).expect("las.change.v1");
                }
                _ => {
                    serde_json::from_value::<las_contracts::PortalLinkV1>(v)
                        .expect("portal.link.v1");
                }
            }
        }
    }

    #[test]
    fn final_profiles_are_the_newest_versions() {
        let load = Load::generate(7, 3_000, None);
        let finals = load.final_profiles();
        assert_eq!(finals.len(), load.expect.profiles);
        let removed = finals
            .iter()
            .filter(|((_, kind, _), p)| kind == "student" && p.deactivated)
            .count();
        assert_eq!(removed, load.expect.removed_students);
        // Newest: no change of a profile has a higher version.
        for m in &load.changes {
            let v: Value = serde_json::from_slice(&m.body).unwrap();
            let kind = v["change"]["type"]
                .as_str()
                .unwrap()
                .split('.')
                .next()
                .unwrap();
            let key = (
                v["brin"].as_str().unwrap().to_owned(),
                kind.to_owned(),
                v["change"]["las_key"].as_str().unwrap().to_owned(),
            );
            if let Some(f) = finals.get(&key) {
                assert!(f.version >= v["version"].as_i64().unwrap());
            }
        }
        assert_eq!(load.sources().len(), load.links.len());
    }
}
