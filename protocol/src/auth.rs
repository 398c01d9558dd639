//! The pre-shared key: exactly 32 random bytes, written as 64 hex digits.
//! It authenticates the host to the device inside the Noise handshake
//! (`Noise_NXpsk2`, see `secure` and PROTOCOL.md section 4); it is never
//! sent, and no proof derived from it alone travels on the wire.

/// Bytes of a pre-shared key.
pub const KEY_LEN: usize = 32;

/// A pre-shared key (32 bytes, e.g. from `rba-device keygen`).
#[derive(Clone, PartialEq, Eq)]
pub struct PreSharedKey([u8; KEY_LEN]);

impl core::fmt::Debug for PreSharedKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("PreSharedKey(..)")
    }
}

/// Why a text is not a key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    #[error("the key has {len} characters; a key is exactly 64 hex digits (32 bytes)")]
    Length { len: usize },
    #[error("the key has a character that is not a hex digit at position {at}; a key is exactly 64 hex digits")]
    NotHex { at: usize },
}

impl PreSharedKey {
    pub const fn new(key: [u8; KEY_LEN]) -> Self {
        PreSharedKey(key)
    }

    /// 64 hex digits (either case), surrounding ASCII whitespace ignored.
    pub fn from_hex(text: &[u8]) -> Result<Self, KeyFormatError> {
        let t = text.trim_ascii();
        if t.len() != 2 * KEY_LEN {
            return Err(KeyFormatError::Length { len: t.len() });
        }
        let nibble = |i: usize| -> Result<u8, KeyFormatError> {
            let c = t[i];
            match c {
                b'0'..=b'9' => Ok(c - b'0'),
                b'a'..=b'f' => Ok(c - b'a' + 10),
                b'A'..=b'F' => Ok(c - b'A' + 10),
                _ => Err(KeyFormatError::NotHex { at: i }),
            }
        };
        let mut key = [0u8; KEY_LEN];
        for (i, b) in key.iter_mut().enumerate() {
            *b = (nibble(2 * i)? << 4) | nibble(2 * i + 1)?;
        }
        Ok(PreSharedKey(key))
    }

    /// The key's bytes (for the Noise handshake).
    pub fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hex_keys() {
        let hex = b"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1F\n";
        let k = PreSharedKey::from_hex(hex).unwrap();
        assert_eq!(k.bytes()[1], 1);
        assert_eq!(k.bytes()[31], 0x1f);
        assert_eq!(PreSharedKey::from_hex(&hex[..62]), Err(KeyFormatError::Length { len: 62 }));
        let mut bad = *hex;
        bad[5] = b'g';
        assert_eq!(PreSharedKey::from_hex(&bad), Err(KeyFormatError::NotHex { at: 5 }));
        assert_eq!(format!("{k:?}"), "PreSharedKey(..)");
    }
}
