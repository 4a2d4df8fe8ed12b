-- The supervisor dashboard's unit page (issue 16) finds the audit entries about one unit by
-- their subject (its MAC or registration ID) without walking the whole chain. Forward-only:
-- never edit once landed. Mirrored in migrations/postgres.
CREATE INDEX audit_log_subject ON audit_log (subject);
