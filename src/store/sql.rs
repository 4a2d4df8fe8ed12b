//! The queries both backends run as they are: one SQL text, with `$1`-style parameters (which
//! SQLite numbers in order of first appearance, PostgreSQL by their digits) and only syntax
//! both dialects share (`RETURNING`, `ON CONFLICT`, `FILTER`, `CAST`), bound to the same typed
//! values. [`common_queries!`] writes them as [`super::backend::Tx`] methods into each
//! backend's transaction type (a newtype over `sqlx::Transaction`): a macro rather than
//! generic functions, whose bounds would have to spell out every typed value's encoding for
//! every database. What differs (locks, the audit chain's extent, JSON in `audit show`)
//! each backend writes itself.

/// The [`super::backend::Tx`] methods whose SQL both backends share; invoked inside
/// `impl Tx for X` where `X` is a newtype over `sqlx::Transaction<'static, DB>`.
macro_rules! common_queries {
    () => {
        async fn commit(self) -> Result<(), $crate::store::StoreError> {
            Ok(self.0.commit().await?)
        }

        async fn batch_by_id(&mut self, id: i64) -> Result<$crate::record::Batch, $crate::store::StoreError> {
            Ok(sqlx::query_as("SELECT * FROM batches WHERE id = $1")
                .bind(id)
                .fetch_one(&mut *self.0)
                .await?)
        }

        async fn batch_named(&mut self, name: &str) -> Result<Option<$crate::record::Batch>, $crate::store::StoreError> {
            Ok(sqlx::query_as("SELECT * FROM batches WHERE name = $1")
                .bind(name)
                .fetch_optional(&mut *self.0)
                .await?)
        }

        async fn open_batch_of(&mut self, station_id: &str) -> Result<Option<$crate::record::Batch>, $crate::store::StoreError> {
            Ok(
                sqlx::query_as("SELECT * FROM batches WHERE station_id = $1 AND closed_at IS NULL")
                    .bind(station_id)
                    .fetch_optional(&mut *self.0)
                    .await?,
            )
        }

        async fn batches(&mut self) -> Result<Vec<$crate::record::Batch>, $crate::store::StoreError> {
            Ok(sqlx::query_as("SELECT * FROM batches ORDER BY id DESC")
                .fetch_all(&mut *self.0)
                .await?)
        }

        async fn insert_batch(
            &mut self,
            name: &str,
            target: i64,
            operator: &str,
            station_id: &str,
            at: &str,
        ) -> Result<Option<i64>, $crate::store::StoreError> {
            Ok(sqlx::query_scalar(
                "INSERT INTO batches (name, target, operator, station_id, opened_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING id",
            )
            .bind(name)
            .bind(target)
            .bind(operator)
            .bind(station_id)
            .bind(at)
            .fetch_optional(&mut *self.0)
            .await?)
        }

        async fn close_batch(&mut self, id: i64, at: &str, operator: &str) -> Result<(), $crate::store::StoreError> {
            sqlx::query("UPDATE batches SET closed_at = $1, closed_by = $2 WHERE id = $3")
                .bind(at)
                .bind(operator)
                .bind(id)
                .execute(&mut *self.0)
                .await?;
            Ok(())
        }

        async fn batch_counts(&mut self, batch_id: i64) -> Result<$crate::store::backend::BatchCounts, $crate::store::StoreError> {
            // One pass over the batch's units and one over its attempts, each grouped by
            // station on an index that covers it; the batch's totals are its stations' sums.
            // A station's first and last provisioning are two index seeks, not a scan.
            let units: Vec<$crate::store::backend::UnitShare> = sqlx::query_as(
                "SELECT station_id, state, COUNT(*), \
                        (SELECT MIN(provisioned_at) FROM units f \
                          WHERE f.batch_id = $1 AND f.station_id = u.station_id AND f.state = u.state), \
                        (SELECT MAX(provisioned_at) FROM units l \
                          WHERE l.batch_id = $1 AND l.station_id = u.station_id AND l.state = u.state) \
                 FROM units u WHERE batch_id = $1 GROUP BY station_id, state",
            )
            .bind(batch_id)
            .fetch_all(&mut *self.0)
            .await?;
            let attempts: Vec<$crate::store::backend::AttemptShare> = sqlx::query_as(
                "SELECT station_id, outcome, COUNT(*) FROM attempts WHERE batch_id = $1 \
                 GROUP BY station_id, outcome",
            )
            .bind(batch_id)
            .fetch_all(&mut *self.0)
            .await?;
            let failures = sqlx::query_as(
                "SELECT error_code, MAX(stage) AS stage, COUNT(*) AS count FROM attempts \
                 WHERE batch_id = $1 AND outcome IN ('failed', 'interrupted') AND error_code IS NOT NULL \
                 GROUP BY error_code ORDER BY count DESC, error_code",
            )
            .bind(batch_id)
            .fetch_all(&mut *self.0)
            .await?;
            Ok($crate::store::backend::batch_counts(units, attempts, failures))
        }

        async fn provisioned_in(&mut self, batch_id: i64) -> Result<i64, $crate::store::StoreError> {
            Ok(sqlx::query_scalar(
                "SELECT COUNT(*) FROM units WHERE batch_id = $1 AND state = 'provisioned'",
            )
            .bind(batch_id)
            .fetch_one(&mut *self.0)
            .await?)
        }

        async fn live_claims(
            &mut self,
            batch_id: i64,
            now: &str,
            except: i64,
            except_station: Option<&str>,
        ) -> Result<i64, $crate::store::StoreError> {
            Ok(sqlx::query_scalar(
                "SELECT COUNT(*) FROM attempts WHERE batch_id = $1 AND outcome = 'in-progress' \
                 AND claim_until > $2 AND id <> $3 AND ($4 IS NULL OR station_id <> $4)",
            )
            .bind(batch_id)
            .bind(now)
            .bind(except)
            .bind(except_station)
            .fetch_one(&mut *self.0)
            .await?)
        }

        async fn unit_by_mac(&mut self, mac: $crate::identity::Mac) -> Result<Option<$crate::record::Unit>, $crate::store::StoreError> {
            Ok(sqlx::query_as("SELECT * FROM units WHERE mac = $1")
                .bind(mac)
                .fetch_optional(&mut *self.0)
                .await?)
        }

        async fn unit_by_registration_id(
            &mut self,
            registration_id: &$crate::identity::RegistrationId,
        ) -> Result<Option<$crate::record::Unit>, $crate::store::StoreError> {
            Ok(
                sqlx::query_as("SELECT * FROM units WHERE registration_id = $1")
                    .bind(registration_id)
                    .fetch_optional(&mut *self.0)
                    .await?,
            )
        }

        async fn units_of(&mut self, batch_id: i64) -> Result<Vec<$crate::record::Unit>, $crate::store::StoreError> {
            Ok(
                sqlx::query_as("SELECT * FROM units WHERE batch_id = $1 ORDER BY mac")
                    .bind(batch_id)
                    .fetch_all(&mut *self.0)
                    .await?,
            )
        }

        async fn pending_dps_units(&mut self) -> Result<Vec<$crate::record::Unit>, $crate::store::StoreError> {
            Ok(sqlx::query_as(
                "SELECT * FROM units WHERE dps_status = 'pending' AND state = 'provisioned' ORDER BY updated_at, id",
            )
            .fetch_all(&mut *self.0)
            .await?)
        }

        async fn last_provisioned_attempt(&mut self, mac: $crate::identity::Mac) -> Result<Option<i64>, $crate::store::StoreError> {
            Ok(sqlx::query_scalar(
                "SELECT MAX(id) FROM attempts WHERE mac = $1 AND outcome = 'provisioned'",
            )
            .bind(mac)
            .fetch_one(&mut *self.0)
            .await?)
        }

        async fn write_unit(&mut self, unit: &$crate::store::backend::UnitWrite<'_>) -> Result<$crate::record::Unit, $crate::store::StoreError> {
            Ok(sqlx::query_as($crate::store::sql::UPSERT_UNIT)
                .bind(unit.mac)
                .bind(unit.registration_id)
                .bind(unit.batch_id)
                .bind(unit.station_id)
                .bind(unit.chip)
                .bind(unit.revision)
                .bind(unit.flash_size)
                .bind(unit.key_id)
                .bind(unit.secondary_key_id)
                .bind(unit.image_sha256)
                .bind(unit.state)
                .bind(unit.failed_stage)
                .bind(unit.provisioned_at)
                .bind(unit.at)
                .bind(unit.attestation)
                .bind(unit.certificate.map(|c| &c.serial))
                .bind(unit.certificate.map(|c| &c.thumbprint))
                .bind(unit.certificate.map(|c| &c.not_after))
                .bind(unit.enrollment)
                .bind(unit.hub_status)
                .bind(unit.hub_error)
                .fetch_one(&mut *self.0)
                .await?)
        }

        async fn set_revocation(
            &mut self,
            mac: $crate::identity::Mac,
            revocation: &$crate::record::UnitRevocation,
            at: &str,
        ) -> Result<Option<$crate::record::Unit>, $crate::store::StoreError> {
            Ok(sqlx::query_as(
                "UPDATE units SET revoked_at = $1, revoked_reason = $2, updated_at = $3 WHERE mac = $4 RETURNING *",
            )
            .bind(&revocation.revoked_at)
            .bind(&revocation.reason)
            .bind(at)
            .bind(mac)
            .fetch_optional(&mut *self.0)
            .await?)
        }

        async fn mark_unit_failed(
            &mut self,
            mac: $crate::identity::Mac,
            stage: $crate::record::Stage,
            at: &str,
        ) -> Result<Option<i64>, $crate::store::StoreError> {
            Ok(sqlx::query_scalar(
                "UPDATE units SET state = $1, failed_stage = $2, updated_at = $3 WHERE mac = $4 RETURNING id",
            )
            .bind($crate::record::UnitState::Failed)
            .bind(stage)
            .bind(at)
            .bind(mac)
            .fetch_optional(&mut *self.0)
            .await?)
        }

        async fn unit_id(&mut self, mac: $crate::identity::Mac) -> Result<Option<i64>, $crate::store::StoreError> {
            Ok(sqlx::query_scalar("SELECT id FROM units WHERE mac = $1")
                .bind(mac)
                .fetch_optional(&mut *self.0)
                .await?)
        }

        async fn insert_certificate(
            &mut self,
            row: &$crate::store::backend::NewCertificate<'_>,
        ) -> Result<(), $crate::store::StoreError> {
            sqlx::query(
                "INSERT INTO certificates (unit_id, attempt_id, mac, registration_id, serial, thumbprint, \
                 not_before, not_after, key_type, ca_thumbprint, station_id, issued_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            )
            .bind(row.unit_id)
            .bind(row.attempt_id)
            .bind(row.mac)
            .bind(row.registration_id)
            .bind(&row.certificate.serial)
            .bind(&row.certificate.thumbprint)
            .bind(&row.certificate.not_before)
            .bind(&row.certificate.not_after)
            .bind(&row.certificate.key_type)
            .bind(&row.certificate.ca_thumbprint)
            .bind(row.station_id)
            .bind(row.issued_at)
            .execute(&mut *self.0)
            .await?;
            Ok(())
        }

        async fn certificates_of(
            &mut self,
            mac: $crate::identity::Mac,
        ) -> Result<Vec<$crate::record::CertificateRow>, $crate::store::StoreError> {
            Ok(sqlx::query_as("SELECT * FROM certificates WHERE mac = $1 ORDER BY id")
                .bind(mac)
                .fetch_all(&mut *self.0)
                .await?)
        }

        async fn set_dps(&mut self, unit_id: i64, dps: &$crate::record::UnitDps, at: &str) -> Result<$crate::record::Unit, $crate::store::StoreError> {
            Ok(sqlx::query_as(
                "UPDATE units SET dps_status = $1, assigned_hub = $2, device_id = $3, dps_substatus = $4, \
                 dps_error = $5, updated_at = $6 WHERE id = $7 RETURNING *",
            )
            .bind(dps.status)
            .bind(&dps.assigned_hub)
            .bind(&dps.device_id)
            .bind(&dps.substatus)
            .bind(&dps.error)
            .bind(at)
            .bind(unit_id)
            .fetch_one(&mut *self.0)
            .await?)
        }

        async fn attempts_of(&mut self, batch_id: i64) -> Result<Vec<$crate::record::Attempt>, $crate::store::StoreError> {
            Ok(
                sqlx::query_as("SELECT * FROM attempts WHERE batch_id = $1 ORDER BY id")
                    .bind(batch_id)
                    .fetch_all(&mut *self.0)
                    .await?,
            )
        }

        async fn attempts_of_mac(&mut self, mac: $crate::identity::Mac) -> Result<Vec<$crate::record::Attempt>, $crate::store::StoreError> {
            Ok(
                sqlx::query_as("SELECT * FROM attempts WHERE mac = $1 ORDER BY id")
                    .bind(mac)
                    .fetch_all(&mut *self.0)
                    .await?,
            )
        }

        async fn open_attempts(&mut self, station_id: &str) -> Result<Vec<$crate::record::Attempt>, $crate::store::StoreError> {
            Ok(sqlx::query_as(
                "SELECT * FROM attempts WHERE station_id = $1 AND outcome = 'in-progress' ORDER BY id",
            )
            .bind(station_id)
            .fetch_all(&mut *self.0)
            .await?)
        }

        async fn attempt_is_open(&mut self, id: i64) -> Result<bool, $crate::store::StoreError> {
            let open: Option<i64> =
                sqlx::query_scalar("SELECT id FROM attempts WHERE id = $1 AND outcome = 'in-progress'")
                    .bind(id)
                    .fetch_optional(&mut *self.0)
                    .await?;
            Ok(open.is_some())
        }

        async fn insert_attempt(
            &mut self,
            start: &$crate::store::AttemptStart,
            process: &$crate::process::ProcessStamp,
        ) -> Result<i64, $crate::store::StoreError> {
            Ok(sqlx::query_scalar(
                "INSERT INTO attempts (batch_id, station_id, operator, port, started_at, outcome, stage, timings, pid, \
                 pid_boot_id, pid_started) VALUES ($1, $2, $3, $4, $5, $6, $7, '{}', $8, $9, $10) RETURNING id",
            )
            .bind(start.batch_id)
            .bind(&start.station_id)
            .bind(&start.operator)
            .bind(&start.port)
            .bind(&start.started_at)
            .bind($crate::record::AttemptOutcome::InProgress)
            .bind($crate::record::Stage::Connect)
            .bind(process.pid)
            .bind(&process.boot_id)
            .bind(process.started)
            .fetch_one(&mut *self.0)
            .await?)
        }

        async fn note_stage(
            &mut self,
            id: i64,
            stage: $crate::record::Stage,
            mac: Option<$crate::identity::Mac>,
            now: &str,
            claim_until: &str,
        ) -> Result<(), $crate::store::StoreError> {
            // A claim that lapsed is given up, not renewed: its slot may be another's by now.
            sqlx::query(
                "UPDATE attempts SET stage = $1, mac = COALESCE($2, mac), \
                 claim_until = CASE WHEN claim_until > $3 THEN $4 END \
                 WHERE id = $5 AND outcome = 'in-progress'",
            )
            .bind(stage)
            .bind(mac)
            .bind(now)
            .bind(claim_until)
            .bind(id)
            .execute(&mut *self.0)
            .await?;
            Ok(())
        }

        async fn holds_claim(
            &mut self,
            id: i64,
            now: &str,
        ) -> Result<bool, $crate::store::StoreError> {
            let held: Option<i64> = sqlx::query_scalar(
                "SELECT id FROM attempts WHERE id = $1 AND outcome = 'in-progress' AND claim_until > $2",
            )
            .bind(id)
            .bind(now)
            .fetch_optional(&mut *self.0)
            .await?;
            Ok(held.is_some())
        }

        async fn claim(&mut self, id: i64, until: &str) -> Result<(), $crate::store::StoreError> {
            sqlx::query(
                "UPDATE attempts SET claim_until = $1 WHERE id = $2 AND outcome = 'in-progress'",
            )
            .bind(until)
            .bind(id)
            .execute(&mut *self.0)
            .await?;
            Ok(())
        }

        async fn delete_open_attempt(&mut self, id: i64) -> Result<(), $crate::store::StoreError> {
            sqlx::query("DELETE FROM attempts WHERE id = $1 AND outcome = 'in-progress'")
                .bind(id)
                .execute(&mut *self.0)
                .await?;
            Ok(())
        }

        async fn finish_attempt(&mut self, id: i64, end: &$crate::store::backend::AttemptEnd<'_>) -> Result<(), $crate::store::StoreError> {
            sqlx::query(
                "UPDATE attempts SET unit_id = $1, mac = $2, finished_at = $3, outcome = $4, stage = $5, \
                 error_code = $6, message = $7, reprovision = $8, timings = $9, audit_seq = $10, \
                 pid = NULL, pid_boot_id = NULL, pid_started = NULL, claim_until = NULL, \
                 boot_log = $11 WHERE id = $12",
            )
            .bind(end.unit_id)
            .bind(end.mac)
            .bind(end.finished_at)
            .bind(end.outcome)
            .bind(end.stage)
            .bind(end.error_code)
            .bind(end.message)
            .bind(end.reprovision)
            .bind(end.timings)
            .bind(end.audit_seq)
            .bind(end.boot_log)
            .bind(id)
            .execute(&mut *self.0)
            .await?;
            Ok(())
        }

        async fn interrupt_attempt(
            &mut self,
            id: i64,
            at: &str,
            message: &str,
            unit_id: Option<i64>,
            audit_seq: i64,
        ) -> Result<$crate::record::Attempt, $crate::store::StoreError> {
            Ok(sqlx::query_as(
                "UPDATE attempts SET outcome = $1, finished_at = $2, error_code = $3, message = $4, \
                 unit_id = $5, audit_seq = $6, pid = NULL, pid_boot_id = NULL, pid_started = NULL, \
                 claim_until = NULL WHERE id = $7 RETURNING *",
            )
            .bind($crate::record::AttemptOutcome::Interrupted)
            .bind(at)
            .bind($crate::record::ErrorCode::interrupted())
            .bind(message)
            .bind(unit_id)
            .bind(audit_seq)
            .bind(id)
            .fetch_one(&mut *self.0)
            .await?)
        }

        async fn applied_migrations(
        &mut self,
    ) -> Result<Vec<$crate::store::migration::Applied>, $crate::store::StoreError> {
        Ok(sqlx::query_as("SELECT version, success, checksum FROM _sqlx_migrations")
            .fetch_all(&mut *self.0)
            .await?)
    }

    async fn insert_audit(&mut self, entry: &$crate::record::AuditEntry) -> Result<(), $crate::store::StoreError> {
        sqlx::query(
            "INSERT INTO audit_log (seq, at, station_id, operator, action, subject, details, prev_hash, hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(entry.seq)
        .bind(&entry.at)
        .bind(&entry.station_id)
        .bind(&entry.operator)
        .bind(&entry.action)
        .bind(&entry.subject)
        .bind(&entry.details)
        .bind(&entry.prev_hash)
        .bind(&entry.hash)
        .execute(&mut *self.0)
        .await?;
        Ok(())
    }

    async fn last_details(
            &mut self,
            action: &str,
            station_id: &str,
        ) -> Result<Option<String>, $crate::store::StoreError> {
            Ok(sqlx::query_scalar(
                "SELECT details FROM audit_log WHERE action = $1 AND station_id = $2 ORDER BY seq DESC LIMIT 1",
            )
            .bind(action)
            .bind(station_id)
            .fetch_optional(&mut *self.0)
            .await?)
        }

        // The dashboard's reads (`super::dashboard`).

        async fn port_activity(&mut self, recent: u32) -> Result<Vec<$crate::record::PortActivity>, $crate::store::StoreError> {
            // The open attempts come from their partial index, the recent ones from the
            // primary key: neither reads the whole table.
            Ok(sqlx::query_as(
                "SELECT a.id, a.station_id, a.batch_id, a.port, a.mac, u.registration_id, a.started_at, \
                 a.finished_at, a.outcome, a.stage, a.error_code, a.message \
                 FROM attempts a LEFT JOIN units u ON u.id = a.unit_id \
                 WHERE a.id IN (SELECT id FROM attempts WHERE outcome = 'in-progress' \
                                UNION SELECT id FROM (SELECT id FROM attempts ORDER BY id DESC LIMIT $1) recent) \
                 ORDER BY a.id DESC",
            )
            .bind(i64::from(recent))
            .fetch_all(&mut *self.0)
            .await?)
        }

        async fn open_batches(&mut self) -> Result<Vec<$crate::record::Batch>, $crate::store::StoreError> {
            Ok(sqlx::query_as("SELECT * FROM batches WHERE closed_at IS NULL ORDER BY id")
                .fetch_all(&mut *self.0)
                .await?)
        }

        async fn batch_minutes(&mut self, batch_id: i64) -> Result<Vec<$crate::record::MinuteCount>, $crate::store::StoreError> {
            // Stored times are RFC 3339 text: the first 16 characters are the minute.
            Ok(sqlx::query_as(
                "SELECT substr(finished_at, 1, 16) AS minute, \
                 COUNT(*) FILTER (WHERE outcome = 'provisioned') AS provisioned, \
                 COUNT(*) FILTER (WHERE outcome IN ('failed', 'interrupted')) AS failed \
                 FROM attempts WHERE batch_id = $1 AND finished_at IS NOT NULL \
                 GROUP BY substr(finished_at, 1, 16) ORDER BY minute",
            )
            .bind(batch_id)
            .fetch_all(&mut *self.0)
            .await?)
        }

        async fn manifest(&mut self, query: &$crate::store::ManifestQuery) -> Result<Vec<$crate::record::ManifestRow>, $crate::store::StoreError> {
            Ok(sqlx::query_as($crate::store::sql::MANIFEST_SQL)
                .bind(query.batch_id)
                .bind(&query.since)
                .bind(&query.until)
                .fetch_all(&mut *self.0)
                .await?)
        }

    };
}
pub(super) use common_queries;

/// Inserts or updates a unit. A re-flash keeps the unit's DPS outcome only if the identity it
/// was registered with (registration ID and group key, or for X.509 the signing CA) is
/// unchanged. The certificate columns describe what the last write put on the device, as
/// `image_sha256` does.
pub(super) const UPSERT_UNIT: &str = "\
INSERT INTO units (mac, registration_id, batch_id, station_id, chip, revision, flash_size, key_id, \
                   secondary_key_id, image_sha256, state, failed_stage, provisioned_at, updated_at, \
                   attestation, cert_serial, cert_thumbprint, cert_not_after, enrollment, \
                   hub_status, hub_error) \
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, \
        $20, $21) \
ON CONFLICT (mac) DO UPDATE SET \
  dps_status = CASE WHEN units.registration_id = excluded.registration_id AND units.key_id = excluded.key_id THEN units.dps_status ELSE 'not-requested' END, \
  assigned_hub = CASE WHEN units.registration_id = excluded.registration_id AND units.key_id = excluded.key_id THEN units.assigned_hub END, \
  device_id = CASE WHEN units.registration_id = excluded.registration_id AND units.key_id = excluded.key_id THEN units.device_id END, \
  dps_error = CASE WHEN units.registration_id = excluded.registration_id AND units.key_id = excluded.key_id THEN units.dps_error END, \
  dps_substatus = CASE WHEN units.registration_id = excluded.registration_id AND units.key_id = excluded.key_id THEN units.dps_substatus END, \
  registration_id = excluded.registration_id, batch_id = excluded.batch_id, \
  station_id = excluded.station_id, chip = excluded.chip, revision = excluded.revision, \
  flash_size = excluded.flash_size, key_id = excluded.key_id, \
  secondary_key_id = excluded.secondary_key_id, image_sha256 = excluded.image_sha256, \
  state = excluded.state, failed_stage = excluded.failed_stage, \
  provisioned_at = COALESCE(excluded.provisioned_at, units.provisioned_at), \
  updated_at = excluded.updated_at, attestation = excluded.attestation, \
  cert_serial = excluded.cert_serial, cert_thumbprint = excluded.cert_thumbprint, \
  cert_not_after = excluded.cert_not_after, enrollment = excluded.enrollment, \
  hub_status = excluded.hub_status, hub_error = excluded.hub_error \
RETURNING *";

/// The manifest: operator and port come from the unit's last successful attempt; attempts are
/// counted per MAC without looking at outcomes, so attempts still running or interrupted count
/// too.
pub(super) const MANIFEST_SQL: &str = "\
SELECT b.name AS batch, u.mac, u.registration_id, u.chip, u.revision AS chip_revision, \
       u.flash_size, u.image_sha256 AS nvs_sha256, u.key_id AS group_key_id, u.provisioned_at, \
       a.operator, u.station_id, a.port, \
       (SELECT COUNT(*) FROM attempts c WHERE c.mac = u.mac) AS attempts, \
       u.dps_status, u.assigned_hub, u.device_id, \
       u.attestation, u.cert_serial, u.cert_thumbprint, u.cert_not_after, \
       u.enrollment, u.hub_status AS hub_test, u.revoked_at \
FROM units u \
JOIN batches b ON b.id = u.batch_id \
LEFT JOIN attempts a ON a.id = (SELECT MAX(s.id) FROM attempts s \
                                WHERE s.unit_id = u.id AND s.outcome = 'provisioned') \
WHERE u.state = 'provisioned' \
  AND ($1 IS NULL OR u.batch_id = $1) \
  AND ($2 IS NULL OR u.provisioned_at >= $2) \
  AND ($3 IS NULL OR u.provisioned_at < $3) \
ORDER BY u.provisioned_at, u.mac";
