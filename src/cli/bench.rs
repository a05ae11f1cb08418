//! `hrk bench`.

use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Experiment YAML (official schema).
    #[arg(long)]
    pub cfg: PathBuf,
    /// cpu, cuda or auto.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

pub fn run(args: BenchArgs) -> Result<()> {
    super::common::device(&args.device)?;
    let _cfg = super::common::config(&args.cfg)?;
    bail!("hrk bench: not yet available")
}
