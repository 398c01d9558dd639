//! The activation hook of the board profile (`activate_hook`): a program
//! run after an application's active model changed, e.g. `systemctl reload
//! inspection.service`. It runs without a shell, in its own process group
//! (killed as a whole after the timeout), with stdin closed and its output
//! in `<store>/apps/<app>/hook.log`; its outcome is logged, recorded in the
//! history and reported to the host.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rba_protocol::HookOutcome;

/// Default time a hook may run.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Bytes of a hook's output kept in its outcome.
const OUTPUT_TAIL: u64 = 2048;

/// How often the hook is polled (and `tick` called).
const POLL: Duration = Duration::from_millis(20);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookConfig {
    /// Program and arguments.
    pub command: Vec<String>,
    pub timeout: Duration,
}

/// Runs the hook with `env` added, its output to `log`; calls `tick` about
/// every 20 ms while it runs (progress for the host).
pub fn run(config: &HookConfig, env: &[(&str, String)], log: &Path, mut tick: impl FnMut()) -> HookOutcome {
    let started = Instant::now();
    let mut outcome = HookOutcome { command: config.command.clone(), ..HookOutcome::default() };
    let elapsed = |s: Instant| u64::try_from(s.elapsed().as_millis()).unwrap_or(u64::MAX);
    let Some((program, args)) = config.command.split_first() else {
        outcome.error = Some("no program".into());
        return outcome;
    };
    let out = match File::create(log).and_then(|f| Ok((f.try_clone()?, f))) {
        Ok(pair) => pair,
        Err(e) => {
            outcome.error = Some(format!("cannot create its log: {e}"));
            return outcome;
        }
    };
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null()).stdout(out.0).stderr(out.1).process_group(0);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            outcome.error = Some(format!("{program}: {e}"));
            outcome.duration_ms = elapsed(started);
            return outcome;
        }
    };
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if started.elapsed() >= config.timeout => {
                outcome.timed_out = true;
                kill_group(child.id());
                let _ = child.kill();
                break child.wait().ok();
            }
            Ok(None) => {
                tick();
                std::thread::sleep(POLL);
            }
            Err(e) => {
                outcome.error = Some(format!("cannot wait for it: {e}"));
                kill_group(child.id());
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    outcome.duration_ms = elapsed(started);
    if let Some(s) = status {
        outcome.exit_code = s.code();
        outcome.signal = s.signal();
    }
    outcome.output = tail(log);
    outcome
}

/// SIGKILL to the hook's process group (its children too).
fn kill_group(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
}

/// The last [`OUTPUT_TAIL`] bytes of the log, as text.
fn tail(log: &Path) -> String {
    let Ok(mut f) = File::open(log) else { return String::new() };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(OUTPUT_TAIL)));
    let mut bytes = Vec::new();
    let _ = f.read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).trim_end().to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn hook(args: &[&str], timeout_ms: u64) -> HookConfig {
        HookConfig { command: args.iter().map(|s| s.to_string()).collect(), timeout: Duration::from_millis(timeout_ms) }
    }

    #[test]
    fn exit_status_output_environment_and_timeout() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("hook.log");
        let env = [("RBA_APP", "inspect".to_string())];
        let ok = run(&hook(&["sh", "-c", "echo reloading $RBA_APP; echo warn >&2"], 5000), &env, &log, || {});
        assert!(ok.succeeded(), "{ok:?}");
        assert_eq!(ok.output, "reloading inspect\nwarn");
        assert_eq!(ok.status(), "exit 0");
        let bad = run(&hook(&["sh", "-c", "exit 3"], 5000), &env, &log, || {});
        assert_eq!((bad.exit_code, bad.succeeded(), bad.status()), (Some(3), false, "exit 3".into()));
        // No shell: the arguments are not interpreted.
        let literal = run(&hook(&["echo", "$RBA_APP;", "exit", "1"], 5000), &env, &log, || {});
        assert_eq!((literal.exit_code, literal.output.as_str()), (Some(0), "$RBA_APP; exit 1"));
        let missing = run(&hook(&["/nonexistent/reload"], 5000), &env, &log, || {});
        assert!(missing.error.as_deref().unwrap().starts_with("/nonexistent/reload: "), "{missing:?}");
        assert!(missing.status().starts_with("not started"));
        // A hook that hangs (with a child of its own) is killed, group and all.
        let started = Instant::now();
        let mut ticks = 0;
        let slow = run(&hook(&["sh", "-c", "sleep 30 & sleep 30"], 300), &env, &log, || ticks += 1);
        assert!(slow.timed_out && !slow.succeeded(), "{slow:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(ticks > 3, "{ticks}");
        assert_eq!(slow.signal, Some(9));
    }
}
