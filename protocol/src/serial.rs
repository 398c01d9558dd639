//! Serial links as both ends open them: exclusively, raw, with a read
//! timeout so a session's reader notices shutdown; and a fallback for
//! systems whose terminal ioctls are missing (qemu-user), where the line
//! is used with the settings its other end gave it.

use std::io::{self, Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use serialport::TTYPort;

/// Read timeout of an open port: bounds how late a session's reader
/// notices a shutdown.
pub const READ_TIMEOUT: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SerialError {
    #[error("serial port {0} does not exist")]
    NoSuchPort(String),
    #[error("serial port {0} is busy (another process holds it)")]
    PortBusy(String),
    #[error("cannot open serial port {path}: {reason}")]
    Open { path: String, reason: String },
}

/// An open serial link.
#[derive(Debug)]
pub enum SerialLink {
    /// Configured through `serialport` (baud rate, raw mode, exclusive).
    Native(TTYPort),
    /// Used as it is: the terminal ioctls for baud rates are missing
    /// (qemu-user lacks `TCSETS2`), so the line keeps the settings its
    /// other end gave it (a pty pair made raw by the host).
    Plain(std::fs::File),
}

impl SerialLink {
    /// A reader (with a read timeout) and a writer for one session.
    pub fn split(&self) -> io::Result<(Box<dyn Read + Send>, Box<dyn Write + Send>)> {
        match self {
            SerialLink::Native(p) => {
                let r = p.try_clone_native().map_err(io::Error::other)?;
                let w = p.try_clone_native().map_err(io::Error::other)?;
                Ok((Box::new(r), Box::new(w)))
            }
            SerialLink::Plain(f) => Ok((Box::new(Polled(f.try_clone()?)), Box::new(Polled(f.try_clone()?)))),
        }
    }
}

/// A non-blocking file polled every few milliseconds: reads report
/// `TimedOut` when nothing arrived, writes wait for room.
struct Polled(std::fs::File);

impl Read for Polled {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.0.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
                Err(io::ErrorKind::TimedOut.into())
            }
            r => r,
        }
    }
}

impl Write for Polled {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.0.write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                r => return r,
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// Opens a serial port (exclusive: a second opener gets `PortBusy`).
pub fn open_serial(path: &str, baud: u32) -> Result<SerialLink, SerialError> {
    if !Path::new(path).exists() {
        return Err(SerialError::NoSuchPort(path.into()));
    }
    match serialport::new(path, baud).timeout(READ_TIMEOUT).open_native() {
        Ok(p) => Ok(SerialLink::Native(p)),
        Err(e) => Err(match e.kind() {
            serialport::ErrorKind::NoDevice if e.description.contains("lock") => SerialError::PortBusy(path.into()),
            serialport::ErrorKind::Io(io::ErrorKind::NotFound) => SerialError::NoSuchPort(path.into()),
            serialport::ErrorKind::Io(io::ErrorKind::ResourceBusy) => SerialError::PortBusy(path.into()),
            // ENOSYS: an ioctl the kernel (or qemu-user) does not implement.
            serialport::ErrorKind::Unknown if e.description.contains("not implemented") => {
                use std::os::unix::fs::OpenOptionsExt;
                // O_NONBLOCK | O_NOCTTY (the same values on x86_64 and aarch64 Linux).
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .custom_flags(0o4000 | 0o400)
                    .open(path)
                    .map_err(|e| SerialError::Open { path: path.into(), reason: e.to_string() })?;
                log::info!("{path}: cannot set the baud rate here ({e}); using the line as it is");
                return Ok(SerialLink::Plain(f));
            }
            _ => SerialError::Open { path: path.into(), reason: e.to_string() },
        }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serialport::SerialPort;

    #[test]
    fn missing_and_busy_serial_ports() {
        let e = open_serial("/dev/does-not-exist-rba", 115_200).unwrap_err();
        assert!(matches!(e, SerialError::NoSuchPort(_)), "{e}");
        assert_eq!(e.to_string(), "serial port /dev/does-not-exist-rba does not exist");
        let Ok((_master, slave)) = TTYPort::pair() else {
            eprintln!("skipping the busy-port check: no pseudo-terminals here");
            return;
        };
        let path = slave.name().unwrap();
        drop(slave);
        let first = open_serial(&path, 115_200).unwrap();
        let e = open_serial(&path, 115_200).unwrap_err();
        assert!(matches!(e, SerialError::PortBusy(_)), "{e}");
        drop(first);
        open_serial(&path, 115_200).unwrap();
    }
}
