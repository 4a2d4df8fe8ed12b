use serde_json::json;

use super::*;
use crate::clock::now;
use crate::record::{AttemptOutcome, DpsStatus, ErrorCode, INTERRUPTED, UnitState};

pub(super) async fn temp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("station.db")).await.unwrap();
    (dir, store)
}

pub(super) fn facts(mac: &str) -> UnitFacts {
    UnitFacts {
        mac: mac.parse().unwrap(),
        registration_id: format!("sensor-{}", mac.replace(':', "")).parse().unwrap(),
        chip: "esp32".into(),
        revision: "v3.0".into(),
        flash_size: 4 << 20,
        attestation: crate::record::Attestation::SymmetricKey,
        key_id: "sha256:0011223344556677".parse().unwrap(),
        secondary_key_id: None,
        image_sha256: Some("ab".repeat(32)),
        certificate: None,
        dps: None,
    }
}

fn attempt(batch: &Batch, mac: Option<&str>, failure: Option<Failure>) -> AttemptRecord {
    AttemptRecord {
        attempt_id: None,
        batch: batch.clone(),
        station_id: "st1".into(),
        operator: "ana".into(),
        port: "/dev/ttyUSB0".into(),
        started_at: now(),
        finished_at: now(),
        unit: mac.map(facts),
        failure,
        reprovision: false,
        timings: json!({ "flash": 0.5 }),
        boot_log: None,
    }
}

fn failure(stage: &str, wrote: bool) -> Failure {
    Failure {
        stage: stage.parse().unwrap(),
        code: format!("station::device::{stage}").parse().unwrap(),
        message: "it broke".into(),
        wrote,
    }
}

#[tokio::test]
async fn open_sets_wal_and_foreign_keys_and_migrates() {
    let (_dir, store) = temp_store().await;
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(fk, 1);
    let tables: Vec<String> = sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE '\\_%' ESCAPE '\\' ORDER BY name")
        .fetch_all(store.pool())
        .await
        .unwrap();
    assert_eq!(
        tables,
        ["attempts", "audit_log", "batches", "certificates", "units"]
    );
}

#[tokio::test]
async fn batch_lifecycle_is_audited() {
    let (_dir, store) = temp_store().await;
    let batch = store.open_batch("WO-1", 100, "ana", "st1").await.unwrap();
    assert_eq!(
        (
            batch.name.as_str(),
            batch.target,
            batch.closed_at.as_deref()
        ),
        ("WO-1", 100, None)
    );
    assert_eq!(
        store.open_batch_of("st1").await.unwrap().unwrap().id,
        batch.id
    );

    let err = store
        .open_batch("WO-2", 10, "ana", "st1")
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::BatchStillOpen { ref name, .. } if name == "WO-1"),
        "{err}"
    );
    // Another station may run its own batch at the same time.
    store.open_batch("WO-B", 10, "bo", "st2").await.unwrap();

    let status = store.close_batch(None, "ana", "st1").await.unwrap();
    assert!(status.batch.closed_at.is_some());
    assert_eq!(status.batch.closed_by.as_deref(), Some("ana"));
    let err = store
        .close_batch(Some("WO-1"), "ana", "st1")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::BatchClosed { .. }));
    let err = store.close_batch(None, "ana", "st1").await.unwrap_err();
    assert!(matches!(err, StoreError::NoOpenBatch { .. }));
    let err = store.open_batch("WO-1", 5, "ana", "st1").await.unwrap_err();
    assert!(matches!(err, StoreError::BatchExists { .. }));
    assert!(err.is_usage_error());

    let actions: Vec<(String, String)> = store
        .audit_entries()
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.action, e.subject))
        .collect();
    assert_eq!(
        actions,
        [
            ("batch.open".to_owned(), "WO-1".to_owned()),
            ("batch.open".to_owned(), "WO-B".to_owned()),
            ("batch.close".to_owned(), "WO-1".to_owned())
        ]
    );
    assert_eq!(store.verify_audit().await.unwrap().first_break, None);
}

#[tokio::test]
async fn attempts_set_unit_state_and_counts() {
    let (_dir, store) = temp_store().await;
    let batch = store.open_batch("WO-1", 3, "ana", "st1").await.unwrap();
    // Failed before the MAC was known: an attempt without a unit.
    let r = store
        .record_attempt(&attempt(&batch, None, Some(failure("connect", false))))
        .await
        .unwrap();
    assert!(r.unit.is_none());
    // Failed mid-write: the unit is failed at flash.
    let r = store
        .record_attempt(&attempt(
            &batch,
            Some("24:0a:c4:00:00:01"),
            Some(failure("flash", true)),
        ))
        .await
        .unwrap();
    let unit = r.unit.unwrap();
    assert_eq!(
        (unit.state.as_str(), unit.failed_stage.map(Stage::as_str)),
        ("failed", Some("flash"))
    );
    assert_eq!(unit.provisioned_at, None);
    // Retried and verified: provisioned.
    let r = store
        .record_attempt(&attempt(&batch, Some("24:0a:c4:00:00:01"), None))
        .await
        .unwrap();
    let unit = r.unit.unwrap();
    assert_eq!(
        (unit.state.as_str(), unit.failed_stage.map(Stage::as_str)),
        ("provisioned", None)
    );
    assert!(unit.provisioned_at.is_some());
    // A refusal that wrote nothing leaves a provisioned unit provisioned.
    let r = store
        .record_attempt(&attempt(
            &batch,
            Some("24:0a:c4:00:00:01"),
            Some(failure("identify", false)),
        ))
        .await
        .unwrap();
    assert_eq!(r.unit.unwrap().state, UnitState::Provisioned);
    store
        .record_attempt(&attempt(&batch, Some("24:0a:c4:00:00:02"), None))
        .await
        .unwrap();

    let status = store.batch_status(batch.clone()).await.unwrap();
    assert_eq!(
        (
            status.provisioned,
            status.failed,
            status.attempts,
            status.failed_attempts
        ),
        (2, 0, 5, 3)
    );
    let attempts = store.attempts_of(batch.id).await.unwrap();
    assert_eq!(attempts[1].stage, Some(Stage::Flash));
    assert_eq!(
        attempts[1].error_code.as_ref().map(ErrorCode::as_str),
        Some("station::device::flash")
    );
    let entries = store.audit_entries().await.unwrap();
    assert_eq!(
        attempts.iter().map(|a| a.audit_seq).collect::<Vec<_>>(),
        [Some(2), Some(3), Some(4), Some(5), Some(6)]
    );
    assert_eq!(entries[2].action, "unit.failed");
    assert!(
        entries[2].details.contains("\"stage\":\"flash\""),
        "{}",
        entries[2].details
    );
    assert!(
        entries[2]
            .details
            .contains("\"key_id\":\"sha256:0011223344556677\"")
    );
    assert_eq!(store.verify_audit().await.unwrap().first_break, None);
}

#[tokio::test]
async fn audit_log_refuses_update_and_delete() {
    let (_dir, store) = temp_store().await;
    store.open_batch("WO-1", 1, "ana", "st1").await.unwrap();
    let err = sqlx::query("UPDATE audit_log SET operator = 'mallory'")
        .execute(store.pool())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
    let err = sqlx::query("DELETE FROM audit_log")
        .execute(store.pool())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
    assert_eq!(store.audit_entries().await.unwrap()[0].operator, "ana");
}

#[tokio::test]
async fn verify_names_the_first_entry_edited_behind_the_triggers_back() {
    let (_dir, store) = temp_store().await;
    let batch = store.open_batch("WO-1", 3, "ana", "st1").await.unwrap();
    for i in 1..=3 {
        store
            .record_attempt(&attempt(
                &batch,
                Some(&format!("24:0a:c4:00:00:0{i}")),
                None,
            ))
            .await
            .unwrap();
    }
    sqlx::query("DROP TRIGGER audit_log_refuses_update")
        .execute(store.pool())
        .await
        .unwrap();
    sqlx::query("UPDATE audit_log SET details = replace(details, 'sha256:0011223344556677', 'sha256:ffffffffffffffff') WHERE seq = 3")
        .execute(store.pool())
        .await
        .unwrap();
    let report = store.verify_audit().await.unwrap();
    let broken = report.first_break.unwrap();
    assert_eq!(broken.seq, 3);
    assert!(broken.problem.contains("edited"), "{}", broken.problem);
}

#[tokio::test]
async fn verify_notices_a_log_cut_short() {
    let (_dir, store) = temp_store().await;
    let batch = store.open_batch("WO-1", 3, "ana", "st1").await.unwrap();
    store
        .record_attempt(&attempt(&batch, Some("24:0a:c4:00:00:01"), None))
        .await
        .unwrap();
    store
        .record_attempt(&attempt(&batch, Some("24:0a:c4:00:00:02"), None))
        .await
        .unwrap();
    sqlx::query("DROP TRIGGER audit_log_refuses_delete")
        .execute(store.pool())
        .await
        .unwrap();
    sqlx::query("DELETE FROM audit_log WHERE seq = 3")
        .execute(store.pool())
        .await
        .unwrap();
    let broken = store.verify_audit().await.unwrap().first_break.unwrap();
    assert_eq!(broken.seq, 3);
    assert!(broken.problem.contains("cut short"), "{}", broken.problem);
}

#[tokio::test]
async fn concurrent_writers_on_one_file_keep_one_chain() {
    let (dir, store) = temp_store().await;
    let other = Store::open(&dir.path().join("station.db")).await.unwrap();
    let batch = store.open_batch("WO-1", 40, "ana", "st1").await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..40u32 {
        let store = if i % 2 == 0 {
            store.clone()
        } else {
            other.clone()
        };
        let record = attempt(&batch, Some(&format!("24:0a:c4:00:01:{i:02x}")), None);
        tasks.push(tokio::spawn(async move {
            store.record_attempt(&record).await.unwrap()
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let report = store.verify_audit().await.unwrap();
    assert_eq!(report.first_break, None);
    assert_eq!(report.entries, 41);
    assert_eq!(store.batch_status(batch).await.unwrap().provisioned, 40);
}

#[tokio::test]
async fn reflash_with_another_registration_id_clears_dps_results() {
    let (_dir, store) = temp_store().await;
    let batch = store.open_batch("WO-1", 1, "ana", "st1").await.unwrap();
    store
        .record_attempt(&attempt(&batch, Some("24:0a:c4:00:00:01"), None))
        .await
        .unwrap();
    sqlx::query(
        "UPDATE units SET dps_status = 'assigned', assigned_hub = 'hub1', device_id = 'd1'",
    )
    .execute(store.pool())
    .await
    .unwrap();
    // Same identity: DPS results stay.
    let unit = store
        .record_attempt(&attempt(&batch, Some("24:0a:c4:00:00:01"), None))
        .await
        .unwrap()
        .unit
        .unwrap();
    assert_eq!(
        (unit.dps_status.as_str(), unit.assigned_hub.as_deref()),
        ("assigned", Some("hub1"))
    );
    // New registration ID: they no longer describe this device.
    let mut record = attempt(&batch, Some("24:0a:c4:00:00:01"), None);
    if let Some(unit) = record.unit.as_mut() {
        unit.registration_id = "other-240ac4000001".parse().unwrap();
    }
    let unit = store.record_attempt(&record).await.unwrap().unit.unwrap();
    assert_eq!(
        (unit.dps_status.as_str(), unit.assigned_hub.as_deref()),
        ("not-requested", None)
    );
}

fn start_of(batch: &Batch) -> AttemptStart {
    AttemptStart {
        batch_id: batch.id,
        station_id: "st1".into(),
        operator: "ana".into(),
        port: "/dev/ttyUSB3".into(),
        started_at: now(),
    }
}

#[tokio::test]
async fn an_open_attempt_is_closed_by_its_record() {
    let (_dir, store) = temp_store().await;
    let batch = store.open_batch("WO-1", 5, "ana", "st1").await.unwrap();
    let id = store.begin_attempt(&start_of(&batch)).await.unwrap();
    assert_eq!(
        store.batch_status(batch.clone()).await.unwrap().in_progress,
        1
    );
    let mut record = attempt(&batch, Some("24:0a:c4:00:00:01"), None);
    record.attempt_id = Some(id);
    let recorded = store.record_attempt(&record).await.unwrap();
    assert_eq!(recorded.attempt_id, id, "the open row is the attempt's row");
    let status = store.batch_status(batch.clone()).await.unwrap();
    assert_eq!((status.attempts, status.in_progress), (1, 0));
    assert!(
        store
            .recover_interrupted("st1", "ana")
            .await
            .unwrap()
            .is_empty()
    );
}

// Issue 5: after a crash, nothing unverified shows as provisioned.
#[tokio::test]
async fn attempts_left_open_by_a_dead_process_become_interrupted() {
    let (_dir, store) = temp_store().await;
    let batch = store.open_batch("WO-1", 5, "ana", "st1").await.unwrap();
    store
        .record_attempt(&attempt(&batch, Some("24:0a:c4:00:00:02"), None))
        .await
        .unwrap();
    // A re-flash of that unit dies mid-write; another attempt dies while connecting.
    let flashing = store.begin_attempt(&start_of(&batch)).await.unwrap();
    store
        .attempt_reached(flashing, Stage::Flash, "24:0a:c4:00:00:02".parse().ok())
        .await
        .unwrap();
    let connecting = store.begin_attempt(&start_of(&batch)).await.unwrap();
    // A row of a process that still runs (pid 1, written before stamps were kept) is left
    // alone.
    let alive = store.begin_attempt(&start_of(&batch)).await.unwrap();
    sqlx::query("UPDATE attempts SET pid = 1, pid_boot_id = NULL, pid_started = NULL WHERE id = ?")
        .bind(alive)
        .execute(store.pool())
        .await
        .unwrap();
    // Issue 13: pid 1 runs, but not the process that opened this row (it started at another
    // tick): a reused pid does not keep the attempt open.
    let reused = store.begin_attempt(&start_of(&batch)).await.unwrap();
    sqlx::query("UPDATE attempts SET pid = 1, pid_started = -1 WHERE id = ?")
        .bind(reused)
        .execute(store.pool())
        .await
        .unwrap();

    // This process's own ID stands for a dead process that had it before.
    let closed = store.recover_interrupted("st1", "ops").await.unwrap();
    let ids: Vec<i64> = closed.iter().map(|a| a.id).collect();
    assert_eq!(ids, [flashing, connecting, reused]);
    assert!(
        closed
            .iter()
            .all(|a| a.outcome == AttemptOutcome::Interrupted
                && a.error_code.as_ref().map(ErrorCode::as_str) == Some(INTERRUPTED)
                && a.audit_seq.is_some())
    );
    let unit = store
        .unit_by_mac(&"24:0a:c4:00:00:02".parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        unit.state,
        UnitState::Failed,
        "its flash may be half written"
    );
    assert_eq!(unit.failed_stage, Some(Stage::Flash));
    let status = store.batch_status(batch).await.unwrap();
    assert_eq!(
        (status.provisioned, status.interrupted, status.in_progress),
        (0, 3, 1)
    );
    assert_eq!(status.failures[0].error_code.as_str(), INTERRUPTED);
    assert_eq!(status.failures[0].count, 3);
    let report = store.verify_audit().await.unwrap();
    assert!(report.first_break.is_none(), "{report:?}");
    let actions: Vec<String> = store
        .audit_entries()
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(
        actions.iter().filter(|a| *a == "unit.interrupted").count(),
        3
    );
}

fn dps(status: &str, hub: Option<&str>, error: Option<&str>) -> UnitDps {
    UnitDps {
        status: status.parse::<DpsStatus>().unwrap(),
        assigned_hub: hub.map(Into::into),
        device_id: hub.map(|_| "sensor-240ac4000002".into()),
        substatus: hub.map(|_| "initialAssignment".into()),
        error: error.map(Into::into),
    }
}

#[tokio::test]
async fn an_attempt_records_its_dps_outcome_and_a_later_verification_is_audited() {
    let (_dir, store) = temp_store().await;
    let batch = store.open_batch("WO-1", 2, "ana", "st1").await.unwrap();
    let mut record = attempt(&batch, Some("24:0a:c4:00:00:02"), None);
    record.unit.as_mut().unwrap().dps = Some(dps(
        "pending",
        None,
        Some("station::dps::unreachable: cannot reach DPS"),
    ));
    let recorded = store.record_attempt(&record).await.unwrap();
    let unit = recorded.unit.unwrap();
    assert_eq!(
        (unit.state.as_str(), unit.dps_status.as_str()),
        ("provisioned", "pending")
    );
    let entry = store.audit_entries().await.unwrap().pop().unwrap();
    let details: serde_json::Value = serde_json::from_str(&entry.details).unwrap();
    assert_eq!(details["dps"]["status"], "pending");

    // A failed unit is never retried; only provisioned pending ones are.
    let mut failed = attempt(
        &batch,
        Some("24:0a:c4:00:00:03"),
        Some(failure("dps", true)),
    );
    failed.unit.as_mut().unwrap().dps = Some(dps("pending", None, None));
    store.record_attempt(&failed).await.unwrap();
    let pending = store.pending_dps_units().await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].id, unit.id);

    let assigned = store
        .record_dps(unit.id, &dps("assigned", Some("hub1"), None), "st1", "bob")
        .await
        .unwrap();
    assert_eq!(
        (
            assigned.dps_status.as_str(),
            assigned.assigned_hub.as_deref(),
            assigned.dps_substatus.as_deref(),
            assigned.dps_error.as_deref()
        ),
        ("assigned", Some("hub1"), Some("initialAssignment"), None)
    );
    assert!(store.pending_dps_units().await.unwrap().is_empty());
    let entry = store.audit_entries().await.unwrap().pop().unwrap();
    assert_eq!(
        (
            entry.action.as_str(),
            entry.subject.as_str(),
            entry.operator.as_str()
        ),
        ("unit.dps_verified", "24:0a:c4:00:00:02", "bob")
    );
    assert_eq!(store.verify_audit().await.unwrap().first_break, None);
    assert_eq!(
        store
            .unit_by_registration_id(&unit.registration_id)
            .await
            .unwrap()
            .map(|u| u.id),
        Some(unit.id)
    );
}
