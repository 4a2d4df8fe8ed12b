//! `station serve` and the dashboard `station run --http` and `station demo` serve beside the
//! line (issue 16): the access check, the listening socket, the printed URL.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::unit::wait_for_shutdown;
use super::{OK, ServeArgs, open_store, operator};
use crate::config::Config;
use crate::error::Result;
use crate::store::Store;
use crate::web::live::LiveLine;
use crate::web::{self, Dashboard};

/// A dashboard serving in the background.
pub(super) struct Server {
    /// Where it listens.
    pub(super) addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    /// Checks the access rule for `addr` (a token off loopback), binds it and starts serving
    /// `store`, live from `live` when given. Nothing is served when the check fails.
    pub(super) async fn start(
        config: &Config,
        addr: SocketAddr,
        store: Store,
        live: Option<Arc<LiveLine>>,
    ) -> Result<Server> {
        let token = crate::http::access_for(addr, config.http.token_file.as_deref())?;
        let mut dashboard = Dashboard::new(store, &config.station.id, &operator(None), token);
        if let Some(live) = live {
            dashboard = dashboard.with_live(live);
        }
        let listener = web::bind(addr).await?;
        let addr = listener.local_addr().unwrap_or(addr);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(web::serve(listener, dashboard, async move {
            let _ = stopped.await;
        }));
        tracing::info!(%addr, "dashboard serving");
        Ok(Server { addr, stop, task })
    }

    /// The dashboard's address for a browser.
    pub(super) fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Stops serving: open pages' event streams end, requests in progress finish.
    pub(super) async fn stop(self) {
        let _ = self.stop.send(());
        match self.task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "the dashboard stopped with an error"),
            Err(e) => tracing::warn!(error = %e, "the dashboard's task failed"),
        }
    }
}

/// Says where the dashboard is: on stdout, or on stderr when stdout carries JSON.
pub(super) fn announce(server: &Server, json: bool) {
    let line = format!("dashboard: {}", server.url());
    if json {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
}

/// `station serve`: the dashboard from the database alone, until SIGINT/SIGTERM.
pub(super) async fn serve(config: Config, args: ServeArgs, json: bool) -> Result<u8> {
    let store = open_store(&config).await?;
    let server = Server::start(&config, args.listen, store.clone(), None).await?;
    if json {
        super::print_json(&serde_json::json!({ "url": server.url() }));
    } else {
        println!("dashboard: {} (read-only; Ctrl-C stops it)", server.url());
    }
    wait_for_shutdown().await;
    server.stop().await;
    store.close().await;
    Ok(OK)
}
