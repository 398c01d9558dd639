//! The fleet inventory: which boards there are and how to reach them
//! (TOML; `boards/fleet/example.toml` is a documented example).
//!
//! ```toml
//! [defaults]                  # optional: for every board that does not say
//! key_file = "keys/line-3.key"
//! profile = "raspberry-pi-5"
//!
//! [[board]]
//! name = "cam-01"             # [A-Za-z0-9._-]{1,64}, unique
//! link = "tcp"                # "tcp" or "serial"
//! address = "10.3.0.11:7878"  # tcp: HOST[:PORT] (port: the profile's, else 7878)
//! key_file = "keys/cam-01.key"
//! tags = ["line-3", "inspect"]
//!
//! [[board]]
//! name = "cam-02"
//! link = "serial"
//! port = "/dev/ttyUSB0"       # serial: the host's end of the link
//! baud = 921600               # default: the profile's, else 115200
//! gates = "p99<=80ms"         # extra gates for this board on a deploy (an older, slower board)
//! ```
//!
//! Relative key paths are relative to the inventory file. Unknown keys are
//! errors.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use rba_protocol::boards::LinkKind;
use rba_protocol::{is_valid_name, parse_gates, Gate};
use serde::Deserialize;

use crate::board::{BoardError, LinkOptions, Target};

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("cannot read the inventory {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("invalid inventory {path}: {reason}")]
    Invalid { path: String, reason: String },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Defaults {
    key_file: Option<PathBuf>,
    profile: Option<String>,
    baud: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    link: LinkKind,
    address: Option<String>,
    port: Option<String>,
    baud: Option<u32>,
    key_file: Option<PathBuf>,
    profile: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    gates: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    defaults: Defaults,
    #[serde(default, rename = "board")]
    boards: Vec<Entry>,
}

/// One board of the fleet, defaults applied.
#[derive(Clone, Debug, PartialEq)]
pub struct FleetBoard {
    pub name: String,
    pub link: LinkKind,
    /// TCP: `HOST[:PORT]`.
    pub address: Option<String>,
    /// Serial: the host's end of the link.
    pub port: Option<String>,
    pub baud: Option<u32>,
    pub key_file: Option<PathBuf>,
    pub profile: Option<String>,
    pub tags: Vec<String>,
    /// Gates this board adds to a deploy's own (e.g. a latency budget of its own).
    pub gates: Vec<Gate>,
}

impl FleetBoard {
    /// `tcp 10.3.0.11:7878`, `serial /dev/ttyUSB0`.
    pub fn link_label(&self) -> String {
        match self.link {
            LinkKind::Tcp => format!("tcp {}", self.address.as_deref().unwrap_or("?")),
            LinkKind::Serial => format!("serial {}", self.port.as_deref().unwrap_or("?")),
        }
    }

    /// How to reach it (loads its key: a missing or malformed key file is
    /// this board's error).
    pub fn target(&self) -> Result<Target, BoardError> {
        let options = LinkOptions {
            board: self.profile.clone(),
            port: self.port.clone(),
            baud: self.baud,
            addr: self.address.clone(),
            key_file: self.key_file.clone(),
            store: None,
        };
        Target::from_options(&options)
    }

    pub fn has_tags(&self, tags: &[String]) -> bool {
        tags.iter().all(|t| self.tags.contains(t))
    }
}

#[derive(Clone, Debug)]
pub struct Inventory {
    pub path: PathBuf,
    pub boards: Vec<FleetBoard>,
}

impl Inventory {
    pub fn load(path: &Path) -> Result<Inventory, InventoryError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| InventoryError::Read { path: path.display().to_string(), reason: e.to_string() })?;
        Inventory::parse(&text, path)
    }

    /// Parses an inventory; `path` names it in errors and anchors relative key paths.
    pub fn parse(text: &str, path: &Path) -> Result<Inventory, InventoryError> {
        let invalid = |reason: String| InventoryError::Invalid { path: path.display().to_string(), reason };
        let file: File = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: PathBuf| if p.is_relative() { base.join(p) } else { p };
        let mut seen = HashSet::new();
        let mut boards = Vec::new();
        for e in file.boards {
            let name = e.name.clone();
            let bad = |reason: &str| invalid(format!("board '{name}': {reason}"));
            if !is_valid_name(&e.name) {
                return Err(bad("names use [A-Za-z0-9._-]{1,64}, not starting with '.'"));
            }
            if !seen.insert(e.name.clone()) {
                return Err(bad("the name is used twice"));
            }
            match e.link {
                LinkKind::Tcp if e.address.is_none() => return Err(bad("a tcp board needs address = \"HOST:PORT\"")),
                LinkKind::Tcp if e.port.is_some() => return Err(bad("a tcp board has an address, not a port")),
                LinkKind::Serial if e.port.is_none() => return Err(bad("a serial board needs port = \"/dev/...\"")),
                LinkKind::Serial if e.address.is_some() => {
                    return Err(bad("a serial board has a port, not an address"))
                }
                _ => {}
            }
            let key_file = e.key_file.or_else(|| file.defaults.key_file.clone()).map(resolve);
            if e.link == LinkKind::Tcp && key_file.is_none() {
                return Err(bad("a tcp board needs key_file (here or in [defaults])"));
            }
            if e.tags.iter().any(|t| t.is_empty() || t.contains(',')) {
                return Err(bad("tags are non-empty and have no commas"));
            }
            let gates = match &e.gates {
                Some(g) => parse_gates(g).map_err(|err| bad(&err.to_string()))?,
                None => Vec::new(),
            };
            boards.push(FleetBoard {
                name: e.name,
                link: e.link,
                address: e.address,
                port: e.port,
                baud: e.baud.or(file.defaults.baud),
                key_file,
                profile: e.profile.or_else(|| file.defaults.profile.clone()),
                tags: e.tags,
                gates,
            });
        }
        if boards.is_empty() {
            return Err(invalid("no [[board]] entries".into()));
        }
        Ok(Inventory { path: path.to_path_buf(), boards })
    }

    /// The boards carrying every one of `tags` (all boards for none), in
    /// inventory order.
    pub fn select(&self, tags: &[String]) -> Vec<FleetBoard> {
        self.boards.iter().filter(|b| b.has_tags(tags)).cloned().collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../boards/fleet/example.toml");

    #[test]
    fn the_example_parses_and_tags_select() {
        let inv = Inventory::parse(EXAMPLE, Path::new("/etc/rba/fleet.toml")).unwrap();
        assert!(inv.boards.len() >= 3);
        let first = &inv.boards[0];
        assert_eq!(first.link, LinkKind::Tcp);
        assert!(first.key_file.as_ref().unwrap().starts_with("/etc/rba"), "{:?}", first.key_file);
        let line3 = inv.select(&["line-3".to_string()]);
        assert!(!line3.is_empty() && line3.len() < inv.boards.len());
        assert!(line3.iter().all(|b| b.tags.contains(&"line-3".to_string())));
        assert_eq!(inv.select(&[]).len(), inv.boards.len());
        assert!(inv.boards.iter().any(|b| b.link == LinkKind::Serial && b.port.is_some()));
    }

    #[test]
    fn mistakes_are_named() {
        let p = Path::new("fleet.toml");
        let e = |t: &str| Inventory::parse(t, p).unwrap_err().to_string();
        let tcp = "[[board]]\nname='a'\nlink='tcp'\naddress='h:1'\nkey_file='k'\n";
        assert!(Inventory::parse(tcp, p).is_ok());
        assert!(e(&format!("{tcp}colour='red'\n")).contains("unknown field `colour`"));
        assert!(e(&format!("{tcp}{tcp}")).contains("board 'a': the name is used twice"));
        assert!(e("[[board]]\nname='a'\nlink='tcp'\nkey_file='k'\n").contains("needs address"));
        assert!(e("[[board]]\nname='a'\nlink='tcp'\naddress='h:1'\n").contains("needs key_file"));
        assert!(e("[[board]]\nname='a'\nlink='serial'\n").contains("needs port"));
        assert!(e("[[board]]\nname='a'\nlink='usb'\nport='x'\n").contains("unknown variant `usb`"));
        assert!(e("[[board]]\nname='../a'\nlink='serial'\nport='x'\n").contains("names use"));
        assert!(e("").contains("no [[board]] entries"));
        assert!(e(&format!("{tcp}gates='p99<=fast'\n")).contains("board 'a': gate 1 'p99<=fast': expected a number"));
        assert_eq!(Inventory::parse(&format!("{tcp}gates='p99<=80ms'\n"), p).unwrap().boards[0].gates.len(), 1);
        let d = "[defaults]\nkey_file='/k'\n[[board]]\nname='a'\nlink='tcp'\naddress='h:1'\n";
        assert_eq!(Inventory::parse(d, p).unwrap().boards[0].key_file.as_deref(), Some(Path::new("/k")));
    }
}
