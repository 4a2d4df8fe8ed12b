-- X.509 attestation (issue 17). Forward-only: never edit once landed.
--
-- A unit records how it proves its identity to DPS and, for X.509, the certificate its last
-- write put on it (serial, SHA-256 thumbprint, expiry: what QA's manifest and the Azure portal
-- show). Every certificate the station issues is kept in `certificates`, so a unit provisioned
-- again (a new key pair, a new certificate) keeps the history of what it held: a certificate to
-- revoke is found by serial or thumbprint. The private keys are never stored.
ALTER TABLE units ADD COLUMN attestation TEXT NOT NULL DEFAULT 'symmetric-key'
    CHECK (attestation IN ('symmetric-key', 'x509'));
ALTER TABLE units ADD COLUMN cert_serial TEXT;
ALTER TABLE units ADD COLUMN cert_thumbprint TEXT;
ALTER TABLE units ADD COLUMN cert_not_after TEXT;

CREATE TABLE certificates (
    id               INTEGER PRIMARY KEY,
    unit_id          INTEGER NOT NULL REFERENCES units (id),
    attempt_id       INTEGER NOT NULL REFERENCES attempts (id),
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
