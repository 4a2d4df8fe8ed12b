//! A real PostgreSQL server for tests: one throwaway cluster per test binary, started with
//! `tools/pg-cluster` (loopback only, password authentication, stopped and removed when the
//! binary exits), and a fresh database per test. CI starts one cluster for the whole run and
//! passes it in `STATION_TEST_POSTGRES` (its URL) and `STATION_TEST_POSTGRES_PASSWORD_FILE`.
//!
//! Without a server installed the tests that need one print that they were skipped, unless
//! `STATION_REQUIRE_POSTGRES=1` (CI), which makes that a failure.
//!
//! Shared by the library's unit tests (`src/store/tests.rs` includes this file) and the
//! integration tests (`tests/util/mod.rs`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr as _;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use sqlx::Connection as _;
use sqlx::postgres::{PgConnectOptions, PgConnection};

/// The script that starts and stops clusters.
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/pg-cluster");

/// A running cluster.
#[derive(Debug)]
pub struct Cluster {
    /// `postgres://station_admin@127.0.0.1:PORT/postgres` (no password in it).
    pub url: String,
    /// The superuser's password, alone in a file of mode 0600.
    pub password_file: PathBuf,
    /// The cluster's directory, when this process started it.
    dir: Option<PathBuf>,
    /// Whether dropping it stops it (a private cluster).
    owned: bool,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let (true, Some(dir)) = (self.owned, &self.dir) {
            let _ = Command::new(SCRIPT).arg("stop").arg(dir).status();
        }
    }
}

/// Whether CI requires the server (`STATION_REQUIRE_POSTGRES=1`).
pub fn required() -> bool {
    std::env::var("STATION_REQUIRE_POSTGRES").is_ok_and(|v| v == "1")
}

/// Says that a test was skipped for want of a server, or fails it when one is required.
#[track_caller]
pub fn skip(test: &str) {
    assert!(
        !required(),
        "{test}: STATION_REQUIRE_POSTGRES=1 but no PostgreSQL server could be started (run tools/setup)"
    );
    eprintln!("skipped: {test}: no PostgreSQL server installed (tools/setup installs one)");
}

impl Cluster {
    /// The cluster of this test binary: CI's, else one started now; `None` when no server is
    /// installed.
    pub fn shared() -> Option<&'static Cluster> {
        static SHARED: OnceLock<Option<Cluster>> = OnceLock::new();
        SHARED
            .get_or_init(|| {
                if let (Ok(url), Ok(password_file)) = (
                    std::env::var("STATION_TEST_POSTGRES"),
                    std::env::var("STATION_TEST_POSTGRES_PASSWORD_FILE"),
                ) {
                    return Some(Cluster {
                        url,
                        password_file: password_file.into(),
                        dir: None,
                        owned: false,
                    });
                }
                Cluster::start(false)
            })
            .as_ref()
    }

    /// A cluster of this test's own (one it may stop and start), stopped when dropped.
    pub fn private() -> Option<Cluster> {
        Cluster::start(true)
    }

    fn start(owned: bool) -> Option<Cluster> {
        let dir = tempfile::Builder::new()
            .prefix("station-pg-")
            .tempdir()
            .expect("a temporary directory")
            .keep();
        let mut command = Command::new(SCRIPT);
        command.arg("start").arg(&dir).arg("--no-fsync");
        // The watcher removes the cluster once this test binary exits, however it exits.
        command.arg("--watch").arg(std::process::id().to_string());
        let output = command.output().expect("tools/pg-cluster runs");
        match output.status.code() {
            Some(0) => {}
            Some(3) => {
                let _ = std::fs::remove_dir_all(&dir);
                return None;
            }
            _ => panic!(
                "tools/pg-cluster start failed:\n{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let value = |key: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{key}=")))
                .unwrap_or_else(|| panic!("tools/pg-cluster printed no {key}: {stdout}"))
                .to_owned()
        };
        Some(Cluster {
            url: value("URL"),
            password_file: value("PASSWORD_FILE").into(),
            dir: Some(dir),
            owned,
        })
    }

    /// Stops the server, keeping its data (an outage); only for a private cluster.
    pub fn halt(&self) {
        self.script("halt");
    }

    /// Starts a halted server again on the same port.
    pub fn resume(&self) {
        self.script("resume");
    }

    fn script(&self, command: &str) {
        let dir = self.dir.as_deref().expect("a cluster this process started");
        let status = Command::new(SCRIPT)
            .arg(command)
            .arg(dir)
            .status()
            .expect("tools/pg-cluster runs");
        assert!(status.success(), "tools/pg-cluster {command} failed");
    }

    /// The superuser's password.
    pub fn password(&self) -> String {
        std::fs::read_to_string(&self.password_file)
            .expect("the cluster's password file")
            .trim()
            .to_owned()
    }

    /// The URL of database `name` on this cluster, as the superuser (no password in it).
    pub fn url_of(&self, name: &str) -> String {
        let base = self
            .url
            .rsplit_once('/')
            .map_or(&*self.url, |(base, _)| base);
        format!("{base}/{name}")
    }

    /// The URL of database `name` for another user (no password in it).
    pub fn url_as(&self, user: &str, name: &str) -> String {
        self.url_of(name)
            .replacen("station_admin@", &format!("{user}@"), 1)
    }

    /// A superuser connection to database `name`.
    pub async fn admin(&self, name: &str) -> PgConnection {
        let options = PgConnectOptions::from_str(&self.url_of(name))
            .expect("a cluster URL")
            .password(&self.password());
        PgConnection::connect_with(&options)
            .await
            .expect("the cluster accepts its superuser")
    }

    /// A new, empty database; its name.
    pub async fn database(&self) -> String {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "station_test_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut admin = self.admin("postgres").await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("CREATE DATABASE");
        name
    }

    /// Runs SQL (one or several statements) as the superuser in database `name`.
    pub async fn execute(&self, name: &str, sql: &str) {
        let mut admin = self.admin(name).await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("{e}: {sql}"));
    }

    /// Makes the repository's roles (`deploy/postgres/roles.sql`) in database `name` and a
    /// login `user` with `password` in group role `group` (`station` or `auditor`).
    pub async fn login(&self, name: &str, user: &str, password: &str, group: &str) {
        let roles = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/postgres/roles.sql"),
        )
        .expect("deploy/postgres/roles.sql");
        self.execute(name, &roles).await;
        // Roles are the cluster's, shared by every test database: made once.
        self.execute(
            name,
            &format!(
                "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{user}') THEN \
                 CREATE ROLE {user} LOGIN PASSWORD '{password}' IN ROLE {group}; END IF; END $$;"
            ),
        )
        .await;
    }
}
