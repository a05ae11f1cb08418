//! The one way hrk writes a whole output file: a temporary file in the same directory, fsynced,
//! then renamed over the target (and the directory fsynced), so a reader or a crash sees the old
//! file or the new one, never half of one. Imports nothing from the crate: every output can use it.
//! Append-only streams (logs, metrics.jsonl, TensorBoard events) grow in place and do not come here.

use anyhow::{anyhow, bail, Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

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
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path.file_name().ok_or_else(|| anyhow!("{}: not a file path", path.display()))?.to_string_lossy();
    let tmp = dir.join(temp_name(&file_name));
    let result = (|| -> Result<()> {
        let mut f = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(bytes)?;
        if sync {
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable (best effort: not every filesystem syncs directories).
        if sync {
            if let Ok(d) = std::fs::File::open(&dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        bail!("{}: write failed: {e:#}", path.display());
    }
    Ok(())
}

/// Removes temp files that `write_atomically` left in `dir` when a process was killed mid-write;
/// returns how many were removed.
pub fn remove_stale_temp_files(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    rd.flatten()
        .filter(|e| is_temp_name(&e.file_name().to_string_lossy()) && e.path().is_file())
        .filter(|e| std::fs::remove_file(e.path()).is_ok())
        .count()
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
        // The target is a non-empty directory: the rename fails.
        let target = dir.join("taken");
        std::fs::create_dir_all(target.join("inside")).unwrap();
        let e = write_atomically(&target, b"x").unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}: write failed", target.display())) && !e.contains('\n'), "{e}");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
