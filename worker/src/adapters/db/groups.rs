//! The `portal_groups` table (R7): LAS groups, the first run's mapping.

use std::collections::HashMap;

use las_contracts::{Change, LasChangeV1};
use sqlx::{Postgres, Transaction};

use super::*;
use crate::domain::batch::School;
use crate::domain::outcome::Journal;
use crate::domain::outcome::{BatchEffects, MessageOutcome};
use crate::domain::rules::{self, Decision};

/// The columns of [`StoredGroup`], in the order [`stored_group`] reads them.
const GROUP_COLUMNS: &str = "id, las_key, name, group_type, las_kind, status, maps_to_key, parents_see_other_groups, year_group_keys, student_keys, version, last_message_id";

fn stored_group(row: &sqlx::postgres::PgRow) -> Result<rules::StoredGroup, sqlx::Error> {
    use sqlx::Row;
    Ok(rules::StoredGroup {
        id: row.try_get("id")?,
        las_key: row.try_get("las_key")?,
        name: row.try_get("name")?,
        group_type: row.try_get("group_type")?,
        las_kind: row.try_get("las_kind")?,
        status: row.try_get("status")?,
        maps_to_key: row.try_get("maps_to_key")?,
        parents_see_other_groups: row.try_get("parents_see_other_groups")?,
        year_group_keys: row.try_get("year_group_keys")?,
        student_keys: row.try_get("student_keys")?,
        version: row.try_get("version")?,
        last_message_id: row.try_get("last_message_id")?,
    })
}

/// The school's portal groups with these ids or LAS keys, locked, in id order.
pub(super) async fn load_groups(
    tx: &mut Transaction<'_, Postgres>,
    school_id: i64,
    ids: &[i64],
    keys: &[String],
) -> Result<Vec<rules::StoredGroup>, StoreError> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {GROUP_COLUMNS} FROM portal_groups
         WHERE school_id = $1 AND (id = ANY($2) OR las_key = ANY($3))
         ORDER BY id FOR UPDATE"
    )))
    .bind(school_id)
    .bind(ids)
    .bind(keys)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.iter().map(stored_group).collect::<Result<_, _>>()?)
}

/// Writes what the rules made of stored groups (by id).
async fn save_groups(
    tx: &mut Transaction<'_, Postgres>,
    groups: &[rules::StoredGroup],
) -> Result<(), StoreError> {
    for g in groups {
        sqlx::query(
            "UPDATE portal_groups SET las_key = $2, name = $3, group_type = $4, las_kind = $5, status = $6,
                 maps_to_key = $7, parents_see_other_groups = $8, year_group_keys = $9, student_keys = $10,
                 version = $11, last_message_id = $12, updated_at = now()
             WHERE id = $1",
        )
        .bind(g.id)
        .bind(&g.las_key)
        .bind(&g.name)
        .bind(&g.group_type)
        .bind(&g.las_kind)
        .bind(&g.status)
        .bind(&g.maps_to_key)
        .bind(g.parents_see_other_groups)
        .bind(&g.year_group_keys)
        .bind(&g.student_keys)
        .bind(g.version)
        .bind(g.last_message_id)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// R7 first run (the mapping was checked by `rules::check_first_run_mapping`):
/// each mapped portal group becomes what `rules::map_first_run_group` makes
/// of it. When the LAS group already arrived, the group the worker made for it
/// hands over its key and items and is detached (listed as a leftover, never
/// deleted). Portal groups no LAS group maps to are detached and listed as
/// leftovers. Records the first run and its mapping, and journals each mapped
/// group.
pub(super) async fn first_run(
    tx: &mut Transaction<'_, Postgres>,
    school_id: i64,
    mapping: &[las_contracts::GroupMapping],
    message_id: uuid::Uuid,
) -> Result<(), StoreError> {
    let keys: Vec<String> = mapping
        .iter()
        .map(|m| m.las_group_key.trim().to_owned())
        .collect();
    let ids: Vec<i64> = mapping.iter().map(|m| m.portal_group_id).collect();
    let found = load_groups(tx, school_id, &ids, &keys).await?;
    let mut mapped = Vec::new();
    let mut from = Vec::new();
    let mut to = Vec::new();
    let mut journal = Journal::default();
    for (key, id) in keys.iter().zip(&ids) {
        let Some(portal) = found.iter().find(|g| g.id == *id) else {
            continue;
        };
        let las = found
            .iter()
            .find(|g| g.id != *id && g.las_key.as_deref() == Some(key.as_str()));
        if let Some(l) = las {
            from.push(l.id);
            to.push(*id);
        }
        let (group, decision) = rules::map_first_run_group(key, portal, las);
        journal.push(
            school_id,
            message_id,
            "group",
            key,
            group.version,
            &[decision],
        );
        mapped.push(group);
    }
    // Items of the LAS group's own row go with its key to the mapped group;
    // the row steps aside (frees the key for the unique index).
    sqlx::query(
        "UPDATE group_items i SET group_id = t.to_id
         FROM UNNEST($1::int8[], $2::int8[]) AS t(from_id, to_id)
         WHERE i.group_id = t.from_id",
    )
    .bind(&from)
    .bind(&to)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "UPDATE portal_groups SET las_key = NULL, status = 'detached', updated_at = now()
         WHERE id = ANY($1)",
    )
    .bind(&from)
    .execute(&mut **tx)
    .await?;
    save_groups(tx, &mapped).await?;
    sqlx::query(
        "UPDATE portal_groups SET status = 'detached', updated_at = now()
         WHERE school_id = $1 AND las_key IS NULL AND group_type <> 'intake' AND status = 'active'",
    )
    .bind(school_id)
    .execute(&mut **tx)
    .await?;
    sqlx::query("UPDATE schools SET first_run_at = now(), group_mapping = $2 WHERE id = $1")
        .bind(school_id)
        .bind(serde_json::to_value(mapping).unwrap_or_default())
        .execute(&mut **tx)
        .await?;
    super::journal::write(tx, &journal).await?;
    Ok(())
}

/// R7: the school changed a setting that shapes its LAS groups
/// (`rules::settings_replan_groups`): every LAS group is planned again now
/// (`rules::replan_group`), without waiting for the LAS to send it. Memberships
/// are by key, so they resolve to the new shape at once. Returns how many
/// groups changed.
pub(super) async fn replan(
    tx: &mut Transaction<'_, Postgres>,
    school_id: i64,
    settings: &rules::SchoolSettings,
    message_id: uuid::Uuid,
) -> Result<usize, StoreError> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {GROUP_COLUMNS} FROM portal_groups
         WHERE school_id = $1 AND las_kind IS NOT NULL AND status <> 'detached'
         ORDER BY id FOR UPDATE"
    )))
    .bind(school_id)
    .fetch_all(&mut **tx)
    .await?;
    let mut changed = Vec::new();
    let mut journal = Journal::default();
    for row in &rows {
        let g = stored_group(row)?;
        if let Some((new, decision)) = rules::replan_group(&g, settings) {
            let replanned = rules::Decision {
                action: rules::Action::GroupsReplanned,
                ..decision
            };
            if let Some(k) = &new.las_key {
                journal.push(
                    school_id,
                    message_id,
                    "group",
                    k,
                    new.version,
                    &[replanned, decision],
                );
            }
            changed.push(new);
        }
    }
    save_groups(tx, &changed).await?;
    super::journal::write(tx, &journal).await?;
    Ok(changed.len())
}

/// Groups (R7): the newest version per group wins; the rules decide the
/// shape (year group, composite, alias of a year group, skipped). A removed
/// group is detached and emptied, never deleted. A subclass's students are its
/// members (source `group`).
pub(super) async fn apply_groups(
    tx: &mut Transaction<'_, Postgres>,
    msgs: &[(usize, &LasChangeV1, i64)],
    schools: &HashMap<i64, &School>,
    outcomes: &mut [Option<MessageOutcome>],
    journal: &mut Journal,
    effects: &mut BatchEffects,
) -> Result<(), StoreError> {
    // Newest per (school, key) in this batch; older ones in the batch are stale.
    let rows = crate::domain::batch::newest_per_group(msgs, outcomes);
    let mut school = Vec::new();
    let mut key = Vec::new();
    let mut name: Vec<Option<String>> = Vec::new();
    let mut las_kind: Vec<Option<&'static str>> = Vec::new();
    let mut group_type: Vec<Option<&'static str>> = Vec::new();
    let mut maps_to: Vec<Option<String>> = Vec::new();
    let mut status = Vec::new();
    let mut years: Vec<String> = Vec::new();
    let mut students: Vec<String> = Vec::new();
    let mut version = Vec::new();
    let mut message = Vec::new();
    let mut decisions_of: HashMap<(i64, String), Decision> = HashMap::new();
    for ((s, k), (_, c)) in &rows {
        school.push(*s);
        key.push(k.clone());
        version.push(c.version as i64);
        message.push(c.message_id);
        match (&c.change, schools.get(s)) {
            (Change::GroupUpserted(g), Some(sch)) => {
                let (shape, decision) = match rules::plan_group(g, &sch.settings) {
                    Ok(p) => p,
                    // Checked before the message was accepted; kept total here.
                    Err(_) => (
                        rules::GroupShape::Skipped,
                        Decision {
                            rule: rules::Rule::R7,
                            action: rules::Action::CompositeSkipped,
                            field: None,
                        },
                    ),
                };
                decisions_of.insert((*s, k.clone()), decision);
                name.push(rules::normalize(&g.name));
                las_kind.push(Some(g.kind.as_str()));
                group_type.push(Some(shape.group_type()));
                maps_to.push(shape.maps_to().map(str::to_owned));
                status.push(shape.status());
                years.push(join_keys(&g.year_group_keys));
                students.push(if g.kind == las_contracts::GroupKind::Subclass {
                    join_keys(&g.student_keys)
                } else {
                    String::new()
                });
            }
            _ => {
                decisions_of.insert(
                    (*s, k.clone()),
                    Decision {
                        rule: rules::Rule::R7,
                        action: rules::Action::Detached,
                        field: None,
                    },
                );
                name.push(None);
                las_kind.push(None);
                group_type.push(None);
                maps_to.push(None);
                status.push("detached");
                years.push(String::new());
                students.push(String::new());
            }
        }
    }
    let applied: Vec<(i64, String, String, bool)> = sqlx::query_as(
        "INSERT INTO portal_groups (school_id, las_key, name, las_kind, group_type, maps_to_key, status, year_group_keys, student_keys, version, last_message_id)
         SELECT s, k, n, lk, COALESCE(gt, 'year'), mt, st,
                CASE WHEN y = '' THEN '{}'::text[] ELSE string_to_array(y, chr(31)) END,
                CASE WHEN sk = '' THEN '{}'::text[] ELSE string_to_array(sk, chr(31)) END, v, m
         FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::int8[], $11::uuid[])
              AS t(s, k, n, lk, gt, mt, st, y, sk, v, m)
         ORDER BY s, k
         ON CONFLICT (school_id, las_key) DO UPDATE SET
             name = CASE WHEN EXCLUDED.status = 'detached' THEN portal_groups.name ELSE EXCLUDED.name END,
             las_kind = COALESCE(EXCLUDED.las_kind, portal_groups.las_kind),
             group_type = CASE WHEN EXCLUDED.las_kind IS NULL THEN portal_groups.group_type ELSE EXCLUDED.group_type END,
             maps_to_key = CASE WHEN EXCLUDED.las_kind IS NULL THEN portal_groups.maps_to_key ELSE EXCLUDED.maps_to_key END,
             status = EXCLUDED.status,
             year_group_keys = EXCLUDED.year_group_keys,
             student_keys = EXCLUDED.student_keys,
             version = EXCLUDED.version,
             last_message_id = EXCLUDED.last_message_id,
             updated_at = now()
         WHERE portal_groups.version < EXCLUDED.version
         RETURNING school_id, las_key, status, (xmax = 0) AS inserted",
    )
    .bind(&school)
    .bind(&key)
    .bind(&name)
    .bind(&las_kind)
    .bind(&group_type)
    .bind(&maps_to)
    .bind(&status)
    .bind(&years)
    .bind(&students)
    .bind(&version)
    .bind(&message)
    .fetch_all(&mut **tx)
    .await?;
    for (s, k, st, inserted) in &applied {
        if *inserted
            && st == "active"
            && let Some(school) = schools.get(s)
        {
            effects.events.push(
                las_contracts::SyncEventType::GroupCreated,
                &school.brin,
                None,
                Some("group"),
                Some(k),
                vec![],
                None,
            );
        }
    }
    let applied_keys: HashMap<(i64, String), String> = applied
        .into_iter()
        .map(|(s, k, st, _)| ((s, k), st))
        .collect();
    let mut replace_school = Vec::new();
    let mut replace_key = Vec::new();
    let mut ins_school = Vec::new();
    let mut ins_key = Vec::new();
    let mut ins_student = Vec::new();
    for (idx, (k, (i, c))) in rows.iter().enumerate() {
        if !applied_keys.contains_key(k) {
            outcomes[*i] = Some(MessageOutcome::Stale);
            continue;
        }
        let decisions: Vec<Decision> = decisions_of.get(k).copied().into_iter().collect();
        journal.push(
            k.0,
            c.message_id,
            "group",
            &k.1,
            c.version as i64,
            &decisions,
        );
        outcomes[*i] = Some(MessageOutcome::Applied { decisions });
        // Members that come from the group itself: emptied on removal,
        // replaced by a subclass's student list.
        replace_school.push(k.0);
        replace_key.push(k.1.clone());
        if status[idx] == "detached" {
            // R7: a removed group is emptied of every member, whatever the source.
            continue;
        }
        for st in students[idx].split(KEY_SEP).filter(|s| !s.is_empty()) {
            ins_school.push(k.0);
            ins_key.push(k.1.clone());
            ins_student.push(st.to_owned());
        }
    }
    if !replace_school.is_empty() {
        sqlx::query(
            "DELETE FROM memberships m USING UNNEST($1::int8[], $2::text[], $3::text[]) AS t(s, k, st)
             WHERE m.school_id = t.s AND m.group_key = t.k AND (m.source = 'group' OR t.st = 'detached')",
        )
        .bind(&replace_school)
        .bind(&replace_key)
        .bind(
            rows.iter()
                .enumerate()
                .filter(|(_, (k, _))| applied_keys.contains_key(k))
                .map(|(idx, _)| status[idx])
                .collect::<Vec<_>>(),
        )
        .execute(&mut **tx)
        .await?;
    }
    if !ins_school.is_empty() {
        sqlx::query(
            "INSERT INTO memberships (school_id, group_key, member_kind, member_key, source)
             SELECT s, k, 'student', st, 'group' FROM UNNEST($1::int8[], $2::text[], $3::text[]) AS t(s, k, st)
             ON CONFLICT DO NOTHING",
        )
        .bind(&ins_school)
        .bind(&ins_key)
        .bind(&ins_student)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Separator for key lists passed as one text per row (`chr(31)` in SQL): the
/// ASCII unit separator, which no LAS key contains.
pub(super) const KEY_SEP: &str = "\u{1f}";

pub(super) fn join_keys(keys: &Option<Vec<String>>) -> String {
    let mut v: Vec<String> = keys
        .iter()
        .flatten()
        .filter_map(|k| rules::normalize(&Some(k.clone())))
        .collect();
    v.sort();
    v.dedup();
    v.join(KEY_SEP)
}
