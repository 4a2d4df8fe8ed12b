-- Indexes for QA manifests and station sessions (issue 7). Forward-only: never edit once landed.

-- A manifest counts every attempt recorded for a MAC, whatever its outcome.
CREATE INDEX attempts_mac ON attempts (mac);

-- Opening a station looks up the last `config.changed` / `key.loaded` entry of that station
-- without walking the whole chain.
CREATE INDEX audit_log_action_station ON audit_log (action, station_id);
