-- Stations sharing a batch (issue 15): an attempt claims one of its batch's slots once the device
-- is identified, and holds it until it ends or the claim lapses (renewed at every stage), so that
-- stations racing for a batch's last units never provision more than its target.
-- Forward-only: never edit once landed.
ALTER TABLE attempts ADD COLUMN claim_until TEXT;   -- RFC 3339; NULL: holds no slot
CREATE INDEX attempts_in_progress ON attempts (batch_id) WHERE outcome = 'in-progress';
