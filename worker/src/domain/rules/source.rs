//! R6: one LAS environment per school; the source of every message is checked.

use las_contracts::LasSystem;

use crate::domain::model::*;

/// Why R6 refuses a message or a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRefusal {
    pub reason: las_contracts::RejectReason,
    pub text: String,
}

pub(crate) fn refuse(reason: las_contracts::RejectReason, text: String) -> SourceRefusal {
    SourceRefusal { reason, text }
}

/// R6: an ESIS environment feeds the portal only when it is labelled
/// `BasisOnline Ouderportaal`.
fn check_esis_label(system: LasSystem, label: Option<&str>) -> Result<(), SourceRefusal> {
    let label = label.map(str::trim).unwrap_or("");
    if system == LasSystem::Esis && label != las_contracts::ESIS_PORTAL_LABEL {
        let shown = if label.is_empty() {
            "no label".to_owned()
        } else {
            format!("label {label:?}")
        };
        return Err(refuse(
            las_contracts::RejectReason::EsisLabel,
            format!(
                "ESIS environment has {shown}; only the ESIS environment labelled {:?} may feed this portal (R6)",
                las_contracts::ESIS_PORTAL_LABEL
            ),
        ));
    }
    Ok(())
}

/// R6: a change is accepted only from the one LAS environment the school is linked to.
pub fn check_source(
    brin: &str,
    school: Option<&SchoolSettings>,
    source: &las_contracts::LasSource,
) -> Result<(), SourceRefusal> {
    use las_contracts::RejectReason;
    let Some(school) = school else {
        return Err(refuse(
            RejectReason::UnknownBrin,
            format!(
                "no portal is linked to BRIN {brin}; link the school first (a portal.link.v1 message), then publish this message again from the dead-letter queue (R6)"
            ),
        ));
    };
    check_esis_label(source.system, source.label.as_deref())?;
    if source.system != school.system || source.environment_id != school.environment_id {
        return Err(refuse(
            RejectReason::EnvironmentMismatch,
            format!(
                "message comes from {} environment {:?}, but BRIN {brin} is linked to {} environment {:?}; a portal takes data from one LAS environment only (R6)",
                source.system.as_str(),
                source.environment_id,
                school.system.as_str(),
                school.environment_id
            ),
        ));
    }
    Ok(())
}

/// R6: the settings a link request gives a school. A school keeps its one LAS
/// environment: a request that names another system or environment is refused.
pub fn link_settings(
    existing: Option<&SchoolSettings>,
    link: &las_contracts::PortalLinkV1,
) -> Result<SchoolSettings, SourceRefusal> {
    check_esis_label(link.system, link.label.as_deref())?;
    if let Some(cur) = existing
        && (cur.system != link.system || cur.environment_id != link.environment_id)
    {
        return Err(refuse(
            las_contracts::RejectReason::RelinkRefused,
            format!(
                "BRIN {} is already linked to {} environment {:?}; a portal is linked to one LAS environment only, so a link to {} environment {:?} is refused (R6). Unlink the school in the portal first.",
                link.brin,
                cur.system.as_str(),
                cur.environment_id,
                link.system.as_str(),
                link.environment_id
            ),
        ));
    }
    Ok(SchoolSettings {
        system: link.system,
        environment_id: link.environment_id.clone(),
        label: normalize(&link.label),
        intake_weeks_ahead: link.intake_weeks_ahead,
        default_staff_role: normalize(&link.default_staff_role)
            .unwrap_or_else(|| DEFAULT_STAFF_ROLE.to_owned()),
        link_staff_to_groups: link.link_staff_to_groups.unwrap_or(true),
        esis_composite_groups: link.esis_composite_groups.unwrap_or(false),
        retention_days: link.retention_days.unwrap_or(DEFAULT_RETENTION_DAYS),
        snapshot_guard_percent: link
            .snapshot_guard_percent
            .unwrap_or(DEFAULT_SNAPSHOT_GUARD_PERCENT),
        staff_phones: {
            let mut phones = link.staff_phones.clone().unwrap_or_default();
            phones.sort_by_key(|p| p.as_str());
            phones.dedup();
            phones
        },
        coupling: link.coupling.unwrap_or_default(),
        staff_retention_days: link.staff_retention_days.unwrap_or(DEFAULT_RETENTION_DAYS),
        year_records_kept_years: link
            .year_records_kept_years
            .unwrap_or(0)
            .min(MAX_YEAR_RECORDS_KEPT_YEARS),
        composite_groups_lead: link.composite_groups_lead.unwrap_or(false),
        suggestion_detail: link.suggestion_detail.unwrap_or_default(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::domain::rules::test_support::*;

    fn source(system: LasSystem, env: &str, label: Option<&str>) -> las_contracts::LasSource {
        las_contracts::LasSource {
            system,
            environment_id: env.into(),
            label: label.map(str::to_owned),
        }
    }

    #[test]
    fn r6_unknown_brin_is_refused() {
        let r = check_source("99ZZ", None, &source(LasSystem::Parnassys, "env", None)).unwrap_err();
        assert_eq!(r.reason, las_contracts::RejectReason::UnknownBrin);
        assert!(r.text.contains("99ZZ"));
    }

    #[test]
    fn r6_other_environment_is_refused() {
        let sch = school(LasSystem::Parnassys);
        assert!(
            check_source(
                "12AB",
                Some(&sch),
                &source(LasSystem::Parnassys, "env", None)
            )
            .is_ok()
        );
        let r = check_source(
            "12AB",
            Some(&sch),
            &source(LasSystem::Parnassys, "other", None),
        )
        .unwrap_err();
        assert_eq!(r.reason, las_contracts::RejectReason::EnvironmentMismatch);
        let r = check_source(
            "12AB",
            Some(&sch),
            &source(LasSystem::Esis, "env", Some("BasisOnline Ouderportaal")),
        )
        .unwrap_err();
        assert_eq!(r.reason, las_contracts::RejectReason::EnvironmentMismatch);
    }

    #[test]
    fn r6_esis_label_must_be_basisonline_ouderportaal() {
        let mut sch = school(LasSystem::Esis);
        sch.label = Some("BasisOnline Ouderportaal".into());
        assert!(
            check_source(
                "12AB",
                Some(&sch),
                &source(LasSystem::Esis, "env", Some("BasisOnline Ouderportaal"))
            )
            .is_ok()
        );
        for bad in [Some("ParentCom"), Some("BasisschoolApps"), None] {
            let r =
                check_source("12AB", Some(&sch), &source(LasSystem::Esis, "env", bad)).unwrap_err();
            assert_eq!(r.reason, las_contracts::RejectReason::EsisLabel);
            assert!(r.text.contains("BasisOnline Ouderportaal"));
        }
    }

    fn link(system: LasSystem, env: &str, label: Option<&str>) -> las_contracts::PortalLinkV1 {
        las_contracts::PortalLinkV1 {
            schema: las_contracts::PortalLinkSchema::V1,
            message_id: uuid::Uuid::nil(),
            brin: "12AB".into(),
            system,
            environment_id: env.into(),
            label: label.map(str::to_owned),
            intake_weeks_ahead: None,
            default_staff_role: None,
            link_staff_to_groups: None,
            esis_composite_groups: None,
            retention_days: None,
            group_mapping: None,
            snapshot_guard_percent: None,
            staff_phones: None,
            coupling: None,
            staff_retention_days: None,
            year_records_kept_years: None,
            composite_groups_lead: None,
            suggestion_detail: None,
            emitted_at: None,
        }
    }

    #[test]
    fn r6_link_takes_defaults_and_refuses_a_second_environment() {
        let s1 = link_settings(None, &link(LasSystem::Parnassys, "env", None)).unwrap();
        assert_eq!(s1.default_staff_role, "Leerkracht");
        assert!(s1.link_staff_to_groups);
        assert!(!s1.esis_composite_groups);
        assert_eq!(s1.intake_weeks_ahead, None);
        assert!(
            !s1.composite_groups_lead,
            "R7: composite groups lead only when asked"
        );
        let mut l = link(LasSystem::Parnassys, "env", None);
        l.composite_groups_lead = Some(true);
        assert!(link_settings(Some(&s1), &l).unwrap().composite_groups_lead);
        assert_eq!(
            s1.suggestion_detail,
            las_contracts::SuggestionDetail::Full,
            "R10: full suggestion e-mails unless the school asks for a notice"
        );
        l.suggestion_detail = Some(las_contracts::SuggestionDetail::Notice);
        assert_eq!(
            link_settings(Some(&s1), &l).unwrap().suggestion_detail,
            las_contracts::SuggestionDetail::Notice
        );
        assert!(link_settings(Some(&s1), &link(LasSystem::Parnassys, "env", None)).is_ok());
        let r = link_settings(Some(&s1), &link(LasSystem::Parnassys, "env-2", None)).unwrap_err();
        assert_eq!(r.reason, las_contracts::RejectReason::RelinkRefused);
        let r = link_settings(None, &link(LasSystem::Esis, "env", Some("ParentCom"))).unwrap_err();
        assert_eq!(r.reason, las_contracts::RejectReason::EsisLabel);
    }
}
