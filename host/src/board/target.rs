//! From what the user gave (a board profile, a serial port, a TCP address,
//! a key) to a [`Target`].

use std::path::PathBuf;

use rba_protocol::boards::{self, BoardProfile, LinkKind, ProfileError};
use rba_protocol::keys::{load_key, KeyError};
use rba_protocol::PreSharedKey;

use super::{BoardError, DEFAULT_BAUD, DEFAULT_TCP_PORT, KEY_ENV, LOCAL_BOARD, QEMU_BOARD};

/// How to reach a device, as the user gave it.
#[derive(Debug, Clone, Default)]
pub struct LinkOptions {
    /// Board: a profile name (boards/NAME.toml) or path, `local` (a board
    /// running in this process over a pseudo-terminal) or `qemu-aarch64`
    /// (the cross-built ARM daemon under qemu-user).
    pub board: Option<String>,
    /// Serial port of the board (e.g. /dev/ttyACM0, or a pty path).
    pub port: Option<String>,
    /// Serial baud rate (default: the profile's, else 115200).
    pub baud: Option<u32>,
    /// TCP address of the board, HOST:PORT (the port defaults to the profile's, else 7878).
    pub addr: Option<String>,
    /// File with the board's pre-shared key (else $RBA_KEY); required on TCP.
    pub key_file: Option<PathBuf>,
    /// Model store of the `local` and `qemu-aarch64` boards (default: a temporary directory).
    pub store: Option<PathBuf>,
}

/// A resolved device address.
#[derive(Clone, Debug)]
pub enum Target {
    Serial {
        path: String,
        baud: u32,
        key: Option<PreSharedKey>,
        board: Option<String>,
    },
    Tcp {
        addr: String,
        key: Option<PreSharedKey>,
        board: Option<String>,
    },
    /// The daemon on a thread of this process, over a real pty pair.
    Local {
        store: Option<PathBuf>,
    },
    /// The aarch64 daemon under qemu-user, over a pty pair.
    Qemu {
        store: Option<PathBuf>,
    },
}

impl Target {
    /// Resolves command-line options: an explicit `--port`/`--addr` wins,
    /// a board profile fills in the rest (link kind, baud, TCP port).
    pub fn from_options(args: &LinkOptions) -> Result<Target, BoardError> {
        let key = || load_key(args.key_file.as_deref(), KEY_ENV, std::env::var(KEY_ENV).ok()).map_err(key_error);
        let board = args.board.as_deref();
        match board {
            Some(LOCAL_BOARD) if args.port.is_none() && args.addr.is_none() => {
                return Ok(Target::Local { store: args.store.clone() })
            }
            Some(QEMU_BOARD) => {
                if args.port.is_some() || args.addr.is_some() {
                    return Err(BoardError::Usage(format!(
                        "--board {QEMU_BOARD} starts its own emulated board; drop --port/--addr"
                    )));
                }
                return Ok(Target::Qemu { store: args.store.clone() });
            }
            _ => {}
        }
        let profile = match board {
            Some(LOCAL_BOARD) | None => None,
            Some(name) => Some(find_board(name)?),
        };
        let board_name = profile.as_ref().map(|p| p.name.clone()).or(args.board.clone());
        if let Some(path) = &args.port {
            let baud = args.baud.or(profile.as_ref().and_then(|p| p.link.baud)).unwrap_or(DEFAULT_BAUD);
            // Serial needs no key (physical access); with one, the device must prove it.
            return Ok(Target::Serial { path: path.clone(), baud, key: key()?, board: board_name });
        }
        let profile_port = profile.as_ref().and_then(|p| p.link.tcp.as_deref()).and_then(port_of);
        if let Some(addr) = &args.addr {
            let addr = if port_of(addr).is_some() {
                addr.clone()
            } else {
                format!("{addr}:{}", profile_port.unwrap_or(DEFAULT_TCP_PORT))
            };
            return Ok(Target::Tcp { addr, key: key()?, board: board_name });
        }
        let Some(p) = profile else { return Err(BoardError::NoTarget) };
        let setup = |problem: String| BoardError::Setup { device: format!("board '{}'", p.name), problem };
        match p.link.default {
            LinkKind::Tcp => {
                let addr = p.link.tcp.clone().unwrap_or_default();
                if is_unspecified_host(&addr) {
                    let port = profile_port.unwrap_or(DEFAULT_TCP_PORT);
                    return Err(setup(format!(
                        "the profile's address {addr} is where the board listens; pass --addr HOST:{port} with the board's address"
                    )));
                }
                Ok(Target::Tcp { addr, key: key()?, board: Some(p.name.clone()) })
            }
            LinkKind::Serial => {
                let on_board = p.link.serial.as_ref().map_or("?".into(), |s| s.display().to_string());
                Err(setup(format!(
                    "it is reached over serial ({on_board} on the board): pass --port with the host's end of the link (e.g. /dev/ttyACM0 for a USB gadget){}",
                    serial_port_hint()
                )))
            }
        }
    }

    /// The name its identity is pinned under in the known-boards file:
    /// `host:port` for TCP, the port path for serial; `None` for the boards
    /// rba starts itself (a fresh identity every time).
    pub fn pin_name(&self) -> Option<String> {
        match self {
            Target::Serial { path, .. } => Some(path.clone()),
            Target::Tcp { addr, .. } => Some(addr.clone()),
            Target::Local { .. } | Target::Qemu { .. } => None,
        }
    }

    /// How the device is named in messages and tables.
    pub fn label(&self) -> String {
        match self {
            Target::Serial { path, board: Some(b), .. } => format!("{b} ({path})"),
            Target::Serial { path, .. } => path.clone(),
            Target::Tcp { addr, board: Some(b), .. } => format!("{b} ({addr})"),
            Target::Tcp { addr, .. } => addr.clone(),
            Target::Local { .. } => format!("{LOCAL_BOARD} (in-process)"),
            Target::Qemu { .. } => format!("{QEMU_BOARD} (qemu-user)"),
        }
    }
}

fn key_error(e: KeyError) -> BoardError {
    BoardError::Usage(e.to_string())
}

fn port_of(addr: &str) -> Option<u16> {
    addr.rsplit_once(':')
        .and_then(|(host, port)| (!host.is_empty() || addr.starts_with(':')).then_some(port))
        .and_then(|p| p.parse().ok())
}

fn is_unspecified_host(addr: &str) -> bool {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h).trim_matches(['[', ']']);
    matches!(host, "0.0.0.0" | "::" | "")
}

fn serial_port_hint() -> String {
    match serialport::available_ports() {
        Ok(ports) if !ports.is_empty() => {
            let names: Vec<String> = ports.into_iter().map(|p| p.port_name).collect();
            format!("; serial ports here: {}", names.join(", "))
        }
        _ => "; no serial ports found here".into(),
    }
}

/// Where board profiles are looked up (files there override the profiles
/// built into the binary).
pub fn board_dirs() -> Vec<PathBuf> {
    boards::lookup_dirs(None)
}

pub fn find_board(name: &str) -> Result<BoardProfile, BoardError> {
    match boards::find(name, &board_dirs()) {
        Ok(p) => Ok(p),
        Err(ProfileError::NotFound { looked, .. }) => {
            let mut known = vec![LOCAL_BOARD.to_string(), QEMU_BOARD.to_string()];
            known.extend(known_boards().into_iter().map(|b| b.name).filter(|n| n != LOCAL_BOARD && n != QEMU_BOARD));
            Err(BoardError::Setup {
                device: format!("board '{name}'"),
                problem: format!("profile not found (looked for {looked}); known boards: {}", known.join(", ")),
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// Every known profile: files in the board directories, then the built-in ones.
pub fn known_boards() -> Vec<BoardProfile> {
    boards::known(&board_dirs())
}
