//! `rba fleet` against eight real `rba-device` processes on loopback: one
//! down, one holding another key, one whose own gate fails. A canary stage
//! of two, then the rest; the table and the JSON report show each board's
//! outcome; the good boards end with the new model active; a rerun skips
//! them and ends in the same state; failed canaries stop a rollout; status,
//! rollback and bench over the fleet.

#![allow(clippy::unwrap_used)]

use std::net::TcpListener;
use std::path::Path;
use std::process::Output;
use std::time::Instant;

use rba_host::compact::surgery::{replace_spans, Span, Translator};
use rba_host::model::Model;
use rba_host::report::fleet::{BoardOutcome, FleetCommand, FleetReport};
use rba_testkit::demo::demo;
use rba_testkit::process::{device_binary, rba_binary, rba_command, run_logged, DeviceProcess};
use rba_testkit::{write_key_file, KEY};

/// Another valid key: the board holding it rejects the fleet's key.
const OTHER_KEY: &str = "6f746865722d6b65792d6f662d616e6f746865722d626f6172642d2d2d2d2d21";

struct Board {
    name: &'static str,
    /// `None`: the board is down.
    _process: Option<DeviceProcess>,
    store: tempfile::TempDir,
    addr: String,
}

impl Board {
    fn active(&self) -> Option<Vec<u8>> {
        std::fs::read(self.store.path().join("apps/inspect/active.onnx")).ok()
    }
}

fn serve(store: &Path, key: &str) -> DeviceProcess {
    let dir = store.display().to_string();
    let args = ["serve", "--tcp", "127.0.0.1:0", "--dir", &dir, "--threads", "1", "--isolation", "thread"];
    DeviceProcess::spawn(device_binary(), &args, &[("RBA_DEVICE_KEY", key)])
}

/// `rba fleet ...` with its own known-boards file.
fn rba(args: &[&str], known: &Path) -> Output {
    run_logged(rba_command(args, known), args)
}

fn report(path: &Path) -> FleetReport {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn outcomes(r: &FleetReport) -> Vec<(&str, BoardOutcome)> {
    r.boards.iter().map(|b| (b.name.as_str(), b.outcome)).collect()
}

/// The table line of `board` (the name starts it).
fn line<'a>(stdout: &'a str, board: &str) -> &'a str {
    stdout.lines().find(|l| l.starts_with(&format!("{board} ")) || l.starts_with(&format!("{board}  "))).unwrap()
}

#[test]
fn a_fleet_of_eight_with_a_board_down_a_wrong_key_and_a_failing_gate() {
    rba_binary();
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
    write_key_file(&dir.join("fleet.key"), KEY);
    let known = dir.join("known_boards");
    // cam-3 is down: a port nothing listens on.
    let down = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let names = ["cam-1", "cam-2", "cam-3", "cam-4", "cam-5", "cam-6", "cam-7", "cam-8"];
    let boards: Vec<Board> = names
        .iter()
        .map(|&name| {
            let store = tempfile::tempdir().unwrap();
            let (process, addr) = match name {
                "cam-3" => (None, down.clone()),
                "cam-4" => {
                    let p = serve(store.path(), OTHER_KEY);
                    let a = p.tcp_addr().to_string();
                    (Some(p), a)
                }
                _ => {
                    let p = serve(store.path(), KEY);
                    let a = p.tcp_addr().to_string();
                    (Some(p), a)
                }
            };
            Board { name, _process: process, store, addr }
        })
        .collect();
    let inventory = |extra_gate: bool| {
        let mut t = String::from("[defaults]\nkey_file = \"fleet.key\"\n");
        for b in &boards {
            let tags = match b.name {
                "cam-1" | "cam-2" => "\"line-3\", \"inspect\"",
                "cam-5" | "cam-6" => "\"pair\", \"inspect\"",
                _ => "\"inspect\"",
            };
            t.push_str(&format!(
                "\n[[board]]\nname = \"{}\"\nlink = \"tcp\"\naddress = \"{}\"\ntags = [{tags}]\n",
                b.name, b.addr
            ));
            if extra_gate && b.name == "cam-5" {
                // This board asks for a latency no model meets: its gate fails.
                t.push_str("gates = \"p50<=1us\"\n");
            }
        }
        t
    };
    let (base, fleet) = (dir.join("base.toml"), dir.join("fleet.toml"));
    std::fs::write(&base, inventory(false)).unwrap();
    std::fs::write(&fleet, inventory(true)).unwrap();
    let (base, fleet) = (base.display().to_string(), fleet.display().to_string());
    let slim = dir.join("vit-slim.onnx");
    std::fs::write(&slim, &demo().slim_bytes).unwrap();
    let slim = slim.display().to_string();
    let good = ["cam-1", "cam-2", "cam-6", "cam-7", "cam-8"];
    let board = |n: &str| boards.iter().find(|b| b.name == n).unwrap();

    // 1. Every board starts on the demo ViT (no gates).
    let out =
        rba(&["fleet", "deploy", "demo:vit", "--activate", "inspect", "--inventory", &base, "--parallel", "8"], &known);
    assert!(!out.status.success(), "two boards cannot be reached");
    for n in good.iter().chain(&["cam-5"]) {
        assert_eq!(board(n).active().unwrap(), demo().vit_bytes, "{n}");
    }

    // 2. The compacted model, gated, two canaries first, four at a time.
    let json = dir.join("deploy.json");
    let html = dir.join("deploy.html");
    let (j, h) = (json.display().to_string(), html.display().to_string());
    let deploy = [
        "fleet",
        "deploy",
        slim.as_str(),
        "--activate",
        "inspect",
        "--gate",
        "top1>=60,p99<=5000ms",
        "--eval",
        "demo:test",
        "--eval-samples",
        "200",
        "--canary",
        "2",
        "--parallel",
        "4",
        "--inventory",
        fleet.as_str(),
        "--json",
        j.as_str(),
        "--html",
        h.as_str(),
    ];
    let started = Instant::now();
    let out = rba(&deploy, &known);
    let first_wall = started.elapsed();
    assert!(!out.status.success(), "three boards fail: the command says so");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(stderr.contains("cam-7: connecting"), "progress per board:\n{stderr}");
    assert!(stderr.contains("3 of 8 board(s) did not end as asked"), "{stderr}");
    for n in good {
        assert!(line(&stdout, n).contains("activated") && line(&stdout, n).contains("vit-slim gen 2"), "{stdout}");
    }
    assert!(line(&stdout, "cam-1").starts_with("cam-1 (canary)"), "{stdout}");
    assert!(line(&stdout, "cam-3").contains("unreachable"), "{stdout}");
    assert!(line(&stdout, "cam-4").contains("wrong key"), "{stdout}");
    let l5 = line(&stdout, "cam-5");
    assert!(
        l5.contains("gate failed")
            && l5.contains("vit-digits gen 1")
            && l5.contains("p50 ")
            && l5.contains(" us > 1.0 us"),
        "{l5}"
    );
    assert!(stdout.contains("8 board(s): 5 ok, 3 failed, 0 not attempted"), "{stdout}");
    let r = report(&json);
    assert_eq!((r.schema_version, r.command, r.canary, r.parallel), (1, FleetCommand::Deploy, 2, 4));
    use BoardOutcome::*;
    assert_eq!(
        outcomes(&r),
        [
            ("cam-1", Activated),
            ("cam-2", Activated),
            ("cam-3", Unreachable),
            ("cam-4", AuthFailed),
            ("cam-5", GateFailed),
            ("cam-6", Activated),
            ("cam-7", Activated),
            ("cam-8", Activated)
        ]
    );
    assert!(r.boards[0].canary && r.boards[1].canary && !r.boards[2].canary);
    let cam5 = r.boards[4].activation.as_ref().unwrap();
    let failed: Vec<String> = cam5.failed_checks().map(|c| c.gate.to_string()).collect();
    assert_eq!(failed, ["p50<=1us"], "top1 and p99 held there too");
    assert_eq!(cam5.active.as_ref().unwrap().model, "vit-digits");
    assert!(r.boards[0].activation.as_ref().unwrap().evaluation.is_some(), "evidence in the report");
    for n in good {
        assert_eq!(board(n).active().unwrap(), demo().slim_bytes, "{n} runs the new model");
    }
    assert_eq!(board("cam-5").active().unwrap(), demo().vit_bytes, "cam-5 keeps the old model");
    assert!(board("cam-4").active().is_none(), "the board with another key was not touched");
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("<h2>Failed gates</h2>") && page.contains("p50&lt;=1us"), "who failed which gate");
    assert!(page.contains("latency across boards") && page.contains("accuracy against p99 latency"));
    // Identities pinned per board, in parallel, none lost.
    let pins = std::fs::read_to_string(&known).unwrap();
    for n in good.iter().chain(&["cam-5"]) {
        assert!(pins.contains(&board(n).addr), "{n} pinned:\n{pins}");
    }

    // 3. The same command again: the good boards are skipped, nothing changes.
    let started = Instant::now();
    let out = rba(&deploy, &known);
    let rerun_wall = started.elapsed();
    assert!(!out.status.success());
    let r = report(&json);
    let again: Vec<(&str, BoardOutcome)> = outcomes(&r);
    assert_eq!(
        again,
        [
            ("cam-1", AlreadyActive),
            ("cam-2", AlreadyActive),
            ("cam-3", Unreachable),
            ("cam-4", AuthFailed),
            ("cam-5", GateFailed),
            ("cam-6", AlreadyActive),
            ("cam-7", AlreadyActive),
            ("cam-8", AlreadyActive)
        ]
    );
    for b in r.boards.iter().filter(|b| b.outcome == AlreadyActive) {
        assert!(b.deployed.is_none() && b.activation.is_none(), "{}: nothing uploaded or measured", b.name);
    }
    for n in good {
        assert_eq!(board(n).active().unwrap(), demo().slim_bytes, "{n}");
    }
    assert_eq!(board("cam-5").active().unwrap(), demo().vit_bytes);
    eprintln!("deploy {:.1} s, rerun {:.1} s", first_wall.as_secs_f64(), rerun_wall.as_secs_f64());

    // 4. A failed canary stops the rollout: cam-5 is the canary of "pair".
    let m = Model::new(demo().vit.clone(), None).unwrap();
    let third = replace_spans(&m.onnx, &m.blocks, &[(Span::new(11, 12), Translator::Identity)]).unwrap();
    let third_path = dir.join("vit-11.onnx");
    std::fs::write(&third_path, third.to_bytes()).unwrap();
    let t = third_path.display().to_string();
    let args = [
        "fleet",
        "deploy",
        t.as_str(),
        "--activate",
        "inspect",
        "--tags",
        "pair",
        "--canary",
        "1",
        "--inventory",
        fleet.as_str(),
        "--json",
        j.as_str(),
    ];
    let out = rba(&args, &known);
    assert!(!out.status.success());
    let r = report(&json);
    assert_eq!(outcomes(&r), [("cam-5", GateFailed), ("cam-6", NotAttempted)]);
    assert!(r.halted.as_deref().unwrap().contains("canary failed on cam-5"), "{:?}", r.halted);
    assert_eq!(board("cam-6").active().unwrap(), demo().slim_bytes, "not attempted, not changed");

    // 5. Rollback and status over a subset, bench over the good ones.
    let status_json = dir.join("status.json").display().to_string();
    let out = rba(&["fleet", "rollback", "inspect", "--tags", "line-3", "--inventory", &fleet], &known);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for n in ["cam-1", "cam-2"] {
        assert_eq!(board(n).active().unwrap(), demo().vit_bytes, "{n} rolled back byte for byte");
    }
    let out = rba(&["fleet", "status", "--app", "inspect", "--inventory", &fleet, "--json", &status_json], &known);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(line(&stdout, "cam-1").contains("vit-digits gen 3"), "{stdout}");
    assert!(line(&stdout, "cam-6").contains("vit-slim gen 2"), "{stdout}");
    let s = report(Path::new(&status_json));
    assert_eq!(s.command, FleetCommand::Status);
    assert_eq!(s.boards[0].apps[0].history.last().unwrap().event, rba_protocol::HistoryEvent::RolledBack);
    let bench_json = dir.join("bench.json").display().to_string();
    let out = rba(
        &[
            "fleet",
            "bench",
            &slim,
            "--runs",
            "10",
            "--tags",
            "line-3",
            "--inventory",
            &fleet,
            "--json",
            &bench_json,
            "--parallel",
            "2",
        ],
        &known,
    );
    assert!(out.status.success());
    let b = report(Path::new(&bench_json));
    assert!(b.boards.iter().all(|b| b.benchmark.as_ref().is_some_and(|r| r.samples_ns.len() == 10)));
}
