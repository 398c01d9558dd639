//! Arbitrary payloads (past the CRC) through the message decoder.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = rba_protocol::decode_envelope(data) {
        // Accepted payloads re-encode to a payload that decodes the same.
        let bytes = postcard::to_allocvec(&env).expect("re-encode");
        assert_eq!(rba_protocol::decode_envelope(&bytes).ok(), Some(env));
    }
});
