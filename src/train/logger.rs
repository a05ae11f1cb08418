//! The training log (a file in the output folder) and the observer a run reports to: the
//! library writes the file and hands every message and progress event to the observer, which
//! decides what the user sees.

use anyhow::{Context, Result};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
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

/// What a training run reports while it works; the CLI implements it to print lines and drive a
/// progress bar, the default (`LogRecords`) turns the lines into `log` records. The library
/// itself never prints.
pub trait TrainObserver: Send {
    /// One message of the training log (it is already in the log file); may span several lines.
    fn message(&mut self, text: &str);
    /// An epoch of `batches` training iterations starts.
    fn epoch_started(&mut self, _epoch: usize, _batches: usize) {}
    /// A training iteration finished.
    fn batch_done(&mut self, _progress: &BatchProgress) {}
    /// The epoch's training iterations are over (validation follows).
    fn epoch_finished(&mut self, _epoch: usize) {}
    /// An epoch is over: validated, checkpointed, its line appended to metrics.jsonl.
    fn epoch_recorded(&mut self, _metrics: &super::EpochMetrics) {}
    /// Asked after every iteration and before every epoch: `true` ends the run there with an error
    /// (an interruption: the checkpoints of the finished epochs stay as written, resumable).
    fn wants_stop(&mut self) -> bool {
        false
    }
}

/// Where an epoch stands after one iteration.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchProgress {
    pub epoch: usize,
    /// 0-based index of the iteration just finished.
    pub iteration: usize,
    pub batches: usize,
    /// Training images per second since the epoch started.
    pub images_per_second: f64,
    /// Mean loss of the epoch so far.
    pub mean_loss: f64,
}

/// The observer for library use: every message becomes a `log::info!` record.
pub struct LogRecords;

impl TrainObserver for LogRecords {
    fn message(&mut self, text: &str) {
        log::info!("{text}");
    }
}

/// The training log: every message goes, with the reference's `%(asctime)-15s %(message)s` prefix,
/// to `<out>/<cfg>_<YYYY-mm-dd-HH-MM>_train.log`, and to the run's observer.
pub struct Logger {
    file: File,
    path: PathBuf,
    observer: Box<dyn TrainObserver>,
}

impl Logger {
    /// Creates `<dir>/<cfg_name>_<stamp>_train.log`.
    pub fn create(dir: &Path, cfg_name: &str, observer: Box<dyn TrainObserver>) -> Result<Logger> {
        let path = dir.join(format!("{cfg_name}_{}_train.log", file_stamp(SystemTime::now())));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot create log file {}", path.display()))?;
        Ok(Logger { file, path, observer })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The observer, for progress events.
    pub fn observer(&mut self) -> &mut dyn TrainObserver {
        self.observer.as_mut()
    }

    pub fn info(&mut self, msg: &str) {
        let stamp = asctime(SystemTime::now());
        for line in msg.lines() {
            // A full disk must not kill a long training run; the observer still gets the line.
            let _ = writeln!(self.file, "{stamp:<15} {line}");
        }
        let _ = self.file.flush();
        self.observer.message(msg);
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
