//! `hrk serve`: the landmark model behind HTTP (`crate::serve`). This file checks the flags, then
//! hands the service a loader that builds the model and detector on its inference thread.

use crate::detect::Mtcnn;
use crate::model::hrnet::memory::{check_batch_memory, Pass};
use crate::serve::{Batching, Limits, LoadedModel, RequestDefaults, ServeConfig};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: super::common::ModelSource,
    /// Address to listen on (port 0: any free port, logged at start).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// cpu, cuda or auto.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// The defaults of requests that give no boxes (each may set `detector` and `min_face`); with
    /// `--detector none` MTCNN is not loaded.
    #[command(flatten)]
    pub detection: super::common::DetectorArgs,
    /// Largest request body (a size like 16M).
    #[arg(long = "max-body", default_value = "16M", value_parser = parse_size_arg)]
    pub max_body: usize,
    /// Largest image, in pixels (checked from its header before decoding).
    #[arg(long = "max-pixels", default_value_t = 25_000_000)]
    pub max_pixels: u64,
    /// Requests admitted at once (being read, decoded or run); more get 503 with Retry-After.
    #[arg(long, default_value_t = 64)]
    pub queue: usize,
    /// Time limit of one request, in seconds (504 beyond).
    #[arg(long, default_value_t = 30.0)]
    pub timeout: f64,
    /// Most faces per landmark forward pass.
    #[arg(long = "max-batch", default_value_t = 16)]
    pub max_batch: usize,
    /// How long the model waits for more requests to share a forward pass, in milliseconds
    /// (0: every request runs alone, i.e. batching off).
    #[arg(long = "batch-wait-ms", default_value_t = 5.0)]
    pub batch_wait_ms: f64,
    /// Bearer token required on every endpoint but /healthz and /readyz (default: HRK_API_KEY; none: open).
    #[arg(long = "api-key")]
    pub api_key: Option<String>,
    /// Allow this browser origin (CORS), e.g. https://example.org; default: no CORS headers.
    #[arg(long)]
    pub cors: Option<String>,
    #[command(flatten)]
    pub options: super::common::TestOptionArgs,
}

fn parse_size_arg(text: &str) -> Result<usize, String> {
    crate::switches::parse_size(text).map_err(|expected| format!("{text:?}: expected {expected}"))
}

/// Seconds → a duration, refusing what is not a finite number in range.
fn seconds(flag: &str, value: f64, min: f64) -> Result<Duration> {
    if !(value.is_finite() && value >= min && value <= 86_400.0) {
        bail!("{flag} {value}: expected seconds in [{min}, 86400]");
    }
    Ok(Duration::from_secs_f64(value))
}

pub fn run(args: ServeArgs) -> Result<()> {
    let device = super::common::device(&args.device)?;
    let cfg = super::common::config(&args.model.cfg)?;
    let precision = args.options.precision()?;
    let test = args.options.resolve(&cfg)?;
    let detector_options = args.detection.options()?;
    if args.queue == 0 {
        bail!("--queue 0: expected the number of requests admitted at once (>= 1)");
    }
    if args.max_batch == 0 {
        bail!("--max-batch 0: expected the most faces per forward pass (>= 1)");
    }
    if args.max_body == 0 || args.max_pixels == 0 {
        bail!("--max-body and --max-pixels must be positive");
    }
    let timeout = seconds("--timeout", args.timeout, 0.001)?;
    let wait = seconds("--batch-wait-ms", args.batch_wait_ms / 1000.0, 0.0)?;
    check_batch_memory(&cfg, &device, Pass::Infer, args.max_batch, None, "--max-batch or MODEL.IMAGE_SIZE")?;
    // Mirrored pairs come from the dataset's layout; a layout without them cannot flip-test.
    let flip_pairs = super::common::dataset_spec(&cfg, false, None).and_then(|s| s.mirror_pairs());
    let flip_pairs = match (flip_pairs, test.flip_test) {
        (Ok(p), _) => Some(p),
        (Err(e), true) => return Err(e).context("--flip-test"),
        (Err(_), false) => None,
    };
    let api_key = args.api_key.clone().or_else(crate::switches::serve_api_key).filter(|k| !k.is_empty());
    let config = ServeConfig {
        addr: args.addr,
        limits: Limits { max_body: args.max_body, max_pixels: args.max_pixels, queue: args.queue, timeout },
        batching: Batching { max_faces: args.max_batch, wait },
        api_key,
        cors: args.cors.clone(),
    };
    let name = |p: &std::path::Path| p.file_name().map_or(p.display().to_string(), |n| n.to_string_lossy().into());
    let weights = match (&args.model.model_file, args.model.init_seed) {
        (Some(file), _) => name(file),
        (None, seed) => format!("random init (seed {})", seed.unwrap_or(0)),
    };
    let description = format!("{} with {weights}", name(&args.model.cfg));
    let defaults = RequestDefaults { detector: args.detection.uses_mtcnn(), detector_options, test };
    let image_size = cfg.model.image_size;
    let load = move || -> Result<LoadedModel> {
        let mut net = args.model.network(&cfg)?;
        super::common::prepare_for_inference(&mut net, &device, precision)?;
        let detector = match defaults.detector {
            true => Some(Mtcnn::load(args.detection.detector_weights.as_deref(), &device).context("detector")?),
            false => None,
        };
        Ok(LoadedModel { net, detector, image_size, flip_pairs, defaults, description })
    };
    crate::serve::serve(config, Box::new(load))
}
