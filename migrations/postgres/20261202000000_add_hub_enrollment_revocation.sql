-- PostgreSQL's mirror of migrations/sqlite/20261202000000_add_hub_enrollment_revocation.sql
-- (issue 18): the test message to the assigned hub, individual enrollments, revocation. The
-- station role's INSERT and UPDATE on units (deploy/postgres/roles.sql) cover the new columns.
-- Forward-only: never edit once landed.
--
-- `enrollment`: how DPS knows the unit (its group, or an individual enrollment the station made
-- with a random key, whose fingerprint alone is kept in `key_id`). `hub_status`/`hub_error`:
-- the outcome of the unit's last test message to its hub. `revoked_at`/`revoked_reason`: set by
-- `station unit revoke` (a scrapped or returned unit, shut out of DPS), cleared by `station unit
-- restore`; the audit log keeps every act.
ALTER TABLE units ADD COLUMN enrollment TEXT NOT NULL DEFAULT 'group'
    CHECK (enrollment IN ('group', 'individual'));
ALTER TABLE units ADD COLUMN hub_status TEXT NOT NULL DEFAULT 'not-requested'
    CHECK (hub_status IN ('not-requested', 'accepted', 'failed'));
ALTER TABLE units ADD COLUMN hub_error TEXT;
ALTER TABLE units ADD COLUMN revoked_at TEXT;
ALTER TABLE units ADD COLUMN revoked_reason TEXT;
CREATE INDEX units_revoked ON units (revoked_at) WHERE revoked_at IS NOT NULL;
