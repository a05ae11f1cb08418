//! The layering rule of docs/INTERNALS.md ("Layering"), checked on the source: every `crate::` path in
//! src/**/*.rs (in `use` lines, `use crate::{a, b::c}` groups and expressions alike) names a top-level
//! module; a file may name only modules of a lower layer than its own, and the top-level modules form
//! no cycle. The layer table is read from INTERNALS itself, so the document and the check cannot part.

#[path = "common/rust_source.rs"]
mod rust_source;

use rust_source::strip;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Imports the rule allows for now, each with a comment naming the change that removes it: (from, to).
/// None today.
const KNOWN_UPWARD: &[(&str, &str)] = &[];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The layer of each top-level module, from the fenced block after INTERNALS's "Layering" heading:
/// lines `N  a, b, c` (layer N holds modules a, b and c).
fn layers() -> BTreeMap<String, usize> {
    let text = std::fs::read_to_string(root().join("docs/INTERNALS.md")).expect("docs/INTERNALS.md");
    let start = text.find("### Layering").expect("INTERNALS has a \"### Layering\" section");
    let block = text[start..].split("```").nth(1).expect("the Layering section has a fenced layer table");
    let mut out = BTreeMap::new();
    for line in block.lines() {
        let mut parts = line.trim().splitn(2, char::is_whitespace);
        let (Some(n), Some(mods)) = (parts.next(), parts.next()) else { continue };
        let Ok(n) = n.parse::<usize>() else { continue };
        for m in mods.split(',').map(str::trim).filter(|m| !m.is_empty()) {
            assert!(out.insert(m.to_string(), n).is_none(), "INTERNALS's layer table names `{m}` twice");
        }
    }
    assert!(!out.is_empty(), "INTERNALS's layer table is empty");
    out
}

/// The top-level modules lib.rs declares.
fn top_modules(lib: &str) -> BTreeSet<String> {
    let code = strip(lib);
    let toks = tokens(&code);
    let mut out = BTreeSet::new();
    for (i, t) in toks.iter().enumerate() {
        if t == "mod" && toks.get(i + 2).is_some_and(|s| s == ";") {
            out.insert(toks[i + 1].clone());
        }
    }
    out
}

/// Names lib.rs re-exports at the crate root (`pub use m::{a, b}` / `pub use m::a`) → their module m,
/// and `#[macro_export]` macros → the module that defines them.
fn root_names(lib: &str, files: &[(PathBuf, String, String)]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let toks = tokens(&strip(lib));
    for (i, t) in toks.iter().enumerate() {
        if t == "use" && i > 0 && toks[i - 1] == "pub" {
            let module = toks[i + 1].clone();
            let end = toks[i..].iter().position(|s| s == ";").map_or(toks.len(), |p| i + p);
            for name in &toks[i + 2..end] {
                if name.chars().next().is_some_and(|c| c.is_alphabetic() || c == '_') && name != "self" {
                    out.insert(name.clone(), module.clone());
                }
            }
        }
    }
    for (_, top, code) in files {
        let toks = tokens(code);
        // `# [ macro_export ] macro_rules ! name`.
        for at in 0..toks.len().saturating_sub(6) {
            if toks[at] == "#" && toks[at + 2] == "macro_export" && toks[at + 4] == "macro_rules" {
                out.insert(toks[at + 6].clone(), top.clone());
            }
        }
    }
    out
}

/// Identifiers (with `$crate` as one token) and single punctuation marks, `::` as one token.
fn tokens(code: &str) -> Vec<String> {
    let b: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_alphabetic() || c == '_' || (c == '$' && b.get(i + 1).is_some_and(|n| n.is_alphabetic())) {
            let s = i;
            i += 1;
            while i < b.len() && (b[i].is_alphanumeric() || b[i] == '_') {
                i += 1;
            }
            out.push(b[s..i].iter().collect());
        } else if c == ':' && b.get(i + 1) == Some(&':') {
            out.push("::".into());
            i += 2;
        } else if c.is_whitespace() {
            i += 1;
        } else {
            out.push(c.to_string());
            i += 1;
        }
    }
    out
}

/// Each `crate::` path of a token stream, as the text of the path (for messages) and the first
/// segment it names under the crate root; groups (`crate::{a, b::{c, d}}`) give one path per
/// top-level entry. `super::` chains that climb to the crate root count as `crate::`.
fn crate_paths(toks: &[String], file_depth: usize) -> Vec<(String, String)> {
    let mut out = Vec::new();
    // Depths of the inline `mod x { … }` blocks around the current token.
    let mut inline_mods: Vec<usize> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < toks.len() {
        let t = toks[i].as_str();
        match t {
            "{" => depth += 1,
            "}" => {
                depth = depth.saturating_sub(1);
                if inline_mods.last() == Some(&depth) {
                    inline_mods.pop();
                }
            }
            "mod" if toks.get(i + 2).is_some_and(|s| s == "{") => inline_mods.push(depth),
            _ => {}
        }
        let at_root = if (t == "crate" || t == "$crate") && toks.get(i + 1).is_some_and(|s| s == "::") {
            Some(i + 2)
        } else if t == "super" && (i == 0 || toks[i - 1] != "::") {
            let mut j = i;
            let mut ups = 0;
            while toks.get(j).is_some_and(|s| s == "super") && toks.get(j + 1).is_some_and(|s| s == "::") {
                ups += 1;
                j += 2;
            }
            (ups >= file_depth + inline_mods.len()).then_some(j)
        } else {
            None
        };
        if let Some(start) = at_root {
            if toks.get(start).is_some_and(|s| s == "{") {
                let mut level = 0;
                let mut entry_start = true;
                let mut j = start;
                while j < toks.len() {
                    match toks[j].as_str() {
                        "{" => level += 1,
                        "}" => {
                            level -= 1;
                            if level == 0 {
                                break;
                            }
                        }
                        "," if level == 1 => entry_start = true,
                        s if entry_start && level == 1 => {
                            entry_start = false;
                            if s != "self" && s != "*" {
                                out.push((format!("crate::{}", path_text(&toks[j..])), s.to_string()));
                            }
                        }
                        _ => {}
                    }
                    j += 1;
                }
            } else if let Some(first) = toks.get(start) {
                out.push((format!("crate::{}", path_text(&toks[start..])), first.clone()));
            }
            i = start;
            continue;
        }
        i += 1;
    }
    out
}

/// The path at the start of `toks`, up to what ends it (for messages).
fn path_text(toks: &[String]) -> String {
    let mut s = String::new();
    for (k, t) in toks.iter().enumerate() {
        let ident = t.chars().next().is_some_and(|c| c.is_alphanumeric() || c == '_');
        if (k % 2 == 0 && !ident) || (k % 2 == 1 && t != "::") {
            break;
        }
        s.push_str(t);
    }
    s.trim_end_matches("::").to_string()
}

/// Every .rs file under src/ except the crate roots: (path, top-level module, stripped code).
fn source_files() -> Vec<(PathBuf, String, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let mut entries: Vec<_> =
            std::fs::read_dir(dir).expect("src/ is readable").flatten().map(|e| e.path()).collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push(p);
            }
        }
    }
    let src = root().join("src");
    let mut paths = Vec::new();
    walk(&src, &mut paths);
    paths
        .into_iter()
        .filter_map(|p| {
            let rel = p.strip_prefix(&src).unwrap().to_path_buf();
            let first = rel.components().next()?.as_os_str().to_string_lossy().to_string();
            let top = first.strip_suffix(".rs").unwrap_or(&first).to_string();
            if top == "lib" || top == "main" || top == "bin" {
                return None;
            }
            let code = strip(&std::fs::read_to_string(&p).expect("source file is readable"));
            Some((rel, top, code))
        })
        .collect()
}

/// How many modules deep a file's own module is below the crate root (src/a.rs and src/a/mod.rs: 1).
fn module_depth(rel: &Path) -> usize {
    let n = rel.components().count();
    if rel.file_name().is_some_and(|f| f == "mod.rs") {
        n - 1
    } else {
        n
    }
}

struct Import {
    file: PathBuf,
    path: String,
    from: String,
    to: String,
}

fn imports() -> (Vec<Import>, BTreeSet<String>) {
    let lib = std::fs::read_to_string(root().join("src/lib.rs")).expect("src/lib.rs");
    let modules = top_modules(&lib);
    let files = source_files();
    let names = root_names(&lib, &files);
    let mut out = Vec::new();
    let mut unknown = Vec::new();
    for (rel, top, code) in &files {
        for (path, first) in crate_paths(&tokens(code), module_depth(rel)) {
            let to = if modules.contains(&first) {
                first
            } else if let Some(m) = names.get(&first) {
                m.clone()
            } else {
                unknown.push(format!("src/{}: {path}", rel.display()));
                continue;
            };
            if &to != top {
                out.push(Import { file: rel.clone(), path, from: top.clone(), to });
            }
        }
    }
    assert!(unknown.is_empty(), "crate paths that name no top-level module or root re-export:\n{}", unknown.join("\n"));
    (out, modules)
}

#[test]
fn the_layer_table_places_every_top_level_module_once() {
    let lib = std::fs::read_to_string(root().join("src/lib.rs")).expect("src/lib.rs");
    let modules = top_modules(&lib);
    let table = layers();
    let unplaced: Vec<_> = modules.iter().filter(|m| !table.contains_key(*m)).collect();
    let stale: Vec<_> = table.keys().filter(|m| !modules.contains(*m)).collect();
    assert!(unplaced.is_empty(), "top-level modules missing from INTERNALS's layer table: {unplaced:?}");
    assert!(stale.is_empty(), "INTERNALS's layer table names modules src/lib.rs does not declare: {stale:?}");
}

#[test]
fn no_file_imports_its_own_or_a_higher_layer() {
    let table = layers();
    let (imports, _) = imports();
    let mut bad = BTreeSet::new();
    let mut known_used = BTreeSet::new();
    for im in &imports {
        let (Some(&from), Some(&to)) = (table.get(&im.from), table.get(&im.to)) else { continue };
        if to < from {
            continue;
        }
        if KNOWN_UPWARD.contains(&(im.from.as_str(), im.to.as_str())) {
            known_used.insert((im.from.clone(), im.to.clone()));
            continue;
        }
        bad.insert(format!(
            "src/{}: {} ({} is layer {to}, {} is layer {from})",
            im.file.display(),
            im.path,
            im.to,
            im.from
        ));
    }
    assert!(
        bad.is_empty(),
        "imports of a module's own or a higher layer:\n{}",
        bad.into_iter().collect::<Vec<_>>().join("\n")
    );
    let stale: Vec<_> =
        KNOWN_UPWARD.iter().filter(|(a, b)| !known_used.contains(&(a.to_string(), b.to_string()))).collect();
    assert!(stale.is_empty(), "KNOWN_UPWARD lists edges no file has any more (remove them): {stale:?}");
}

#[test]
fn top_level_modules_form_no_cycle() {
    let (imports, modules) = imports();
    let mut edges: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for im in &imports {
        if !KNOWN_UPWARD.contains(&(im.from.as_str(), im.to.as_str())) {
            edges.entry(im.from.as_str()).or_default().insert(im.to.as_str());
        }
    }
    // Depth-first search; a back edge closes a cycle, reported with the path around it.
    fn visit<'a>(
        m: &'a str, edges: &BTreeMap<&'a str, BTreeSet<&'a str>>, stack: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>, cycles: &mut Vec<String>,
    ) {
        if let Some(at) = stack.iter().position(|&s| s == m) {
            cycles.push(stack[at..].iter().chain([&m]).copied().collect::<Vec<_>>().join(" → "));
            return;
        }
        if !done.insert(m) {
            return;
        }
        stack.push(m);
        for &n in edges.get(m).into_iter().flatten() {
            visit(n, edges, stack, done, cycles);
        }
        stack.pop();
    }
    let mut cycles = Vec::new();
    let mut done = BTreeSet::new();
    for m in &modules {
        visit(m, &edges, &mut Vec::new(), &mut done, &mut cycles);
    }
    let witness = |a: &str, b: &str| {
        imports.iter().find(|im| im.from == a && im.to == b).map(|im| format!("src/{}: {}", im.file.display(), im.path))
    };
    let explained: Vec<String> = cycles
        .iter()
        .map(|c| {
            let ms: Vec<&str> = c.split(" → ").collect();
            let why: Vec<String> = ms.windows(2).filter_map(|w| witness(w[0], w[1])).collect();
            format!("{c}\n    {}", why.join("\n    "))
        })
        .collect();
    assert!(cycles.is_empty(), "cycles between top-level modules:\n{}", explained.join("\n"));
}

#[test]
fn the_parser_reads_groups_expressions_and_super_chains() {
    let code = strip(
        "use crate::{a::X, b::{c, d}, self};\nfn f() { crate::e::g(); let s = \"crate::no\"; } // crate::no\n\
         mod tests { use super::super::h::Y; }",
    );
    let got: Vec<String> = crate_paths(&tokens(&code), 1).into_iter().map(|(_, m)| m).collect();
    assert_eq!(got, ["a", "b", "e", "h"]);
    let raw =
        strip("let r = r#\"crate::no \"quoted\" \"#; let c = '\"'; let q = '\\''; let l: &'static str = crate::z::W;");
    let got: Vec<String> = crate_paths(&tokens(&raw), 1).into_iter().map(|(_, m)| m).collect();
    assert_eq!(got, ["z"]);
}
