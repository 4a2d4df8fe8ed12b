-- The station's records (DESIGN.md section 5). Forward-only: never edit a landed migration.
-- Times are RFC 3339 UTC text with milliseconds, so they sort as text.

-- A work order: a named batch of units with a target count, opened by an operator.
CREATE TABLE batches (
    id          INTEGER PRIMARY KEY,
    name        TEXT    NOT NULL UNIQUE,
    target      INTEGER NOT NULL CHECK (target > 0),
    operator    TEXT    NOT NULL,
    station_id  TEXT    NOT NULL,
    opened_at   TEXT    NOT NULL,
    closed_at   TEXT,
    closed_by   TEXT
);
-- A station works on one batch at a time.
CREATE UNIQUE INDEX batches_one_open_per_station ON batches (station_id) WHERE closed_at IS NULL;

-- One row per device (MAC). `state` is the outcome of the last attempt that wrote to the device:
-- provisioned only after the written flash was verified.
CREATE TABLE units (
    id                INTEGER PRIMARY KEY,
    mac               TEXT    NOT NULL UNIQUE,
    registration_id   TEXT    NOT NULL UNIQUE,
    batch_id          INTEGER NOT NULL REFERENCES batches (id),
    station_id        TEXT    NOT NULL,
    chip              TEXT    NOT NULL,
    revision          TEXT    NOT NULL,
    flash_size        INTEGER NOT NULL,
    key_id            TEXT    NOT NULL,   -- fingerprint of the group key used, never the key
    secondary_key_id  TEXT,
    image_sha256      TEXT,
    state             TEXT    NOT NULL CHECK (state IN ('provisioned', 'failed')),
    failed_stage      TEXT,
    provisioned_at    TEXT,
    dps_status        TEXT    NOT NULL DEFAULT 'not-requested'
                      CHECK (dps_status IN ('not-requested', 'pending', 'assigned', 'failed')),
    assigned_hub      TEXT,
    device_id         TEXT,
    dps_error         TEXT,
    updated_at        TEXT    NOT NULL
);
CREATE INDEX units_batch ON units (batch_id);

-- Every try on a port, pass or fail, with the stage that failed and its stable error code.
CREATE TABLE attempts (
    id            INTEGER PRIMARY KEY,
    unit_id       INTEGER REFERENCES units (id),   -- NULL when it failed before the MAC was read
    mac           TEXT,
    batch_id      INTEGER NOT NULL REFERENCES batches (id),
    station_id    TEXT    NOT NULL,
    operator      TEXT    NOT NULL,
    port          TEXT    NOT NULL,
    started_at    TEXT    NOT NULL,
    finished_at   TEXT    NOT NULL,
    outcome       TEXT    NOT NULL CHECK (outcome IN ('provisioned', 'failed')),
    stage         TEXT,
    error_code    TEXT,
    message       TEXT,
    reprovision   INTEGER NOT NULL DEFAULT 0,
    timings       TEXT    NOT NULL,              -- JSON: seconds per pipeline stage
    audit_seq     INTEGER NOT NULL               -- the audit entry written with this attempt
);
CREATE INDEX attempts_unit ON attempts (unit_id);
CREATE INDEX attempts_batch ON attempts (batch_id);

-- Append-only, hash-chained audit log. `hash` = SHA-256 over the canonical encoding of the
-- entry (see src/store/audit.rs), which includes `prev_hash`, the hash of the entry before.
CREATE TABLE audit_log (
    seq         INTEGER PRIMARY KEY,
    at          TEXT    NOT NULL,
    station_id  TEXT    NOT NULL,
    operator    TEXT    NOT NULL,
    action      TEXT    NOT NULL,
    subject     TEXT    NOT NULL,
    details     TEXT    NOT NULL,
    prev_hash   TEXT    NOT NULL,
    hash        TEXT    NOT NULL UNIQUE
);

CREATE TRIGGER audit_log_refuses_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only: entries cannot be changed');
END;

CREATE TRIGGER audit_log_refuses_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only: entries cannot be deleted');
END;
