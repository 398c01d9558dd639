//! Serving sessions: one host at a time, over TCP, a serial link or
//! in-memory links, until shutdown. A session that ends (the host left, the
//! link broke) is followed by the next one.
//!
//! On TCP, connections wait in [`admission`](crate::admission) (one thread,
//! non-blocking sockets) until their host has proved the key; only then
//! do they reach the session, on the caller's thread.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use rba_protocol::mem::MemLink;
use rba_protocol::serial::{open_serial, SerialError, SerialLink};
use rba_protocol::{serve, serve_proved, DeviceHandler, Identity, ServerConfig, SessionEnd};

use crate::admission::{Admission, Admitted, Limits};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Serial(#[from] SerialError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("link error: {0}")]
    Io(#[from] io::Error),
    #[error("TCP needs a pre-shared key")]
    KeyRequired,
    #[error("{0}")]
    Identity(String),
}

/// Read timeout of a TCP session's reader, and how often the accept loop
/// looks at the shutdown flag: bounds how late either notices a shutdown.
const POLL: Duration = Duration::from_millis(200);

/// Read timeout of a memory link's reader (tests: short, so a session's
/// reader thread ends quickly after the host leaves).
const MEMORY_POLL: Duration = Duration::from_millis(50);

/// Ends the session's reader at shutdown.
struct Guarded<R> {
    inner: R,
    stop: Arc<AtomicBool>,
}

impl<R: Read> Read for Guarded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.stop.load(Ordering::SeqCst) {
            return Ok(0);
        }
        self.inner.read(buf)
    }
}

fn serve_error(e: rba_protocol::ServerError) -> ServeError {
    match e {
        rba_protocol::ServerError::Io(e) => ServeError::Io(e),
        rba_protocol::ServerError::Identity(e) => ServeError::Identity(e.to_string()),
    }
}

/// Serves the sessions of one link. Give `config.identity` the device's
/// long-term key (one is made up per session otherwise, and hosts cannot
/// pin the device).
pub struct Server<'a, H: DeviceHandler> {
    pub handler: &'a mut H,
    pub config: ServerConfig,
    pub shutdown: Arc<AtomicBool>,
    /// What TCP peers are allowed (deadlines, pending connections,
    /// backoff); serial and memory links use none of it.
    pub limits: Limits,
}

impl<H: DeviceHandler> Server<'_, H> {
    fn session<R, W>(&mut self, reader: R, writer: W) -> Result<SessionEnd, ServeError>
    where
        R: Read + Send + 'static,
        W: Write + Send + 'static,
    {
        self.session_with(reader, writer, self.config.allow_restart)
    }

    fn session_with<R, W>(&mut self, reader: R, writer: W, allow_restart: bool) -> Result<SessionEnd, ServeError>
    where
        R: Read + Send + 'static,
        W: Write + Send + 'static,
    {
        let reader = Guarded { inner: reader, stop: self.shutdown.clone() };
        let config = ServerConfig { allow_restart, ..self.config.clone() };
        serve(self.handler, &config, reader, writer).map_err(serve_error)
    }

    /// The identity sessions use (made once here if the config has none,
    /// so all sessions of this server share it).
    fn ensure_identity(&mut self) -> Result<Identity, ServeError> {
        if self.config.identity.is_none() {
            self.config.identity = Some(Identity::generate().map_err(|e| ServeError::Identity(e.to_string()))?);
        }
        self.config.identity.clone().ok_or_else(|| ServeError::Identity("no identity".into()))
    }

    /// The session of a host admission let through (it proved the key): the
    /// idle, record and write timeouts of [`Server::limits`] apply.
    fn serve_admitted(&mut self, a: Admitted) -> Result<SessionEnd, ServeError> {
        let Admitted { stream, channel, unsent, .. } = a;
        stream.set_nonblocking(false)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(POLL))?;
        stream.set_write_timeout(self.limits.write_timeout)?;
        let mut writer = stream.try_clone()?;
        writer.write_all(&unsent)?;
        let reader = Guarded { inner: stream.try_clone()?, stop: self.shutdown.clone() };
        let config = ServerConfig {
            allow_restart: false,
            idle_timeout: self.limits.idle_timeout,
            record_timeout: self.limits.record_timeout,
            ..self.config.clone()
        };
        let r = serve_proved(self.handler, &config, reader, writer, channel).map_err(serve_error);
        if matches!(r, Ok(SessionEnd::Integrity)) {
            linger(&stream);
        }
        let _ = stream.shutdown(std::net::Shutdown::Both);
        r
    }

    /// Accepts connections until shutdown and serves one host at a time.
    /// Connections wait in admission (one thread) until their host proved
    /// the key; a host that does so while another is served gets `Busy`.
    pub fn serve_listener(&mut self, listener: TcpListener) -> Result<(), ServeError> {
        let Some(key) = self.config.key.clone() else {
            return Err(ServeError::KeyRequired);
        };
        let identity = self.ensure_identity()?;
        listener.set_nonblocking(true)?;
        // Capacity 1: admission lets a host through only while no session runs.
        let (tx, rx) = mpsc::sync_channel::<Admitted>(1);
        let in_session = Arc::new(AtomicBool::new(false));
        let admission =
            Admission::new(identity, key, self.limits.clone(), in_session.clone(), self.shutdown.clone(), tx);
        let admission =
            std::thread::Builder::new().name("rba-admission".into()).spawn(move || admission.run(&listener))?;
        while !self.shutdown.load(Ordering::SeqCst) {
            match rx.recv_timeout(POLL) {
                Ok(admitted) => {
                    let peer = admitted.peer;
                    log::info!("{peer}: session started");
                    let r = self.serve_admitted(admitted);
                    // Free the slot before saying so: a host that reads the
                    // line and connects is served.
                    in_session.store(false, Ordering::SeqCst);
                    match r {
                        Ok(SessionEnd::Closed) => log::info!("{peer}: session ended"),
                        Ok(SessionEnd::TimedOut) => log::info!("{peer}: session ended: timed out"),
                        Ok(SessionEnd::AuthFailed) => log::info!("{peer}: session ended: authentication failed"),
                        Ok(SessionEnd::Integrity) => {
                            log::info!("{peer}: session failed: a record failed authentication (tampered link)")
                        }
                        Ok(SessionEnd::Refused) => log::info!("{peer}: session failed: handshake refused"),
                        Err(e) => log::info!("{peer}: session failed: {e}"),
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        drop(rx);
        let _ = admission.join();
        Ok(())
    }

    /// Serves a serial port until shutdown, reopening it after the link
    /// breaks (a pseudo-terminal whose other end closed, a USB gadget that
    /// went away). Fails only if the port cannot be opened at first.
    pub fn serve_serial(&mut self, path: &str, baud: u32) -> Result<(), ServeError> {
        let port = open_serial(path, baud)?;
        self.serve_opened_serial(port, path, baud)
    }

    /// [`Server::serve_serial`] on a port the caller opened with
    /// [`open_serial`] (so an in-process board reports open errors before
    /// its thread starts, and the host never writes to an unopened port).
    pub fn serve_opened_serial(&mut self, port: SerialLink, path: &str, baud: u32) -> Result<(), ServeError> {
        self.ensure_identity()?;
        let mut port = Some(port);
        log::info!("serving on {path} at {baud} baud");
        let mut last_error = String::new();
        while !self.shutdown.load(Ordering::SeqCst) {
            let p = match port.take() {
                Some(p) => p,
                None => match open_serial(path, baud) {
                    Ok(p) => {
                        log::info!("{path}: reopened");
                        last_error.clear();
                        p
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        if msg != last_error {
                            log::info!("{msg}; retrying");
                            last_error = msg;
                        }
                        std::thread::sleep(Duration::from_millis(500));
                        continue;
                    }
                },
            };
            let (reader, writer) =
                p.split().map_err(|e| SerialError::Open { path: path.into(), reason: e.to_string() })?;
            match self.session_with(reader, writer, true) {
                Ok(end) => log::info!("{path}: session ended ({end:?})"),
                Err(e) => log::info!("{path}: session failed: {e}"),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Serves each memory link received, one session after another, until
    /// the sender is dropped or shutdown; returns how each session ended.
    pub fn serve_memory(&mut self, links: mpsc::Receiver<MemLink>) -> Result<Vec<SessionEnd>, ServeError> {
        self.ensure_identity()?;
        let mut ends = Vec::new();
        while !self.shutdown.load(Ordering::SeqCst) {
            match links.recv_timeout(POLL) {
                Ok(mut link) => {
                    link.set_read_timeout(Some(MEMORY_POLL));
                    let reader = link.try_clone()?;
                    ends.push(self.session(reader, link)?);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        Ok(ends)
    }
}

/// After telling the host why the session ends: closes the sending side
/// and drains what the host still sends for a moment, so that closing does
/// not reset the connection (a reset can discard the notice unread).
fn linger(stream: &TcpStream) {
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut buf = [0u8; 16 * 1024];
    let mut s = stream;
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock) => {}
            Err(_) => return,
        }
    }
}
