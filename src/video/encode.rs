//! Writing the overlay video: 8-bit RGB frames of one size → libswscale to yuv420p → H.264 by
//! libx264 through libavcodec → an MP4 (libavformat) that ffmpeg and browsers play.
//!
//! Choices, each for a reason:
//! - **yuv420p, BT.601 limited range, tagged**: the one pixel format every browser and phone decodes;
//!   swscale's default RGB→YUV matrix is BT.601 with limited (16–235) range, and the stream says so
//!   (matrix SMPTE 170M, range "tv"), with BT.709 primaries and transfer (those of sRGB, which the
//!   frames are), so players convert back the same way instead of guessing.
//! - **Odd sizes are padded by one pixel** (the last column or row repeated): 4:2:0 chroma and
//!   H.264's frame cropping both work in 2-pixel units, so an odd width or height cannot be coded;
//!   padding keeps every input pixel (and every landmark drawn near the edge), where cropping would
//!   drop one. [`Mp4Writer::size`] is the coded size.
//! - **libx264, preset `veryfast`, CRF 20, profile High (x264's default for 8-bit 4:2:0)**: on the
//!   2-core Zen 4 this writer encodes 640×480 at about 130 frames/s (benches/encode.rs), well above
//!   the landmark pipeline's rate; `superfast` and `ultrafast` (no B-frames, `ultrafast` no CABAC)
//!   were no faster there and gave files 3× and 6× larger, `faster` and `medium` ran at about half
//!   the rate for no smaller files. CRF 20 keeps the 1-pixel box lines and dot outlines crisp
//!   (x264's default CRF 23 blurs their colour). Every browser decodes High profile.
//! - **`movflags +faststart`**: the index (moov) goes before the media data, so a browser plays the
//!   file while it loads.
//! - **No audio track**: the overlay is built from frames alone (a source's audio is not carried).
//! - **Timing**: frame rate as given (a rational close to it, e.g. 30000/1001); the time base is a
//!   thousandth of a frame, so per-frame times (a variable-rate source, or frames left out) land
//!   where they belong; frames without a time follow the previous one by one frame.
//! - **Atomic**: FFmpeg writes a temporary file beside the target (atomic_file's [`PendingFile`]);
//!   [`Mp4Writer::finish`] renames it into place. Dropped before that (an error, an interrupted
//!   run), the temporary file is removed; a killed process's is cleared by the next write into
//!   that folder. Nothing ever appears under the final name half-written.

use crate::atomic_file::PendingFile;
use crate::data::imageio::Rgb8;
use anyhow::{anyhow, bail, Context, Result};
use ffmpeg::{codec, color, encoder, format, frame, software::scaling, Dictionary, Packet, Rational};
use ffmpeg_next as ffmpeg;
use std::path::{Path, PathBuf};

/// The H.264 encoder the overlay needs.
const ENCODER: &str = "libx264";
/// libx264's speed/size trade-off (module docs).
const PRESET: &str = "veryfast";
/// libx264's constant quality (lower is better; module docs).
const CRF: &str = "20";
/// Time-base ticks per frame (module docs).
const TICKS_PER_FRAME: i64 = 1000;

/// Starts FFmpeg once per process, with its own log silenced (the library never prints: what
/// goes wrong comes back as errors).
fn init() -> Result<()> {
    static STARTED: std::sync::OnceLock<std::result::Result<(), String>> = std::sync::OnceLock::new();
    STARTED
        .get_or_init(|| {
            ffmpeg::init().map_err(|e| e.to_string())?;
            ffmpeg::log::set_level(ffmpeg::log::Level::Quiet);
            Ok(())
        })
        .clone()
        .map_err(|e| anyhow!("FFmpeg failed to start: {e}"))
}

/// The H.264 encoder, or one line naming what the linked FFmpeg lacks.
fn h264_encoder() -> Result<ffmpeg::Codec> {
    init()?;
    encoder::find_by_name(ENCODER).ok_or_else(|| {
        anyhow!(
            "the linked FFmpeg (libavcodec {}) has no {ENCODER} H.264 encoder; install a libavcodec built with \
             libx264 (Debian's is)",
            version_text(ffmpeg::codec::version())
        )
    })
}

/// FFmpeg's packed version number as `major.minor.micro`.
fn version_text(v: u32) -> String {
    format!("{}.{}.{}", v >> 16, (v >> 8) & 0xff, v & 0xff)
}

/// Whether overlay videos can be written here: Ok, or one line naming what is missing.
pub fn check_encoder() -> Result<()> {
    h264_encoder().map(|_| ())
}

/// `fps` as a rational with numerator and denominator at most 65535 (30000/1001 for 29.97…).
fn frame_rate(fps: f64) -> Result<Rational> {
    if !(fps.is_finite() && fps > 0.0) {
        bail!("frame rate {fps}: expected frames per second > 0");
    }
    let rate = Rational::from(fps).reduce_with_limit(65535).unwrap_or_else(|near| near);
    if rate.numerator() <= 0 || rate.denominator() <= 0 {
        bail!("frame rate {fps}: out of the range an MP4 can state (1/65535 to 65535 frames per second)");
    }
    Ok(rate)
}

/// An H.264 MP4 being written: [`Mp4Writer::push`] each frame, then [`Mp4Writer::finish`].
pub struct Mp4Writer {
    /// The output path (for messages).
    path: PathBuf,
    output: format::context::Output,
    encoder: encoder::Video,
    scaler: scaling::Context,
    /// The input frames' size, and the coded size (each rounded up to even).
    width: usize,
    height: usize,
    coded: [usize; 2],
    /// The encoder's time base (a thousandth of a frame) and the muxer's.
    time_base: Rational,
    stream_time_base: Rational,
    /// The last frame's pts (None before the first frame).
    last_pts: Option<i64>,
    frames: usize,
    /// Last, so that FFmpeg's handle on the temporary file closes before a drop removes it.
    pending: PendingFile,
}

impl Mp4Writer {
    /// Starts `path` (written at [`Mp4Writer::finish`]) for frames of `width`×`height` at `fps`.
    pub fn create(path: &Path, width: usize, height: usize, fps: f64) -> Result<Mp4Writer> {
        Self::open(path, width, height, fps).with_context(|| format!("{}", path.display()))
    }

    fn open(path: &Path, width: usize, height: usize, fps: f64) -> Result<Mp4Writer> {
        if width == 0 || height == 0 {
            bail!("frame size {width}x{height}: expected both sides >= 1");
        }
        // H.264 levels end at 8192×4320; x264 refuses sides over 16384 anyway.
        if width > 16384 || height > 16384 {
            bail!("frame size {width}x{height}: H.264 allows at most 16384 pixels a side");
        }
        let codec = h264_encoder()?;
        let rate = frame_rate(fps)?;
        let coded = [width.next_multiple_of(2), height.next_multiple_of(2)];
        let time_base = Rational::new(rate.denominator(), rate.numerator() * TICKS_PER_FRAME as i32).reduce();
        let pending = PendingFile::new(path)?;
        let temp = pending.temp_path();
        // FFmpeg takes a UTF-8 URL; `file:` keeps a colon in the path from reading as a protocol.
        let url = temp
            .to_str()
            .map(|t| format!("file:{t}"))
            .ok_or_else(|| anyhow!("FFmpeg needs a UTF-8 path, not {}", temp.display()))?;
        let mut output = format::output_as(&url, "mp4").map_err(|e| anyhow!("cannot start the MP4: {e}"))?;
        let global_header = output.format().flags().contains(format::Flags::GLOBAL_HEADER);

        let mut video =
            codec::context::Context::new_with_codec(codec).encoder().video().map_err(|e| anyhow!("{ENCODER}: {e}"))?;
        video.set_width(coded[0] as u32);
        video.set_height(coded[1] as u32);
        video.set_format(format::Pixel::YUV420P);
        video.set_time_base(time_base);
        video.set_frame_rate(Some(rate));
        video.set_colorspace(color::Space::SMPTE170M);
        video.set_color_range(color::Range::MPEG);
        video.set_color_primaries(color::Primaries::BT709);
        video.set_color_transfer_characteristic(color::TransferCharacteristic::BT709);
        if global_header {
            video.set_flags(codec::Flags::GLOBAL_HEADER);
        }
        let mut options = Dictionary::new();
        options.set("preset", PRESET);
        options.set("crf", CRF);
        let encoder = video.open_as_with(codec, options).map_err(|e| anyhow!("{ENCODER} refused to start: {e}"))?;

        let mut stream = output.add_stream(codec).map_err(|e| anyhow!("cannot add the video stream: {e}"))?;
        stream.set_parameters(&encoder);
        stream.set_time_base(time_base);
        stream.set_avg_frame_rate(rate);
        let mut muxer_options = Dictionary::new();
        muxer_options.set("movflags", "+faststart");
        output.write_header_with(muxer_options).map_err(|e| anyhow!("cannot write the MP4 header: {e}"))?;
        // The muxer picks its own time base in write_header.
        let stream_time_base = output.stream(0).map(|s| s.time_base()).unwrap_or(time_base);

        let scaler = scaling::Context::get(
            format::Pixel::RGB24,
            coded[0] as u32,
            coded[1] as u32,
            format::Pixel::YUV420P,
            coded[0] as u32,
            coded[1] as u32,
            scaling::Flags::BILINEAR,
        )
        .map_err(|e| anyhow!("swscale cannot convert RGB to yuv420p: {e}"))?;
        Ok(Mp4Writer {
            path: path.to_path_buf(),
            output,
            encoder,
            scaler,
            width,
            height,
            coded,
            time_base,
            stream_time_base,
            last_pts: None,
            frames: 0,
            pending,
        })
    }

    /// The coded frame size: the input's, each side rounded up to even (module docs).
    pub fn size(&self) -> [usize; 2] {
        self.coded
    }

    /// The frames' size, as given to [`Mp4Writer::create`].
    pub fn input_size(&self) -> [usize; 2] {
        [self.width, self.height]
    }

    /// Frames pushed so far.
    pub fn frames(&self) -> usize {
        self.frames
    }

    /// Encodes `rgb` (the size given to [`Mp4Writer::create`]) at `time` seconds from the start,
    /// or one frame after the previous one without a time. A frame whose time is not after the
    /// previous frame's follows it by one tick. A frame of another size is refused and the video
    /// goes on; an FFmpeg failure leaves the writer unusable (drop it: the file is not written).
    pub fn push(&mut self, rgb: &Rgb8, time: Option<f64>) -> Result<()> {
        if (rgb.width, rgb.height) != (self.width, self.height) || rgb.data.len() != rgb.width * rgb.height * 3 {
            bail!(
                "{}: frame {} is {}x{}, the video {}x{}",
                self.path.display(),
                self.frames,
                rgb.width,
                rgb.height,
                self.width,
                self.height
            );
        }
        let pts = self.next_pts(time);
        self.encode(rgb, pts).with_context(|| format!("{}: frame {}", self.path.display(), self.frames))?;
        self.last_pts = Some(pts);
        self.frames += 1;
        Ok(())
    }

    /// The pts of a frame at `time` (module docs, Timing).
    fn next_pts(&self, time: Option<f64>) -> i64 {
        let after = self.last_pts.map_or(0, |p| p + 1);
        let Some(t) = time.filter(|t| t.is_finite()) else {
            return self.last_pts.map_or(0, |p| p + TICKS_PER_FRAME);
        };
        let ticks = t * self.time_base.denominator() as f64 / self.time_base.numerator() as f64;
        // Clamped into i64's range before the conversion, which saturates anyway.
        (ticks.round().clamp(-9e18, 9e18) as i64).max(after)
    }

    fn encode(&mut self, rgb: &Rgb8, pts: i64) -> Result<()> {
        let mut packed = frame::Video::new(format::Pixel::RGB24, self.coded[0] as u32, self.coded[1] as u32);
        pad_into(rgb, &mut packed);
        // A fresh frame each time: the encoder may still hold the previous one.
        let mut yuv = frame::Video::empty();
        self.scaler.run(&packed, &mut yuv).map_err(|e| anyhow!("swscale: {e}"))?;
        yuv.set_color_space(color::Space::SMPTE170M);
        yuv.set_color_range(color::Range::MPEG);
        yuv.set_pts(Some(pts));
        self.encoder.send_frame(&yuv).map_err(|e| anyhow!("{ENCODER}: {e}"))?;
        self.write_packets()
    }

    /// Moves every packet the encoder has ready into the file.
    fn write_packets(&mut self) -> Result<()> {
        let mut packet = Packet::empty();
        while self.encoder.receive_packet(&mut packet).is_ok() {
            packet.set_stream(0);
            // libavcodec 5 leaves x264's packet durations unset; the MP4's last sample needs one.
            packet.set_duration(TICKS_PER_FRAME);
            packet.rescale_ts(self.time_base, self.stream_time_base);
            packet.write_interleaved(&mut self.output).map_err(|e| anyhow!("cannot write to the MP4: {e}"))?;
        }
        Ok(())
    }

    /// Flushes the encoder, writes the MP4's index (moved to the front) and renames the file into
    /// place. A video without frames is an error (an MP4 needs one).
    pub fn finish(mut self) -> Result<()> {
        if self.frames == 0 {
            bail!("{}: no frames to write", self.path.display());
        }
        let flushed = (|| -> Result<()> {
            self.encoder.send_eof().map_err(|e| anyhow!("{ENCODER}: {e}"))?;
            self.write_packets()?;
            self.output.write_trailer().map_err(|e| anyhow!("cannot finish the MP4: {e}"))
        })();
        flushed.with_context(|| format!("{}", self.path.display()))?;
        let Mp4Writer { pending, output, .. } = self;
        // Closes FFmpeg's handle on the temporary file before it is renamed.
        drop(output);
        pending.commit()
    }
}

/// Copies `rgb` into the (possibly one pixel wider and taller) RGB24 frame `packed`, repeating the
/// last column and row into the padding.
fn pad_into(rgb: &Rgb8, packed: &mut frame::Video) {
    let (w, h) = (rgb.width, rgb.height);
    let (coded_w, coded_h) = (packed.width() as usize, packed.height() as usize);
    let stride = packed.stride(0);
    let plane = packed.data_mut(0);
    for y in 0..coded_h {
        let src = &rgb.data[y.min(h - 1) * w * 3..][..w * 3];
        let row = &mut plane[y * stride..][..coded_w * 3];
        row[..w * 3].copy_from_slice(src);
        for x in w..coded_w {
            row.copy_within((w - 1) * 3..w * 3, x * 3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::atomic_file::sorted_names_in as names_in;

    fn plain(w: usize, h: usize, c: [u8; 3]) -> Rgb8 {
        Rgb8::new(w, h, c.repeat(w * h)).unwrap()
    }

    /// The top-level MP4 boxes in file order.
    fn top_boxes(bytes: &[u8]) -> Vec<String> {
        let mut at = 0;
        let mut names = Vec::new();
        while at + 8 <= bytes.len() {
            let size = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            names.push(String::from_utf8_lossy(&bytes[at + 4..at + 8]).into_owned());
            assert!(size >= 8, "box size {size} at {at}");
            at += size;
        }
        names
    }

    /// What FFmpeg reads back: (codec, pixel format, width, height, frames, average frame rate).
    fn probe(path: &Path) -> (String, format::Pixel, u32, u32, usize, Rational) {
        let mut input = format::input(path).unwrap();
        let stream = input.streams().best(ffmpeg::media::Type::Video).unwrap();
        let index = stream.index();
        let rate = stream.avg_frame_rate();
        let mut decoder =
            codec::context::Context::from_parameters(stream.parameters()).unwrap().decoder().video().unwrap();
        let name = decoder.codec().map(|c| c.name().to_string()).unwrap_or_default();
        let (mut frames, mut yuv) = (0, frame::Video::empty());
        for (s, packet) in input.packets() {
            if s.index() == index {
                decoder.send_packet(&packet).unwrap();
                while decoder.receive_frame(&mut yuv).is_ok() {
                    frames += 1;
                }
            }
        }
        decoder.send_eof().unwrap();
        while decoder.receive_frame(&mut yuv).is_ok() {
            frames += 1;
        }
        (name, decoder.format(), decoder.width(), decoder.height(), frames, rate)
    }

    #[test]
    fn frames_become_a_faststart_h264_mp4_of_their_size_and_rate() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path();
        let path = dir.join("clip_landmarks.mp4");
        let mut w = Mp4Writer::create(&path, 64, 48, 25.0).unwrap();
        assert!(!path.exists(), "nothing under the final name before finish");
        for i in 0..10u8 {
            w.push(&plain(64, 48, [20 * i, 100, 200]), None).unwrap();
        }
        assert_eq!(w.frames(), 10);
        w.finish().unwrap();
        assert_eq!(names_in(dir), ["clip_landmarks.mp4"]);
        let bytes = std::fs::read(&path).unwrap();
        let boxes = top_boxes(&bytes);
        assert_eq!(boxes[0], "ftyp");
        let (moov, mdat) = (boxes.iter().position(|b| b == "moov"), boxes.iter().position(|b| b == "mdat"));
        assert!(moov.unwrap() < mdat.unwrap(), "faststart: the index before the media, {boxes:?}");
        let (codec, pixel, width, height, frames, rate) = probe(&path);
        assert_eq!((codec.as_str(), pixel, width, height, frames), ("h264", format::Pixel::YUV420P, 64, 48, 10));
        assert_eq!(rate, Rational::new(25, 1));
    }

    /// An odd size is coded one pixel larger, the last column and row repeated.
    #[test]
    fn odd_sizes_are_padded_by_one_repeated_pixel() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path();
        let path = dir.join("odd.mp4");
        let mut w = Mp4Writer::create(&path, 33, 17, 30000.0 / 1001.0).unwrap();
        assert_eq!(w.size(), [34, 18]);
        let mut rgb = plain(33, 17, [0, 0, 0]);
        rgb.data[(16 * 33 + 32) * 3..].copy_from_slice(&[1, 2, 3]);
        let mut packed = frame::Video::new(format::Pixel::RGB24, 34, 18);
        pad_into(&rgb, &mut packed);
        let stride = packed.stride(0);
        let px = |x: usize, y: usize| packed.data(0)[y * stride + x * 3..][..3].to_vec();
        assert_eq!(
            (px(32, 16), px(33, 16), px(32, 17), px(33, 17)),
            (vec![1, 2, 3], vec![1, 2, 3], vec![1, 2, 3], vec![1, 2, 3])
        );
        assert_eq!(px(33, 15), vec![0, 0, 0]);
        for _ in 0..3 {
            w.push(&rgb, None).unwrap();
        }
        // A frame of another size is refused; the video goes on.
        let e = w.push(&plain(32, 16, [0, 0, 0]), None).unwrap_err().to_string();
        assert!(e.contains("frame 3 is 32x16, the video 33x17") && !e.contains('\n'), "{e}");
        w.push(&rgb, None).unwrap();
        w.finish().unwrap();
        let (_, _, width, height, frames, rate) = probe(&path);
        assert_eq!((width, height, frames, rate), (34, 18, 4, Rational::new(30000, 1001)));
    }

    /// Dropped before finish (an error, an interrupted run), the writer leaves nothing behind.
    #[test]
    fn an_unfinished_video_leaves_no_file() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path();
        let path = dir.join("gone.mp4");
        let mut w = Mp4Writer::create(&path, 32, 32, 10.0).unwrap();
        w.push(&plain(32, 32, [9, 9, 9]), Some(0.0)).unwrap();
        assert_eq!(names_in(dir).len(), 1, "the temporary file while writing");
        drop(w);
        assert!(names_in(dir).is_empty());
        let e = Mp4Writer::create(&path, 32, 32, 10.0).unwrap().finish().unwrap_err().to_string();
        assert!(e.contains("gone.mp4: no frames to write"), "{e}");
        assert!(names_in(dir).is_empty());
    }

    #[test]
    fn frame_times_set_the_pts_and_never_go_back() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path();
        let mut w = Mp4Writer::create(&dir.join("t.mp4"), 16, 16, 25.0).unwrap();
        assert_eq!(w.next_pts(None), 0);
        assert_eq!(w.next_pts(Some(0.2)), 5 * TICKS_PER_FRAME);
        w.last_pts = Some(5 * TICKS_PER_FRAME);
        assert_eq!(w.next_pts(None), 6 * TICKS_PER_FRAME);
        assert_eq!(w.next_pts(Some(0.1)), 5 * TICKS_PER_FRAME + 1);
        assert_eq!(w.next_pts(Some(f64::NAN)), 6 * TICKS_PER_FRAME);
        drop(w);
    }

    #[test]
    fn bad_sizes_and_rates_are_refused_in_one_line() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path();
        for (w, h, fps, want) in [
            (0, 10, 25.0, "frame size 0x10"),
            (20000, 10, 25.0, "at most 16384"),
            (10, 10, 0.0, "frame rate 0"),
            (10, 10, f64::INFINITY, "frame rate inf"),
            (10, 10, 1e-9, "out of the range"),
        ] {
            let e = format!("{:#}", Mp4Writer::create(&dir.join("x.mp4"), w, h, fps).err().unwrap());
            assert!(e.contains(want) && e.contains("x.mp4") && !e.contains('\n'), "{e}");
        }
        assert!(names_in(dir).is_empty());
        assert_eq!(frame_rate(29.97).unwrap(), Rational::new(2997, 100));
    }
}
