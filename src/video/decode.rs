//! Decoding a video file to RGB frames in display order (FFmpeg: libavformat demuxing, libavcodec
//! decoding with its threads, libswscale to RGB24). The conversion is FFmpeg's default, as the
//! `ffmpeg` command and PyAV give it: bilinear flags (no scaling happens), the frame's own matrix
//! (BT.601 when the stream names none) and range (limited unless the frame says full, as Motion-JPEG's
//! `yuvj` frames do). A phone's rotation (the display-matrix side data) is applied to the RGB
//! frame, as `ffmpeg`'s autorotate does (90, 180 or 270 degrees; other angles are left as stored).
//!
//! Each frame comes with its index (display order, from the first frame of the selection) and its
//! time in seconds (the best-effort timestamp × the stream's time base, from the stream's start).
//! A packet or frame the decoder rejects is a [`Decoded::Skipped`] frame (it takes an index and the
//! stream goes on); a read error, or a file that ends before the frames its header declares, ends
//! the stream with one error naming the file, after the frames decoded before it.

use super::TimeRange;
use crate::data::imageio::Rgb8;
use crate::memory_budget::try_zeroed_vec;
use anyhow::{anyhow, bail, Result};
use ffmpeg_next as ff;
use std::collections::VecDeque;
use std::path::Path;

/// The largest frame side decoded (a larger one is refused in one line).
pub const MAX_SIDE: usize = 16384;

/// What the file's video stream says about itself.
#[derive(Clone, Debug, PartialEq)]
pub struct VideoInfo {
    /// The frame size as displayed (after rotation).
    pub width: usize,
    pub height: usize,
    /// The average frame rate (frames per second), 0 when the container gives none.
    pub fps: f64,
    /// The clockwise rotation applied to each decoded frame: 0, 90, 180 or 270 degrees.
    pub rotation: u32,
    /// The frame count the container declares, if it does.
    pub frames: Option<u64>,
    /// The decoder's name (e.g. `h264`, `mjpeg`).
    pub codec: String,
}

/// One decoded frame.
pub struct DecodedFrame {
    /// 0-based display index from the first frame of the selection.
    pub index: usize,
    /// Seconds from the stream's start.
    pub time: f64,
    pub rgb: Rgb8,
}

/// What the decoder gives next.
pub enum Decoded {
    Frame(DecodedFrame),
    /// A packet or frame the decoder rejected: it takes the next index, the stream goes on.
    Skipped {
        index: usize,
        error: anyhow::Error,
    },
}

/// The YUV → RGB24 converter of one source layout (recreated when a frame's layout changes).
struct Converter {
    scaler: ff::software::scaling::Context,
    key: (ff::format::Pixel, u32, u32, i32, bool),
    rgb: ff::frame::Video,
}

/// A video file's frames in display order ([`VideoDecoder::next_frame`]).
pub struct VideoDecoder {
    label: String,
    input: ff::format::context::Input,
    stream: usize,
    decoder: ff::decoder::Video,
    time_base: f64,
    start_pts: i64,
    range: TimeRange,
    info: VideoInfo,
    converter: Option<Converter>,
    frame: ff::frame::Video,
    /// The index of the next frame handed out (or skipped).
    next_index: usize,
    /// Frames out of the decoder plus rejected ones, kept or not (for the truncation check).
    produced: u64,
    /// Packets of the stream read, and the file's size: a packet that reaches the end of the file
    /// while the header declares more frames is the cut part of a truncated file.
    packets: u64,
    file_size: u64,
    /// The last frame's time (a frame without a timestamp follows it by one frame interval).
    last_time: Option<f64>,
    /// End of input sent to the decoder.
    flushing: bool,
    /// Why the input ended early (reported after the frames still in the decoder).
    read_error: Option<anyhow::Error>,
    /// Rejected frames not yet handed out: released before the next good frame or at a clean end;
    /// at a truncation they are the cut's (a partial last packet) and the error tells of them.
    held: Vec<Decoded>,
    /// Frames to hand out (held ones released, then the frame after them).
    ready: VecDeque<Decoded>,
    done: bool,
}

/// AVERROR(EAGAIN): the decoder wants the next packet.
fn is_again(e: &ff::Error) -> bool {
    matches!(e, ff::Error::Other { errno } if *errno == ff::error::EAGAIN)
}

/// The clockwise rotation a display matrix asks for, as FFmpeg's autorotate reads it (16.16 fixed
/// point a, b, c, d of a 3×3 matrix stored row by row): 0, 90, 180 or 270 degrees, `None` for any
/// other angle or a degenerate matrix.
pub fn display_rotation(matrix: &[i32; 9]) -> Option<u32> {
    let fixed = |v: i32| f64::from(v) / 65536.0;
    let (scale0, scale1) = (fixed(matrix[0]).hypot(fixed(matrix[3])), fixed(matrix[1]).hypot(fixed(matrix[4])));
    if scale0 == 0.0 || scale1 == 0.0 {
        return None;
    }
    let degrees = (fixed(matrix[1]) / scale1).atan2(fixed(matrix[0]) / scale0).to_degrees().round();
    let theta = degrees - 360.0 * (degrees / 360.0 + 0.9 / 360.0).floor();
    [0u32, 90, 180, 270].into_iter().find(|&r| (theta - f64::from(r)).abs() < 1.0)
}

/// `rgb` turned clockwise by `rotation` degrees (0, 90, 180 or 270).
pub fn rotate(rgb: Rgb8, rotation: u32) -> Result<Rgb8> {
    let (w, h) = (rgb.width, rgb.height);
    let (out_w, out_h) = if rotation % 180 == 90 { (h, w) } else { (w, h) };
    if rotation == 0 {
        return Ok(rgb);
    }
    let mut data: Vec<u8> = try_zeroed_vec(w * h * 3, "a rotated video frame")?;
    for y in 0..out_h {
        for x in 0..out_w {
            // The source pixel shown at (x, y).
            let (sx, sy) = match rotation {
                90 => (y, h - 1 - x),
                180 => (w - 1 - x, h - 1 - y),
                _ => (w - 1 - y, x),
            };
            let (o, s) = ((y * out_w + x) * 3, (sy * w + sx) * 3);
            data[o..o + 3].copy_from_slice(&rgb.data[s..s + 3]);
        }
    }
    Rgb8::new(out_w, out_h, data)
}

fn check_size(label: &str, w: usize, h: usize) -> Result<()> {
    if w == 0 || h == 0 || w > MAX_SIDE || h > MAX_SIDE {
        bail!("{label}: video frames of {w}x{h} pixels (each side must be 1 to {MAX_SIDE})");
    }
    Ok(())
}

impl VideoDecoder {
    /// Opens `path`'s best video stream and seeks to the keyframe before `range.start`.
    pub fn open(path: &Path, range: TimeRange) -> Result<Self> {
        let label = path.display().to_string();
        ff::init().map_err(|e| anyhow!("{label}: cannot start FFmpeg: {e}"))?;
        // The library never prints: errors come back as values.
        ff::util::log::set_level(ff::util::log::Level::Quiet);
        let input = ff::format::input(path).map_err(|e| anyhow!("{label}: cannot open as a video: {e}"))?;
        let stream = input
            .streams()
            .best(ff::media::Type::Video)
            .ok_or_else(|| anyhow!("{label}: no video stream in the file"))?;
        let index = stream.index();
        let tb = stream.time_base();
        let time_base = f64::from(tb.numerator()) / f64::from(tb.denominator().max(1));
        let start_pts = match stream.start_time() {
            t if t == ff::ffi::AV_NOPTS_VALUE => 0,
            t => t,
        };
        let rate = stream.avg_frame_rate();
        let fps = match (rate.numerator(), rate.denominator()) {
            (n, d) if n > 0 && d > 0 => f64::from(n) / f64::from(d),
            _ => 0.0,
        };
        let frames = u64::try_from(stream.frames()).ok().filter(|&n| n > 0);
        let rotation = stream
            .side_data()
            .find(|sd| sd.kind() == ff::codec::packet::side_data::Type::DisplayMatrix)
            .and_then(|sd| {
                let words: Vec<i32> =
                    sd.data().chunks_exact(4).map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]])).collect();
                <[i32; 9]>::try_from(words).ok()
            })
            .and_then(|m| display_rotation(&m))
            .unwrap_or(0);
        let mut context = ff::codec::context::Context::from_parameters(stream.parameters())
            .map_err(|e| anyhow!("{label}: cannot read the video stream's parameters: {e}"))?;
        // Frame threads (count 0: FFmpeg picks one per core).
        context.set_threading(ff::codec::threading::Config {
            kind: ff::codec::threading::Type::Frame,
            count: 0,
            ..Default::default()
        });
        let decoder = context.decoder().video().map_err(|e| anyhow!("{label}: no decoder for its video: {e}"))?;
        let codec = decoder.codec().map(|c| c.name().to_string()).unwrap_or_default();
        let (w, h) = (decoder.width() as usize, decoder.height() as usize);
        check_size(&label, w, h)?;
        let (width, height) = if rotation % 180 == 90 { (h, w) } else { (w, h) };
        let info = VideoInfo { width, height, fps, rotation, frames, codec };
        let mut this = VideoDecoder {
            label,
            input,
            stream: index,
            decoder,
            time_base,
            start_pts,
            range,
            info,
            converter: None,
            frame: ff::frame::Video::empty(),
            next_index: 0,
            produced: 0,
            packets: 0,
            file_size: std::fs::metadata(path).map_or(u64::MAX, |m| m.len()),
            last_time: None,
            flushing: false,
            read_error: None,
            held: Vec::new(),
            ready: VecDeque::new(),
            done: false,
        };
        if range.start > 0.0 {
            let start = (range.start + start_pts as f64 * time_base) * f64::from(ff::ffi::AV_TIME_BASE);
            // The keyframe at or before the start (max_ts = target: ffmpeg-next passes the end as is).
            let target = start.floor() as i64;
            this.input
                .seek(target, ..target)
                .map_err(|e| anyhow!("{}: cannot seek to {}s: {e}", this.label, range.start))?;
        }
        Ok(this)
    }

    pub fn info(&self) -> &VideoInfo {
        &self.info
    }

    /// The next frame in display order (or a skipped one); `Ok(None)` at the end (of the file or
    /// of the range); an error once, when the file ends early or cannot be read, after the frames
    /// decoded before it (frames rejected just before the end of a truncated file are the cut's:
    /// the error counts them out).
    pub fn next_frame(&mut self) -> Result<Option<Decoded>> {
        loop {
            if let Some(d) = self.ready.pop_front() {
                return Ok(Some(d));
            }
            match self.pull() {
                Ok(Some(skipped @ Decoded::Skipped { .. })) => self.held.push(skipped),
                Ok(Some(frame)) => {
                    self.ready.extend(self.held.drain(..));
                    self.ready.push_back(frame);
                }
                Ok(None) if self.held.is_empty() => return Ok(None),
                Ok(None) => self.ready.extend(self.held.drain(..)),
                Err(e) => {
                    self.held.clear();
                    return Err(e);
                }
            }
        }
    }

    /// The decoder's next frame or rejection, as it comes.
    fn pull(&mut self) -> Result<Option<Decoded>> {
        while !self.done {
            match self.decoder.receive_frame(&mut self.frame) {
                Ok(()) => {
                    self.produced += 1;
                    if let Some(d) = self.take_frame() {
                        return Ok(Some(d));
                    }
                }
                Err(ff::Error::Eof) => {
                    self.done = true;
                    return self.ended();
                }
                Err(e) if is_again(&e) => {
                    if let Some(rejected) = self.feed() {
                        return Ok(Some(self.skipped(rejected)));
                    }
                }
                Err(e) => return Ok(Some(self.skipped(e))),
            }
        }
        Ok(None)
    }

    /// The frame just received, converted (None if before the range's start, or past its end).
    fn take_frame(&mut self) -> Option<Decoded> {
        let step = if self.info.fps > 0.0 { 1.0 / self.info.fps } else { 0.0 };
        let time = match self.frame.timestamp() {
            Some(ts) => (ts - self.start_pts) as f64 * self.time_base,
            None => self.last_time.map_or(0.0, |t| t + step),
        };
        self.last_time = Some(time);
        // Half a microsecond of slack: timestamps are rounded to the time base.
        if time < self.range.start - 5e-7 {
            return None;
        }
        if self.range.end.is_some_and(|end| time >= end - 5e-7) {
            self.done = true;
            return None;
        }
        let index = self.next_index;
        self.next_index += 1;
        Some(match self.convert() {
            Ok(rgb) => Decoded::Frame(DecodedFrame { index, time, rgb }),
            Err(error) => Decoded::Skipped { index, error },
        })
    }

    fn skipped(&mut self, e: ff::Error) -> Decoded {
        self.produced += 1;
        let index = self.next_index;
        self.next_index += 1;
        Decoded::Skipped { index, error: anyhow!("{}: frame {index} cannot be decoded: {e}", self.label) }
    }

    /// Sends the next packet of the stream to the decoder (or the end of input); the decoder's
    /// error if it rejects the packet.
    fn feed(&mut self) -> Option<ff::Error> {
        if self.flushing {
            // Unreachable in practice: after the end of input the decoder answers frames or Eof.
            self.done = true;
            return None;
        }
        let mut packet = ff::Packet::empty();
        loop {
            match packet.read(&mut self.input) {
                Ok(()) if packet.stream() != self.stream => continue,
                Ok(()) if self.is_cut(&packet) => break,
                Ok(()) => {
                    self.packets += 1;
                    return match self.decoder.send_packet(&packet) {
                        Err(e) if !is_again(&e) && e != ff::Error::Eof => Some(e),
                        _ => None,
                    };
                }
                Err(ff::Error::Eof) => break,
                Err(e) => {
                    self.read_error =
                        Some(anyhow!("{}: cannot read after frame {}: {e}", self.label, self.good_frames()));
                    break;
                }
            }
        }
        self.flushing = true;
        // Only fails when already flushed; either way the decoder now drains.
        let _ = self.decoder.send_eof();
        None
    }

    /// Whether `packet` is the partial last packet of a truncated file: its data reaches the end of
    /// the file, and the header declares more frames than the packets read before it. (A demuxer
    /// hands out what it could read of a packet cut by the end of the file.) Packets are counted
    /// from the file's start only: after a seek (--start) no packet is taken for a cut one.
    fn is_cut(&self, packet: &ff::Packet) -> bool {
        let end = u64::try_from(packet.position()).ok().map(|pos| pos + packet.size() as u64);
        let more = self.range.start == 0.0 && self.info.frames.is_some_and(|n| self.packets + 1 < n);
        more && end.is_some_and(|end| end >= self.file_size)
    }

    /// Frames handed out or about to be, rejected ones held back excepted.
    fn good_frames(&self) -> usize {
        self.next_index - self.held.len()
    }

    /// The stream's end: the read error, or a file shorter than its header says (counting rejected
    /// frames as decoded: a file with a corrupt frame is not short).
    fn ended(&mut self) -> Result<Option<Decoded>> {
        if let Some(e) = self.read_error.take() {
            return Err(e);
        }
        if let Some(declared) = self.info.frames.filter(|&n| self.range.is_all() && self.produced < n) {
            bail!(
                "{}: the file is truncated: it ends after {} of the {declared} frames its header declares",
                self.label,
                self.good_frames()
            );
        }
        Ok(None)
    }

    /// The received frame as RGB24, rotated for display.
    fn convert(&mut self) -> Result<Rgb8> {
        let (w, h) = (self.frame.width(), self.frame.height());
        check_size(&self.label, w as usize, h as usize)?;
        // SAFETY: the frame was just filled by the decoder; colorspace and color_range are plain fields.
        let (colorspace, range) =
            unsafe { ((*self.frame.as_ptr()).colorspace as i32, (*self.frame.as_ptr()).color_range) };
        let format = self.frame.format();
        let full_range = range == ff::ffi::AVColorRange::AVCOL_RANGE_JPEG
            || matches!(
                format,
                ff::format::Pixel::YUVJ420P
                    | ff::format::Pixel::YUVJ422P
                    | ff::format::Pixel::YUVJ444P
                    | ff::format::Pixel::YUVJ440P
            );
        let key = (format, w, h, colorspace, full_range);
        if self.converter.as_ref().is_none_or(|c| c.key != key) {
            self.converter = Some(Converter::new(key).map_err(|e| anyhow!("{}: {e}", self.label))?);
        }
        let Some(conv) = self.converter.as_mut() else { unreachable!("set above") };
        conv.scaler
            .run(&self.frame, &mut conv.rgb)
            .map_err(|e| anyhow!("{}: cannot convert a frame to RGB: {e}", self.label))?;
        let (w, h) = (w as usize, h as usize);
        let row = w * 3;
        let mut data: Vec<u8> = try_zeroed_vec(row * h, "a decoded video frame")?;
        let (src, stride) = (conv.rgb.data(0), conv.rgb.stride(0));
        for (y, out) in data.chunks_exact_mut(row).enumerate() {
            out.copy_from_slice(&src[y * stride..y * stride + row]);
        }
        rotate(Rgb8::new(w, h, data)?, self.info.rotation)
    }
}

impl Converter {
    fn new(key: (ff::format::Pixel, u32, u32, i32, bool)) -> Result<Self> {
        let (format, w, h, colorspace, full_range) = key;
        let mut scaler = ff::software::scaling::Context::get(
            format,
            w,
            h,
            ff::format::Pixel::RGB24,
            w,
            h,
            ff::software::scaling::Flags::BILINEAR,
        )
        .map_err(|e| anyhow!("no conversion from {format:?} to RGB: {e}"))?;
        // SAFETY: the scaler's context is valid for its lifetime; sws_getCoefficients returns a
        // pointer into swscale's static tables (any colorspace value is accepted: unknown ones give
        // the default, BT.601) and sws_setColorspaceDetails only reads them.
        unsafe {
            let ctx = scaler.as_mut_ptr();
            let coefficients = ff::ffi::sws_getCoefficients(colorspace);
            let default = ff::ffi::sws_getCoefficients(ff::ffi::SWS_CS_DEFAULT);
            ff::ffi::sws_setColorspaceDetails(
                ctx,
                coefficients,
                i32::from(full_range),
                default,
                1,
                0,
                1 << 16,
                1 << 16,
            );
        }
        Ok(Converter { scaler, key, rgb: ff::frame::Video::empty() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_matrices_give_ffmpegs_rotation() {
        let one = 1 << 16;
        let w = 1 << 30;
        assert_eq!(display_rotation(&[one, 0, 0, 0, one, 0, 0, 0, w]), Some(0));
        // A phone held upright: stored landscape, shown turned 90 degrees clockwise.
        assert_eq!(display_rotation(&[0, one, 0, -one, 0, 0, 0, 0, w]), Some(90));
        assert_eq!(display_rotation(&[-one, 0, 0, 0, -one, 0, 0, 0, w]), Some(180));
        assert_eq!(display_rotation(&[0, -one, 0, one, 0, 0, 0, 0, w]), Some(270));
        assert_eq!(display_rotation(&[0; 9]), None);
        let c = (f64::from(one) * 0.5f64.sqrt()) as i32;
        assert_eq!(display_rotation(&[c, c, 0, -c, c, 0, 0, 0, w]), None, "45 degrees is left as stored");
    }

    #[test]
    fn rotation_moves_the_corners_clockwise() {
        // 3×2: pixel values 0..6, one byte per channel alike.
        let rgb = Rgb8::new(3, 2, (0..6u8).flat_map(|v| [v, v, v]).collect()).unwrap();
        let grey = |r: &Rgb8| r.data.iter().step_by(3).copied().collect::<Vec<u8>>();
        let r90 = rotate(rgb.clone(), 90).unwrap();
        assert_eq!((r90.width, r90.height), (2, 3));
        // Rows 0 1 2 / 3 4 5 turned clockwise: the bottom row becomes the left column.
        assert_eq!(grey(&r90), [3, 0, 4, 1, 5, 2]);
        assert_eq!(grey(&rotate(rgb.clone(), 180).unwrap()), [5, 4, 3, 2, 1, 0]);
        let r270 = rotate(rgb.clone(), 270).unwrap();
        assert_eq!(grey(&r270), [2, 5, 1, 4, 0, 3]);
        assert_eq!(grey(&rotate(rgb, 0).unwrap()), [0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn a_file_that_is_no_video_fails_in_one_line_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clip.mp4");
        std::fs::write(&path, b"not a video at all").unwrap();
        let e = VideoDecoder::open(&path, TimeRange::all()).err().unwrap().to_string();
        assert!(e.contains("clip.mp4: cannot open as a video"), "{e}");
        assert!(!e.contains('\n'));
    }
}
