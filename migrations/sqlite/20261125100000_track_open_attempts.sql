-- Attempts are written when they start, so that a station that dies mid-unit (power cut, kill -9)
-- leaves a trace: the next start marks such attempts `interrupted` (DESIGN.md section 5, issue 5).
-- SQLite cannot relax a CHECK or NOT NULL in place, so the table is rebuilt with its rows.

CREATE TABLE attempts_new (
    id            INTEGER PRIMARY KEY,
    unit_id       INTEGER REFERENCES units (id),   -- NULL when it failed before the MAC was read
    mac           TEXT,
    batch_id      INTEGER NOT NULL REFERENCES batches (id),
    station_id    TEXT    NOT NULL,
    operator      TEXT    NOT NULL,
    port          TEXT    NOT NULL,
    started_at    TEXT    NOT NULL,
    finished_at   TEXT,                          -- NULL while in progress
    outcome       TEXT    NOT NULL
                  CHECK (outcome IN ('in-progress', 'provisioned', 'failed', 'interrupted')),
    stage         TEXT,                          -- in progress: the stage reached so far
    error_code    TEXT,
    message       TEXT,
    reprovision   INTEGER NOT NULL DEFAULT 0,
    timings       TEXT    NOT NULL,              -- JSON: seconds per pipeline stage
    audit_seq     INTEGER,                       -- the audit entry written when it ended
    pid           INTEGER                        -- the process running it, while in progress
);

INSERT INTO attempts_new (id, unit_id, mac, batch_id, station_id, operator, port, started_at,
                          finished_at, outcome, stage, error_code, message, reprovision, timings,
                          audit_seq)
SELECT id, unit_id, mac, batch_id, station_id, operator, port, started_at, finished_at, outcome,
       stage, error_code, message, reprovision, timings, audit_seq
FROM attempts;

DROP TABLE attempts;
ALTER TABLE attempts_new RENAME TO attempts;

CREATE INDEX attempts_unit ON attempts (unit_id);
CREATE INDEX attempts_batch ON attempts (batch_id);
CREATE INDEX attempts_open ON attempts (station_id) WHERE outcome = 'in-progress';
