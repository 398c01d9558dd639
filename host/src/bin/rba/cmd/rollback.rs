//! `rba rollback APP`: restore the application's previous model on a board,
//! byte for byte; the board runs its activation hook and records it.

use rba_host::report::apps;

use super::deploy::connect;
use crate::args::LinkArgs;

#[derive(clap::Args)]
pub struct Args {
    /// The application.
    app: String,
    #[command(flatten)]
    link: LinkArgs,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut device = connect(&args.link)?;
    let label = device.label().to_string();
    let current = device.app_status(Some(&args.app), 0)?.into_iter().next().and_then(|s| s.active);
    let Some(current) = current else {
        anyhow::bail!("{label}: {} has no active model to roll back", args.app);
    };
    let r = device.rollback(&args.app, Some(current.generation))?;
    print!("{}", apps::result(&label, &r));
    match r.hook.as_ref().filter(|h| !h.succeeded()) {
        Some(h) => anyhow::bail!("{label}: rolled back, but the activation hook failed: {}", h.status()),
        None => Ok(()),
    }
}
