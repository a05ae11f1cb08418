//! Head pose (yaw, pitch, roll in degrees) from a face's 2-D landmarks: the pose of a mean 3-D face
//! whose projection best fits nine stable landmarks (PnP), solved by Levenberg–Marquardt on a full
//! perspective camera with focal length = image width and the principal point at the image centre.
//!
//! Layouts: 68 points (300W / iBUG order) and 98 points (WFLW order), by the landmark count. The
//! 29-point COFW and 19-point AFLW layouts have no pose (the face's `"pose"` is null): COFW's 29
//! points have no chin-to-nose depth pair hrk's PnP could use reliably (no nose tip distinct from
//! the nostrils is labelled consistently across its sources) and AFLW-19 has no chin; neither was
//! validated, so no pose is reported rather than an untested one.
//!
//! Angles: the model is `R · X + t` with `R = Rz(roll) · Ry(yaw) · Rx(pitch)` in camera axes
//! (x right, y down, z away from the camera). Yaw > 0: the face turns toward the image's left (the
//! subject's own right); pitch > 0: it looks down; roll > 0: it tilts clockwise in the image.
//!
//! # The mean 3-D face
//!
//! Hand-built for hrk (no third-party data, the project's licence): millimetres, camera axes as
//! above, origin on the line between the inner eye corners. Widths are rounded adult means of
//! classic anthropometry (Farkas' craniofacial norms): biocular width ex–ex ≈ 90 mm, intercanthal
//! en–en ≈ 33 mm, mouth width ch–ch ≈ 50 mm; heights: eye line to nose tip ≈ 45 mm, to subnasale
//! ≈ 52 mm, to the mouth corners ≈ 72 mm, to the chin (menton) ≈ 118 mm. Depths (z, negative toward
//! the camera) from the profile's usual relief: nose tip 30 mm in front of the inner eye corners,
//! subnasale 15 mm, outer eye corners 10 mm behind them (the face curves back), mouth corners
//! level with them at about 8 mm in front, chin 3 mm in front. Only relative positions matter; the
//! solver fits scale through the distance.

use super::engine::FaceResult;

/// The points used, in this order: image-left eye outer corner, image-left eye inner corner,
/// image-right eye inner, image-right eye outer, nose tip, subnasale, image-left mouth corner,
/// image-right mouth corner, chin.
pub const MEAN_FACE_MM: [[f64; 3]; 9] = [
    [-45.0, 0.0, 10.0],
    [-16.5, 0.0, 0.0],
    [16.5, 0.0, 0.0],
    [45.0, 0.0, 10.0],
    [0.0, 45.0, -30.0],
    [0.0, 52.0, -15.0],
    [-25.0, 72.0, -8.0],
    [25.0, 72.0, -8.0],
    [0.0, 118.0, -3.0],
];

/// The 300W (iBUG 68) indices of [`MEAN_FACE_MM`]'s points.
const IBUG_68: [usize; 9] = [36, 39, 42, 45, 30, 33, 48, 54, 8];
/// The WFLW (98) indices of [`MEAN_FACE_MM`]'s points.
const WFLW_98: [usize; 9] = [60, 64, 68, 72, 54, 57, 76, 82, 16];

/// Head pose in degrees (module doc for the axes and signs).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HeadPose {
    pub yaw: f32,
    pub pitch: f32,
    pub roll: f32,
}

/// The pose points of a layout of `joints` landmarks (None: no pose for it).
pub fn pose_indices(joints: usize) -> Option<&'static [usize; 9]> {
    match joints {
        68 => Some(&IBUG_68),
        98 => Some(&WFLW_98),
        _ => None,
    }
}

/// `R = Rz(roll) · Ry(yaw) · Rx(pitch)`, angles in radians.
fn rotation(yaw: f64, pitch: f64, roll: f64) -> [[f64; 3]; 3] {
    let (sy, cy) = yaw.sin_cos();
    let (sp, cp) = pitch.sin_cos();
    let (sr, cr) = roll.sin_cos();
    let rz = [[cr, -sr, 0.0], [sr, cr, 0.0], [0.0, 0.0, 1.0]];
    let ry = [[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]];
    let rx = [[1.0, 0.0, 0.0], [0.0, cp, -sp], [0.0, sp, cp]];
    let mul = |a: [[f64; 3]; 3], b: [[f64; 3]; 3]| {
        let mut m = [[0.0; 3]; 3];
        for (i, row) in m.iter_mut().enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                *v = (0..3).map(|k| a[i][k] * b[k][j]).sum();
            }
        }
        m
    };
    mul(rz, mul(ry, rx))
}

/// A pinhole camera: focal length and principal point, pixels.
#[derive(Clone, Copy, Debug)]
pub struct Camera {
    pub focal: f64,
    pub center: [f64; 2],
}

impl Camera {
    /// The default for an image: focal length = width, principal point at the centre.
    pub fn for_image(width: usize, height: usize) -> Camera {
        Camera { focal: width as f64, center: [width as f64 / 2.0, height as f64 / 2.0] }
    }

    /// Projects `points` (model millimetres) posed by `params` = [yaw, pitch, roll (radians), tx, ty, tz].
    pub fn project(&self, params: &[f64; 6], points: &[[f64; 3]]) -> Vec<[f64; 2]> {
        let r = rotation(params[0], params[1], params[2]);
        points
            .iter()
            .map(|p| {
                let c: Vec<f64> =
                    (0..3).map(|i| r[i][0] * p[0] + r[i][1] * p[1] + r[i][2] * p[2] + params[3 + i]).collect();
                [self.focal * c[0] / c[2] + self.center[0], self.focal * c[1] / c[2] + self.center[1]]
            })
            .collect()
    }
}

/// Sum of squared reprojection errors.
fn cost(camera: &Camera, params: &[f64; 6], model: &[[f64; 3]], image: &[[f64; 2]]) -> f64 {
    camera.project(params, model).iter().zip(image).map(|(a, b)| (a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sum()
}

/// Solves the 6×6 system `a · x = b` (Gaussian elimination, partial pivoting); None if singular.
fn solve6(mut a: [[f64; 6]; 6], mut b: [f64; 6]) -> Option<[f64; 6]> {
    for col in 0..6 {
        let pivot = (col..6).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[pivot][col].abs() < 1e-12 {
            return None;
        }
        a.swap(col, pivot);
        b.swap(col, pivot);
        for row in col + 1..6 {
            let f = a[row][col] / a[col][col];
            let pivot_row = a[col];
            for (v, p) in a[row][col..].iter_mut().zip(&pivot_row[col..]) {
                *v -= f * p;
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = [0.0; 6];
    for row in (0..6).rev() {
        let s: f64 = (row + 1..6).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - s) / a[row][row];
    }
    Some(x)
}

/// Levenberg–Marquardt from `start` (numeric Jacobian): the pose and its cost.
fn refine(camera: &Camera, start: [f64; 6], model: &[[f64; 3]], image: &[[f64; 2]]) -> ([f64; 6], f64) {
    let residuals = |p: &[f64; 6]| -> Vec<f64> {
        camera.project(p, model).iter().zip(image).flat_map(|(a, b)| [a[0] - b[0], a[1] - b[1]]).collect()
    };
    let (mut p, mut lambda) = (start, 1e-3);
    let mut c = cost(camera, &p, model, image);
    for _ in 0..100 {
        let r = residuals(&p);
        // Central differences: 1e-4 rad for the angles, 1e-3 mm for the translation.
        let jac: Vec<Vec<f64>> = (0..6)
            .map(|k| {
                let h = if k < 3 { 1e-4 } else { 1e-3 };
                let (mut hi, mut lo) = (p, p);
                hi[k] += h;
                lo[k] -= h;
                residuals(&hi).iter().zip(residuals(&lo)).map(|(a, b)| (a - b) / (2.0 * h)).collect()
            })
            .collect();
        let mut jtj = [[0.0; 6]; 6];
        let mut jtr = [0.0; 6];
        for i in 0..6 {
            for j in 0..6 {
                jtj[i][j] = jac[i].iter().zip(&jac[j]).map(|(a, b)| a * b).sum();
            }
            jtr[i] = -jac[i].iter().zip(&r).map(|(a, b)| a * b).sum::<f64>();
        }
        let mut improved = false;
        while lambda < 1e12 {
            let mut a = jtj;
            for (i, row) in a.iter_mut().enumerate() {
                row[i] += lambda * jtj[i][i].max(1e-9);
            }
            if let Some(step) = solve6(a, jtr) {
                let mut q = p;
                for k in 0..6 {
                    q[k] += step[k];
                }
                let cq = cost(camera, &q, model, image);
                if cq.is_finite() && q[5] > 0.0 && cq < c {
                    let done = c - cq < 1e-10 * c.max(1e-12);
                    (p, c, lambda) = (q, cq, (lambda / 10.0).max(1e-9));
                    improved = !done;
                    break;
                }
            }
            lambda *= 10.0;
        }
        if !improved {
            break;
        }
    }
    (p, c)
}

/// The pose of `model` (3-D, mm) seen at `image` (pixels) through `camera`; None if the points do
/// not determine one (coincident, not finite).
pub fn solve_pose(camera: &Camera, model: &[[f64; 3]], image: &[[f64; 2]]) -> Option<HeadPose> {
    let n = model.len().min(image.len()) as f64;
    if n < 4.0 || image.iter().any(|p| !p[0].is_finite() || !p[1].is_finite()) {
        return None;
    }
    let mean2 = |f: &dyn Fn(&[f64; 2]) -> f64| image.iter().map(f).sum::<f64>() / n;
    let mean3 = |k: usize| model.iter().map(|p| p[k]).sum::<f64>() / n;
    let (u, v) = (mean2(&|p| p[0]), mean2(&|p| p[1]));
    let (mx, my) = (mean3(0), mean3(1));
    let spread2 = image.iter().map(|p| (p[0] - u).powi(2) + (p[1] - v).powi(2)).sum::<f64>().sqrt();
    let spread3 = model.iter().map(|p| (p[0] - mx).powi(2) + (p[1] - my).powi(2)).sum::<f64>().sqrt();
    if spread2 < 1e-6 {
        return None;
    }
    // Weak-perspective start: distance from the scale, x/y from the centroid; frontal and ±40° yaw.
    let tz = camera.focal * spread3 / spread2 - mean3(2);
    let tx = (u - camera.center[0]) * tz / camera.focal - mx;
    let ty = (v - camera.center[1]) * tz / camera.focal - my;
    let (best, _) = [0.0f64, 40.0, -40.0]
        .iter()
        .map(|yaw| refine(camera, [yaw.to_radians(), 0.0, 0.0, tx, ty, tz], model, image))
        .min_by(|a, b| a.1.total_cmp(&b.1))?;
    let deg = |r: f64| r.to_degrees() as f32;
    let pose = HeadPose { yaw: deg(best[0]), pitch: deg(best[1]), roll: deg(best[2]) };
    [pose.yaw, pose.pitch, pose.roll].iter().all(|a| a.is_finite()).then_some(pose)
}

/// The head pose of a face's landmarks in an image of `width` × `height`; None for a layout
/// without pose points or landmarks that determine none.
pub fn head_pose(landmarks: &[[f32; 2]], width: usize, height: usize) -> Option<HeadPose> {
    let idx = pose_indices(landmarks.len())?;
    let image: Vec<[f64; 2]> = idx.iter().map(|&i| [landmarks[i][0] as f64, landmarks[i][1] as f64]).collect();
    solve_pose(&Camera::for_image(width, height), &MEAN_FACE_MM, &image)
}

/// Fills each face's `pose` from its (final) landmarks.
pub fn add_poses(faces: &mut [FaceResult], width: usize, height: usize) {
    for f in faces {
        f.pose = head_pose(&f.landmarks, width, height);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// A face that is not the solver's: the mean face with each point moved up to ±2.5 mm (a person
    /// differs from the mean by about that at these landmarks; ±4 mm moves a frontal pose by 5°).
    fn other_face(seed: u64) -> Vec<[f64; 3]> {
        let mut rng = Rng::new(seed);
        MEAN_FACE_MM
            .iter()
            .map(|p| [p[0] + rng.range(-2.5, 2.5), p[1] + rng.range(-2.5, 2.5), p[2] + rng.range(-2.5, 2.5)])
            .collect()
    }

    /// Image-left ↔ image-right roles of [`MEAN_FACE_MM`]'s points.
    const MIRROR: [usize; 9] = [3, 2, 1, 0, 4, 5, 7, 6, 8];

    #[test]
    fn faces_rendered_at_known_angles_give_them_back_and_mirrored_ones_the_opposite_yaw() {
        let camera = Camera::for_image(640, 480);
        let mut worst = 0f64;
        for (k, (yaw, pitch, roll)) in [
            (0.0, 0.0, 0.0),
            (30.0, 0.0, 0.0),
            (-45.0, 10.0, 5.0),
            (20.0, -15.0, -20.0),
            (-10.0, 20.0, 12.0),
            (50.0, 5.0, 0.0),
        ]
        .into_iter()
        .enumerate()
        {
            let face = other_face(k as u64 + 1);
            let params = [f64::to_radians(yaw), f64::to_radians(pitch), f64::to_radians(roll), 20.0, -10.0, 700.0];
            let image = camera.project(&params, &face);
            let p = solve_pose(&camera, &MEAN_FACE_MM, &image).unwrap();
            for (got, want) in [(p.yaw, yaw), (p.pitch, pitch), (p.roll, roll)] {
                worst = worst.max((got as f64 - want).abs());
            }
            assert!((p.yaw as f64 - yaw).abs() < 6.0, "{p:?} for {yaw},{pitch},{roll}");
            assert!((p.pitch as f64 - pitch).abs() < 6.0, "{p:?} for {yaw},{pitch},{roll}");
            assert!((p.roll as f64 - roll).abs() < 6.0, "{p:?} for {yaw},{pitch},{roll}");
            // The mirror image: x flipped about the principal point, left and right roles swapped.
            let mirrored: Vec<[f64; 2]> = MIRROR.iter().map(|&i| [640.0 - image[i][0], image[i][1]]).collect();
            let m = solve_pose(&camera, &MEAN_FACE_MM, &mirrored).unwrap();
            assert!((m.yaw + p.yaw).abs() < 2.0 && (m.roll + p.roll).abs() < 2.0, "{m:?} mirrors {p:?}");
            assert!((m.pitch - p.pitch).abs() < 2.0, "{m:?} mirrors {p:?}");
        }
        // Measured: 5.2° at worst (yaw of the -10/20/12 face), most within 3°: the shape's own
        // variation, not the solver (the mean face itself comes back exactly, below).
        assert!(worst < 6.0, "worst angle error {worst:.2}°");
    }

    #[test]
    fn layouts_without_pose_points_give_none() {
        assert!(head_pose(&[[1.0, 2.0]; 29], 100, 100).is_none());
        assert!(head_pose(&[[1.0, 2.0]; 68], 100, 100).is_none(), "coincident points determine no pose");
        // The mean face seen frontally through the 68 layout.
        let camera = Camera::for_image(200, 200);
        let image = camera.project(&[0.0, 0.0, 0.0, 0.0, 0.0, 500.0], &MEAN_FACE_MM);
        let mut lm = vec![[100.0f32, 100.0]; 68];
        for (&i, p) in IBUG_68.iter().zip(&image) {
            lm[i] = [p[0] as f32, p[1] as f32];
        }
        let p = head_pose(&lm, 200, 200).unwrap();
        assert!(p.yaw.abs() < 0.1 && p.pitch.abs() < 0.1 && p.roll.abs() < 0.1, "{p:?}");
    }
}
