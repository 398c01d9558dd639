//! Every message survives encode -> frame -> decode unchanged.

#![allow(clippy::unwrap_used)] // tests may panic

mod strategies;

use proptest::prelude::*;
use rba_protocol::*;
use strategies::envelope;

fn decode_all(bytes: &[u8], max_frame: usize) -> Vec<Result<Envelope, FrameError>> {
    let mut out = Vec::new();
    let mut d = FrameDecoder::new(max_frame);
    d.feed(bytes, |r| out.push(r));
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_message_round_trips(env in envelope()) {
        let frame = encode_frame(&env, DEFAULT_MAX_FRAME).unwrap();
        prop_assert_eq!(frame.last(), Some(&0));
        prop_assert!(!frame[..frame.len() - 1].contains(&0), "COBS body must be zero-free");
        prop_assert_eq!(decode_all(&frame, DEFAULT_MAX_FRAME), vec![Ok(env)]);
    }

    #[test]
    fn frames_split_anywhere_still_decode(a in envelope(), b in envelope(), cut in any::<prop::sample::Index>()) {
        let mut bytes = encode_frame(&a, DEFAULT_MAX_FRAME).unwrap();
        bytes.extend(encode_frame(&b, DEFAULT_MAX_FRAME).unwrap());
        let cut = cut.index(bytes.len() + 1);
        let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME);
        let mut out = Vec::new();
        d.feed(&bytes[..cut], |r| out.push(r));
        d.feed(&bytes[cut..], |r| out.push(r));
        prop_assert_eq!(out, vec![Ok(a), Ok(b)]);
    }

    #[test]
    fn eval_bundles_round_trip(n in 1u64..4, per in 1u64..6, labels in any::<bool>(), expected in any::<bool>(), seed in any::<u32>()) {
        let vals: Vec<f32> = (0..n * per).map(|i| (i as f32) * 0.5 - seed as f32).collect();
        let b = EvalBundle {
            inputs: vec![TensorF32::from_f32(Some("input".into()), vec![n, per], &vals)],
            labels: labels.then(|| (0..n as u32).collect()),
            expected: expected.then(|| vec![TensorF32::from_f32(None, vec![n, 1], &vals[..n as usize])]),
        };
        let bytes = b.encode().unwrap();
        prop_assert_eq!(EvalBundle::decode(&bytes).unwrap(), b);
    }
}

#[test]
fn garbage_before_a_frame_is_skipped() {
    let env = Envelope { id: 7, msg: Message::Request(Request::Ping { nonce: 42 }) };
    let mut bytes = b"\x13\x37line noise".to_vec();
    bytes.push(0);
    bytes.extend(encode_frame(&env, DEFAULT_MAX_FRAME).unwrap());
    let out = decode_all(&bytes, DEFAULT_MAX_FRAME);
    assert_eq!(out.len(), 2);
    assert!(out[0].is_err());
    assert_eq!(out[1], Ok(env));
}

#[test]
fn corrupted_frame_is_dropped_and_the_next_one_decodes() {
    let a = Envelope { id: 1, msg: Message::Request(Request::Ping { nonce: 1 }) };
    let b = Envelope { id: 2, msg: Message::Request(Request::Ping { nonce: 2 }) };
    let mut fa = encode_frame(&a, DEFAULT_MAX_FRAME).unwrap();
    fa[2] ^= 0x10;
    fa.extend(encode_frame(&b, DEFAULT_MAX_FRAME).unwrap());
    let out = decode_all(&fa, DEFAULT_MAX_FRAME);
    assert_eq!(out.len(), 2);
    assert!(matches!(out[0], Err(FrameError::Crc | FrameError::Cobs)), "{:?}", out[0]);
    assert_eq!(out[1], Ok(b));
    // A flipped payload bit with intact COBS structure is a CRC error.
    let mut body = postcard::to_allocvec(&a).unwrap();
    body.extend(frame::CRC32.checksum(&body).to_le_bytes());
    body[3] ^= 0x02; // nonce 1 -> 3
    let mut wire = cobs::encode_vec(&body);
    wire.push(0);
    assert_eq!(decode_all(&wire, DEFAULT_MAX_FRAME), vec![Err(FrameError::Crc)]);
}

#[test]
fn oversized_frames_are_refused_both_ways() {
    let big = Envelope {
        id: 1,
        msg: Message::Request(Request::UploadChunk(UploadChunk { offset: 0, data: Bytes(vec![1; 5000]) })),
    };
    assert_eq!(encode_frame(&big, 4096), Err(FrameError::TooLarge { max: 4096 }));
    let frame = encode_frame(&big, DEFAULT_MAX_FRAME).unwrap();
    let small = Envelope { id: 2, msg: Message::Request(Request::DeviceInfo) };
    let mut bytes = frame.clone();
    bytes.extend(encode_frame(&small, 4096).unwrap());
    let mut d = FrameDecoder::new(4096);
    let mut out = Vec::new();
    d.feed(&bytes, |r| out.push(r));
    assert_eq!(out, vec![Err(FrameError::TooLarge { max: 4096 }), Ok(small)]);
    assert!(d.buffer_capacity() <= 4096 + 4096 / 254 + 1);
}

#[test]
fn endless_bytes_without_delimiter_do_not_grow_the_buffer() {
    let mut d = FrameDecoder::new(2048);
    let mut errors = 0;
    for _ in 0..1000 {
        d.feed(&[0xAB; 4096], |r| {
            assert_eq!(r, Err(FrameError::TooLarge { max: 2048 }));
            errors += 1;
        });
        assert!(d.buffer_capacity() <= 2048 + 2048 / 254 + 1, "{}", d.buffer_capacity());
    }
    // One report per oversized frame, not per read.
    assert_eq!(errors, 1);
    let env = Envelope { id: 3, msg: Message::Request(Request::DeviceInfo) };
    let mut bytes = vec![0];
    bytes.extend(encode_frame(&env, 2048).unwrap());
    let mut got = Vec::new();
    d.feed(&bytes, |r| got.push(r));
    assert_eq!(got, vec![Ok(env)]);
}

#[test]
fn huge_announced_length_is_rejected_without_allocating() {
    // A chunk claiming 2^62 bytes: postcard checks the length against the
    // bytes present before allocating.
    let mut payload = vec![5u8, 0, 4, 0]; // id 5, Request, UploadChunk, offset 0
    payload.extend([0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40]); // varint 2^62
    payload.extend([1, 2, 3]);
    assert!(matches!(decode_envelope(&payload), Err(FrameError::Decode(_))));
}

#[test]
fn trailing_bytes_are_rejected() {
    let env = Envelope { id: 1, msg: Message::Request(Request::UploadAbort) };
    let mut payload = postcard::to_allocvec(&env).unwrap();
    assert_eq!(decode_envelope(&payload), Ok(env));
    payload.push(0);
    assert_eq!(decode_envelope(&payload), Err(FrameError::Trailing));
}

/// The hex bytes PROTOCOL.md shows on the (first) line starting with
/// `label` followed by hex bytes.
fn protocol_md_bytes(label: &str) -> Vec<u8> {
    let doc = include_str!("../PROTOCOL.md");
    let hex = |line: &str| -> Vec<u8> {
        line[label.len()..]
            .split_whitespace()
            .map_while(|w| (w.len() == 2).then(|| u8::from_str_radix(w, 16).ok()).flatten())
            .collect()
    };
    doc.lines()
        .filter(|l| l.starts_with(label))
        .map(hex)
        .find(|b| !b.is_empty())
        .unwrap_or_else(|| panic!("PROTOCOL.md has no line starting with {label:?} and hex bytes"))
}

#[test]
fn wire_bytes_match_protocol_md_example() {
    // The worked example in PROTOCOL.md: Ping { nonce: 300 } with id 1.
    let env = Envelope { id: 1, msg: Message::Request(Request::Ping { nonce: 300 }) };
    let payload = postcard::to_allocvec(&env).unwrap();
    assert_eq!(payload, protocol_md_bytes("payload "));
    let crc = frame::CRC32.checksum(&payload).to_le_bytes();
    assert_eq!(crc.to_vec(), protocol_md_bytes("crc (LE) "));
    let frame = encode_frame(&env, DEFAULT_MAX_FRAME).unwrap();
    let mut body = payload.clone();
    body.extend(crc);
    let mut expected = cobs::encode_vec(&body);
    expected.push(0);
    assert_eq!(frame, expected);
    assert_eq!(frame, protocol_md_bytes("COBS + 0x00 "));
    // And the preambles of section 4.
    use rba_protocol::secure::{preamble, Mode};
    assert_eq!(preamble(Mode::Psk).to_vec(), protocol_md_bytes("preamble, keyed "));
    assert_eq!(preamble(Mode::Keyless).to_vec(), protocol_md_bytes("preamble, keyless "));
    assert_eq!(rba_protocol::secure::legacy_version_mismatch(1, 2, 1), protocol_md_bytes("v1 VersionMismatch "));
}
