-- PostgreSQL's mirror of migrations/sqlite/20261202000000_index_audit_subjects.sql (issue 16):
-- the supervisor dashboard's unit page finds the audit entries about one unit by their subject
-- (its MAC or registration ID) without walking every station's chain. An index needs no grant.
CREATE INDEX audit_log_subject ON audit_log (subject);
