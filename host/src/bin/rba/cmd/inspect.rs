//! `rba inspect`: a model's inputs, outputs, size and blocks.

use rba_host::model::{inspect, Model};
use rba_host::report::text;

#[derive(clap::Args)]
pub struct Args {
    /// The ONNX model (or `demo:vit`, `demo:resnet`).
    model: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Use these boundary tensors (comma separated, in any order) instead
    /// of detecting blocks.
    #[arg(long, value_delimiter = ',')]
    boundaries: Option<Vec<String>>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let model = Model::new(rba_host::demo::load_model_spec(&args.model)?, args.boundaries.as_deref())?;
    let report = inspect::inspect(&model);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", text::inspection(&report));
    }
    Ok(())
}
