//! Serving sessions: one host at a time, over TCP, a serial link or
//! in-memory links, until shutdown. A session that ends (the host left, the
//! link broke) is followed by the next one.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use rba_protocol::frame::FrameDecoder;
use rba_protocol::mem::MemLink;
use rba_protocol::serial::{open_serial, SerialError, SerialLink};
use rba_protocol::{
    encode_frame, serve, DeviceHandler, Envelope, Message, RemoteError, Response, ServerConfig, SessionEnd,
};

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
}

/// Read timeout of a TCP session's reader, and how often the accept loop
/// looks at the shutdown flag: bounds how late either notices a shutdown.
const POLL: Duration = Duration::from_millis(200);

/// Read timeout of a memory link's reader (tests: short, so a session's
/// reader thread ends quickly after the host leaves).
const MEMORY_POLL: Duration = Duration::from_millis(50);

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
                    log::info!("closing an idle session");
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
    fn session<R, W>(&mut self, reader: R, writer: W, idle: Option<Duration>) -> Result<SessionEnd, ServeError>
    where
        R: Read + Send + 'static,
        W: Write + Send + 'static,
    {
        let reader = Guarded { inner: reader, stop: self.shutdown.clone(), idle, last: Instant::now() };
        serve(self.handler, &self.config, reader, writer).map_err(|rba_protocol::ServerError::Io(e)| ServeError::Io(e))
    }

    /// One session over a TCP connection.
    pub fn serve_stream(&mut self, stream: TcpStream) -> Result<SessionEnd, ServeError> {
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
    pub fn serve_listener(&mut self, listener: TcpListener) -> Result<(), ServeError> {
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
                                log::info!("{peer}: busy with another host, refusing");
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
                            log::info!("accept failed: {e}");
                            std::thread::sleep(Duration::from_millis(200));
                        }
                    }
                }
            })?
        };
        while !self.shutdown.load(Ordering::SeqCst) {
            match rx.recv_timeout(POLL) {
                Ok((stream, peer)) => {
                    log::info!("{peer}: session started");
                    match self.serve_stream(stream) {
                        Ok(SessionEnd::Closed) => log::info!("{peer}: session ended"),
                        Ok(SessionEnd::AuthFailed) => log::info!("{peer}: authentication failed, disconnected"),
                        Err(e) => log::info!("{peer}: session failed: {e}"),
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
    pub fn serve_serial(&mut self, path: &str, baud: u32) -> Result<(), ServeError> {
        let port = open_serial(path, baud)?;
        self.serve_opened_serial(port, path, baud)
    }

    /// [`Server::serve_serial`] on a port the caller opened with
    /// [`open_serial`] (so an in-process board reports open errors before
    /// its thread starts, and the host never writes to an unopened port).
    pub fn serve_opened_serial(&mut self, port: SerialLink, path: &str, baud: u32) -> Result<(), ServeError> {
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
            match self.session(reader, writer, None) {
                Ok(_) => log::info!("{path}: session ended"),
                Err(e) => log::info!("{path}: session failed: {e}"),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Serves each memory link received, one session after another, until
    /// the sender is dropped or shutdown; returns how each session ended.
    pub fn serve_memory(&mut self, links: mpsc::Receiver<MemLink>) -> Result<Vec<SessionEnd>, ServeError> {
        let mut ends = Vec::new();
        while !self.shutdown.load(Ordering::SeqCst) {
            match links.recv_timeout(POLL) {
                Ok(mut link) => {
                    link.set_read_timeout(Some(MEMORY_POLL));
                    let reader = link.try_clone()?;
                    ends.push(self.session(reader, link, None)?);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        Ok(ends)
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
