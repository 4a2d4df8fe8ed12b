-- Roles for the stations of a factory sharing one PostgreSQL database (issue 15).
--
-- Run once per database as its owner, after `station db migrate` made the tables (and again
-- after a station update that adds one; it is safe to re-run):
--
--     psql "postgres://OWNER@db.factory.local/station" -f deploy/postgres/roles.sql
--
-- It makes two group roles without login and grants them what they need, nothing more:
--   station  reads everything; inserts batches, units, attempts, certificates (X.509) and audit
--            entries; updates the rows a line must update (a batch's closing, a unit's state
--            and DPS outcome, an attempt's progress); deletes only attempts that turned out to
--            be none (a unit seen again). It cannot UPDATE, DELETE or TRUNCATE the audit log,
--            nor change the schema.
--   auditor  reads everything, writes nothing.
-- Then give each station and each auditor a login of its own, e.g.:
--
--     CREATE ROLE line1_st1 LOGIN PASSWORD '...' IN ROLE station;
--     CREATE ROLE qa_anna   LOGIN PASSWORD '...' IN ROLE auditor;

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'station') THEN
        CREATE ROLE station NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'auditor') THEN
        CREATE ROLE auditor NOLOGIN;
    END IF;
END
$$;

REVOKE ALL ON batches, units, attempts, certificates, audit_log, _sqlx_migrations
    FROM station, auditor;

GRANT USAGE ON SCHEMA public TO station, auditor;
GRANT SELECT ON batches, units, attempts, certificates, audit_log, _sqlx_migrations
    TO station, auditor;

GRANT INSERT ON batches, units, attempts, certificates, audit_log TO station;
GRANT UPDATE (closed_at, closed_by) ON batches TO station;
GRANT UPDATE ON units, attempts TO station;
GRANT DELETE ON attempts TO station;
