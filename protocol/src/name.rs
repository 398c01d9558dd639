//! Artifact names double as file names on the board, so they are restricted
//! to a safe alphabet: no '/', no "..", no hidden files.

use crate::error::RemoteError;
use alloc::string::ToString;

pub const MAX_NAME_LEN: usize = 64;

/// `[A-Za-z0-9._-]{1,64}`, not starting with '.'.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

pub fn validate_name(name: &str) -> Result<(), RemoteError> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(RemoteError::InvalidName(name.to_string()))
    }
}

/// An application name (a directory on the board, `apps/<app>`):
/// `[A-Za-z0-9_-]{1,64}`, starting with a letter or a digit.
pub fn is_valid_app_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

pub fn validate_app_name(name: &str) -> Result<(), RemoteError> {
    if is_valid_app_name(name) {
        Ok(())
    } else {
        Err(RemoteError::BadRequest(alloc::format!(
            "invalid application name {name:?}: use [A-Za-z0-9_-]{{1,64}}, starting with a letter or a digit"
        )))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "resnet18-slim.onnx", "A_b.c-d", &"x".repeat(64)] {
            assert!(is_valid_name(ok), "{ok}");
        }
        for bad in ["", ".hidden", "..", "../x", "a/b", "a\\b", "é", "a b", "a\0", &"x".repeat(65)] {
            assert!(!is_valid_name(bad), "{bad}");
        }
        assert_eq!(validate_name("a/b"), Err(RemoteError::InvalidName("a/b".into())));
        for ok in ["inspect", "line-3_cam", "0", &"a".repeat(64)] {
            assert!(is_valid_app_name(ok), "{ok}");
        }
        for bad in ["", "-x", "_x", "a.b", "..", "a/b", "a b", "é", &"a".repeat(65)] {
            assert!(!is_valid_app_name(bad), "{bad}");
        }
    }
}
