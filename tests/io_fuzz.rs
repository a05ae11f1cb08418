//! Bounded in-tree fuzzing of the weight loaders: seeds from tests/corpus/{pth,safetensors}
//! are mutated (bit flips, interesting values, inserts, deletions, truncations, splices) with
//! a seeded PRNG for a fixed time per target, asserting no panic and no huge allocation.
//!
//! HRK_FUZZ_SECS sets the seconds per target (default 3), HRK_FUZZ_SEED the PRNG seed.
//! Crashing inputs are written to target/fuzz-crashes/ for replay.

use std::io::{Cursor, Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

mod common;
use common::alloc_guard::{self, LARGEST_ALLOC, SOFT_LIMIT};
use hrk::rng::Rng;

#[global_allocator]
static GLOBAL: alloc_guard::TrackingAlloc = alloc_guard::TrackingAlloc;

/// The fuzz loops share the allocation counter, so they run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());


/// Pickle opcode bytes: writing one at a random place hits the VM's dispatch.
const PICKLE_OPCODES: &[u8] = b"().0124NJKMX\x8c\x8a\x85\x86\x87]}aesuqrhjcRbQ\x93\x94\x95t";

fn mutate(rng: &mut Rng, input: &[u8], seeds: &[Vec<u8>]) -> Vec<u8> {
    common::fuzz::mutate_bytes(rng, input, seeds, PICKLE_OPCODES)
}

fn corpus(kind: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(kind);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let seeds: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds
}

fn fuzz_secs() -> f64 {
    common::fuzz_secs(3.0)
}

fn fuzz_seed() -> u64 {
    common::fuzz_seed(0x5eed_1234_abcd_0001)
}

/// Runs `target` on mutated seeds until the time budget ends; returns executions.
fn run_fuzz(name: &str, seeds: &[Vec<u8>], mut target: impl FnMut(&[u8])) -> u64 {
    let _guard = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let crash_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-crashes");
    let budget = Duration::from_secs_f64(fuzz_secs());
    let mut rng = Rng::new(fuzz_seed()
        ^ name
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64))
        | 1);
    let prev_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let start = Instant::now();
    let mut execs = 0u64;
    let mut failures: Vec<String> = Vec::new();
    // Seeds themselves first, then mutants (sometimes of mutants, to go deeper).
    let mut last = seeds[0].clone();
    while start.elapsed() < budget || execs < seeds.len() as u64 {
        let input = if (execs as usize) < seeds.len() {
            seeds[execs as usize].clone()
        } else if rng.below(4) == 0 {
            mutate(&mut rng, &last, seeds)
        } else {
            let pick = rng.below(seeds.len());
            mutate(&mut rng, &seeds[pick], seeds)
        };
        LARGEST_ALLOC.store(0, Ordering::Relaxed);
        let outcome = catch_unwind(AssertUnwindSafe(|| target(&input)));
        let largest = LARGEST_ALLOC.load(Ordering::Relaxed);
        execs += 1;
        let problem = match outcome {
            Err(p) => Some(format!(
                "panic: {}",
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            )),
            Ok(()) if largest > SOFT_LIMIT => Some(format!(
                "allocation of {largest} bytes for a {}-byte input",
                input.len()
            )),
            Ok(()) => None,
        };
        if let Some(msg) = problem {
            std::fs::create_dir_all(&crash_dir).unwrap();
            let f = crash_dir.join(format!("{name}-{execs}.bin"));
            std::fs::write(&f, &input).unwrap();
            failures.push(format!("{msg} (input saved to {})", f.display()));
            if failures.len() >= 10 {
                break;
            }
        }
        last = input;
    }
    std::panic::set_hook(prev_hook);
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "fuzz {name}: {execs} executions in {secs:.1} s ({:.0}/s), {} failures",
        execs as f64 / secs,
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "fuzz {name} found:\n{}",
        failures.join("\n")
    );
    execs
}

#[test]
fn fuzz_pth_loader() {
    let seeds = corpus("pth");
    let execs = run_fuzz("pth", &seeds, |b| {
        let _ = hrk::io::state_dict_from_bytes(b);
    });
    assert!(execs >= seeds.len() as u64);
}

/// Mutates only the pickle inside zip seeds and re-packs them, so the VM is reached past the
/// zip's CRC checks.
#[test]
fn fuzz_zip_pickle() {
    let mut pickles = Vec::new();
    let mut archives = Vec::new();
    for seed in corpus("pth").into_iter().filter(|s| s.starts_with(b"PK")) {
        let mut z = zip::ZipArchive::new(Cursor::new(&seed[..])).unwrap();
        let mut entries = Vec::new();
        for i in 0..z.len() {
            let mut f = z.by_index(i).unwrap();
            let mut data = Vec::new();
            f.read_to_end(&mut data).unwrap();
            let name = f.name().unwrap().to_string();
            if name.ends_with("/data.pkl") {
                pickles.push(data.clone());
            }
            entries.push((name, data));
        }
        archives.push(entries);
    }
    let execs = run_fuzz("zip-pickle", &pickles, |pkl| {
        for entries in archives
            .iter()
            .take(1)
            .chain(archives.iter().skip(pkl.len() % archives.len()).take(1))
        {
            let mut out = Cursor::new(Vec::new());
            let mut w = zip::ZipWriter::new(&mut out);
            let opts = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Stored);
            for (name, data) in entries {
                w.start_file(name.as_str(), opts).unwrap();
                w.write_all(if name.ends_with("/data.pkl") {
                    pkl
                } else {
                    data
                })
                .unwrap();
            }
            w.finish().unwrap();
            let _ = hrk::io::state_dict_from_bytes(out.get_ref());
        }
    });
    assert!(execs >= pickles.len() as u64);
}

#[test]
fn fuzz_safetensors_loader() {
    let seeds = corpus("safetensors");
    let execs = run_fuzz("safetensors", &seeds, |b| {
        let _ = hrk::io::read_safetensors_bytes(b);
        let _ = hrk::io::state_dict_from_bytes(b);
    });
    assert!(execs >= seeds.len() as u64);
}

#[test]
fn corpus_seeds_are_valid() {
    for kind in ["pth", "safetensors"] {
        for (i, s) in corpus(kind).iter().enumerate() {
            let sd = hrk::io::state_dict_from_bytes(s)
                .unwrap_or_else(|e| panic!("{kind} seed {i}: {e}"));
            assert!(!sd.is_empty());
        }
    }
}

/// Replays one saved input with the normal panic output: HRK_FUZZ_REPLAY=path.
#[test]
fn replay_saved_input() {
    let Some(path) = common::fuzz_replay() else {
        return;
    };
    let bytes = std::fs::read(&path).unwrap();
    let r = hrk::io::state_dict_from_bytes(&bytes);
    eprintln!("replay {}: {:?}", path.display(), r.map(|sd| sd.len()));
}
