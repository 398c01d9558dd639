//! The one place that decides what a check does when this machine lacks
//! something outside the workspace: python3 with onnxruntime, the aarch64
//! Rust target, `aarch64-linux-gnu-gcc` or `qemu-aarch64`.
//!
//! On a newcomer's machine the check skips and says why and how to install
//! what is missing; with `RBA_REQUIRE_EXTERNAL=1` (`.ci/run` sets it) it
//! fails with the same message instead, so CI cannot pass by skipping.
//!
//! ```no_run
//! if !rba_testkit::external::require("the onnxruntime cross-check", rba_testkit::onnxruntime::missing()) {
//!     return;
//! }
//! ```

use std::io::Write;

/// The environment variable that turns skips into failures.
pub const STRICT_VAR: &str = "RBA_REQUIRE_EXTERNAL";

/// What a check does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Everything it needs is here.
    Run,
    /// Something is missing: skip, printing this.
    Skip(String),
    /// Something is missing and the environment demands it: panic with this.
    Fail(String),
}

/// The decision for check `what`, given what is `missing` (why, and how to
/// install it: `"qemu-aarch64 not found (apt-get install -y qemu-user)"`;
/// `None` when nothing is) and the value of [`STRICT_VAR`] (`None` when
/// unset). Unset, empty or `0` skips; `1` fails; any other value fails too,
/// naming the value, so a misspelt CI setting cannot quietly skip.
pub fn decide(what: &str, missing: Option<&str>, strict: Option<&str>) -> Decision {
    let Some(why) = missing else { return Decision::Run };
    let msg = format!("{what}: skipped: {why}");
    match strict.map(str::trim) {
        None | Some("" | "0") => Decision::Skip(msg),
        Some("1") => Decision::Fail(format!("{msg}; {STRICT_VAR}=1 makes this a failure")),
        Some(other) => Decision::Fail(format!("{msg}; {STRICT_VAR}={other:?} (expected 0 or 1) makes this a failure")),
    }
}

/// True when check `what` can run. Otherwise prints `<what>: skipped: <why>`
/// past the test harness's capture (so CI logs show it) and returns false,
/// or panics with that message when `RBA_REQUIRE_EXTERNAL=1`.
#[track_caller]
pub fn require(what: &str, missing: Option<String>) -> bool {
    let strict = std::env::var(STRICT_VAR).ok();
    match decide(what, missing.as_deref(), strict.as_deref()) {
        Decision::Run => true,
        Decision::Skip(msg) => {
            let _ = writeln!(std::io::stderr().lock(), "{msg}");
            false
        }
        Decision::Fail(msg) => panic!("{msg}"),
    }
}

/// True if `cmd` is an executable on `PATH`.
pub fn on_path(cmd: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            let file = dir.join(cmd);
            file.metadata().is_ok_and(|m| m.is_file() && is_executable(&m))
        })
    })
}

#[cfg(unix)]
fn is_executable(m: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    m.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
fn is_executable(_: &std::fs::Metadata) -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const WHY: &str = "qemu-aarch64 not found (apt-get install -y qemu-user)";

    #[test]
    fn nothing_missing_runs_whatever_the_environment() {
        for strict in [None, Some(""), Some("0"), Some("1"), Some("yes")] {
            assert_eq!(decide("the board", None, strict), Decision::Run, "{strict:?}");
        }
    }

    #[test]
    fn missing_skips_unless_strict() {
        let skip = Decision::Skip(format!("the board: skipped: {WHY}"));
        for strict in [None, Some(""), Some("0"), Some(" 0 ")] {
            assert_eq!(decide("the board", Some(WHY), strict), skip, "{strict:?}");
        }
    }

    #[test]
    fn missing_fails_when_strict_with_the_same_message() {
        let Decision::Fail(msg) = decide("the board", Some(WHY), Some("1")) else { panic!("not a failure") };
        assert!(msg.starts_with(&format!("the board: skipped: {WHY}")), "{msg}");
        assert!(msg.contains("RBA_REQUIRE_EXTERNAL=1"), "{msg}");
    }

    #[test]
    fn an_unknown_strict_value_fails_rather_than_skips() {
        let Decision::Fail(msg) = decide("the board", Some(WHY), Some("true")) else { panic!("not a failure") };
        assert!(msg.contains("\"true\"") && msg.contains("expected 0 or 1"), "{msg}");
    }

    #[test]
    fn require_runs_when_nothing_is_missing() {
        assert!(require("a check", None));
    }

    #[test]
    fn on_path_finds_sh_and_not_nonsense() {
        assert!(on_path("sh"));
        assert!(!on_path("rba-no-such-command-0123"));
    }
}
