//! Seconds for the QA exports at factory scale: a manifest of 100,000 provisioned units (CSV and
//! JSON, through `Store::export_manifest`, audit entry included) and `audit verify` over a chain
//! of 1,000,000 entries, on a real SQLite file.
//!
//! Run: `cargo bench --bench report` (`-- --units N --entries M` to change the sizes).
//!
//! The database is filled with multi-row INSERTs in one transaction. The audit entries are real:
//! each hash comes from the station's canonical hash function and chains to the one before, so
//! verification does its whole work and must find the chain intact.

use std::time::Instant;

use sqlx::{Sqlite, Transaction};
use station::report::ManifestFormat;
use station::store::audit::{GENESIS, entry_hash};
use station::store::{ManifestFilter, Store};

/// Rows per INSERT statement (SQLite allows 32,766 bound parameters).
const PER_STATEMENT: usize = 500;

struct Sizes {
    units: usize,
    entries: usize,
}

fn sizes() -> Sizes {
    let mut sizes = Sizes {
        units: 100_000,
        entries: 1_000_000,
    };
    let args: Vec<String> = std::env::args().collect();
    for pair in args.windows(2) {
        match pair[0].as_str() {
            "--units" => sizes.units = pair[1].parse().expect("--units N"),
            "--entries" => sizes.entries = pair[1].parse().expect("--entries M"),
            _ => {}
        }
    }
    sizes.entries = sizes.entries.max(sizes.units);
    sizes
}

#[allow(clippy::unwrap_used)]
fn main() {
    let sizes = sizes();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(bench(sizes));
}

#[allow(clippy::unwrap_used)]
async fn bench(sizes: Sizes) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("station.db")).await.unwrap();
    let started = Instant::now();
    populate(&store, &sizes).await;
    println!(
        "populated {} audit entries and {} units in {:.1} s",
        sizes.entries,
        sizes.units,
        started.elapsed().as_secs_f64()
    );

    for format in [ManifestFormat::Csv, ManifestFormat::Json] {
        let mut out = Vec::with_capacity(sizes.units * 400);
        let started = Instant::now();
        let export = store
            .export_manifest(
                &ManifestFilter::batch("WO-BENCH"),
                format,
                "bench-st1",
                "bench",
                &mut out,
            )
            .await
            .unwrap();
        let seconds = started.elapsed().as_secs_f64();
        assert_eq!(export.rows, sizes.units);
        println!(
            "export manifest --format {:<4} {:>7} units: {seconds:.2} s ({:.1} MB)",
            format.as_str(),
            export.rows,
            out.len() as f64 / 1e6
        );
    }

    // Three runs: the machine is shared, so the best of three is the figure, all are shown.
    let mut runs = Vec::new();
    let mut report = None;
    for _ in 0..3 {
        let started = Instant::now();
        let verified = store.verify_audit().await.unwrap();
        runs.push(started.elapsed().as_secs_f64());
        assert!(verified.first_break.is_none(), "{:?}", verified.first_break);
        report = Some(verified);
    }
    let entries = report.map_or(0, |r| r.entries);
    let best = runs.iter().copied().fold(f64::INFINITY, f64::min);
    println!(
        "audit verify   {entries:>9} entries: {best:.2} s best of {:.2?} ({:.0} entries/s, {} threads)",
        runs,
        entries as f64 / best,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    store.close().await;
}

#[allow(clippy::unwrap_used)]
async fn populate(store: &Store, sizes: &Sizes) {
    let mut tx: Transaction<'static, Sqlite> = store.sqlite_pool().unwrap().begin().await.unwrap();
    sqlx::query(
        "INSERT INTO batches (id, name, target, operator, station_id, opened_at) \
         VALUES (1, 'WO-BENCH', ?, 'bench', 'bench-st1', '2026-11-25T06:00:00.000Z')",
    )
    .bind(sizes.units as i64)
    .execute(&mut *tx)
    .await
    .unwrap();

    // The audit chain: real hashes, chained, with one unit.provisioned entry per unit first.
    let mut prev_hash = GENESIS.to_owned();
    let mut rows = Vec::with_capacity(PER_STATEMENT);
    for seq in 1..=sizes.entries as i64 {
        let at = time_of(seq);
        let (action, subject, details) = if seq as usize <= sizes.units {
            (
                "unit.provisioned",
                mac_of(seq),
                format!(
                    r#"{{"batch":"WO-BENCH","key_id":"sha256:0011223344556677","port":"/dev/ttyUSB{}","registration_id":"sensor-{}"}}"#,
                    seq % 8,
                    mac_of(seq).replace(':', "")
                ),
            )
        } else {
            (
                "key.derive",
                format!("sensor-{seq:012x}"),
                r#"{"key_id":"sha256:0011223344556677","secondary_key_id":null}"#.to_owned(),
            )
        };
        let hash = entry_hash(
            seq,
            &at,
            "bench-st1",
            "bench",
            action,
            &subject,
            &details,
            &prev_hash,
        );
        rows.push((
            seq,
            at,
            action,
            subject,
            details,
            std::mem::replace(&mut prev_hash, hash.clone()),
            hash,
        ));
        if rows.len() == PER_STATEMENT || seq as usize == sizes.entries {
            insert_audit(&mut tx, &rows).await;
            rows.clear();
        }
    }

    let units: Vec<i64> = (1..=sizes.units as i64).collect();
    for chunk in units.chunks(PER_STATEMENT) {
        let mut sql = String::from(
            "INSERT INTO units (id, mac, registration_id, batch_id, station_id, chip, revision, \
             flash_size, key_id, image_sha256, state, provisioned_at, updated_at) VALUES ",
        );
        sql.push_str(&vec!["(?, ?, ?, 1, 'bench-st1', 'esp32', 'v3.0', 4194304, 'sha256:0011223344556677', ?, 'provisioned', ?, ?)"; chunk.len()].join(", "));
        // Only "?" placeholders are spliced in; every value is bound.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for &id in chunk {
            let mac = mac_of(id);
            let registration_id = format!("sensor-{}", mac.replace(':', ""));
            query = query
                .bind(id)
                .bind(mac)
                .bind(registration_id)
                .bind(format!("{id:064x}"))
                .bind(time_of(id))
                .bind(time_of(id));
        }
        query.execute(&mut *tx).await.unwrap();

        let mut sql = String::from(
            "INSERT INTO attempts (unit_id, mac, batch_id, station_id, operator, port, started_at, \
             finished_at, outcome, reprovision, timings, audit_seq) VALUES ",
        );
        sql.push_str(
            &vec![
                "(?, ?, 1, 'bench-st1', 'bench', ?, ?, ?, 'provisioned', 0, '{}', ?)";
                chunk.len()
            ]
            .join(", "),
        );
        // Only "?" placeholders are spliced in; every value is bound.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for &id in chunk {
            query = query
                .bind(id)
                .bind(mac_of(id))
                .bind(format!("/dev/ttyUSB{}", id % 8))
                .bind(time_of(id))
                .bind(time_of(id))
                .bind(id);
        }
        query.execute(&mut *tx).await.unwrap();
    }
    tx.commit().await.unwrap();
}

#[allow(clippy::unwrap_used)]
async fn insert_audit(tx: &mut Transaction<'static, Sqlite>, rows: &[AuditRow]) {
    let mut sql = String::from(
        "INSERT INTO audit_log (seq, at, station_id, operator, action, subject, details, prev_hash, hash) VALUES ",
    );
    sql.push_str(&vec!["(?, ?, 'bench-st1', 'bench', ?, ?, ?, ?, ?)"; rows.len()].join(", "));
    // Only "?" placeholders are spliced in; every value is bound.
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for (seq, at, action, subject, details, prev_hash, hash) in rows {
        query = query
            .bind(*seq)
            .bind(at.as_str())
            .bind(*action)
            .bind(subject.as_str())
            .bind(details.as_str())
            .bind(prev_hash.as_str())
            .bind(hash.as_str());
    }
    query.execute(&mut **tx).await.unwrap();
}

/// seq, at, action, subject, details, prev_hash, hash.
type AuditRow = (i64, String, &'static str, String, String, String, String);

/// A distinct MAC per number.
fn mac_of(n: i64) -> String {
    let b = (n as u64).to_be_bytes();
    format!("24:0a:c4:{:02x}:{:02x}:{:02x}", b[5], b[6], b[7])
}

/// A distinct time per number, one millisecond apart.
fn time_of(n: i64) -> String {
    let at = time::macros::datetime!(2026-11-25 06:00 UTC) + time::Duration::milliseconds(n);
    station::clock::format_time(at)
}
