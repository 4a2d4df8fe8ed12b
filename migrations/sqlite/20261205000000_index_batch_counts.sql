-- A batch's counts (`batch status`, the dashboard's line and batch pages) read only indexes, so
-- that they answer in milliseconds with 100,000 units in one batch: the units per station and
-- state with their provisioning times, the attempts per station and outcome, per minute of
-- their ending, and the failed ones by error code. The two single-column indexes these extend
-- go. Forward-only: never edit once landed. Mirrored in migrations/postgres.
DROP INDEX units_batch;
DROP INDEX attempts_batch;
CREATE INDEX units_batch_station ON units (batch_id, station_id, state, provisioned_at);
CREATE INDEX attempts_batch_station ON attempts (batch_id, station_id, outcome);
CREATE INDEX attempts_batch_minute ON attempts (batch_id, substr(finished_at, 1, 16), outcome)
    WHERE finished_at IS NOT NULL;
CREATE INDEX attempts_batch_failures ON attempts (batch_id, error_code, stage)
    WHERE outcome IN ('failed', 'interrupted');
