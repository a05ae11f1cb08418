//! The training log: every message goes to stdout (or above the progress bar) and, with the
//! reference's `%(asctime)-15s %(message)s` prefix, to `<out>/<cfg>_<YYYY-mm-dd-HH-MM>_train.log`.

use anyhow::{Context, Result};
use indicatif::ProgressBar;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// UTC civil time (year, month, day, hour, minute, second, millisecond) of a Unix time.
fn civil_utc(t: SystemTime) -> (i64, u32, u32, u32, u32, u32, u32) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day, (rem / 3600) as u32, (rem / 60 % 60) as u32, (rem % 60) as u32, d.subsec_millis())
}

/// `YYYY-mm-dd-HH-MM` (UTC), the reference's log-file time stamp.
pub fn file_stamp(t: SystemTime) -> String {
    let (y, mo, d, h, mi, _, _) = civil_utc(t);
    format!("{y:04}-{mo:02}-{d:02}-{h:02}-{mi:02}")
}

/// `YYYY-mm-dd HH:MM:SS,mmm` (UTC), Python logging's asctime.
pub fn asctime(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s, ms) = civil_utc(t);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02},{ms:03}")
}

pub struct Logger {
    file: Mutex<File>,
    path: PathBuf,
    bar: Mutex<Option<ProgressBar>>,
    quiet: bool,
}

impl Logger {
    /// Creates `<dir>/<cfg_name>_<stamp>_train.log`.
    pub fn create(dir: &Path, cfg_name: &str, quiet: bool) -> Result<Logger> {
        let path = dir.join(format!("{cfg_name}_{}_train.log", file_stamp(SystemTime::now())));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot create log file {}", path.display()))?;
        Ok(Logger { file: Mutex::new(file), path, bar: Mutex::new(None), quiet })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// While a bar is set, console lines are printed above it.
    pub fn set_bar(&self, bar: Option<ProgressBar>) {
        if let Ok(mut b) = self.bar.lock() {
            *b = bar;
        }
    }

    pub fn info(&self, msg: &str) {
        if let Ok(mut f) = self.file.lock() {
            let stamp = asctime(SystemTime::now());
            for line in msg.lines() {
                // A full disk must not kill a long training run; the console still has the line.
                let _ = writeln!(f, "{stamp:<15} {line}");
            }
            let _ = f.flush();
        }
        if self.quiet {
            return;
        }
        match self.bar.lock().ok().and_then(|b| b.clone()) {
            Some(bar) => bar.println(msg),
            None => println!("{msg}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn civil_time_known_instants() {
        assert_eq!(asctime(UNIX_EPOCH), "1970-01-01 00:00:00,000");
        let t = UNIX_EPOCH + Duration::from_millis(951_782_400_000 + 3_723_456); // 2000-02-29 01:02:03.456
        assert_eq!(asctime(t), "2000-02-29 01:02:03,456");
        assert_eq!(file_stamp(t), "2000-02-29-01-02");
    }
}
