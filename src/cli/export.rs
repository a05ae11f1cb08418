//! `hrk export`: the inference graph of a model file as ONNX.

use crate::model::hrnet::{OnnxOptions, DEFAULT_OPSET};
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[command(flatten)]
    pub model: super::common::ModelSource,
    /// The ONNX file to write.
    #[arg(long)]
    pub onnx: PathBuf,
    /// ONNX opset (13 to 21).
    #[arg(long, default_value_t = DEFAULT_OPSET)]
    pub opset: i64,
    /// Fold BatchNorm into the convs, as hrk's inference engine does (`--fold-bn=false`: Conv +
    /// BatchNormalization nodes).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub fold_bn: bool,
    /// Add a `landmarks` output [batch, joints, 3]: argmax x, y in heatmap pixels (from 0) and the maximum.
    #[arg(long)]
    pub decode: bool,
}

pub fn run(a: ExportArgs) -> Result<()> {
    let opts = OnnxOptions { opset: a.opset, fold_bn: a.fold_bn, decode: a.decode };
    // Refuse a bad opset before reading any weights.
    if !crate::model::hrnet::OPSETS.contains(&opts.opset) {
        let r = crate::model::hrnet::OPSETS;
        anyhow::bail!("--opset {}: not supported (hrk writes opsets {} to {})", a.opset, r.start(), r.end());
    }
    let cfg = super::common::config(&a.model.cfg)?;
    let net = a.model.network(&cfg)?;
    let size = crate::export::write_onnx(&net, &cfg, &opts, &a.onnx)?;
    println!("wrote {} ({:.1} MB, opset {})", a.onnx.display(), size as f64 / 1e6, a.opset);
    Ok(())
}
