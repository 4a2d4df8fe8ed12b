-- PostgreSQL's mirror of migrations/sqlite/20261203000000_add_attempt_boot_log.sql (issue 14):
-- an attempt that ran the boot check keeps the redacted, bounded excerpt of the unit's boot log
-- it judged; its SHA-256 is in the attempt's audit entry. NULL when the check did not run. The
-- station role's UPDATE on attempts (deploy/postgres/roles.sql) covers the new column.
ALTER TABLE attempts ADD COLUMN boot_log TEXT;
