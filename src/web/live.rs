//! The line as the daemon sees it, shared with the dashboard (`station run --http`): the
//! daemon's events update one [`StationBoard`], and every change goes out once, rendered, to
//! every browser subscribed to live events.
//!
//! The daemon never waits for a browser: events reach this module through the daemon's own
//! unbounded channel ([`tee`]), each change is rendered once whatever the number of
//! subscribers, and a subscriber that falls behind the broadcast buffer is told to reload
//! instead of slowing anyone down.

use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use super::board::{Change, StationBoard};
use super::{dom_id, pages};
use crate::line::LineEvent;
use crate::record::Batch;
use crate::support::lock;

/// How many rendered changes a slow subscriber may fall behind before it is told to reload.
const BACKLOG: usize = 1024;

/// One rendered change for the browsers: the element's id, the fragment replacing it and,
/// for a new row, the element it is appended to.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Swap {
    /// The element's id.
    pub id: String,
    /// Where a new element goes.
    pub parent: Option<String>,
    /// Its HTML, rendered by the same function as the page.
    pub html: String,
}

/// The daemon's station, shared between the event loop and the web server.
#[derive(Debug)]
pub struct LiveLine {
    board: Mutex<StationBoard>,
    swaps: broadcast::Sender<Arc<str>>,
}

impl LiveLine {
    /// An empty board of `station_id` working on `batch`.
    pub fn new(station_id: &str, batch: &Batch) -> Arc<LiveLine> {
        Arc::new(LiveLine {
            board: Mutex::new(StationBoard::new(station_id, Some(batch))),
            swaps: broadcast::channel(BACKLOG).0,
        })
    }

    /// The board as it is now.
    pub fn board(&self) -> StationBoard {
        lock(&self.board).clone()
    }

    /// A new subscriber's receiver of rendered swaps (JSON of [`Swap`]).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.swaps.subscribe()
    }

    /// How many browsers are subscribed.
    pub fn subscribers(&self) -> usize {
        self.swaps.receiver_count()
    }

    /// Applies one daemon event and sends what it changed to the subscribers.
    pub fn apply(&self, event: &LineEvent) {
        let now = crate::clock::now();
        let swaps: Vec<Swap> = {
            let mut board = lock(&self.board);
            let changes = board.apply(event, &now);
            if self.swaps.receiver_count() == 0 {
                return;
            }
            changes
                .into_iter()
                .filter_map(|change| render(&board, &change))
                .collect()
        };
        for swap in swaps {
            if let Ok(json) = serde_json::to_string(&swap) {
                // No subscriber left is no error: the next one starts from the page.
                let _ = self.swaps.send(Arc::from(json));
            }
        }
    }
}

/// The fragment a change re-renders.
fn render(board: &StationBoard, change: &Change) -> Option<Swap> {
    let station = board.station_id.as_str();
    match change {
        Change::Counters => Some(Swap {
            id: dom_id("counters", station, ""),
            parent: None,
            html: pages::counters(board).into_string(),
        }),
        Change::Port(port) => board.ports.get(port).map(|view| Swap {
            id: dom_id("port", station, port),
            parent: Some(dom_id("ports", station, "")),
            html: pages::port_row(station, view).into_string(),
        }),
    }
}

/// Passes the daemon's events through `live` on their way to the terminal view: returns the
/// receiver the view reads instead of the daemon's.
pub fn tee(
    live: Arc<LiveLine>,
    mut events: UnboundedReceiver<LineEvent>,
) -> UnboundedReceiver<LineEvent> {
    let (forward, receiver) = unbounded_channel();
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            live.apply(&event);
            if forward.send(event).is_err() {
                break;
            }
        }
    });
    receiver
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Stage;

    fn batch() -> Batch {
        Batch {
            id: 1,
            name: "WO-1".to_owned(),
            station_id: "st1".to_owned(),
            target: 5,
            operator: "ana".to_owned(),
            opened_at: "2026-12-01T08:00:00.000Z".to_owned(),
            closed_at: None,
            closed_by: None,
        }
    }

    #[tokio::test]
    async fn a_subscriber_receives_the_rendered_row_of_each_change() {
        let live = LiveLine::new("st1", &batch());
        // Nobody listens yet: the board still follows.
        live.apply(&LineEvent::PortUp {
            port: "/dev/ttyUSB0".to_owned(),
        });
        let mut rx = live.subscribe();
        assert_eq!(live.subscribers(), 1);
        live.apply(&LineEvent::Stage {
            port: "/dev/ttyUSB0".to_owned(),
            stage: Stage::Flash,
        });
        let swap: serde_json::Value = serde_json::from_str(&rx.recv().await.unwrap()).unwrap();
        assert_eq!(swap["id"], dom_id("port", "st1", "/dev/ttyUSB0"));
        assert_eq!(swap["parent"], dom_id("ports", "st1", ""));
        let html = swap["html"].as_str().unwrap();
        assert!(html.contains(r#"data-state="flash""#), "{html}");
        assert_eq!(live.board().ports["/dev/ttyUSB0"].state(), "flash");
    }
}
