//! `rba status`: a board's applications: the active model, its SHA-256,
//! since when, the gate figures it passed, what a rollback restores, and
//! the history.

use std::path::PathBuf;

use rba_host::onnx::write_atomically;
use rba_host::report::apps;

use super::deploy::connect;
use crate::args::LinkArgs;

#[derive(clap::Args)]
pub struct Args {
    /// Only this application.
    #[arg(long)]
    app: Option<String>,
    /// History entries shown per application (most recent first).
    #[arg(long, default_value_t = 10)]
    history: u32,
    /// Also write the status (every field the board sent) as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    #[command(flatten)]
    link: LinkArgs,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut device = connect(&args.link)?;
    let label = device.label().to_string();
    let status = device.app_status(args.app.as_deref(), args.history)?;
    if let (Some(app), true) = (&args.app, status.is_empty()) {
        println!("{label}: {app}: never activated here");
    } else {
        print!("{}", apps::status(&label, &status));
    }
    if let Some(path) = args.json {
        write_atomically(&path, &serde_json::to_vec_pretty(&status)?)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
