//! Synthetic data set: CSV format, geometry, determinism, flip consistency and visibility of the
//! landmarks. Mirror pairs are the official MATCHED_PARTS of the official lib/utils/transforms.py.

use hrk::synth;
use std::path::{Path, PathBuf};

mod common;
use common::scratch;

/// 300W pairs, 1-based as in the official code.
const PAIRS_300W: [[usize; 2]; 29] = [
    [1, 17],
    [2, 16],
    [3, 15],
    [4, 14],
    [5, 13],
    [6, 12],
    [7, 11],
    [8, 10],
    [18, 27],
    [19, 26],
    [20, 25],
    [21, 24],
    [22, 23],
    [32, 36],
    [33, 35],
    [37, 46],
    [38, 45],
    [39, 44],
    [40, 43],
    [41, 48],
    [42, 47],
    [49, 55],
    [50, 54],
    [51, 53],
    [62, 64],
    [61, 65],
    [68, 66],
    [59, 57],
    [60, 56],
];
/// WFLW pairs, 0-based as in the official code.
const PAIRS_WFLW: [[usize; 2]; 44] = [
    [0, 32],
    [1, 31],
    [2, 30],
    [3, 29],
    [4, 28],
    [5, 27],
    [6, 26],
    [7, 25],
    [8, 24],
    [9, 23],
    [10, 22],
    [11, 21],
    [12, 20],
    [13, 19],
    [14, 18],
    [15, 17],
    [33, 46],
    [34, 45],
    [35, 44],
    [36, 43],
    [37, 42],
    [38, 50],
    [39, 49],
    [40, 48],
    [41, 47],
    [60, 72],
    [61, 71],
    [62, 70],
    [63, 69],
    [64, 68],
    [65, 75],
    [66, 74],
    [67, 73],
    [55, 59],
    [56, 58],
    [76, 82],
    [77, 81],
    [78, 80],
    [87, 83],
    [86, 84],
    [88, 92],
    [89, 91],
    [95, 93],
    [96, 97],
];
const SELF_300W: [usize; 10] = [9, 28, 29, 30, 31, 34, 52, 58, 63, 67]; // 1-based
const SELF_WFLW: [usize; 10] = [16, 51, 52, 53, 54, 57, 79, 85, 90, 94];

/// 0-based mirror permutation for a layout.
fn mirror_perm(joints: usize) -> Vec<usize> {
    let mut perm: Vec<usize> = (0..joints).collect();
    let pairs: Vec<[usize; 2]> =
        if joints == 68 { PAIRS_300W.iter().map(|p| [p[0] - 1, p[1] - 1]).collect() } else { PAIRS_WFLW.to_vec() };
    for [a, b] in pairs {
        perm[a] = b;
        perm[b] = a;
    }
    perm
}

fn self_symmetric(joints: usize) -> Vec<usize> {
    if joints == 68 {
        SELF_300W.iter().map(|i| i - 1).collect()
    } else {
        SELF_WFLW.to_vec()
    }
}

/// The official flip: x → W − x, then swap the pairs.
fn flip_landmarks(pts: &[[f32; 2]], width: f32) -> Vec<[f32; 2]> {
    let perm = mirror_perm(pts.len());
    (0..pts.len()).map(|i| [width - pts[perm[i]][0], pts[perm[i]][1]]).collect()
}

fn flip_image(rgb: &[u8], w: usize, h: usize) -> Vec<u8> {
    let mut out = vec![0u8; rgb.len()];
    for y in 0..h {
        for x in 0..w {
            let (s, d) = ((y * w + x) * 3, (y * w + (w - 1 - x)) * 3);
            out[d..d + 3].copy_from_slice(&rgb[s..s + 3]);
        }
    }
    out
}

/// Residual of the best similarity (rotation+scale+translation, no reflection) fit of `a` onto
/// `b`, relative to the spread of `b`.
fn similarity_residual(a: &[[f32; 2]], b: &[[f32; 2]]) -> f64 {
    let n = a.len() as f64;
    let mean = |p: &[[f32; 2]]| {
        let (sx, sy) = p.iter().fold((0.0, 0.0), |s, q| (s.0 + q[0] as f64, s.1 + q[1] as f64));
        (sx / n, sy / n)
    };
    let (ma, mb) = (mean(a), mean(b));
    // Complex least squares b ≈ z·a.
    let (mut re, mut im, mut na, mut nb) = (0.0, 0.0, 0.0, 0.0);
    for (p, q) in a.iter().zip(b) {
        let (ax, ay) = (p[0] as f64 - ma.0, p[1] as f64 - ma.1);
        let (bx, by) = (q[0] as f64 - mb.0, q[1] as f64 - mb.1);
        re += ax * bx + ay * by;
        im += ax * by - ay * bx;
        na += ax * ax + ay * ay;
        nb += bx * bx + by * by;
    }
    let (zr, zi) = (re / na, im / na);
    let mut res = 0.0;
    for (p, q) in a.iter().zip(b) {
        let (ax, ay) = (p[0] as f64 - ma.0, p[1] as f64 - ma.1);
        let (bx, by) = (q[0] as f64 - mb.0, q[1] as f64 - mb.1);
        res += (zr * ax - zi * ay - bx).powi(2) + (zi * ax + zr * ay - by).powi(2);
    }
    (res / nb).sqrt()
}

/// One CSV row: image name, scale, centre, landmarks.
type CsvRow = (String, f64, [f64; 2], Vec<[f64; 2]>);

fn parse_csv(path: &Path, joints: usize) -> Vec<CsvRow> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(header.len(), 4 + 2 * joints, "header columns");
    assert_eq!(&header[..4], &["image_name", "scale", "center_w", "center_h"]);
    lines
        .map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            assert_eq!(f.len(), 4 + 2 * joints, "row columns in {line}");
            let num: Vec<f64> = f[1..].iter().map(|v| v.parse::<f64>().unwrap()).collect();
            let pts = num[3..].chunks(2).map(|c| [c[0], c[1]]).collect();
            (f[0].to_string(), num[0], [num[1], num[2]], pts)
        })
        .collect()
}

#[test]
fn canonical_shape_is_mirror_symmetric_in_the_official_index_order() {
    for joints in [68, 98] {
        let shape = synth::canonical_shape(joints).unwrap();
        assert_eq!(shape.len(), joints);
        let perm = mirror_perm(joints);
        for i in 0..joints {
            let (p, q) = (shape[i], shape[perm[i]]);
            assert!((p[0] + q[0]).abs() < 1e-5 && (p[1] - q[1]).abs() < 1e-5, "J={joints} point {i} vs {}", perm[i]);
        }
        for i in self_symmetric(joints) {
            assert!(shape[i][0].abs() < 1e-5, "J={joints} self-symmetric point {i} off the axis");
        }
        // Standard orientation: index 0 is the image-left end of the jaw, the first eye listed is
        // the image-left one, features stacked brows < eyes < nose < mouth < chin (y down).
        let (jaw0, chin, eye_l_out, eye_l_in, eye_r_in, eye_r_out, brow, nose_tip, mouth_l, mouth_top, mouth_bottom) =
            if joints == 68 {
                (0, 8, 36, 39, 42, 45, 19, 30, 48, 51, 57)
            } else {
                (0, 16, 60, 64, 68, 72, 35, 54, 76, 79, 85)
            };
        assert!(shape[jaw0][0] < -0.5);
        assert!(shape[eye_l_out][0] < shape[eye_l_in][0]);
        assert!(shape[eye_l_in][0] < shape[eye_r_in][0]);
        assert!(shape[eye_r_in][0] < shape[eye_r_out][0]);
        assert!(shape[brow][1] < shape[eye_l_out][1]);
        assert!(shape[eye_l_out][1] < shape[nose_tip][1]);
        assert!(shape[nose_tip][1] < shape[mouth_top][1]);
        assert!(shape[mouth_top][1] < shape[mouth_bottom][1]);
        assert!(shape[mouth_bottom][1] < shape[chin][1]);
        assert!(shape[mouth_l][0] < 0.0);
        let lowest = shape.iter().map(|p| p[1]).fold(f32::MIN, f32::max);
        assert_eq!(shape[chin][1], lowest, "chin is the lowest point");
    }
}

#[test]
fn generated_csvs_parse_back_in_the_official_format() {
    for joints in [68, 98] {
        let dir = scratch(&format!("synth-csv{joints}"));
        let summary = synth::generate(&dir, joints, 20, 3).unwrap();
        assert_eq!((summary.train_count, summary.test_count), (16, 4));
        let mut total = 0;
        for (csv, expected) in [(&summary.train_csv, 16), (&summary.test_csv, 4)] {
            let rows = parse_csv(csv, joints);
            assert_eq!(rows.len(), expected);
            for (name, scale, center, pts) in rows {
                total += 1;
                let img = image::open(dir.join(&name)).unwrap().to_rgb8();
                assert_eq!(img.dimensions(), (256, 256));
                // Tight landmark box, COFW rounding: centre is the box centre, scale its side/200.
                let (mut lo, mut hi) = ([f64::MAX; 2], [f64::MIN; 2]);
                for p in &pts {
                    for k in 0..2 {
                        lo[k] = lo[k].min(p[k]);
                        hi[k] = hi[k].max(p[k]);
                    }
                }
                for k in 0..2 {
                    assert!((center[k] - (lo[k] + hi[k]) / 2.0).abs() <= 1.0, "{name} centre");
                }
                let side = (hi[0] - lo[0]).max(hi[1] - lo[1]);
                assert!(scale * 200.0 >= side - 0.01 && scale * 200.0 <= side + 2.01, "{name} scale");
                // Faces fill a sensible part of the image (the crop is 1.25·200·scale).
                assert!((0.2..=1.1).contains(&scale), "{name} scale {scale}");
            }
        }
        assert_eq!(total, 20);
    }
}

/// Over samples 0..`samples` of `seed` with `joints` points (skipping occluded ones where asked): (landmarks
/// for which `hit` holds, all landmarks).
fn count_landmarks(
    joints: usize, seed: u64, samples: usize, skip_occluded: bool, hit: impl Fn(&synth::SynthSample, [f32; 2]) -> bool,
) -> (usize, usize) {
    let (mut hits, mut all) = (0, 0);
    for index in 0..samples {
        let s = synth::render_sample(joints, seed, index).unwrap();
        assert_eq!(s.landmarks.len(), joints);
        if skip_occluded && s.occluded {
            continue;
        }
        for &p in &s.landmarks {
            all += 1;
            if hit(&s, p) {
                hits += 1;
            }
        }
    }
    (hits, all)
}

#[test]
fn landmarks_are_inside_the_image() {
    for joints in [68, 98] {
        let (inside, all) = count_landmarks(joints, 11, 60, false, |s, p| {
            p[0] > 0.0 && p[1] > 0.0 && p[0] < s.width as f32 && p[1] < s.height as f32
        });
        assert!(inside as f64 >= 0.99 * all as f64, "J={joints}: {inside}/{all} inside");
    }
}

#[test]
fn same_seed_gives_identical_bytes() {
    let a = scratch("synth-det_a");
    let b = scratch("synth-det_b");
    let c = scratch("synth-det_c");
    synth::generate(&a, 68, 10, 42).unwrap();
    synth::generate(&b, 68, 10, 42).unwrap();
    synth::generate(&c, 68, 10, 43).unwrap();
    let files = |d: &Path| {
        let mut v: Vec<PathBuf> = std::fs::read_dir(d.join("images")).unwrap().map(|e| e.unwrap().path()).collect();
        v.push(d.join(synth::TRAIN_CSV));
        v.push(d.join(synth::TEST_CSV));
        v.sort();
        v
    };
    let (fa, fb) = (files(&a), files(&b));
    assert_eq!(fa.len(), 12);
    for (x, y) in fa.iter().zip(&fb) {
        assert_eq!(x.file_name(), y.file_name());
        assert_eq!(std::fs::read(x).unwrap(), std::fs::read(y).unwrap(), "{}", x.display());
    }
    let train_a = std::fs::read(a.join(synth::TRAIN_CSV)).unwrap();
    let train_c = std::fs::read(c.join(synth::TRAIN_CSV)).unwrap();
    assert_ne!(train_a, train_c, "another seed gives another data set");
}

#[test]
fn official_flip_gives_a_consistent_face() {
    for joints in [68, 98] {
        let mean = synth::canonical_shape(joints).unwrap();
        let perm = mirror_perm(joints);
        let (eye_l, eye_r): (Vec<usize>, Vec<usize>) = if joints == 68 {
            ((36..42).collect(), (42..48).collect())
        } else {
            ((60..68).collect(), (68..76).collect())
        };
        let mut dark_checks = 0;
        for index in 0..40 {
            let s = synth::render_sample(joints, 5, index).unwrap();
            let w = s.width as f32;
            let flipped = flip_landmarks(&s.landmarks, w);
            // Geometry: the flipped-and-swapped set fits the mean shape (without a reflection) as
            // well as the original; mirroring without the swaps does not.
            let r_orig = similarity_residual(&mean, &s.landmarks);
            let r_flip = similarity_residual(&mean, &flipped);
            let unswapped: Vec<[f32; 2]> = s.landmarks.iter().map(|p| [w - p[0], p[1]]).collect();
            let r_bad = similarity_residual(&mean, &unswapped);
            assert!(r_orig < 0.3 && r_flip < 0.3, "J={joints} #{index}: residuals {r_orig} {r_flip}");
            assert!((r_orig - r_flip).abs() < 1e-3, "J={joints} #{index}: a mirror keeps the fit");
            assert!(r_bad > r_flip + 0.1, "J={joints} #{index}: unswapped {r_bad} vs {r_flip}");
            // Pixels: in the mirrored image, the eye regions of the flipped landmarks hold the dark
            // iris/pupil, darker than the skin at the nose bridge.
            if s.occluded {
                continue;
            }
            let img = flip_image(&s.rgb, s.width, s.height);
            let lum = |p: [f32; 2]| {
                let (x, y) = ((p[0].floor() as usize).min(s.width - 1), (p[1].floor() as usize).min(s.height - 1));
                let o = (y * s.width + x) * 3;
                0.299 * img[o] as f32 + 0.587 * img[o + 1] as f32 + 0.114 * img[o + 2] as f32
            };
            let centroid = |idx: &[usize]| {
                let n = idx.len() as f32;
                let (x, y) = idx.iter().fold((0.0, 0.0), |a, &i| (a.0 + flipped[i][0], a.1 + flipped[i][1]));
                [x / n, y / n]
            };
            let bridge = if joints == 68 { 28 } else { 52 };
            let skin = lum(flipped[bridge]);
            for (k, eye) in [&eye_l, &eye_r].into_iter().enumerate() {
                // WFLW has the pupils (96, 97); for 300W the eye centroid lies on the iris.
                let centre = if joints == 98 { flipped[96 + k] } else { centroid(eye) };
                assert!(lum(centre) < skin, "J={joints} #{index}: eye centre not darker than skin");
                dark_checks += 1;
            }
            // The first-listed eye is on the image-left side of the face after the flip as well:
            // its outer corner is farther from the right eye than its inner corner.
            let (l_out, l_in, r_in) = (flipped[eye_l[0]], flipped[eye_l[3]], flipped[perm[eye_l[3]]]);
            let d = |a: [f32; 2], b: [f32; 2]| ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt();
            assert!(d(l_out, r_in) > d(l_in, r_in), "J={joints} #{index}: eye corner order");
        }
        assert!(dark_checks >= 40, "enough unoccluded samples checked");
    }
}

#[test]
fn landmarks_sit_on_visible_structure() {
    // Local contrast around each landmark: the points are on edges/corners of drawn parts, so
    // almost all of them see a clear luminance change within a few pixels.
    for joints in [68, 98] {
        let (strong, all) = count_landmarks(joints, 9, 30, true, |s, p| {
            let lum = |x: i64, y: i64| {
                let (x, y) = (x.clamp(0, s.width as i64 - 1) as usize, y.clamp(0, s.height as i64 - 1) as usize);
                let o = (y * s.width + x) * 3;
                0.299 * s.rgb[o] as f32 + 0.587 * s.rgb[o + 1] as f32 + 0.114 * s.rgb[o + 2] as f32
            };
            let (cx, cy) = (p[0].floor() as i64, p[1].floor() as i64);
            let (mut lo, mut hi) = (f32::MAX, f32::MIN);
            for dy in -2..=2 {
                for dx in -2..=2 {
                    let v = lum(cx + dx, cy + dy);
                    lo = lo.min(v);
                    hi = hi.max(v);
                }
            }
            hi - lo > 25.0
        });
        let frac = strong as f64 / all as f64;
        eprintln!("J={joints}: {strong}/{all} landmarks on visible structure");
        assert!(frac > 0.85, "J={joints}: only {frac:.3} of the landmarks see local contrast");
    }
}

#[test]
fn bad_joint_count_is_a_one_line_error() {
    let err = synth::generate(&scratch("synth-bad"), 19, 4, 1).unwrap_err().to_string();
    assert!(err.contains("68") && err.contains("19") && !err.contains('\n'), "{err}");
    assert!(synth::render_sample(29, 1, 0).is_err());
    assert!(synth::canonical_shape(5).is_err());
}

#[test]
fn config_points_at_the_generated_data() {
    let dir = scratch("synth-config");
    let summary = synth::generate(&dir, 98, 5, 2).unwrap();
    let text = std::fs::read_to_string(&summary.config).unwrap();
    for needle in ["DATASET: WFLW", "NUM_JOINTS: 98", "SIGMA: 1.5", synth::TRAIN_CSV, synth::TEST_CSV, "PRETRAINED: ''"]
    {
        assert!(text.contains(needle), "config lacks {needle}:\n{text}");
    }
    assert!(text.contains(&format!("ROOT: '{}'", dir.display())));
    let y68 = synth::config_yaml(&dir, 68);
    assert!(y68.contains("DATASET: 300W") && y68.contains("SIGMA: 1.0") && y68.contains("NUM_JOINTS: 68"));
    // Same nesting as the official files: every STAGE lists one block count per channel entry.
    assert_eq!(y68.matches("        - 4\n").count(), 2 + 3 + 4);
}
