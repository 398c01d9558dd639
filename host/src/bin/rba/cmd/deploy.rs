//! `rba deploy`: upload a model to a board (skipped when already there).

use rba_host::board::{device_name, Deployed, Device, ModelArtifact, Target};
use rba_host::report::text::format_bytes;

use crate::args::LinkArgs;
use crate::progress::Terminal;

#[derive(clap::Args)]
pub struct Args {
    /// The ONNX model (or `demo:vit`, `demo:resnet`).
    model: String,
    /// Name on the device (default: the file name without `.onnx`).
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    link: LinkArgs,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut artifact = ModelArtifact::from_spec(&args.model)?;
    if let Some(n) = args.name {
        artifact.name = device_name(n);
    }
    let mut device = connect(&args.link)?;
    let d = device.deploy(&artifact)?;
    println!("{}", deployed_line(&d, device.label()));
    Ok(())
}

/// Connects with progress bars on the terminal (and says so when it pins a
/// new board's identity).
pub fn connect(link: &LinkArgs) -> anyhow::Result<Device> {
    let mut device = Device::connect(&Target::from_options(&link.into())?)?;
    if let Some(note) = device.pin_note() {
        eprintln!("{note}");
    }
    device.set_progress(std::sync::Arc::new(Terminal::stderr()));
    Ok(device)
}

/// What a deploy did, in one line.
pub fn deployed_line(d: &Deployed, device: &str) -> String {
    let size = format_bytes(d.size);
    let sha = &d.sha256[..16.min(d.sha256.len())];
    if d.skipped {
        format!("{device} already has {} ({size}, sha256 {sha}...): upload skipped", d.name)
    } else {
        let resumed = if d.resumed_from > 0 {
            format!(", resumed at byte {} of an interrupted upload", d.resumed_from)
        } else {
            String::new()
        };
        format!("deployed {} ({size}, sha256 {sha}...) to {device}{resumed}", d.name)
    }
}
