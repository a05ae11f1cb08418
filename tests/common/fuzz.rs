//! The in-tree fuzzers' driver and byte-level mutator (data files and weight files): seeds, then
//! format-agnostic mutants drawn from the tests' generator, under the tracking allocator's watch.

use super::alloc_guard::{LARGEST_ALLOC, SOFT_LIMIT};
use hrk::rng::Rng;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Integers at the edges of the usual field widths (sizes, counts, offsets).
const INTERESTING: [u64; 13] =
    [0, 1, 2, 0x7f, 0x80, 0xff, 0xffff, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff, 1 << 40, 1 << 62, u64::MAX];

/// One to four edits of `input`: bit flip, random byte, an interesting integer (1/2/4/8 bytes, either
/// byte order), random insert, delete, truncate, splice with one of `others`, duplicated chunk, or a
/// byte of `dictionary` (format tokens, e.g. pickle opcodes) at a random place.
pub fn mutate_bytes(rng: &mut Rng, input: &[u8], others: &[Vec<u8>], dictionary: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = v.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                v[i] = rng.next_u64() as u8;
            }
            2 if len >= 8 => {
                let width = *rng.pick(&[1usize, 2, 4, 8]);
                let at = rng.below(len - width + 1);
                let x = *rng.pick(&INTERESTING);
                let bytes = if rng.below(2) == 0 { x.to_le_bytes() } else { x.to_be_bytes() };
                let from = if rng.below(2) == 0 { 0 } else { 8 - width };
                v[at..at + width].copy_from_slice(&bytes[from..from + width]);
            }
            3 => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(16);
                let junk: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                v.splice(at..at, junk);
            }
            4 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(64));
                v.drain(at..at + n);
            }
            5 => v.truncate(rng.below(len + 1)),
            6 if !others.is_empty() => {
                // Our prefix + another seed's suffix.
                let other = rng.pick(others);
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                v.truncate(cut);
                v.extend_from_slice(&other[from..]);
            }
            7 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(128));
                let chunk = v[at..at + n].to_vec();
                let to = rng.below(v.len() + 1);
                v.splice(to..to, chunk);
            }
            8 if len > 0 && !dictionary.is_empty() => {
                let at = rng.below(len);
                v[at] = *rng.pick(dictionary);
            }
            _ => {}
        }
    }
    v
}

/// What bounds one fuzz target's run.
pub struct FuzzLimits {
    /// Mutants run until this much time has passed (the seeds always run).
    pub budget: Duration,
    /// One run longer than this is a finding (None: no time limit per run).
    pub slow: Option<Duration>,
    /// Seed of the mutation stream (mixed with the target's name).
    pub seed: u64,
}

/// The fuzz targets of a binary run one at a time: they share the allocation peak and the panic hook.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs `target` on the seeds, then on mutants (of a seed, or of the previous input to go deeper) until
/// the budget is spent. A panic, an allocation over [`SOFT_LIMIT`] or a slow run is a finding: its input
/// is saved under target/fuzz-crashes/ and the test fails listing them. `target` returns whether the
/// input was accepted. Returns (executions, accepted).
pub fn fuzz(
    name: &str, seeds: &[Vec<u8>], limits: &FuzzLimits, mut mutate: impl FnMut(&mut Rng, &[u8], &[Vec<u8>]) -> Vec<u8>,
    mut target: impl FnMut(&[u8]) -> bool,
) -> (u64, u64) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    assert!(!seeds.is_empty(), "{name}: no seeds");
    let crash_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-crashes");
    let mut rng = Rng::for_tests(
        limits.seed ^ name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3)),
    );
    // Panics inside the target are findings and reported below; silence their default output,
    // and restore it however this function is left.
    type PanicHook = Box<dyn Fn(&std::panic::PanicHookInfo<'_>) + Sync + Send>;
    struct RestoreHook(Option<PanicHook>);
    impl Drop for RestoreHook {
        fn drop(&mut self) {
            if let Some(h) = self.0.take() {
                std::panic::set_hook(h);
            }
        }
    }
    let restore = RestoreHook(Some(std::panic::take_hook()));
    std::panic::set_hook(Box::new(|_| {}));
    let start = Instant::now();
    let (mut execs, mut accepted) = (0u64, 0u64);
    let mut findings = Vec::new();
    let mut prev = seeds[0].clone();
    while execs < seeds.len() as u64 || start.elapsed() < limits.budget {
        let input = if (execs as usize) < seeds.len() {
            seeds[execs as usize].clone()
        } else if rng.below(3) == 0 {
            mutate(&mut rng, &prev, seeds)
        } else {
            let s = rng.pick(seeds).clone();
            mutate(&mut rng, &s, seeds)
        };
        LARGEST_ALLOC.store(0, Ordering::Relaxed);
        let t0 = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| target(&input)));
        let took = t0.elapsed();
        let peak = LARGEST_ALLOC.load(Ordering::Relaxed);
        execs += 1;
        let finding = match outcome {
            Err(p) => Some(format!(
                "panic: {}",
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            )),
            Ok(_) if peak > SOFT_LIMIT => {
                Some(format!("allocated {peak} bytes at once for a {}-byte input", input.len()))
            }
            Ok(_) if limits.slow.is_some_and(|slow| took > slow) => Some(format!("took {took:?}")),
            Ok(ok) => {
                accepted += ok as u64;
                None
            }
        };
        if let Some(f) = finding {
            std::fs::create_dir_all(&crash_dir).unwrap();
            let path = crash_dir.join(format!("{name}-{execs}.bin"));
            std::fs::write(&path, &input).unwrap();
            findings.push(format!("{f} (saved {})", path.display()));
            if findings.len() >= 8 {
                break;
            }
        }
        prev = input;
    }
    drop(restore);
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "fuzz {name}: {execs} runs in {secs:.1} s ({:.0}/s), {accepted} accepted, {} findings",
        execs as f64 / secs,
        findings.len()
    );
    assert!(findings.is_empty(), "fuzz {name}:\n{}", findings.join("\n"));
    assert!(execs >= seeds.len() as u64);
    (execs, accepted)
}
