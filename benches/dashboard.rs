//! The supervisor dashboard (issue 16): how fast the line page and the unit search answer with
//! 100,000 units in the database, and whether browsers subscribed to live events slow the line.
//!
//! Part 1 (in process): a SQLite file is filled with 100,000 provisioned units of one open
//! batch (one attempt and one audit entry each, 2% failed attempts besides), the dashboard serves
//! it on loopback (`station serve`'s code path), and a client times `GET /` (the line page,
//! from the database), `GET /unit?q=MAC` and `GET /unit?q=REGISTRATION-ID` for random units,
//! each request on a new connection. Part 2 (processes): `station run --json --http` provisions
//! a batch on the 4-port simulated line (921600 baud, stub, the ROM-faithful simulator with
//! wire time, 1 ms USB latency and flash erase/program time; a simulated operator swaps units
//! 0.2 s after the station leaves them idle) with 0 and with 20 clients reading `/events`,
//! alternating, and prints units per minute of each run.
//!
//! Run: `cargo bench --bench dashboard` (`-- --units N` for the database size, `-- --line N`
//! for the line's batch, `-- --rounds R`; `--rounds 0` times the pages only; `--postgres` times
//! them on a PostgreSQL database too, filled with the same rows by the server, on a throwaway
//! local cluster; `--batch-size N` spreads the units over closed batches of N and one open,
//! instead of one open batch of them all).

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use station::config::Database;
use station::store::Store;
use station::web::{self, Dashboard};

mod common;
#[path = "common/pg.rs"]
mod pg;

fn get(addr: SocketAddr, path: &str) -> (u16, usize) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("response");
    let status = String::from_utf8_lossy(&raw[9..12]).parse().unwrap_or(0);
    (status, raw.len())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn time(addr: SocketAddr, name: &str, paths: &[String]) {
    let mut ms: Vec<f64> = paths
        .iter()
        .map(|path| {
            let start = Instant::now();
            let (status, _) = get(addr, path);
            assert_eq!(status, 200, "{path}");
            start.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    println!(
        "{name:<28} {:>6} {:>9.2} {:>9.2} {:>9.2}",
        ms.len(),
        percentile(&ms, 0.5),
        percentile(&ms, 0.95),
        ms[ms.len() - 1]
    );
}

/// The MAC of unit `i` (24:0a:c4 and three bytes of `i`).
fn mac(i: u32) -> String {
    let b = i.to_be_bytes();
    format!("24:0a:c4:{:02x}:{:02x}:{:02x}", b[1], b[2], b[3])
}

/// The batches the units go to: `units / size` (rounded up) of `size` units each, all but the
/// last closed, as a factory's database holds its work orders. Returns the open batch's ID;
/// unit `i` belongs to batch `1 + i / size`.
async fn batches(store: &Store, units: u32, size: u32) -> i64 {
    let count = units.div_ceil(size.max(1));
    for k in 1..count {
        store
            .open_batch(&format!("WO-{k:05}"), i64::from(size), "bench", "bench-st1")
            .await
            .expect("batch");
        store
            .close_batch(None, "bench", "bench-st1")
            .await
            .expect("close");
    }
    let last = units - size * (count - 1);
    let open = store
        .open_batch("WO-BENCH", i64::from(last), "bench", "bench-st1")
        .await
        .expect("batch");
    assert_eq!(
        open.id,
        i64::from(count),
        "batch IDs from 1 in a fresh database"
    );
    open.id
}

async fn fill(store: &Store, units: u32, size: u32) {
    batches(store, units, size).await;
    let pool = store.sqlite_pool().expect("a SQLite store");
    let mut tx = pool.begin().await.expect("transaction");
    // After the batch's own entry: the chain goes on from its head.
    let (mut seq, mut prev): (i64, String) =
        sqlx::query_as("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *tx)
            .await
            .expect("the chain's head")
            .unwrap_or((0, "0".repeat(64)));
    for i in 0..units {
        let mac = mac(i);
        let id = format!("sensor-{}", mac.replace(':', ""));
        // Stored times spread over the last hours, 2 s apart per port of 4.
        let at = station::clock::format_time(
            time::OffsetDateTime::now_utc() - time::Duration::seconds(i64::from(units - i) / 2),
        );
        let batch_id = 1 + i64::from(i / size.max(1));
        let fails = i % 50 == 0;
        for failed in [true, false] {
            if failed && !fails {
                continue;
            }
            seq += 1;
            let hash = format!("{seq:064x}");
            sqlx::query(
                "INSERT INTO audit_log (seq, at, station_id, operator, action, subject, details, prev_hash, hash) \
                 VALUES (?, ?, 'bench-st1', 'bench', ?, ?, '{}', ?, ?)",
            )
            .bind(seq)
            .bind(&at)
            .bind(if failed { "unit.failed" } else { "unit.provisioned" })
            .bind(&mac)
            .bind(&prev)
            .bind(&hash)
            .execute(&mut *tx)
            .await
            .expect("audit");
            prev = hash;
            if !failed {
                sqlx::query(
                    "INSERT INTO units (id, mac, registration_id, batch_id, station_id, chip, revision, flash_size, key_id, state, provisioned_at, updated_at) \
                     VALUES (?, ?, ?, ?, 'bench-st1', 'esp32', 'v3.0', 4194304, 'sha256:0011223344556677', 'provisioned', ?, ?)",
                )
                .bind(i64::from(i) + 1)
                .bind(&mac)
                .bind(&id)
                .bind(batch_id)
                .bind(&at)
                .bind(&at)
                .execute(&mut *tx)
                .await
                .expect("unit");
            }
            sqlx::query(
                "INSERT INTO attempts (unit_id, mac, batch_id, station_id, operator, port, started_at, finished_at, outcome, stage, error_code, message, timings, audit_seq) \
                 VALUES (?, ?, ?, 'bench-st1', 'bench', ?, ?, ?, ?, ?, ?, ?, '{\"connect\":0.1,\"flash\":0.2}', ?)",
            )
            .bind((!failed).then_some(i64::from(i) + 1))
            .bind(&mac)
            .bind(batch_id)
            .bind(format!("/dev/ttyUSB{}", i % 4))
            .bind(&at)
            .bind(&at)
            .bind(if failed { "failed" } else { "provisioned" })
            .bind(failed.then_some("flash"))
            .bind(failed.then_some("station::device::unplugged"))
            .bind(failed.then_some("the device went away"))
            .bind(seq)
            .execute(&mut *tx)
            .await
            .expect("attempt");
        }
    }
    tx.commit().await.expect("commit");
}

/// The same rows as [`fill`] on PostgreSQL, made by the server (`generate_series`): unit `g`
/// has MAC `24:0a:c4` and three bytes of `g`, every 50th a failed attempt before its pass; each
/// attempt has an audit entry in the station's chain. Then `VACUUM ANALYZE`, as autovacuum
/// does to a live database (without it the visibility map is empty and no scan is index-only).
async fn fill_postgres(store: &Store, units: u32, size: u32) {
    let open = batches(store, units, size).await;
    let pool = store.postgres_pool().expect("a PostgreSQL store");
    let mac = "'24:0a:c4:' || lpad(to_hex((g >> 16) & 255), 2, '0') || ':' \
               || lpad(to_hex((g >> 8) & 255), 2, '0') || ':' || lpad(to_hex(g & 255), 2, '0')";
    // Stored times spread over the last hours, 2 s apart per port of 4, as RFC 3339 text.
    let at = "to_char((now() AT TIME ZONE 'utc') - make_interval(secs => ($2 - g) / 2), \
              'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')";
    let all = vec![open, i64::from(units), i64::from(size)];
    let statements = [
        (format!(
            "INSERT INTO units (mac, registration_id, batch_id, station_id, chip, revision, flash_size, \
             key_id, state, provisioned_at, updated_at) \
             SELECT {mac}, 'sensor-' || replace({mac}, ':', ''), LEAST(1 + g / $3, $1), 'bench-st1', \
             'esp32', 'v3.0', \
             4194304, 'sha256:0011223344556677', 'provisioned', {at}, {at} \
             FROM generate_series(0, $2 - 1) g"
        ), all.clone()),
        // The failed attempts (every 50th unit), then one pass per unit.
        (format!(
            "INSERT INTO attempts (unit_id, mac, batch_id, station_id, operator, port, started_at, \
             finished_at, outcome, stage, error_code, message, timings) \
             SELECT NULL, {mac}, LEAST(1 + g / $3, $1), 'bench-st1', 'bench', '/dev/ttyUSB' || (g % 4), \
             {at}, {at}, \
             'failed', 'flash', 'station::device::unplugged', 'the device went away', \
             '{{\"connect\":0.1,\"flash\":0.2}}' \
             FROM generate_series(0, $2 - 1) g WHERE g % 50 = 0"
        ), all),
        ("INSERT INTO attempts (unit_id, mac, batch_id, station_id, operator, port, started_at, \
         finished_at, outcome, timings) \
         SELECT id, mac, batch_id, station_id, 'bench', '/dev/ttyUSB0', provisioned_at, \
         provisioned_at, 'provisioned', '{\"connect\":0.1,\"flash\":0.2}' \
         FROM units ORDER BY id"
            .to_owned(), Vec::new()),
        // Each attempt's entry, the chain going on from the batch's own.
        ("WITH head AS (SELECT MAX(seq) AS seq FROM audit_log WHERE station_id = 'bench-st1'), \
         numbered AS (SELECT a.id, a.mac, a.outcome, a.finished_at, \
                      head.seq + ROW_NUMBER() OVER (ORDER BY a.id) AS seq \
                      FROM attempts a, head) \
         INSERT INTO audit_log (station_id, seq, at, operator, action, subject, details, prev_hash, hash) \
         SELECT 'bench-st1', seq, finished_at, 'bench', 'unit.' || outcome, mac, '{}', \
         lpad(to_hex(seq - 1), 64, '0'), lpad(to_hex(seq), 64, '0') FROM numbered"
            .to_owned(), Vec::new()),
        ("UPDATE attempts SET audit_seq = l.seq FROM audit_log l \
         WHERE l.station_id = 'bench-st1' \
         AND l.subject = attempts.mac AND l.action = 'unit.' || attempts.outcome"
            .to_owned(), Vec::new()),
    ];
    let mut tx = pool.begin().await.expect("transaction");
    for (statement, params) in &statements {
        // Made of this function's constants alone.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(statement.as_str()));
        for param in params {
            query = query.bind(*param);
        }
        query
            .execute(&mut *tx)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
    tx.commit().await.expect("commit");
    sqlx::query("VACUUM ANALYZE")
        .execute(pool)
        .await
        .expect("vacuum");
}

/// Where the pages' database lives.
enum Backend {
    Sqlite,
    Postgres(pg::Cluster),
}

fn pages(units: u32, size: u32, samples: usize, backend: &Backend) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let addr = runtime.block_on(async {
        let start = Instant::now();
        let (store, name) = match backend {
            Backend::Sqlite => {
                let store = Store::open(&dir.path().join("station.db"))
                    .await
                    .expect("store");
                fill(&store, units, size).await;
                (store, "SQLite")
            }
            Backend::Postgres(cluster) => {
                let store = Store::connect(&Database::Postgres {
                    url: cluster.database("bench_dashboard"),
                    password_file: Some(cluster.password_file.clone()),
                })
                .await
                .expect("store");
                fill_postgres(&store, units, size).await;
                (store, "PostgreSQL")
            }
        };
        let layout = if size >= units {
            "in one open batch".to_owned()
        } else {
            format!(
                "in batches of {size}, the last open ({} units)",
                units - size * (units.div_ceil(size) - 1)
            )
        };
        println!(
            "dashboard pages: {units} units {layout} ({:.1} s to fill), {name}, served on loopback, one connection per request",
            start.elapsed().as_secs_f64()
        );
        let listener = web::bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let dashboard = Dashboard::new(store, "bench-st1", "bench", None);
        tokio::spawn(web::serve(listener, dashboard, std::future::pending()));
        addr
    });
    // Warm up: the first request pays for the pool's first connection.
    get(addr, "/");
    let pick = |k: usize| (k as u32).wrapping_mul(2_654_435_761) % units;
    println!(
        "{:<28} {:>6} {:>9} {:>9} {:>9}",
        "request", "n", "p50 ms", "p95 ms", "max ms"
    );
    time(addr, "GET / (line page)", &vec!["/".to_owned(); samples]);
    let by_mac: Vec<String> = (0..samples)
        .map(|k| format!("/unit?q={}", mac(pick(k))))
        .collect();
    time(addr, "GET /unit?q=MAC", &by_mac);
    let by_id: Vec<String> = (0..samples)
        .map(|k| format!("/unit?q=sensor-{}", mac(pick(k + 7)).replace(':', "")))
        .collect();
    time(addr, "GET /unit?q=registration ID", &by_id);
    time(
        addr,
        "GET /batch (charts)",
        &vec!["/batch".to_owned(); samples / 10],
    );
    drop(runtime);
}

/// One line run of `units` on 4 ports with `subscribers` clients on `/events`: units/min.
fn line(units: usize, subscribers: usize) -> (f64, usize) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let root = dir.path();
    let config = common::workspace(root, &common::config(r#"["ports/ttySIM*"]"#, 921_600, true));
    let station = || Command::new(env!("CARGO_BIN_EXE_station"));
    let opened = station()
        .arg("--config")
        .arg(&config)
        .args(["batch", "open", "bench", "--target", &units.to_string()])
        .output()
        .expect("batch open");
    assert!(opened.status.success(), "{opened:?}");
    let mut daemon = station()
        .arg("--config")
        .arg(&config)
        .args(["--json", "run", "--http", "127.0.0.1:0"])
        .env("STATION_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("station run");
    // The daemon says where the dashboard is on stderr (its JSON events go to stdout).
    let stderr = BufReader::new(daemon.stderr.take().expect("stderr"));
    let addr: SocketAddr = stderr
        .lines()
        .map_while(Result::ok)
        .find_map(|l| {
            l.strip_prefix("dashboard: http://")
                .map(|a| a.trim_end_matches('/').to_owned())
        })
        .expect("the dashboard's URL")
        .parse()
        .expect("an address");
    let readers: Vec<_> = (0..subscribers)
        .map(|_| {
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(addr).expect("connect");
                write!(stream, "GET /events HTTP/1.1\r\nHost: {addr}\r\n\r\n").expect("request");
                let mut swaps = 0;
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if line == "event: swap" {
                        swaps += 1;
                    }
                }
                swaps
            })
        })
        .collect();
    // Every subscriber connected before the first device appears.
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    let mut sim = common::simulated_line(root, units, 4, None);
    let status = daemon.wait().expect("daemon");
    let wall = start.elapsed().as_secs_f64();
    assert!(status.success(), "the line failed: {status:?}");
    let swaps: usize = readers.into_iter().map(|r| r.join().unwrap_or(0)).sum();
    let _ = sim.kill();
    let _ = sim.wait();
    (units as f64 / wall * 60.0, swaps)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse::<usize>().ok())
    };
    let units = value("--units").unwrap_or(100_000);
    // `--postgres`: the pages on a PostgreSQL database too (a throwaway local cluster).
    // `--batch-size N`: the units in batches of N, as a factory's work orders, the last open;
    // by default all in one open batch, the line page's worst case.
    let units = u32::try_from(units).expect("units");
    let size = value("--batch-size")
        .and_then(|v| u32::try_from(v).ok())
        .filter(|v| *v > 0)
        .unwrap_or(units);
    pages(units, size, 200, &Backend::Sqlite);
    if args.iter().any(|a| a == "--postgres") {
        match pg::Cluster::start() {
            Some(cluster) => pages(units, size, 200, &Backend::Postgres(cluster)),
            None => println!("dashboard pages: no PostgreSQL server, its run skipped"),
        }
    }

    let batch = value("--line").unwrap_or(60);
    let rounds = value("--rounds").unwrap_or(2);
    println!(
        "live events: batch of {batch} on the 4-port simulated line (921600 baud, stub, wire time, 1 ms USB latency, flash erase/program time), `station run --http`"
    );
    println!(
        "{:>5} {:>11} {:>11} {:>16}",
        "round", "subscribers", "units/min", "swaps received"
    );
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        for subscribers in [0, 20] {
            let (rate, swaps) = line(batch, subscribers);
            println!("{round:>5} {subscribers:>11} {rate:>11.1} {swaps:>16}");
            if subscribers == 0 {
                without.push(rate);
            } else {
                with.push(rate);
            }
        }
    }
    if rounds == 0 {
        return;
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    println!(
        "mean units/min: {:.1} without, {:.1} with 20 subscribers ({:+.1}%)",
        mean(&without),
        mean(&with),
        (mean(&with) / mean(&without) - 1.0) * 100.0
    );
}
