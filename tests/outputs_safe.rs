//! Issue 25's output rules seen from the command line (`hrk annotations --out`, a whole-file output
//! that is not training): a FIFO at the output path is refused and kept, a replaced file keeps its
//! mode, and temp files a killed run left in the output folder are cleared. Unix only: FIFOs, modes
//! and `/proc` (CI runs as root, so the special files are made in a scratch folder, never /dev).
#![cfg(target_os = "linux")]

mod common;

use common::{assert_one_line, hrk, s, scratch};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};

const SIMPLE_CSV: &str = "a.jpg,0,0,10,10,2,2,4,4,6,6\n";

#[test]
fn a_fifo_output_is_refused_and_kept() {
    let dir = scratch("out-fifo");
    let input = dir.path().join("in.csv");
    std::fs::write(&input, SIMPLE_CSV).unwrap();
    let fifo = dir.path().join("official.csv");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let out = hrk(&["annotations", "--csv", s(&input), "--out", s(&fifo)]);
    assert!(!out.status.success());
    assert_one_line(&String::from_utf8_lossy(&out.stderr), &[s(&fifo), "is a FIFO, not a regular file"]);
    assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
}

#[test]
fn an_output_keeps_its_mode_and_a_killed_runs_temps_are_cleared() {
    let dir = scratch("out-mode");
    let input = dir.path().join("in.csv");
    std::fs::write(&input, SIMPLE_CSV).unwrap();
    let target = dir.path().join("official.csv");
    std::fs::write(&target, "old\n").unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o640)).unwrap();
    // A temp of a process that has exited, and one of PID 1 (alive: it may still be writing).
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let stale = dir.path().join(format!(".official.csv.{dead}.0.tmp"));
    let live = dir.path().join(".official.csv.1.0.tmp");
    std::fs::write(&stale, "half").unwrap();
    std::fs::write(&live, "half").unwrap();
    let out = hrk(&["annotations", "--csv", s(&input), "--out", s(&target)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read_to_string(&target).unwrap().starts_with("image_name,"));
    assert_eq!(std::fs::metadata(&target).unwrap().permissions().mode() & 0o7777, 0o640);
    assert!(!stale.exists() && live.exists());
}
