-- The boot check (issue 14). Forward-only: never edit once landed.
--
-- An attempt that ran the boot check keeps the excerpt of the unit's boot log it judged: the
-- last `[boot] keep_log` bytes, redacted before they were stored (device keys, base64 of 32
-- bytes or more, PEM private keys). Its SHA-256 is in the attempt's audit entry, so an edited
-- excerpt is caught. NULL when the check did not run.
ALTER TABLE attempts ADD COLUMN boot_log TEXT;
