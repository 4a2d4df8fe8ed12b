//! The files the station reads by name and the files it writes: one way to do each.
//!
//! [`read_regular`] (or [`open_regular`], to check the opened file before reading it) reads a file a configuration or a command names (a key file, `station.toml`,
//! a root CA, a firmware image): it opens the path once, checks *the opened file* (a regular
//! file, not larger than the caller's limit), and reads at most that much, so a FIFO, a device
//! node or a file swapped between a check and the read cannot hang or flood the station.
//!
//! [`PrivateFile`] writes a file readable by its owner only (mode 0600) atomically: the bytes go
//! to a temporary file with an unpredictable name, created with `O_EXCL` in the target's own
//! directory (so a symlink planted there is never followed and the rename stays on one file
//! system), which is synced and renamed over the target on [`PrivateFile::commit`]. A reader
//! sees the old file or the whole new one, never half; on any failure, or when the writer is
//! dropped uncommitted, the temporary file is removed. A target that exists and is not a
//! regular file (a directory, a device node, a FIFO, a symlink) is refused before anything is
//! written.

use std::fs::{File, Metadata};
use std::io::{self, Read as _, Write};
use std::path::{Path, PathBuf};

/// A file operation that failed, with what the station was doing and on which path.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error("{action} {path}: {source}")]
#[diagnostic(
    code(station::io),
    help("Check that the path exists and that the station's user may read and write it.")
)]
pub struct FileError {
    /// What the station was doing (`reading`, `writing`, ...).
    pub action: &'static str,
    /// The file concerned, as shown to the operator.
    pub path: String,
    /// The operating system's error.
    #[source]
    pub source: io::Error,
}

impl FileError {
    /// Wraps an I/O error with the action and path it concerns.
    pub fn new(action: &'static str, path: impl AsRef<Path>, source: io::Error) -> FileError {
        FileError {
            action,
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}

/// A named file opened by [`open_regular`]: a regular file of at most its limit, not yet read.
#[derive(Debug)]
pub struct Opened {
    file: File,
    limit: u64,
    /// The metadata of the opened file (not of whatever the path names later): its mode and
    /// owner can be checked before its contents are read.
    pub metadata: Metadata,
}

impl Opened {
    /// Reads the contents, at most the limit even if the file grows meanwhile.
    pub fn read(self) -> io::Result<Vec<u8>> {
        let mut bytes = Vec::with_capacity(usize::try_from(self.metadata.len()).unwrap_or(0));
        self.file.take(self.limit + 1).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > self.limit {
            return Err(too_large(self.limit));
        }
        Ok(bytes)
    }
}

impl Opened {
    /// The opened file itself, for a caller that reads it in pieces (never more than the limit
    /// it was opened with: wrap it in [`std::io::Read::take`]).
    pub fn into_file(self) -> File {
        self.file
    }
}

/// Opens a named file that must be a regular file of at most `limit` bytes.
///
/// The path is opened once, without blocking (a FIFO with no writer would otherwise hang the
/// open), and the checks apply to the opened file. Errors are [`io::Error`]s whose message says
/// what the file is instead (`a FIFO`, `a directory`) or that it exceeds the limit.
pub fn open_regular(path: &Path, limit: u64) -> io::Result<Opened> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(
        &mut options,
        nix::fcntl::OFlag::O_NONBLOCK.bits(),
    );
    let file = options.open(path)?;
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("it is {}, not a regular file", kind_of(&metadata)),
        ));
    }
    if metadata.len() > limit {
        return Err(too_large(limit));
    }
    Ok(Opened {
        file,
        limit,
        metadata,
    })
}

/// Who besides its owner may read a file: `Some(("group" | "others" | "group and others",
/// mode))`, or `None` for mode 0600 or stricter. Secret files (group keys, CA keys, the database
/// password) must answer `None`; check the metadata of the opened file ([`Opened::metadata`]).
pub fn readable_by(metadata: &Metadata) -> Option<(&'static str, u32)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = metadata.permissions().mode() & 0o777;
        let who = match (mode & 0o070 != 0, mode & 0o007 != 0) {
            (false, false) => return None,
            (true, false) => "group",
            (false, true) => "others",
            (true, true) => "group and others",
        };
        Some((who, mode))
    }
    #[cfg(not(unix))]
    {
        let _ = metadata;
        None
    }
}

/// Reads a named file of at most `limit` bytes that must be a regular file ([`open_regular`]).
pub fn read_regular(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    open_regular(path, limit)?.read()
}

fn too_large(limit: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::FileTooLarge,
        format!("it is larger than the {limit} bytes the station reads from such a file"),
    )
}

/// What a non-regular file is, in words.
fn kind_of(metadata: &Metadata) -> &'static str {
    let kind = metadata.file_type();
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt as _;
        if kind.is_fifo() {
            return "a FIFO";
        }
        if kind.is_char_device() || kind.is_block_device() {
            return "a device node";
        }
        if kind.is_socket() {
            return "a socket";
        }
    }
    if kind.is_dir() {
        "a directory"
    } else if kind.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    }
}

/// The directory a file is in (`.` for a bare name).
fn directory_of(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Refuses a write target that exists and is not a regular file; the target itself is looked at,
/// not what a symlink there points to.
fn check_target(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(metadata) if !metadata.is_file() => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "it is {}, and the station only replaces regular files",
                kind_of(&metadata)
            ),
        )),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// A file being written readable by its owner only, under a temporary name in the target's
/// directory; [`PrivateFile::commit`] puts it in place, and dropping it uncommitted removes it.
#[derive(Debug)]
pub struct PrivateFile {
    path: PathBuf,
    temp: tempfile::NamedTempFile,
}

impl PrivateFile {
    /// Creates the temporary file for `path`, after checking that `path` is absent or a regular
    /// file.
    pub fn create(path: &Path) -> io::Result<PrivateFile> {
        check_target(path)?;
        let dir = directory_of(path);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let prefix = format!(".{name}.");
        let mut builder = tempfile::Builder::new();
        builder.prefix(&prefix).suffix(".tmp");
        #[cfg(unix)]
        builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600));
        let temp = builder.tempfile_in(dir)?;
        Ok(PrivateFile {
            path: path.to_owned(),
            temp,
        })
    }

    /// The file it will become.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Syncs the data to disk and renames the file over the target.
    pub fn commit(self) -> io::Result<()> {
        self.temp.as_file().sync_all()?;
        let dir = self.persist()?;
        // The rename is durable once the directory is synced; a failure here leaves the
        // complete file in place, so it is not reported.
        let _ = File::open(dir).and_then(|d| d.sync_all());
        Ok(())
    }

    /// Renames the file over the target without syncing: still atomic for readers, but not
    /// durable across a power cut. For views that are rewritten often and need not survive a
    /// crash (the simulator's flash image).
    pub fn commit_unsynced(self) -> io::Result<()> {
        self.persist().map(drop)
    }

    /// Renames the file into place; the target's directory.
    fn persist(self) -> io::Result<PathBuf> {
        // Checked again: the target may have been replaced while the file was written.
        check_target(&self.path)?;
        let dir = directory_of(&self.path).to_owned();
        // On failure the error carries the temporary file, which is removed when it drops.
        self.temp.persist(&self.path).map_err(|e| e.error)?;
        Ok(dir)
    }
}

impl Write for PrivateFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.temp.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.temp.flush()
    }
}

/// Writes `bytes` to a new file at `path`, atomically and with mode 0600, failing if anything
/// exists there already (a key must never be replaced by another): the temporary file is
/// linked into place, which fails on an existing name.
pub fn write_private_new(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = PrivateFile::create(path)?;
    file.write_all(bytes)?;
    file.temp.as_file().sync_all()?;
    file.temp.persist_noclobber(path).map_err(|e| e.error)?;
    let _ = File::open(directory_of(path)).and_then(|d| d.sync_all());
    Ok(())
}

/// Opens a file for appending only, creating it with mode 0600 when missing. A symlink at
/// `path` is not followed (`O_NOFOLLOW`), and anything but a regular file is refused, so an
/// append-only log cannot be redirected into another file.
pub fn open_append(path: &Path) -> io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.append(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options
            .mode(0o600)
            .custom_flags((nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK).bits());
    }
    let file = options.open(path)?;
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("it is {}, not a regular file", kind_of(&metadata)),
        ));
    }
    Ok(file)
}

/// Writes `bytes` to `path` as a [`PrivateFile`]: atomically, mode 0600.
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = PrivateFile::create(path)?;
    file.write_all(bytes)?;
    file.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect()
    }

    #[cfg(unix)]
    #[test]
    fn a_private_file_replaces_the_target_whole_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        std::fs::write(&path, b"old").unwrap();
        let mut file = PrivateFile::create(&path).unwrap();
        file.write_all(b"new contents").unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"old",
            "not visible before commit"
        );
        file.commit().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new contents");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(leftovers(dir.path()).is_empty());
    }

    #[test]
    fn an_uncommitted_file_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        let mut file = PrivateFile::create(&path).unwrap();
        file.write_all(b"half").unwrap();
        assert_eq!(leftovers(dir.path()).len(), 1);
        drop(file);
        assert!(leftovers(dir.path()).is_empty());
        assert!(!path.exists());
    }

    #[cfg(unix)]
    #[test]
    fn targets_that_are_not_regular_files_are_refused_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::write(&real, b"keep").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        for (target, what) in [
            (dir.path().to_owned(), "a directory"),
            (PathBuf::from("/dev/null"), "a device node"),
            (link, "a symbolic link"),
        ] {
            let err = PrivateFile::create(&target).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{target:?}");
            assert!(err.to_string().contains(what), "{err}");
        }
        assert_eq!(std::fs::read(&real).unwrap(), b"keep");
        assert!(leftovers(dir.path()).is_empty());
    }

    #[cfg(unix)]
    #[test]
    fn reads_take_regular_files_within_the_limit_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, b"0123456789").unwrap();
        assert_eq!(read_regular(&path, 10).unwrap(), b"0123456789");
        let err = read_regular(&path, 9).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::FileTooLarge);
        let err = read_regular(dir.path(), 10).unwrap_err();
        assert!(err.to_string().contains("a directory"), "{err}");
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let err = read_regular(&fifo, 10).unwrap_err();
        assert!(err.to_string().contains("a FIFO"), "{err}");
        let err = read_regular(Path::new("/dev/zero"), 10).unwrap_err();
        assert!(err.to_string().contains("a device node"), "{err}");
    }
}
