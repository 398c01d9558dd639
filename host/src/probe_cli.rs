//! `rba probe`: turn a headless backbone into a classifier with a closed-form
//! linear head on a chosen feature tensor.

#[derive(clap::Args)]
pub struct ProbeArgs {}

pub fn run(_args: ProbeArgs) -> anyhow::Result<()> {
    anyhow::bail!("rba probe: not implemented yet")
}
