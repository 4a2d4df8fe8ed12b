-- PostgreSQL's mirror of migrations/sqlite/20261205000000_index_batch_counts.sql: a batch's
-- counts read only indexes (units per station and state with their provisioning times; attempts
-- per station and outcome, per minute of their ending, and the failed ones by error code). The
-- indexes these extend go. An index needs no grant. Forward-only: never edit once landed.
DROP INDEX units_batch;
DROP INDEX attempts_batch;
CREATE INDEX units_batch_station ON units (batch_id, station_id, state, provisioned_at);
CREATE INDEX attempts_batch_station ON attempts (batch_id, station_id, outcome);
CREATE INDEX attempts_batch_minute ON attempts (batch_id, substr(finished_at, 1, 16), outcome)
    WHERE finished_at IS NOT NULL;
CREATE INDEX attempts_batch_failures ON attempts (batch_id, error_code, stage)
    WHERE outcome IN ('failed', 'interrupted');
