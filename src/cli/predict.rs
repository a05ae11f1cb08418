//! `hrk predict`: landmarks for your own photos (what the reference's issues #51, #90, #91 ask
//! for). Faces come from the built-in MTCNN detector (default), from boxes (`--box`, `--boxes`),
//! from the whole image (`--detector none`) or from a dataset CSV (`--csv`, the test-time pipeline
//! of `hrk test`). The work is `crate::predict`; this file parses flags and prints.

use crate::detect::{DetectorOptions, Mtcnn};
use crate::model::hrnet::memory::{check_batch_memory, Pass};
use crate::predict::{
    check_aligned_size, collect_images, dataset_images, output_names, parse_shard, pose_indices, run_frame_stream,
    shard_indices, AlignedEvery, FaceBox, FaceFinder, FaceSource, FrameStreamOutputs, GivenBoxes, LandmarkEngine,
    LandmarkOptions, OneEuroParams, PredictRun, RawFormat, RawFrames, TrackOptions, MTCNN_CENTER_SHIFT, MTCNN_MARGIN,
};
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;

pub use crate::predict::SCALE_ENLARGEMENT;

#[derive(Args, Debug)]
pub struct PredictArgs {
    #[command(flatten)]
    pub model: super::common::ModelSource,
    /// Images (JPEG, PNG, PPM/PGM, BMP), videos (mp4, mov, mkv, avi, m4v, webm; with the `video`
    /// feature) and folders (searched recursively). Each video is a tracked frame stream writing
    /// <stem>.jsonl, <stem>.csv and <stem>_landmarks.mp4.
    pub images: Vec<PathBuf>,
    /// Face box x1,y1,x2,y2 in pixels: once for all images, or once per image file in order.
    #[arg(long = "box", allow_hyphen_values = true)]
    pub boxes: Vec<String>,
    /// CSV of face boxes: image,x1,y1,x2,y2 (header optional, several rows per image allowed).
    #[arg(long = "boxes", conflicts_with = "boxes")]
    pub boxes_file: Option<PathBuf>,
    #[command(flatten)]
    pub detection: super::common::DetectorArgs,
    /// Process every n-th image of the list, starting at the i-th (0-based): i/n.
    #[arg(long)]
    pub shard: Option<String>,
    /// Faces per forward pass (default: TEST.BATCH_SIZE_PER_GPU).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Annotation CSV in the dataset format (image paths relative to --root).
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Root for the CSV's image paths (default: DATASET.ROOT).
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Output folder (default: OUTPUT_DIR/DATASET/<cfg name>/predict).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Draw landmark indices on the overlays.
    #[arg(long)]
    pub labels: bool,
    /// Read raw frames from stdin instead of images: WxH[:rgb24|gray] (e.g. from `ffmpeg ... -f
    /// rawvideo -pix_fmt rgb24 -`); writes stdin.jsonl and stdin.csv, faces tracked across frames.
    #[arg(long = "stdin-frames")]
    pub stdin_frames: Option<String>,
    /// Frame rate of --stdin-frames (frames per second; frame i is at i / fps seconds); for a
    /// video whose file gives no frame rate, its smoothing clock.
    #[arg(long)]
    pub fps: Option<f64>,
    /// Videos: the first frame kept, in seconds from the stream's start (decoding starts at the
    /// keyframe before it); the JSONL's frame 0 is the first frame at or after it.
    #[arg(long)]
    pub start: Option<f64>,
    /// Videos: keep frames before this time (seconds from the stream's start).
    #[arg(long)]
    pub end: Option<f64>,
    /// Frame streams: run the detector every N frames (and when a track is lost); between, faces
    /// are tracked from their landmarks.
    #[arg(long, default_value_t = 30)]
    pub redetect: usize,
    /// Frame streams: One Euro smoothing of the landmarks, min_cutoff,beta (Hz, Hz per pixel/s),
    /// or none.
    #[arg(long, default_value = "0.5,0.05")]
    pub smooth: String,
    /// Also write each face aligned onto the 5-point face-recognition template, SIZE x SIZE pixels:
    /// <name>_face<i>.png per photo, <stem>_faces/<id>/<frame>.png for frame streams (68/98 points).
    #[arg(long)]
    pub aligned: Option<usize>,
    /// Frame streams: write the aligned crops of every N-th frame (frames 0, N, 2N, ...).
    #[arg(long = "aligned-every", default_value_t = 1)]
    pub aligned_every: usize,
    /// Frame streams: do not write <stem>_landmarks.mp4, the H.264 overlay video (written by
    /// default where hrk is built with the `video` feature; never without it).
    #[arg(long = "no-overlay-video")]
    pub no_overlay_video: bool,
    /// cpu, cuda or auto.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[command(flatten)]
    pub options: super::common::TestOptionArgs,
}

/// `--fps` of a frame stream (checked where given).
fn checked_fps(args: &PredictArgs) -> Result<Option<f64>> {
    match args.fps {
        Some(fps) if !(fps.is_finite() && fps > 0.0) => bail!("--fps {fps}: expected frames per second > 0"),
        fps => Ok(fps),
    }
}

/// `--redetect` and `--smooth` of a frame stream of `fps` frames per second.
fn track_options(args: &PredictArgs, fps: f64) -> Result<TrackOptions> {
    if args.redetect == 0 {
        bail!("--redetect 0: expected a number of frames >= 1");
    }
    Ok(TrackOptions { redetect: args.redetect, fps, smooth: OneEuroParams::parse(&args.smooth)? })
}

/// Shows images/s (frames/s for a frame stream) on stderr while images finish (hidden with -q or
/// off a terminal) and prints each failed image as one line.
struct Progress {
    bar: Option<ProgressBar>,
    unit: &'static str,
    /// A frame stream's failure (its last frame), kept for the one-line final error instead of printed.
    stream_error: Option<String>,
}

impl Progress {
    fn new(total: usize, quiet: bool) -> Progress {
        if quiet || total == 0 {
            return Progress { bar: None, unit: "images", stream_error: None };
        }
        Progress::show(
            ProgressBar::new(total as u64),
            "{wide_bar} {pos}/{len} [{elapsed_precise} < {eta_precise}] {msg}",
            "images",
        )
    }

    /// A stream of unknown length: frames so far and frames/s.
    fn frames(quiet: bool) -> Progress {
        if quiet {
            return Progress { bar: None, unit: "frames", stream_error: Some(String::new()) };
        }
        let mut p = Progress::show(ProgressBar::no_length(), "{pos} frames [{elapsed_precise}] {msg}", "frames");
        p.stream_error = Some(String::new());
        p
    }

    /// A video's frames (out of `total` where the file declares them) and frames/s, its name
    /// beside them; failed frames are printed as they come.
    #[cfg(feature = "video")]
    fn video(label: &str, total: Option<u64>, quiet: bool) -> Progress {
        if quiet {
            return Progress { bar: None, unit: "frames", stream_error: None };
        }
        let (bar, template) = match total {
            Some(n) => {
                (ProgressBar::new(n), "{prefix} {wide_bar} {pos}/{len} [{elapsed_precise} < {eta_precise}] {msg}")
            }
            None => (ProgressBar::no_length(), "{prefix} {pos} frames [{elapsed_precise}] {msg}"),
        };
        bar.set_prefix(label.to_string());
        Progress::show(bar, template, "frames")
    }

    fn show(bar: ProgressBar, template: &str, unit: &'static str) -> Progress {
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
        super::logger::set_active_bar(Some(bar.clone()));
        Progress { bar: Some(bar), unit, stream_error: None }
    }

    fn image_done(&mut self, report: &crate::predict::ImageReport) {
        match (&report.error, &mut self.stream_error) {
            (Some(e), Some(kept)) => *kept = e.clone(),
            (Some(e), None) => log::error!("{e}"),
            _ => {}
        }
        if let Some(bar) = &self.bar {
            bar.inc(1);
            let secs = bar.elapsed().as_secs_f64();
            if secs > 0.0 {
                bar.set_message(format!("{:.1} {}/s", bar.position() as f64 / secs, self.unit));
            }
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        super::logger::set_active_bar(None);
    }
}

pub fn run(args: PredictArgs, quiet: bool) -> Result<()> {
    let device = super::common::device(&args.device)?;
    let cfg = super::common::config(&args.model.cfg)?;
    let stdin_frames = args.stdin_frames.as_deref().map(RawFormat::parse).transpose()?;
    if stdin_frames.is_some() && (!args.images.is_empty() || args.csv.is_some() || args.shard.is_some()) {
        bail!("--stdin-frames reads frames from stdin alone: no image arguments, --csv or --shard with it");
    }
    if args.images.is_empty() && args.csv.is_none() && stdin_frames.is_none() {
        bail!("hrk predict: give image files or folders and/or --csv FILE (or --stdin-frames WxH)");
    }
    let fps = checked_fps(&args)?;
    let track = match stdin_frames {
        Some(_) => {
            let fps = fps.ok_or_else(|| anyhow!("--stdin-frames needs --fps R (frames per second)"))?;
            Some(track_options(&args, fps)?)
        }
        None => None,
    };
    let detector_options = args.detection.options()?;
    let shard = args.shard.as_deref().map(parse_shard).transpose()?;
    let (videos, all_images): (Vec<PathBuf>, Vec<PathBuf>) =
        collect_images(&args.images)?.into_iter().partition(|p| crate::video::is_video_path(p));
    if !videos.is_empty() && !crate::video::BUILT {
        bail!("{}", crate::video::NOT_BUILT);
    }
    if !videos.is_empty() && shard.is_some() {
        bail!("--shard splits photos only: give videos ({}) without it", videos[0].display());
    }
    if videos.is_empty() && (args.start.is_some() || args.end.is_some()) {
        bail!("--start and --end select the frames of video inputs; there are none");
    }
    let range = crate::video::TimeRange::new(args.start, args.end)?;
    // A stream's clock (its One Euro smoother's), checked before the model loads.
    track_options(&args, 1.0)?;

    let box_list: Vec<FaceBox> = args.boxes.iter().map(|s| FaceBox::parse(s)).collect::<Result<_>>()?;
    let given = match (&args.boxes_file, box_list.len()) {
        (Some(f), _) => Some(GivenBoxes::from_csv(f)?),
        (None, 0) => None,
        (None, 1) => Some(GivenBoxes::same_for_all(box_list[0])),
        (None, n) => {
            if n != args.images.len() || args.images.iter().any(|p| p.is_dir()) {
                bail!(
                    "--box given {n} times for {} image arguments (give it once for all, or once per image file)",
                    args.images.len()
                );
            }
            let pairs: Vec<(PathBuf, FaceBox)> = args.images.iter().cloned().zip(box_list).collect();
            Some(GivenBoxes::per_image(&pairs))
        }
    };
    if let Some(g) = &given {
        let unmatched = g.unmatched(&all_images);
        if !unmatched.is_empty() {
            log::warn!(
                "--boxes: {} image(s) of the file are not among the inputs, e.g. {}",
                unmatched.len(),
                unmatched[0].display()
            );
        }
    }
    let has_pixels = !all_images.is_empty() || stdin_frames.is_some() || !videos.is_empty();
    let mtcnn = if given.is_none() && args.detection.uses_mtcnn() && has_pixels {
        Some(Mtcnn::load(args.detection.detector_weights.as_deref(), &device).context("detector")?)
    } else {
        None
    };
    let source = face_source(&given, &mtcnn, &detector_options);

    let mut net = args.model.network(&cfg)?;
    super::common::prepare_for_inference(&mut net, &device, args.options.precision()?)?;
    let test = args.options.resolve(&cfg)?;
    let batch = args.batch.unwrap_or(cfg.test.batch_size_per_gpu);
    if batch == 0 {
        bail!("--batch must be positive");
    }
    // The engine's crops and activations for one batch (decoded photos are bounded by the image limits).
    check_batch_memory(&cfg, &device, Pass::Infer, batch, None, "--batch or MODEL.IMAGE_SIZE")?;
    let out = args.out.clone().unwrap_or_else(|| cfg.output_dir_for(&args.model.cfg).join("predict"));
    let opts = LandmarkOptions::for_config(&cfg, test, batch)?;
    let aligned = args.aligned.map(check_aligned_size).transpose()?;
    // The 5 template points come from the 68/98 layouts, the same as the pose's.
    if aligned.is_some() && pose_indices(net.spec.num_joints).is_none() {
        bail!("--aligned needs a 68- or 98-point model (this one has {} points)", net.spec.num_joints);
    }
    if args.aligned_every == 0 {
        bail!("--aligned-every 0: expected a number of frames >= 1");
    }
    let joints = net.spec.num_joints;
    let aligned_every = aligned.map(|size| AlignedEvery { size, every: args.aligned_every });
    if let (Some(format), Some(track)) = (stdin_frames, track) {
        let mut engine = LandmarkEngine::new(&mut net, opts, cfg.model.image_size)?;
        let mut frames = RawFrames::new(std::io::stdin().lock(), format, "stdin");
        let mut progress = Progress::frames(quiet);
        let mut on_frame = |r: &crate::predict::ImageReport| progress.image_done(r);
        let outputs = FrameStreamOutputs {
            out: out.clone(),
            stem: "stdin".to_string(),
            joints,
            aligned: aligned_every,
            overlay_video: !args.no_overlay_video,
            labels: args.labels,
        };
        let summary = run_frame_stream(&mut engine, &mut frames, source, track, &outputs, &mut on_frame)?;
        let error = progress.stream_error.take().unwrap_or_default();
        drop(progress);
        let files = outputs.file_names();
        // One error line: the failed (last) frame, then what was kept.
        let failure = format!("{error}; {summary} ({files} hold the frames before it)");
        let wrote = format!("wrote {files} to {}", out.display());
        return conclude(summary.failed > 0, failure, wrote, &summary, quiet);
    }

    // Names over every input of the run, so a photo and a video with one stem get distinct outputs.
    let mut named: Vec<PathBuf> = all_images.clone();
    named.extend(videos.iter().cloned());
    let video_failures = {
        let mut engine = LandmarkEngine::new(&mut net, opts.clone(), cfg.model.image_size)?;
        let names = output_names(&named);
        let mut failures = Vec::new();
        for (video, stem) in videos.iter().zip(&names[all_images.len()..]) {
            let outputs = FrameStreamOutputs {
                out: out.clone(),
                stem: stem.clone(),
                joints,
                aligned: aligned_every,
                overlay_video: !args.no_overlay_video,
                labels: args.labels,
            };
            let stream = VideoStream { path: video, outputs };
            let source = face_source(&given, &mtcnn, &detector_options);
            match run_video(&mut engine, &stream, source, &args, fps, range, quiet)? {
                Ok(summary) => println!("{}: {summary}", video.display()),
                Err(failure) => failures.push(failure),
            }
        }
        failures
    };
    if all_images.is_empty() && args.csv.is_none() && !videos.is_empty() {
        // Videos alone: the last failure is the error line, the others go before it.
        return match video_failures.split_last() {
            Some((last, others)) => {
                others.iter().for_each(|f| log::error!("{f}"));
                bail!("{last}")
            }
            None => Ok(()),
        };
    }
    video_failures.iter().for_each(|f| log::error!("{f}"));

    let dataset = match &args.csv {
        Some(csv) => {
            let mut spec = super::common::dataset_spec(&cfg, false, Some(csv))?;
            if let Some(root) = &args.root {
                spec.root = root.clone();
            }
            Some(crate::data::dataset::FaceDataset::open(spec)?)
        }
        None => None,
    };
    let dataset_list = dataset.as_ref().map(dataset_images).unwrap_or_default();
    // Names over every image of the run (before sharding), so each shard names an image alike.
    named.extend(dataset_list.iter().cloned());
    let names = output_names(&named);
    let names: Vec<String> =
        names[..all_images.len()].iter().chain(&names[all_images.len() + videos.len()..]).cloned().collect();
    let (image_names, dataset_names) = names.split_at(all_images.len());
    let picked = match shard {
        Some(s) => shard_indices(all_images.len(), s),
        None => (0..all_images.len()).collect(),
    };
    let images: Vec<PathBuf> = picked.iter().map(|&i| all_images[i].clone()).collect();
    let image_names: Vec<String> = picked.iter().map(|&i| image_names[i].clone()).collect();

    let mut progress = Progress::new(images.len() + dataset_list.len(), quiet);
    let mut on_image = |r: &crate::predict::ImageReport| progress.image_done(r);
    let mut run = PredictRun::new(&mut net, opts, cfg.model.image_size, &out, args.labels)?.with_aligned(aligned);
    let mut ran = run.run_images(&images, &image_names, source, &mut on_image);
    if let (Ok(()), Some(ds)) = (&ran, &dataset) {
        ran = run.run_dataset(ds, dataset_names, &mut on_image);
    }
    let csv_name = match shard {
        Some((i, n)) => format!("predictions.shard-{i}-of-{n}.csv"),
        None => "predictions.csv".to_string(),
    };
    // The CSV of what was done is written even after a run that stopped early.
    let summary = run.summary();
    let csv_written = run.finish(&csv_name);
    drop(progress);
    let problems: Vec<anyhow::Error> = [ran.err(), csv_written.err()].into_iter().flatten().collect();
    for e in &problems {
        log::error!("{e:#}");
    }
    // The error line is the summary: the last line, and a non-zero exit.
    let not_run = (images.len() + dataset_list.len()).saturating_sub(summary.images);
    let mut failure = if not_run > 0 { format!("{summary}, {not_run} not processed") } else { summary.to_string() };
    if !video_failures.is_empty() {
        failure += &format!(", {} of {} videos failed", video_failures.len(), videos.len());
    }
    let wrote = format!("wrote one JSON and one overlay per image and {csv_name} to {}", out.display());
    let failed = summary.failed > 0 || !problems.is_empty() || !video_failures.is_empty();
    conclude(failed, failure, wrote, &summary, quiet)
}

/// Where a stream's faces come from: given boxes, else the detector, else the whole frame.
fn face_source<'a>(
    given: &'a Option<GivenBoxes>, mtcnn: &'a Option<Mtcnn>, options: &DetectorOptions,
) -> FaceSource<'a> {
    match (given, mtcnn) {
        (Some(g), _) => FaceSource::ByPath(g),
        (None, Some(m)) => FaceSource::Same(FaceFinder::Detector {
            mtcnn: m,
            options: options.clone(),
            margin: MTCNN_MARGIN,
            center_shift: MTCNN_CENTER_SHIFT,
        }),
        (None, None) => FaceSource::Same(FaceFinder::WholeImage),
    }
}

/// One video input and where its outputs go.
#[cfg_attr(not(feature = "video"), allow(dead_code))]
struct VideoStream<'a> {
    path: &'a std::path::Path,
    outputs: FrameStreamOutputs,
}

/// Runs one video as a tracked frame stream (`<stem>.jsonl`, `<stem>.csv`, the overlay video) with its own progress
/// bar. The outer error ends the run (the model failed, or the disk is full); the inner one is the
/// video's failure as one line (it could not be opened, frames failed, or it ended early), after
/// which the run goes on with the next input.
#[cfg(feature = "video")]
fn run_video(
    engine: &mut LandmarkEngine, stream: &VideoStream, source: FaceSource, args: &PredictArgs, fps: Option<f64>,
    range: crate::video::TimeRange, quiet: bool,
) -> Result<std::result::Result<crate::predict::StreamSummary, String>> {
    use crate::video::decode::VideoDecoder;
    let label = stream.path.display().to_string();
    let decoder = match VideoDecoder::open(stream.path, range) {
        Ok(d) => d,
        Err(e) => return Ok(Err(format!("{e:#}"))),
    };
    let info = decoder.info().clone();
    // The file's average frame rate; --fps where the file gives none (then 30).
    let rate = if info.fps > 0.0 { info.fps } else { fps.unwrap_or(30.0) };
    let track = track_options(args, rate)?;
    let outputs = &stream.outputs;
    let mut frames = crate::predict::VideoFrames::new(decoder, stream.path.to_path_buf(), &outputs.stem);
    let mut progress = Progress::video(&label, info.frames.filter(|_| range.is_all()), quiet);
    let mut on_frame = |r: &crate::predict::ImageReport| progress.image_done(r);
    let summary = run_frame_stream(engine, &mut frames, source, track, outputs, &mut on_frame)?;
    drop(progress);
    let files = outputs.file_names();
    let kept = format!("{files} hold the frames before it");
    if let Some(e) = frames.take_error() {
        return Ok(Err(format!("{e:#}; {summary} ({kept})")));
    }
    if summary.failed > 0 {
        return Ok(Err(format!("{label}: {summary}")));
    }
    if !quiet {
        println!("wrote {files} to {}", outputs.out.display());
    }
    Ok(Ok(summary))
}

/// Without the `video` feature no video reaches here (the run stops at [`crate::video::NOT_BUILT`]).
#[cfg(not(feature = "video"))]
fn run_video(
    _engine: &mut LandmarkEngine, _stream: &VideoStream, _source: FaceSource, _args: &PredictArgs, _fps: Option<f64>,
    _range: crate::video::TimeRange, _quiet: bool,
) -> Result<std::result::Result<crate::predict::StreamSummary, String>> {
    bail!("{}", crate::video::NOT_BUILT)
}

/// A run's last words: `failure` as the error (exit 1) if anything failed, else what was written
/// (not with -q) and the summary as stdout's last line.
fn conclude(failed: bool, failure: String, wrote: String, summary: &dyn std::fmt::Display, quiet: bool) -> Result<()> {
    if failed {
        bail!("{failure}");
    }
    if !quiet {
        println!("{wrote}");
    }
    println!("{summary}");
    Ok(())
}
