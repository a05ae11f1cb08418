//! Procedural face geometry in a canonical frame (face half-width ≈ 1, y down, origin between the
//! jaw ends) and the landmark layouts that sit on it. Every landmark is a point of the same curve
//! that is drawn, so after the pose mapping the points stay on the visible edges and corners.

use super::raster::Pt;
use crate::rng::Rng;
use std::f32::consts::PI;

/// Identity and expression parameters of one face, in canonical units.
#[derive(Clone, Debug)]
pub(crate) struct FaceShape {
    pub(crate) half_width: f32,
    pub(crate) jaw_top_y: f32,
    pub(crate) chin_y: f32,
    pub(crate) chin_narrow: f32,
    pub(crate) forehead_height: f32,
    pub(crate) eye_sep: f32,
    pub(crate) eye_y: f32,
    pub(crate) eye_half_w: f32,
    pub(crate) eye_open_up: f32,
    pub(crate) eye_open_low: f32,
    pub(crate) eye_tilt: f32,
    pub(crate) iris_r: f32,
    pub(crate) gaze: Pt,
    pub(crate) brow_y: f32,
    pub(crate) brow_raise: f32,
    pub(crate) brow_arch: f32,
    pub(crate) brow_thick: f32,
    pub(crate) brow_inner_x: f32,
    pub(crate) brow_outer_x: f32,
    pub(crate) nose_tip_y: f32,
    pub(crate) nose_base_y: f32,
    pub(crate) nose_half_w: f32,
    pub(crate) mouth_y: f32,
    pub(crate) mouth_half_w: f32,
    pub(crate) lip_up: f32,
    pub(crate) lip_low: f32,
    pub(crate) mouth_open: f32,
    pub(crate) smile: f32,
}

/// Left/right in image terms for a frontal face: −1 is the image-left feature (the subject's
/// right), which the official layouts list first.
pub(crate) const IMAGE_LEFT: f32 = -1.0;
pub(crate) const IMAGE_RIGHT: f32 = 1.0;

impl FaceShape {
    /// The symmetric mean face: its landmarks are the canonical mean shape.
    pub(crate) fn mean() -> FaceShape {
        FaceShape {
            half_width: 1.0,
            jaw_top_y: -0.18,
            chin_y: 1.0,
            chin_narrow: 0.18,
            forehead_height: 1.1,
            eye_sep: 0.40,
            eye_y: -0.25,
            eye_half_w: 0.18,
            eye_open_up: 0.085,
            eye_open_low: 0.05,
            eye_tilt: 0.02,
            iris_r: 0.075,
            gaze: [0.0, 0.0],
            brow_y: -0.50,
            brow_raise: 0.0,
            brow_arch: 0.07,
            brow_thick: 0.09,
            brow_inner_x: 0.12,
            brow_outer_x: 0.82,
            nose_tip_y: 0.17,
            nose_base_y: 0.27,
            nose_half_w: 0.17,
            mouth_y: 0.55,
            mouth_half_w: 0.32,
            lip_up: 0.07,
            lip_low: 0.09,
            mouth_open: 0.0,
            smile: 0.0,
        }
    }

    /// A random identity with a random expression.
    pub(crate) fn random(rng: &mut Rng) -> FaceShape {
        let mut f = FaceShape::mean();
        f.half_width = rng.range_f32(0.9, 1.08);
        f.jaw_top_y = rng.range_f32(-0.22, -0.12);
        f.chin_y = rng.range_f32(0.92, 1.1);
        f.chin_narrow = rng.range_f32(0.05, 0.3);
        f.forehead_height = rng.range_f32(1.0, 1.2);
        f.eye_sep = rng.range_f32(0.37, 0.44);
        f.eye_y = rng.range_f32(-0.29, -0.21);
        f.eye_half_w = rng.range_f32(0.15, 0.2);
        let eye_open = rng.range_f32(0.55, 1.3);
        f.eye_open_up = rng.range_f32(0.075, 0.095) * eye_open;
        f.eye_open_low = rng.range_f32(0.04, 0.06) * eye_open.max(0.8);
        f.eye_tilt = rng.range_f32(-0.01, 0.04);
        f.iris_r = rng.range_f32(0.065, 0.085);
        f.gaze = [rng.range_f32(-0.7, 0.7), rng.range_f32(-0.6, 0.6)];
        f.brow_y = f.eye_y - rng.range_f32(0.22, 0.29);
        f.brow_raise = if rng.chance_f32(0.3) { rng.range_f32(0.03, 0.11) } else { rng.range_f32(-0.03, 0.03) };
        f.brow_arch = rng.range_f32(0.03, 0.1);
        f.brow_thick = rng.range_f32(0.06, 0.12);
        f.brow_inner_x = rng.range_f32(0.09, 0.16);
        f.brow_outer_x = rng.range_f32(0.76, 0.88);
        f.nose_tip_y = rng.range_f32(0.12, 0.22);
        f.nose_base_y = f.nose_tip_y + rng.range_f32(0.08, 0.12);
        f.nose_half_w = rng.range_f32(0.14, 0.2);
        f.mouth_y = f.nose_base_y + rng.range_f32(0.24, 0.32);
        f.mouth_half_w = rng.range_f32(0.26, 0.36);
        f.lip_up = rng.range_f32(0.05, 0.09);
        f.lip_low = rng.range_f32(0.06, 0.11);
        f.mouth_open = if rng.chance_f32(0.35) { rng.range_f32(0.03, 0.2) } else { 0.0 };
        f.smile = rng.range_f32(-0.03, 0.07);
        // An open mouth drops the jaw.
        f.chin_y += 0.6 * f.mouth_open;
        f
    }

    // ---- curves (canonical coordinates) ----

    /// Jaw contour, t in [0, 1] from the image-left end over the chin to the image-right end.
    pub(crate) fn jaw(&self, t: f32) -> Pt {
        let phi = PI * t;
        let (s, c) = phi.sin_cos();
        let narrow = 1.0 - self.chin_narrow * s.max(0.0).powi(3);
        [-self.half_width * c * narrow, self.jaw_top_y + (self.chin_y - self.jaw_top_y) * s]
    }

    pub(crate) fn jaw_dense(&self) -> Vec<Pt> {
        (0..=120).map(|i| self.jaw(i as f32 / 120.0)).collect()
    }

    /// Closed face outline: jaw then the forehead arc back over the top.
    pub(crate) fn face_outline(&self) -> Vec<Pt> {
        let mut pts = self.jaw_dense();
        for i in 1..48 {
            let a = i as f32 / 48.0 * PI;
            pts.push([self.half_width * a.cos(), self.jaw_top_y - self.forehead_height * a.sin()]);
        }
        pts
    }

    /// Eyebrow centre line height at s (0 = inner end, 1 = outer end).
    fn brow_mid(&self, s: f32) -> f32 {
        self.brow_y - self.brow_raise - self.brow_arch * (PI * (0.1 + 0.8 * s)).sin() + 0.05 * s * s
    }

    fn brow_x(&self, side: f32, s: f32) -> f32 {
        side * (self.brow_inner_x + (self.brow_outer_x - self.brow_inner_x) * s)
    }

    fn brow_half_thick(&self, s: f32) -> f32 {
        0.5 * self.brow_thick * (1.0 - 0.55 * s)
    }

    pub(crate) fn brow_upper(&self, side: f32, s: f32) -> Pt {
        [self.brow_x(side, s), self.brow_mid(s) - self.brow_half_thick(s)]
    }

    pub(crate) fn brow_lower(&self, side: f32, s: f32) -> Pt {
        [self.brow_x(side, s), self.brow_mid(s) + self.brow_half_thick(s)]
    }

    pub(crate) fn brow_polygon(&self, side: f32) -> Vec<Pt> {
        let n = 24;
        let mut pts: Vec<Pt> = (0..=n).map(|i| self.brow_upper(side, i as f32 / n as f32)).collect();
        pts.extend((0..=n).rev().map(|i| self.brow_lower(side, i as f32 / n as f32)));
        pts
    }

    fn eye_center_x(&self, side: f32) -> f32 {
        side * self.eye_sep
    }

    /// Eye lid point x and corner height at u (0 = outer corner, 1 = inner corner).
    fn eye_base(&self, side: f32, u: f32) -> Pt {
        [self.eye_center_x(side) + side * self.eye_half_w * (1.0 - 2.0 * u), self.eye_y - self.eye_tilt * (0.5 - u)]
    }

    pub(crate) fn eye_upper(&self, side: f32, u: f32) -> Pt {
        let b = self.eye_base(side, u);
        [b[0], b[1] - self.eye_open_up * (PI * u).sin().max(0.0).powf(0.8)]
    }

    pub(crate) fn eye_lower(&self, side: f32, u: f32) -> Pt {
        let b = self.eye_base(side, u);
        [b[0], b[1] + self.eye_open_low * (PI * u).sin().max(0.0).powf(0.9)]
    }

    pub(crate) fn eye_upper_dense(&self, side: f32) -> Vec<Pt> {
        (0..=24).map(|i| self.eye_upper(side, i as f32 / 24.0)).collect()
    }

    pub(crate) fn eye_lower_dense(&self, side: f32) -> Vec<Pt> {
        (0..=24).map(|i| self.eye_lower(side, i as f32 / 24.0)).collect()
    }

    pub(crate) fn eye_polygon(&self, side: f32) -> Vec<Pt> {
        let mut pts = self.eye_upper_dense(side);
        pts.extend(self.eye_lower_dense(side).into_iter().rev().skip(1));
        pts
    }

    /// Pupil centre; the gaze moves both pupils the same way in image terms.
    pub(crate) fn pupil(&self, side: f32) -> Pt {
        let mid = 0.5 * (self.eye_open_low - self.eye_open_up);
        [
            self.eye_center_x(side) + self.gaze[0] * 0.35 * self.eye_half_w,
            self.eye_y + mid + self.gaze[1] * 0.25 * self.eye_open_up,
        ]
    }

    /// Nose bridge, f in [0, 1] from between the eyes down to the tip.
    pub(crate) fn nose_bridge(&self, f: f32) -> Pt {
        [0.0, self.eye_y + (self.nose_tip_y - self.eye_y) * f]
    }

    /// Lower nose border, f in [0, 1] from the image-left wing to the image-right wing.
    pub(crate) fn nose_base(&self, f: f32) -> Pt {
        let x = 2.0 * f - 1.0;
        [x * self.nose_half_w, self.nose_base_y - 0.05 * x * x]
    }

    /// Nostril wing outline on one side, v in [0, 1] from its top down to the base end.
    fn nose_wing(&self, side: f32, v: f32) -> Pt {
        let w = self.nose_half_w;
        let p0 = [side * 0.75 * w, self.nose_base_y - 0.17];
        let p1 = [side * 1.3 * w, self.nose_base_y - 0.08];
        let p2 = self.nose_base(if side < 0.0 { 0.0 } else { 1.0 });
        let a = (1.0 - v) * (1.0 - v);
        let b = 2.0 * v * (1.0 - v);
        let c = v * v;
        [a * p0[0] + b * p1[0] + c * p2[0], a * p0[1] + b * p1[1] + c * p2[1]]
    }

    /// Wing, base and other wing as one polyline (drawn as the nose's lower outline).
    pub(crate) fn nose_outline(&self) -> Vec<Pt> {
        let mut pts: Vec<Pt> = (0..=12).map(|i| self.nose_wing(IMAGE_LEFT, i as f32 / 12.0)).collect();
        pts.extend((1..=20).map(|i| self.nose_base(i as f32 / 20.0)));
        pts.extend((0..12).rev().map(|i| self.nose_wing(IMAGE_RIGHT, i as f32 / 12.0)));
        pts
    }

    pub(crate) fn nostril(&self, side: f32) -> Pt {
        [side * 0.5 * self.nose_half_w, self.nose_base_y - 0.04]
    }

    fn smile_offset(&self, x: f32) -> f32 {
        let r = (x - 0.0) / self.mouth_half_w;
        -self.smile * r * r
    }

    fn mouth_x(&self, t: f32, half: f32) -> f32 {
        (2.0 * t - 1.0) * half
    }

    fn inner_half_w(&self) -> f32 {
        0.86 * self.mouth_half_w
    }

    /// Outer lip contour, upper part, t in [0, 1] from the image-left corner.
    pub(crate) fn lip_outer_upper(&self, t: f32) -> Pt {
        let x = self.mouth_x(t, self.mouth_half_w);
        let s = (PI * t).sin().max(0.0);
        let bow = s.powf(0.6) * (1.0 - 0.3 * (-((t - 0.5) / 0.08).powi(2)).exp());
        [x, self.mouth_y + self.smile_offset(x) - self.lip_up * bow]
    }

    pub(crate) fn lip_outer_lower(&self, t: f32) -> Pt {
        let x = self.mouth_x(t, self.mouth_half_w);
        let s = (PI * t).sin().max(0.0).powf(0.8);
        [x, self.mouth_y + self.smile_offset(x) + (0.8 * self.mouth_open + self.lip_low) * s]
    }

    pub(crate) fn lip_inner_upper(&self, t: f32) -> Pt {
        let x = self.mouth_x(t, self.inner_half_w());
        let s = (PI * t).sin().max(0.0);
        [x, self.mouth_y + self.smile_offset(x) - 0.2 * self.mouth_open * s]
    }

    pub(crate) fn lip_inner_lower(&self, t: f32) -> Pt {
        let x = self.mouth_x(t, self.inner_half_w());
        let s = (PI * t).sin().max(0.0).powf(0.9);
        [x, self.mouth_y + self.smile_offset(x) + 0.8 * self.mouth_open * s]
    }

    pub(crate) fn dense(f: impl Fn(f32) -> Pt, n: usize) -> Vec<Pt> {
        (0..=n).map(|i| f(i as f32 / n as f32)).collect()
    }

    /// Depth (towards the viewer) of the face surface, used to turn a yaw/pitch into 2-D shifts:
    /// an ellipsoidal head plus a nose ridge and slightly protruding lips.
    pub(crate) fn depth(&self, p: Pt) -> f32 {
        let [x, y] = p;
        let rx = x / (1.2 * self.half_width);
        let head = 0.8 * (1.0 - rx * rx).max(0.0).sqrt();
        let ridge = if y < self.eye_y {
            0.0
        } else if y < self.nose_tip_y {
            0.08 + 0.22 * (y - self.eye_y) / (self.nose_tip_y - self.eye_y)
        } else {
            let end = self.nose_base_y + 0.05;
            (0.3 * (1.0 - (y - self.nose_tip_y) / (end - self.nose_tip_y))).max(0.0)
        };
        let nose = ridge * (-(x / (0.9 * self.nose_half_w)).powi(2)).exp();
        let dy = (y - self.mouth_y) / 0.15;
        let lips = 0.05 * (-(x / self.mouth_half_w).powi(2) - dy * dy).exp();
        head + nose + lips
    }

    // ---- landmark layouts ----

    /// Landmarks in canonical coordinates for the 68-point (300W/iBUG) or 98-point (WFLW) layout.
    pub(crate) fn landmarks(&self, joints: usize) -> Vec<Pt> {
        if joints == 98 {
            self.landmarks_98()
        } else {
            self.landmarks_68()
        }
    }

    fn landmarks_68(&self) -> Vec<Pt> {
        let mut v = Vec::with_capacity(68);
        v.extend(resample_by_length(&self.jaw_dense(), 17)); // 0..16
        v.extend((0..5).map(|k| self.brow_upper(IMAGE_LEFT, 1.0 - k as f32 / 4.0))); // 17..21 outer→inner
        v.extend((0..5).map(|k| self.brow_upper(IMAGE_RIGHT, k as f32 / 4.0))); // 22..26 inner→outer
        v.extend((0..4).map(|k| self.nose_bridge(k as f32 / 3.0))); // 27..30
        v.extend((0..5).map(|k| self.nose_base(k as f32 / 4.0))); // 31..35
        let (l, r) = (IMAGE_LEFT, IMAGE_RIGHT);
        let third = 1.0 / 3.0;
        // 36..41: outer corner, upper lid, inner corner, lower lid back to the outer corner.
        v.extend([
            self.eye_upper(l, 0.0),
            self.eye_upper(l, third),
            self.eye_upper(l, 2.0 * third),
            self.eye_upper(l, 1.0),
            self.eye_lower(l, 2.0 * third),
            self.eye_lower(l, third),
        ]);
        // 42..47: inner corner, upper lid, outer corner, lower lid back to the inner corner.
        v.extend([
            self.eye_upper(r, 1.0),
            self.eye_upper(r, 2.0 * third),
            self.eye_upper(r, third),
            self.eye_upper(r, 0.0),
            self.eye_lower(r, third),
            self.eye_lower(r, 2.0 * third),
        ]);
        v.extend((0..=6).map(|k| self.lip_outer_upper(k as f32 / 6.0))); // 48..54
        v.extend((1..=5).rev().map(|k| self.lip_outer_lower(k as f32 / 6.0))); // 55..59
        v.extend((0..=4).map(|k| self.lip_inner_upper(k as f32 / 4.0))); // 60..64
        v.extend((1..=3).rev().map(|k| self.lip_inner_lower(k as f32 / 4.0))); // 65..67
        v
    }

    fn landmarks_98(&self) -> Vec<Pt> {
        let mut v = Vec::with_capacity(98);
        let (l, r) = (IMAGE_LEFT, IMAGE_RIGHT);
        v.extend(resample_by_length(&self.jaw_dense(), 33)); // 0..32
                                                             // Brows: upper edge outer→inner (left brow) then lower edge inner→outer; mirrored on the right.
        let lower_s = [0.0f32, 0.32, 0.64, 0.92];
        v.extend((0..5).map(|k| self.brow_upper(l, 1.0 - k as f32 / 4.0))); // 33..37
        v.extend(lower_s.iter().map(|&s| self.brow_lower(l, s))); // 38..41
        v.extend((0..5).map(|k| self.brow_upper(r, k as f32 / 4.0))); // 42..46
        v.extend(lower_s.iter().rev().map(|&s| self.brow_lower(r, s))); // 47..50
        v.extend((0..4).map(|k| self.nose_bridge(k as f32 / 3.0))); // 51..54
        v.extend((0..5).map(|k| self.nose_base(k as f32 / 4.0))); // 55..59
                                                                  // 60..67: outer corner, upper lid, inner corner, lower lid back.
        v.push(self.eye_upper(l, 0.0));
        v.extend([0.25f32, 0.5, 0.75].iter().map(|&u| self.eye_upper(l, u)));
        v.push(self.eye_upper(l, 1.0));
        v.extend([0.75f32, 0.5, 0.25].iter().map(|&u| self.eye_lower(l, u)));
        // 68..75: inner corner, upper lid, outer corner, lower lid back.
        v.push(self.eye_upper(r, 1.0));
        v.extend([0.75f32, 0.5, 0.25].iter().map(|&u| self.eye_upper(r, u)));
        v.push(self.eye_upper(r, 0.0));
        v.extend([0.25f32, 0.5, 0.75].iter().map(|&u| self.eye_lower(r, u)));
        v.extend((0..=6).map(|k| self.lip_outer_upper(k as f32 / 6.0))); // 76..82
        v.extend((1..=5).rev().map(|k| self.lip_outer_lower(k as f32 / 6.0))); // 83..87
        v.extend((0..=4).map(|k| self.lip_inner_upper(k as f32 / 4.0))); // 88..92
        v.extend((1..=3).rev().map(|k| self.lip_inner_lower(k as f32 / 4.0))); // 93..95
        v.push(self.pupil(l)); // 96
        v.push(self.pupil(r)); // 97
        v
    }
}

/// `n` points at equal arc length along a polyline (ends included).
pub(crate) fn resample_by_length(line: &[Pt], n: usize) -> Vec<Pt> {
    let mut cum = Vec::with_capacity(line.len());
    let mut total = 0.0f32;
    cum.push(0.0);
    for w in line.windows(2) {
        total += ((w[1][0] - w[0][0]).powi(2) + (w[1][1] - w[0][1]).powi(2)).sqrt();
        cum.push(total);
    }
    let mut out = Vec::with_capacity(n);
    let mut seg = 0usize;
    for k in 0..n {
        let target = if n > 1 { total * k as f32 / (n - 1) as f32 } else { 0.0 };
        while seg + 2 < line.len() && cum[seg + 1] < target {
            seg += 1;
        }
        let len = cum[seg + 1] - cum[seg];
        let f = if len > 0.0 { ((target - cum[seg]) / len).clamp(0.0, 1.0) } else { 0.0 };
        let (a, b) = (line[seg], line[seg + 1]);
        out.push([a[0] + f * (b[0] - a[0]), a[1] + f * (b[1] - a[1])]);
    }
    out
}
