//! Upload throughput over a pseudo-terminal (the serial path the boards use,
//! at the speed of the kernel's pty): a framed, acknowledged, SHA-256
//! verified upload against raw writes over the same kind of pty pair,
//! measured in the same run: `cargo bench -p rba-device --bench link --profile dev`.
//! `RBA_BENCH_OUT` collects the table rows for bench/run.

#![allow(clippy::unwrap_used)] // a benchmark may panic

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use rba_protocol::testing::MemoryHandler;
use rba_protocol::*;
use rba_testkit::bench::row;
use serialport::{SerialPort, TTYPort};

const MB: f64 = 1_000_000.0;

/// Raw bytes through a pty pair: master writes, a thread reads the slave.
fn raw_pty(total: usize) -> Duration {
    let (mut master, mut slave) = TTYPort::pair().unwrap();
    slave.set_timeout(Duration::from_secs(5)).unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0;
        while got < total {
            got += slave.read(&mut buf).unwrap();
        }
        slave
    });
    master.set_timeout(Duration::from_secs(5)).unwrap();
    let data = vec![0x5au8; total];
    let t = Instant::now();
    for c in data.chunks(DEFAULT_SERIAL_CHUNK as usize) {
        master.write_all(c).unwrap();
    }
    let _slave = reader.join().unwrap();
    t.elapsed()
}

/// A full upload session over a pty pair: the device side serves a
/// `MemoryHandler` on the slave, the client drives the master.
fn upload_pty(data: &[u8], chunk: u32) -> Duration {
    let (master, slave) = TTYPort::pair().unwrap();
    let (mut r, w) = (slave.try_clone_native().unwrap(), slave.try_clone_native().unwrap());
    r.set_timeout(Duration::from_millis(200)).unwrap();
    let server = std::thread::spawn(move || {
        let mut h = MemoryHandler::new();
        let _ = serve(&mut h, &ServerConfig::default(), r, w);
        drop(slave);
        h
    });
    let mut link = master.try_clone_native().unwrap();
    link.set_timeout(Duration::from_millis(50)).unwrap();
    let t = Instant::now();
    let mut c = Client::connect(link, ClientConfig { preferred_chunk: chunk, ..ClientConfig::serial() }).unwrap();
    let info = c.upload(ArtifactKind::Model, "bench.onnx", data, |_| {}).unwrap();
    let d = t.elapsed();
    assert_eq!(info.size, data.len() as u64);
    drop(c);
    drop(master);
    let h = server.join().unwrap();
    assert_eq!(h.get(ArtifactKind::Model, "bench.onnx"), Some(data));
    d
}

fn main() {
    let total = 8 * 1024 * 1024;
    let data: Vec<u8> = (0..total).map(|i| (i * 13 + i / 4096) as u8).collect();
    let raw = (0..3).map(|_| raw_pty(total)).min().unwrap();
    let base = total as f64 / MB / raw.as_secs_f64();
    for chunk in [DEFAULT_SERIAL_CHUNK, 16 * 1024] {
        let d = (0..3).map(|_| upload_pty(&data, chunk)).min().unwrap();
        let r = total as f64 / MB / d.as_secs_f64();
        row(
            &format!("link: upload of an 8 MiB model over a pty, {} B chunks, vs raw pty writes", chunk),
            &format!("{r:.1} MB/s"),
            &format!("{base:.1} MB/s"),
            r / base,
            "-",
            None,
        );
    }
}
