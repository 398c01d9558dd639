//! Lower-case hex, how digests are written in files and messages.

use alloc::string::String;

/// `bytes` as lower-case hex, two digits per byte.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// `[u8; 32]` digests as hex strings in human-readable formats (JSON: the
/// history and metadata files, the host's reports) and as the plain 32
/// bytes in postcard (the wire), for `#[serde(with = "crate::hex::digest")]`.
pub mod digest {
    use core::fmt;

    use serde::{Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(d: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&super::hex(d))
        } else {
            d.serialize(s)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        if d.is_human_readable() {
            struct V;
            impl serde::de::Visitor<'_> for V {
                type Value = [u8; 32];
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("64 hex digits")
                }
                fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<[u8; 32], E> {
                    super::unhex32(v).ok_or_else(|| E::custom("expected 64 hex digits"))
                }
            }
            d.deserialize_str(V)
        } else {
            <[u8; 32] as serde::Deserialize>::deserialize(d)
        }
    }
}

/// 64 hex digits (either case) as 32 bytes.
pub fn unhex32(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (digit(b[2 * i])? << 4) | digit(b[2 * i + 1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_case_two_digits_per_byte() {
        assert_eq!(hex(&[]), "");
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        let d: [u8; 32] = core::array::from_fn(|i| (i * 7) as u8);
        assert_eq!(unhex32(&hex(&d)), Some(d));
        assert_eq!(unhex32(&hex(&d).to_uppercase()), Some(d));
        assert_eq!(unhex32("00"), None);
        assert_eq!(unhex32(&"g".repeat(64)), None);
    }
}
