//! Horizontal flip of the official code: `np.fliplr` of the image, `x → width − x` of the
//! landmarks followed by swapping the mirrored pairs (`fliplr_joints`, MATCHED_PARTS), and
//! `center[0] → width − center[0]` in float32.

use anyhow::{bail, Result};

use super::image::Image;

// The official tables: WFLW 0-based, the others 1-based (converted to 0-based below).
const WFLW_PAIRS: [(usize, usize); 44] = [
    (0, 32),
    (1, 31),
    (2, 30),
    (3, 29),
    (4, 28),
    (5, 27),
    (6, 26),
    (7, 25),
    (8, 24),
    (9, 23),
    (10, 22),
    (11, 21),
    (12, 20),
    (13, 19),
    (14, 18),
    (15, 17),
    (33, 46),
    (34, 45),
    (35, 44),
    (36, 43),
    (37, 42),
    (38, 50),
    (39, 49),
    (40, 48),
    (41, 47),
    (60, 72),
    (61, 71),
    (62, 70),
    (63, 69),
    (64, 68),
    (65, 75),
    (66, 74),
    (67, 73),
    (55, 59),
    (56, 58),
    (76, 82),
    (77, 81),
    (78, 80),
    (87, 83),
    (86, 84),
    (88, 92),
    (89, 91),
    (95, 93),
    (96, 97),
];
const W300_PAIRS_1BASED: [(usize, usize); 29] = [
    (1, 17),
    (2, 16),
    (3, 15),
    (4, 14),
    (5, 13),
    (6, 12),
    (7, 11),
    (8, 10),
    (18, 27),
    (19, 26),
    (20, 25),
    (21, 24),
    (22, 23),
    (32, 36),
    (33, 35),
    (37, 46),
    (38, 45),
    (39, 44),
    (40, 43),
    (41, 48),
    (42, 47),
    (49, 55),
    (50, 54),
    (51, 53),
    (62, 64),
    (61, 65),
    (68, 66),
    (59, 57),
    (60, 56),
];
const COFW_PAIRS_1BASED: [(usize, usize); 11] =
    [(1, 2), (5, 7), (3, 4), (6, 8), (9, 10), (11, 12), (13, 15), (17, 18), (14, 16), (19, 20), (23, 24)];
const AFLW_PAIRS_1BASED: [(usize, usize); 8] = [(1, 6), (2, 5), (3, 4), (7, 12), (8, 11), (9, 10), (13, 15), (16, 18)];

const fn to_zero_based<const N: usize>(p: [(usize, usize); N]) -> [(usize, usize); N] {
    let mut out = p;
    let mut i = 0;
    while i < N {
        out[i] = (p[i].0 - 1, p[i].1 - 1);
        i += 1;
    }
    out
}

static W300_PAIRS: [(usize, usize); 29] = to_zero_based(W300_PAIRS_1BASED);
static COFW_PAIRS: [(usize, usize); 11] = to_zero_based(COFW_PAIRS_1BASED);
static AFLW_PAIRS: [(usize, usize); 8] = to_zero_based(AFLW_PAIRS_1BASED);
static WFLW_PAIRS_STATIC: [(usize, usize); 44] = WFLW_PAIRS;

/// The mirrored landmark pairs (0-based) for a landmark count: 98 WFLW, 68 300W, 29 COFW,
/// 19 AFLW, in the official order (the swaps are applied in this order).
pub fn mirror_pairs(joints: usize) -> Result<&'static [(usize, usize)]> {
    Ok(match joints {
        98 => &WFLW_PAIRS_STATIC,
        68 => &W300_PAIRS,
        29 => &COFW_PAIRS,
        19 => &AFLW_PAIRS,
        _ => bail!(
            "flip: no mirror pairs for {joints} landmarks (official layouts: 98, 68, 29, 19; set DATASET.FLIP_PAIRS)"
        ),
    })
}

/// `fliplr_joints(pts, width, dataset)` in place: `x → width − x` (float64), then swap every
/// mirrored pair in order. The pair table is chosen by `pts.len()`.
pub fn fliplr_joints(pts: &mut [[f64; 2]], width: usize) -> Result<()> {
    fliplr_joints_with(pts, width, mirror_pairs(pts.len())?)
}

/// [`fliplr_joints`] with an explicit pair table (DATASET.FLIP_PAIRS).
pub fn fliplr_joints_with(pts: &mut [[f64; 2]], width: usize, pairs: &[(usize, usize)]) -> Result<()> {
    if let Some(&(a, b)) = pairs.iter().find(|&&(a, b)| a >= pts.len() || b >= pts.len()) {
        bail!("flip: pair ({a}, {b}) out of range for {} landmarks", pts.len());
    }
    let w = width as f64;
    for p in pts.iter_mut() {
        p[0] = w - p[0];
    }
    for &(a, b) in pairs {
        pts.swap(a, b);
    }
    Ok(())
}

/// `center[0] = width − center[0]` on a float32 tensor.
pub fn flip_center(center: [f32; 2], width: usize) -> [f32; 2] {
    [width as f32 - center[0], center[1]]
}

/// `np.fliplr(img)`: column x ↔ column width − 1 − x.
pub fn fliplr_image(img: &Image) -> Result<Image> {
    let (w, h) = (img.width, img.height);
    if img.data.len() != w * h * 3 {
        bail!("flip: image {}x{} has {} values (need {})", w, h, img.data.len(), w * h * 3);
    }
    let mut data = vec![0f32; img.data.len()];
    for y in 0..h {
        for x in 0..w {
            let s = (y * w + (w - 1 - x)) * 3;
            let d = (y * w + x) * 3;
            data[d..d + 3].copy_from_slice(&img.data[s..s + 3]);
        }
    }
    Ok(Image { width: w, height: h, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_involutions_within_range() {
        for j in [98usize, 68, 29, 19] {
            let pairs = mirror_pairs(j).unwrap();
            let mut seen = vec![false; j];
            for &(a, b) in pairs {
                assert!(a < j && b < j && a != b);
                assert!(!seen[a] && !seen[b], "{j}: index used twice");
                seen[a] = true;
                seen[b] = true;
            }
        }
        assert!(mirror_pairs(5).is_err());
        let mut pts = vec![[0.0; 2]; 7];
        assert!(fliplr_joints(&mut pts, 10).is_err());
    }

    #[test]
    fn double_flip_is_identity() {
        let mut pts: Vec<[f64; 2]> = (0..68).map(|i| [i as f64 * 1.5, 100.0 - i as f64]).collect();
        let orig = pts.clone();
        fliplr_joints(&mut pts, 300).unwrap();
        fliplr_joints(&mut pts, 300).unwrap();
        assert_eq!(pts, orig);
        let img = Image { width: 2, height: 1, data: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0] };
        let f = fliplr_image(&img).unwrap();
        assert_eq!(f.data, vec![4.0, 5.0, 6.0, 1.0, 2.0, 3.0]);
        assert!(fliplr_image(&Image { width: 3, height: 3, data: vec![] }).is_err());
    }
}
