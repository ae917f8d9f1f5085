//! R10: a parent's edit of an imported field becomes a suggestion e-mail to
//! the school. Pure: which proposals are suggestions, who receives them, and
//! the e-mail text. The store persists them; `mail` sends them.

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

/// R10: the suggestion a guardian's edit makes. Only imported fields (R3) can
/// be suggestions; a proposal of the value the portal already has is none.
pub fn plan(system: LasSystem, current: &Contact, proposals: &[FieldProposal]) -> Plan {
    let mut changes: Vec<FieldChange> = Vec::new();
    let mut ignored = Vec::new();
    for p in proposals {
        let field = Field::parse(p.field.trim());
        let imported = field.is_some_and(|f| {
            matches!(
                rules::policy(ProfileKind::Guardian, system, f),
                Policy::Import | Policy::ImportKeepOnBlank
            )
        });
        let Some(field) = field.filter(|_| imported) else {
            ignored.push(p.field.trim().chars().take(64).collect());
            continue;
        };
        let proposed = rules::normalize(&p.proposed);
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

/// What the e-mail says; names are shown to the school, which has them anyway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailContext {
    pub brin: String,
    pub system: LasSystem,
    pub guardian_name: String,
    pub guardian_las_key: String,
    pub student_names: Vec<String>,
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

/// The suggestion e-mail in Dutch, plain text and simple HTML.
pub fn render(ctx: &EmailContext, recipient_name: &str) -> Rendered {
    let las = match ctx.system {
        LasSystem::Parnassys => "ParnasSys",
        LasSystem::Esis => "ESIS",
    };
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
    let subject = format!("Wijzigingsvoorstel gegevens ouder/verzorger: {guardian}");
    let mut text = format!(
        "Beste {recipient_name},\n\n{guardian}{children} heeft in het ouderportaal de volgende wijziging{} voorgesteld:\n\n",
        if ctx.changes.len() == 1 { "" } else { "en" }
    );
    for c in &ctx.changes {
        text.push_str(&format!(
            "- {}: {} -> {}\n",
            c.field.label_nl(),
            shown(&c.current),
            shown(&c.proposed)
        ));
    }
    text.push_str(&format!(
        "\n{las} is leidend: het ouderportaal neemt de gegevens over uit {las} en wijzigt ze niet zelf. \
Klopt het voorstel, verwerk het dan in {las}; bij de volgende synchronisatie staat het ook in het ouderportaal.\n\n\
School (BRIN): {}\nLeerlingadministratie-sleutel ouder/verzorger: {}\n\n\
Dit bericht is automatisch verstuurd door de koppeling van het ouderportaal aan koppelingsbeheerders en \
medewerkers met het recht 'Melding ouder-/kindgegevens'. Stuur het niet door naar ouders.\n",
        ctx.brin, ctx.guardian_las_key
    ));

    let mut html = format!(
        "<!DOCTYPE html>\n<html lang=\"nl\"><body>\n<p>Beste {},</p>\n<p>{}{} heeft in het ouderportaal de volgende wijziging{} voorgesteld:</p>\n<table>\n<tr><th align=\"left\">Gegeven</th><th align=\"left\">Nu</th><th align=\"left\">Voorstel</th></tr>\n",
        escape(recipient_name),
        escape(&guardian),
        escape(&children),
        if ctx.changes.len() == 1 { "" } else { "en" }
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
        "</table>\n<p>{las} is leidend: het ouderportaal neemt de gegevens over uit {las} en wijzigt ze niet zelf. Klopt het voorstel, verwerk het dan in {las}; bij de volgende synchronisatie staat het ook in het ouderportaal.</p>\n<p>School (BRIN): {}<br>Leerlingadministratie-sleutel ouder/verzorger: {}</p>\n<p><small>Dit bericht is automatisch verstuurd door de koppeling van het ouderportaal aan koppelingsbeheerders en medewerkers met het recht 'Melding ouder-/kindgegevens'. Stuur het niet door naar ouders.</small></p>\n</body></html>\n",
        escape(&ctx.brin),
        escape(&ctx.guardian_las_key)
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
            LasSystem::Esis,
            &contact(),
            &[p("emergency_phone", Some("0611"))],
        );
        assert_eq!(esis.changes.len(), 1);
    }

    #[test]
    fn r10_proposing_to_remove_a_value_is_a_suggestion() {
        let plan = plan(
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

    #[test]
    fn r10_email_names_guardian_students_and_each_field() {
        let ctx = EmailContext {
            brin: "12AB".into(),
            system: LasSystem::Parnassys,
            guardian_name: "Anna van Dijk".into(),
            guardian_las_key: "O1".into(),
            student_names: vec!["Piet van Dijk".into(), "Sara van Dijk".into()],
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
        };
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
}
