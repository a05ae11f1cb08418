//! The documents name real files, and no file names a developer's machine:
//! - every repository path (under src/, kernels/, tests/, benches/, experiments/, docs/) that README.md,
//!   BENCHMARKS.md or docs/*.md names, in backticks or plain text, exists, and so does every `.rs` file
//!   they name relative to src/ (`cuda/device.rs`). Patterns (`kernels/*.cu`, `src/ops/<op>/mod.rs`,
//!   `{a,b}`) are not paths and are skipped;
//! - no tracked text file holds an absolute path under the home, root, scratch or work directories of
//!   a machine (the project is checked out anywhere; tools and Pythons come from variables or PATH).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The top folders whose paths the documents may cite. Generated folders (output/, data/, target/)
/// are not among them.
const CITED_ROOTS: [&str; 6] = ["src/", "kernels/", "tests/", "benches/", "experiments/", "docs/"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// README.md, BENCHMARKS.md and docs/*.md.
fn documents() -> Vec<PathBuf> {
    let mut docs: Vec<PathBuf> = ["README.md", "BENCHMARKS.md"].iter().map(|d| root().join(d)).collect();
    let mut more: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .expect("docs/ is readable")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    more.sort();
    docs.extend(more);
    docs.into_iter().filter(|p| p.exists()).collect()
}

fn path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_./-*<>{},".contains(c)
}

/// The path-like tokens of `text` that start with a cited root: runs of path characters (pattern
/// marks included, so a pattern stays one token and is skipped whole), trailing punctuation dropped.
fn cited_paths(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if !path_char(chars[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && path_char(chars[i]) {
            i += 1;
        }
        let token: String = chars[start..i].iter().collect();
        // A list in prose ("src, tests/foo.rs,") splits at commas outside braces.
        let mut depth = 0;
        let mut piece = String::new();
        for c in token.chars().chain([' ']) {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                _ => {}
            }
            if (c == ',' && depth == 0) || c == ' ' {
                let p = piece.trim_end_matches(['.', ',', '-', '>']).to_string();
                if !p.contains(['*', '<', '>', '{', '}']) {
                    if CITED_ROOTS.iter().any(|r| p.starts_with(r)) {
                        out.push(p);
                    } else if let Some(in_src) = src_relative(&p) {
                        out.push(in_src);
                    }
                }
                piece.clear();
            } else {
                piece.push(c);
            }
        }
    }
    out
}

/// A source file named relative to src/ as the documents often do (`cuda/device.rs`, `train/graph.rs`):
/// a `.rs` path whose first folder is one of src/'s. Other shorthands are not checked.
fn src_relative(p: &str) -> Option<String> {
    let (first, rest) = p.split_once('/')?;
    let is_src_dir = !first.is_empty() && root().join("src").join(first).is_dir();
    (is_src_dir && !rest.is_empty() && p.ends_with(".rs")).then(|| format!("src/{p}"))
}

#[test]
fn every_repository_path_the_documents_name_exists() {
    let mut missing = Vec::new();
    let mut checked = 0;
    for doc in documents() {
        let text = std::fs::read_to_string(&doc).expect("document is readable");
        for (n, line) in text.lines().enumerate() {
            for p in cited_paths(line) {
                checked += 1;
                if !root().join(&p).exists() {
                    missing.push(format!("{}:{}: {p}", doc.strip_prefix(root()).unwrap().display(), n + 1));
                }
            }
        }
    }
    assert!(checked > 50, "only {checked} cited paths found: the parser misses them");
    assert!(missing.is_empty(), "paths the documents name that do not exist:\n{}", missing.join("\n"));
}

#[test]
fn the_path_parser_takes_paths_and_skips_patterns() {
    let line = "see `src/ops/<op>/mod.rs`, kernels/*.cu and src/tensor/tape.rs. Also (tests/common/mod.rs), \
                docs/{a,b}.md, ../shared/parity and target/release/hrk; src, benches/conv.rs, `cuda/device.rs`, \
                data/wflw/images, direct/winograd.rs";
    let want = ["src/tensor/tape.rs", "tests/common/mod.rs", "benches/conv.rs", "src/cuda/device.rs"];
    assert_eq!(cited_paths(line), want);
}

/// The files git tracks, or every file under the root outside target/ and hidden folders when git
/// is not there (a source archive).
fn tracked_files() -> Vec<PathBuf> {
    let listed = Command::new("git").arg("-C").arg(root()).args(["ls-files", "-z"]).output();
    if let Some(out) = listed.ok().filter(|o| o.status.success()) {
        let names = out.stdout.split(|&b| b == 0).filter(|s| !s.is_empty());
        return names.map(|s| root().join(String::from_utf8_lossy(s).as_ref())).collect();
    }
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().to_string();
            if p.is_dir() {
                if !name.starts_with('.') && name != "target" {
                    walk(&p, out);
                }
            } else {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&root(), &mut out);
    out
}

/// Where `text` holds an absolute path under one of the machine directories: the directory name
/// between slashes, the first slash not part of a longer path or a URL.
fn machine_paths(text: &str) -> Vec<String> {
    // Built at run time so this file does not name them itself.
    let dirs: Vec<String> = ["tmp", "root", "work", "home"].iter().map(|d| format!("/{d}/")).collect();
    let mut hits = Vec::new();
    for (n, line) in text.lines().enumerate() {
        for d in &dirs {
            for (at, _) in line.match_indices(d.as_str()) {
                let before = line[..at].chars().next_back();
                if before.is_none_or(|c| !(c.is_ascii_alphanumeric() || "_./-~".contains(c))) {
                    let end = line[at..]
                        .find(|c: char| c.is_whitespace() || "`'\")".contains(c))
                        .map_or(line.len(), |e| at + e);
                    hits.push(format!("{}: {}", n + 1, &line[at..end]));
                }
            }
        }
    }
    hits
}

#[test]
fn no_tracked_file_names_a_developer_machine_path() {
    let mut found = Vec::new();
    for file in tracked_files() {
        // Binary files (images, weights) are not text: skipped.
        let Ok(text) = std::fs::read_to_string(&file) else { continue };
        for hit in machine_paths(&text) {
            found.push(format!("{}:{hit}", file.strip_prefix(root()).unwrap_or(&file).display()));
        }
    }
    assert!(found.is_empty(), "absolute paths of a developer's machine in tracked files:\n{}", found.join("\n"));
}

#[test]
fn the_machine_path_check_sees_paths_not_urls_or_generic_devices() {
    let text = format!(
        "python at {}/pyenv/bin/python\nsee https://example.org{}/x and /dev/video0, /proc/cpuinfo, ../shared/x",
        "/work", "/home"
    );
    assert_eq!(machine_paths(&text), [format!("1: {}/pyenv/bin/python", "/work")]);
}
