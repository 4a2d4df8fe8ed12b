//! Turning espflash's errors into the station's stable [`DeviceError`]s.

use std::path::Path;

use super::error::{DeviceError, Operation};
use crate::support::error_chain;

/// Maps an espflash error to a stable [`DeviceError`].
///
/// espflash 4.7 keeps its connection and ROM error types private; they reach us boxed inside
/// `Error::Connection`, `Error::Flashing` and `Error::RomError`. The classification therefore
/// walks the source chain for the public `std::io::Error` / `serialport::Error` underneath
/// and, for timeouts and ROM errors, reads the command name from their messages ("Timeout while
/// running FlashDeflData command", "Error while running FlashMd5 command"). espflash is pinned
/// to =4.7.0, and the integration tests against the simulator pin these texts down.
pub(crate) fn classify(error: espflash::Error, port: &Path, during: Operation) -> DeviceError {
    let port = port.to_owned();
    let chain = error_chain(&error);
    if let espflash::Error::ChipMismatch(expected, found) = &error {
        return DeviceError::WrongChip {
            port,
            expected: expected.clone(),
            found: found.clone(),
        };
    }
    if is_disconnect(&error) || !port.exists() {
        return DeviceError::Unplugged { port, during };
    }
    let timed_out = command_in(&chain, "Timeout while running ")
        .or_else(|| is_io_timeout(&error).then_some(None));
    if let Some(command) = timed_out {
        return DeviceError::Timeout {
            port,
            command: command.unwrap_or_else(|| "a command".to_owned()),
            during,
        };
    }
    match &error {
        espflash::Error::RomError(_) => {
            let command = command_in(&chain, "Error while running ")
                .flatten()
                .unwrap_or_else(|| "a command".to_owned());
            DeviceError::Rejected {
                port,
                command,
                during,
                detail: chain.last().cloned().unwrap_or_default(),
            }
        }
        espflash::Error::Connection(_)
            if during == Operation::Connecting
                && chain.iter().any(|m| {
                    m.contains("Failed to connect to the device")
                        || m.contains("getting no sync reply")
                        || m.contains("Wrong boot mode")
                }) =>
        {
            DeviceError::NoSync { port }
        }
        espflash::Error::ChipDetectError(detail) | espflash::Error::InvalidResponse(detail) => {
            DeviceError::Protocol {
                port,
                during,
                detail: detail.clone(),
            }
        }
        espflash::Error::IncorrectResponse
        | espflash::Error::FlashConnect
        | espflash::Error::UnsupportedFlash(_) => DeviceError::Protocol {
            port,
            during,
            detail: chain.join(": "),
        },
        _ if chain.iter().any(|m| {
            m.contains("stub handshake") || m.contains("SLIP framing") || m.contains("too large")
        }) =>
        {
            DeviceError::Protocol {
                port,
                during,
                detail: chain.join(": "),
            }
        }
        _ => DeviceError::Espflash {
            port,
            during,
            detail: chain.join(": "),
        },
    }
}

/// Finds `prefix<Command> command` in the chain: `Some(Some(name))` with a name, `Some(None)`
/// without one, `None` if no message has the prefix.
fn command_in(chain: &[String], prefix: &str) -> Option<Option<String>> {
    chain.iter().find_map(|message| {
        let rest = message.strip_prefix(prefix)?;
        let name = rest.strip_suffix("command")?.trim();
        Some((!name.is_empty()).then(|| name.to_owned()))
    })
}

/// Whether the error chain says the port hung up or vanished.
fn is_disconnect(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io_says_gone(io)
        {
            return true;
        }
        if let Some(serial) = e.downcast_ref::<serialport::Error>() {
            let gone = match serial.kind() {
                serialport::ErrorKind::NoDevice => true,
                serialport::ErrorKind::Io(kind) => io_kind_says_gone(kind),
                _ => serial.description.contains("I/O error"),
            };
            if gone {
                return true;
            }
        }
        // espflash's private `DeviceNotFound`, raised when the port reports "no device".
        if e.to_string() == "Serial port not found" {
            return true;
        }
        current = e.source();
    }
    false
}

/// Whether a read timeout surfaces as a bare `std::io::Error` in the chain.
fn is_io_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        current = e.source();
    }
    false
}

fn io_says_gone(io: &std::io::Error) -> bool {
    const EIO: i32 = 5;
    const ENXIO: i32 = 6;
    const ENODEV: i32 = 19;
    io_kind_says_gone(io.kind())
        || matches!(io.raw_os_error(), Some(EIO | ENXIO | ENODEV))
        || io.to_string().contains("I/O error")
}

fn io_kind_says_gone(kind: std::io::ErrorKind) -> bool {
    use std::io::ErrorKind;
    matches!(
        kind,
        ErrorKind::BrokenPipe
            | ErrorKind::UnexpectedEof
            | ErrorKind::NotConnected
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified_from_their_chain_not_the_path() {
        // A path that exists, so only the error chain can tell.
        let port = Path::new("/");
        let hung_up = espflash::Error::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(matches!(
            classify(hung_up, port, Operation::Writing),
            DeviceError::Unplugged {
                during: Operation::Writing,
                ..
            }
        ));
        let timed_out = espflash::Error::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert!(matches!(
            classify(timed_out, port, Operation::Verifying),
            DeviceError::Timeout { command, .. } if command == "a command"
        ));
        let mismatch = espflash::Error::ChipMismatch("esp32".into(), "esp32s3".into());
        assert!(matches!(
            classify(mismatch, port, Operation::Connecting),
            DeviceError::WrongChip { .. }
        ));
    }

    #[test]
    fn command_names_are_read_from_messages() {
        let chain = vec![
            "Communication error while flashing device".to_owned(),
            "Timeout while running FlashDeflData command".to_owned(),
        ];
        assert_eq!(
            command_in(&chain, "Timeout while running "),
            Some(Some("FlashDeflData".to_owned()))
        );
        assert_eq!(
            command_in(
                &["Timeout while running command".to_owned()],
                "Timeout while running "
            ),
            Some(None)
        );
        assert_eq!(command_in(&chain, "Error while running "), None);
    }
}
