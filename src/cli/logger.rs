//! The command line's `log` sink: records go to stderr as `hrk: <message>` (warnings as
//! `hrk: warning: <message>`), at the level `-q` / `-v` choose. While a progress bar is drawn,
//! lines are printed above it so the bar is not torn.

use indicatif::ProgressBar;
use log::{Level, LevelFilter, Log, Metadata, Record};
use std::sync::Mutex;

/// The progress bar on screen, if any (set by the train command).
static ACTIVE_BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Makes `bar` the one log lines are printed above (None when it is finished).
pub fn set_active_bar(bar: Option<ProgressBar>) {
    if let Ok(mut active) = ACTIVE_BAR.lock() {
        *active = bar;
    }
}

/// Prints a line of normal output (stdout), above the active progress bar if there is one.
pub fn print_line(text: &str) {
    match ACTIVE_BAR.lock().ok().and_then(|b| b.clone()) {
        Some(bar) => bar.println(text),
        None => println!("{text}"),
    }
}

struct StderrLog {
    level: LevelFilter,
}

impl Log for StderrLog {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let kind = match record.level() {
            Level::Error => "error: ",
            Level::Warn => "warning: ",
            _ => "",
        };
        let line = format!("hrk: {kind}{}", record.args());
        match ACTIVE_BAR.lock().ok().and_then(|b| b.clone()) {
            Some(bar) => bar.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }

    fn flush(&self) {}
}

/// The level for `-q` (warnings and errors only) and each `-v` (debug, then trace); info otherwise.
pub fn level_for(quiet: bool, verbose: u8) -> LevelFilter {
    match (quiet, verbose) {
        (true, _) => LevelFilter::Warn,
        (false, 0) => LevelFilter::Info,
        (false, 1) => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    }
}

/// Installs the sink once per process; a second call (the CLI embedded in a test) keeps the first.
pub fn install(level: LevelFilter) {
    if log::set_boxed_logger(Box::new(StderrLog { level })).is_ok() {
        log::set_max_level(level);
    }
}
