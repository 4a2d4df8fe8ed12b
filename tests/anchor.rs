//! Issue 13: the audit chain anchored outside its database. Signed checkpoints are written to a
//! file outside the database directory and to the system log; `audit verify` catches a log cut
//! short or rewritten after a checkpoint (which the chain alone cannot), and an auditor checks
//! a copy of the checkpoints with the station's public key alone.

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixDatagram;

use crate::util::{GROUP_KEY, Workspace, assert_absent, secret_forms};

/// A workspace with checkpoints every 3 entries and the system log at a socket the test reads.
fn workspace() -> (Workspace, UnixDatagram) {
    let ws = Workspace::new();
    let socket = UnixDatagram::bind(ws.path("log.sock")).unwrap();
    socket.set_nonblocking(true).unwrap();
    let mut config = std::fs::read_to_string(ws.path("station.toml")).unwrap();
    config.push_str(&format!(
        "\n[audit]\ncheckpoint_every = 3\nsyslog = \"{}\"\n",
        ws.path("log.sock").display()
    ));
    std::fs::write(ws.path("station.toml"), config).unwrap();
    (ws, socket)
}

/// Records a few entries: a batch opened and closed around some key derivations.
fn record(ws: &Workspace) {
    ws.station(&["batch", "open", "WO-1", "--target", "5"])
        .expect(0);
    for i in 1..=4 {
        let id = format!("sensor-240ac400000{i}");
        ws.station(&["key", "derive", "--registration-id", &id])
            .expect(0);
    }
    ws.station(&["batch", "close"]).expect(0);
}

/// Runs SQL on the database behind the triggers' back (as someone with write access would).
fn tamper(ws: &Workspace, statements: &[&str]) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = station::store::Store::open(&ws.path("station.db"))
            .await
            .unwrap();
        for statement in statements {
            sqlx::query(sqlx::AssertSqlSafe(*statement))
                .execute(store.sqlite_pool().unwrap())
                .await
                .unwrap();
        }
        store.close().await;
    });
}

/// Rewrites every entry from `from` on (the operator becomes `mallory`) with fresh hashes: a
/// chain that is internally consistent again.
fn rewrite_tail(ws: &Workspace, from: i64) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = station::store::Store::open(&ws.path("station.db"))
            .await
            .unwrap();
        sqlx::query("DROP TRIGGER audit_log_refuses_update")
            .execute(store.sqlite_pool().unwrap())
            .await
            .unwrap();
        let mut entries = store.audit_entries().await.unwrap();
        for i in 0..entries.len() {
            if entries[i].seq < from {
                continue;
            }
            entries[i].operator = "mallory".into();
            entries[i].prev_hash = entries[i - 1].hash.clone();
            entries[i].hash = station::store::audit::computed_hash(&entries[i]);
            sqlx::query("UPDATE audit_log SET operator = ?, prev_hash = ?, hash = ? WHERE seq = ?")
                .bind(&entries[i].operator)
                .bind(&entries[i].prev_hash)
                .bind(&entries[i].hash)
                .bind(entries[i].seq)
                .execute(store.sqlite_pool().unwrap())
                .await
                .unwrap();
        }
        store.close().await;
    });
}

fn checkpoint_lines(ws: &Workspace) -> Vec<serde_json::Value> {
    std::fs::read_to_string(ws.path("secrets/checkpoints.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn checkpoints_are_signed_written_outside_the_database_and_to_the_system_log() {
    let (ws, socket) = workspace();
    record(&ws);
    let lines = checkpoint_lines(&ws);
    // Entries 1..=6: every 3 entries (3, 6) and the batch close (6).
    let reasons: Vec<&str> = lines
        .iter()
        .map(|c| c["reason"].as_str().unwrap())
        .collect();
    assert!(
        reasons.contains(&"interval") && reasons.contains(&"batch.close"),
        "{reasons:?}"
    );
    assert_eq!(lines.last().unwrap()["seq"], 6);
    assert_eq!(lines.last().unwrap()["station_id"], "line1-st1");
    for file in ["secrets/checkpoints.jsonl", "secrets/station-signing.key"] {
        let mode = std::fs::metadata(ws.path(file))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{file}");
    }
    // The same checkpoints reached the system log.
    let mut logged = Vec::new();
    let mut buffer = [0u8; 4096];
    while let Ok(n) = socket.recv(&mut buffer) {
        logged.push(String::from_utf8_lossy(&buffer[..n]).into_owned());
    }
    assert_eq!(logged.len(), lines.len(), "{logged:?}");
    assert!(
        logged
            .iter()
            .all(|l| l.contains("station[") && l.contains("audit checkpoint {"))
    );

    // `check` prints the public key every checkpoint carries.
    let checked = ws.station(&["check"]).expect(0);
    let public_key = lines[0]["public_key"].as_str().unwrap();
    assert!(checked.stdout.contains(public_key), "{}", checked.stdout);

    let verified = ws.station(&["--json", "audit", "verify"]).expect(0).json();
    assert_eq!(verified["checkpoints"]["checked"], lines.len());
    assert_eq!(verified["checkpoints"]["matched"], lines.len());

    // A manifest on stdout carries its checkpoint on stderr; the signing key shows nowhere.
    let exported = ws.station(&["export", "manifest"]).expect(0);
    assert!(
        exported.stderr.contains("checkpoint: {"),
        "{}",
        exported.stderr
    );
    let seed = std::fs::read_to_string(ws.path("secrets/station-signing.key")).unwrap();
    let mut forms = secret_forms(seed.trim());
    forms.extend(secret_forms(GROUP_KEY));
    let everything = format!(
        "{}{}{}{}",
        exported.stdout,
        exported.stderr,
        checked.stdout,
        std::fs::read_to_string(ws.path("secrets/checkpoints.jsonl")).unwrap()
    );
    assert_absent(everything.as_bytes(), &forms, "outputs and checkpoints");
}

#[test]
fn a_log_cut_short_after_a_checkpoint_is_caught() {
    let (ws, _socket) = workspace();
    record(&ws);
    // Removing the tail leaves a chain that is consistent in itself.
    tamper(
        &ws,
        &[
            "DROP TRIGGER audit_log_refuses_delete",
            "DELETE FROM audit_log WHERE seq > 4",
        ],
    );
    let verified = ws.station(&["audit", "verify"]).expect(1);
    assert!(
        verified.stdout.contains("audit chain intact: 4 entries"),
        "{}",
        verified.stdout
    );
    assert!(
        verified.stdout.contains("the log was cut short")
            && verified
                .stdout
                .contains("vouches for entry 6, but the log ends at entry 4"),
        "{}",
        verified.stdout
    );
}

#[test]
fn a_tail_rewritten_after_a_checkpoint_is_caught() {
    let (ws, _socket) = workspace();
    record(&ws);
    rewrite_tail(&ws, 2);
    let verified = ws.station(&["--json", "audit", "verify"]).expect(1).json();
    assert_eq!(
        verified["first_break"],
        serde_json::Value::Null,
        "the chain alone is fooled"
    );
    let problems = verified["checkpoints"]["problems"].as_array().unwrap();
    assert!(!problems.is_empty());
    let first = problems[0]["problem"].as_str().unwrap();
    assert!(
        first.contains("was rewritten after the checkpoint"),
        "{first}"
    );
}

#[test]
fn the_auditor_checks_a_copy_with_the_public_key_alone() {
    let (ws, _socket) = workspace();
    record(&ws);
    let public_key = checkpoint_lines(&ws)[0]["public_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let copy = ws.path("auditor-copy.jsonl");
    std::fs::copy(ws.path("secrets/checkpoints.jsonl"), &copy).unwrap();
    let copy = copy.to_str().unwrap();
    // The station's own key file is not needed: it is moved away.
    std::fs::rename(ws.path("secrets/station-signing.key"), ws.path("moved.key")).unwrap();
    ws.station(&[
        "audit",
        "verify",
        "--checkpoints",
        copy,
        "--public-key",
        &public_key,
    ])
    .expect(0);
    // The key can also be given as a file.
    std::fs::write(ws.path("station.pub"), format!("{public_key}\n")).unwrap();
    let key_file = ws.path("station.pub");
    ws.station(&[
        "audit",
        "verify",
        "--checkpoints",
        copy,
        "--public-key",
        key_file.to_str().unwrap(),
    ])
    .expect(0);

    // Another key does not vouch for these checkpoints.
    let other = {
        let dir = tempfile::tempdir().unwrap();
        station::checkpoint::StationKey::load_or_create(&dir.path().join("k"))
            .unwrap()
            .0
            .public()
            .to_string()
    };
    let refused = ws
        .station(&[
            "audit",
            "verify",
            "--checkpoints",
            copy,
            "--public-key",
            &other,
        ])
        .expect(1);
    assert!(
        refused.stdout.contains("is not the station's"),
        "{}",
        refused.stdout
    );

    // A checkpoint edited to fit a rewritten log no longer verifies.
    let text = std::fs::read_to_string(copy).unwrap();
    let mut lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    lines[0]["seq"] = serde_json::json!(1);
    let edited: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    std::fs::write(copy, edited.join("\n") + "\n").unwrap();
    let refused = ws
        .station(&[
            "audit",
            "verify",
            "--checkpoints",
            copy,
            "--public-key",
            &public_key,
        ])
        .expect(1);
    assert!(
        refused.stdout.contains("forged or altered"),
        "{}",
        refused.stdout
    );
}

#[test]
fn head_takes_a_prefix_of_16_digits_in_any_case() {
    let ws = Workspace::new();
    ws.station(&["batch", "open", "WO-1", "--target", "1"])
        .expect(0);
    let head = ws.station(&["--json", "audit", "verify"]).expect(0).json()["head_hash"]
        .as_str()
        .unwrap()
        .to_owned();
    for given in [head.clone(), head.to_uppercase(), head[..16].to_owned()] {
        ws.station(&["audit", "verify", "--head", &given]).expect(0);
    }
    // A well-formed head that is not in the log: the log was rewritten (exit 1, not 2).
    let other = if head.starts_with('0') { "1" } else { "0" }.repeat(16);
    let missing = ws.station(&["audit", "verify", "--head", &other]).expect(1);
    assert!(
        missing.stdout.contains("is NOT in it"),
        "{}",
        missing.stdout
    );
}
