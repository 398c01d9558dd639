//! The `rba` commands that talk to boards: `devices`, `deploy`, `bench`.
//! The work happens in `rba_host::link`; this module parses and prints.

use std::path::PathBuf;

use anyhow::Result;
use rba_host::data::PreprocessArgs;
use rba_host::link::{self, build_eval_bundle, BenchOptions, Deployed, Device, LinkArgs, ModelArtifact, Target};
use rba_host::onnx::write_atomically;
use rba_protocol::{DeviceIdentity, RunPolicy};

/// Board commands, flattened into the top-level `rba` command list.
// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(clap::Subcommand)]
pub enum DeviceCommand {
    /// Probe serial ports, board profiles with TCP addresses and the
    /// in-process `local` board; show each device's identity.
    Devices {
        /// Also probe this device.
        #[command(flatten)]
        link: LinkArgs,
        /// Do not start the emulated qemu-aarch64 board.
        #[arg(long)]
        no_qemu: bool,
    },
    /// Upload a model to a board; skipped when the board already holds the
    /// same bytes (SHA-256) under that name.
    Deploy {
        /// The ONNX model (or `demo:vit`, `demo:resnet`).
        model: String,
        /// Name on the device (default: the file name without `.onnx`).
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        link: LinkArgs,
    },
    /// Measure a model's latency on a board, or A/B-compare two models with
    /// interleaved runs; `--eval DATA` adds on-device top-1 accuracy.
    Bench {
        /// The model (or `demo:vit`, `demo:resnet`).
        model: String,
        /// A second model to compare against the first (B against A).
        model2: Option<String>,
        #[command(flatten)]
        link: LinkArgs,
        /// Measured runs (per model).
        #[arg(long, default_value_t = 50)]
        runs: u32,
        /// Warm-up runs (per model), not measured.
        #[arg(long, default_value_t = 5)]
        warmup: u32,
        /// Keep measuring until at least this many milliseconds have passed.
        #[arg(long, default_value_t = 0)]
        min_time_ms: u32,
        /// Inference threads (default: the board's).
        #[arg(long)]
        threads: Option<u32>,
        /// Evaluate on the device too: a data spec (`demo:test`, an image
        /// folder, a .npy/.npz with labels).
        #[arg(long, value_name = "DATA")]
        eval: Option<String>,
        /// Evaluate on at most this many samples (the first ones).
        #[arg(long, default_value_t = 500)]
        eval_samples: usize,
        #[command(flatten)]
        preprocess: PreprocessArgs,
        /// Also write the results (raw samples included) as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

pub fn run(command: DeviceCommand) -> Result<()> {
    match command {
        DeviceCommand::Devices { link, no_qemu } => devices(&link, no_qemu),
        DeviceCommand::Deploy { model, name, link } => {
            let mut artifact = ModelArtifact::from_spec(&model)?;
            if let Some(n) = name {
                artifact.name = link::device_name(n);
            }
            let mut device = Device::connect(&Target::from_args(&link)?)?;
            let d = device.deploy(&artifact)?;
            println!("{}", deployed_line(&d, device.label()));
            Ok(())
        }
        DeviceCommand::Bench {
            model,
            model2,
            link,
            runs,
            warmup,
            min_time_ms,
            threads,
            eval,
            eval_samples,
            preprocess,
            json,
        } => {
            let mut models = vec![ModelArtifact::from_spec(&model)?];
            if let Some(m) = &model2 {
                let b = ModelArtifact::from_spec(m)?;
                if b.name == models[0].name {
                    anyhow::bail!("both models would be named '{}' on the device; rename one of the files", b.name);
                }
                models.push(b);
            }
            // Build the bundle before connecting: data errors come first and fast.
            let eval_set = match &eval {
                Some(data) => {
                    let reference = (models.len() == 2).then(|| &models[0].onnx);
                    Some(build_eval_bundle(&models[0].onnx, data, Some(eval_samples), &preprocess, reference)?)
                }
                None => None,
            };
            let mut device = Device::connect(&Target::from_args(&link)?)?;
            let mut deployed = Vec::new();
            for m in &models {
                let d = device.deploy(m)?;
                println!("{}", deployed_line(&d, device.label()));
                deployed.push(d);
            }
            let options = BenchOptions {
                warmup: RunPolicy { count: warmup, min_time_ms: 0 },
                runs: RunPolicy { count: runs, min_time_ms },
                threads,
                ..BenchOptions::default()
            };
            let names: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
            let report = device.bench(&names, &options)?;
            print!("{}", link::render_bench(&report));
            let mut evaluations = Vec::new();
            if let Some(set) = &eval_set {
                for m in &models {
                    evaluations.push(device.evaluate(&m.name, &set.bundle)?);
                }
                print!("{}", link::render_eval(&evaluations, &set.source));
            }
            if let Some(path) = json {
                let doc = serde_json::json!({
                    "schema_version": 1,
                    "device": report.device,
                    "target": device.label(),
                    "deployed": deployed,
                    "benchmark": report,
                    "evaluation": eval_set.as_ref().map(|s| serde_json::json!({
                        "data": s.source,
                        "samples": s.bundle.num_samples(),
                        "results": evaluations,
                    })),
                });
                write_atomically(&path, &serde_json::to_vec_pretty(&doc)?)?;
                println!("wrote {}", path.display());
            }
            Ok(())
        }
    }
}

fn deployed_line(d: &Deployed, device: &str) -> String {
    let size = link::format_bytes(d.size);
    let sha = &d.sha256[..16.min(d.sha256.len())];
    if d.skipped {
        format!("{device} already has {} ({size}, sha256 {sha}...): upload skipped", d.name)
    } else {
        let resumed = if d.resumed_from > 0 {
            format!(", resumed at byte {} of an interrupted upload", d.resumed_from)
        } else {
            String::new()
        };
        format!("deployed {} ({size}, sha256 {sha}...) to {device}{resumed}", d.name)
    }
}

/// One probed device: its identity, or why it could not be reached.
struct Probed {
    device: String,
    result: std::result::Result<DeviceIdentity, String>,
}

fn probe(target: &Target) -> Probed {
    let device = target.label();
    let result = Device::probe(target).map(|d| d.identity().clone()).map_err(|e| {
        // The table names the device already.
        let msg = e.to_string();
        msg.strip_prefix(&format!("{device}: ")).map_or(msg.clone(), str::to_string)
    });
    Probed { device, result }
}

fn devices(args: &LinkArgs, no_qemu: bool) -> Result<()> {
    let mut rows = vec![probe(&Target::Local { store: None })];
    if no_qemu {
        rows.push(Probed { device: link::QEMU_BOARD.into(), result: Err("not started (--no-qemu)".into()) });
    } else if let Some(why) = link::qemu_missing() {
        rows.push(Probed { device: link::QEMU_BOARD.into(), result: Err(why) });
    } else {
        rows.push(probe(&Target::Qemu { store: None }));
    }
    let baud = args.baud.unwrap_or(link::DEFAULT_BAUD);
    let key = rba_device::link::load_key(args.key_file.as_deref(), std::env::var(link::KEY_ENV).ok());
    match serialport::available_ports() {
        Ok(ports) => {
            for p in ports {
                let key = key.as_ref().ok().cloned().flatten();
                rows.push(probe(&Target::Serial { path: p.port_name, baud, key, board: None }));
            }
        }
        Err(e) => rows.push(Probed { device: "serial ports".into(), result: Err(e.to_string()) }),
    }
    let mut serial_boards = Vec::new();
    for b in link::known_boards() {
        if b.name == link::QEMU_BOARD {
            continue;
        }
        match (b.link.default, b.link.tcp.as_deref()) {
            (rba_device::board::LinkKind::Tcp, Some(addr)) => {
                let label = format!("{} ({addr})", b.name);
                let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
                if matches!(host, "0.0.0.0" | "[::]" | "::") {
                    let port = addr.rsplit_once(':').map_or("7878", |(_, p)| p);
                    rows.push(Probed {
                        device: label,
                        result: Err(format!("listens on all interfaces; probe it with --addr HOST:{port}")),
                    });
                    continue;
                }
                match &key {
                    Ok(Some(k)) => rows.push(probe(&Target::Tcp {
                        addr: addr.into(),
                        key: Some(k.clone()),
                        board: Some(b.name.clone()),
                    })),
                    Ok(None) => rows.push(Probed {
                        device: label,
                        result: Err(format!("not probed: TCP needs the key (--key-file or ${})", link::KEY_ENV)),
                    }),
                    Err(e) => rows.push(Probed { device: label, result: Err(e.to_string()) }),
                }
            }
            _ => serial_boards.push(b.name),
        }
    }
    if args.board.is_some() || args.port.is_some() || args.addr.is_some() {
        match Target::from_args(args) {
            Ok(t) => rows.push(probe(&t)),
            Err(e) => rows.push(Probed { device: "requested device".into(), result: Err(e.to_string()) }),
        }
    }
    let width = rows.iter().map(|r| r.device.len()).max().unwrap_or(6).max(6);
    println!(
        "{:width$}  {:16}  {:8}  {:>5}  {:>9}  {:16}  status",
        "device", "board", "arch", "cores", "memory", "runtime"
    );
    for r in &rows {
        match &r.result {
            Ok(id) => println!(
                "{:width$}  {:16}  {:8}  {:>5}  {:>9}  {:16}  ok (rba {})",
                r.device,
                id.board,
                id.arch,
                id.cores,
                link::format_bytes(id.memory_bytes),
                id.runtime,
                id.rba_version
            ),
            Err(why) => {
                println!("{:width$}  {:16}  {:8}  {:>5}  {:>9}  {:16}  {why}", r.device, "-", "-", "-", "-", "-")
            }
        }
    }
    if !serial_boards.is_empty() {
        println!(
            "serial boards ({}) answer on a host serial port above; use --board NAME --port PATH",
            serial_boards.join(", ")
        );
    }
    Ok(())
}
