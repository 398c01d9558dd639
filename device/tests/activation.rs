//! Active models on the real `rba-device` binary: activation and its
//! crash safety (SIGKILL at random points, restarts on the same store),
//! rollback byte for byte with the profile's hook, and the requests'
//! errors.

#![allow(clippy::unwrap_used)]

use std::net::{SocketAddr, TcpStream};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rba_protocol::rng::splitmix64;
use rba_protocol::*;
use rba_testkit::models::{linear_bundle, mlp_model, small_linear};
use rba_testkit::process::DeviceProcess;
use rba_testkit::{sha256, KEY};

/// The binary cargo built for these tests.
const DEVICE: &str = env!("CARGO_BIN_EXE_rba-device");

const APP: &str = "inspect";

/// A board profile (loopback, TCP) with `hook` as its activation hook.
fn profile(dir: &Path, hook: &[&str]) -> PathBuf {
    let hook: Vec<String> = hook.iter().map(|h| format!("{h:?}")).collect();
    let text = format!(
        "name = 'test-board'\ntarget = 'x86_64-unknown-linux-gnu'\ncpu = 'host'\ncores = 1\nthreads = 1\n\
         model_dir = 'unused'\nactivate_hook = [{}]\nactivate_hook_timeout_s = 10\n[link]\ndefault = 'tcp'\n\
         tcp = '127.0.0.1:0'\n",
        hook.join(", ")
    );
    let path = dir.join("board.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `rba-device serve` on a random loopback port, jobs on the daemon's thread.
fn spawn(store: &Path, profile: Option<&Path>) -> DeviceProcess {
    let s = store.display().to_string();
    let mut args =
        vec!["serve", "--tcp", "127.0.0.1:0", "--dir", s.as_str(), "--threads", "1", "--isolation", "thread"];
    let p = profile.map(|p| p.display().to_string());
    if let Some(p) = &p {
        args.extend(["--board", p.as_str()]);
    }
    DeviceProcess::spawn(DEVICE, &args, &[("RBA_DEVICE_KEY", KEY)])
}

fn client(addr: SocketAddr) -> Client<TcpStream> {
    let config = ClientConfig {
        request_timeout: Duration::from_secs(5),
        job_idle_timeout: Duration::from_secs(30),
        max_retries: 0,
        ..ClientConfig::tcp(rba_testkit::test_key())
    };
    Client::connect_tcp(addr, config).unwrap()
}

fn go(_: &Progress) -> ControlFlow<()> {
    ControlFlow::Continue(())
}

fn activation(model: &str, bytes: &[u8]) -> ActivateRequest {
    ActivateRequest {
        app: APP.into(),
        model: model.into(),
        sha256: sha256(bytes),
        gates: Vec::new(),
        eval_bundle: None,
        threads: None,
        warmup: RunPolicy::default(),
        runs: RunPolicy::default(),
        runtime: None,
    }
}

/// What a restarted board holds for the application must be whole: the
/// stable path is one of `models` byte for byte (or nothing before the
/// first activation completed), its metadata and the board's status name
/// the same bytes, no half-made generation is left, and the history's last
/// switch is the current generation. Returns which model is active.
fn check_consistent(store: &Path, c: &mut Client<TcpStream>, models: &[&[u8]]) -> Option<usize> {
    let dir = store.join("apps").join(APP);
    let status = c.app_status(Some(APP), 1000);
    let Ok(mut apps) = status else {
        // Killed before the application's directory was ever made.
        assert!(!dir.join("current").exists(), "{status:?}");
        return None;
    };
    let s = apps.remove(0);
    let leftovers: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let Some(active) = s.active else {
        assert!(std::fs::read(dir.join("active.onnx")).is_err(), "a model file without an active generation");
        return None;
    };
    let bytes = std::fs::read(dir.join("active.onnx")).unwrap();
    let which = models.iter().position(|m| *m == bytes.as_slice()).expect("the active model is one of the two, whole");
    assert_eq!(active.sha256, sha256(&bytes));
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("active.json")).unwrap()).unwrap();
    assert_eq!(json["sha256"].as_str().unwrap(), hex(&sha256(&bytes)));
    assert_eq!(json["generation"].as_u64().unwrap(), active.generation);
    let last = s.history.iter().rev().find(|e| e.event != HistoryEvent::GateFailed).expect("a recorded switch");
    assert_eq!((last.generation, last.sha256), (Some(active.generation), active.sha256), "{:?}", s.history);
    let seqs: Vec<u64> = s.history.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=s.history.len() as u64).collect::<Vec<_>>(), "no torn or lost history line");
    // No generation newer than the current one survives a restart.
    for e in std::fs::read_dir(&dir).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        if let Some(g) = name.strip_prefix("gen-") {
            assert!(g.parse::<u64>().unwrap() <= active.generation, "{name} after {}", active.generation);
        }
    }
    Some(which)
}

/// Activates the two models in turn while a thread SIGKILLs the daemon at a
/// random moment of the request; restarts it on the same store each time.
#[test]
fn sigkill_at_20_random_points_of_activation_leaves_a_whole_model_and_a_true_history() {
    let started = Instant::now();
    let store = tempfile::tempdir().unwrap();
    let etc = tempfile::tempdir().unwrap();
    // A hook that takes a moment: the kill also lands between the switch
    // and the history entry, which start-up recovery then writes.
    let profile = profile(etc.path(), &["sleep", "0.02"]);
    let models = [mlp_model(600, 3), mlp_model(640, 3)];
    let names = ["mlp-600", "mlp-640"];
    let mut p = spawn(store.path(), Some(&profile));
    let mut c = client(p.tcp_addr());
    for (m, n) in models.iter().zip(names) {
        c.upload(ArtifactKind::Model, n, m, |_| {}).unwrap();
    }
    // How long an activation takes here, unkilled.
    let mut longest = Duration::ZERO;
    for i in 0..4 {
        let t = Instant::now();
        let r = c.activate(&activation(names[i % 2], &models[i % 2]), go).unwrap();
        assert_eq!(r.outcome, ActivationOutcome::Activated);
        longest = longest.max(t.elapsed());
    }
    eprintln!("an activation takes up to {:.1} ms here", longest.as_secs_f64() * 1e3);
    let refs: Vec<&[u8]> = models.iter().map(Vec::as_slice).collect();
    let mut seed = 0x5eed_u64;
    let (mut interrupted, mut completed) = (0, 0);
    for round in 0..20 {
        assert!(started.elapsed() < Duration::from_secs(240), "round {round}: out of time");
        let active = check_consistent(store.path(), &mut c, &refs);
        let next = active.map_or(0, |a| 1 - a);
        // A kill anywhere from the request's start to a bit past its usual end.
        let delay = Duration::from_nanos(splitmix64(&mut seed) % (longest.as_nanos() as u64 * 5 / 4).max(1));
        let pid = nix::unistd::Pid::from_raw(p.pid() as i32);
        let killer = std::thread::spawn(move || {
            std::thread::sleep(delay);
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
        });
        let r = c.activate(&activation(names[next], &models[next]), go);
        killer.join().unwrap();
        match r {
            Ok(r) => {
                assert_eq!(r.outcome, ActivationOutcome::Activated);
                completed += 1;
            }
            Err(e) => {
                assert!(e.is_link_failure(), "round {round}: {e}");
                interrupted += 1;
            }
        }
        assert!(p.wait_exit(Duration::from_secs(10)).is_some());
        drop(c);
        p = spawn(store.path(), Some(&profile));
        c = client(p.tcp_addr());
    }
    let active = check_consistent(store.path(), &mut c, &refs);
    assert!(active.is_some());
    eprintln!(
        "20 kills: {interrupted} interrupted an activation, {completed} came after it; {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(interrupted >= 5, "the kills must land inside activations: {interrupted} of 20");
    let recovered = c.app_status(Some(APP), 1000).unwrap()[0].history.iter().filter(|e| e.recovered).count();
    eprintln!("history entries written by start-up recovery: {recovered}");
}

#[test]
fn rollback_restores_the_previous_model_byte_for_byte_and_runs_the_hook() {
    let store = tempfile::tempdir().unwrap();
    let etc = tempfile::tempdir().unwrap();
    let marker = etc.path().join("marker");
    let script =
        format!("echo \"$RBA_EVENT $RBA_MODEL $RBA_GENERATION $RBA_SHA256 $RBA_ACTIVE_MODEL\" >> {}", marker.display());
    let profile = profile(etc.path(), &["sh", "-c", &script]);
    let mut p = spawn(store.path(), Some(&profile));
    let mut c = client(p.tcp_addr());
    let (a, b) = (mlp_model(64, 2), mlp_model(96, 2));
    c.upload(ArtifactKind::Model, "a", &a, |_| {}).unwrap();
    c.upload(ArtifactKind::Model, "b", &b, |_| {}).unwrap();
    assert_eq!(c.activate(&activation("a", &a), go).unwrap().active.unwrap().generation, 1);
    let r = c.activate(&activation("b", &b), go).unwrap();
    assert_eq!((r.outcome, r.replaced.as_ref().unwrap().model.as_str()), (ActivationOutcome::Activated, "a"));
    assert!(r.hook.as_ref().unwrap().succeeded(), "{:?}", r.hook);
    let active_path = store.path().join("apps/inspect/active.onnx");
    assert_eq!(std::fs::read(&active_path).unwrap(), b);
    // The same model again: nothing to do, nothing recorded.
    assert_eq!(c.activate(&activation("b", &b), go).unwrap().outcome, ActivationOutcome::AlreadyActive);

    let s = c.app_status(Some(APP), 10).unwrap().remove(0);
    assert_eq!(s.active.as_ref().unwrap().generation, 2);
    assert_eq!(s.previous.iter().map(|m| m.model.as_str()).collect::<Vec<_>>(), ["a"]);
    let r = c.rollback(&RollbackRequest { app: APP.into(), from_generation: Some(2) }, go).unwrap();
    assert_eq!(r.outcome, ActivationOutcome::RolledBack);
    let now = r.active.unwrap();
    assert_eq!((now.model.as_str(), now.generation, now.rolled_back_from), ("a", 3, Some(2)));
    assert_eq!(std::fs::read(&active_path).unwrap(), a, "byte for byte");
    let hook = r.hook.unwrap();
    assert_eq!(hook.exit_code, Some(0), "{hook:?}");
    let lines = std::fs::read_to_string(&marker).unwrap();
    let lines: Vec<&str> = lines.lines().collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(
        lines[2],
        format!("rolled_back a 3 {} {}", hex(&sha256(&a)), active_path.display()),
        "the hook ran after the switch, with the new model's details"
    );
    // A resent rollback does not roll back twice; there is nothing before "a".
    let again = c.rollback(&RollbackRequest { app: APP.into(), from_generation: Some(2) }, go).unwrap();
    assert_eq!(again.outcome, ActivationOutcome::AlreadyRolledBack);
    match c.rollback(&RollbackRequest { app: APP.into(), from_generation: Some(3) }, go) {
        Err(ClientError::Remote(RemoteError::NotFound(m))) => assert!(m.contains("no earlier model"), "{m}"),
        other => panic!("{other:?}"),
    }
    match c.rollback(&RollbackRequest { app: APP.into(), from_generation: Some(1) }, go) {
        Err(ClientError::Remote(RemoteError::BadRequest(m))) => assert!(m.contains("is at generation 3"), "{m}"),
        other => panic!("{other:?}"),
    }
    // The history after a restart: three switches, every hook's exit status.
    p.sigterm();
    assert!(p.wait_exit(Duration::from_secs(10)).unwrap().success());
    drop(c);
    let p = spawn(store.path(), Some(&profile));
    let mut c = client(p.tcp_addr());
    let s = c.app_status(None, 10).unwrap();
    assert_eq!(s.len(), 1);
    let events: Vec<(HistoryEvent, Option<u64>, &str)> =
        s[0].history.iter().map(|e| (e.event, e.generation, e.model.as_str())).collect();
    assert_eq!(
        events,
        [
            (HistoryEvent::Activated, Some(1), "a"),
            (HistoryEvent::Activated, Some(2), "b"),
            (HistoryEvent::RolledBack, Some(3), "a")
        ]
    );
    assert!(s[0].history.iter().all(|e| e.hook.as_ref().is_some_and(|h| h.exit_code == Some(0)) && !e.recovered));
    assert!(p.wait_for("inspect: activation hook", Duration::from_secs(1)).is_none(), "no hook at start-up");
}

#[test]
fn gates_are_checked_on_the_board_and_a_failing_hook_is_reported() {
    let store = tempfile::tempdir().unwrap();
    let etc = tempfile::tempdir().unwrap();
    let profile = profile(etc.path(), &["sh", "-c", "echo cannot reload >&2; exit 7"]);
    let p = spawn(store.path(), Some(&profile));
    let mut c = client(p.tcp_addr());
    let lin = small_linear();
    c.upload(ArtifactKind::Model, "lin", &lin, |_| {}).unwrap();
    // Labels that the model gets right for one sample of two (50%).
    let x = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]];
    let y: Vec<u32> = x.iter().map(|s| rba_testkit::models::small_linear_eval(s)).map(|o| argmax(&o)).collect();
    let bundle = linear_bundle(&x, Some(vec![y[0], (y[1] + 1) % 3]), None);
    c.upload(ArtifactKind::EvalBundle, "half", &bundle, |_| {}).unwrap();
    let mut req = activation("lin", &lin);
    req.gates = parse_gates("top1>=75,p99<=10000ms").unwrap();
    req.eval_bundle = Some("half".into());
    let r = c.activate(&req, go).unwrap();
    assert_eq!(r.outcome, ActivationOutcome::GateFailed);
    assert_eq!(r.active, None, "nothing became active");
    assert_eq!(r.checks.len(), 2);
    assert_eq!(r.checks[0].to_string(), "top1 50.00% < 75.00%");
    assert!(r.checks[1].passed, "{}", r.checks[1]);
    assert!(r.evaluation.is_some() && r.benchmark.is_some(), "the evidence comes back");
    assert!(r.hook.is_none(), "no switch, no hook");
    assert!(!store.path().join("apps/inspect/active.onnx").exists());
    let s = c.app_status(Some(APP), 10).unwrap().remove(0);
    assert_eq!(s.history.len(), 1);
    assert_eq!((s.history[0].event, s.history[0].generation), (HistoryEvent::GateFailed, None));
    assert_eq!(s.history[0].checks, r.checks);
    // Passing gates: active, and the hook's failure is reported and recorded.
    req.gates = parse_gates("top1>=50,mean<10000ms,peak_rss<100000").unwrap();
    let r = c.activate(&req, go).unwrap();
    assert_eq!(r.outcome, ActivationOutcome::Activated, "{:?}", r.checks);
    let hook = r.hook.unwrap();
    assert_eq!((hook.exit_code, hook.output.as_str()), (Some(7), "cannot reload"));
    assert!(p.wait_for("inspect: activation hook", Duration::from_secs(5)).unwrap().contains("exit 7"));
    let active = c.app_status(Some(APP), 10).unwrap().remove(0).active.unwrap();
    assert_eq!(active.checks.len(), 3);
    assert_eq!(active.figures.top1, Some(0.5));

    // Requests the board refuses.
    let mut bad = activation("lin", &lin);
    bad.app = "../etc".into();
    assert!(
        matches!(c.activate(&bad, go), Err(ClientError::Remote(RemoteError::BadRequest(m))) if m.contains("application name"))
    );
    let mut bad = activation("lin", b"other bytes");
    bad.app = "other".into();
    assert!(
        matches!(c.activate(&bad, go), Err(ClientError::Remote(RemoteError::BadRequest(m))) if m.contains("upload it again"))
    );
    let mut bad = activation("lin", &lin);
    bad.app = "other".into();
    bad.gates = parse_gates("agreement>=99").unwrap();
    assert!(
        matches!(c.activate(&bad, go), Err(ClientError::Remote(RemoteError::BadRequest(m))) if m.contains("eval bundle"))
    );
    assert!(matches!(c.activate(&activation("missing", &lin), go), Err(ClientError::Remote(RemoteError::NotFound(_)))));
    assert!(matches!(c.app_status(Some("nope"), 1), Err(ClientError::Remote(RemoteError::NotFound(_)))));
    assert!(matches!(
        c.rollback(&RollbackRequest { app: "nope".into(), from_generation: None }, go),
        Err(ClientError::Remote(RemoteError::NotFound(_)))
    ));
}

fn argmax(v: &[f32]) -> u32 {
    v.iter().enumerate().fold((0, f32::MIN), |(bi, bv), (i, &x)| if x > bv { (i, x) } else { (bi, bv) }).0 as u32
}
