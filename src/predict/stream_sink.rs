//! A frame stream's files (video, stdin frames): `<stem>.jsonl`, one JSON line per frame in stream
//! order (`{"frame", "time", "faces": [...]}`, each face the photo JSON's fields plus its track
//! `id`), appended by whole lines and flushed per frame, so an interrupted run leaves complete
//! lines only; `<stem>.csv`, a row per face per frame, written atomically when the stream ends
//! (an interrupted run has the JSONL but no CSV); and, in a binary built with the `video` feature,
//! `<stem>_landmarks.mp4`: every frame with its faces drawn as on the photo overlays plus their
//! ids, H.264 at the stream's size and rate (video/encode.rs), renamed into place when the stream
//! ends (an interrupted run leaves none). The CSV's fields are numbers only (nothing to quote):
//! frame, time, id, the face's box (as in the JSON), x, y of each landmark, then yaw, pitch, roll
//! (empty without a pose).

use super::aligned::{aligned_face, png_bytes};
use super::sink::{face_json, OutputSink};
use super::stream::{FrameFaces, FrameOutcome};
use crate::atomic_file::write_atomically;
use anyhow::{Context, Result};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;

/// The CSV's columns before the landmarks.
const CSV_HEAD: &str = "frame,time,id,box_x1,box_y1,box_x2,box_y2";

/// What a frame stream writes, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameStreamOutputs {
    /// The output folder (created if needed).
    pub out: PathBuf,
    /// The files' stem: `<stem>.jsonl`, `<stem>.csv`, `<stem>_landmarks.mp4`, `<stem>_faces/`.
    pub stem: String,
    /// The model's landmark count (the CSV's columns).
    pub joints: usize,
    /// `--aligned SIZE` with `--aligned-every N`.
    pub aligned: Option<AlignedEvery>,
    /// Write `<stem>_landmarks.mp4` (on by default; a binary built without the `video` feature
    /// never writes it: [`FrameStreamOutputs::writes_overlay_video`]).
    pub overlay_video: bool,
    /// Landmark indices drawn on the overlay video (`--labels`).
    pub labels: bool,
}

impl FrameStreamOutputs {
    /// Whether `<stem>_landmarks.mp4` is written: asked for, and this binary has video.
    pub fn writes_overlay_video(&self) -> bool {
        self.overlay_video && crate::video::BUILT
    }

    /// The overlay video's path.
    pub fn overlay_video_path(&self) -> PathBuf {
        self.out.join(format!("{}_landmarks.mp4", self.stem))
    }

    /// The stream's files for messages: "stdin.jsonl, stdin.csv and stdin_landmarks.mp4".
    pub fn file_names(&self) -> String {
        let (jsonl, csv) = (format!("{}.jsonl", self.stem), format!("{}.csv", self.stem));
        if self.writes_overlay_video() {
            format!("{jsonl}, {csv} and {}_landmarks.mp4", self.stem)
        } else {
            format!("{jsonl} and {csv}")
        }
    }
}

/// Writes a frame stream's JSONL, CSV and overlay video into a folder.
pub struct FrameStreamSink {
    jsonl_path: PathBuf,
    jsonl: std::fs::File,
    csv_path: PathBuf,
    csv: String,
    fps: f64,
    /// The index of the next frame (failed frames count: indices are the stream's).
    frame: usize,
    aligned: Option<AlignedEvery>,
    #[cfg(feature = "video")]
    video: Option<OverlayVideo>,
    out: PathBuf,
    stem: String,
}

/// `--aligned SIZE` with `--aligned-every N` for a frame stream: each face's crop, every N-th frame
/// (frames 0, N, 2N, …), as `<stem>_faces/<id>/<frame>.png` (frame zero-padded to six digits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AlignedEvery {
    pub size: usize,
    pub every: usize,
}

impl FrameStreamSink {
    /// Starts `<stem>.jsonl` empty in `outputs.out` (an older one is replaced); `fps` gives each
    /// frame's time. With the overlay video, a missing H.264 encoder is refused here, in one line.
    pub fn new(outputs: &FrameStreamOutputs, fps: f64) -> Result<Self> {
        let out = &outputs.out;
        std::fs::create_dir_all(out).with_context(|| format!("cannot create output folder {}", out.display()))?;
        #[cfg(feature = "video")]
        let video = match outputs.writes_overlay_video() {
            true => Some(OverlayVideo::new(outputs.overlay_video_path(), outputs.labels, fps)?),
            false => None,
        };
        let jsonl_path = out.join(format!("{}.jsonl", outputs.stem));
        // Emptied through the atomic writer, then grown by whole lines.
        write_atomically(&jsonl_path, b"")?;
        let jsonl = std::fs::OpenOptions::new()
            .append(true)
            .open(&jsonl_path)
            .with_context(|| format!("cannot open {}", jsonl_path.display()))?;
        let mut csv = String::from(CSV_HEAD);
        crate::data::annotations::push_landmark_columns(&mut csv, outputs.joints);
        csv.push_str(",yaw,pitch,roll\n");
        Ok(FrameStreamSink {
            jsonl_path,
            jsonl,
            csv_path: out.join(format!("{}.csv", outputs.stem)),
            csv,
            fps,
            frame: 0,
            aligned: outputs.aligned,
            #[cfg(feature = "video")]
            video,
            out: out.clone(),
            stem: outputs.stem.clone(),
        })
    }

    fn write_aligned(&self, frame: usize, f: &FrameFaces) -> Result<()> {
        let Some(a) = self.aligned.filter(|a| frame.is_multiple_of(a.every.max(1))) else { return Ok(()) };
        for face in &f.image.faces {
            let dir = self.out.join(format!("{}_faces", self.stem)).join(face.id.unwrap_or(0).to_string());
            std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            let path = dir.join(format!("{frame:06}.png"));
            let crop = aligned_face(&f.rgb, face, a.size)?;
            write_atomically(&path, &png_bytes(&crop, &path.display().to_string())?)?;
        }
        Ok(())
    }

    /// Adds the frame to the overlay video (nothing without the `video` feature).
    fn write_video(&mut self, f: &FrameFaces, time: f64) -> Result<()> {
        #[cfg(feature = "video")]
        if let Some(video) = &mut self.video {
            return video.push(f, time);
        }
        let _ = (f, time);
        Ok(())
    }

    /// Writes the CSV, then puts the overlay video in place (a stream without frames has none).
    pub fn finish(self) -> Result<()> {
        let csv = write_atomically(&self.csv_path, self.csv.as_bytes());
        #[cfg(feature = "video")]
        if let Some(video) = self.video {
            return csv.and(video.finish());
        }
        csv
    }
}

/// A frame stream's `<stem>_landmarks.mp4` while it is written.
#[cfg(feature = "video")]
struct OverlayVideo {
    path: PathBuf,
    labels: bool,
    fps: f64,
    /// Started by the first frame, whose size is the video's.
    writer: Option<crate::video::encode::Mp4Writer>,
    /// Why the video was given up (reported with the frame it failed on); the file is then not
    /// written, and [`OverlayVideo::finish`] says so.
    failed: Option<String>,
}

#[cfg(feature = "video")]
impl OverlayVideo {
    fn new(path: PathBuf, labels: bool, fps: f64) -> Result<Self> {
        crate::video::encode::check_encoder()
            .with_context(|| format!("{}: cannot write the overlay video", path.display()))?;
        Ok(OverlayVideo { path, labels, fps, writer: None, failed: None })
    }

    /// Draws the frame's faces and encodes it at `time`. A frame of another size than the first
    /// fails alone; an encoder failure fails its frame and gives the video up.
    fn push(&mut self, f: &FrameFaces, time: f64) -> Result<()> {
        if self.failed.is_some() {
            return Ok(());
        }
        let rgb = &f.rgb;
        if let Some(size) = self.writer.as_ref().map(|w| w.input_size()) {
            if size != [rgb.width, rgb.height] {
                anyhow::bail!(
                    "{}: frame is {}x{}, the video {}x{}; left out of it",
                    self.path.display(),
                    rgb.width,
                    rgb.height,
                    size[0],
                    size[1]
                );
            }
        }
        let pushed = self.draw_and_push(f, time);
        if let Err(e) = &pushed {
            self.failed = Some(format!("{e:#}"));
            // Dropping the writer removes its temporary file.
            self.writer = None;
        }
        pushed
    }

    fn draw_and_push(&mut self, f: &FrameFaces, time: f64) -> Result<()> {
        let rgb = &f.rgb;
        let mut img = image::RgbImage::from_raw(rgb.width as u32, rgb.height as u32, rgb.data.clone())
            .ok_or_else(|| anyhow::anyhow!("{}: frame pixels do not match its size", self.path.display()))?;
        super::sink::draw_faces(&mut img, &f.image.faces, self.labels);
        let drawn = crate::data::imageio::Rgb8::new(rgb.width, rgb.height, img.into_raw())?;
        let writer = match self.writer.take() {
            Some(w) => w,
            None => crate::video::encode::Mp4Writer::create(&self.path, rgb.width, rgb.height, self.fps)?,
        };
        self.writer.insert(writer).push(&drawn, Some(time))
    }

    fn finish(self) -> Result<()> {
        match (self.failed, self.writer) {
            (Some(why), _) => Err(anyhow::anyhow!("{} not written: {why}", self.path.display())),
            (None, Some(writer)) => writer.finish(),
            (None, None) => Ok(()),
        }
    }
}

impl OutputSink for FrameStreamSink {
    /// A frame whose aligned crops or overlay-video frame cannot be written fails alone (its JSONL
    /// line and CSV rows are still written); a JSONL line that cannot be written ends the stream.
    fn write_frames(&mut self, frames: &[FrameOutcome]) -> Result<Vec<Option<anyhow::Error>>> {
        let mut unwritten = Vec::with_capacity(frames.len());
        for o in frames {
            let (frame, time) = (self.frame, o.time.unwrap_or(self.frame as f64 / self.fps));
            self.frame += 1;
            let Ok(f) = &o.result else {
                unwritten.push(None);
                continue;
            };
            let aligned = self.write_aligned(frame, f).err();
            let video = self.write_video(f, time).err();
            unwritten.push(aligned.or(video));
            let faces = &f.image.faces;
            let line = serde_json::json!({
                "frame": frame,
                "time": time,
                "faces": faces.iter().map(face_json).collect::<Vec<_>>(),
            });
            let text = serde_json::to_string(&line)? + "\n";
            (self.jsonl.write_all(text.as_bytes()).and_then(|_| self.jsonl.flush()))
                .with_context(|| format!("cannot write {}", self.jsonl_path.display()))?;
            for face in faces {
                let id = face.id.map(|i| i.to_string()).unwrap_or_default();
                let [x1, y1, x2, y2] = face.face.bbox;
                let _ = write!(self.csv, "{frame},{time},{id},{x1},{y1},{x2},{y2}");
                for q in &face.landmarks {
                    let _ = write!(self.csv, ",{},{}", q[0], q[1]);
                }
                match face.pose {
                    Some(p) => _ = write!(self.csv, ",{},{},{}", p.yaw, p.pitch, p.roll),
                    None => self.csv.push_str(",,,"),
                }
                self.csv.push('\n');
            }
        }
        Ok(unwritten)
    }
}

#[cfg(all(test, feature = "video"))]
mod tests {
    use super::*;
    use crate::atomic_file::sorted_names_in as names_in;
    use crate::data::imageio::Rgb8;
    use crate::predict::{FaceResult, FoundFace, ImageResult};

    fn outputs(out: &std::path::Path) -> FrameStreamOutputs {
        FrameStreamOutputs {
            out: out.to_path_buf(),
            stem: "clip".into(),
            joints: 2,
            aligned: None,
            overlay_video: true,
            labels: true,
        }
    }

    /// A 48×40 frame with one tracked face.
    fn frame(i: usize) -> FrameOutcome {
        let rgb = Rgb8::new(48, 40, vec![(i * 20) as u8; 48 * 40 * 3]).unwrap();
        let face = FaceResult {
            face: FoundFace {
                bbox: [5.0, 12.0, 30.0, 35.0],
                score: None,
                center: [17.5, 23.5],
                annotation_scale: 0.1,
                crop_scale: 0.1,
            },
            landmarks: vec![[10.0, 20.0], [20.0, 20.0]],
            landmark_scores: vec![0.5, 0.5],
            id: Some(3),
            pose: None,
        };
        let image = ImageResult { path: "stdin".into(), width: 48, height: 40, faces: vec![face] };
        FrameOutcome { label: "stdin".into(), name: "stdin".into(), time: None, result: Ok(FrameFaces { image, rgb }) }
    }

    /// A stream that ends in an error (the sink dropped unfinished) leaves no overlay video and no
    /// temporary file; a finished one has it.
    #[test]
    fn the_overlay_video_appears_only_when_the_stream_finishes() {
        let dir = tempfile::tempdir().unwrap();
        let outs = outputs(dir.path());
        assert_eq!(outs.file_names(), "clip.jsonl, clip.csv and clip_landmarks.mp4");
        let mut sink = FrameStreamSink::new(&outs, 25.0).unwrap();
        let written = sink.write_frames(&[frame(0), frame(1)]).unwrap();
        assert!(written.iter().all(Option::is_none));
        assert_eq!(names_in(dir.path()).len(), 2, "the JSONL and the video's temporary file");
        drop(sink);
        assert_eq!(names_in(dir.path()), ["clip.jsonl"]);

        let mut sink = FrameStreamSink::new(&outs, 25.0).unwrap();
        sink.write_frames(&[frame(0), frame(1), frame(2)]).unwrap();
        sink.finish().unwrap();
        assert_eq!(names_in(dir.path()), ["clip.csv", "clip.jsonl", "clip_landmarks.mp4"]);
        let off = FrameStreamOutputs { overlay_video: false, ..outs };
        assert_eq!(off.file_names(), "clip.jsonl and clip.csv");
    }

    /// A video that cannot be written fails the frame it failed on, is then given up (later
    /// frames are written without it), and the stream's finish says so in one line.
    #[test]
    fn a_failed_overlay_video_fails_its_frame_and_the_finish() {
        let dir = tempfile::tempdir().unwrap();
        let outs = outputs(dir.path());
        std::fs::create_dir(outs.overlay_video_path()).unwrap();
        let mut sink = FrameStreamSink::new(&outs, 25.0).unwrap();
        let written = sink.write_frames(&[frame(0), frame(1)]).unwrap();
        let e = format!("{:#}", written[0].as_ref().unwrap());
        assert!(e.contains("clip_landmarks.mp4: write failed: is a directory"), "{e}");
        assert!(written[1].is_none());
        let e = sink.finish().unwrap_err().to_string();
        assert!(e.contains("clip_landmarks.mp4 not written: ") && !e.contains('\n'), "{e}");
        let jsonl = std::fs::read_to_string(dir.path().join("clip.jsonl")).unwrap();
        assert_eq!(jsonl.lines().count(), 2);
        assert!(dir.path().join("clip.csv").exists());
    }
}

/// Without the `video` feature a frame stream never writes the overlay video, asked for or not.
#[cfg(all(test, not(feature = "video")))]
#[test]
fn without_video_no_overlay_video_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let outs = FrameStreamOutputs {
        out: dir.path().to_path_buf(),
        stem: "clip".into(),
        joints: 2,
        aligned: None,
        overlay_video: true,
        labels: false,
    };
    assert!(!outs.writes_overlay_video());
    assert_eq!(outs.file_names(), "clip.jsonl and clip.csv");
    FrameStreamSink::new(&outs, 25.0).unwrap().finish().unwrap();
    assert_eq!(crate::atomic_file::sorted_names_in(dir.path()), ["clip.csv", "clip.jsonl"]);
}
