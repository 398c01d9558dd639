//! In-suite fuzzing: >= 100000 random and mutated frames through the frame
//! decoder and the message decoder. Nothing may panic, the decoder buffer
//! must stay within the frame limit, and whatever decodes must re-encode to
//! the same message.

#![allow(clippy::unwrap_used)] // tests may panic

mod strategies;

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rba_protocol::frame::{max_encoded_len, CRC32};
use rba_protocol::*;

const CASES: u32 = 1000;
const FRAMES_PER_CASE: usize = 100;

fn mutate(rng: &mut StdRng, data: &mut Vec<u8>) {
    for _ in 0..rng.random_range(1..4) {
        let len = data.len().max(1);
        match rng.random_range(0..9) {
            0 => {
                let i = rng.random_range(0..len);
                if let Some(b) = data.get_mut(i) {
                    *b ^= 1 << rng.random_range(0..8);
                }
            }
            1 => {
                let i = rng.random_range(0..=data.len());
                data.insert(i, rng.random());
            }
            2 if !data.is_empty() => {
                let i = rng.random_range(0..data.len());
                data.remove(i);
            }
            3 => data.truncate(rng.random_range(0..=data.len())),
            4 if !data.is_empty() => {
                // Duplicate a run of bytes.
                let a = rng.random_range(0..data.len());
                let b = rng.random_range(a..=data.len().min(a + 32));
                let run = data[a..b].to_vec();
                data.splice(b..b, run);
            }
            5 => {
                let i = rng.random_range(0..=data.len());
                data.insert(i, 0);
            }
            6 => {
                // A huge varint, as a hostile length prefix.
                let i = rng.random_range(0..=data.len());
                data.splice(i..i, [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
            }
            7 => {
                let n = rng.random_range(0..64);
                data.extend((0..n).map(|_| rng.random::<u8>()));
            }
            _ => {
                let i = rng.random_range(0..len);
                if let Some(b) = data.get_mut(i) {
                    *b = rng.random();
                }
            }
        }
    }
}

/// Frames a payload with a correct CRC, so a mutation reaches postcard.
fn frame_payload(payload: &[u8]) -> Vec<u8> {
    let mut body = payload.to_vec();
    body.extend(CRC32.checksum(payload).to_le_bytes());
    let mut out = cobs::encode_vec(&body);
    out.push(0);
    out
}

fn check_decoded(r: Result<Envelope, FrameError>, limit: usize) -> Result<(), TestCaseError> {
    if let Ok(env) = r {
        // Anything accepted must re-encode to a frame that decodes and
        // re-encodes to the same bytes. (Bytes, not values: a NaN statistic
        // is a valid payload and never equals itself.)
        let again = encode_frame(&env, DEFAULT_MAX_FRAME).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME);
        let mut back = None;
        d.feed(&again, |r| back = Some(r));
        let Some(Ok(back)) = back else {
            return Err(TestCaseError::fail(format!("re-encoded frame did not decode: {back:?}")));
        };
        let twice = encode_frame(&back, DEFAULT_MAX_FRAME).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(twice, again.clone());
        prop_assert!(again.len() <= max_encoded_len(limit.max(DEFAULT_MAX_FRAME)) + 1);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_and_mutated_frames(seed in any::<u64>(), envs in prop::collection::vec(strategies::envelope(), 1..4)) {
        let mut rng = StdRng::seed_from_u64(seed);
        let limit = [64usize, 300, 4096, DEFAULT_MAX_FRAME][rng.random_range(0..4)];
        let mut decoder = FrameDecoder::new(limit);
        let payloads: Vec<Vec<u8>> = envs.iter().map(|e| postcard::to_allocvec(e).unwrap()).collect();
        for _ in 0..FRAMES_PER_CASE {
            let pick = &payloads[rng.random_range(0..payloads.len())];
            let bytes = match rng.random_range(0..4) {
                // Mutated wire bytes: mostly caught by COBS/CRC.
                0 => {
                    let mut f = frame_payload(pick);
                    mutate(&mut rng, &mut f);
                    f
                }
                // Mutated payload with a valid CRC: exercises postcard.
                1 => {
                    let mut p = pick.clone();
                    mutate(&mut rng, &mut p);
                    check_decoded(decode_envelope(&p), DEFAULT_MAX_FRAME)?;
                    frame_payload(&p)
                }
                // Pure noise, with and without delimiters.
                2 => (0..rng.random_range(0..2048)).map(|_| rng.random::<u8>()).collect(),
                _ => (0..rng.random_range(0..(3 * limit).min(40_000))).map(|_| rng.random_range(1..=255u8)).collect(),
            };
            let mut results = Vec::new();
            // Feed in random pieces, like reads from a link.
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                let n = rng.random_range(1..=rest.len());
                decoder.feed(&rest[..n], |r| results.push(r));
                rest = &rest[n..];
                prop_assert!(decoder.buffer_capacity() <= max_encoded_len(limit), "buffer {} > limit {}", decoder.buffer_capacity(), limit);
            }
            for r in results {
                check_decoded(r, limit)?;
            }
        }
        // After any amount of abuse, a clean frame still gets through.
        let env = Envelope { id: 9, msg: Message::Request(Request::Ping { nonce: seed }) };
        let mut clean = vec![0];
        clean.extend(encode_frame(&env, limit).unwrap());
        let mut last = None;
        decoder.feed(&clean, |r| last = Some(r));
        prop_assert_eq!(last, Some(Ok(env)));
    }
}

#[test]
fn frame_count_meets_the_issue_minimum() {
    assert!(CASES as usize * FRAMES_PER_CASE >= 100_000);
}
