//! The one way hrk writes a whole output file: a temporary file in the same directory, fsynced,
//! then renamed over the target (and the directory fsynced), so a reader or a crash sees the old
//! file or the new one, never half of one. Imports nothing from the crate: every output can use it.
//! Append-only streams (logs, metrics.jsonl, TensorBoard events) grow in place and do not come here.
//!
//! What an output path may be: nothing yet, or a regular file (replaced, keeping its permission mode).
//! A directory, FIFO, socket or device node is refused with one line and left as it is. A symlink is
//! written through: the chain is resolved and the target (which may not exist yet) is replaced
//! atomically, with the temporary file beside the target, so the link stays a link.
//!
//! The first write into a directory by a process also removes the temporary files that killed
//! processes left there: those whose PID has no `/proc/PID` (so never a live writer's, nor this
//! process's own concurrent writes; without `/proc` none of these), and any in the older PID-only
//! `.NAME.PID.tmp` format.

use anyhow::{anyhow, bail, Context, Result};
use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Distinguishes the temporary files of concurrent writes within one process.
static NEXT_TEMP: AtomicU64 = AtomicU64::new(0);

/// The temporary name for a write of `file_name`: `.NAME.PID.N.tmp`, unique per process and per
/// write, so two threads writing the same target never share a temporary file.
fn temp_name(file_name: &str) -> String {
    let n = NEXT_TEMP.fetch_add(1, Ordering::Relaxed);
    format!(".{file_name}.{}.{n}.tmp", std::process::id())
}

/// Whether `name` is one of `write_atomically`'s temporary files (`.NAME.PID.N.tmp`, or the older
/// `.NAME.PID.tmp`).
fn is_temp_name(name: &str) -> bool {
    let Some(inner) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp")) else { return false };
    inner
        .rsplit_once('.')
        .is_some_and(|(target, n)| !target.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The PID a temporary file name carries: `.NAME.PID.N.tmp` → PID. `None` for the older
/// `.NAME.PID.tmp` (whose PID cannot be told from a dotted name's digits).
fn temp_pid(name: &str) -> Option<u32> {
    let inner = name.strip_prefix('.')?.strip_suffix(".tmp")?;
    let (rest, n) = inner.rsplit_once('.')?;
    let (target, pid) = rest.rsplit_once('.')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (!target.is_empty() && digits(n) && digits(pid)).then(|| pid.parse().ok()).flatten()
}

/// Whether process `pid` may still be writing: true unless `/proc` shows it gone (and true
/// wherever there is no `/proc` to ask).
fn may_be_alive(pid: u32) -> bool {
    pid == std::process::id() || !Path::new("/proc/self").exists() || Path::new(&format!("/proc/{pid}")).exists()
}

/// Whether `name` is a temporary file no live process is writing: one of ours whose PID is dead,
/// or one in the older PID-only format.
fn is_stale_temp(name: &str) -> bool {
    is_temp_name(name) && temp_pid(name).is_none_or(|pid| !may_be_alive(pid))
}

/// Why a file of type `t` is not replaced, in words: "is a FIFO, not a regular file".
fn refusal(t: std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "is a FIFO, not a regular file";
        } else if t.is_socket() {
            return "is a socket, not a regular file";
        } else if t.is_char_device() {
            return "is a character device, not a regular file";
        } else if t.is_block_device() {
            return "is a block device, not a regular file";
        }
    }
    if t.is_dir() {
        "is a directory, not a regular file"
    } else {
        "is not a regular file"
    }
}

/// Where a write of `path` lands: `path` itself, or the end of its symlink chain; with the
/// existing regular file's metadata (for its mode), `None` when nothing is there yet. Anything
/// else that is there is refused in one line.
fn resolve_target(path: &Path) -> Result<(PathBuf, Option<std::fs::Metadata>)> {
    let mut at = path.to_path_buf();
    // The kernel's own limit on a symlink chain.
    for _ in 0..40 {
        let meta = match std::fs::symlink_metadata(&at) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((at, None)),
            Err(e) => bail!("{}: write failed: {e}", path.display()),
        };
        let t = meta.file_type();
        if t.is_symlink() {
            let link = std::fs::read_link(&at).map_err(|e| anyhow!("{}: write failed: {e}", path.display()))?;
            at = match at.parent() {
                Some(dir) if link.is_relative() => dir.join(link),
                _ => link,
            };
        } else if t.is_file() {
            return Ok((at, Some(meta)));
        } else {
            let what = refusal(t);
            if at == path {
                bail!("{}: write failed: {what}; left as it is", path.display());
            }
            bail!("{}: write failed: links to {}, which {what}; left as it is", path.display(), at.display());
        }
    }
    bail!("{}: write failed: too many levels of symbolic links", path.display())
}

/// The directories this process has already cleared of stale temporary files.
static SWEPT_DIRS: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);

/// Clears `dir`'s stale temporary files the first time this process writes there.
fn sweep_once(dir: &Path) {
    let first = {
        let mut swept = SWEPT_DIRS.lock().unwrap_or_else(|e| e.into_inner());
        swept.get_or_insert_with(HashSet::new).insert(dir.to_path_buf())
    };
    if first {
        remove_stale_temp_files(dir);
    }
}

/// Writes `bytes` to `path` atomically and durably. Errors are one line naming `path`.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    write_via_temp(path, bytes, true)
}

/// Writes `bytes` to `path` atomically (a reader never sees half a file) but without the two
/// fsyncs, for bulk outputs of many files (the synthetic data set's images) whose run is simply
/// rerun after a crash; syncing each of 2000 images made `hrk synth` 1.5–3× slower.
pub fn write_atomically_unsynced(path: &Path, bytes: &[u8]) -> Result<()> {
    write_via_temp(path, bytes, false)
}

fn write_via_temp(path: &Path, bytes: &[u8], sync: bool) -> Result<()> {
    let pending = PendingFile::new(path)?;
    let written = (|| -> Result<std::fs::File> {
        let mut f =
            std::fs::File::create(&pending.temp).with_context(|| format!("creating {}", pending.temp.display()))?;
        f.write_all(bytes)?;
        Ok(f)
    })();
    match written {
        Ok(f) => pending.place(Some(f), sync),
        Err(e) => Err(pending.failed(e)),
    }
}

/// A whole output that another writer fills by path (FFmpeg's muxer writes the overlay MP4 itself):
/// [`PendingFile::temp_path`] is a fresh temporary name beside the target (the same
/// `.NAME.PID.N.tmp` pattern [`remove_stale_temp_files`] clears after a crash), and
/// [`PendingFile::commit`] fsyncs it and renames it over the target, as [`write_atomically`] does.
/// Dropped without a commit, the temporary file is removed: nothing ever appears under the target's
/// name until the writer has finished.
pub struct PendingFile {
    /// The path as the caller gave it (for messages).
    path: PathBuf,
    /// Where the rename lands (the end of `path`'s symlink chain).
    target: PathBuf,
    dir: PathBuf,
    temp: PathBuf,
    /// The permission mode of the file being replaced, kept.
    existing: Option<std::fs::Metadata>,
    committed: bool,
}

impl PendingFile {
    /// Resolves `path` as [`write_atomically`] does (refusing what is not a regular file) and picks
    /// the temporary name; creates nothing.
    pub fn new(path: &Path) -> Result<PendingFile> {
        let (target, existing) = resolve_target(path)?;
        let dir = match target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let file_name =
            target.file_name().ok_or_else(|| anyhow!("{}: not a file path", path.display()))?.to_string_lossy();
        sweep_once(&dir);
        let temp = dir.join(temp_name(&file_name));
        Ok(PendingFile { path: path.to_path_buf(), target, dir, temp, existing, committed: false })
    }

    /// Where the writer puts the file's bytes.
    pub fn temp_path(&self) -> &Path {
        &self.temp
    }

    /// The finished temporary file, fsynced, takes the target's place (keeping a replaced file's
    /// mode). Errors are one line naming the target; the temporary file is removed then.
    pub fn commit(self) -> Result<()> {
        self.place(None, true)
    }

    /// Renames the temporary file (`written`: its open handle, else it is opened here) over the
    /// target, with `sync` the file and the directory fsynced.
    fn place(mut self, written: Option<std::fs::File>, sync: bool) -> Result<()> {
        let placed = (|| -> Result<()> {
            let f = match written {
                Some(f) => f,
                None => std::fs::File::open(&self.temp).with_context(|| format!("opening {}", self.temp.display()))?,
            };
            if let Some(meta) = &self.existing {
                f.set_permissions(meta.permissions())?;
            }
            if sync {
                f.sync_all()?;
            }
            std::fs::rename(&self.temp, &self.target)?;
            // Make the rename itself durable (best effort: not every filesystem syncs directories).
            if sync {
                if let Ok(d) = std::fs::File::open(&self.dir) {
                    let _ = d.sync_all();
                }
            }
            Ok(())
        })();
        match placed {
            Ok(()) => {
                self.committed = true;
                Ok(())
            }
            Err(e) => Err(self.failed(e)),
        }
    }

    /// The one-line error of a failed write (a [`StorageFull`] for want of space); the temporary
    /// file goes when `self` drops.
    fn failed(&self, e: anyhow::Error) -> anyhow::Error {
        let message = format!("{}: write failed: {e:#}", self.path.display());
        if e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(means_storage_full)) {
            return anyhow::Error::new(StorageFull(message));
        }
        anyhow!(message)
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// A write that failed for want of space (disk or quota full, file size limit): every later write
/// there would fail too, so a long run stops at the first (see [`is_storage_full`]).
#[derive(Debug)]
pub struct StorageFull(String);

impl std::fmt::Display for StorageFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StorageFull {}

fn means_storage_full(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(e.kind(), ErrorKind::StorageFull | ErrorKind::QuotaExceeded | ErrorKind::FileTooLarge)
}

/// Whether `e` is (or wraps) a [`write_atomically`] failure for want of space.
pub fn is_storage_full(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<StorageFull>())
}

/// Removes temp files that `write_atomically` left in `dir` when a process was killed mid-write
/// (never one a live process may still be writing); returns how many were removed.
pub fn remove_stale_temp_files(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    rd.flatten()
        .filter(|e| is_stale_temp(&e.file_name().to_string_lossy()) && e.path().is_file())
        .filter(|e| std::fs::remove_file(e.path()).is_ok())
        .count()
}

/// The names in `dir`, sorted: what the tests of outputs expect a folder to hold.
#[cfg(test)]
pub(crate) fn sorted_names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hrk-atomic-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn temp_names_are_recognised() {
        let a = temp_name("latest.safetensors");
        assert!(a.starts_with(".latest.safetensors.") && a.ends_with(".tmp"));
        assert_ne!(a, temp_name("latest.safetensors"));
        assert!(is_temp_name(&a));
        assert!(is_temp_name(".latest.safetensors.4242.tmp"));
        assert!(is_temp_name(".metrics.json.7.0.tmp"));
        for other in ["notes.tmp", ".notes.tmp", ".x.abc.tmp", ".hidden", "..1.tmp", ".1.tmp"] {
            assert!(!is_temp_name(other), "{other}");
        }
    }

    /// Threads writing one target at once each use their own temporary file: every write
    /// succeeds, the file holds one whole payload, and no temporary file is left.
    #[test]
    fn concurrent_writes_of_one_file_do_not_collide() {
        let dir = scratch("threads");
        let target = dir.join("out.csv");
        let payloads: Vec<Vec<u8>> = (0..8u8).map(|i| vec![b'a' + i; 64 << 10]).collect();
        std::thread::scope(|s| {
            for p in &payloads {
                let target = &target;
                s.spawn(move || {
                    for _ in 0..20 {
                        write_atomically(target, p).unwrap();
                    }
                });
            }
        });
        let got = std::fs::read(&target).unwrap();
        assert!(payloads.contains(&got));
        let names: Vec<String> =
            std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["out.csv"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn failed_write_names_the_file_and_leaves_no_temp() {
        let dir = scratch("fail");
        // The target is a non-empty directory: refused before any temporary file is made.
        let target = dir.join("taken");
        std::fs::create_dir_all(target.join("inside")).unwrap();
        let e = write_atomically(&target, b"x").unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}: write failed", target.display())) && !e.contains('\n'), "{e}");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A FIFO, a socket and a directory at the output path are refused in one line naming the path
    /// and what it is, and left as they are (CI runs as root: they are made here, never /dev nodes).
    #[cfg(unix)]
    #[test]
    fn outputs_that_are_not_regular_files_are_refused() {
        use std::os::unix::fs::FileTypeExt;
        let dir = scratch("special");
        let fifo = dir.join("fifo.onnx");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let socket = dir.join("socket.csv");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let folder = dir.join("folder.json");
        std::fs::create_dir(&folder).unwrap();
        for (path, what) in [(&fifo, "a FIFO"), (&socket, "a socket"), (&folder, "a directory")] {
            let e = write_atomically(path, b"x").unwrap_err().to_string();
            let want = format!("{}: write failed: is {what}, not a regular file", path.display());
            assert!(e.starts_with(&want) && !e.contains('\n'), "{e}");
        }
        assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
        assert!(std::fs::symlink_metadata(&socket).unwrap().file_type().is_socket());
        assert!(std::fs::symlink_metadata(&folder).unwrap().is_dir());
        // A link to one of them is refused the same way, naming the link and its target.
        let link = dir.join("link.onnx");
        std::os::unix::fs::symlink(&fifo, &link).unwrap();
        let e = write_atomically(&link, b"x").unwrap_err().to_string();
        assert!(e.contains(&format!("links to {}, which is a FIFO", fifo.display())), "{e}");
        assert_eq!(sorted_names_in(&dir), ["fifo.onnx", "folder.json", "link.onnx", "socket.csv"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn a_replaced_file_keeps_its_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = scratch("mode");
        let target = dir.join("predictions.csv");
        std::fs::write(&target, b"old").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o640)).unwrap();
        write_atomically(&target, b"new").unwrap();
        write_atomically_unsynced(&target, b"newer").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"newer");
        assert_eq!(std::fs::metadata(&target).unwrap().permissions().mode() & 0o7777, 0o640);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A symlinked output is written through: the target is replaced atomically (keeping its mode),
    /// the link stays a link, and a dangling link's target is created.
    #[cfg(unix)]
    #[test]
    fn a_symlinked_output_writes_through_to_its_target() {
        use std::os::unix::fs::PermissionsExt;
        let dir = scratch("symlink");
        let real = dir.join("real");
        std::fs::create_dir(&real).unwrap();
        let target = real.join("model.onnx");
        std::fs::write(&target, b"old").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
        // A relative link, through a second link.
        std::os::unix::fs::symlink("real/model.onnx", dir.join("hop")).unwrap();
        std::os::unix::fs::symlink("hop", dir.join("out.onnx")).unwrap();
        write_atomically(&dir.join("out.onnx"), b"new").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        assert_eq!(std::fs::metadata(&target).unwrap().permissions().mode() & 0o7777, 0o600);
        assert!(std::fs::symlink_metadata(dir.join("out.onnx")).unwrap().file_type().is_symlink());
        assert_eq!(sorted_names_in(&dir), ["hop", "out.onnx", "real"]);
        assert_eq!(sorted_names_in(&real), ["model.onnx"]);

        std::os::unix::fs::symlink(real.join("later.csv"), dir.join("dangling.csv")).unwrap();
        write_atomically(&dir.join("dangling.csv"), b"made").unwrap();
        assert_eq!(std::fs::read(real.join("later.csv")).unwrap(), b"made");

        std::os::unix::fs::symlink("loop", dir.join("loop")).unwrap();
        let e = write_atomically(&dir.join("loop"), b"x").unwrap_err().to_string();
        assert!(e.contains("too many levels of symbolic links"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The first write into a directory removes the temporary files of dead processes, of any
    /// target name, and keeps those a live process may still be writing (this one's, PID 1's).
    #[cfg(target_os = "linux")]
    #[test]
    fn a_write_clears_temp_files_left_by_dead_processes() {
        let dir = scratch("sweep");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let me = std::process::id();
        let stale = [
            format!(".out.csv.{dead}.0.tmp"),
            format!(".metrics.json.{dead}.7.tmp"),
            ".old.safetensors.4242.tmp".into(),
        ];
        let live = [format!(".out.csv.{me}.999999.tmp"), ".out.csv.1.0.tmp".to_string()];
        for name in stale.iter().chain(&live) {
            std::fs::write(dir.join(name), b"half").unwrap();
        }
        assert!(is_stale_temp(&stale[0]) && !is_stale_temp(&live[0]) && !is_stale_temp(&live[1]));
        write_atomically(&dir.join("out.csv"), b"whole").unwrap();
        let mut want = vec!["out.csv".to_string()];
        want.extend(live);
        want.sort();
        assert_eq!(sorted_names_in(&dir), want);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A file another writer fills by path appears under its name only at commit, keeping a
    /// replaced file's mode; dropped uncommitted, its temporary file goes.
    #[cfg(unix)]
    #[test]
    fn a_pending_file_appears_only_when_committed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = scratch("pending");
        let target = dir.join("clip_landmarks.mp4");
        std::fs::write(&target, b"old").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o640)).unwrap();
        let pending = PendingFile::new(&target).unwrap();
        let temp = pending.temp_path().to_path_buf();
        assert_eq!(temp.parent(), Some(dir.as_path()));
        let temp_name = temp.file_name().unwrap().to_string_lossy().into_owned();
        assert!(is_temp_name(&temp_name) && temp_pid(&temp_name) == Some(std::process::id()), "{temp_name}");
        std::fs::write(&temp, b"new").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
        pending.commit().unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        assert_eq!(std::fs::metadata(&target).unwrap().permissions().mode() & 0o7777, 0o640);
        assert_eq!(sorted_names_in(&dir), ["clip_landmarks.mp4"]);

        let dropped = PendingFile::new(&dir.join("other.mp4")).unwrap();
        std::fs::write(dropped.temp_path(), b"half").unwrap();
        drop(dropped);
        // Never written at all: the commit fails in one line naming the target.
        let e = PendingFile::new(&dir.join("never.mp4")).unwrap().commit().unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}: write failed", dir.join("never.mp4").display())), "{e}");
        assert_eq!(sorted_names_in(&dir), ["clip_landmarks.mp4"]);
        assert!(PendingFile::new(&dir).is_err(), "a directory is refused as for write_atomically");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn temp_pids_are_read_from_the_current_format_only() {
        assert_eq!(temp_pid(".out.csv.123.4.tmp"), Some(123));
        assert_eq!(temp_pid(".latest.safetensors.4242.tmp"), None);
        assert_eq!(temp_pid(".a.5.tmp"), None);
        assert_eq!(temp_pid("..5.6.tmp"), None);
    }
}
