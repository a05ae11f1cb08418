//! TensorBoard event files: `Event` / `Summary` messages (TensorFlow's event.proto and summary.proto,
//! declared by hand with `prost`: the fields TensorBoard's scalar reader needs, official numbers) in
//! TFRecord framing — u64 length, masked CRC-32C of the length, data, masked CRC-32C of the data.

use anyhow::{Context, Result};
use prost::Message;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Clone, PartialEq, Message)]
pub struct Event {
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    #[prost(int64, tag = "2")]
    pub step: i64,
    #[prost(oneof = "EventWhat", tags = "3, 5")]
    pub what: Option<EventWhat>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum EventWhat {
    /// The first record of a file: "brain.Event:2".
    #[prost(string, tag = "3")]
    FileVersion(String),
    #[prost(message, tag = "5")]
    Summary(Summary),
}

#[derive(Clone, PartialEq, Message)]
pub struct Summary {
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<SummaryValue>,
}

/// Summary.Value with the `simple_value` member of its oneof (a scalar).
#[derive(Clone, PartialEq, Message)]
pub struct SummaryValue {
    #[prost(string, tag = "1")]
    pub tag: String,
    #[prost(float, optional, tag = "2")]
    pub simple_value: Option<f32>,
}

/// TFRecord's CRC: CRC-32C rotated right by 15 bits plus a constant (so that a CRC of data holding
/// CRCs stays well distributed).
fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c::crc32c(data);
    c.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One framed record.
pub fn frame(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// An events file being written: `events.out.tfevents.<unix time>.hrk.<pid>` in a log folder, each
/// record flushed as it is written so that a killed run keeps what it logged.
pub struct EventWriter {
    file: File,
    path: PathBuf,
}

impl EventWriter {
    /// A new events file in `dir` (which must exist), starting with the file-version record.
    pub fn create(dir: &Path) -> Result<EventWriter> {
        let t = now();
        let path = dir.join(format!("events.out.tfevents.{}.hrk.{}", t as u64, std::process::id()));
        let file = File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        let mut w = EventWriter { file, path };
        w.write(&Event { wall_time: t, step: 0, what: Some(EventWhat::FileVersion("brain.Event:2".into())) })?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write(&mut self, e: &Event) -> Result<()> {
        let rec = frame(&e.encode_to_vec());
        self.file
            .write_all(&rec)
            .and_then(|_| self.file.flush())
            .with_context(|| format!("writing {}", self.path.display()))
    }

    /// A scalar `tag` = `value` at `step`.
    pub fn scalar(&mut self, tag: &str, value: f64, step: i64) -> Result<()> {
        let value = SummaryValue { tag: tag.into(), simple_value: Some(value as f32) };
        self.write(&Event { wall_time: now(), step, what: Some(EventWhat::Summary(Summary { value: vec![value] })) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CRC-32C check value of RFC 3720 (32 zero bytes → 0x8A9136AA), and TFRecord's mask of the
    /// empty input's CRC (0) being the bare constant.
    #[test]
    fn crc_and_mask() {
        assert_eq!(crc32c::crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(masked_crc(&[]), 0xa282_ead8);
        let rec = frame(b"abc");
        assert_eq!(rec.len(), 8 + 4 + 3 + 4);
        assert_eq!(&rec[..8], &3u64.to_le_bytes());
    }
}
