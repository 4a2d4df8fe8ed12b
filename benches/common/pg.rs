//! A throwaway PostgreSQL cluster for the benches that need one (`tools/pg-cluster`, fsync on,
//! loopback only), removed when dropped. Included by those benches alone, with `#[path]`; not
//! every one uses every item.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

/// A PostgreSQL cluster of the bench's own, removed at the end.
pub struct Cluster {
    dir: PathBuf,
    /// The server's URL (its `postgres` database), without the password.
    pub url: String,
    /// The password alone, mode 0600.
    pub password_file: PathBuf,
}

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/pg-cluster");

impl Cluster {
    /// Starts one; `None` (and why, on stderr) where no PostgreSQL server is installed.
    pub fn start() -> Option<Cluster> {
        let dir = tempfile::Builder::new()
            .prefix("station-bench-pg-")
            .tempdir()
            .ok()?
            .keep();
        let output = Command::new(SCRIPT)
            .arg("start")
            .arg(&dir)
            .args(["--watch", &std::process::id().to_string()])
            .output()
            .ok()?;
        if !output.status.success() {
            eprintln!(
                "stations: no PostgreSQL cluster ({}): PostgreSQL runs are skipped",
                String::from_utf8_lossy(&output.stderr).trim()
            );
            return None;
        }
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let value = |key: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{key}=")))
                .map(str::to_owned)
        };
        Some(Cluster {
            url: value("URL")?,
            password_file: value("PASSWORD_FILE")?.into(),
            dir,
        })
    }

    /// CPU seconds the server has used: its postmaster's and every backend's that has ended
    /// (the postmaster reaps them); a run's figure is taken after its stations disconnected.
    pub fn cpu_seconds(&self) -> f64 {
        std::fs::read_to_string(self.dir.join("data/postmaster.pid"))
            .ok()
            .and_then(|pid| pid.lines().next().map(str::to_owned))
            .map_or(0.0, |pid| proc_cpu_seconds(&pid, &[14, 15, 16, 17]))
    }

    /// A fresh database's URL.
    pub fn database(&self, name: &str) -> String {
        let password = std::fs::read_to_string(&self.password_file).expect("password");
        let created = Command::new("psql")
            .arg(&self.url)
            .args(["-qc", &format!("CREATE DATABASE {name}")])
            .env("PGPASSWORD", password.trim())
            .output()
            .expect("psql");
        assert!(created.status.success(), "{created:?}");
        let base = self.url.rsplit_once('/').map_or(&*self.url, |(b, _)| b);
        format!("{base}/{name}")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(SCRIPT).arg("stop").arg(&self.dir).status();
    }
}

/// CPU seconds from `/proc/PID/stat`'s clock-tick fields `fields` (14, 15: the process's own
/// user and system time; 16, 17: its children's that it waited for), summed.
pub fn proc_cpu_seconds(pid: &str, fields: &[usize]) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The fields after the command name (which may hold spaces) start at the state, field 3.
    let after: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    // Clock ticks: 100 a second on Linux.
    fields
        .iter()
        .filter_map(|n| after.get(n - 3).and_then(|v| v.parse::<f64>().ok()))
        .sum::<f64>()
        / 100.0
}
