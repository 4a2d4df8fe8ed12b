//! Espressif's esptool against the simulated line, as a second, independent host.
//!
//! esptool is found through `STATION_ESPTOOL` (a command line, e.g. `python3 -m esptool`),
//! else `esptool` or `esptool.py` on the PATH, else `python3 -m esptool`. Without it the tests
//! are skipped, unless `STATION_REQUIRE_TOOLS=1` (as in CI), where they fail.

use std::process::{Command, Output};

use super::{Line, assert_flash_holds, nvs_like};

/// An esptool invocation and the spelling its version uses.
struct Esptool {
    program: String,
    args: Vec<String>,
    /// esptool 5 spells commands and reset modes with dashes (`read-mac`, `no-reset`);
    /// earlier versions with underscores.
    dashes: bool,
}

impl Esptool {
    /// Finds esptool, or says why the test cannot run.
    fn find() -> Option<Esptool> {
        let candidates: Vec<Vec<String>> = match std::env::var("STATION_ESPTOOL") {
            Ok(line) if !line.trim().is_empty() => {
                vec![line.split_whitespace().map(str::to_owned).collect()]
            }
            _ => vec![
                vec!["esptool".to_owned()],
                vec!["esptool.py".to_owned()],
                vec!["python3".to_owned(), "-m".to_owned(), "esptool".to_owned()],
            ],
        };
        for candidate in candidates {
            let Some((program, args)) = candidate.split_first() else {
                continue;
            };
            let Ok(output) = Command::new(program).args(args).arg("version").output() else {
                continue;
            };
            let text = String::from_utf8_lossy(&output.stdout);
            let Some(major) = text
                .split_whitespace()
                .find_map(|word| word.strip_prefix('v'))
                .and_then(|version| version.split('.').next())
                .and_then(|major| major.parse::<u32>().ok())
            else {
                continue;
            };
            return Some(Esptool {
                program: program.clone(),
                args: args.to_vec(),
                dashes: major >= 5,
            });
        }
        if std::env::var("STATION_REQUIRE_TOOLS").as_deref() == Ok("1") {
            panic!("esptool not found but STATION_REQUIRE_TOOLS=1 (pip install esptool)");
        }
        eprintln!("skipped: esptool not installed (pip install esptool)");
        None
    }

    fn spell(&self, word: &str) -> String {
        if self.dashes {
            word.to_owned()
        } else {
            word.replace('-', "_")
        }
    }

    /// Runs esptool on `port` with no DTR/RTS before or after, then `command`.
    fn run(&self, line: &Line, command: &[&str]) -> Output {
        let output = Command::new(&self.program)
            .args(&self.args)
            .arg("--port")
            .arg(line.port())
            .args([
                "--before",
                &self.spell("no-reset"),
                "--after",
                &self.spell("no-reset"),
            ])
            .args(command.iter().map(|word| {
                if word.starts_with('-') || word.starts_with("0x") || word.contains('/') {
                    (*word).to_owned()
                } else {
                    self.spell(word)
                }
            }))
            .output()
            .expect("esptool runs");
        assert!(
            output.status.success(),
            "esptool {command:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }
}

#[test]
fn esptool_reads_the_simulated_mac() {
    let Some(esptool) = Esptool::find() else {
        return;
    };
    let line = Line::one(Vec::new());
    let output = esptool.run(&line, &["read-mac"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mac = line.sim.devices()[0].mac().to_string();
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("MAC:") && l.contains(&mac)),
        "no `MAC: {mac}` in:\n{stdout}"
    );
    assert!(stdout.contains("ESP32-D0WD-V3 (revision v3.0)"), "{stdout}");
}

#[test]
fn esptool_writes_flash_with_and_without_the_stub() {
    let Some(esptool) = Esptool::find() else {
        return;
    };
    let line = Line::one(Vec::new());
    let nvs = nvs_like(0x6000);
    let app = super::noise(5000, 11);
    let nvs_file = line.dir.path().join("nvs.bin");
    let app_file = line.dir.path().join("app.bin");
    std::fs::write(&nvs_file, &nvs).unwrap();
    std::fs::write(&app_file, &app).unwrap();

    esptool.run(
        &line,
        &["write-flash", "0x9000", nvs_file.to_str().unwrap()],
    );
    assert_flash_holds(&line.dump(), &[(0x9000, &nvs)]);

    // The ROM loader path: uncompressed FLASH_DATA, MD5 in hex, no FLASH_END.
    esptool.run(
        &line,
        &[
            "--no-stub",
            "write-flash",
            "0x20000",
            app_file.to_str().unwrap(),
        ],
    );
    assert_flash_holds(&line.dump(), &[(0x9000, &nvs), (0x20000, &app)]);
}
