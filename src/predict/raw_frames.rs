//! Raw frames on a byte stream (`--stdin-frames WxH[:rgb24|gray]`): what `ffmpeg … -f rawvideo
//! -pix_fmt rgb24 -` writes, how a webcam or any decoder plugs in. Frames are back to back, rows
//! top to bottom, no header; one frame per wave (the stream is tracked).

use super::stream::{Frame, FrameContent, FrameSource};
use crate::data::imageio::Rgb8;
use anyhow::{anyhow, bail, Result};
use std::io::Read;
use std::path::PathBuf;

/// The pixel layout of a raw frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PixelFormat {
    /// 3 bytes per pixel, R G B (ffmpeg's `rgb24`).
    Rgb24,
    /// 1 byte per pixel (ffmpeg's `gray`), taken as R = G = B.
    Gray,
}

/// The size and layout of each frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawFormat {
    pub width: usize,
    pub height: usize,
    pub pixels: PixelFormat,
}

impl RawFormat {
    /// Parses `WxH` or `WxH:rgb24` / `WxH:gray` (`--stdin-frames`).
    pub fn parse(s: &str) -> Result<RawFormat> {
        let bad = |why: &str| anyhow!("--stdin-frames '{s}': {why} (expected WxH[:rgb24|gray], e.g. 640x480:rgb24)");
        let (size, fmt) = s.split_once(':').unwrap_or((s, "rgb24"));
        let pixels = match fmt.trim() {
            "rgb24" => PixelFormat::Rgb24,
            "gray" => PixelFormat::Gray,
            _ => return Err(bad("pixel format must be rgb24 or gray")),
        };
        let (w, h) = size.split_once(['x', 'X']).ok_or_else(|| bad("no WxH size"))?;
        let (width, height): (usize, usize) =
            (w.trim().parse().map_err(|_| bad("bad width"))?, h.trim().parse().map_err(|_| bad("bad height"))?);
        // 1 << 15 per side: a frame stays far below memory limits (3 GiB at most).
        if !(1..=1 << 15).contains(&width) || !(1..=1 << 15).contains(&height) {
            return Err(bad("width and height must be 1 to 32768"));
        }
        Ok(RawFormat { width, height, pixels })
    }

    /// Bytes per frame.
    pub fn frame_len(&self) -> usize {
        let per_pixel = match self.pixels {
            PixelFormat::Rgb24 => 3,
            PixelFormat::Gray => 1,
        };
        self.width * self.height * per_pixel
    }

    fn to_rgb(self, bytes: Vec<u8>) -> Result<Rgb8> {
        let data = match self.pixels {
            PixelFormat::Rgb24 => bytes,
            PixelFormat::Gray => bytes.iter().flat_map(|&v| [v, v, v]).collect(),
        };
        Rgb8::new(self.width, self.height, data)
    }
}

/// Frames of a raw byte stream, labelled `label` (e.g. `stdin`), named `<label>` for outputs. A
/// stream that ends mid-frame gives that frame as a failed one, naming its index and bytes, and
/// ends; a read error does the same.
pub struct RawFrames<R: Read> {
    input: R,
    format: RawFormat,
    label: String,
    next: usize,
    ended: bool,
}

impl<R: Read> RawFrames<R> {
    pub fn new(input: R, format: RawFormat, label: &str) -> Self {
        RawFrames { input, format, label: label.to_string(), next: 0, ended: false }
    }

    /// Reads one frame: Ok(None) at a clean end (no byte of a new frame).
    fn read_frame(&mut self) -> Result<Option<Vec<u8>>> {
        let need = self.format.frame_len();
        let mut buf = vec![0u8; need];
        let mut got = 0;
        while got < need {
            match self.input.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => bail!("{}: frame {}: read failed after {got} of {need} bytes: {e}", self.label, self.next),
            }
        }
        match got {
            0 => Ok(None),
            _ if got < need => bail!(
                "{}: frame {} is truncated: {got} of {need} bytes ({}x{}) before the input ended",
                self.label,
                self.next,
                self.format.width,
                self.format.height
            ),
            _ => Ok(Some(buf)),
        }
    }
}

impl<R: Read> FrameSource for RawFrames<R> {
    /// One frame at a time (`max` aside): a tracked stream goes frame by frame.
    fn next_frames(&mut self, _max: usize) -> Vec<Frame> {
        if self.ended {
            return Vec::new();
        }
        let content = match self.read_frame() {
            Ok(None) => {
                self.ended = true;
                return Vec::new();
            }
            Ok(Some(bytes)) => self.format.to_rgb(bytes).map(FrameContent::Pixels),
            Err(e) => {
                self.ended = true;
                Err(e)
            }
        };
        self.next += 1;
        vec![Frame { label: PathBuf::from(&self.label), name: self.label.clone(), time: None, content }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse() {
        let f = RawFormat::parse("640x480").unwrap();
        assert_eq!((f.width, f.height, f.pixels, f.frame_len()), (640, 480, PixelFormat::Rgb24, 921_600));
        assert_eq!(RawFormat::parse("4X2:gray").unwrap().frame_len(), 8);
        for bad in ["640", "0x4", "4x4:yuv420p", "ax4", "40000x2"] {
            assert!(RawFormat::parse(bad).unwrap_err().to_string().contains("--stdin-frames"), "{bad}");
        }
    }

    #[test]
    fn frames_come_whole_and_a_short_last_one_fails_naming_its_index() {
        let format = RawFormat::parse("2x1:gray").unwrap();
        let mut src = RawFrames::new(&[1u8, 2, 3, 4, 5][..], format, "stdin");
        let frames: Vec<Frame> = std::iter::from_fn(|| src.next_frames(8).pop()).collect();
        assert_eq!(frames.len(), 3);
        let rgb = |k: usize| match &frames[k].content {
            Ok(FrameContent::Pixels(p)) => p.data.clone(),
            _ => panic!("frame {k}"),
        };
        assert_eq!(rgb(0), [1, 1, 1, 2, 2, 2]);
        assert_eq!(rgb(1), [3, 3, 3, 4, 4, 4]);
        let e = frames[2].content.as_ref().err().unwrap().to_string();
        assert_eq!(e, "stdin: frame 2 is truncated: 1 of 2 bytes (2x1) before the input ended");
        assert!(src.next_frames(1).is_empty());
    }
}
