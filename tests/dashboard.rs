//! The supervisor dashboard (issue 16) over HTTP: `station serve` on a real SQLite file written
//! by a real line run, `station run --http` with live events, the access token, the security
//! headers, and that the pages change nothing. The browser tests are in `browser.rs`.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use station::sim::{Fault, SimLine, SimOptions};

use crate::util::daemon::DEADLINE;
use crate::util::{GROUP_KEY, Workspace, assert_absent, secret_forms, sim_config};

/// The fault injected into device 1: pulled out at its first flash block.
pub const FAULT: &str = "1:unplug@block=1";
/// The code that fault is recorded with.
pub const FAULT_CODE: &str = "station::device::unplugged";

/// A workspace whose line watches `ports/ttySIM*`, with a batch `WO-1` of `target` units.
pub fn workspace(target: usize) -> Workspace {
    let config = sim_config(true).replace("ports = [\"auto\"]", "ports = [\"ports/ttySIM*\"]");
    let ws = Workspace::with_config(&config);
    ws.station(&["batch", "open", "WO-1", "--target", &target.to_string()])
        .expect(0);
    ws
}

/// Names `secrets/dashboard.token` as the workspace's `[http] token_file`.
pub fn configure_token(ws: &Workspace) {
    let config = std::fs::read_to_string(ws.path("station.toml")).unwrap()
        + "\n[http]\ntoken_file = \"secrets/dashboard.token\"\n";
    std::fs::write(ws.path("station.toml"), config).unwrap();
}

/// `count` devices taking turns on `ports` ports, each taken off once the station leaves it
/// idle, with `faults`.
pub fn sim(ws: &Workspace, count: usize, ports: usize, faults: &[&str]) -> SimLine {
    SimLine::start(SimOptions {
        count,
        ports: Some(ports),
        link_dir: Some(ws.path("ports")),
        flash_dir: Some(ws.path("flash")),
        leave_after_idle: Some(Duration::from_millis(1000)),
        swap_gap: Duration::from_millis(250),
        wire_time: false,
        faults: faults.iter().map(|f| f.parse::<Fault>().unwrap()).collect(),
        ..SimOptions::default()
    })
    .unwrap()
}

/// A running `station` that serves the dashboard; killed when dropped.
pub struct Served {
    child: Child,
    /// Where it serves.
    pub addr: SocketAddr,
    /// Its stdout lines, each with when it was read.
    pub stdout: mpsc::Receiver<(Instant, String)>,
}

impl Served {
    /// Starts `station ARGS` in `ws` and waits for the `dashboard: http://...` line on stdout
    /// (or on stderr, with `--json`).
    pub fn start(ws: &Workspace, args: &[&str]) -> Served {
        let mut child = Command::new(env!("CARGO_BIN_EXE_station"))
            .arg("--config")
            .arg(ws.path("station.toml"))
            .args(args)
            .env("STATION_OPERATOR", "tester")
            .env("STATION_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (lines, stdout) = mpsc::channel();
        let (urls, url) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        let found = urls.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("dashboard: ") {
                    let _ = found.send(rest.to_owned());
                }
                let _ = lines.send((Instant::now(), line));
            }
        });
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("dashboard: ") {
                    let _ = urls.send(rest.to_owned());
                } else {
                    eprintln!("station: {line}");
                }
            }
        });
        let url = url
            .recv_timeout(DEADLINE)
            .expect("the station printed no dashboard URL");
        let addr = url
            .trim_start_matches("http://")
            .split(['/', ' '])
            .next()
            .unwrap()
            .parse()
            .unwrap();
        Served {
            child,
            addr,
            stdout,
        }
    }

    /// Waits for the process to exit; its exit code.
    pub fn wait(&mut self) -> i32 {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "the station did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP response as read off the socket.
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The headers, names lowercase.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Everything received, headers and body, for searching.
    pub fn raw(&self) -> Vec<u8> {
        let mut raw: Vec<u8> = self
            .headers
            .iter()
            .flat_map(|(n, v)| format!("{n}: {v}\r\n").into_bytes())
            .collect();
        raw.extend_from_slice(&self.body);
        raw
    }
}

/// One HTTP/1.1 request on a fresh connection (closed after the response).
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete response head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    Response {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(end) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = usize::from_str_radix(String::from_utf8_lossy(&data[..end]).trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[end + 2..end + 2 + size]);
        data = &data[end + 2 + size + 2..];
    }
}

/// Asserts the headers every dashboard page carries: a content security policy that allows
/// only the dashboard's own script and no framing, no MIME sniffing, no referrer, no caching.
#[track_caller]
pub fn assert_security_headers(page: &Response) {
    let csp = page.header("content-security-policy").unwrap();
    for part in [
        "default-src 'none'",
        "script-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(part), "{csp}");
    }
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    assert_eq!(page.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(page.header("cache-control"), Some("no-store"));
}

/// `GET path`.
pub fn get(addr: SocketAddr, path: &str) -> Response {
    request(addr, "GET", path, &[], b"")
}

/// The number of audit entries recorded.
fn audit_count(ws: &Workspace) -> usize {
    ws.station(&["--json", "audit", "show"])
        .expect(0)
        .json()
        .as_array()
        .unwrap()
        .len()
}

/// Runs a line of `count` devices (device 1 pulled out mid-flash) into batch WO-1 until its
/// target of `count - 1` is met.
fn run_line(ws: &Workspace, count: usize) -> SimLine {
    let line = sim(ws, count, 2, &[FAULT]);
    ws.station_logging("warn", &["--json", "run"]).expect(0);
    line
}

#[test]
fn serve_shows_the_database_with_strict_headers_and_changes_nothing() {
    let ws = workspace(3);
    let line = run_line(&ws, 4);
    let failed_mac = line.devices()[1].mac().to_string();
    let passed_mac = line.devices()[0].mac().to_string();
    let served = Served::start(&ws, &["serve", "--listen", "127.0.0.1:0"]);
    let addr = served.addr;
    let before = audit_count(&ws);

    let mut seen = Vec::new();
    let page = get(addr, "/");
    assert_eq!(page.status, 200, "{}", page.text());
    assert_security_headers(&page);
    let html = page.text();
    assert!(html.contains("Station line1-st1"), "{html}");
    assert!(html.contains(r#"data-state="PASS""#), "{html}");
    assert!(!html.contains("<script>"), "no inline script: {html}");
    assert!(!html.contains("style="), "no inline style: {html}");
    seen.push(page);

    let batch = get(addr, "/batch?name=WO-1");
    assert_eq!(batch.status, 200);
    let html = batch.text();
    assert!(html.contains(r#"id="failures-chart""#), "{html}");
    assert!(
        html.contains(&format!(r#"data-code="{FAULT_CODE}""#)),
        "the failure chart names the fault's code: {html}"
    );
    seen.push(batch);

    let unit = get(addr, &format!("/unit?q={failed_mac}"));
    assert_eq!(unit.status, 200);
    let html = unit.text();
    assert!(html.contains(FAULT_CODE), "{html}");
    assert!(html.contains("flash"), "{html}");
    seen.push(unit);
    let unit = get(
        addr,
        &format!("/unit?q=sensor-{}", passed_mac.replace(':', "")),
    );
    assert_eq!(unit.status, 200);
    let html = unit.text();
    assert!(html.contains("provisioned"), "{html}");
    assert!(
        html.contains("unit.provisioned"),
        "its audit entries: {html}"
    );
    seen.push(unit);
    assert_eq!(get(addr, "/unit?q=not%20a%20unit").status, 400);
    assert_eq!(get(addr, "/unit?q=24:0a:c4:99:99:99").status, 404);
    for path in [
        "/qa",
        "/audit",
        "/assets/dashboard.js",
        "/assets/dashboard.css",
    ] {
        let response = get(addr, path);
        assert_eq!(response.status, 200, "{path}");
        seen.push(response);
    }
    assert!(
        seen.last()
            .unwrap()
            .header("content-type")
            .unwrap()
            .starts_with("text/css")
    );
    let audit = get(addr, "/audit");
    assert!(audit.text().contains("intact"), "{}", audit.text());

    // Nothing above wrote anything, and nothing writes.
    assert_eq!(audit_count(&ws), before);
    for (method, path) in [
        ("POST", "/"),
        ("PUT", "/batch"),
        ("DELETE", "/unit"),
        ("POST", "/qa/manifest"),
    ] {
        let response = request(addr, method, path, &[], b"");
        assert_eq!(response.status, 405, "{method} {path}");
    }
    assert_eq!(audit_count(&ws), before);

    // The manifest: the same bytes as `export manifest`, audited the same way.
    let download = get(addr, "/qa/manifest?batch=WO-1&format=csv");
    assert_eq!(download.status, 200);
    assert!(
        download
            .header("content-disposition")
            .unwrap()
            .contains("manifest-WO-1.csv")
    );
    let exported = ws
        .station(&["export", "manifest", "--batch", "WO-1"])
        .expect(0);
    assert_eq!(download.text(), exported.stdout);
    assert_eq!(download.text().lines().count(), 4, "a header and 3 units");
    let entries = ws.station(&["--json", "audit", "show"]).expect(0).json();
    let exports: Vec<&Value> = entries
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "manifest.exported")
        .collect();
    assert_eq!(exports.len(), 2, "the download and the CLI export");
    assert_eq!(
        exports[0]["details"]["sha256"],
        exports[1]["details"]["sha256"]
    );
    let json = get(addr, "/qa/manifest?batch=WO-1&format=json");
    assert_eq!(json.header("content-type"), Some("application/json"));
    assert_eq!(
        json.text(),
        ws.station(&["export", "manifest", "--batch", "WO-1", "--format", "json"])
            .expect(0)
            .stdout
    );
    seen.push(download);
    seen.push(json);

    let forms = secret_forms(GROUP_KEY);
    for response in &seen {
        assert_absent(&response.raw(), &forms, "a dashboard response");
    }
    ws.station(&["audit", "verify"]).expect(0);
}

#[test]
fn off_loopback_the_dashboard_needs_its_token() {
    let ws = workspace(1);
    let refused = ws
        .station_logging("off", &["--json", "serve", "--listen", "0.0.0.0:0"])
        .expect(2);
    assert_eq!(
        refused.json()["error"]["code"],
        "station::http::token_required"
    );
    configure_token(&ws);
    let token = "floor-supervisor-token-7f3a9c";
    std::fs::write(ws.path("secrets/dashboard.token"), token).unwrap();
    let exposed = ws
        .station_logging("off", &["--json", "serve", "--listen", "0.0.0.0:0"])
        .expect(2);
    assert_eq!(
        exposed.json()["error"]["code"],
        "station::http::token_exposed"
    );
    ws.write_key("secrets/dashboard.token", token);
    let served = Served::start(&ws, &["serve", "--listen", "0.0.0.0:0"]);
    let addr = SocketAddr::from(([127, 0, 0, 1], served.addr.port()));

    for path in [
        "/",
        "/batch",
        "/unit?q=x",
        "/qa",
        "/qa/manifest",
        "/audit",
        "/events",
    ] {
        let refused = get(addr, path);
        assert_eq!(refused.status, 401, "{path}");
        assert!(refused.text().contains(r#"action="/login""#));
    }
    let bearer = format!("Bearer {token}");
    let ok = request(addr, "GET", "/", &[("Authorization", &bearer)], b"");
    assert_eq!(ok.status, 200);
    let wrong = request(
        addr,
        "GET",
        "/",
        &[("Authorization", "Bearer floor-supervisor-token-7f3a9")],
        b"",
    );
    assert_eq!(wrong.status, 401);

    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let bad = request(
        addr,
        "POST",
        "/login",
        &form,
        b"token=guess-guess-guess-guess",
    );
    assert_eq!(bad.status, 401);
    assert!(bad.header("set-cookie").is_none());
    let login = request(
        addr,
        "POST",
        "/login",
        &form,
        format!("token={token}").as_bytes(),
    );
    assert_eq!(login.status, 303);
    let cookie = login.header("set-cookie").unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(
        !cookie.contains(token),
        "the cookie never carries the token"
    );
    let session = cookie.split(';').next().unwrap();
    let page = request(addr, "GET", "/batch", &[("Cookie", session)], b"");
    assert_eq!(page.status, 200);
    for response in [&ok, &login, &page] {
        assert!(!String::from_utf8_lossy(&response.raw()).contains(token));
    }
}

/// Reads server-sent events from `/events` until `done` holds for one; returns its data and
/// when it arrived.
pub fn wait_for_event(
    addr: SocketAddr,
    ready: impl FnOnce(),
    done: impl Fn(&str, &str) -> bool,
) -> (Instant, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        stream,
        "GET /events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    // The head, then chunked event lines: look at the `event:`/`data:` lines only.
    reader.read_line(&mut line).unwrap();
    assert!(line.contains(" 200 "), "{line}");
    ready();
    let (mut kind, deadline) = (String::new(), Instant::now() + DEADLINE);
    while Instant::now() < deadline {
        line.clear();
        if reader.read_line(&mut line).unwrap() == 0 {
            panic!("the event stream ended");
        }
        let text = line.trim_end();
        if let Some(name) = text.strip_prefix("event: ") {
            kind = name.to_owned();
        } else if let Some(data) = text.strip_prefix("data: ")
            && done(&kind, data)
        {
            return (Instant::now(), data.to_owned());
        }
    }
    panic!("no such event within {DEADLINE:?}");
}

#[test]
fn run_with_http_sends_each_pass_live_within_a_second() {
    let ws = workspace(2);
    let mut served = Served::start(&ws, &["--json", "run", "--http", "127.0.0.1:0"]);
    let mut line = None;
    let (arrived, data) = wait_for_event(
        served.addr,
        || line = Some(sim(&ws, 2, 2, &[])),
        |kind, data| kind == "swap" && data.contains(r#"data-state=\"PASS\""#),
    );
    let swap: Value = serde_json::from_str(&data).unwrap();
    assert!(swap["id"].as_str().unwrap().starts_with("port-"));
    // The daemon's own event for that unit, as its --json output said it.
    let mac = line
        .as_ref()
        .unwrap()
        .devices()
        .iter()
        .map(|d| d.mac().to_string())
        .find(|m| swap["html"].as_str().unwrap().contains(m.as_str()))
        .expect("the row names its unit");
    let deadline = Instant::now() + DEADLINE;
    let said = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (at, text) = served.stdout.recv_timeout(left).unwrap_or_else(|_| {
            panic!("the daemon printed no unit event for {mac} in {DEADLINE:?}")
        });
        let event: Value = serde_json::from_str(&text).unwrap();
        if event["event"] == "unit" && event["report"]["mac"] == mac.as_str() {
            break at;
        }
    };
    let apart = if arrived > said {
        arrived - said
    } else {
        said - arrived
    };
    assert!(
        apart < Duration::from_secs(1),
        "the page heard of the PASS {apart:?} from the daemon's event"
    );
    assert_eq!(served.wait(), 0);
}
