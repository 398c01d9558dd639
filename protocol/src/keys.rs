//! The pre-shared key as the daemon and the host read it: a file's bytes or
//! an environment variable's value, surrounding whitespace trimmed (so
//! `echo KEY > file` works), at least [`MIN_KEY_LEN`] bytes.

use std::path::Path;

use crate::auth::PreSharedKey;

/// Shortest key accepted: 16 bytes resist guessing over a network.
pub const MIN_KEY_LEN: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("pre-shared key: cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("pre-shared key: the key has {len} bytes; use at least {MIN_KEY_LEN} (e.g. 32 random hex digits)")]
    TooShort { len: usize },
}

/// Reads the key from `file` if given, else from `env_value`; `None` when
/// neither is set. A key file others can read is used, with a warning
/// through `log` (refusing would break existing setups).
pub fn load_key(file: Option<&Path>, env_value: Option<String>) -> Result<Option<PreSharedKey>, KeyError> {
    let bytes = match (file, env_value) {
        (Some(f), _) => {
            let raw = std::fs::read(f)
                .map_err(|e| KeyError::Read { path: f.display().to_string(), reason: e.to_string() })?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                if std::fs::metadata(f).is_ok_and(|m| m.permissions().mode() & 0o077 != 0) {
                    log::warn!("key file {} is readable by others (chmod 600 it)", f.display());
                }
            }
            raw
        }
        (None, Some(v)) => v.into_bytes(),
        (None, None) => return Ok(None),
    };
    let key = bytes.trim_ascii();
    if key.len() < MIN_KEY_LEN {
        return Err(KeyError::TooShort { len: key.len() });
    }
    Ok(Some(PreSharedKey::new(key.to_vec())))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert!(load_key(None, None).unwrap().is_none());
        assert!(load_key(None, Some("0123456789abcdef".into())).unwrap().is_some());
        let e = load_key(None, Some("short\n".into())).unwrap_err();
        assert!(e.to_string().contains("5 bytes"), "{e}");
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("key");
        std::fs::write(&f, "0123456789abcdef0123\n").unwrap();
        assert!(load_key(Some(&f), None).unwrap().is_some());
        let e = load_key(Some(&d.path().join("missing")), None).unwrap_err();
        assert!(e.to_string().contains("cannot read"), "{e}");
    }
}
