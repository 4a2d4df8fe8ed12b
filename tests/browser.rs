//! The supervisor dashboard in a real headless Chromium (issue 16), driven over WebDriver
//! (Debian's `chromium` and `chromium-driver`): a simulated line runs with `--http`, the line
//! page shows a unit's PASS live (without reloading), an injected fault's code shows on the
//! failure chart and on the unit page found through the search form, the manifest downloaded by
//! clicking the QA page's link equals `station export manifest`, and with a token the browser
//! gets the login form until it signs in. A screenshot of each page is saved under
//! `target/dashboard-screenshots/`.
//!
//! Without Chromium these tests say so and pass; `STATION_REQUIRE_BROWSER=1` (set by CI) makes
//! them fail instead.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};

use crate::dashboard::{FAULT, FAULT_CODE, Served, configure_token, sim, workspace};

const DEADLINE: Duration = Duration::from_secs(60);

/// The browser and its driver, when installed.
fn installed() -> Option<(PathBuf, PathBuf)> {
    let find = |variable: &str, names: &[&str]| {
        if let Ok(path) = std::env::var(variable) {
            return Some(PathBuf::from(path));
        }
        names
            .iter()
            .flat_map(|name| {
                ["/usr/bin", "/usr/local/bin", "/usr/lib/chromium"]
                    .map(|dir| Path::new(dir).join(name))
            })
            .find(|path| path.is_file())
    };
    let browser = find("STATION_CHROMIUM", &["chromium", "chromium-browser"])?;
    let driver = find("STATION_CHROMEDRIVER", &["chromedriver"])?;
    Some((browser, driver))
}

/// The browser, or `None` after saying why the test is skipped (a failure under
/// `STATION_REQUIRE_BROWSER=1`).
fn browser_or_skip(test: &str) -> Option<(PathBuf, PathBuf)> {
    let found = installed();
    if found.is_none() {
        assert!(
            std::env::var("STATION_REQUIRE_BROWSER").as_deref() != Ok("1"),
            "STATION_REQUIRE_BROWSER=1 but chromium or chromedriver is not installed (tools/setup installs them)"
        );
        eprintln!(
            "skipped {test}: chromium and chromedriver are not installed (tools/setup installs them; STATION_REQUIRE_BROWSER=1 makes this a failure)"
        );
    }
    found
}

/// A running chromedriver and a session of headless Chromium.
struct Browser {
    driver: Child,
    client: Option<Client>,
    _profile: tempfile::TempDir,
    /// Where downloads go.
    downloads: tempfile::TempDir,
}

impl Browser {
    async fn start(chromium: &Path, chromedriver: &Path) -> Browser {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + DEADLINE;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let downloads = tempfile::tempdir().unwrap();
        // This machine's network is closed: nothing may try to reach out.
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,900",
            &format!("--user-data-dir={}", profile.path().display()),
        ];
        let capabilities = serde_json::json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium.display().to_string(),
                "args": args,
                "prefs": {
                    "download.default_directory": downloads.path().display().to_string(),
                    "download.prompt_for_download": false,
                },
            },
        });
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(capabilities.as_object().unwrap().clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap();
        Browser {
            driver,
            client: Some(client),
            _profile: profile,
            downloads,
        }
    }

    fn client(&self) -> &Client {
        self.client.as_ref().unwrap()
    }

    async fn close(mut self) {
        if let Some(client) = self.client.take() {
            let _ = client.close().await;
        }
    }

    /// Saves a screenshot of the page as `target/dashboard-screenshots/NAME.png`.
    async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client().screenshot().await.unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/dashboard-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    /// Waits until `script` (a JavaScript expression) is true in the page.
    async fn wait_until(&self, what: &str, script: &str) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let value = self
                .client()
                .execute(&format!("return !!({script});"), vec![])
                .await
                .unwrap();
            if value == serde_json::Value::Bool(true) {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Types `text` into the field with id `field` and clicks the button `button` selects.
    async fn submit(&self, field: &str, text: &str, button: &str) {
        let client = self.client();
        let input = client.find(Locator::Id(field)).await.unwrap();
        input.send_keys(text).await.unwrap();
        let button = client.find(Locator::Css(button)).await.unwrap();
        button.click().await.unwrap();
    }

    /// The text of the first element `css` selects.
    async fn text(&self, css: &str) -> String {
        self.client()
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
            .text()
            .await
            .unwrap()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn url(addr: SocketAddr, path: &str) -> String {
    format!("http://{addr}{path}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_follows_a_live_line_in_chromium() {
    let Some((chromium, chromedriver)) =
        browser_or_skip("the_dashboard_follows_a_live_line_in_chromium")
    else {
        return;
    };
    let ws = workspace(5);
    let daemon = Served::start(&ws, &["run", "--plain", "--http", "127.0.0.1:0"]);
    let browser = Browser::start(&chromium, &chromedriver).await;
    let client = browser.client();
    client.goto(&url(daemon.addr, "/")).await.unwrap();
    browser
        .wait_until(
            "the live stream to open",
            "document.getElementById('live-status').textContent.includes('live')",
        )
        .await;
    // A mark on this very document: had the script reloaded the page, it would be gone.
    client
        .execute("window.stationMark = 'still here'; return true;", vec![])
        .await
        .unwrap();

    let line = sim(&ws, 6, 4, &[FAULT]);
    browser
        .wait_until(
            "a unit's PASS on the line page",
            "document.querySelector('tr[data-state=\"PASS\"]')",
        )
        .await;
    let passed = browser.text("tr[data-state=\"PASS\"] a.mac").await;
    assert!(
        line.devices().iter().any(|d| d.mac().to_string() == passed),
        "{passed}"
    );
    browser
        .wait_until(
            "the fault on the line page",
            &format!("document.body.textContent.includes('{FAULT_CODE}')"),
        )
        .await;
    let mark = client
        .execute("return window.stationMark || null;", vec![])
        .await
        .unwrap();
    assert_eq!(
        mark, "still here",
        "the updates came live, without a reload"
    );
    browser.screenshot("line").await;
    let mut daemon = daemon;
    assert_eq!(daemon.wait(), 0, "the batch completes");
    drop(daemon);

    // The same database, served alone.
    let served = Served::start(&ws, &["serve", "--listen", "127.0.0.1:0"]);
    let addr = served.addr;
    client.goto(&url(addr, "/batch?name=WO-1")).await.unwrap();
    let bar = browser
        .text(&format!(
            "#failures-chart g.failure[data-code=\"{FAULT_CODE}\"] text.code"
        ))
        .await;
    assert_eq!(bar, FAULT_CODE);
    assert_eq!(browser.text("#batch-figures dd.provisioned").await, "5");
    browser.screenshot("batch").await;

    let failed_mac = line.devices()[1].mac().to_string();
    client.goto(&url(addr, "/unit")).await.unwrap();
    browser.submit("q", &failed_mac, "form.search button").await;
    browser
        .wait_until("the unit's attempts", "document.getElementById('attempts')")
        .await;
    let attempts = browser.text("#attempts").await;
    assert!(attempts.contains(FAULT_CODE), "{attempts}");
    assert!(attempts.contains("flash"), "{attempts}");
    browser.screenshot("unit").await;

    client.goto(&url(addr, "/qa")).await.unwrap();
    browser.screenshot("qa").await;
    client
        .find(Locator::Css("tr[data-batch=\"WO-1\"] a.csv"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let downloaded = browser.downloads.path().join("manifest-WO-1.csv");
    let deadline = Instant::now() + DEADLINE;
    while !downloaded.is_file() {
        assert!(Instant::now() < deadline, "the manifest was not downloaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let exported = ws
        .station(&["export", "manifest", "--batch", "WO-1"])
        .expect(0);
    assert_eq!(
        std::fs::read_to_string(&downloaded).unwrap(),
        exported.stdout
    );

    client.goto(&url(addr, "/audit")).await.unwrap();
    assert!(browser.text("#chain-status").await.starts_with("intact"));
    browser.screenshot("audit").await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_the_browser_signs_in_first() {
    let Some((chromium, chromedriver)) = browser_or_skip("with_a_token_the_browser_signs_in_first")
    else {
        return;
    };
    let ws = workspace(1);
    let token = "supervisor-token-for-chromium";
    configure_token(&ws);
    ws.write_key("secrets/dashboard.token", token);
    let served = Served::start(&ws, &["serve", "--listen", "127.0.0.1:0"]);
    let browser = Browser::start(&chromium, &chromedriver).await;
    let client = browser.client();
    client.goto(&url(served.addr, "/audit")).await.unwrap();
    assert_eq!(client.title().await.unwrap(), "Sign in · station");
    browser.screenshot("login").await;
    browser
        .submit("token", "not-the-token-at-all", "form.login button")
        .await;
    browser
        .wait_until("the refusal", "document.querySelector('p.problem')")
        .await;
    browser.submit("token", token, "form.login button").await;
    browser
        .wait_until("the line page", "document.getElementById('stations')")
        .await;
    assert_eq!(client.title().await.unwrap(), "Line · station");
    client.goto(&url(served.addr, "/audit")).await.unwrap();
    assert!(browser.text("#chain-status").await.starts_with("intact"));
    browser.close().await;
}
