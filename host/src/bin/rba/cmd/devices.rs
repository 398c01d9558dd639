//! `rba devices`: find boards (serial ports, profiles with TCP addresses,
//! the in-process and emulated boards) and show who answers, with the
//! fingerprint of the identity each proved; `--forget TARGET` drops a
//! pinned identity (a board legitimately replaced).

use anyhow::Result;
use rba_host::board::known::{self, KnownBoards};
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
    /// Forget the identity pinned for TARGET (`host:port`, or a serial port
    /// path) in the known-boards file, so the next connection pins the
    /// board's new one; then exit.
    #[arg(long, value_name = "TARGET")]
    forget: Option<String>,
}

/// One probed device: its identity and fingerprint, or why it could not be reached.
struct Probed {
    device: String,
    result: std::result::Result<(DeviceIdentity, String), String>,
}

fn discover(target: &Target) -> Probed {
    let device = target.label();
    let result = Device::discover(target)
        .map(|d| {
            if let Some(note) = d.pin_note() {
                eprintln!("{note}");
            }
            (d.identity().clone(), d.fingerprint())
        })
        .map_err(|e| {
            // The table names the device already.
            let msg = e.to_string();
            msg.strip_prefix(&format!("{device}: ")).map_or(msg.clone(), str::to_string)
        });
    Probed { device, result }
}

fn forget(target: &str) -> Result<()> {
    let Some(path) = known::default_path() else {
        anyhow::bail!("no known-boards file: set ${} or $HOME", known::KNOWN_BOARDS_ENV);
    };
    let mut kb = KnownBoards::load(&path)?;
    match kb.forget(target)? {
        Some(pin) => println!(
            "forgot {target} ({}, line {} of {}); the next connection pins the identity the board proves",
            pin.fingerprint,
            pin.line,
            path.display()
        ),
        None => println!("{target} is not pinned in {}", path.display()),
    }
    Ok(())
}

pub fn run(args: Args) -> Result<()> {
    if let Some(t) = &args.forget {
        return forget(t);
    }
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
    let key =
        rba_protocol::keys::load_key(args.key_file.as_deref(), board::KEY_ENV, std::env::var(board::KEY_ENV).ok());
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
    // SHA256: and 43 base64 characters.
    let fp = 50;
    println!(
        "{:width$}  {:16}  {:8}  {:>5}  {:>9}  {:16}  {:fp$}  status",
        "device", "board", "arch", "cores", "memory", "runtime", "fingerprint"
    );
    for r in &rows {
        match &r.result {
            Ok((id, fingerprint)) => println!(
                "{:width$}  {:16}  {:8}  {:>5}  {:>9}  {:16}  {:fp$}  ok (rba {})",
                r.device,
                id.board,
                id.arch,
                id.cores,
                format_bytes(id.memory_bytes),
                id.runtime,
                fingerprint,
                id.rba_version
            ),
            Err(why) => println!(
                "{:width$}  {:16}  {:8}  {:>5}  {:>9}  {:16}  {:fp$}  {why}",
                r.device, "-", "-", "-", "-", "-", "-"
            ),
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
