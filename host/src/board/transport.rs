//! Byte streams to a device, and opening a new session on them (the first,
//! and after a broken link).

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use rba_protocol::serial::{open_serial, SerialLink};
use rba_protocol::{Client, ClientConfig, ClientError};
use serialport::{SerialPort, TTYPort};

/// A byte stream to a device.
pub enum Stream {
    Tty(TTYPort),
    Tcp(TcpStream),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tty(p) => p.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tty(p) => p.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tty(p) => p.flush(),
            Stream::Tcp(s) => s.flush(),
        }
    }
}

/// Opens new sessions to one device (the first, and after a broken link).
pub(super) struct Connector {
    pub(super) route: Route,
    pub(super) config: ClientConfig,
    pub(super) connect_timeout: Duration,
}

pub(super) enum Route {
    Serial {
        path: String,
        baud: u32,
    },
    Tcp {
        addr: String,
    },
    /// The host end of a pty pair; every session reads and writes a clone.
    Pty(TTYPort),
}

/// How often a blocked read on the host side wakes up (the client counts
/// its deadlines across these).
const READ_POLL: Duration = Duration::from_millis(20);

impl Connector {
    fn open(&self) -> Result<Stream, String> {
        match &self.route {
            Route::Serial { path, baud } => match open_serial(path, *baud).map_err(|e| e.to_string())? {
                SerialLink::Native(mut p) => {
                    p.set_timeout(READ_POLL).map_err(|e| e.to_string())?;
                    Ok(Stream::Tty(p))
                }
                SerialLink::Plain(_) => Err(format!("{path}: this system cannot set the baud rate of the port")),
            },
            Route::Tcp { addr } => {
                let sock = addr
                    .to_socket_addrs()
                    .map_err(|e| format!("cannot resolve {addr}: {e}"))?
                    .next()
                    .ok_or_else(|| format!("{addr} resolves to no address"))?;
                let s = TcpStream::connect_timeout(&sock, self.connect_timeout)
                    .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
                s.set_nodelay(true).map_err(|e| e.to_string())?;
                s.set_read_timeout(Some(Duration::from_millis(200))).map_err(|e| e.to_string())?;
                Ok(Stream::Tcp(s))
            }
            Route::Pty(master) => {
                let mut m = master.try_clone_native().map_err(|e| format!("pseudo-terminal: {e}"))?;
                m.set_timeout(READ_POLL).map_err(|e| e.to_string())?;
                Ok(Stream::Tty(m))
            }
        }
    }

    pub(super) fn connect(&self) -> Result<Client<Stream>, ClientError> {
        let stream = self.open().map_err(|m| ClientError::Io(io::Error::other(m)))?;
        Client::connect(stream, self.config.clone())
    }
}
