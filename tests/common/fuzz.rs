//! The byte-level mutator of the in-tree fuzzers (data files and weight files): format-agnostic edits
//! of a seed input, drawn from the tests' generator.

use hrk::rng::Rng;

/// Integers at the edges of the usual field widths (sizes, counts, offsets).
const INTERESTING: [u64; 13] = [0, 1, 2, 0x7f, 0x80, 0xff, 0xffff, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff, 1 << 40, 1 << 62, u64::MAX];

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
