//! R10: a parent's edit of an imported field becomes a suggestion e-mail to
//! the school. Pure: which proposals are suggestions, who receives them, and
//! the e-mail text. The store persists them; `mail` sends them.

pub use las_contracts::SuggestionDetail;
use las_contracts::{FieldProposal, LasSystem};
use serde::Serialize;

use crate::domain::rules::{self, Contact, Field, Policy, ProfileKind};

/// One field of a suggestion: the value the portal has and the one proposed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldChange {
    pub field: Field,
    pub current: Option<String>,
    pub proposed: Option<String>,
}

/// What a parent edit amounts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The fields that are suggestions, in contract order.
    pub changes: Vec<FieldChange>,
    /// Field names that were not suggestions: portal-only fields (R5), fields
    /// not imported from this LAS, and proposals equal to the current value.
    pub ignored: Vec<String>,
}

impl Plan {
    /// The decisions R10 records for an edit: one `suggestion_opened` per
    /// field, and `not_a_suggestion` when some proposals (or all) were not.
    pub fn decisions(&self) -> Vec<rules::Decision> {
        let mut decisions: Vec<rules::Decision> = self
            .changes
            .iter()
            .map(|c| rules::Decision {
                rule: rules::Rule::R10,
                action: rules::Action::SuggestionOpened,
                field: Some(c.field),
            })
            .collect();
        if self.changes.is_empty() || !self.ignored.is_empty() {
            decisions.push(rules::Decision {
                rule: rules::Rule::R10,
                action: rules::Action::NotASuggestion,
                field: None,
            });
        }
        decisions
    }
}

/// The idempotency key of a suggestion e-mail: the same edit and recipient
/// always give the same key, so a redelivered edit never mails twice and the
/// e-mail API can deduplicate a retried send.
pub fn email_key(edit_message_id: uuid::Uuid, recipient_user_id: i64) -> uuid::Uuid {
    uuid::Uuid::new_v5(&edit_message_id, &recipient_user_id.to_be_bytes())
}

impl Field {
    /// A contract field name.
    pub fn parse(name: &str) -> Option<Field> {
        Field::ALL.into_iter().find(|f| f.as_str() == name)
    }

    /// Dutch label for e-mails to the school.
    pub fn label_nl(self) -> &'static str {
        match self {
            Field::FirstName => "Voornaam",
            Field::NamePrefix => "Tussenvoegsel",
            Field::LastName => "Achternaam",
            Field::BirthDate => "Geboortedatum",
            Field::Street => "Straat en huisnummer",
            Field::Postcode => "Postcode",
            Field::City => "Woonplaats",
            Field::Phone => "Telefoonnummer",
            Field::Mobile => "Mobiel nummer",
            Field::EmergencyPhone => "Telefoonnummer bij nood",
            Field::Email => "E-mailadres",
        }
    }
}

/// R10: the suggestion an edit makes about a profile of `kind`: the
/// guardian's own data, or (v1.3, "Melding ouder-/kindgegevens") one of
/// their children's. Only the fields imported for that kind (R3) can be
/// suggestions (for a student never a phone or e-mail); a proposal of the
/// value the portal already has is none.
pub fn plan(
    kind: ProfileKind,
    system: LasSystem,
    current: &Contact,
    proposals: &[FieldProposal],
) -> Plan {
    let mut changes: Vec<FieldChange> = Vec::new();
    let mut ignored = Vec::new();
    for p in proposals {
        let field = Field::parse(p.field.trim());
        let imported = field.is_some_and(|f| {
            matches!(
                rules::policy(kind, system, f),
                Policy::Import | Policy::ImportKeepOnBlank
            )
        });
        let Some(field) = field.filter(|_| imported) else {
            ignored.push(p.field.trim().chars().take(64).collect());
            continue;
        };
        let proposed = proposed_value(field, &p.proposed);
        let cur = current.text(field);
        if proposed == cur {
            ignored.push(field.as_str().to_owned());
            continue;
        }
        // A later proposal for the same field in one edit wins.
        changes.retain(|c| c.field != field);
        changes.push(FieldChange {
            field,
            current: cur,
            proposed,
        });
    }
    changes.sort_by_key(|c| Field::ALL.iter().position(|f| *f == c.field));
    Plan { changes, ignored }
}

/// A proposed value as the LAS would bring it (R2): trimmed, blank is none;
/// a birth date written `YYYY-MM-DD` or `DD-MM-YYYY` as `YYYY-MM-DD`, so a
/// later import of that date resolves it. A date that cannot be read is
/// passed on as written: the school reads it.
fn proposed_value(field: Field, raw: &Option<String>) -> Option<String> {
    let v = rules::normalize(raw)?;
    if field != Field::BirthDate {
        return Some(v);
    }
    ["%Y-%m-%d", "%d-%m-%Y", "%d/%m/%Y"]
        .iter()
        .find_map(|f| chrono::NaiveDate::parse_from_str(&v, f).ok())
        .map(|d| d.to_string())
        .or(Some(v))
}

/// One of a guardian's children, as a correction of its data needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Child {
    pub profile_id: i64,
    pub las_key: String,
}

/// R10 (v1.3): the child a parent's correction is about. It must be one of
/// the guardian's own children in this school (`children`: the active
/// students the LAS links to the guardian); every identifier the edit gives
/// must name that child. Otherwise the readable reason of the rejection
/// (LAS keys and ids only, never a name).
pub fn child_of<'a>(
    brin: &str,
    guardian_key: &str,
    children: &'a [Child],
    las_key: Option<&str>,
    profile_id: Option<i64>,
) -> Result<&'a Child, String> {
    let las_key = las_key.map(str::trim).filter(|k| !k.is_empty());
    let named = match (las_key, profile_id) {
        (Some(k), Some(id)) => format!("with LAS key {k} and profile id {id}"),
        (Some(k), None) => format!("with LAS key {k}"),
        (None, Some(id)) => format!("with profile id {id}"),
        (None, None) => return Err("the edit names no student".into()),
    };
    children
        .iter()
        .find(|c| {
            las_key.is_none_or(|k| c.las_key == k) && profile_id.is_none_or(|id| c.profile_id == id)
        })
        .ok_or_else(|| {
            format!(
                "the student {named} is not a child of guardian {guardian_key} in the portal of BRIN {brin}; \
a parent can only propose corrections of their own children's data (R10)"
            )
        })
}

/// R10: the link into the portal for a suggestion:
/// `{PORTAL_BASE_URL}/suggestions/{id}`; none without a base URL.
pub fn suggestion_link(base_url: Option<&str>, edit_id: uuid::Uuid) -> Option<String> {
    let base = base_url.map(str::trim).filter(|b| !b.is_empty())?;
    Some(format!(
        "{}/suggestions/{edit_id}",
        base.trim_end_matches('/')
    ))
}

/// A short reference to a suggestion for people: the first 8 hex digits of
/// the parent edit's message id (the portal's own id for the edit). Not a
/// database sequence, so an e-mail's text never depends on the order in
/// which edits arrived.
pub fn short_ref(edit_id: uuid::Uuid) -> String {
    edit_id.simple().to_string()[..8].to_owned()
}

/// A portal user as far as suggestions are concerned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortalUser {
    pub id: i64,
    pub display_name: String,
    pub email: String,
    pub role: String,
    pub active: bool,
    pub notify_contact_changes: bool,
}

/// R10: who receives suggestions: active link administrators and active users
/// with the notify-contact-changes right; never a parent account; one e-mail
/// per address.
pub fn recipients(users: &[PortalUser]) -> Vec<&PortalUser> {
    let mut seen = std::collections::HashSet::new();
    users
        .iter()
        .filter(|u| u.active && u.role != "parent")
        .filter(|u| u.role == "link_admin" || u.notify_contact_changes)
        .filter(|u| rules::is_valid_email(u.email.trim()))
        .filter(|u| seen.insert(u.email.trim().to_lowercase()))
        .collect()
}

/// The student a suggestion is about (a parent's correction of a child's
/// data), for the e-mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AboutStudent {
    pub name: String,
    pub las_key: String,
}

/// What the e-mail says. With `full` names are shown to the school, which
/// has them anyway; with `notice` nothing about the persons is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailContext {
    pub brin: String,
    pub system: LasSystem,
    pub detail: SuggestionDetail,
    /// The parent edit's message id: the suggestion's reference in the link
    /// and the text (`short_ref`).
    pub edit_id: uuid::Uuid,
    /// The link into the portal (`suggestion_link`).
    pub link: Option<String>,
    pub guardian_name: String,
    pub guardian_las_key: String,
    pub student_names: Vec<String>,
    /// Set when the suggestion is about a child's data, not the guardian's.
    pub about_student: Option<AboutStudent>,
    pub changes: Vec<FieldChange>,
}

/// A rendered e-mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// A person's display name from the contact fields: "Anna van Dijk".
pub fn full_name(c: &Contact) -> String {
    [&c.first_name, &c.name_prefix, &c.last_name]
        .iter()
        .filter_map(|p| p.as_deref())
        .collect::<Vec<_>>()
        .join(" ")
}

fn shown(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("(leeg)")
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The suggestion e-mail in Dutch, plain text and simple HTML, with the
/// school's detail (R10): `full` or `notice`.
pub fn render(ctx: &EmailContext, recipient_name: &str) -> Rendered {
    match ctx.detail {
        SuggestionDetail::Full => render_full(ctx, recipient_name),
        SuggestionDetail::Notice => render_notice(ctx, recipient_name),
    }
}

fn las_name(system: LasSystem) -> &'static str {
    match system {
        LasSystem::Parnassys => "ParnasSys",
        LasSystem::Esis => "ESIS",
    }
}

const FOOTER: &str = "Dit bericht is automatisch verstuurd door de koppeling van het ouderportaal aan koppelingsbeheerders en \
medewerkers met het recht 'Melding ouder-/kindgegevens'. Stuur het niet door naar ouders.";

fn leading(las: &str) -> String {
    format!(
        "{las} is leidend: het ouderportaal neemt de gegevens over uit {las} en wijzigt ze niet zelf. \
Klopt het voorstel, verwerk het dan in {las}; bij de volgende synchronisatie staat het ook in het ouderportaal."
    )
}

/// Where the school finds the suggestion in the portal.
fn where_to_look(ctx: &EmailContext) -> String {
    match &ctx.link {
        Some(link) => format!("Bekijk het voorstel in het ouderportaal: {link}"),
        None => format!(
            "Bekijk het voorstel in het ouderportaal bij de wijzigingsvoorstellen (kenmerk {}).",
            short_ref(ctx.edit_id)
        ),
    }
}

fn html_where_to_look(ctx: &EmailContext) -> String {
    match &ctx.link {
        Some(link) => format!(
            "Bekijk het voorstel in het ouderportaal: <a href=\"{0}\">{0}</a>",
            escape(link)
        ),
        None => escape(&where_to_look(ctx)),
    }
}

/// `notice`: only that a suggestion waits, with a link into the portal. No
/// names, no values, no LAS keys of persons (seed 003: pupil data stays out
/// of e-mail).
fn render_notice(ctx: &EmailContext, recipient_name: &str) -> Rendered {
    let las = las_name(ctx.system);
    let whose = if ctx.about_student.is_some() {
        "de gegevens van een leerling"
    } else {
        "de eigen gegevens van een ouder/verzorger"
    };
    let subject = format!(
        "Wijzigingsvoorstel in het ouderportaal (kenmerk {})",
        short_ref(ctx.edit_id)
    );
    let intro = format!(
        "In het ouderportaal wacht een wijzigingsvoorstel van een ouder/verzorger voor {whose} (kenmerk {}).",
        short_ref(ctx.edit_id)
    );
    let privacy = "Op verzoek van de school staan er in dit bericht geen namen en geen gegevens.";
    let text = format!(
        "Beste {recipient_name},\n\n{intro}\n\n{}\n\n{privacy} {}\n\nSchool (BRIN): {}\n\n{FOOTER}\n",
        where_to_look(ctx),
        leading(las),
        ctx.brin
    );
    let html = format!(
        "<!DOCTYPE html>\n<html lang=\"nl\"><body>\n<p>Beste {},</p>\n<p>{}</p>\n<p>{}</p>\n<p>{} {}</p>\n<p>School (BRIN): {}</p>\n<p><small>{}</small></p>\n</body></html>\n",
        escape(recipient_name),
        escape(&intro),
        html_where_to_look(ctx),
        escape(privacy),
        escape(&leading(las)),
        escape(&ctx.brin),
        escape(FOOTER)
    );
    Rendered {
        subject,
        text,
        html,
    }
}

/// `full`: the guardian, the student(s) and per field the current and the
/// proposed value.
fn render_full(ctx: &EmailContext, recipient_name: &str) -> Rendered {
    let las = las_name(ctx.system);
    let guardian = if ctx.guardian_name.trim().is_empty() {
        format!("Ouder/verzorger {}", ctx.guardian_las_key)
    } else {
        ctx.guardian_name.clone()
    };
    let children = if ctx.student_names.is_empty() {
        String::new()
    } else {
        format!(" (ouder/verzorger van {})", ctx.student_names.join(", "))
    };
    let student = ctx.about_student.as_ref().map(|s| {
        if s.name.trim().is_empty() {
            format!("Leerling {}", s.las_key)
        } else {
            s.name.clone()
        }
    });
    let subject = match &student {
        Some(student) => format!("Wijzigingsvoorstel gegevens leerling: {student}"),
        None => format!("Wijzigingsvoorstel gegevens ouder/verzorger: {guardian}"),
    };
    let plural = if ctx.changes.len() == 1 { "" } else { "en" };
    let of_whom = match &student {
        Some(student) => format!(" van de gegevens van leerling {student}"),
        None => String::new(),
    };
    let intro = format!(
        "{guardian}{children} heeft in het ouderportaal de volgende wijziging{plural}{of_whom} voorgesteld:"
    );
    let mut keys = Vec::new();
    if let Some(s) = &ctx.about_student {
        keys.push(format!(
            "Leerlingadministratie-sleutel leerling: {}",
            s.las_key
        ));
    }
    keys.push(format!(
        "Leerlingadministratie-sleutel ouder/verzorger: {}",
        ctx.guardian_las_key
    ));

    let mut text = format!("Beste {recipient_name},\n\n{intro}\n\n");
    for c in &ctx.changes {
        text.push_str(&format!(
            "- {}: {} -> {}\n",
            c.field.label_nl(),
            shown(&c.current),
            shown(&c.proposed)
        ));
    }
    text.push_str(&format!(
        "\n{}\n\n{}\n\nSchool (BRIN): {}\n{}\n\n{FOOTER}\n",
        leading(las),
        where_to_look(ctx),
        ctx.brin,
        keys.join("\n")
    ));

    let mut html = format!(
        "<!DOCTYPE html>\n<html lang=\"nl\"><body>\n<p>Beste {},</p>\n<p>{}</p>\n<table>\n<tr><th align=\"left\">Gegeven</th><th align=\"left\">Nu</th><th align=\"left\">Voorstel</th></tr>\n",
        escape(recipient_name),
        escape(&intro),
    );
    for c in &ctx.changes {
        html.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td><strong>{}</strong></td></tr>\n",
            escape(c.field.label_nl()),
            escape(shown(&c.current)),
            escape(shown(&c.proposed))
        ));
    }
    html.push_str(&format!(
        "</table>\n<p>{}</p>\n<p>{}</p>\n<p>School (BRIN): {}<br>{}</p>\n<p><small>{}</small></p>\n</body></html>\n",
        escape(&leading(las)),
        html_where_to_look(ctx),
        escape(&ctx.brin),
        keys.iter().map(|k| escape(k)).collect::<Vec<_>>().join("<br>"),
        escape(FOOTER)
    ));
    Rendered {
        subject,
        text,
        html,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn s(v: &str) -> Option<String> {
        Some(v.to_owned())
    }

    fn p(field: &str, proposed: Option<&str>) -> FieldProposal {
        FieldProposal {
            field: field.into(),
            proposed: proposed.map(str::to_owned),
        }
    }

    fn contact() -> Contact {
        Contact {
            first_name: s("Anna"),
            name_prefix: s("van"),
            last_name: s("Dijk"),
            phone: s("030-1234567"),
            emergency_phone: s("112"),
            email: s("anna@example.org"),
            ..Contact::default()
        }
    }

    #[test]
    fn r10_imported_fields_become_suggestions() {
        let plan = plan(
            ProfileKind::Guardian,
            LasSystem::Parnassys,
            &contact(),
            &[
                p("phone", Some("06-12345678")),
                p("street", Some("Dorpsstraat 2")),
            ],
        );
        assert_eq!(
            plan.changes,
            vec![
                FieldChange {
                    field: Field::Street,
                    current: None,
                    proposed: s("Dorpsstraat 2")
                },
                FieldChange {
                    field: Field::Phone,
                    current: s("030-1234567"),
                    proposed: s("06-12345678")
                },
            ]
        );
        assert!(plan.ignored.is_empty());
    }

    #[test]
    fn r10_portal_only_and_unchanged_fields_are_not_suggestions() {
        let plan = plan(
            ProfileKind::Guardian,
            LasSystem::Parnassys,
            &contact(),
            &[
                p("allergies", Some("pinda")),
                p("first_name", Some(" Anna ")),
                p("emergency_phone", Some("0611")),
                p("birth_date", Some("1980-01-01")),
            ],
        );
        assert!(plan.changes.is_empty());
        assert_eq!(
            plan.ignored,
            ["allergies", "first_name", "emergency_phone", "birth_date"]
        );
        // ESIS imports the emergency phone, so there it is a suggestion.
        let esis = super::plan(
            ProfileKind::Guardian,
            LasSystem::Esis,
            &contact(),
            &[p("emergency_phone", Some("0611"))],
        );
        assert_eq!(esis.changes.len(), 1);
    }

    #[test]
    fn r10_proposing_to_remove_a_value_is_a_suggestion() {
        let plan = plan(
            ProfileKind::Guardian,
            LasSystem::Parnassys,
            &contact(),
            &[p("phone", None), p("mobile", Some("  "))],
        );
        assert_eq!(
            plan.changes,
            vec![FieldChange {
                field: Field::Phone,
                current: s("030-1234567"),
                proposed: None
            }]
        );
        assert_eq!(plan.ignored, ["mobile"]);
    }

    fn user(id: i64, role: &str, notify: bool, active: bool, email: &str) -> PortalUser {
        PortalUser {
            id,
            display_name: format!("U{id}"),
            email: email.into(),
            role: role.into(),
            active,
            notify_contact_changes: notify,
        }
    }

    #[test]
    fn r10_recipients_are_link_admins_and_notify_right_holders_never_parents() {
        let users = vec![
            user(1, "link_admin", false, true, "beheer@school.nl"),
            user(2, "teacher", true, true, "juf@school.nl"),
            user(3, "teacher", false, true, "meester@school.nl"),
            user(4, "parent", true, true, "ouder@example.org"),
            user(5, "link_admin", true, false, "oud@school.nl"),
            user(6, "school_admin", true, true, "BEHEER@school.nl"),
            user(7, "teacher", true, true, "geen-adres"),
        ];
        let ids: Vec<i64> = recipients(&users).iter().map(|u| u.id).collect();
        assert_eq!(
            ids,
            [1, 2],
            "no teacher without the right, no parent, no inactive user, one e-mail per address, valid addresses only"
        );
    }

    fn ctx() -> EmailContext {
        EmailContext {
            brin: "12AB".into(),
            system: LasSystem::Parnassys,
            detail: SuggestionDetail::Full,
            edit_id: uuid::Uuid::from_u128(0x17),
            link: None,
            guardian_name: "Anna van Dijk".into(),
            guardian_las_key: "O1".into(),
            student_names: vec!["Piet van Dijk".into(), "Sara van Dijk".into()],
            about_student: None,
            changes: vec![
                FieldChange {
                    field: Field::Street,
                    current: None,
                    proposed: s("Dorpsstraat <2>"),
                },
                FieldChange {
                    field: Field::Phone,
                    current: s("030-1234567"),
                    proposed: s("06-12345678"),
                },
            ],
        }
    }

    #[test]
    fn r10_email_names_guardian_students_and_each_field() {
        let ctx = ctx();
        let r = render(&ctx, "Juf Jansen");
        assert!(r.subject.contains("Anna van Dijk"));
        assert!(r.text.contains("Beste Juf Jansen"));
        assert!(
            r.text
                .contains("ouder/verzorger van Piet van Dijk, Sara van Dijk")
        );
        assert!(
            r.text
                .contains("- Telefoonnummer: 030-1234567 -> 06-12345678")
        );
        assert!(
            r.text
                .contains("- Straat en huisnummer: (leeg) -> Dorpsstraat <2>")
        );
        assert!(r.text.contains("ParnasSys is leidend"));
        assert!(r.html.contains("Dorpsstraat &lt;2&gt;"), "HTML is escaped");
        assert!(r.html.contains(
            "<td>Telefoonnummer</td><td>030-1234567</td><td><strong>06-12345678</strong></td>"
        ));
    }

    #[test]
    fn full_name_skips_blanks() {
        assert_eq!(full_name(&contact()), "Anna van Dijk");
        assert_eq!(full_name(&Contact::default()), "");
    }

    #[test]
    fn r10_each_suggested_field_is_a_decision_and_the_rest_is_said_once() {
        let plan = Plan {
            changes: vec![FieldChange {
                field: Field::Phone,
                current: Some("1".into()),
                proposed: Some("2".into()),
            }],
            ignored: vec!["allergies".into()],
        };
        let codes: Vec<String> = plan.decisions().iter().map(|d| d.code()).collect();
        assert_eq!(
            codes,
            vec!["R10:suggestion_opened:phone", "R10:not_a_suggestion"]
        );
        let none = Plan {
            changes: vec![],
            ignored: vec![],
        };
        let codes: Vec<String> = none.decisions().iter().map(|d| d.code()).collect();
        assert_eq!(codes, vec!["R10:not_a_suggestion"]);
    }

    #[test]
    fn r10_the_same_edit_and_recipient_always_have_the_same_email_key() {
        let edit = uuid::Uuid::from_u128(42);
        assert_eq!(email_key(edit, 7), email_key(edit, 7));
        assert_ne!(email_key(edit, 7), email_key(edit, 8));
        assert_ne!(email_key(edit, 7), email_key(uuid::Uuid::from_u128(43), 7));
    }

    fn student() -> Contact {
        Contact {
            first_name: s("Piet"),
            last_name: s("Dijk"),
            birth_date: chrono::NaiveDate::from_ymd_opt(2018, 1, 1),
            ..Contact::default()
        }
    }

    #[test]
    fn r10_a_childs_correction_proposes_only_the_students_imported_fields() {
        let plan = plan(
            ProfileKind::Student,
            LasSystem::Parnassys,
            &student(),
            &[
                p("last_name", Some("van Dijk")),
                p("birth_date", Some("02-01-2018")),
                p("city", Some("Utrecht")),
                p("phone", Some("06-1")),
                p("email", Some("piet@example.org")),
                p("allergies", Some("pinda")),
            ],
        );
        let fields: Vec<&str> = plan.changes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, ["last_name", "birth_date", "city"]);
        assert_eq!(
            plan.changes[1].proposed,
            s("2018-01-02"),
            "a Dutch date is proposed as the LAS would bring it"
        );
        assert_eq!(plan.changes[1].current, s("2018-01-01"));
        assert_eq!(
            plan.ignored,
            ["phone", "email", "allergies"],
            "a phone or e-mail is never a student field (R3), allergies are portal-only (R5)"
        );
        let same = super::plan(
            ProfileKind::Student,
            LasSystem::Esis,
            &student(),
            &[
                p("birth_date", Some("2018-01-01")),
                p("emergency_phone", Some("112")),
            ],
        );
        assert!(same.changes.is_empty(), "{same:?}");
    }

    #[test]
    fn r10_a_correction_must_name_one_of_the_guardians_own_children() {
        let children = vec![
            Child {
                profile_id: 10,
                las_key: "S1".into(),
            },
            Child {
                profile_id: 11,
                las_key: "S2".into(),
            },
        ];
        let c = |k: Option<&str>, id: Option<i64>| child_of("12AB", "G1", &children, k, id);
        assert_eq!(c(Some(" S2 "), None).unwrap().profile_id, 11);
        assert_eq!(c(None, Some(10)).unwrap().las_key, "S1");
        assert_eq!(c(Some("S1"), Some(10)).unwrap().profile_id, 10);
        let other = c(Some("S9"), None).unwrap_err();
        assert!(
            other.contains("S9")
                && other.contains("not a child of guardian G1")
                && other.contains("BRIN 12AB"),
            "{other}"
        );
        assert!(
            c(Some("S1"), Some(11)).is_err(),
            "key and id must name the same child"
        );
        assert!(c(None, Some(99)).unwrap_err().contains("profile id 99"));
        assert!(c(Some(" "), None).is_err());
        assert!(child_of("12AB", "G1", &[], Some("S1"), None).is_err());
    }

    #[test]
    fn r10_the_link_points_at_the_suggestion_in_the_portal() {
        assert_eq!(
            suggestion_link(
                Some("https://portaal.example/"),
                uuid::Uuid::from_u128(0x17)
            )
            .as_deref(),
            Some("https://portaal.example/suggestions/00000000-0000-0000-0000-000000000017")
        );
        assert_eq!(suggestion_link(None, uuid::Uuid::from_u128(0x17)), None);
        assert_eq!(
            suggestion_link(Some("  "), uuid::Uuid::from_u128(0x17)),
            None
        );
    }

    #[test]
    fn r10_a_notice_email_says_only_that_a_suggestion_waits_with_a_link() {
        let mut ctx = ctx();
        ctx.detail = SuggestionDetail::Notice;
        ctx.link = suggestion_link(Some("https://portaal.example"), uuid::Uuid::from_u128(0x17));
        ctx.about_student = Some(AboutStudent {
            name: "Piet van Dijk".into(),
            las_key: "S1".into(),
        });
        let r = render(&ctx, "Juf Jansen");
        for all in [&r.subject, &r.text, &r.html] {
            for personal in [
                "Anna",
                "Dijk",
                "Piet",
                "Sara",
                "O1",
                "S1",
                "Dorpsstraat",
                "030-1234567",
                "06-12345678",
                "Telefoonnummer",
                "(leeg)",
            ] {
                assert!(!all.contains(personal), "{personal} in {all}");
            }
        }
        assert!(r.text.contains("Beste Juf Jansen"));
        assert!(
            r.text.contains("wacht een wijzigingsvoorstel"),
            "{}",
            r.text
        );
        assert!(r.text.contains("de gegevens van een leerling"));
        assert!(
            r.text.contains(
                "https://portaal.example/suggestions/00000000-0000-0000-0000-000000000017"
            )
        );
        assert!(r.html.contains(
            "<a href=\"https://portaal.example/suggestions/00000000-0000-0000-0000-000000000017\">"
        ));
        assert!(r.text.contains("School (BRIN): 12AB"));
        // Without a portal address the number still finds it.
        ctx.link = None;
        assert!(
            render(&ctx, "Juf Jansen")
                .text
                .contains("(kenmerk 00000000)")
        );
    }

    #[test]
    fn r10_a_full_email_about_a_child_names_the_student_as_the_subject() {
        let mut ctx = ctx();
        ctx.about_student = Some(AboutStudent {
            name: "Piet van Dijk".into(),
            las_key: "S1".into(),
        });
        ctx.link = suggestion_link(Some("https://portaal.example"), uuid::Uuid::from_u128(0x17));
        let r = render(&ctx, "Juf Jansen");
        assert_eq!(
            r.subject,
            "Wijzigingsvoorstel gegevens leerling: Piet van Dijk"
        );
        assert!(
            r.text
                .contains("van de gegevens van leerling Piet van Dijk voorgesteld"),
            "{}",
            r.text
        );
        assert!(
            r.text.contains("Anna van Dijk"),
            "the guardian who proposed it"
        );
        assert!(
            r.text
                .contains("Leerlingadministratie-sleutel leerling: S1")
        );
        assert!(
            r.text.contains(
                "https://portaal.example/suggestions/00000000-0000-0000-0000-000000000017"
            )
        );
    }
}
