//! Reading the CA's files: owner-only permissions for secrets, and PEM blocks sorted by kind.

use std::path::Path;

use zeroize::Zeroizing;

use super::X509Error;

/// The largest certificate, chain or key file the station reads: a long chain of RSA-4096
/// certificates is a few tens of kilobytes.
pub const CA_FILE_LIMIT: u64 = 1 << 20;

/// Reads a file holding a secret (the CA key, its passphrase): the path is opened once and the
/// opened file checked (a regular file within [`CA_FILE_LIMIT`], readable by its owner only)
/// before its contents are read. The bytes are zeroized when dropped.
pub(super) fn read_secret(
    what: &'static str,
    path: &Path,
) -> Result<Zeroizing<Vec<u8>>, X509Error> {
    let opened = crate::file::open_regular(path, CA_FILE_LIMIT).map_err(unreadable(what, path))?;
    check_permissions(what, &opened.metadata, path)?;
    let bytes = Zeroizing::new(opened.read().map_err(unreadable(what, path))?);
    not_empty(what, path, &bytes)?;
    Ok(bytes)
}

/// Reads a file (a regular file within [`CA_FILE_LIMIT`]), naming it in the error.
pub(super) fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, X509Error> {
    let bytes = crate::file::read_regular(path, CA_FILE_LIMIT).map_err(unreadable(what, path))?;
    not_empty(what, path, &bytes)?;
    Ok(bytes)
}

fn unreadable<'a>(what: &'static str, path: &'a Path) -> impl Fn(std::io::Error) -> X509Error + 'a {
    move |source| X509Error::Unreadable {
        what,
        path: path.to_owned(),
        source,
    }
}

fn not_empty(what: &'static str, path: &Path, bytes: &[u8]) -> Result<(), X509Error> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(X509Error::Empty {
            what,
            path: path.to_owned(),
        });
    }
    Ok(())
}

/// The PEM blocks of a certificate file, in order. Text around the blocks (an `openssl x509 -text` dump,
/// a comment) is ignored, as OpenSSL ignores it.
pub(super) fn pem_blocks(
    what: &'static str,
    path: &Path,
    text: &[u8],
) -> Result<Vec<pem::Pem>, X509Error> {
    let blocks = pem::parse_many(text).map_err(|error| X509Error::BadCertificate {
        what,
        path: path.to_owned(),
        index: 1,
        problem: format!("malformed PEM: {error}"),
    })?;
    if blocks.is_empty() {
        return Err(X509Error::NotPem {
            what,
            path: path.to_owned(),
        });
    }
    Ok(blocks)
}

/// What a PEM label names, in words an operator recognises.
pub(super) fn describe_label(label: &str) -> String {
    match label {
        "CERTIFICATE" | "TRUSTED CERTIFICATE" | "X509 CERTIFICATE" => "certificate".to_owned(),
        "PRIVATE KEY" | "EC PRIVATE KEY" | "RSA PRIVATE KEY" | "ENCRYPTED PRIVATE KEY" => {
            "private key".to_owned()
        }
        "PUBLIC KEY" | "RSA PUBLIC KEY" => "public key".to_owned(),
        "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST" => {
            "certificate signing request".to_owned()
        }
        other => format!("`{other}` PEM block"),
    }
}

/// True for the labels of private keys, encrypted or not.
pub(super) fn is_private_key_label(label: &str) -> bool {
    matches!(
        label,
        "PRIVATE KEY" | "EC PRIVATE KEY" | "RSA PRIVATE KEY" | "ENCRYPTED PRIVATE KEY"
    )
}

/// The group key file's permission check, reported as this module's error.
fn check_permissions(
    what: &'static str,
    metadata: &std::fs::Metadata,
    path: &Path,
) -> Result<(), X509Error> {
    crate::keys::check_permissions(metadata, path).map_err(|error| match error {
        crate::keys::KeyError::Exposed { path, who, mode } => X509Error::Exposed {
            what,
            path,
            who,
            mode,
        },
        other => X509Error::Unreadable {
            what,
            path: path.to_owned(),
            source: std::io::Error::other(other.to_string()),
        },
    })
}
