-- Issue #18: the portal shows staff to parents (seed 002, "Medewerkers"), so
-- only a staff member's name, work e-mail and the phones the school publishes
-- are imported (R3 for staff). `staff_phones` lists the published ones
-- ('phone', 'mobile'); none by default. Home addresses and private phones the
-- portal already holds for staff are removed now; the import never brings
-- them back.
ALTER TABLE schools ADD COLUMN staff_phones TEXT[] NOT NULL DEFAULT '{}';

UPDATE profiles
SET street = NULL, postcode = NULL, city = NULL, phone = NULL, mobile = NULL,
    emergency_phone = NULL, updated_at = now()
WHERE kind = 'staff'
  AND (street IS NOT NULL OR postcode IS NOT NULL OR city IS NOT NULL OR phone IS NOT NULL
       OR mobile IS NOT NULL OR emergency_phone IS NOT NULL);
