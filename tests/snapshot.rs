//! What the operator reads, pinned (issue 11): `batch status`, `check` and error output, as
//! text and as JSON, with the workspace's path and the times redacted.

use station::store::Store;

use crate::util::{Run, Workspace, attempt_record};

/// Insta settings that replace what differs per run: the workspace directory and stored times.
fn redactions(ws: &Workspace) -> insta::Settings {
    let mut settings = insta::Settings::clone_current();
    let dir = ws.dir.path().display().to_string();
    settings.add_filter(&regex_escape(&dir), "[WORKSPACE]");
    settings.add_filter(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z", "[TIME]");
    // Rates over records made microseconds apart, and the SQLite library's version.
    settings.add_filter(r"\d+\.\d+ units/min", "[RATE] units/min");
    settings.add_filter(
        r#""units_per_minute": \d+(\.\d+)?"#,
        r#""units_per_minute": [RATE]"#,
    );
    settings.add_filter(r"SQLite 3\.\d+\.\d+", "SQLite [VERSION]");
    // The station's signing key is made on first use.
    settings.add_filter(r"ed25519:[A-Za-z0-9+/]{43}=", "ed25519:[PUBLIC KEY]");
    settings.set_prepend_module_to_snapshot(false);
    settings
}

fn regex_escape(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '/' || c == '_' || c == '-' {
                c.to_string()
            } else {
                format!("\\{c}")
            }
        })
        .collect()
}

/// The exit code and both streams, as one text to pin.
fn shown(run: &Run) -> String {
    format!(
        "exit code: {}\n--- stdout\n{}--- stderr\n{}",
        run.code, run.stdout, run.stderr
    )
}

/// A workspace whose line watches a glob that matches nothing, so `check` reports the same
/// ports on every machine.
fn workspace() -> Workspace {
    let example = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("station.toml"),
    )
    .unwrap();
    Workspace::with_config(&example.replace("ports = [\"auto\"]", "ports = [\"ports/ttySIM*\"]"))
}

#[test]
fn batch_status_text_and_json() {
    let ws = workspace();
    ws.station(&[
        "batch",
        "open",
        "WO-1",
        "--target",
        "5",
        "--operator",
        "ana",
    ])
    .expect(0);
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = Store::open(&ws.path("station.db")).await.unwrap();
        let batch = store.batch("WO-1").await.unwrap();
        for (mac, failure) in [
            (
                "24:0a:c4:00:00:01",
                Some(("flash", "station::device::unplugged")),
            ),
            ("24:0a:c4:00:00:01", None),
            ("24:0a:c4:00:00:02", None),
            (
                "24:0a:c4:00:00:03",
                Some(("verify", "station::provision::verify_mismatch")),
            ),
            (
                "24:0a:c4:00:00:04",
                Some(("flash", "station::device::unplugged")),
            ),
        ] {
            store
                .record_attempt(&attempt_record(&batch, mac, "/dev/ttyUSB0", "ana", failure))
                .await
                .unwrap();
        }
        store.close().await;
    });
    redactions(&ws).bind(|| {
        insta::assert_snapshot!(
            "batch_status_text",
            shown(&ws.station_logging("off", &["batch", "status"]).expect(0))
        );
        insta::assert_snapshot!(
            "batch_status_json",
            shown(
                &ws.station_logging("off", &["--json", "batch", "status", "WO-1"])
                    .expect(0)
            )
        );
    });
}

#[test]
fn check_says_what_is_fine_and_what_is_wrong() {
    let ws = workspace();
    redactions(&ws).bind(|| {
        // Before the first batch: no database file yet, and `check` does not make one.
        insta::assert_snapshot!(
            "check_ok",
            shown(&ws.station_logging("off", &["check"]).expect(0))
        );
        assert!(!ws.path("station.db").exists());
        ws.station(&["batch", "open", "WO-1", "--target", "5"])
            .expect(0);
        insta::assert_snapshot!(
            "check_ok_with_database",
            shown(&ws.station_logging("off", &["check"]).expect(0))
        );
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(
            ws.path("secrets/group.key"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        insta::assert_snapshot!(
            "check_exposed_key",
            shown(&ws.station_logging("off", &["check"]).expect(2))
        );
        insta::assert_snapshot!(
            "check_exposed_key_json",
            shown(&ws.station_logging("off", &["--json", "check"]).expect(2))
        );
    });
}

#[test]
fn errors_name_what_where_the_code_and_the_fix() {
    let ws = workspace();
    redactions(&ws).bind(|| {
        insta::assert_snapshot!(
            "error_no_open_batch",
            shown(&ws.station_logging("off", &["batch", "close"]).expect(2))
        );
        insta::assert_snapshot!(
            "error_no_open_batch_json",
            shown(
                &ws.station_logging("off", &["--json", "batch", "close"])
                    .expect(2)
            )
        );
        let text = std::fs::read_to_string(ws.path("station.toml"))
            .unwrap()
            .replace(
                "id_scope = \"0ne00ABCDEF\"",
                "id_scope = \"0ne00ABCDEF\"\nid_scop = \"x\"",
            );
        std::fs::write(ws.path("station.toml"), text).unwrap();
        insta::assert_snapshot!(
            "error_unknown_config_key",
            shown(&ws.station_logging("off", &["batch", "status"]).expect(2))
        );
    });
}
