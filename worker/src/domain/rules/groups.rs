//! R7: the shape of a LAS group in the portal (year group, composite,
//! alias of a year group, skipped).

use las_contracts::LasSystem;

use crate::domain::model::*;
use crate::domain::rules::source::{SourceRefusal, refuse};

/// How a LAS group becomes a portal group (R7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupShape {
    Year,
    Composite,
    /// A class of exactly one year group: its members are in that year group.
    Alias(String),
    /// An ESIS composite group while `esis_composite_groups` is off.
    Skipped,
}

impl GroupShape {
    pub fn group_type(&self) -> &'static str {
        match self {
            GroupShape::Year => "year",
            GroupShape::Composite | GroupShape::Skipped => "composite",
            GroupShape::Alias(_) => "alias",
        }
    }

    /// The portal group's status: a skipped combination group is not shown
    /// itself; its members are shown in its year groups (R7).
    pub fn status(&self) -> &'static str {
        match self {
            GroupShape::Skipped => "skipped",
            _ => "active",
        }
    }

    /// For an alias: the year group it stands for.
    pub fn maps_to(&self) -> Option<&str> {
        match self {
            GroupShape::Alias(y) => Some(y),
            _ => None,
        }
    }
}

/// A portal group as stored (`portal_groups`), as the first run and a re-plan
/// see it. `las_kind` is set only on a group the LAS described.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoredGroup {
    pub id: i64,
    pub las_key: Option<String>,
    pub name: Option<String>,
    pub group_type: String,
    pub las_kind: Option<String>,
    pub status: String,
    pub maps_to_key: Option<String>,
    pub parents_see_other_groups: bool,
    pub year_group_keys: Vec<String>,
    pub student_keys: Vec<String>,
    pub version: i64,
    pub last_message_id: Option<uuid::Uuid>,
}

/// R7 first run: what a mapped portal group becomes. It keeps its id, and so
/// its group-bound items. When the LAS group is known already (`las`: the row
/// the worker made when it arrived) the portal group takes its key, name, kind,
/// shape, status, members and version at once (seed 001: groups are renamed to
/// the LAS's after the first run); otherwise it takes the key and keeps its
/// name until the LAS group's first `group.upserted`. Either way "parents see
/// other year groups" starts off: the link touched it, and the school may turn
/// it on again afterwards.
pub fn map_first_run_group(
    las_key: &str,
    portal: &StoredGroup,
    las: Option<&StoredGroup>,
) -> (StoredGroup, Decision) {
    let mut out = match las {
        Some(l) => StoredGroup {
            id: portal.id,
            ..l.clone()
        },
        None => StoredGroup {
            status: "active".to_owned(),
            ..portal.clone()
        },
    };
    out.las_key = Some(las_key.trim().to_owned());
    out.parents_see_other_groups = false;
    (out, Decision::new(Rule::R7, Action::FirstRunMapped, None))
}

/// R7: a link whose settings change how LAS groups are shaped plans the
/// school's existing groups again, without waiting for the LAS to send them.
pub fn settings_replan_groups(old: &SchoolSettings, new: &SchoolSettings) -> bool {
    old.esis_composite_groups != new.esis_composite_groups
}

/// R7: a stored LAS group planned again under the school's (new) settings
/// (an ESIS combination group: skipped <-> composite). `None` when it stays as
/// it is: a detached group, a group the school made, or the same shape.
/// "Parents see other year groups" is left as it is: the worker made the group
/// with it off, and only the school turns it on (the worker never turns it
/// back off).
pub fn replan_group(g: &StoredGroup, school: &SchoolSettings) -> Option<(StoredGroup, Decision)> {
    if g.status == "detached" {
        return None;
    }
    let kind = las_contracts::GroupKind::parse(g.las_kind.as_deref()?)?;
    let record = las_contracts::GroupRecord {
        las_key: g.las_key.clone()?,
        name: g.name.clone(),
        kind,
        year_group_keys: Some(g.year_group_keys.clone()),
        student_keys: Some(g.student_keys.clone()),
    };
    let (shape, decision) = plan_group(&record, school).ok()?;
    let maps_to = shape.maps_to().map(str::to_owned);
    if g.group_type == shape.group_type() && g.status == shape.status() && g.maps_to_key == maps_to
    {
        return None;
    }
    let out = StoredGroup {
        group_type: shape.group_type().to_owned(),
        status: shape.status().to_owned(),
        maps_to_key: maps_to,
        ..g.clone()
    };
    Some((out, decision))
}

/// R7: the shape of a LAS group in the portal.
pub fn plan_group(
    g: &las_contracts::GroupRecord,
    school: &SchoolSettings,
) -> Result<(GroupShape, Decision), SourceRefusal> {
    use las_contracts::GroupKind;
    let years = normalize_keys(&g.year_group_keys);
    let shape = match (school.system, g.kind) {
        (LasSystem::Parnassys, GroupKind::Year) => GroupShape::Year,
        (LasSystem::Parnassys, GroupKind::Class) if years.len() == 1 => {
            GroupShape::Alias(years[0].clone())
        }
        (LasSystem::Parnassys, GroupKind::Class | GroupKind::Subclass) => GroupShape::Composite,
        (LasSystem::Esis, GroupKind::Group) if years.is_empty() => GroupShape::Year,
        (LasSystem::Esis, GroupKind::Group) if years.len() == 1 => {
            GroupShape::Alias(years[0].clone())
        }
        (LasSystem::Esis, GroupKind::Group) if school.esis_composite_groups => {
            GroupShape::Composite
        }
        (LasSystem::Esis, GroupKind::Group) => GroupShape::Skipped,
        (system, kind) => {
            return Err(refuse(
                las_contracts::RejectReason::ValidationFailed,
                format!(
                    "group kind `{}` does not exist in {}; ParnasSys sends year, class and subclass, ESIS sends group (R7)",
                    kind.as_str(),
                    system.as_str()
                ),
            ));
        }
    };
    let action = match &shape {
        GroupShape::Year => Action::YearGroup,
        GroupShape::Composite => Action::CompositeGroup,
        GroupShape::Alias(_) => Action::MappedToYearGroup,
        GroupShape::Skipped => Action::CompositeSkipped,
    };
    Ok((shape, Decision::new(Rule::R7, action, None)))
}

/// R7 first run: a mapping the worker can apply. It names portal groups of
/// this school (`found`: the mapped groups the portal has), maps each LAS group
/// to one portal group and each portal group from one LAS group, and never
/// maps onto the intake group or onto the group of another LAS group. A
/// mapping that breaks one of these is refused as a whole, so the school
/// corrects it and sends it again.
pub fn check_first_run_mapping(
    brin: &str,
    mapping: &[las_contracts::GroupMapping],
    found: &[StoredGroup],
) -> Result<(), SourceRefusal> {
    let ids: Vec<i64> = mapping.iter().map(|m| m.portal_group_id).collect();
    let found_ids: Vec<i64> = found.iter().map(|g| g.id).collect();
    check_group_mapping(brin, &ids, &found_ids)?;
    let mut keys: Vec<&str> = mapping.iter().map(|m| m.las_group_key.trim()).collect();
    keys.sort();
    if let Some(w) = keys.windows(2).find(|w| w[0] == w[1]) {
        return Err(refuse(
            las_contracts::RejectReason::ValidationFailed,
            format!(
                "group_mapping maps LAS group {} more than once; map each LAS group to one portal group and send the link again (R7)",
                w[0]
            ),
        ));
    }
    let mut sorted_ids = ids.clone();
    sorted_ids.sort();
    if let Some(w) = sorted_ids.windows(2).find(|w| w[0] == w[1]) {
        return Err(refuse(
            las_contracts::RejectReason::ValidationFailed,
            format!(
                "group_mapping maps more than one LAS group onto portal group {}; a portal group takes one LAS group, the others are created (R7)",
                w[0]
            ),
        ));
    }
    for m in mapping {
        let Some(g) = found.iter().find(|g| g.id == m.portal_group_id) else {
            continue;
        };
        if g.group_type == "intake" {
            return Err(refuse(
                las_contracts::RejectReason::MappingRefused,
                format!(
                    "group_mapping maps LAS group {} onto portal group {}, the intake group of BRIN {}; the intake group is the worker's own (R9), map the LAS group to another portal group or leave it out (R7)",
                    m.las_group_key.trim(),
                    g.id,
                    brin
                ),
            ));
        }
        if let Some(other) = g.las_key.as_deref()
            && other != m.las_group_key.trim()
        {
            return Err(refuse(
                las_contracts::RejectReason::MappingRefused,
                format!(
                    "group_mapping maps LAS group {} onto portal group {}, which is LAS group {}'s own group; map it to a group the school made, or leave it out and the worker creates it (R7)",
                    m.las_group_key.trim(),
                    g.id,
                    other
                ),
            ));
        }
    }
    Ok(())
}

/// R7: the first run happens once. A later link may repeat the first run's
/// mapping (the portal sends its whole link again) or leave it out; a
/// different mapping is refused as a whole with a reason, never ignored.
pub fn check_mapping_after_first_run(
    brin: &str,
    first_run: &[las_contracts::GroupMapping],
    sent: &[las_contracts::GroupMapping],
) -> Result<(), SourceRefusal> {
    let pairs = |m: &[las_contracts::GroupMapping]| {
        let mut v: Vec<(String, i64)> = m
            .iter()
            .map(|e| (e.las_group_key.trim().to_owned(), e.portal_group_id))
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let (before, now) = (pairs(first_run), pairs(sent));
    if now.is_empty() || now == before {
        return Ok(());
    }
    let mut changed: Vec<&str> = now
        .iter()
        .filter(|p| !before.contains(p))
        .chain(before.iter().filter(|p| !now.contains(p)))
        .map(|(k, _)| k.as_str())
        .collect();
    changed.sort();
    changed.dedup();
    Err(refuse(
        las_contracts::RejectReason::MappingRefused,
        format!(
            "group_mapping differs from the first run of BRIN {brin} (LAS group(s) {}); the first run happens once, so a group mapping cannot change afterwards. Send the link without group_mapping; move group-bound items between groups in the portal (R7)",
            changed.join(", ")
        ),
    ))
}

/// R7 first run: the group mapping of a link must name portal groups of
/// this school (`found`: the mapped ids the portal has). A mapping naming
/// others is refused as a whole, so a school corrects it and sends it again.
pub fn check_group_mapping(brin: &str, mapped: &[i64], found: &[i64]) -> Result<(), SourceRefusal> {
    let missing: Vec<String> = mapped
        .iter()
        .filter(|i| !found.contains(i))
        .map(|i| i.to_string())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(refuse(
        las_contracts::RejectReason::ValidationFailed,
        format!(
            "group_mapping names portal group(s) {} that do not exist in the portal of BRIN {}; correct the mapping and send the link again (R7)",
            missing.join(", "),
            brin
        ),
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::domain::rules::test_support::*;

    fn group(kind: las_contracts::GroupKind, years: &[&str]) -> las_contracts::GroupRecord {
        las_contracts::GroupRecord {
            las_key: "K".into(),
            name: Some("Groep".into()),
            kind,
            year_group_keys: Some(groups(years)),
            student_keys: None,
        }
    }

    #[test]
    fn r7_parnassys_group_shapes() {
        use las_contracts::GroupKind::*;
        let p = school(LasSystem::Parnassys);
        assert_eq!(
            plan_group(&group(Year, &[]), &p).unwrap().0,
            GroupShape::Year
        );
        assert_eq!(
            plan_group(&group(Class, &["G3"]), &p).unwrap().0,
            GroupShape::Alias("G3".into()),
            "class of one year group"
        );
        let (shape, dec) = plan_group(&group(Class, &["G3", "G4"]), &p).unwrap();
        assert_eq!(shape, GroupShape::Composite, "class of two year groups");
        assert_eq!(dec, Decision::new(Rule::R7, Action::CompositeGroup, None));
        assert_eq!(
            plan_group(&group(Subclass, &[]), &p).unwrap().0,
            GroupShape::Composite
        );
        assert_eq!(
            plan_group(&group(Group, &[]), &p).unwrap_err().reason,
            las_contracts::RejectReason::ValidationFailed
        );
    }

    #[test]
    fn r7_esis_composite_groups_only_when_the_school_opted_in() {
        use las_contracts::GroupKind::*;
        let mut e = school(LasSystem::Esis);
        assert_eq!(
            plan_group(&group(Group, &[]), &e).unwrap().0,
            GroupShape::Year
        );
        assert_eq!(
            plan_group(&group(Group, &["A", "B"]), &e).unwrap().0,
            GroupShape::Skipped
        );
        e.esis_composite_groups = true;
        assert_eq!(
            plan_group(&group(Group, &["A", "B"]), &e).unwrap().0,
            GroupShape::Composite
        );
        assert!(plan_group(&group(Year, &[]), &e).is_err());
    }

    #[test]
    fn r7_a_first_run_mapping_must_name_the_schools_own_portal_groups() {
        assert!(check_group_mapping("12AB", &[1, 2], &[2, 1]).is_ok());
        assert!(check_group_mapping("12AB", &[], &[]).is_ok());
        let r = check_group_mapping("12AB", &[1, 7, 9], &[1]).unwrap_err();
        assert_eq!(r.reason, las_contracts::RejectReason::ValidationFailed);
        assert!(r.text.contains("portal group(s) 7, 9"), "{}", r.text);
        assert!(
            r.text.contains("BRIN 12AB") && r.text.contains("(R7)"),
            "{}",
            r.text
        );
    }

    fn stored(id: i64, key: Option<&str>, name: &str, ty: &str) -> StoredGroup {
        StoredGroup {
            id,
            las_key: key.map(str::to_owned),
            name: Some(name.into()),
            group_type: ty.into(),
            status: "active".into(),
            ..StoredGroup::default()
        }
    }

    fn mapping(pairs: &[(&str, i64)]) -> Vec<las_contracts::GroupMapping> {
        pairs
            .iter()
            .map(|(k, id)| las_contracts::GroupMapping {
                las_group_key: (*k).into(),
                portal_group_id: *id,
            })
            .collect()
    }

    #[test]
    fn r7_first_run_a_mapped_group_takes_the_known_las_group_at_once() {
        // Seed 001: "Groepen worden nadat je de first-run doorlopen hebt
        // automatisch hernoemd naar die van het LAS systeem."
        let mut portal = stored(7, None, "Groep 1/2A", "composite");
        portal.parents_see_other_groups = true;
        let las = StoredGroup {
            id: 40,
            las_key: Some("C12".into()),
            name: Some("Combi 1/2".into()),
            group_type: "composite".into(),
            las_kind: Some("class".into()),
            status: "active".into(),
            year_group_keys: vec!["G1".into(), "G2".into()],
            version: 3,
            ..StoredGroup::default()
        };
        let (out, dec) = map_first_run_group(" C12 ", &portal, Some(&las));
        assert_eq!(out.id, 7, "keeps its id, and so its group-bound items");
        assert_eq!(out.las_key.as_deref(), Some("C12"));
        assert_eq!(out.name.as_deref(), Some("Combi 1/2"), "the LAS name");
        assert_eq!(out.las_kind.as_deref(), Some("class"));
        assert_eq!(out.year_group_keys, las.year_group_keys, "the LAS shape");
        assert_eq!(out.version, 3, "an older LAS version stays stale");
        assert!(
            !out.parents_see_other_groups,
            "R7: a composite the link touches starts with parents-see-other-groups off"
        );
        assert_eq!(dec, Decision::new(Rule::R7, Action::FirstRunMapped, None));
    }

    #[test]
    fn r7_first_run_before_the_las_group_arrived_the_group_takes_the_key_only() {
        let mut portal = stored(7, None, "Groep 1A", "year");
        portal.status = "detached".into();
        portal.parents_see_other_groups = true;
        let (out, _) = map_first_run_group("G1", &portal, None);
        assert_eq!(out.las_key.as_deref(), Some("G1"));
        assert_eq!(
            out.name.as_deref(),
            Some("Groep 1A"),
            "renamed by the LAS group's first upsert"
        );
        assert_eq!(out.status, "active");
        assert_eq!(out.version, 0, "any LAS version applies");
        assert!(!out.parents_see_other_groups);
    }

    #[test]
    fn r7_first_run_mapping_is_one_to_one_and_never_onto_the_intake_or_another_las_group() {
        let found = vec![
            stored(1, None, "Groep 1A", "year"),
            stored(2, None, "Groep 2A", "year"),
            stored(3, Some("@intake"), "Instroomgroep", "intake"),
            stored(4, Some("G4"), "Groep 4", "year"),
        ];
        assert!(check_first_run_mapping("12AB", &mapping(&[("G1", 1), ("G2", 2)]), &found).is_ok());
        assert!(
            check_first_run_mapping("12AB", &mapping(&[("G4", 4)]), &found).is_ok(),
            "a LAS group onto its own group changes nothing"
        );
        let r = check_first_run_mapping("12AB", &mapping(&[("G1", 1), ("G1 ", 2)]), &found)
            .unwrap_err();
        assert_eq!(r.reason, las_contracts::RejectReason::ValidationFailed);
        assert!(r.text.contains("LAS group G1 more than once"), "{}", r.text);
        let r =
            check_first_run_mapping("12AB", &mapping(&[("G1", 1), ("G2", 1)]), &found).unwrap_err();
        assert!(r.text.contains("onto portal group 1"), "{}", r.text);
        let r = check_first_run_mapping("12AB", &mapping(&[("G1", 3)]), &found).unwrap_err();
        assert_eq!(r.reason, las_contracts::RejectReason::MappingRefused);
        assert!(
            r.text.contains("intake group") && r.text.contains("(R7)"),
            "{}",
            r.text
        );
        let r = check_first_run_mapping("12AB", &mapping(&[("G3", 4)]), &found).unwrap_err();
        assert_eq!(r.reason, las_contracts::RejectReason::MappingRefused);
        assert!(r.text.contains("LAS group G4's own group"), "{}", r.text);
        let r = check_first_run_mapping("12AB", &mapping(&[("G1", 9)]), &found).unwrap_err();
        assert_eq!(r.reason, las_contracts::RejectReason::ValidationFailed);
    }

    #[test]
    fn r7_after_the_first_run_only_the_same_mapping_or_none_is_accepted() {
        let first = mapping(&[("G1", 1), ("G2", 2)]);
        assert!(check_mapping_after_first_run("12AB", &first, &[]).is_ok());
        assert!(
            check_mapping_after_first_run("12AB", &first, &mapping(&[("G2", 2), (" G1", 1)]))
                .is_ok(),
            "the portal sends its whole link again"
        );
        let r = check_mapping_after_first_run("12AB", &first, &mapping(&[("G1", 2), ("G2", 2)]))
            .unwrap_err();
        assert_eq!(r.reason, las_contracts::RejectReason::MappingRefused);
        assert!(
            r.text.contains("BRIN 12AB")
                && r.text.contains("LAS group(s) G1")
                && r.text.contains("(R7)"),
            "{}",
            r.text
        );
        assert!(
            check_mapping_after_first_run("12AB", &[], &mapping(&[("G3", 3)])).is_err(),
            "a first run that mapped nothing is a first run too"
        );
    }

    #[test]
    fn r7_changing_esis_composite_groups_replans_combination_groups() {
        let mut off = school(LasSystem::Esis);
        let mut on = off.clone();
        on.esis_composite_groups = true;
        assert!(settings_replan_groups(&off, &on));
        assert!(!settings_replan_groups(&off, &off.clone()));
        let combi = StoredGroup {
            id: 1,
            las_key: Some("COMBI".into()),
            group_type: "composite".into(),
            las_kind: Some("group".into()),
            status: "skipped".into(),
            year_group_keys: vec!["G5".into(), "G6".into()],
            ..StoredGroup::default()
        };
        let (shown, dec) = replan_group(&combi, &on).unwrap();
        assert_eq!(
            (shown.group_type.as_str(), shown.status.as_str()),
            ("composite", "active")
        );
        assert!(
            !shown.parents_see_other_groups,
            "R7: a composite group made by the link starts with parents-see-other-groups off"
        );
        assert_eq!(dec.action, Action::CompositeGroup);
        assert_eq!(replan_group(&shown, &on), None, "nothing to do twice");
        let mut opened = shown.clone();
        opened.parents_see_other_groups = true;
        let (hidden, dec) = replan_group(&opened, &off).unwrap();
        assert_eq!(hidden.status, "skipped", "members go to its year groups");
        assert_eq!(dec.action, Action::CompositeSkipped);
        let (again, _) = replan_group(&hidden, &on).unwrap();
        assert!(
            again.parents_see_other_groups,
            "R7: the worker never turns the school's choice back off"
        );
        off.esis_composite_groups = true;
        assert_eq!(replan_group(&opened, &off), None);
        let year = stored(2, Some("G5"), "Groep 5", "year");
        assert_eq!(
            replan_group(&year, &on),
            None,
            "a group the school made or a year group stays"
        );
        let mut removed = combi.clone();
        removed.status = "detached".into();
        assert_eq!(
            replan_group(&removed, &on),
            None,
            "a removed group stays detached"
        );
    }
}
