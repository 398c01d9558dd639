//! Serving sessions: one host at a time, over TCP or a serial link, until
//! shutdown. A session that ends (the host left, the link broke) is
//! followed by the next one.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use rba_protocol::frame::FrameDecoder;
use rba_protocol::{
    encode_frame, serve, DeviceHandler, Envelope, Message, PreSharedKey, RemoteError, Response, ServerConfig,
    SessionEnd,
};
use serialport::TTYPort;

use crate::log;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("serial port {0} does not exist")]
    NoSuchPort(String),
    #[error("serial port {0} is busy (another process holds it)")]
    PortBusy(String),
    #[error("cannot open serial port {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("pre-shared key: {0}")]
    Key(String),
    #[error("link error: {0}")]
    Io(#[from] io::Error),
}

/// Read timeout of the session's reader: bounds how late it notices a
/// shutdown.
const POLL: Duration = Duration::from_millis(200);

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
pub fn open_serial(path: &str, baud: u32) -> Result<SerialLink, LinkError> {
    if !Path::new(path).exists() {
        return Err(LinkError::NoSuchPort(path.into()));
    }
    match serialport::new(path, baud).timeout(POLL).open_native() {
        Ok(p) => Ok(SerialLink::Native(p)),
        Err(e) => Err(match e.kind() {
            serialport::ErrorKind::NoDevice if e.description.contains("lock") => LinkError::PortBusy(path.into()),
            serialport::ErrorKind::Io(io::ErrorKind::NotFound) => LinkError::NoSuchPort(path.into()),
            serialport::ErrorKind::Io(io::ErrorKind::ResourceBusy) => LinkError::PortBusy(path.into()),
            // ENOSYS: an ioctl the kernel (or qemu-user) does not implement.
            serialport::ErrorKind::Unknown if e.description.contains("not implemented") => {
                use std::os::unix::fs::OpenOptionsExt;
                // O_NONBLOCK | O_NOCTTY (the same values on x86_64 and aarch64 Linux).
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .custom_flags(0o4000 | 0o400)
                    .open(path)
                    .map_err(|e| LinkError::Open { path: path.into(), reason: e.to_string() })?;
                log(&format!("{path}: cannot set the baud rate here ({e}); using the line as it is"));
                return Ok(SerialLink::Plain(f));
            }
            _ => LinkError::Open { path: path.into(), reason: e.to_string() },
        }),
    }
}

/// Reads the pre-shared key: a file's bytes (surrounding whitespace
/// trimmed) or an environment variable's value. At least 16 bytes.
pub fn load_key(file: Option<&Path>, env_value: Option<String>) -> Result<Option<PreSharedKey>, LinkError> {
    let bytes = match (file, env_value) {
        (Some(f), _) => {
            let raw = std::fs::read(f).map_err(|e| LinkError::Key(format!("cannot read {}: {e}", f.display())))?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                if std::fs::metadata(f).is_ok_and(|m| m.permissions().mode() & 0o077 != 0) {
                    log(&format!("warning: key file {} is readable by others (chmod 600 it)", f.display()));
                }
            }
            raw
        }
        (None, Some(v)) => v.into_bytes(),
        (None, None) => return Ok(None),
    };
    let key = bytes.trim_ascii();
    if key.len() < 16 {
        return Err(LinkError::Key(format!(
            "the key has {} bytes; use at least 16 (e.g. 32 random hex digits)",
            key.len()
        )));
    }
    Ok(Some(PreSharedKey::new(key.to_vec())))
}

/// Ends the session's reader at shutdown, or after `idle` without input
/// while no job runs (a host that vanished without closing the link).
struct Guarded<R> {
    inner: R,
    stop: Arc<AtomicBool>,
    idle: Option<Duration>,
    last: Instant,
}

impl<R: Read> Read for Guarded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.stop.load(Ordering::SeqCst) {
            return Ok(0);
        }
        match self.inner.read(buf) {
            Ok(n) => {
                self.last = Instant::now();
                Ok(n)
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock) => {
                if self.idle.is_some_and(|idle| self.last.elapsed() > idle) {
                    log("closing an idle session");
                    return Ok(0);
                }
                Err(e)
            }
            Err(e) => Err(e),
        }
    }
}

/// Serves the sessions of one link.
pub struct Server<'a, H: DeviceHandler> {
    pub handler: &'a mut H,
    pub config: ServerConfig,
    pub shutdown: Arc<AtomicBool>,
    /// Close a TCP session after this long without a request.
    pub idle: Option<Duration>,
}

impl<H: DeviceHandler> Server<'_, H> {
    fn session<R, W>(&mut self, reader: R, writer: W, idle: Option<Duration>) -> Result<SessionEnd, LinkError>
    where
        R: Read + Send + 'static,
        W: Write + Send + 'static,
    {
        let reader = Guarded { inner: reader, stop: self.shutdown.clone(), idle, last: Instant::now() };
        serve(self.handler, &self.config, reader, writer).map_err(|rba_protocol::ServerError::Io(e)| LinkError::Io(e))
    }

    /// One session over a TCP connection.
    pub fn serve_stream(&mut self, stream: TcpStream) -> Result<SessionEnd, LinkError> {
        stream.set_nonblocking(false)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(POLL))?;
        let reader = stream.try_clone()?;
        let writer = stream.try_clone()?;
        let idle = self.idle;
        let r = self.session(reader, writer, idle);
        let _ = stream.shutdown(std::net::Shutdown::Both);
        r
    }

    /// Accepts connections until shutdown, serving one at a time; a host
    /// that connects while another is served gets `Error(Busy)`.
    pub fn serve_tcp(&mut self, listener: TcpListener) -> Result<(), LinkError> {
        listener.set_nonblocking(true)?;
        let (tx, rx) = mpsc::channel::<(TcpStream, String)>();
        let in_session = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let shutdown = self.shutdown.clone();
            let in_session = in_session.clone();
            std::thread::Builder::new().name("rba-accept".into()).spawn(move || {
                while !shutdown.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, peer)) => {
                            if in_session.swap(true, Ordering::SeqCst) {
                                log(&format!("{peer}: busy with another host, refusing"));
                                let _ = std::thread::Builder::new()
                                    .name("rba-busy".into())
                                    .spawn(move || refuse_busy(stream));
                            } else if tx.send((stream, peer.to_string())).is_err() {
                                return;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(50))
                        }
                        Err(e) => {
                            log(&format!("accept failed: {e}"));
                            std::thread::sleep(Duration::from_millis(200));
                        }
                    }
                }
            })?
        };
        while !self.shutdown.load(Ordering::SeqCst) {
            match rx.recv_timeout(POLL) {
                Ok((stream, peer)) => {
                    log(&format!("{peer}: session started"));
                    match self.serve_stream(stream) {
                        Ok(SessionEnd::Closed) => log(&format!("{peer}: session ended")),
                        Ok(SessionEnd::AuthFailed) => log(&format!("{peer}: authentication failed, disconnected")),
                        Err(e) => log(&format!("{peer}: session failed: {e}")),
                    }
                    in_session.store(false, Ordering::SeqCst);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        drop(rx);
        let _ = acceptor.join();
        Ok(())
    }

    /// Serves a serial port until shutdown, reopening it after the link
    /// breaks (a pseudo-terminal whose other end closed, a USB gadget that
    /// went away). Fails only if the port cannot be opened at first.
    pub fn serve_serial(&mut self, path: &str, baud: u32) -> Result<(), LinkError> {
        let port = open_serial(path, baud)?;
        self.serve_opened_serial(port, path, baud)
    }

    /// [`Server::serve_serial`] on a port the caller opened with
    /// [`open_serial`] (so an in-process board reports open errors before
    /// its thread starts, and the host never writes to an unopened port).
    pub fn serve_opened_serial(&mut self, port: SerialLink, path: &str, baud: u32) -> Result<(), LinkError> {
        let mut port = Some(port);
        log(&format!("serving on {path} at {baud} baud"));
        let mut last_error = String::new();
        while !self.shutdown.load(Ordering::SeqCst) {
            let p = match port.take() {
                Some(p) => p,
                None => match open_serial(path, baud) {
                    Ok(p) => {
                        log(&format!("{path}: reopened"));
                        last_error.clear();
                        p
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        if msg != last_error {
                            log(&format!("{msg}; retrying"));
                            last_error = msg;
                        }
                        std::thread::sleep(Duration::from_millis(500));
                        continue;
                    }
                },
            };
            let (reader, writer) =
                p.split().map_err(|e| LinkError::Open { path: path.into(), reason: e.to_string() })?;
            match self.session(reader, writer, None) {
                Ok(_) => log(&format!("{path}: session ended")),
                Err(e) => log(&format!("{path}: session failed: {e}")),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }
}

/// Answers the first request of a host that came while another is
/// served with `Error(Busy)`, then closes.
fn refuse_busy(mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut decoder = FrameDecoder::new(4096);
    let mut buf = [0u8; 4096];
    let mut id = None;
    while id.is_none() && Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => decoder.feed(&buf[..n], |r| {
                if let Ok(Envelope { id: i, msg: Message::Request(_) }) = r {
                    id.get_or_insert(i);
                }
            }),
            Err(e) if matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock) => {}
            Err(_) => return,
        }
    }
    if let Some(id) = id {
        let env = Envelope { id, msg: Message::Response(Response::Error(RemoteError::Busy)) };
        if let Ok(frame) = encode_frame(&env, 4096) {
            let _ = stream.write_all(&frame);
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serialport::SerialPort;

    #[test]
    fn keys() {
        assert!(load_key(None, None).unwrap().is_none());
        assert!(load_key(None, Some("0123456789abcdef".into())).unwrap().is_some());
        let e = load_key(None, Some("short\n".into())).unwrap_err();
        assert!(e.to_string().contains("5 bytes"), "{e}");
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("key");
        std::fs::write(&f, "0123456789abcdef0123\n").unwrap();
        assert!(load_key(Some(&f), None).unwrap().is_some());
        let e = load_key(Some(&d.path().join("missing")), None).unwrap_err();
        assert!(e.to_string().contains("cannot read"), "{e}");
    }

    #[test]
    fn missing_and_busy_serial_ports() {
        let e = open_serial("/dev/does-not-exist-rba", 115_200).unwrap_err();
        assert!(matches!(e, LinkError::NoSuchPort(_)), "{e}");
        assert_eq!(e.to_string(), "serial port /dev/does-not-exist-rba does not exist");
        let Ok((_master, slave)) = TTYPort::pair() else {
            eprintln!("skipping the busy-port check: no pseudo-terminals here");
            return;
        };
        let path = slave.name().unwrap();
        drop(slave);
        let first = open_serial(&path, 115_200).unwrap();
        let e = open_serial(&path, 115_200).unwrap_err();
        assert!(matches!(e, LinkError::PortBusy(_)), "{e}");
        drop(first);
        open_serial(&path, 115_200).unwrap();
    }
}
