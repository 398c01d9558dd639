//! Pre-shared-key challenge-response (HMAC-SHA256), both directions.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Domain-separation labels: a client proof can never pass as a server proof.
pub const CLIENT_LABEL: &[u8] = b"rba-auth-v1 client";
pub const SERVER_LABEL: &[u8] = b"rba-auth-v1 server";

/// A pre-shared key (any length; 32 random bytes recommended).
#[derive(Clone)]
pub struct PreSharedKey(alloc::vec::Vec<u8>);

impl core::fmt::Debug for PreSharedKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("PreSharedKey(..)")
    }
}

impl PreSharedKey {
    pub fn new(key: impl Into<alloc::vec::Vec<u8>>) -> Self {
        PreSharedKey(key.into())
    }

    /// HMAC over the parts, keyed with the key block HMAC itself would
    /// derive (zero-padded, or hashed when longer than a block), which keeps
    /// key setup infallible.
    fn hmac(&self, parts: &[&[u8]]) -> HmacSha256 {
        let mut block = [0u8; 64];
        if self.0.len() > block.len() {
            use sha2::Digest;
            block[..32].copy_from_slice(&Sha256::digest(&self.0));
        } else {
            block[..self.0.len()].copy_from_slice(&self.0);
        }
        let mut m = <HmacSha256 as hmac::digest::KeyInit>::new(&block.into());
        for p in parts {
            m.update(p);
        }
        m
    }

    fn mac(&self, label: &[u8], client_nonce: &[u8; 32], server_nonce: &[u8; 32]) -> HmacSha256 {
        self.hmac(&[label, client_nonce, server_nonce])
    }

    /// HMAC-SHA256(key, label || client_nonce || server_nonce).
    pub fn proof(&self, server_side: bool, client_nonce: &[u8; 32], server_nonce: &[u8; 32]) -> [u8; 32] {
        let label = if server_side { SERVER_LABEL } else { CLIENT_LABEL };
        self.mac(label, client_nonce, server_nonce).finalize().into_bytes().into()
    }

    /// Constant-time check of a peer's proof.
    pub fn verify(&self, server_side: bool, client_nonce: &[u8; 32], server_nonce: &[u8; 32], mac: &[u8; 32]) -> bool {
        let label = if server_side { SERVER_LABEL } else { CLIENT_LABEL };
        self.mac(label, client_nonce, server_nonce).verify_slice(mac).is_ok()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn proofs() {
        let k = PreSharedKey::new(*b"secret");
        let (c, s) = ([1u8; 32], [2u8; 32]);
        let p = k.proof(false, &c, &s);
        assert!(k.verify(false, &c, &s, &p));
        assert!(!k.verify(true, &c, &s, &p), "client proof must not pass as server proof");
        assert!(!PreSharedKey::new(*b"Secret").verify(false, &c, &s, &p));
        assert!(!k.verify(false, &s, &c, &p));
    }

    #[test]
    fn rfc4231_case_2() {
        // HMAC-SHA256(key "Jefe", "what do ya want for nothing?").
        let out: [u8; 32] =
            PreSharedKey::new(*b"Jefe").hmac(&[b"what do ya want for nothing?"]).finalize().into_bytes().into();
        assert_eq!(out[..4], [0x5b, 0xdc, 0xc1, 0x46]);
        // RFC 4231 case 6: a 131-byte key is hashed first.
        let out: [u8; 32] = PreSharedKey::new([0xaa; 131])
            .hmac(&[b"Test Using Larger Than Block-Size Key - Hash Key First"])
            .finalize()
            .into_bytes()
            .into();
        assert_eq!(out[..4], [0x60, 0xe4, 0x31, 0x59]);
    }
}
