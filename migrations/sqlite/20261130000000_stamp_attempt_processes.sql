-- An open attempt's process is identified by its pid, the boot it ran in and its start time
-- (clock ticks since boot), so that a pid reused after a power cut or by a later process does
-- not keep the attempt open forever (issue 13). NULL in rows written before.
ALTER TABLE attempts ADD COLUMN pid_boot_id TEXT;
ALTER TABLE attempts ADD COLUMN pid_started INTEGER;
