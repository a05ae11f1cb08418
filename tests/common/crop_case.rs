//! Random crop geometries for the crop tests.

use hrk::rng::Rng;

/// The geometry of random crop case `k` over a w×h image, as the crop tests draw it (center, then scale,
/// then rotation from `rng`): output 48×40 every fifth case, else 32×32; a center up to 20 px outside the
/// image; scale·200/res[0] from 0.3 to 4 (both sides of the pre-downscale threshold); a rotation within
/// ±30°, none every third case.
pub struct CropCase {
    pub center: [f32; 2],
    pub scale: f64,
    pub res: [usize; 2],
    pub rot: f64,
}

pub fn random_crop_case(rng: &mut Rng, k: usize, w: usize, h: usize) -> CropCase {
    let res = if k.is_multiple_of(5) { [48, 40] } else { [32, 32] };
    let center = [rng.range(-20.0, w as f64 + 20.0) as f32, rng.range(-20.0, h as f64 + 20.0) as f32];
    let scale = rng.range(0.3, 4.0) * res[0] as f64 / 200.0;
    let rot = if k % 3 == 2 { 0.0 } else { rng.range(-30.0, 30.0) };
    CropCase { center, scale, res, rot }
}
