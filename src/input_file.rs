//! The one whole-file reader for inputs (configs, images, weight files): says what a path is when it
//! is not something to read (a directory, a socket, a dangling symlink, a symlink loop) and reads
//! streams (a FIFO such as `--cfg <(…)`, a character device) like files, with a size bound per kind
//! so `/dev/zero` cannot fill memory.

use anyhow::{anyhow, bail, Result};
use std::io::Read;
use std::path::Path;

/// Largest config file read (YAML far beyond any real config, far below memory trouble).
pub const MAX_CONFIG_BYTES: u64 = 64 << 20;
/// Largest image file read: above an uncompressed 100-megapixel image (`data::image::MAX_PIXELS`).
pub const MAX_IMAGE_BYTES: u64 = 1 << 30;
/// Largest weight file read (HRNetV2-W18 is about 40 MB; the widest official models stay far below).
pub const MAX_MODEL_BYTES: u64 = 2 << 30;

/// Linux's errno for "too many levels of symbolic links" (std has no stable `ErrorKind` for it).
const ELOOP: i32 = 40;

/// What a path names, following symlinks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputKind {
    Regular,
    /// A FIFO or a character / block device: read as a stream, up to the bound.
    Stream,
    Directory,
    Socket,
    Missing,
    DanglingLink,
    SymlinkLoop,
    /// Exists but cannot even be inspected (e.g. a permission error on a parent folder).
    Unreadable,
}

/// Classifies `path` (following symlinks; a link that leads nowhere is told apart from a missing path).
pub fn classify(path: &Path) -> InputKind {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::metadata(path) {
        Ok(m) => {
            let t = m.file_type();
            if t.is_file() {
                InputKind::Regular
            } else if t.is_dir() {
                InputKind::Directory
            } else if t.is_socket() {
                InputKind::Socket
            } else {
                InputKind::Stream
            }
        }
        Err(e) if e.raw_os_error() == Some(ELOOP) => InputKind::SymlinkLoop,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
                InputKind::DanglingLink
            } else {
                InputKind::Missing
            }
        }
        Err(_) => InputKind::Unreadable,
    }
}

/// True for a symlink that leads nowhere (dangling or a loop).
pub fn is_broken_link(path: &Path) -> bool {
    matches!(classify(path), InputKind::DanglingLink | InputKind::SymlinkLoop)
}

/// The bytes of `path`, read as a file or a stream of at most `max_bytes`; `what` names the input in
/// errors (`config file`, `image`, `model file`): `WHAT PATH not found`, `WHAT PATH: symlink loop`,
/// `WHAT PATH: more than N MiB, refused`, … (one line each).
pub fn read_input(path: &Path, what: &str, max_bytes: u64) -> Result<Vec<u8>> {
    let shown = path.display();
    let too_big = || anyhow!("{what} {shown}: more than {} MiB, refused", max_bytes >> 20);
    match classify(path) {
        InputKind::Regular | InputKind::Stream | InputKind::Unreadable => {}
        InputKind::Missing => bail!("{what} {shown} not found"),
        InputKind::Directory => bail!("{what} {shown} is a directory, not a file"),
        InputKind::Socket => bail!("{what} {shown} is a socket, not a file"),
        InputKind::DanglingLink => bail!("{what} {shown}: dangling symlink (its target does not exist)"),
        InputKind::SymlinkLoop => bail!("{what} {shown}: symlink loop"),
    }
    let file = std::fs::File::open(path).map_err(|e| anyhow!("cannot read {what} {shown}: {e}"))?;
    // A regular file's length is known: refuse before reading, and read it in one allocation.
    let known_len = file.metadata().ok().filter(|m| m.is_file()).map(|m| m.len());
    if known_len.is_some_and(|n| n > max_bytes) {
        return Err(too_big());
    }
    let mut bytes = Vec::with_capacity(known_len.unwrap_or(0) as usize);
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| anyhow!("cannot read {what} {shown}: {e}"))?;
    if bytes.len() as u64 > max_bytes {
        return Err(too_big());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("hrk-input-file-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn kinds_and_messages() {
        let d = scratch("kinds");
        let file = d.join("a.txt");
        std::fs::write(&file, b"hello").unwrap();
        assert_eq!(read_input(&file, "config file", 5).unwrap(), b"hello");
        let e = read_input(&file, "config file", 4).unwrap_err().to_string();
        assert!(e.ends_with("a.txt: more than 0 MiB, refused"), "{e}");
        std::os::unix::fs::symlink("nowhere", d.join("dangling")).unwrap();
        std::os::unix::fs::symlink("self", d.join("self")).unwrap();
        let cases = [
            (d.join("missing"), InputKind::Missing, "not found"),
            (d.clone(), InputKind::Directory, "is a directory"),
            (d.join("dangling"), InputKind::DanglingLink, "dangling symlink"),
            (d.join("self"), InputKind::SymlinkLoop, "symlink loop"),
        ];
        for (path, kind, needle) in cases {
            assert_eq!(classify(&path), kind, "{}", path.display());
            let e = read_input(&path, "image", 1 << 20).unwrap_err().to_string();
            assert!(e.starts_with("image ") && e.contains(needle), "{e}");
        }
        assert!(is_broken_link(&d.join("self")) && !is_broken_link(&file));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn devices_are_bounded_streams() {
        assert_eq!(classify(Path::new("/dev/null")), InputKind::Stream);
        assert!(read_input(Path::new("/dev/null"), "image", 1 << 20).unwrap().is_empty());
        let e = read_input(Path::new("/dev/zero"), "config file", 1 << 20).unwrap_err().to_string();
        assert_eq!(e, "config file /dev/zero: more than 1 MiB, refused");
    }
}
