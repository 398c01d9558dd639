//! The `rba` commands that talk to boards: `devices`, `deploy`, `bench`.

/// Board commands, flattened into the top-level `rba` command list.
#[derive(clap::Subcommand)]
pub enum DeviceCommand {
    /// Probe serial ports and known TCP boards; show each device's identity.
    Devices {},
}

pub fn run(command: DeviceCommand) -> anyhow::Result<()> {
    match command {
        DeviceCommand::Devices {} => anyhow::bail!("rba devices: not implemented yet"),
    }
}
