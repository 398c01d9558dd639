//! `cargo bench -p rba-protocol`: framing throughput and overhead, and
//! upload throughput over TCP loopback, each against a baseline measured in
//! the same run (memcpy, raw TCP, the same upload without the secure
//! channel), and the time of the secure handshake.

#![allow(clippy::unwrap_used)] // a benchmark may panic

use std::hint::black_box;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use rba_protocol::testing::MemoryHandler;
use rba_protocol::*;

const MB: f64 = 1_000_000.0;

/// One row of bench/README.md's table, printed by bench/run from `RBA_BENCH_OUT`.
fn row(figure: &str, value: &str, baseline: &str, ratio: f64) {
    if let Ok(path) = std::env::var("RBA_BENCH_OUT") {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
        writeln!(f, "| {figure} | {value} | {baseline} | {ratio:.3} | - | - |").unwrap();
    }
}

fn rate(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / MB / d.as_secs_f64()
}

/// Best of `reps` timings of `f`.
fn best(reps: usize, mut f: impl FnMut()) -> Duration {
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .min()
        .unwrap()
}

fn chunk_env(offset: u64, data: Vec<u8>) -> Envelope {
    Envelope { id: 123_456, msg: Message::Request(Request::UploadChunk(UploadChunk { offset, data: Bytes(data) })) }
}

fn codec() {
    let chunk = DEFAULT_TCP_CHUNK as usize;
    let data: Vec<u8> = (0..chunk).map(|i| (i * 7 + 1) as u8).collect();
    let n = 200;
    let memcpy = best(5, || {
        for _ in 0..n {
            black_box(black_box(&data).clone());
        }
    });
    let env = chunk_env(1 << 24, data.clone());
    let mut enc = FrameEncoder::new(DEFAULT_MAX_FRAME);
    let mut out = Vec::new();
    let encode = best(5, || {
        for _ in 0..n {
            out.clear();
            enc.encode(black_box(&env), &mut out).unwrap();
        }
    });
    let frame = out.clone();
    let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME);
    let decode = best(5, || {
        for _ in 0..n {
            dec.feed(black_box(&frame), |r| {
                black_box(r.unwrap());
            });
        }
    });
    let total = n * chunk;
    let base = rate(total, memcpy);
    println!("codec ({} KiB chunks, {} MB):", chunk / 1024, total as f64 / MB);
    println!("  baseline memcpy       {:>9.0} MB/s", base);
    println!("  encode frame          {:>9.0} MB/s  ({:.3} x memcpy)", rate(total, encode), rate(total, encode) / base);
    println!("  decode frame          {:>9.0} MB/s  ({:.3} x memcpy)", rate(total, decode), rate(total, decode) / base);
    for (what, d) in [("encode", encode), ("decode", decode)] {
        row(
            &format!("link: {what} {} KiB chunk frames vs memcpy", chunk / 1024),
            &format!("{:.0} MB/s", rate(total, d)),
            &format!("{base:.0} MB/s"),
            rate(total, d) / base,
        );
    }
}

fn overhead() {
    println!("framing overhead per chunk (chunk frame + its ack frame, offset ~16 MB):");
    for chunk in [DEFAULT_SERIAL_CHUNK, DEFAULT_TCP_CHUNK] {
        let data: Vec<u8> = (0..chunk).map(|i| (i % 251 + 1) as u8).collect();
        let worst: Vec<u8> = vec![0; chunk as usize];
        let ack = Envelope {
            id: 123_456,
            msg: Message::Response(Response::ChunkAck { next_offset: (1 << 24) + u64::from(chunk) }),
        };
        let ack_len = encode_frame(&ack, DEFAULT_MAX_FRAME).unwrap().len();
        for (label, d) in [("typical", data), ("all-zero", worst)] {
            let frame = encode_frame(&chunk_env(1 << 24, d), DEFAULT_MAX_FRAME).unwrap().len();
            let extra = frame + ack_len - chunk as usize;
            println!(
                "  {:>7} B chunk, {:8}: frame {} B + ack {} B -> {} B overhead = {:.2}%",
                chunk,
                label,
                frame,
                ack_len,
                extra,
                100.0 * extra as f64 / f64::from(chunk)
            );
        }
    }
}

fn tcp_raw(total: usize) -> Duration {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let sink = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0;
        while got < total {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0);
            got += n;
        }
        s.write_all(b"k").unwrap();
    });
    let data = vec![7u8; total];
    let t = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    for c in data.chunks(DEFAULT_TCP_CHUNK as usize) {
        s.write_all(c).unwrap();
    }
    let mut k = [0u8; 1];
    s.read_exact(&mut k).unwrap();
    let d = t.elapsed();
    sink.join().unwrap();
    d
}

/// One upload session over TCP loopback (handshake included), with the
/// secure channel or, for the baseline, without.
fn tcp_upload(data: &[u8], chunk: u32, secure: bool) -> Duration {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let key = PreSharedKey::new([0x5A; 32]);
    let server_key = key.clone();
    let server = std::thread::spawn(move || {
        let mut h = MemoryHandler::new();
        let cfg = ServerConfig { key: Some(server_key), ..ServerConfig::default() };
        let (stream, _) = listener.accept().unwrap();
        if secure {
            serve_tcp(&mut h, &cfg, stream).unwrap();
        } else {
            stream.set_nodelay(true).unwrap();
            stream.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
            let r = stream.try_clone().unwrap();
            rba_protocol::server::serve_insecure_for_benchmarks(&mut h, &cfg, r, stream).unwrap();
        }
        h
    });
    let config = ClientConfig { preferred_chunk: chunk, ..ClientConfig::tcp(key) };
    let t = Instant::now();
    let mut c = if secure {
        Client::connect_tcp(addr, config).unwrap()
    } else {
        let s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        Client::connect_insecure_for_benchmarks(s, config).unwrap()
    };
    let info = c.upload(ArtifactKind::Model, "bench.onnx", data, |_| {}).unwrap();
    let d = t.elapsed();
    assert_eq!(info.size, data.len() as u64);
    drop(c);
    let h = server.join().unwrap();
    assert_eq!(h.get(ArtifactKind::Model, "bench.onnx"), Some(data));
    d
}

/// Median time from TCP connect to `Welcome`, with the secure handshake
/// or without (the same TCP connect and Hello/Welcome exchange).
fn connect_time(secure: bool, n: usize) -> Duration {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let key = PreSharedKey::new([0x5A; 32]);
    let server_key = key.clone();
    let server = std::thread::spawn(move || {
        let mut h = MemoryHandler::new();
        let cfg = ServerConfig {
            key: Some(server_key),
            identity: Some(Identity::generate().unwrap()),
            ..ServerConfig::default()
        };
        for _ in 0..n {
            let (stream, _) = listener.accept().unwrap();
            if secure {
                serve_tcp(&mut h, &cfg, stream).unwrap();
            } else {
                stream.set_nodelay(true).unwrap();
                stream.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
                let r = stream.try_clone().unwrap();
                rba_protocol::server::serve_insecure_for_benchmarks(&mut h, &cfg, r, stream).unwrap();
            }
        }
    });
    let mut times: Vec<Duration> = (0..n)
        .map(|_| {
            let config = ClientConfig::tcp(key.clone());
            let t = Instant::now();
            let c = if secure {
                Client::connect_tcp(addr, config).unwrap()
            } else {
                let s = TcpStream::connect(addr).unwrap();
                s.set_nodelay(true).unwrap();
                s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
                Client::connect_insecure_for_benchmarks(s, config).unwrap()
            };
            let d = t.elapsed();
            drop(c);
            d
        })
        .collect();
    server.join().unwrap();
    times.sort();
    times[n / 2]
}

fn upload() {
    let total = 25 * 1024 * 1024;
    let data: Vec<u8> = (0..total).map(|i| (i * 13 + i / 4096) as u8).collect();
    let raw = (0..3).map(|_| tcp_raw(total)).min().unwrap();
    let base = rate(total, raw);
    println!("upload of a 25 MiB model over TCP loopback (handshake, SHA-256 on both sides, per-chunk acks):");
    println!("  baseline raw TCP write {:>8.0} MB/s", base);
    for chunk in [64 * 1024, DEFAULT_TCP_CHUNK, 1024 * 1024 - 64] {
        // Interleaved rounds, best of 3 each: encrypted, then without the channel.
        let (mut enc, mut plain) = (Duration::MAX, Duration::MAX);
        for _ in 0..3 {
            enc = enc.min(tcp_upload(&data, chunk, true));
            plain = plain.min(tcp_upload(&data, chunk, false));
        }
        let (r, p) = (rate(total, enc), rate(total, plain));
        println!(
            "  encrypted upload, {:>4} KiB chunks {:>7.0} MB/s  ({:.3} x unencrypted {:.0} MB/s, {:.3} x raw TCP)",
            chunk / 1024,
            r,
            r / p,
            p,
            r / base
        );
        row(
            &format!("link: encrypted upload of a 25 MiB model over TCP loopback, {} KiB chunks, vs the same upload unencrypted", chunk / 1024),
            &format!("{r:.0} MB/s"),
            &format!("{p:.0} MB/s"),
            r / p,
        );
        row(
            &format!(
                "link: encrypted upload of a 25 MiB model over TCP loopback, {} KiB chunks, vs raw TCP",
                chunk / 1024
            ),
            &format!("{r:.0} MB/s"),
            &format!("{base:.0} MB/s"),
            r / base,
        );
    }
    let n = 41;
    let (secure, plain) = (connect_time(true, n), connect_time(false, n));
    println!(
        "  connect to Welcome over TCP loopback (median of {n}): {:.2} ms with the Noise handshake, {:.2} ms without",
        secure.as_secs_f64() * 1e3,
        plain.as_secs_f64() * 1e3
    );
    row(
        &format!("link: TCP connect to Welcome with the Noise_NXpsk2 handshake vs without (median of {n})"),
        &format!("{:.2} ms", secure.as_secs_f64() * 1e3),
        &format!("{:.2} ms", plain.as_secs_f64() * 1e3),
        secure.as_secs_f64() / plain.as_secs_f64(),
    );
}

fn main() {
    // `cargo test --benches` passes --bench-less args; run everything anyway, it is quick.
    codec();
    overhead();
    upload();
}
