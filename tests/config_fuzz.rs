//! Mutated versions of the official YAMLs (byte flips, insertions, truncations, line shuffles,
//! duplicated lines, literal-looking strings) never make the loader panic, and every error it
//! returns is one line naming the source. Bounded by count and by wall time.

use hrk::config::Config;
use hrk::rng::Rng;
use std::time::{Duration, Instant};

const SOURCES: [&str; 5] = [
    include_str!("../experiments/wflw/face_alignment_wflw_hrnet_w18.yaml"),
    include_str!("../experiments/300w/face_alignment_300w_hrnet_w18.yaml"),
    include_str!("../experiments/aflw/face_alignment_aflw_hrnet_w18.yaml"),
    include_str!("../experiments/cofw/face_alignment_cofw_hrnet_w18.yaml"),
    include_str!("../experiments/synthetic/synthetic_hrnet_tiny.yaml"),
];

/// Bytes worth injecting: YAML indicators, Python literal syntax, digits, odd characters.
const INTERESTING: &[u8] = b":-[]{},#&*!|>'\"%@`?()\\\t\n 0123456789.eEjxob_+~\x00\xff\xc3";

const SNIPPETS: &[&str] = &[
    "(0,",
    "((((((((((((",
    "[[[[[[[[",
    "1e999",
    "-.inf",
    ".nan",
    "0x",
    "1_000",
    "99999999999999999999999",
    "'''",
    "b'x'",
    "{1: 2}",
    "1+2j",
    "...",
    "True",
    "None",
    "~",
    "&a",
    "*a",
    "<<: *a",
    "!!str",
    "!!int",
    "? ",
    "\\x",
    "'\\N{DASH}'",
    "\"\\u00e9\"",
    "---",
    "...\n",
    "- - -",
    "{a: [b, {c: d}]}",
];

fn mutate(rng: &mut Rng, source: &str) -> Vec<u8> {
    let mut bytes = source.as_bytes().to_vec();
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        match rng.below(8) {
            0 if !bytes.is_empty() => {
                let i = rng.below(bytes.len());
                bytes[i] ^= 1 << rng.below(8);
            }
            1 => {
                let i = rng.below(bytes.len() + 1);
                bytes.insert(i, INTERESTING[rng.below(INTERESTING.len())]);
            }
            2 if !bytes.is_empty() => {
                let cut = rng.below(bytes.len());
                bytes.truncate(cut);
            }
            3 | 4 => {
                // Shuffle or duplicate whole lines (indentation moves with them).
                let text = String::from_utf8_lossy(&bytes).into_owned();
                let mut lines: Vec<&str> = text.lines().collect();
                if lines.len() > 1 {
                    let a = rng.below(lines.len());
                    let b = rng.below(lines.len());
                    if rng.below(2) == 0 {
                        lines.swap(a, b);
                    } else {
                        let copy = lines[a];
                        lines.insert(b, copy);
                    }
                }
                bytes = lines.join("\n").into_bytes();
            }
            5 => {
                // Replace the value of some line with a literal-looking snippet.
                let text = String::from_utf8_lossy(&bytes).into_owned();
                let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
                if !lines.is_empty() {
                    let i = rng.below(lines.len());
                    let snippet = SNIPPETS[rng.below(SNIPPETS.len())];
                    lines[i] = match lines[i].split_once(": ") {
                        Some((key, _)) => format!("{key}: {snippet}"),
                        None => format!("{}{snippet}", lines[i]),
                    };
                }
                bytes = lines.join("\n").into_bytes();
            }
            6 if !bytes.is_empty() => {
                let i = rng.below(bytes.len());
                let len = rng.below(8).min(bytes.len() - i);
                bytes.drain(i..i + len);
            }
            _ => {
                let i = rng.below(bytes.len() + 1);
                let snippet = SNIPPETS[rng.below(SNIPPETS.len())];
                bytes.splice(i..i, snippet.bytes());
            }
        }
    }
    bytes
}

#[test]
fn mutated_official_yamls_never_panic() {
    let started = Instant::now();
    let budget = Duration::from_secs(4);
    let mut rng = Rng::new(0x9E37_79B9_7F4A_7C15);
    let (mut accepted, mut rejected, mut runs) = (0usize, 0usize, 0usize);
    for i in 0..4000 {
        if started.elapsed() > budget {
            break;
        }
        let source = SOURCES[i % SOURCES.len()];
        let bytes = mutate(&mut rng, source);
        // load_config rejects non-UTF-8 before parsing; mirror that here.
        let Ok(text) = String::from_utf8(bytes) else {
            continue;
        };
        runs += 1;
        let outcome = std::panic::catch_unwind(|| Config::from_yaml_str(&text, "fuzz.yaml"));
        match outcome {
            Err(_) => panic!("loader panicked on input #{i}:\n{text}"),
            Ok(Ok(cfg)) => {
                accepted += 1;
                // Whatever is accepted must pass validation and survive a dump/reload.
                cfg.validate("fuzz.yaml").unwrap();
                let again = Config::from_yaml_str(&cfg.to_yaml(), "dump.yaml")
                    .unwrap_or_else(|e| panic!("{e}\ninput #{i}:\n{text}"));
                assert_eq!(again, cfg, "input #{i}");
            }
            Ok(Err(e)) => {
                rejected += 1;
                let msg = format!("{e:#}");
                assert!(msg.starts_with("fuzz.yaml"), "input #{i}: {msg}");
                assert!(!msg.contains('\n'), "input #{i}: not one line: {msg:?}\n{text}");
            }
        }
    }
    eprintln!("fuzz: {runs} inputs, {accepted} accepted, {rejected} rejected in {:?}", started.elapsed());
    assert!(runs >= 500, "too few inputs ran ({runs})");
    assert!(accepted > 0 && rejected > 0, "mutations should both keep and break files");
}
