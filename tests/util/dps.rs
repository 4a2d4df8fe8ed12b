//! `station sim dps` (the DPS emulator, with its hub and service sides) spawned as a process on
//! 127.0.0.1, as the DPS, MQTT and X.509 line tests use it.

use std::io::{BufRead as _, BufReader, Read as _};
use std::process::{Child, ChildStdout, Command, Stdio};

use super::Workspace;

/// `station sim dps` running as a process; killed when dropped.
pub struct DpsSim {
    pub child: Child,
    stdout: BufReader<ChildStdout>,
    /// The base URL it printed.
    pub url: String,
    log: std::path::PathBuf,
}

impl DpsSim {
    /// Starts a plain-HTTP emulator (no `--tls-dir`) checking tokens against the workspace's
    /// key file `key`, and waits for its URL.
    pub fn start(ws: &Workspace, key: &str, extra: &[&str]) -> DpsSim {
        let key = ws.path(key);
        let mut args = vec!["--group-key-file", key.to_str().unwrap()];
        args.extend(extra);
        let sim = DpsSim::spawn(ws, &args);
        assert!(sim.url.starts_with("http://127.0.0.1:"), "{:?}", sim.url);
        sim
    }

    /// Starts `station sim dps --id-scope 0ne00ABCDEF ARGS` and waits for its URL.
    pub fn spawn(ws: &Workspace, args: &[&str]) -> DpsSim {
        let log = ws.path(&format!(
            "sim-dps-{}.log",
            args.iter()
                .filter(|a| a.starts_with("--"))
                .copied()
                .collect::<Vec<_>>()
                .join("_")
                .replace('-', "")
        ));
        let mut child = Command::new(env!("CARGO_BIN_EXE_station"))
            .args(["sim", "dps", "--id-scope", "0ne00ABCDEF"])
            .args(args)
            .env("STATION_LOG", "trace")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut url = String::new();
        stdout.read_line(&mut url).unwrap();
        let url = url.trim().to_owned();
        assert!(
            url.starts_with("http://127.0.0.1:") || url.starts_with("https://127.0.0.1:"),
            "{url:?}: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        DpsSim {
            child,
            stdout,
            url,
            log,
        }
    }

    /// The named URLs it prints after the REST one (`mqtt`, `hub`, `hub-mqtt`), read once.
    pub fn named_urls(&mut self) -> std::collections::HashMap<String, String> {
        let mut urls = std::collections::HashMap::new();
        for _ in 0..3 {
            let mut line = String::new();
            self.stdout.read_line(&mut line).unwrap();
            let (name, url) = line.trim().split_once(' ').unwrap();
            urls.insert(name.to_owned(), url.to_owned());
        }
        urls
    }

    /// Stops it and returns everything it printed (stdout after the URL, then stderr).
    pub fn stop(mut self) -> Vec<u8> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut out = Vec::new();
        self.stdout.read_to_end(&mut out).unwrap();
        out.extend(std::fs::read(&self.log).unwrap());
        out
    }
}

impl Drop for DpsSim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
