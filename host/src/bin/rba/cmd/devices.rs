//! `rba devices`: find boards (serial ports, profiles with TCP addresses,
//! the in-process and emulated boards) and show who answers.

use anyhow::Result;
use rba_host::board::{self, emulated, target, Device, Target};
use rba_host::report::text::format_bytes;
use rba_protocol::DeviceIdentity;

use crate::args::LinkArgs;

#[derive(clap::Args)]
pub struct Args {
    /// Also probe this device.
    #[command(flatten)]
    link: LinkArgs,
    /// Do not start the emulated qemu-aarch64 board.
    #[arg(long)]
    no_qemu: bool,
}

/// One probed device: its identity, or why it could not be reached.
struct Probed {
    device: String,
    result: std::result::Result<DeviceIdentity, String>,
}

fn discover(target: &Target) -> Probed {
    let device = target.label();
    let result = Device::discover(target).map(|d| d.identity().clone()).map_err(|e| {
        // The table names the device already.
        let msg = e.to_string();
        msg.strip_prefix(&format!("{device}: ")).map_or(msg.clone(), str::to_string)
    });
    Probed { device, result }
}

pub fn run(args: Args) -> Result<()> {
    let (args, no_qemu) = (&args.link, args.no_qemu);
    let mut rows = vec![discover(&Target::Local { store: None })];
    if no_qemu {
        rows.push(Probed { device: board::QEMU_BOARD.into(), result: Err("not started (--no-qemu)".into()) });
    } else if let Some(why) = emulated::qemu_missing() {
        rows.push(Probed { device: board::QEMU_BOARD.into(), result: Err(why) });
    } else {
        rows.push(discover(&Target::Qemu { store: None }));
    }
    let baud = args.baud.unwrap_or(board::DEFAULT_BAUD);
    let key = rba_protocol::keys::load_key(args.key_file.as_deref(), std::env::var(board::KEY_ENV).ok());
    match serialport::available_ports() {
        Ok(ports) => {
            for p in ports {
                let key = key.as_ref().ok().cloned().flatten();
                rows.push(discover(&Target::Serial { path: p.port_name, baud, key, board: None }));
            }
        }
        Err(e) => rows.push(Probed { device: "serial ports".into(), result: Err(e.to_string()) }),
    }
    let mut serial_boards = Vec::new();
    for b in target::known_boards() {
        if b.name == board::QEMU_BOARD {
            continue;
        }
        match (b.link.default, b.link.tcp.as_deref()) {
            (rba_protocol::boards::LinkKind::Tcp, Some(addr)) => {
                let label = format!("{} ({addr})", b.name);
                let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
                if matches!(host, "0.0.0.0" | "[::]" | "::") {
                    let port = addr.rsplit_once(':').map_or("7878", |(_, p)| p);
                    rows.push(Probed {
                        device: label,
                        result: Err(format!("listens on all interfaces; probe it with --addr HOST:{port}")),
                    });
                    continue;
                }
                match &key {
                    Ok(Some(k)) => rows.push(discover(&Target::Tcp {
                        addr: addr.into(),
                        key: Some(k.clone()),
                        board: Some(b.name.clone()),
                    })),
                    Ok(None) => rows.push(Probed {
                        device: label,
                        result: Err(format!("not probed: TCP needs the key (--key-file or ${})", board::KEY_ENV)),
                    }),
                    Err(e) => rows.push(Probed { device: label, result: Err(e.to_string()) }),
                }
            }
            _ => serial_boards.push(b.name),
        }
    }
    if args.board.is_some() || args.port.is_some() || args.addr.is_some() {
        match Target::from_options(&args.into()) {
            Ok(t) => rows.push(discover(&t)),
            Err(e) => rows.push(Probed { device: "requested device".into(), result: Err(e.to_string()) }),
        }
    }
    let width = rows.iter().map(|r| r.device.len()).max().unwrap_or(6).max(6);
    println!(
        "{:width$}  {:16}  {:8}  {:>5}  {:>9}  {:16}  status",
        "device", "board", "arch", "cores", "memory", "runtime"
    );
    for r in &rows {
        match &r.result {
            Ok(id) => println!(
                "{:width$}  {:16}  {:8}  {:>5}  {:>9}  {:16}  ok (rba {})",
                r.device,
                id.board,
                id.arch,
                id.cores,
                format_bytes(id.memory_bytes),
                id.runtime,
                id.rba_version
            ),
            Err(why) => {
                println!("{:width$}  {:16}  {:8}  {:>5}  {:>9}  {:16}  {why}", r.device, "-", "-", "-", "-", "-")
            }
        }
    }
    if !serial_boards.is_empty() {
        println!(
            "serial boards ({}) answer on a host serial port above; use --board NAME --port PATH",
            serial_boards.join(", ")
        );
    }
    Ok(())
}
