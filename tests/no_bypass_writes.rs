//! Every whole-file output goes through src/atomic_file.rs (temp file, fsync, rename; refusing what is
//! not a regular file): checked on the source. A call in src/**/*.rs (test code aside) that creates,
//! truncates or saves a file anywhere else fails here, unless it is an append-only stream listed in
//! `APPEND_ONLY` with its reason, or a library that writes by path (FFmpeg's muxer) listed in
//! `INTO_PENDING_FILE`, which must fill an `atomic_file::PendingFile` and commit it.

#[path = "common/rust_source.rs"]
mod rust_source;

use rust_source::strip;
use std::path::{Path, PathBuf};

/// Calls that write a file in place.
const WRITES: &[&str] = &[
    "fs::write(",
    "File::create(",
    "File::create_new(",
    "File::options(",
    "OpenOptions",
    "fs::copy(",
    ".save(",
    ".save_with_format(",
    // FFmpeg's muxer opens its output path itself (format::output, output_as, output_with, …).
    "format::output",
];

/// The writer itself.
const WRITER: &str = "src/atomic_file.rs";

/// Streams that grow by whole records as they are written, never truncating what is there:
/// (file, call, reason).
const APPEND_ONLY: &[(&str, &str, &str)] = &[
    ("src/train/logger.rs", "OpenOptions", "the training log, opened for append"),
    ("src/train/metrics.rs", "OpenOptions", "metrics.jsonl, one JSON line appended per epoch"),
    (
        "src/predict/stream_sink.rs",
        "OpenOptions",
        "a frame stream's <stem>.jsonl, emptied through the atomic writer, then one JSON line appended per frame",
    ),
    (
        "src/io/tfevents.rs",
        "File::create(",
        "a new TensorBoard events file (time and PID in its name), grown by whole records",
    ),
];

/// Files that hand a path to a library writing the file itself: (file, call, reason). Each must
/// write into a `PendingFile`'s temporary path and commit it (the rename of atomic_file.rs).
const INTO_PENDING_FILE: &[(&str, &str, &str)] = &[(
    "src/video/encode.rs",
    "format::output",
    "the overlay MP4, muxed by FFmpeg into a PendingFile's temporary path, renamed into place at finish",
)];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The end (exclusive) of the item starting at `at` in stripped code: its `;`, or the brace that
/// closes its first `{`.
fn item_end(code: &[char], at: usize) -> usize {
    let mut depth = 0usize;
    for (i, &c) in code.iter().enumerate().skip(at) {
        match c {
            ';' if depth == 0 => return i + 1,
            '{' => depth += 1,
            '}' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
    }
    code.len()
}

/// Stripped code without its `#[cfg(test)]` items, and the names of `#[cfg(test)] mod NAME;` files.
fn without_test_items(code: &str) -> (String, Vec<String>) {
    let mark: Vec<char> = "#[cfg(test)]".chars().collect();
    let chars: Vec<char> = code.chars().collect();
    let (mut kept, mut test_mods) = (String::new(), Vec::new());
    let mut i = 0;
    while i < chars.len() {
        if !chars[i..].starts_with(&mark) {
            kept.push(chars[i]);
            i += 1;
            continue;
        }
        let end = item_end(&chars, i + mark.len());
        let item: String = chars[i + mark.len()..end].iter().collect();
        let words: Vec<&str> =
            item.split(|c: char| !(c.is_alphanumeric() || c == '_')).filter(|w| !w.is_empty()).collect();
        if item.trim_end().ends_with(';') && words.len() >= 2 && words[words.len() - 2] == "mod" {
            test_mods.push(words[words.len() - 1].to_string());
        }
        i = end;
    }
    (kept, test_mods)
}

/// The file `mod name;` declared in `parent` refers to.
fn module_file(parent: &Path, name: &str) -> Vec<PathBuf> {
    let stem = parent.file_stem().unwrap().to_string_lossy();
    let dir = if stem == "mod" || stem == "lib" || stem == "main" {
        parent.parent().unwrap().to_path_buf()
    } else {
        parent.with_extension("")
    };
    vec![dir.join(format!("{name}.rs")), dir.join(name).join("mod.rs")]
}

/// (file relative to the crate, call, the statement it is in) for every write call outside test code.
fn write_sites() -> Vec<(String, String, String)> {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    files.sort();
    let mut code_of = Vec::new();
    let mut test_files = Vec::new();
    for f in &files {
        let (code, mods) = without_test_items(&strip(&std::fs::read_to_string(f).unwrap()));
        test_files.extend(mods.iter().flat_map(|m| module_file(f, m)));
        code_of.push((f.clone(), code));
    }
    let mut sites = Vec::new();
    for (f, code) in code_of.iter().filter(|(f, _)| !test_files.contains(f)) {
        let rel = f.strip_prefix(root()).unwrap().to_string_lossy().replace('\\', "/");
        for call in WRITES {
            for (at, _) in code.match_indices(call) {
                let end = code[at..].find(';').map_or(code.len(), |e| at + e);
                sites.push((rel.clone(), call.to_string(), code[at..end].to_string()));
            }
        }
    }
    sites
}

#[test]
fn every_whole_file_output_goes_through_the_atomic_writer() {
    let sites = write_sites();
    let listed = |file: &String, call: &String| {
        APPEND_ONLY.iter().chain(INTO_PENDING_FILE).any(|(f, c, _)| f == file && c == call)
    };
    let bypass: Vec<String> = sites
        .iter()
        .filter(|(file, call, _)| file != WRITER && !listed(file, call))
        .map(|(file, call, _)| format!("{file}: {call}"))
        .collect();
    assert!(bypass.is_empty(), "writes that bypass atomic_file::write_atomically: {bypass:?}");
    // An append-only stream appends: its OpenOptions never truncates.
    for (file, call, statement) in sites.iter().filter(|(_, call, _)| call == "OpenOptions") {
        assert!(
            statement.contains(".append(true)") && !statement.contains("truncate"),
            "{file}: {call} must append and never truncate: {statement}"
        );
    }
    // A by-path writer fills a pending file and commits it.
    for (file, _, _) in INTO_PENDING_FILE {
        let code = strip(&std::fs::read_to_string(root().join(file)).unwrap());
        assert!(
            code.contains("PendingFile::new(") && code.contains(".temp_path()") && code.contains(".commit()"),
            "{file}: a by-path writer must write into atomic_file::PendingFile's temp_path() and commit() it"
        );
    }
    let stale: Vec<_> = APPEND_ONLY
        .iter()
        .chain(INTO_PENDING_FILE)
        .filter(|(f, c, _)| !sites.iter().any(|(file, call, _)| file == f && call == c))
        .collect();
    assert!(
        stale.is_empty(),
        "APPEND_ONLY or INTO_PENDING_FILE list sites no file has any more (remove them): {stale:?}"
    );
}

/// The scan sees through what it should and skips test code.
#[test]
fn the_scan_finds_writes_and_skips_test_code() {
    let src = "fn a() { std::fs::write(p, b)?; } // File::create(x)\n\
               #[cfg(test)]\nmod tests { fn t() { File::create(\"a\").unwrap(); } }\n\
               #[cfg(test)]\nmod more;\nfn b() { img.save(\"x.png\") }\n";
    let (code, mods) = without_test_items(&strip(src));
    assert_eq!(mods, ["more"]);
    assert!(code.contains("fs::write(") && code.contains(".save(") && !code.contains("File::create("), "{code}");
    assert_eq!(
        module_file(Path::new("src/predict/mod.rs"), "tests"),
        [PathBuf::from("src/predict/tests.rs"), PathBuf::from("src/predict/tests/mod.rs")]
    );
    assert_eq!(module_file(Path::new("src/io/csv.rs"), "t")[0], PathBuf::from("src/io/csv/t.rs"));
}
