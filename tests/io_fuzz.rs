//! Bounded in-tree fuzzing of the weight loaders: seeds from tests/corpus/{pth,safetensors}
//! are mutated (bit flips, interesting values, inserts, deletions, truncations, splices) with
//! a seeded PRNG for a fixed time per target, asserting no panic and no huge allocation.
//!
//! HRK_FUZZ_SECS sets the seconds per target (default 3), HRK_FUZZ_SEED the PRNG seed.
//! Crashing inputs are written to target/fuzz-crashes/ for replay.

use std::io::{Cursor, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

mod common;
use common::alloc_guard;
use common::fuzz::FuzzLimits;
use hrk::rng::Rng;

#[global_allocator]
static GLOBAL: alloc_guard::TrackingAlloc = alloc_guard::TrackingAlloc;

/// Pickle opcode bytes: writing one at a random place hits the VM's dispatch.
const PICKLE_OPCODES: &[u8] = b"().0124NJKMX\x8c\x8a\x85\x86\x87]}aesuqrhjcRbQ\x93\x94\x95t";

fn mutate(rng: &mut Rng, input: &[u8], seeds: &[Vec<u8>]) -> Vec<u8> {
    common::fuzz::mutate_bytes(rng, input, seeds, PICKLE_OPCODES)
}

fn corpus(kind: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus").join(kind);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let seeds: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds
}

/// Runs `target` on the seeds, then on mutants until the time budget ends; returns executions.
fn run_fuzz(name: &str, seeds: &[Vec<u8>], mut target: impl FnMut(&[u8])) -> u64 {
    let limits = FuzzLimits {
        budget: Duration::from_secs_f64(common::fuzz_secs(3.0)),
        slow: None,
        seed: common::fuzz_seed(0x5eed_1234_abcd_0001),
    };
    common::fuzz::fuzz(name, seeds, &limits, mutate, |b| {
        target(b);
        true
    })
    .0
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
        for entries in archives.iter().take(1).chain(archives.iter().skip(pkl.len() % archives.len()).take(1)) {
            let mut out = Cursor::new(Vec::new());
            let mut w = zip::ZipWriter::new(&mut out);
            let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
            for (name, data) in entries {
                w.start_file(name.as_str(), opts).unwrap();
                w.write_all(if name.ends_with("/data.pkl") { pkl } else { data }).unwrap();
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
            let sd = hrk::io::state_dict_from_bytes(s).unwrap_or_else(|e| panic!("{kind} seed {i}: {e}"));
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
