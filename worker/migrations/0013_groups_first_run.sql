-- Issue #15, the groups half (R7): the first run as seed 001 describes it.
--
-- `composite_groups_lead` ("samengestelde groepen en jaargroepen omdraaien"):
-- the school lists its composite groups first and lets them lead. The worker
-- stores it from portal.link.v1 (v1.3) for the portal; off by default.
ALTER TABLE schools ADD COLUMN composite_groups_lead BOOLEAN NOT NULL DEFAULT FALSE;

-- What the portal shows, now also for an ESIS combination group while the
-- school's esis_composite_groups is off (status 'skipped'): its members are
-- shown in the year groups it is made of (`year_group_keys`), never in no
-- group at all. A member who is in one of those year groups directly is shown
-- there only (the LAS knows its year); one who is in none of them is shown in
-- each of them. The first part is the view of 0001 unchanged.
CREATE OR REPLACE VIEW portal_group_members AS
SELECT g.school_id, g.id AS group_id, g.las_key AS group_key, g.name AS group_name, m.member_kind, m.member_key
FROM memberships m
JOIN portal_groups a ON a.school_id = m.school_id AND a.las_key = m.group_key
JOIN portal_groups g ON g.school_id = a.school_id AND g.las_key = COALESCE(a.maps_to_key, a.las_key)
JOIN profiles p ON p.school_id = m.school_id AND p.kind = m.member_kind AND p.las_key = m.member_key
WHERE g.status = 'active' AND a.status = 'active' AND p.status = 'active'
UNION ALL
SELECT g.school_id, g.id AS group_id, g.las_key AS group_key, g.name AS group_name, m.member_kind, m.member_key
FROM memberships m
JOIN portal_groups a ON a.school_id = m.school_id AND a.las_key = m.group_key
JOIN portal_groups g ON g.school_id = a.school_id AND g.las_key = ANY (a.year_group_keys)
JOIN profiles p ON p.school_id = m.school_id AND p.kind = m.member_kind AND p.las_key = m.member_key
WHERE a.status = 'skipped' AND g.status = 'active' AND p.status = 'active'
  AND NOT EXISTS (
      SELECT 1 FROM memberships d
      WHERE d.school_id = m.school_id AND d.member_kind = m.member_kind
        AND d.member_key = m.member_key AND d.group_key = ANY (a.year_group_keys));
