//! In-memory duplex link for tests: two connected ends, each `Read + Write`,
//! with read timeouts like a socket, and optional seeded faults (corrupted,
//! dropped and duplicated bytes, a cut after N bytes) to model a flaky cable.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::rng::splitmix64;

/// Per-byte fault probabilities of one direction, and an optional cut.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Faults {
    pub seed: u64,
    /// Probability that a byte is replaced by a random one.
    pub corrupt: f64,
    /// Probability that a byte is lost.
    pub drop: f64,
    /// Probability that a byte is sent twice.
    pub duplicate: f64,
    /// Close the link once this many bytes were written in this direction.
    pub cut_after: Option<u64>,
}

#[derive(Debug, Default)]
struct PipeState {
    buf: VecDeque<u8>,
    closed: bool,
}

#[derive(Debug, Default)]
struct Pipe {
    state: Mutex<PipeState>,
    ready: Condvar,
}

impl Pipe {
    fn lock(&self) -> MutexGuard<'_, PipeState> {
        // A panicking test thread must not wedge the other end.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }
}

#[derive(Debug)]
struct FaultState {
    faults: Faults,
    rng: u64,
    written: u64,
}

impl FaultState {
    fn next(&mut self) -> u64 {
        splitmix64(&mut self.rng)
    }

    fn chance(&mut self, p: f64) -> bool {
        let unit = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        p > 0.0 && unit < p
    }
}

/// Closes both directions when the last handle of an end is dropped.
#[derive(Debug)]
struct EndGuard {
    rx: Arc<Pipe>,
    tx: Arc<Pipe>,
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        self.rx.close();
        self.tx.close();
    }
}

/// One end of an in-memory link. Clones share the end (like `try_clone`).
#[derive(Clone, Debug)]
pub struct MemLink {
    rx: Arc<Pipe>,
    tx: Arc<Pipe>,
    read_timeout: Option<Duration>,
    faults: Option<Arc<Mutex<FaultState>>>,
    _guard: Arc<EndGuard>,
}

/// A reliable link.
pub fn duplex() -> (MemLink, MemLink) {
    lossy_duplex(None, None)
}

/// A link whose directions suffer the given faults (`a_to_b` applies to
/// bytes written by the first end).
pub fn lossy_duplex(a_to_b: Option<Faults>, b_to_a: Option<Faults>) -> (MemLink, MemLink) {
    let ab = Arc::new(Pipe::default());
    let ba = Arc::new(Pipe::default());
    let fault =
        |f: Option<Faults>| f.map(|faults| Arc::new(Mutex::new(FaultState { faults, rng: faults.seed, written: 0 })));
    let a = MemLink {
        rx: ba.clone(),
        tx: ab.clone(),
        read_timeout: None,
        faults: fault(a_to_b),
        _guard: Arc::new(EndGuard { rx: ba.clone(), tx: ab.clone() }),
    };
    let b = MemLink {
        rx: ab.clone(),
        tx: ba.clone(),
        read_timeout: None,
        faults: fault(b_to_a),
        _guard: Arc::new(EndGuard { rx: ab, tx: ba }),
    };
    (a, b)
}

impl MemLink {
    /// Like `TcpStream::set_read_timeout`: reads fail with `TimedOut` after it.
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        self.read_timeout = timeout;
    }

    pub fn try_clone(&self) -> io::Result<MemLink> {
        Ok(self.clone())
    }

    /// Cuts the link in both directions (the peer reads EOF).
    pub fn close(&self) {
        self.rx.close();
        self.tx.close();
    }

    fn push_faulty(&self, buf: &mut VecDeque<u8>, data: &[u8]) -> io::Result<()> {
        let Some(f) = &self.faults else {
            buf.extend(data);
            return Ok(());
        };
        let mut f = f.lock().unwrap_or_else(|e| e.into_inner());
        for &b in data {
            if let Some(cut) = f.faults.cut_after {
                if f.written >= cut {
                    return Err(io::ErrorKind::BrokenPipe.into());
                }
            }
            f.written += 1;
            let p = f.faults;
            if f.chance(p.drop) {
                continue;
            }
            let b = if f.chance(p.corrupt) { f.next() as u8 } else { b };
            buf.push_back(b);
            if f.chance(p.duplicate) {
                buf.push_back(b);
            }
        }
        Ok(())
    }
}

impl Read for MemLink {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        let deadline = self.read_timeout.map(|t| Instant::now() + t);
        let mut st = self.rx.lock();
        while st.buf.is_empty() && !st.closed {
            st = match deadline {
                None => self.rx.ready.wait(st).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Err(io::ErrorKind::TimedOut.into());
                    }
                    self.rx.ready.wait_timeout(st, d - now).unwrap_or_else(|e| e.into_inner()).0
                }
            };
        }
        let n = out.len().min(st.buf.len());
        for (o, b) in out.iter_mut().zip(st.buf.drain(..n)) {
            *o = b;
        }
        Ok(n)
    }
}

impl Write for MemLink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut st = self.tx.lock();
        if st.closed {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let r = self.push_faulty(&mut st.buf, data);
        drop(st);
        self.tx.ready.notify_all();
        if r.is_err() {
            self.close();
        }
        r.map(|()| data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn duplex_timeout_and_eof() {
        let (mut a, mut b) = duplex();
        b.set_read_timeout(Some(Duration::from_millis(10)));
        let mut buf = [0u8; 8];
        assert_eq!(b.read(&mut buf).unwrap_err().kind(), io::ErrorKind::TimedOut);
        a.write_all(b"hi").unwrap();
        assert_eq!(b.read(&mut buf).unwrap(), 2);
        assert_eq!(&buf[..2], b"hi");
        drop(a);
        assert_eq!(b.read(&mut buf).unwrap(), 0);
        assert!(b.write(b"x").is_err());
    }

    #[test]
    fn cut_after() {
        let faults = Faults { cut_after: Some(3), ..Faults::default() };
        let (mut a, mut b) = lossy_duplex(Some(faults), None);
        assert!(a.write_all(b"hello").is_err());
        let mut buf = [0u8; 8];
        assert_eq!(b.read(&mut buf).unwrap(), 3);
        assert_eq!(b.read(&mut buf).unwrap(), 0);
    }
}
