-- Issue #18 (R12): a record the portal never showed (a child held back, R9,
-- or a guardian of only held children) is purged at its removal, not after
-- the retention term. `shown` remembers that a profile was active at some
-- time: a guardian can go from active to held when its last visible child
-- leaves, and then keeps its term. Profiles that are or were active count as
-- shown; held ones as not.
ALTER TABLE profiles ADD COLUMN shown BOOLEAN NOT NULL DEFAULT FALSE;
UPDATE profiles SET shown = TRUE WHERE status IN ('active', 'deactivated');
