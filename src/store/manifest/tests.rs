//! The manifest's selection and its audited export, against both backends.

use serde_json::json;

use super::*;
use crate::clock::now;
use crate::record::Batch;
use crate::store::tests::{TestDb, facts, on_both_backends, record};
use crate::store::{AttemptRecord, Failure};

fn attempt(
    batch: &Batch,
    mac: &str,
    port: &str,
    operator: &str,
    fail: Option<bool>,
) -> AttemptRecord {
    AttemptRecord {
        attempt_id: None,
        batch: batch.clone(),
        station_id: "st1".into(),
        operator: operator.into(),
        port: port.into(),
        started_at: now(),
        finished_at: now(),
        unit: Some(facts(mac)),
        failure: fail.map(|wrote| Failure {
            stage: crate::record::Stage::Flash,
            code: "station::device::flash".parse().unwrap(),
            message: "unplugged".into(),
            wrote,
        }),
        reprovision: false,
        timings: json!({}),
    }
}

on_both_backends!(
    manifest_lists_provisioned_units_with_their_last_successful_attempt,
    manifest_time_window_includes_since_and_excludes_until,
    export_records_filter_format_count_and_digest_of_the_bytes,
    manifest_lists_every_stations_units_of_a_shared_batch,
);

#[tokio::test]
async fn sqlite_database_file_is_created_owner_only() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("station.db")).await.unwrap();
    store.open_batch("WO-1", 1, "ana", "st1").await.unwrap();
    for file in ["station.db", "station.db-wal", "station.db-shm"] {
        let mode = std::fs::metadata(dir.path().join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
}

async fn manifest_lists_provisioned_units_with_their_last_successful_attempt(db: TestDb) {
    let store = &db.store;
    let wo1 = store.open_batch("WO-1", 5, "ana", "st1").await.unwrap();
    let a = "24:0a:c4:00:00:01";
    let b = "24:0a:c4:00:00:02";
    let c = "24:0a:c4:00:00:03";
    // a: fails once, then passes on port 1 by bo, then a refused attempt (nothing written).
    record(store, attempt(&wo1, a, "/dev/ttyUSB0", "ana", Some(true))).await;
    record(store, attempt(&wo1, a, "/dev/ttyUSB1", "bo", None)).await;
    record(store, attempt(&wo1, a, "/dev/ttyUSB2", "cy", Some(false))).await;
    // b: passes, then a failed re-flash leaves it failed: not in the manifest.
    record(store, attempt(&wo1, b, "/dev/ttyUSB0", "ana", None)).await;
    record(store, attempt(&wo1, b, "/dev/ttyUSB0", "ana", Some(true))).await;
    // c: passes.
    record(store, attempt(&wo1, c, "/dev/ttyUSB3", "ana", None)).await;

    let rows = store
        .manifest(&ManifestFilter::batch("WO-1"))
        .await
        .unwrap();
    let macs: Vec<String> = rows.iter().map(|r| r.mac.to_string()).collect();
    assert_eq!(macs, [a, c]);
    let first = &rows[0];
    assert_eq!(
        (
            first.operator.as_deref(),
            first.port.as_deref(),
            first.attempts
        ),
        (Some("bo"), Some("/dev/ttyUSB1"), 3)
    );
    assert_eq!(first.batch, "WO-1");
    assert_eq!(first.group_key_id.as_str(), "sha256:0011223344556677");
    assert_eq!(first.chip_revision, "v3.0");
    assert_eq!(first.dps_status.as_str(), "not-requested");
    assert_eq!(rows[1].attempts, 1);

    // Re-provisioned into another batch: the unit moves, its attempts keep counting.
    store.close_batch(None, "ana", "st1").await.unwrap();
    let wo2 = store.open_batch("WO-2", 5, "ana", "st1").await.unwrap();
    let mut again = attempt(&wo2, a, "/dev/ttyUSB4", "dee", None);
    again.reprovision = true;
    record(store, again).await;
    let wo1_rows = store
        .manifest(&ManifestFilter::batch("WO-1"))
        .await
        .unwrap();
    assert_eq!(wo1_rows.len(), 1);
    let wo2_rows = store
        .manifest(&ManifestFilter::batch("WO-2"))
        .await
        .unwrap();
    assert_eq!(
        (
            wo2_rows[0].mac.to_string().as_str(),
            wo2_rows[0].operator.as_deref(),
            wo2_rows[0].attempts
        ),
        (a, Some("dee"), 4)
    );
    let all = store.manifest(&ManifestFilter::default()).await.unwrap();
    assert_eq!(all.len(), 2);

    let missing = store
        .manifest(&ManifestFilter::batch("WO-9"))
        .await
        .unwrap_err();
    assert!(
        matches!(missing, StoreError::NoSuchBatch { .. }),
        "{missing}"
    );
}

async fn manifest_time_window_includes_since_and_excludes_until(db: TestDb) {
    let store = &db.store;
    let wo1 = store.open_batch("WO-1", 5, "ana", "st1").await.unwrap();
    for (i, at) in [
        "2026-11-25T08:00:00.000Z",
        "2026-11-25T09:00:00.000Z",
        "2026-11-25T10:00:00.000Z",
    ]
    .iter()
    .enumerate()
    {
        let mut one = attempt(
            &wo1,
            &format!("24:0a:c4:00:00:0{i}"),
            "/dev/ttyUSB0",
            "ana",
            None,
        );
        one.finished_at = (*at).to_owned();
        record(store, one).await;
    }
    let parse = |t: &str| crate::clock::parse_time(t).unwrap();
    let window = ManifestFilter {
        batch: None,
        since: Some(parse("2026-11-25T09:00:00Z")),
        until: Some(parse("2026-11-25T11:00:00+01:00")),
    };
    let rows = store.manifest(&window).await.unwrap();
    let times: Vec<&str> = rows
        .iter()
        .filter_map(|r| r.provisioned_at.as_deref())
        .collect();
    assert_eq!(times, ["2026-11-25T09:00:00.000Z"]);
    let later = ManifestFilter {
        since: Some(parse("2026-11-26")),
        ..ManifestFilter::default()
    };
    assert!(store.manifest(&later).await.unwrap().is_empty());
}

async fn export_records_filter_format_count_and_digest_of_the_bytes(db: TestDb) {
    let store = &db.store;
    let wo1 = store.open_batch("WO-1", 5, "ana", "st1").await.unwrap();
    record(
        store,
        attempt(&wo1, "24:0a:c4:00:00:01", "/dev/ttyUSB0", "ana", None),
    )
    .await;
    let mut out = Vec::new();
    let export = store
        .export_manifest(
            &ManifestFilter::batch("WO-1"),
            ManifestFormat::Json,
            "st1",
            "qa-eve",
            &mut out,
        )
        .await
        .unwrap();
    assert_eq!(export.rows, 1);
    assert_eq!(export.bytes, out.len() as u64);
    use sha2::Digest as _;
    assert_eq!(export.sha256, hex::encode(sha2::Sha256::digest(&out)));
    let entries = store.audit_entries().await.unwrap();
    let last = entries.last().unwrap();
    assert_eq!(last.seq, export.audit_seq);
    assert_eq!(
        (last.action.as_str(), last.operator.as_str()),
        ("manifest.exported", "qa-eve")
    );
    let details: serde_json::Value = serde_json::from_str(&last.details).unwrap();
    assert_eq!(details["batch"], "WO-1");
    assert_eq!(details["format"], "json");
    assert_eq!(details["rows"], 1);
    assert_eq!(details["sha256"], export.sha256.as_str());
    assert_eq!(details["since"], serde_json::Value::Null);
    assert!(store.verify_audit().await.unwrap().first_break.is_none());

    // The batch's audit view includes the export; another batch's does not.
    let of_wo1 = store.audit_entries_of(Some("WO-1"), None).await.unwrap();
    let actions: Vec<&str> = of_wo1.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        ["batch.open", "unit.provisioned", "manifest.exported"]
    );
    let last_two = store.audit_entries_of(None, Some(2)).await.unwrap();
    assert_eq!(last_two.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3]);
    store.close_batch(None, "ana", "st1").await.unwrap();
    store.open_batch("WO-2", 5, "ana", "st1").await.unwrap();
    assert_eq!(
        store
            .audit_entries_of(Some("WO-2"), None)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(matches!(
        store
            .audit_entries_of(Some("WO-9"), None)
            .await
            .unwrap_err(),
        StoreError::NoSuchBatch { .. }
    ));
}

// Issue 15: QA lists every unit of a work order, from every station, with its station.
async fn manifest_lists_every_stations_units_of_a_shared_batch(db: TestDb) {
    let store = &db.store;
    let wo = store
        .open_batch("WO-1234", 5, "ana", "line1-st1")
        .await
        .unwrap();
    for (i, station) in ["line1-st1", "line2-st1", "line3-st1"].iter().enumerate() {
        let mut one = attempt(
            &wo,
            &format!("24:0a:c4:00:05:0{i}"),
            "/dev/ttyUSB0",
            "ana",
            None,
        );
        one.station_id = (*station).to_owned();
        record(store, one).await;
    }
    let mut out = Vec::new();
    store
        .export_manifest(
            &ManifestFilter::batch("WO-1234"),
            ManifestFormat::Csv,
            "qa-st",
            "qa-eve",
            &mut out,
        )
        .await
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    let stations: Vec<&str> = text
        .lines()
        .skip(1)
        .map(|line| line.split(',').nth(10).unwrap())
        .collect();
    assert_eq!(stations, ["line1-st1", "line2-st1", "line3-st1"]);
    assert!(text.starts_with("batch,mac,registration_id,chip,chip_revision,flash_size,nvs_sha256,group_key_id,provisioned_at,operator,station_id,"));
}
