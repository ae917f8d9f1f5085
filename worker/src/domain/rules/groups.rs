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
}
