//! A frame stream's files (video, stdin frames): `<stem>.jsonl`, one JSON line per frame in stream
//! order (`{"frame", "time", "faces": [...]}`, each face the photo JSON's fields plus its track
//! `id`), appended by whole lines and flushed per frame, so an interrupted run leaves complete
//! lines only; and `<stem>.csv`, a row per face per frame, written atomically when the stream ends
//! (an interrupted run has the JSONL but no CSV). The CSV's fields are numbers only (nothing to
//! quote): frame, time, id, the face's box (as in the JSON), x, y of each landmark, then yaw,
//! pitch, roll (empty without a pose).

use super::aligned::{aligned_face, png_bytes};
use super::sink::{face_json, OutputSink};
use super::stream::{FrameFaces, FrameOutcome};
use crate::atomic_file::write_atomically;
use anyhow::{Context, Result};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// The CSV's columns before the landmarks.
const CSV_HEAD: &str = "frame,time,id,box_x1,box_y1,box_x2,box_y2";

/// Writes a frame stream's JSONL and CSV into a folder.
pub struct FrameStreamSink {
    jsonl_path: PathBuf,
    jsonl: std::fs::File,
    csv_path: PathBuf,
    csv: String,
    fps: f64,
    /// The index of the next frame (failed frames count: indices are the stream's).
    frame: usize,
    aligned: Option<AlignedEvery>,
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
    /// Starts `<stem>.jsonl` empty in `out` (an older one is replaced); `joints` is the model's
    /// landmark count, `fps` gives each frame's time.
    pub fn new(out: &Path, stem: &str, joints: usize, fps: f64) -> Result<Self> {
        std::fs::create_dir_all(out).with_context(|| format!("cannot create output folder {}", out.display()))?;
        let jsonl_path = out.join(format!("{stem}.jsonl"));
        // Emptied through the atomic writer, then grown by whole lines.
        write_atomically(&jsonl_path, b"")?;
        let jsonl = std::fs::OpenOptions::new()
            .append(true)
            .open(&jsonl_path)
            .with_context(|| format!("cannot open {}", jsonl_path.display()))?;
        let mut csv = String::from(CSV_HEAD);
        crate::data::annotations::push_landmark_columns(&mut csv, joints);
        csv.push_str(",yaw,pitch,roll\n");
        Ok(FrameStreamSink {
            jsonl_path,
            jsonl,
            csv_path: out.join(format!("{stem}.csv")),
            csv,
            fps,
            frame: 0,
            aligned: None,
            out: out.to_path_buf(),
            stem: stem.to_string(),
        })
    }

    /// Also writes aligned crops ([`AlignedEvery`]).
    pub fn with_aligned(mut self, aligned: Option<AlignedEvery>) -> Self {
        self.aligned = aligned;
        self
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

    /// Writes the CSV.
    pub fn finish(self) -> Result<()> {
        write_atomically(&self.csv_path, self.csv.as_bytes())
    }
}

impl OutputSink for FrameStreamSink {
    /// A frame whose aligned crops cannot be written fails alone (its JSONL line and CSV rows are
    /// still written); a JSONL line that cannot be written ends the stream.
    fn write_frames(&mut self, frames: &[FrameOutcome]) -> Result<Vec<Option<anyhow::Error>>> {
        let mut unwritten = Vec::with_capacity(frames.len());
        for o in frames {
            let (frame, time) = (self.frame, o.time.unwrap_or(self.frame as f64 / self.fps));
            self.frame += 1;
            let Ok(f) = &o.result else {
                unwritten.push(None);
                continue;
            };
            unwritten.push(self.write_aligned(frame, f).err());
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
