//! The supervisor dashboard (issue 16; DESIGN.md section 7): a read-only web view of the line
//! served by the station itself. `station serve` reads the database alone; `station run --http`
//! serves the same pages from inside the daemon, with the line page updated live from the
//! daemon's [`LineEvent`](crate::line::LineEvent)s over server-sent events.
//!
//! | file | what |
//! |---|---|
//! | `board.rs` | the line as shown: stations, ports, counters; built from events or from records |
//! | `live.rs` | the daemon's board shared with the server, and the broadcast of its changes |
//! | `pages.rs` | the HTML pages (maud), and the fragments the live view swaps |
//! | `chart.rs` | the batch page's SVG charts |
//! | `assets.rs` | the embedded stylesheet and script |
//!
//! Nothing here changes a batch, a unit or the audit log; the one write is the audit entry of a
//! manifest download, the same one `station export manifest` appends. Every response carries a
//! strict Content-Security-Policy (only the station's own script and stylesheet, no inline
//! script or style, no framing) and `X-Content-Type-Options: nosniff`. No page, endpoint or
//! header holds a key, a key file's contents or a device key: the pages read records, which
//! hold none. Access rules and the token are [`crate::http`]'s.

pub mod assets;
pub mod board;
pub mod chart;
pub mod live;
pub mod pages;

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Form, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use futures_util::{Stream, StreamExt as _};
use maud::Markup;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use self::board::StationBoard;
use self::live::LiveLine;
use self::pages::{Frame, UnitFound};
use crate::http::{HttpError, Token};
use crate::identity::{Mac, RegistrationId};
use crate::record::{Batch, BatchStatus};
use crate::report::ManifestFormat;
use crate::store::{ManifestFilter, Store, StoreError};

/// The listen address when none is given.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// The Content-Security-Policy of every response: the station's own script, stylesheet and
/// event stream, nothing inline, nothing from elsewhere, never inside a frame.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; \
     base-uri 'none'; frame-ancestors 'none'";

/// The session cookie's name.
const SESSION_COOKIE: &str = "station_session";

/// How many of the latest attempts the line page reads besides those in progress.
const RECENT_ATTEMPTS: u32 = 256;
/// How many entries the audit page and a unit's page show.
const AUDIT_SHOWN: u32 = 50;
/// How often `station serve` looks at the database for the live line page.
const POLL: Duration = Duration::from_secs(1);

/// What the dashboard serves.
#[derive(Debug, Clone)]
pub struct Dashboard {
    store: Store,
    station_id: String,
    operator: String,
    token: Option<Arc<Token>>,
    live: Option<Arc<LiveLine>>,
    stop: watch::Receiver<bool>,
}

impl Dashboard {
    /// A dashboard over `store` for the station `station_id`; manifest downloads are audited
    /// under `operator`. Without a token every request is served (loopback only: see
    /// [`crate::http::access_for`]).
    pub fn new(store: Store, station_id: &str, operator: &str, token: Option<Token>) -> Self {
        Dashboard {
            store,
            station_id: station_id.to_owned(),
            operator: operator.to_owned(),
            token: token.map(Arc::new),
            live: None,
            stop: watch::channel(false).1,
        }
    }

    /// Serves the line page from the daemon's live board instead of the database.
    pub fn with_live(mut self, live: Arc<LiveLine>) -> Self {
        self.live = Some(live);
        self
    }

    /// The router of every page and endpoint.
    pub fn router(self) -> Router {
        let state = Arc::new(self);
        Router::new()
            .route("/", get(line_page))
            .route("/events", get(events))
            .route("/batch", get(batch_page))
            .route("/unit", get(unit_page))
            .route("/qa", get(qa_page))
            .route("/qa/manifest", get(manifest))
            .route("/audit", get(audit_page))
            .route("/login", get(login_form).post(login))
            .route("/assets/dashboard.css", get(assets::css))
            .route("/assets/dashboard.js", get(assets::js))
            .fallback(not_found)
            .layer(middleware::from_fn_with_state(Arc::clone(&state), guard))
            .layer(middleware::from_fn(security_headers))
            .with_state(state)
    }

    fn frame<'a>(&'a self, now: &'a str) -> Frame<'a> {
        Frame {
            source: if self.live.is_some() {
                "live from the line daemon"
            } else {
                "from the database"
            },
            station_id: &self.station_id,
            now,
        }
    }
}

/// Opens the listening socket.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, HttpError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind { addr, source })
}

/// Serves `dashboard` on `listener` until `shutdown` completes; open event streams end then too.
pub async fn serve(
    listener: TcpListener,
    mut dashboard: Dashboard,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop, stopped) = watch::channel(false);
    dashboard.stop = stopped;
    let router = dashboard.router();
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown.await;
        let _ = stop.send(true);
    })
    .await
}

/// An element id for a station's part: `counters`, `ports` (the tbody) or `port` (a row).
/// Station ids and port paths are hex-encoded so any of them makes a valid, unique id.
pub fn dom_id(kind: &str, station_id: &str, port: &str) -> String {
    if port.is_empty() {
        format!("{kind}-{}", hex::encode(station_id))
    } else {
        format!("{kind}-{}-{}", hex::encode(station_id), hex::encode(port))
    }
}

type Shared = State<Arc<Dashboard>>;

/// Every response: the security headers.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// With a token, every request but the login form and the assets must carry it: a bearer
/// header or the session cookie; others get 401 and the login form.
async fn guard(State(dashboard): Shared, request: Request, next: Next) -> Response {
    let Some(token) = &dashboard.token else {
        return next.run(request).await;
    };
    let path = request.uri().path();
    if path == "/login" || path.starts_with("/assets/") || authorized(token, request.headers()) {
        return next.run(request).await;
    }
    let now = crate::clock::now();
    let mut response = (
        StatusCode::UNAUTHORIZED,
        pages::login(&dashboard.frame(&now), false),
    )
        .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"station dashboard\""),
    );
    response
}

fn authorized(token: &Token, headers: &HeaderMap) -> bool {
    let bearer = headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.strip_prefix("Bearer "))
        .any(|presented| token.matches(presented.trim()));
    bearer
        || headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| cookie::Cookie::split_parse(v.to_owned()))
            .filter_map(Result::ok)
            .any(|c| c.name() == SESSION_COOKIE && token.session_matches(c.value()))
}

async fn login_form(State(dashboard): Shared) -> Markup {
    let now = crate::clock::now();
    pages::login(&dashboard.frame(&now), false)
}

/// The login form's fields.
#[derive(serde::Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(State(dashboard): Shared, Form(form): Form<LoginForm>) -> Response {
    let form = zeroize::Zeroizing::new(form.token);
    match &dashboard.token {
        Some(token) if token.matches(form.trim()) => {
            let cookie = cookie::Cookie::build((SESSION_COOKIE, token.session()))
                .path("/")
                .http_only(true)
                .same_site(cookie::SameSite::Strict)
                .build();
            let mut response = Redirect::to("/").into_response();
            if let Ok(value) = HeaderValue::from_str(&cookie.to_string()) {
                response.headers_mut().insert(header::SET_COOKIE, value);
            }
            response
        }
        Some(_) => {
            let now = crate::clock::now();
            (
                StatusCode::UNAUTHORIZED,
                pages::login(&dashboard.frame(&now), true),
            )
                .into_response()
        }
        None => Redirect::to("/").into_response(),
    }
}

async fn not_found(State(dashboard): Shared, method: Method) -> Response {
    let now = crate::clock::now();
    let status = if method == Method::GET || method == Method::HEAD {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::METHOD_NOT_ALLOWED
    };
    (
        status,
        pages::problem(
            &dashboard.frame(&now),
            "Not found",
            "The dashboard has no such page; it only reads, it changes nothing.",
        ),
    )
        .into_response()
}

/// A store failure as a page: the error's message and code, never more.
fn failed(dashboard: &Dashboard, error: &StoreError) -> Response {
    let now = crate::clock::now();
    let code = miette::Diagnostic::code(error).map_or_else(String::new, |c| c.to_string());
    tracing::warn!(error = %error, error.code = code.as_str(), "dashboard request failed");
    let status = if error.is_usage_error() {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    (
        status,
        pages::problem(
            &dashboard.frame(&now),
            "Cannot show this",
            &format!("{error} [{code}]"),
        ),
    )
        .into_response()
}

/// Every station's board as the database has it: open batches and each port's newest attempt.
async fn boards_from_records(store: &Store) -> Result<Vec<StationBoard>, StoreError> {
    let open = store.open_batches().await?;
    let mut statuses = Vec::with_capacity(open.len());
    for batch in open {
        statuses.push(store.batch_status(batch).await?);
    }
    let activity = store.port_activity(RECENT_ATTEMPTS).await?;
    let mut names: BTreeMap<i64, String> = statuses
        .iter()
        .map(|s| (s.batch.id, s.batch.name.clone()))
        .collect();
    let missing: BTreeSet<i64> = activity
        .iter()
        .map(|a| a.batch_id)
        .filter(|id| !names.contains_key(id))
        .collect();
    for id in missing {
        names.insert(id, store.batch_by_id(id).await?.name);
    }
    let mut boards = StationBoard::from_records(&statuses, &activity, &names);
    for board in &mut boards {
        if let Some(status) = statuses
            .iter()
            .find(|s| s.batch.station_id == board.station_id)
        {
            let (rate, eta) = pages::rate_and_eta(status);
            board.counters.units_per_minute = rate;
            board.counters.eta_seconds = eta;
        }
    }
    Ok(boards)
}

async fn boards(dashboard: &Dashboard) -> Result<Vec<StationBoard>, StoreError> {
    match &dashboard.live {
        Some(live) => Ok(vec![live.board()]),
        None => boards_from_records(&dashboard.store).await,
    }
}

async fn line_page(State(dashboard): Shared) -> Response {
    match boards(&dashboard).await {
        Ok(boards) => {
            let now = crate::clock::now();
            pages::line(&dashboard.frame(&now), &boards, "/events").into_response()
        }
        Err(e) => failed(&dashboard, &e),
    }
}

/// `GET /events`: the line page's live updates. From the daemon, each change as it happens;
/// from the database, the rows that changed since the last look, once a second.
async fn events(State(dashboard): Shared) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let mut stop = dashboard.stop.clone();
    let stopped = async move {
        let _ = stop.wait_for(|stopped| *stopped).await;
    };
    let stream = match &dashboard.live {
        Some(live) => BroadcastStream::new(live.subscribe())
            .map(|item| match item {
                Ok(json) => Ok(Event::default().event("swap").data(&*json)),
                Err(BroadcastStreamRecvError::Lagged(_)) => {
                    Ok(Event::default().event("reload").data("behind"))
                }
            })
            .boxed(),
        None => polled(Arc::clone(&dashboard)).boxed(),
    };
    Sse::new(stream.take_until(Box::pin(stopped))).keep_alive(KeepAlive::default())
}

/// The database's boards, looked at once a second, as swaps of what changed.
fn polled(dashboard: Arc<Dashboard>) -> impl Stream<Item = Result<Event, Infallible>> {
    let start = (dashboard, None::<BTreeMap<String, String>>);
    futures_util::stream::unfold(start, |(dashboard, seen)| async move {
        loop {
            if seen.is_some() {
                tokio::time::sleep(POLL).await;
            }
            let Ok(boards) = boards_from_records(&dashboard.store).await else {
                continue;
            };
            let mut fragments = BTreeMap::new();
            let mut swaps = Vec::new();
            for board in &boards {
                let station = board.station_id.as_str();
                let counters = (
                    dom_id("counters", station, ""),
                    None,
                    pages::counters(board).into_string(),
                );
                let rows = board.ports.iter().map(|(port, view)| {
                    (
                        dom_id("port", station, port),
                        Some(dom_id("ports", station, "")),
                        pages::port_row(station, view).into_string(),
                    )
                });
                for (id, parent, html) in std::iter::once(counters).chain(rows) {
                    let changed = seen.as_ref().is_some_and(|s| s.get(&id) != Some(&html));
                    if changed {
                        swaps.push(live::Swap {
                            id: id.clone(),
                            parent,
                            html: html.clone(),
                        });
                    }
                    fragments.insert(id, html);
                }
            }
            let Some(previous) = &seen else {
                // The page was rendered just before: only later changes are news.
                return Some((
                    futures_util::stream::iter(Vec::new()),
                    (dashboard, Some(fragments)),
                ));
            };
            let stations_changed = previous
                .keys()
                .filter(|id| id.starts_with("counters-"))
                .ne(fragments.keys().filter(|id| id.starts_with("counters-")));
            let events: Vec<Result<Event, Infallible>> = if stations_changed {
                vec![Ok(Event::default().event("reload").data("stations"))]
            } else {
                swaps
                    .iter()
                    .filter_map(|swap| serde_json::to_string(swap).ok())
                    .map(|json| Ok(Event::default().event("swap").data(json)))
                    .collect()
            };
            return Some((
                futures_util::stream::iter(events),
                (dashboard, Some(fragments)),
            ));
        }
    })
    .flatten()
}

/// `?name=` of the batch page.
#[derive(serde::Deserialize)]
struct BatchQuery {
    name: Option<String>,
}

async fn batch_page(State(dashboard): Shared, Query(query): Query<BatchQuery>) -> Response {
    let result = async {
        let batches = dashboard.store.batch_list().await?;
        let chosen: Option<Batch> = match &query.name {
            Some(name) => Some(dashboard.store.batch(name).await?),
            None => match dashboard.store.open_batch_of(&dashboard.station_id).await? {
                Some(open) => Some(open),
                None => batches.first().cloned(),
            },
        };
        let (status, minutes): (Option<BatchStatus>, _) = match chosen {
            Some(batch) => {
                let minutes = dashboard.store.batch_minutes(batch.id).await?;
                (Some(dashboard.store.batch_status(batch).await?), minutes)
            }
            None => (None, Vec::new()),
        };
        Ok::<_, StoreError>((status, minutes, batches))
    }
    .await;
    match result {
        Ok((status, minutes, batches)) => {
            let now = crate::clock::now();
            pages::batch(&dashboard.frame(&now), status.as_ref(), &minutes, &batches)
                .into_response()
        }
        Err(e) => failed(&dashboard, &e),
    }
}

/// `?q=` of the unit page: a MAC or a registration ID.
#[derive(serde::Deserialize)]
struct UnitQuery {
    q: Option<String>,
}

async fn unit_page(State(dashboard): Shared, Query(query): Query<UnitQuery>) -> Response {
    let now = crate::clock::now();
    let frame = dashboard.frame(&now);
    let Some(q) = query.q.as_deref().map(str::trim).filter(|q| !q.is_empty()) else {
        return pages::unit(&frame, None, None, &UnitFound::default()).into_response();
    };
    let shown = crate::support::bounded(q);
    let found = match find_unit(&dashboard.store, q).await {
        Ok(Ok(found)) => found,
        Ok(Err(problem)) => {
            return (
                StatusCode::BAD_REQUEST,
                pages::unit(&frame, Some(&shown), Some(&problem), &UnitFound::default()),
            )
                .into_response();
        }
        Err(e) => return failed(&dashboard, &e),
    };
    let status = if found.unit.is_none() && found.attempts.is_empty() {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::OK
    };
    (status, pages::unit(&frame, Some(&shown), None, &found)).into_response()
}

/// What is recorded about the unit `q` names; `Err(problem)` when `q` is neither a MAC nor a
/// registration ID.
async fn find_unit(store: &Store, q: &str) -> Result<Result<UnitFound, String>, StoreError> {
    let unit = match q.parse::<Mac>() {
        Ok(mac) => store.unit_by_mac(&mac).await?.map(Ok).unwrap_or(Err(mac)),
        Err(_) => match RegistrationId::new(q) {
            Ok(id) => match store.unit_by_registration_id(&id).await? {
                Some(unit) => Ok(unit),
                None => return Ok(Ok(UnitFound::default())),
            },
            Err(_) => {
                return Ok(Err(format!(
                    "`{}` is neither a MAC (24:0a:c4:12:34:56) nor a registration ID",
                    crate::support::bounded(q)
                )));
            }
        },
    };
    // A MAC with attempts but no unit row (every attempt failed before it was recorded).
    let (unit, mac) = match unit {
        Ok(unit) => (Some(unit.clone()), unit.mac),
        Err(mac) => (None, mac),
    };
    let attempts = store.attempts_of_mac(&mac).await?;
    let certificates = store.certificates_of(&mac).await?;
    let batch = match &unit {
        Some(unit) => Some(store.batch_by_id(unit.batch_id).await?.name),
        None => None,
    };
    let mac_text = mac.to_string();
    let mut subjects = vec![mac_text.as_str()];
    if let Some(unit) = &unit {
        subjects.push(unit.registration_id.as_str());
    }
    let written: Vec<(&str, i64)> = attempts
        .iter()
        .filter_map(|a| Some((a.station_id.as_str(), a.audit_seq?)))
        .collect();
    let audit = store
        .audit_entries_about(&subjects, &written, AUDIT_SHOWN)
        .await?;
    Ok(Ok(UnitFound {
        unit,
        batch,
        attempts,
        certificates,
        audit,
    }))
}

async fn qa_page(State(dashboard): Shared) -> Response {
    match dashboard.store.batch_list().await {
        Ok(batches) => {
            let now = crate::clock::now();
            pages::qa(&dashboard.frame(&now), &batches).into_response()
        }
        Err(e) => failed(&dashboard, &e),
    }
}

/// `?batch=&format=` of a manifest download.
#[derive(serde::Deserialize)]
struct ManifestQuery {
    batch: Option<String>,
    format: Option<String>,
}

/// `GET /qa/manifest`: the bytes `station export manifest` writes, audited the same way.
async fn manifest(State(dashboard): Shared, Query(query): Query<ManifestQuery>) -> Response {
    let format = match query.format.as_deref().unwrap_or("csv") {
        "csv" => ManifestFormat::Csv,
        "json" => ManifestFormat::Json,
        other => {
            let now = crate::clock::now();
            return (
                StatusCode::BAD_REQUEST,
                pages::problem(
                    &dashboard.frame(&now),
                    "No such format",
                    &format!(
                        "`{}` is no manifest format: ask for csv or json",
                        crate::support::bounded(other)
                    ),
                ),
            )
                .into_response();
        }
    };
    let filter = ManifestFilter {
        batch: query.batch.clone(),
        ..ManifestFilter::default()
    };
    let mut bytes = Vec::new();
    let export = dashboard
        .store
        .export_manifest(
            &filter,
            format,
            &dashboard.station_id,
            &dashboard.operator,
            &mut bytes,
        )
        .await;
    if let Err(e) = export {
        return failed(&dashboard, &e);
    }
    let name: String = query
        .batch
        .as_deref()
        .unwrap_or("all-batches")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let (content_type, extension) = match format {
        ManifestFormat::Csv => ("text/csv; charset=utf-8", "csv"),
        ManifestFormat::Json => ("application/json", "json"),
    };
    let disposition = format!("attachment; filename=\"manifest-{name}.{extension}\"");
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CONTENT_DISPOSITION,
                HeaderValue::from_str(&disposition)
                    .unwrap_or_else(|_| HeaderValue::from_static("attachment")),
            ),
        ],
        bytes,
    )
        .into_response()
}

async fn audit_page(State(dashboard): Shared) -> Response {
    let result = async {
        let chain = dashboard.store.verify_audit().await?;
        let mut latest = dashboard
            .store
            .audit_entries_of(None, Some(AUDIT_SHOWN))
            .await?;
        latest.reverse();
        Ok::<_, StoreError>((chain, latest))
    }
    .await;
    match result {
        Ok((chain, latest)) => {
            let now = crate::clock::now();
            pages::audit(&dashboard.frame(&now), &chain, &latest).into_response()
        }
        Err(e) => failed(&dashboard, &e),
    }
}
