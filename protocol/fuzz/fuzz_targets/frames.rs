//! Arbitrary link bytes, fed in arbitrary pieces, through the frame decoder.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rba_protocol::frame::max_encoded_len;
use rba_protocol::FrameDecoder;

fuzz_target!(|data: &[u8]| {
    // First byte picks the frame limit, second the read size.
    let (limit, step, rest) = match data {
        [a, b, rest @ ..] => (64 + usize::from(*a) * 64, usize::from(*b).max(1), rest),
        _ => return,
    };
    let mut d = FrameDecoder::new(limit);
    for piece in rest.chunks(step) {
        d.feed(piece, |r| {
            if let Ok(env) = r {
                // Whatever decodes re-encodes to the same message.
                let frame = rba_protocol::encode_frame(&env, usize::MAX / 2).expect("re-encode");
                let mut again = None;
                FrameDecoder::new(usize::MAX / 2).feed(&frame, |r| again = Some(r));
                assert_eq!(again, Some(Ok(env)));
            }
        });
        assert!(d.buffer_capacity() <= max_encoded_len(limit));
    }
});
