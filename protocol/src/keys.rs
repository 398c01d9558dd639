//! Key files as the daemon and the host read them.
//!
//! - The pre-shared key: a file (or an environment variable) holding
//!   exactly 64 hex digits (32 bytes), surrounding whitespace ignored;
//!   `rba-device keygen --out FILE` writes one. A key file that its group
//!   or others may read is refused.
//! - A device's identity: `identity.key` in its store directory, the
//!   private X25519 key as 64 hex digits, created (mode 0600) at first
//!   start, refused when its group or others may read it.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::auth::{KeyFormatError, PreSharedKey, KEY_LEN};
use crate::secure::Identity;

/// The identity file in a device's store directory.
pub const IDENTITY_FILE: &str = "identity.key";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("pre-shared key: cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("pre-shared key in {source_name}: {error}; make one with `rba-device keygen --out FILE`")]
    Format { source_name: String, error: KeyFormatError },
    #[error("{what} {path} is readable by its group or others (mode {mode:04o}): run `chmod 600 {path}`")]
    Permissions { what: &'static str, path: String, mode: u32 },
    #[error("{path} already exists: refusing to overwrite a key (remove it first if you mean to replace it)")]
    Exists { path: String },
    #[error("cannot write {path}: {reason}")]
    Write { path: String, reason: String },
    #[error("device identity {path}: {reason}")]
    Identity { path: String, reason: String },
}

/// Refuses a file that its group or others may read (unix).
pub fn check_private(what: &'static str, path: &Path) -> Result<(), KeyError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path)
            .map_err(|e| KeyError::Read { path: path.display().to_string(), reason: e.to_string() })?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions { what, path: path.display().to_string(), mode });
        }
    }
    #[cfg(not(unix))]
    let _ = (what, path);
    Ok(())
}

/// Reads the key from `file` if given, else from `env_value` (whose name,
/// `env_name`, appears in messages); `None` when neither is set.
pub fn load_key(
    file: Option<&Path>,
    env_name: &str,
    env_value: Option<String>,
) -> Result<Option<PreSharedKey>, KeyError> {
    let (bytes, source_name) = match (file, env_value) {
        (Some(f), _) => {
            let raw = std::fs::read(f)
                .map_err(|e| KeyError::Read { path: f.display().to_string(), reason: e.to_string() })?;
            check_private("key file", f)?;
            (raw, f.display().to_string())
        }
        (None, Some(v)) => (v.into_bytes(), format!("${env_name}")),
        (None, None) => return Ok(None),
    };
    PreSharedKey::from_hex(&bytes).map(Some).map_err(|error| KeyError::Format { source_name, error })
}

/// Creates `path` for writing with mode 0600; fails if it exists.
fn create_private(path: &Path) -> Result<std::fs::File, KeyError> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            KeyError::Exists { path: path.display().to_string() }
        } else {
            KeyError::Write { path: path.display().to_string(), reason: e.to_string() }
        }
    })
}

fn write_hex_file(path: &Path, bytes: &[u8; KEY_LEN]) -> Result<(), KeyError> {
    let mut f = create_private(path)?;
    let text = format!("{}\n", crate::hex(bytes));
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| KeyError::Write { path: path.display().to_string(), reason: e.to_string() })
}

/// Writes a fresh random pre-shared key to `path` (64 hex digits and a
/// newline, mode 0600); refuses to overwrite an existing file.
pub fn write_new_key(path: &Path) -> Result<(), KeyError> {
    let mut key = [0u8; KEY_LEN];
    getrandom::fill(&mut key)
        .map_err(|e| KeyError::Write { path: path.display().to_string(), reason: format!("no randomness: {e}") })?;
    write_hex_file(path, &key)
}

/// Reads a device identity file (refused if group/other-readable).
pub fn read_identity(path: &Path) -> Result<Identity, KeyError> {
    let ident = |reason: String| KeyError::Identity { path: path.display().to_string(), reason };
    let raw = std::fs::read(path).map_err(|e| ident(e.to_string()))?;
    check_private("device identity", path)?;
    let key = PreSharedKey::from_hex(&raw).map_err(|e| ident(e.to_string()))?;
    Identity::from_private(key.bytes()).map_err(|e| ident(e.to_string()))
}

/// The identity file of the store in `dir`.
pub fn identity_path(dir: &Path) -> PathBuf {
    dir.join(IDENTITY_FILE)
}

/// The device's identity from `dir/identity.key`, created (mode 0600)
/// when missing. Returns it and whether it was created.
pub fn load_or_create_identity(dir: &Path) -> Result<(Identity, bool), KeyError> {
    let path = identity_path(dir);
    if path.exists() {
        return read_identity(&path).map(|i| (i, false));
    }
    let ident = |reason: String| KeyError::Identity { path: path.display().to_string(), reason };
    std::fs::create_dir_all(dir).map_err(|e| ident(e.to_string()))?;
    let id = Identity::generate().map_err(|e| ident(e.to_string()))?;
    // Written under a temporary name and linked into place: a crash never
    // leaves a half-written identity, and two starts cannot both create one.
    let tmp = dir.join(format!(".{IDENTITY_FILE}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    write_hex_file(&tmp, id.private())?;
    let linked = std::fs::hard_link(&tmp, &path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok((id, true)),
        // Another start won the race: use its identity.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_identity(&path).map(|i| (i, false)),
        Err(e) => Err(ident(e.to_string())),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const HEX: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[cfg(unix)]
    fn chmod(p: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn keys_are_exactly_32_bytes_of_hex() {
        assert!(load_key(None, "RBA_KEY", None).unwrap().is_none());
        assert!(load_key(None, "RBA_KEY", Some(format!("  {HEX}\n"))).unwrap().is_some());
        let e = load_key(None, "RBA_KEY", Some("0123456789abcdef0123456789abcdef\n".into())).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("$RBA_KEY") && msg.contains("32 characters") && msg.contains("keygen"), "{msg}");
        let e = load_key(None, "RBA_KEY", Some(format!("{}xy", &HEX[..62]))).unwrap_err();
        assert!(e.to_string().contains("not a hex digit"), "{e}");
        let d = tempfile::tempdir().unwrap();
        let e = load_key(Some(&d.path().join("missing")), "RBA_KEY", None).unwrap_err();
        assert!(e.to_string().contains("cannot read"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn key_files_others_can_read_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("key");
        std::fs::write(&f, format!("{HEX}\n")).unwrap();
        chmod(&f, 0o644);
        let e = load_key(Some(&f), "RBA_KEY", None).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(&format!("chmod 600 {}", f.display())) && msg.contains("0644"), "{msg}");
        chmod(&f, 0o640);
        assert!(matches!(load_key(Some(&f), "RBA_KEY", None), Err(KeyError::Permissions { .. })));
        chmod(&f, 0o600);
        assert_eq!(
            load_key(Some(&f), "RBA_KEY", None).unwrap().unwrap(),
            PreSharedKey::from_hex(HEX.as_bytes()).unwrap()
        );
        chmod(&f, 0o400);
        assert!(load_key(Some(&f), "RBA_KEY", None).unwrap().is_some());
    }

    #[cfg(unix)]
    #[test]
    fn keygen_writes_0600_and_never_overwrites() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("board.key");
        write_new_key(&f).unwrap();
        let text = std::fs::read_to_string(&f).unwrap();
        assert_eq!(text.len(), 65);
        assert!(text.ends_with('\n') && text[..64].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(std::fs::metadata(&f).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(load_key(Some(&f), "RBA_KEY", None).unwrap().is_some());
        assert!(matches!(write_new_key(&f), Err(KeyError::Exists { .. })));
        assert_eq!(std::fs::read_to_string(&f).unwrap(), text);
        let g = d.path().join("other.key");
        write_new_key(&g).unwrap();
        assert_ne!(std::fs::read_to_string(&g).unwrap(), text, "keys are random");
    }

    #[cfg(unix)]
    #[test]
    fn identities_are_created_once_and_kept_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("store");
        let (a, created) = load_or_create_identity(&dir).unwrap();
        assert!(created);
        let path = identity_path(&dir);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let (b, created) = load_or_create_identity(&dir).unwrap();
        assert!(!created);
        assert_eq!(a.public(), b.public());
        assert_eq!(read_identity(&path).unwrap().fingerprint(), a.fingerprint());
        chmod(&path, 0o644);
        let e = load_or_create_identity(&dir).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no temporary file left");
    }
}
