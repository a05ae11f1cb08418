//! Tracking faces through a frame stream: the detector (or whatever finds a stream's faces) runs on
//! the first frame, every `redetect` frames and whenever a track was lost; in between, each face's
//! crop comes from its landmarks in the previous frame, through the dataset convention (the tight
//! landmark box with the COFW rounding, its centre, side / 200 as the annotation scale, × 1.25 for
//! the crop: `data::annotations::landmark_box`, `box_center_scale`, boxes.rs's module doc). On a
//! detection frame every found face is matched to the previous frame's tracks by the IoU of their
//! landmark boxes (greedy, best pair first, at least [`MATCH_IOU`]) and keeps that track's id; an
//! unmatched face starts a new id, an unmatched track ends. A tracked face whose mean landmark score
//! falls under [`COLLAPSE_RATIO`] × its mean score at its last detection is dropped from the frame
//! and the next frame runs the detector.

use super::boxes::{FoundFace, SCALE_ENLARGEMENT};
use super::engine::FaceResult;
use super::smooth::{LandmarkSmoother, OneEuroParams};
use crate::data::annotations::{box_center_scale, landmark_box};

/// Landmark-box IoU at which a detected face continues a track.
pub const MATCH_IOU: f64 = 0.3;

/// A tracked face is lost when its mean landmark score falls under this fraction of its mean score
/// on the frame where it was last detected. Relative, not absolute: heatmap maxima depend on the
/// model (a trained model scores a face around 0.5–0.9, an untrained one near 0), so a fixed level
/// would fit one model only. Measured with the demo model (experiments/synthetic/
/// synthetic_hrnet_tiny.yaml trained by `hrk train`) on a synthetic face moving 3 px a frame over 60
/// raw frames: tracked crops on the face scored 0.846–0.855 (mean over the 68 points, detection
/// frames alike), crops on the empty background 0.33, i.e. 0.39 of the face's; half separates
/// the two. Photos' scores may differ; the ratio is a constant here, not a flag.
pub const COLLAPSE_RATIO: f32 = 0.5;

/// How a stream is tracked.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrackOptions {
    /// Run the detector every this many frames (≥ 1; 1 detects on every frame).
    pub redetect: usize,
    /// Frames per second: the time of frame `i` is `i / fps` (the smoother's clock and the JSONL's `time`).
    pub fps: f64,
    /// One Euro smoothing of the reported landmarks (None: raw).
    pub smooth: Option<OneEuroParams>,
}

struct Track {
    id: u32,
    /// The raw (unsmoothed) landmarks of the track's last frame: the next crop comes from them.
    landmarks: Vec<[f32; 2]>,
    /// Mean landmark score at the track's last detection.
    reference_score: f32,
    smoother: Option<LandmarkSmoother>,
}

/// The tracking state of one stream.
pub struct Tracker {
    opts: TrackOptions,
    tracks: Vec<Track>,
    next_id: u32,
    /// Frames seen so far (the index of the next frame).
    frame: usize,
    /// A track was lost on the last frame.
    lost: bool,
    detections: usize,
}

fn mean(v: &[f32]) -> f32 {
    if v.is_empty() {
        return 0.0;
    }
    v.iter().sum::<f32>() / v.len() as f32
}

/// The tight landmark box of `points` (COFW rounding), or None if it is empty.
fn points_box(points: &[[f32; 2]]) -> Option<[f64; 4]> {
    let pts: Vec<[f64; 2]> = points.iter().map(|p| [p[0] as f64, p[1] as f64]).collect();
    landmark_box(&pts).filter(|b| b[2] > b[0] && b[3] > b[1] && b.iter().all(|v| v.is_finite()))
}

fn iou(a: [f64; 4], b: [f64; 4]) -> f64 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let area = |r: [f64; 4]| (r[2] - r[0]) * (r[3] - r[1]);
    let union = area(a) + area(b) - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// The face whose crop comes from last frame's landmarks (the dataset convention: the tight
/// landmark box, scale side / 200, crop × 1.25); None if the landmarks span no box.
pub fn face_from_landmarks(points: &[[f32; 2]]) -> Option<FoundFace> {
    let bbox = points_box(points)?;
    let (c, annotation_scale) = box_center_scale(bbox);
    Some(FoundFace {
        bbox,
        score: None,
        center: [c[0] as f32, c[1] as f32],
        annotation_scale,
        crop_scale: annotation_scale * SCALE_ENLARGEMENT,
    })
}

impl Tracker {
    pub fn new(opts: TrackOptions) -> Self {
        Tracker { opts, tracks: Vec::new(), next_id: 0, frame: 0, lost: false, detections: 0 }
    }

    /// Whether the next frame runs the detector: the first frame, every `redetect` frames, after a
    /// lost track, and while nothing is tracked.
    pub fn wants_detection(&self) -> bool {
        self.frame.is_multiple_of(self.opts.redetect.max(1)) || self.lost || self.tracks.is_empty()
    }

    /// The next frame's faces when it does not detect: one per track, in track order, cropped
    /// from the track's last landmarks.
    pub fn tracked_faces(&self) -> Vec<FoundFace> {
        self.tracks.iter().filter_map(|t| face_from_landmarks(&t.landmarks)).collect()
    }

    /// Times the detector ran so far.
    pub fn detections(&self) -> usize {
        self.detections
    }

    /// The time of the next frame, seconds.
    pub fn next_time(&self) -> f64 {
        self.frame as f64 / self.opts.fps
    }

    /// A frame that failed before the model: time moves on, the tracks stay.
    pub fn skip_frame(&mut self) {
        self.frame += 1;
    }

    /// Takes the next frame's faces after the model (found by the detector if `detected`, else
    /// [`Tracker::tracked_faces`] in order): gives each its track `id`, drops collapsed tracks
    /// (and their faces), smooths the landmarks that are reported.
    pub fn update(&mut self, faces: &mut Vec<FaceResult>, detected: bool) {
        let time = self.next_time();
        self.frame += 1;
        self.lost = false;
        if detected {
            self.detections += 1;
            self.tracks = self.match_detections(faces);
        } else {
            // Tracked faces come in track order (a track with no box made no face: it is lost).
            let with_box: Vec<Track> = std::mem::take(&mut self.tracks)
                .into_iter()
                .filter(|t| {
                    let keep = face_from_landmarks(&t.landmarks).is_some();
                    self.lost |= !keep;
                    keep
                })
                .collect();
            let mut kept = Vec::new();
            let mut kept_faces = Vec::new();
            for (mut track, face) in with_box.into_iter().zip(faces.drain(..)) {
                if mean(&face.landmark_scores) < COLLAPSE_RATIO * track.reference_score {
                    self.lost = true;
                    continue;
                }
                track.landmarks = face.landmarks.clone();
                kept.push(track);
                kept_faces.push(face);
            }
            self.tracks = kept;
            *faces = kept_faces;
        }
        for (track, face) in self.tracks.iter_mut().zip(faces.iter_mut()) {
            face.id = Some(track.id);
            if let Some(s) = &mut track.smoother {
                s.smooth(time, &mut face.landmarks);
            }
        }
    }

    /// Detected faces (in order) → their tracks: matched ones keep their id and smoother.
    fn match_detections(&mut self, faces: &[FaceResult]) -> Vec<Track> {
        let old_boxes: Vec<Option<[f64; 4]>> = self.tracks.iter().map(|t| points_box(&t.landmarks)).collect();
        let new_boxes: Vec<Option<[f64; 4]>> = faces.iter().map(|f| points_box(&f.landmarks)).collect();
        let mut pairs: Vec<(f64, usize, usize)> = Vec::new();
        for (i, a) in new_boxes.iter().enumerate() {
            for (j, b) in old_boxes.iter().enumerate() {
                if let (Some(a), Some(b)) = (a, b) {
                    let v = iou(*a, *b);
                    if v >= MATCH_IOU {
                        pairs.push((v, i, j));
                    }
                }
            }
        }
        pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut old: Vec<Option<Track>> = std::mem::take(&mut self.tracks).into_iter().map(Some).collect();
        let mut continued: Vec<Option<Track>> = faces.iter().map(|_| None).collect();
        for (_, i, j) in pairs {
            if continued[i].is_none() {
                if let Some(t) = old[j].take() {
                    continued[i] = Some(t);
                }
            }
        }
        faces
            .iter()
            .zip(continued)
            .map(|(face, track)| {
                let mut track = track.unwrap_or_else(|| {
                    let id = self.next_id;
                    self.next_id += 1;
                    Track {
                        id,
                        landmarks: Vec::new(),
                        reference_score: 0.0,
                        smoother: self.opts.smooth.map(LandmarkSmoother::new),
                    }
                });
                track.landmarks = face.landmarks.clone();
                track.reference_score = mean(&face.landmark_scores);
                track
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// A synthetic face: 68 points around a centre (an ellipse of contour and an inner pattern),
    /// `side` pixels wide.
    fn face_points(center: [f64; 2], side: f64) -> Vec<[f32; 2]> {
        let shape = crate::synth::canonical_shape(68).unwrap();
        let (lo, hi) = shape.iter().fold(([f32::MAX; 2], [f32::MIN; 2]), |(lo, hi), p| {
            ([lo[0].min(p[0]), lo[1].min(p[1])], [hi[0].max(p[0]), hi[1].max(p[1])])
        });
        let span = (hi[0] - lo[0]).max(hi[1] - lo[1]) as f64;
        let mid = [(lo[0] + hi[0]) as f64 / 2.0, (lo[1] + hi[1]) as f64 / 2.0];
        shape
            .iter()
            .map(|p| {
                let x = center[0] + (p[0] as f64 - mid[0]) / span * side;
                let y = center[1] + (p[1] as f64 - mid[1]) / span * side;
                [x as f32, y as f32]
            })
            .collect()
    }

    /// Stands in for the landmark model: the true points (with 0.5 px noise) and score 0.8 when
    /// the crop holds the whole face and its side is within a factor 2 of the face's; background
    /// points (the crop's centre) with score 0.05 otherwise.
    fn model(face: &FoundFace, truth: &[[f32; 2]], rng: &mut Rng) -> FaceResult {
        let half = face.crop_scale * 100.0;
        let (cx, cy) = (face.center[0] as f64, face.center[1] as f64);
        let inside = truth.iter().all(|p| (p[0] as f64 - cx).abs() < half && (p[1] as f64 - cy).abs() < half);
        let tb = points_box(truth).unwrap();
        let ratio = 2.0 * half / (tb[2] - tb[0]).max(tb[3] - tb[1]);
        let ok = inside && (1.0..4.0).contains(&ratio);
        let landmarks: Vec<[f32; 2]> = if ok {
            truth.iter().map(|p| [p[0] + 0.5 * rng.normal() as f32, p[1] + 0.5 * rng.normal() as f32]).collect()
        } else {
            truth.iter().map(|_| [cx as f32 + rng.normal() as f32, cy as f32 + rng.normal() as f32]).collect()
        };
        let score = if ok { 0.8 } else { 0.05 };
        FaceResult { face: face.clone(), landmarks, landmark_scores: vec![score; truth.len()], id: None, pose: None }
    }

    /// The detector: the face's box as MTCNN draws it (a little larger, higher), converted as
    /// boxes.rs converts detector boxes.
    fn detect(truth: &[[f32; 2]]) -> FoundFace {
        let b = points_box(truth).unwrap();
        let side = b[2] - b[0];
        let fb = super::super::FaceBox::new(b[0] - 0.06 * side, b[1] - 0.15 * side, b[2] + 0.06 * side, b[3]).unwrap();
        let finder = super::super::FaceFinder::Boxes(vec![fb]);
        let rgb = crate::data::imageio::Rgb8::new(1, 1, vec![0; 3]).unwrap();
        finder.find(&rgb).unwrap().remove(0)
    }

    #[test]
    fn a_moving_face_is_tracked_with_one_id_and_the_detector_every_redetect_frames() {
        let mut rng = Rng::new(9);
        let opts = TrackOptions { redetect: 30, fps: 30.0, smooth: None };
        let mut tracker = Tracker::new(opts);
        let mut detected_on = Vec::new();
        for i in 0..75 {
            // Along a known path: 3 px/frame right, a vertical wave, growing from 100 to 137 px.
            let t = i as f64;
            let truth = face_points([150.0 + 3.0 * t, 200.0 + 20.0 * (t / 10.0).sin()], 100.0 + 0.5 * t);
            let detected = tracker.wants_detection();
            let crops = if detected { vec![detect(&truth)] } else { tracker.tracked_faces() };
            let mut faces: Vec<FaceResult> = crops.iter().map(|c| model(c, &truth, &mut rng)).collect();
            tracker.update(&mut faces, detected);
            if detected {
                detected_on.push(i);
            }
            assert_eq!(faces.len(), 1, "frame {i}");
            assert_eq!(faces[0].id, Some(0), "frame {i}");
            let err = faces[0]
                .landmarks
                .iter()
                .zip(&truth)
                .map(|(a, b)| ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt())
                .fold(0f32, f32::max);
            assert!(err < 3.0, "frame {i}: {err} px off");
        }
        assert_eq!(detected_on, [0, 30, 60]);
        assert_eq!(tracker.detections(), 3);
    }

    #[test]
    fn a_lost_face_is_dropped_and_redetected_and_two_faces_keep_their_ids() {
        let mut rng = Rng::new(4);
        let mut tracker = Tracker::new(TrackOptions { redetect: 100, fps: 25.0, smooth: None });
        let mut detected_on = Vec::new();
        for i in 0..8 {
            // Face A stays; face B jumps 150 px at frame 4 (the tracked crop misses it).
            let a = face_points([100.0, 100.0], 80.0);
            let b = face_points([if i < 4 { 300.0 } else { 450.0 }, 120.0], 90.0);
            let detected = tracker.wants_detection();
            if detected {
                detected_on.push(i);
            }
            let crops = if detected { vec![detect(&b), detect(&a)] } else { tracker.tracked_faces() };
            let mut faces: Vec<FaceResult> = crops
                .iter()
                .enumerate()
                .map(|(k, c)| {
                    // The tracked crops come in track order: B's track first (the detector found B first).
                    let truth = if k == 0 { &b } else { &a };
                    model(c, truth, &mut rng)
                })
                .collect();
            tracker.update(&mut faces, detected);
            let ids: Vec<u32> = faces.iter().filter_map(|f| f.id).collect();
            match i {
                0..=3 => assert_eq!(ids, [0, 1], "frame {i}"),
                4 => assert_eq!(ids, [1], "frame 4: B is lost, A goes on"),
                _ => assert_eq!(ids, [2, 1], "frame {i}: B found again is a new face, A keeps its id"),
            }
        }
        assert_eq!(detected_on, [0, 5], "the frame after a loss runs the detector");
    }

    #[test]
    fn detections_match_tracks_by_landmark_box_iou() {
        let a = [0.0, 0.0, 10.0, 10.0];
        assert_eq!(iou(a, a), 1.0);
        assert!((iou(a, [5.0, 0.0, 15.0, 10.0]) - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(iou(a, [20.0, 20.0, 30.0, 30.0]), 0.0);
        let f = face_from_landmarks(&[[10.2, 20.7], [30.5, 60.1]]).unwrap();
        assert_eq!(f.bbox, [10.0, 20.0, 31.0, 61.0]);
        assert_eq!(f.center, [20.5, 40.5]);
        assert!((f.crop_scale - 41.0 / 200.0 * 1.25).abs() < 1e-12);
        assert!(face_from_landmarks(&[[5.2, 5.2], [5.3, 5.2]]).is_some(), "rounding widens a point to a pixel");
        assert!(face_from_landmarks(&[[5.0, 5.0], [5.0, 5.0]]).is_none(), "collapsed landmarks span no box");
    }
}
