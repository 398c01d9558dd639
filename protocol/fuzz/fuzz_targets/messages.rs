//! Arbitrary payloads (past the CRC) through the message decoder.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = rba_protocol::decode_envelope(data) {
        // Accepted payloads re-encode to bytes that decode and re-encode to
        // the same bytes. (Bytes, not values: a NaN statistic is a valid
        // payload and never equals itself.)
        let bytes = postcard::to_allocvec(&env).expect("re-encode");
        let again = rba_protocol::decode_envelope(&bytes).expect("re-encoded payload decodes");
        assert_eq!(postcard::to_allocvec(&again).expect("re-encode"), bytes);
    }
});
