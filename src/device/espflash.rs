//! [`EspflashDevice`]: the async shell around the blocking session. espflash is blocking, so
//! every stage runs inside [`tokio::task::spawn_blocking`] with the session moved into the task
//! and back, bounded by [`SerialSettings::stage_timeout`] if one is set. A call the timeout
//! abandons still holds the port until espflash gives up on it; the next session on that port
//! waits for it to let go instead of failing `port_busy`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::plan::check_regions;
use super::session::Session;
use super::{
    Device, DeviceError, DeviceIdentity, Operation, ProgressSender, Region, SerialSettings,
    WriteReport,
};
use crate::support::lock;

/// How long a new session waits for a port whose previous call a stage timeout abandoned:
/// longer than espflash's longest command timeout for a region the station writes.
const RELEASE_WAIT: Duration = Duration::from_secs(120);

/// Ports whose blocking call a stage timeout abandoned, each with a flag that turns true once
/// the call has ended and its session (and so the port and its lock) has been dropped.
static HELD: LazyLock<Mutex<HashMap<PathBuf, watch::Receiver<bool>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// Marks `port` held until `task` ends; the task's result (the session) is dropped then,
/// closing the port.
fn abandon<T: Send + 'static>(port: &Path, task: tokio::task::JoinHandle<T>) {
    let (done, held) = watch::channel(false);
    lock(&HELD).insert(port.to_owned(), held);
    tokio::spawn(async move {
        drop(task.await);
        let _ = done.send(true);
    });
}

/// Waits (at most [`RELEASE_WAIT`]) until no abandoned call holds `port`.
async fn released(port: &Path) {
    let held = lock(&HELD).get(port).cloned();
    let Some(mut held) = held else {
        return;
    };
    tracing::debug!(port = %port.display(), "waiting for an abandoned call to release the port");
    let _ = tokio::time::timeout(RELEASE_WAIT, held.wait_for(|done| *done)).await;
    let mut map = lock(&HELD);
    if map.get(port).is_some_and(|h| *h.borrow()) {
        map.remove(port);
    }
}

/// A [`Device`] driven over espflash's connection (see the module documentation of
/// [`crate::device`]).
#[derive(Debug)]
pub struct EspflashDevice {
    port: PathBuf,
    settings: SerialSettings,
    session: Option<Session>,
    flash_size: Option<u32>,
}

impl EspflashDevice {
    /// A device on `port`; nothing is opened until [`Device::connect`].
    pub fn new(port: impl Into<PathBuf>, settings: SerialSettings) -> Self {
        EspflashDevice {
            port: port.into(),
            settings,
            session: None,
            flash_size: None,
        }
    }

    /// The settings it was made with.
    pub fn settings(&self) -> &SerialSettings {
        &self.settings
    }

    /// Runs `f` on the session in a blocking task, then puts the session back.
    async fn with_session<T, F>(&mut self, during: Operation, f: F) -> Result<T, DeviceError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Session) -> Result<T, DeviceError> + Send + 'static,
    {
        let mut session = self.take_session()?;
        let (session, result) = self
            .blocking(during, move || {
                let result = f(&mut session);
                (session, result)
            })
            .await?;
        self.session = Some(session);
        result
    }

    /// Runs `f` on the session in a blocking task that consumes it: the session ends there.
    async fn end_session<T, F>(&mut self, during: Operation, f: F) -> Result<T, DeviceError>
    where
        T: Send + 'static,
        F: FnOnce(Session) -> T + Send + 'static,
    {
        let session = self.take_session()?;
        self.flash_size = None;
        self.blocking(during, move || f(session)).await
    }

    fn take_session(&mut self) -> Result<Session, DeviceError> {
        self.session
            .take()
            .ok_or_else(|| DeviceError::NotConnected {
                port: self.port.clone(),
            })
    }

    /// Runs `f` in a blocking task and awaits it (see [`Self::join`]). The blocking thread logs
    /// inside the caller's span (the unit's port, MAC, ...).
    async fn blocking<T, F>(&self, during: Operation, f: F) -> Result<T, DeviceError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let span = tracing::Span::current();
        let task = tokio::task::spawn_blocking(move || {
            let _unit = span.enter();
            f()
        });
        self.join(during, task).await
    }

    /// Awaits a blocking task, bounded by the stage timeout if one is set. A task the timeout
    /// abandons keeps the port open (and locked) until espflash's own timeouts end its call:
    /// the port is marked held until then, and the next session on it waits ([`released`]).
    async fn join<T: Send + 'static>(
        &self,
        during: Operation,
        mut task: tokio::task::JoinHandle<T>,
    ) -> Result<T, DeviceError> {
        let joined = match self.settings.stage_timeout {
            Some(limit) => match tokio::time::timeout(limit, &mut task).await {
                Ok(joined) => joined,
                Err(_) => {
                    abandon(&self.port, task);
                    return Err(DeviceError::Stalled {
                        port: self.port.clone(),
                        during,
                        limit,
                    });
                }
            },
            None => task.await,
        };
        joined.map_err(|e| DeviceError::Espflash {
            port: self.port.clone(),
            during,
            detail: format!("the blocking task failed: {e}"),
        })
    }
}

impl Device for EspflashDevice {
    type Console = tokio_serial::SerialStream;

    fn port(&self) -> &Path {
        &self.port
    }

    async fn connect(&mut self) -> Result<(), DeviceError> {
        // A second connect starts a fresh session.
        self.session = None;
        released(&self.port).await;
        self.flash_size = None;
        let port = self.port.clone();
        let settings = self.settings.clone();
        let session = self
            .blocking(Operation::Connecting, move || {
                Session::connect(&port, &settings)
            })
            .await??;
        self.flash_size = Some(session.flash_size());
        self.session = Some(session);
        Ok(())
    }

    async fn identify(&mut self) -> Result<DeviceIdentity, DeviceError> {
        self.with_session(Operation::Identifying, Session::identify)
            .await
    }

    async fn write(
        &mut self,
        regions: Vec<Region>,
        progress: Option<ProgressSender>,
    ) -> Result<WriteReport, DeviceError> {
        check_regions(&regions, self.flash_size)?;
        if regions.is_empty() {
            return Ok(WriteReport::default());
        }
        self.with_session(Operation::Writing, move |session| {
            session.write(&regions, &mut |event| {
                if let Some(sender) = &progress {
                    // A receiver that went away only means nobody watches the progress.
                    let _ = sender.send(event);
                }
            })
        })
        .await
    }

    async fn md5(&mut self, offset: u32, len: u32) -> Result<[u8; 16], DeviceError> {
        self.with_session(Operation::Verifying, move |session| {
            session.md5(offset, len)
        })
        .await
    }

    async fn reset(&mut self) -> Result<(), DeviceError> {
        // The session is over either way: the port closes when the task ends.
        self.end_session(Operation::Resetting, Session::reset)
            .await?
    }

    async fn boot(&mut self, baud: u32) -> Result<Self::Console, DeviceError> {
        let serial = self
            .end_session(Operation::Resetting, move |session| session.boot(baud))
            .await??;
        // The same open port, now read asynchronously; its exclusive lock stays held.
        tokio_serial::SerialStream::try_from(serial).map_err(|e| DeviceError::ResetFailed {
            port: self.port.clone(),
            detail: format!("cannot read the port asynchronously: {e}"),
        })
    }

    async fn release(&mut self) {
        if self.session.is_some() {
            let _ = self
                .end_session(Operation::Resetting, Session::release)
                .await;
        }
    }
}
