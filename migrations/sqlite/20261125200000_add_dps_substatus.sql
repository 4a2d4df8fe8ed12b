-- DPS pre-verification (issue 6): the substatus DPS returned with an assignment
-- (initialAssignment, reprovisionedToInitialAssignment, ...), and an index for the units that
-- `station dps verify --pending` retries. Forward-only.
ALTER TABLE units ADD COLUMN dps_substatus TEXT;
CREATE INDEX units_dps_pending ON units (dps_status) WHERE dps_status = 'pending';
