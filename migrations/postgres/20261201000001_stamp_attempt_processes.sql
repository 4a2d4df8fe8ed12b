-- PostgreSQL's mirror of migrations/sqlite/20261130000000_stamp_attempt_processes.sql (issue 13):
-- an open attempt's process is identified by its pid, the boot it ran in and its start time
-- (clock ticks since boot), so that a pid reused after a power cut or by a later process does
-- not keep the attempt open forever. NULL in rows written before. The station role's UPDATE on
-- attempts (deploy/postgres/roles.sql) covers the new columns.
ALTER TABLE attempts ADD COLUMN pid_boot_id TEXT;
ALTER TABLE attempts ADD COLUMN pid_started BIGINT;
