//! Arbitrary payloads (past the CRC) through the message decoder.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = rba_protocol::decode_envelope(data) {
        // Accepted payloads are canonical: encoding gives the same bytes back.
        assert_eq!(postcard::to_allocvec(&env).ok().as_deref(), Some(data));
    }
});
