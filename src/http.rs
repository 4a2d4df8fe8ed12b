//! Who may open the supervisor dashboard (issue 16; `[http]` in `station.toml`): the access
//! token and the rule that decides whether a listen address needs one.
//!
//! The dashboard is read-only, but it shows a factory's output and offers its manifests, so
//! only loopback is served without a token. On any other address the station refuses to start
//! unless `[http] token_file` names a file that holds the token, with the same rules as a group
//! key file: a regular file, owner-only (0600), read once. A request then proves it holds the
//! token with `Authorization: Bearer <token>` or with the session cookie the login form sets.
//! The cookie carries an HMAC of the token, never the token itself, so that no response header
//! ever holds a secret; both are compared in constant time.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use hmac::{KeyInit as _, Mac as _};
use subtle::ConstantTimeEq as _;
use zeroize::Zeroizing;

/// The largest token file read.
const TOKEN_FILE_LIMIT: u64 = 4 << 10;

/// The fewest characters a token may have: guessing it must be out of reach.
pub const MIN_TOKEN_CHARS: usize = 16;

/// What the session cookie's value is derived from, with the token as key.
const SESSION_LABEL: &[u8] = b"station dashboard session v1";

/// Errors of the dashboard's access rules and of its listening socket.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum HttpError {
    /// A non-loopback listen address without a token.
    #[error("the dashboard would listen on {addr}, which is not loopback, without an access token")]
    #[diagnostic(
        code(station::http::token_required),
        help(
            "Anyone on the network could read the line's records. Put a random token of at least 16 characters in a file, `chmod 600` it and name it in station.toml as [http] token_file = \"secrets/dashboard.token\"; or listen on 127.0.0.1."
        )
    )]
    TokenRequired {
        /// The address asked for.
        addr: SocketAddr,
    },
    /// The token file could not be read.
    #[error("cannot read dashboard token file {path}: {source}")]
    #[diagnostic(
        code(station::http::token_unreadable),
        help(
            "Check [http] token_file in station.toml; relative paths resolve against the directory holding station.toml."
        )
    )]
    TokenUnreadable {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The token file may be read by other users.
    #[error("dashboard token file {path} is readable by {who} (mode {mode:04o})")]
    #[diagnostic(
        code(station::http::token_exposed),
        help(
            "Whoever reads the token can open the dashboard and download manifests. Run `chmod 600 {path}` and make sure the station's user owns it."
        )
    )]
    TokenExposed {
        /// The file.
        path: String,
        /// `group`, `others` or `group and others`.
        who: &'static str,
        /// The permission bits found.
        mode: u32,
    },
    /// The token is empty, too short or not one line of printable text.
    #[error("dashboard token file {path} {problem}")]
    #[diagnostic(
        code(station::http::bad_token),
        help(
            "Put one line of at least 16 printable characters in the file, e.g. the output of `openssl rand -base64 32`."
        )
    )]
    BadToken {
        /// The file.
        path: PathBuf,
        /// What is wrong (never any of its contents).
        problem: String,
    },
    /// The listening socket could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    #[diagnostic(
        code(station::http::bind),
        help(
            "Another program (or another station) may use that port: choose another with --listen/--http ADDR, e.g. 127.0.0.1:8081."
        )
    )]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

impl HttpError {
    /// True for the station's own setup (the token, the address): exit code 2.
    pub fn is_usage_error(&self) -> bool {
        !matches!(self, HttpError::Bind { .. })
    }
}

/// The dashboard's access token: never printed, zeroized when dropped.
pub struct Token(Zeroizing<String>);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token([redacted])")
    }
}

impl Token {
    /// Reads and checks a token file: a regular file, owner-only, one line of at least
    /// [`MIN_TOKEN_CHARS`] printable ASCII characters (surrounding whitespace is ignored).
    pub fn load(path: &Path) -> Result<Token, HttpError> {
        let unreadable = |source| HttpError::TokenUnreadable {
            path: path.to_owned(),
            source,
        };
        let opened = crate::file::open_regular(path, TOKEN_FILE_LIMIT).map_err(unreadable)?;
        if let Some((who, mode)) = crate::file::readable_by(&opened.metadata) {
            return Err(HttpError::TokenExposed {
                path: path.display().to_string(),
                who,
                mode,
            });
        }
        let raw = Zeroizing::new(opened.read().map_err(unreadable)?);
        Token::from_text(&raw, path)
    }

    /// Checks token text as read from `path` (named in errors, never the text).
    pub fn from_text(raw: &[u8], path: &Path) -> Result<Token, HttpError> {
        let bad = |problem: &str| HttpError::BadToken {
            path: path.to_owned(),
            problem: problem.to_owned(),
        };
        let text = std::str::from_utf8(raw).map_err(|_| bad("is not text"))?;
        let text = text.trim();
        if text.is_empty() {
            return Err(bad("is empty"));
        }
        if text.contains(['\n', '\r']) {
            return Err(bad("holds more than one line"));
        }
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad(
                "holds spaces, control or non-ASCII characters (a token is sent in HTTP headers)",
            ));
        }
        if text.len() < MIN_TOKEN_CHARS {
            return Err(HttpError::BadToken {
                path: path.to_owned(),
                problem: format!(
                    "holds {} characters; at least {MIN_TOKEN_CHARS} are required",
                    text.len()
                ),
            });
        }
        Ok(Token(Zeroizing::new(text.to_owned())))
    }

    /// Whether `presented` is the token (constant time).
    pub fn matches(&self, presented: &str) -> bool {
        bool::from(self.0.as_bytes().ct_eq(presented.as_bytes()))
    }

    /// The session cookie's value: HMAC-SHA256 of a fixed label under the token, hex. It
    /// proves the login without carrying the token.
    pub fn session(&self) -> String {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(self.0.as_bytes())
            .expect("HMAC takes a key of any length");
        mac.update(SESSION_LABEL);
        hex::encode(mac.finalize().into_bytes())
    }

    /// Whether `presented` is the session cookie's value (constant time).
    pub fn session_matches(&self, presented: &str) -> bool {
        bool::from(self.session().as_bytes().ct_eq(presented.as_bytes()))
    }
}

/// The token a listen address needs: none on loopback (unless one is configured, which is
/// then required too), the configured one elsewhere, and a refusal when there is none.
pub fn access_for(addr: SocketAddr, token_file: Option<&Path>) -> Result<Option<Token>, HttpError> {
    match token_file {
        Some(path) => Token::load(path).map(Some),
        None if addr.ip().is_loopback() => Ok(None),
        None => Err(HttpError::TokenRequired { addr }),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    const TOKEN: &str = "c2VjcmV0LWRhc2hib2FyZC10b2tlbg";

    fn token_file(dir: &Path, text: &str, mode: u32) -> PathBuf {
        let path = dir.join("dashboard.token");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    fn code(error: &HttpError) -> String {
        miette::Diagnostic::code(error).unwrap().to_string()
    }

    #[test]
    fn loopback_needs_no_token_and_other_addresses_do() {
        let loopback: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert!(access_for(loopback, None).unwrap().is_none());
        let v6: SocketAddr = "[::1]:8080".parse().unwrap();
        assert!(access_for(v6, None).unwrap().is_none());
        for addr in ["0.0.0.0:8080", "192.168.1.10:8080", "[::]:8080"] {
            let error = access_for(addr.parse().unwrap(), None).unwrap_err();
            assert_eq!(code(&error), "station::http::token_required", "{addr}");
            assert!(error.is_usage_error());
        }
    }

    #[test]
    fn a_token_file_follows_the_key_file_rules() {
        let dir = tempfile::tempdir().unwrap();
        let good = token_file(dir.path(), &format!("{TOKEN}\n"), 0o600);
        let token = Token::load(&good).unwrap();
        assert!(token.matches(TOKEN));
        assert!(!token.matches(&TOKEN[1..]));
        assert!(!token.matches(""));
        let exposed = token_file(dir.path(), TOKEN, 0o644);
        assert_eq!(
            code(&Token::load(&exposed).unwrap_err()),
            "station::http::token_exposed"
        );
        for (text, problem) in [
            ("", "is empty"),
            ("short", "16 are required"),
            ("two\nlines-of-token-text", "more than one line"),
            ("with spaces in the token", "spaces"),
        ] {
            let path = token_file(dir.path(), text, 0o600);
            let error = Token::load(&path).unwrap_err();
            assert_eq!(code(&error), "station::http::bad_token", "{text:?}");
            assert!(error.to_string().contains(problem), "{error}");
        }
        let missing = Token::load(&dir.path().join("absent")).unwrap_err();
        assert_eq!(code(&missing), "station::http::token_unreadable");
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRUSR).unwrap();
        assert_eq!(
            code(&Token::load(&fifo).unwrap_err()),
            "station::http::token_unreadable"
        );
    }

    #[test]
    fn the_token_is_never_shown_and_the_session_does_not_carry_it() {
        let token = Token::from_text(TOKEN.as_bytes(), Path::new("t")).unwrap();
        assert_eq!(format!("{token:?}"), "Token([redacted])");
        let session = token.session();
        assert!(!session.contains(TOKEN));
        assert_eq!(session.len(), 64);
        assert!(token.session_matches(&session));
        assert!(!token.session_matches(TOKEN));
        let other = Token::from_text(b"another-token-of-some-length", Path::new("t")).unwrap();
        assert_ne!(other.session(), session);
        let error = Token::from_text(b"too-short", Path::new("t")).unwrap_err();
        assert!(!error.to_string().contains("too-short"));
    }
}
