//! The stylesheet and script, embedded in the binary: the dashboard fetches nothing from
//! anywhere but the station.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

/// The stylesheet's path; its query names the build's content, so a new station never serves
/// a browser's cached old copy.
pub const CSS_PATH: &str = concat!("/assets/dashboard.css?v=", env!("CARGO_PKG_VERSION"));
/// The script's path.
pub const JS_PATH: &str = concat!("/assets/dashboard.js?v=", env!("CARGO_PKG_VERSION"));

const CSS: &str = include_str!("assets/dashboard.css");
const JS: &str = include_str!("assets/dashboard.js");

fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

/// `GET /assets/dashboard.css`.
pub async fn css() -> Response {
    asset(CSS, "text/css; charset=utf-8")
}

/// `GET /assets/dashboard.js`.
pub async fn js() -> Response {
    asset(JS, "text/javascript; charset=utf-8")
}
