-- The station's records on a PostgreSQL server that several stations share (issue 15): the same
-- model as the SQLite schema (DESIGN.md section 5; migrations/sqlite/, all of it up to
-- 20261201000000, X.509 certificates included), with one audit chain per station.
-- Forward-only: never edit once landed.
-- Times are RFC 3339 UTC text with milliseconds, as on SQLite, so they sort as text and the
-- audit hash covers exactly the stored characters.

-- A work order: a named batch of units with a target count. Any station may run it.
CREATE TABLE batches (
    id          BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        TEXT    NOT NULL UNIQUE,
    target      BIGINT  NOT NULL CHECK (target > 0),
    operator    TEXT    NOT NULL,
    station_id  TEXT    NOT NULL,            -- the station that opened it
    opened_at   TEXT    NOT NULL,
    closed_at   TEXT,
    closed_by   TEXT
);
-- A station opens one batch at a time.
CREATE UNIQUE INDEX batches_one_open_per_station ON batches (station_id) WHERE closed_at IS NULL;

-- One row per device (MAC) across the factory. `state` is the outcome of the last attempt that
-- wrote to the device: provisioned only after the written flash was verified.
CREATE TABLE units (
    id                BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    mac               TEXT    NOT NULL UNIQUE,
    registration_id   TEXT    NOT NULL UNIQUE,
    batch_id          BIGINT  NOT NULL REFERENCES batches (id),
    station_id        TEXT    NOT NULL,      -- the station that wrote it last
    chip              TEXT    NOT NULL,
    revision          TEXT    NOT NULL,
    flash_size        BIGINT  NOT NULL,
    key_id            TEXT    NOT NULL,      -- fingerprint of the group key used, never the key
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
    updated_at        TEXT    NOT NULL,
    dps_substatus     TEXT,
    attestation       TEXT    NOT NULL DEFAULT 'symmetric-key'
                      CHECK (attestation IN ('symmetric-key', 'x509')),
    cert_serial       TEXT,                  -- X.509: the certificate the last write put on it
    cert_thumbprint   TEXT,
    cert_not_after    TEXT
);
CREATE INDEX units_batch ON units (batch_id, state);
CREATE INDEX units_dps_pending ON units (dps_status) WHERE dps_status = 'pending';

-- Every try on a port, pass or fail. Written `in-progress` when it starts; while it runs it may
-- hold one of its batch's slots until `claim_until`.
CREATE TABLE attempts (
    id            BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    unit_id       BIGINT  REFERENCES units (id),   -- NULL when it failed before the MAC was read
    mac           TEXT,
    batch_id      BIGINT  NOT NULL REFERENCES batches (id),
    station_id    TEXT    NOT NULL,
    operator      TEXT    NOT NULL,
    port          TEXT    NOT NULL,
    started_at    TEXT    NOT NULL,
    finished_at   TEXT,                            -- NULL while in progress
    outcome       TEXT    NOT NULL
                  CHECK (outcome IN ('in-progress', 'provisioned', 'failed', 'interrupted')),
    stage         TEXT,
    error_code    TEXT,
    message       TEXT,
    reprovision   BOOLEAN NOT NULL DEFAULT false,
    timings       TEXT    NOT NULL,                -- JSON: seconds per pipeline stage
    audit_seq     BIGINT,                          -- its entry in its station's audit chain
    pid           BIGINT,                          -- the process running it, while in progress
    claim_until   TEXT                             -- RFC 3339; NULL: holds no slot
);
CREATE INDEX attempts_unit ON attempts (unit_id);
CREATE INDEX attempts_batch ON attempts (batch_id);
CREATE INDEX attempts_mac ON attempts (mac, outcome);
CREATE INDEX attempts_open ON attempts (station_id) WHERE outcome = 'in-progress';
CREATE INDEX attempts_in_progress ON attempts (batch_id) WHERE outcome = 'in-progress';

-- Every certificate the stations issued (X.509 attestation), so that a unit provisioned again
-- keeps the history of what it held. Private keys are never stored.
CREATE TABLE certificates (
    id               BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    unit_id          BIGINT  NOT NULL REFERENCES units (id),
    attempt_id       BIGINT  NOT NULL REFERENCES attempts (id),
    mac              TEXT    NOT NULL,
    registration_id  TEXT    NOT NULL,   -- the certificate's subject CN
    serial           TEXT    NOT NULL,   -- uppercase hex
    thumbprint       TEXT    NOT NULL UNIQUE,   -- SHA-256 of the DER, uppercase hex
    not_before       TEXT    NOT NULL,
    not_after        TEXT    NOT NULL,
    key_type         TEXT    NOT NULL,
    ca_thumbprint    TEXT    NOT NULL,   -- the signing CA's SHA-256 thumbprint
    station_id       TEXT    NOT NULL,
    issued_at        TEXT    NOT NULL,
    UNIQUE (ca_thumbprint, serial)
);
CREATE INDEX certificates_unit ON certificates (unit_id);
CREATE INDEX certificates_mac ON certificates (mac);

-- Append-only, hash-chained audit log: one chain per station (`seq` counts within the station),
-- so stations append without waiting for each other. `hash` = SHA-256 over the canonical
-- encoding of the entry (src/store/audit.rs), which includes `prev_hash`, the hash of the
-- station's entry before. `id` only orders entries across stations; it is not hashed.
CREATE TABLE audit_log (
    id          BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    station_id  TEXT    NOT NULL,
    seq         BIGINT  NOT NULL CHECK (seq > 0),
    at          TEXT    NOT NULL,
    operator    TEXT    NOT NULL,
    action      TEXT    NOT NULL,
    subject     TEXT    NOT NULL,
    details     TEXT    NOT NULL,
    prev_hash   TEXT    NOT NULL,
    hash        TEXT    COLLATE "C" NOT NULL UNIQUE, -- byte order: `--head` prefixes are ranges
    UNIQUE (station_id, seq)
);
CREATE INDEX audit_log_action_station ON audit_log (action, station_id);

-- Whoever holds the rights, entries are not changed or removed in place (the `station` role of
-- deploy/postgres/roles.sql has no right to try).
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP;
END
$$;
CREATE TRIGGER audit_log_refuses_update BEFORE UPDATE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_refuses_delete BEFORE DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_refuses_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();

-- The batch an entry's details name, or NULL when they are not JSON (an entry edited by hand):
-- `audit show --batch` keeps working on a log that `audit verify` reports broken.
CREATE FUNCTION audit_details_batch(details TEXT) RETURNS TEXT
    LANGUAGE plpgsql IMMUTABLE STRICT AS $$
BEGIN
    RETURN details::jsonb ->> 'batch';
EXCEPTION WHEN others THEN
    RETURN NULL;
END
$$;
