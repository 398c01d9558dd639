//! `rba deploy`: upload a model to a board (skipped when already there);
//! with `--activate APP`, make it the application's active model if its
//! gates hold on the board.

use rba_host::board::{
    build_eval_bundle, deploy_and_activate, device_name, ActivationPlan, Deployed, Device, ModelArtifact, Target,
};
use rba_host::report::apps;
use rba_host::report::text::format_bytes;
use rba_protocol::{ActivationOutcome, Gate, RunPolicy};

use crate::args::{BoardRuntimeArgs, LinkArgs, PreprocessArgs};
use crate::progress::Terminal;

/// How a model is judged before it becomes active (`rba deploy --activate`
/// and `rba fleet deploy`).
#[derive(clap::Args, Clone)]
pub struct GateArgs {
    /// Conditions the model must meet on the board before it becomes active, e.g.
    /// 'top1>=97.5,agreement>=99,p99<=40ms'. Metrics: top1 and agreement (%, need
    /// --eval), p50, p90, p99, mean (ms or us), peak_rss (MiB); operators >=, <=, >, <.
    #[arg(long, value_parser = parse_gate_list)]
    pub gate: Option<GateList>,
    /// Eval data for the top1 and agreement gates: `demo:test`, an image folder, a
    /// .npy/.npz with labels. Evaluated on the board.
    #[arg(long, value_name = "DATA")]
    pub eval: Option<String>,
    /// Samples of the eval data used (the first ones).
    #[arg(long, default_value_t = 500)]
    pub eval_samples: usize,
    /// Reference model whose outputs (computed here) go into the eval bundle, for
    /// the agreement gate (`demo:vit` or an ONNX file).
    #[arg(long, value_name = "MODEL")]
    pub reference: Option<String>,
    /// Measured runs of the on-device benchmark behind latency and memory gates.
    #[arg(long, default_value_t = 30)]
    pub runs: u32,
    /// Warm-up runs of that benchmark.
    #[arg(long, default_value_t = 3)]
    pub warmup: u32,
    /// Inference threads on the board (default: the board's).
    #[arg(long)]
    pub threads: Option<u32>,
    #[command(flatten)]
    pub preprocess: PreprocessArgs,
    /// The gates are measured on this runtime: the one the application runs the model
    /// with.
    #[command(flatten)]
    pub runtime: BoardRuntimeArgs,
}

/// A parsed `--gate` list.
#[derive(Clone, Debug)]
pub struct GateList(pub Vec<Gate>);

fn parse_gate_list(s: &str) -> Result<GateList, String> {
    rba_protocol::parse_gates(s).map(GateList).map_err(|e| e.to_string())
}

impl GateArgs {
    /// The plan for `model` as `app`: the eval bundle built here (with the
    /// reference's outputs), checked before any board is reached.
    pub fn plan(&self, app: &str, model: ModelArtifact) -> anyhow::Result<ActivationPlan> {
        if !rba_protocol::is_valid_app_name(app) {
            anyhow::bail!(
                "invalid application name {app:?}: use [A-Za-z0-9_-]{{1,64}}, starting with a letter or a digit"
            );
        }
        let gates = self.gate.as_ref().map(|g| g.0.clone()).unwrap_or_default();
        let bundle = match &self.eval {
            Some(data) => {
                let reference = self.reference.as_deref().map(rba_host::demo::load_model_spec).transpose()?;
                let pre = (&self.preprocess).into();
                Some(build_eval_bundle(&model.onnx, data, Some(self.eval_samples), &pre, reference.as_ref())?.bundle)
            }
            None => None,
        };
        let benchmark = gates.iter().any(|g| g.metric.needs_benchmark());
        let plan = ActivationPlan {
            app: app.to_string(),
            model,
            gates,
            bundle,
            threads: self.threads,
            warmup: RunPolicy { count: if benchmark { self.warmup } else { 0 }, min_time_ms: 0 },
            runs: RunPolicy { count: if benchmark { self.runs } else { 0 }, min_time_ms: 0 },
            runtime: self.runtime.request(self.runtime.kind()?),
        };
        plan.validate()?;
        Ok(plan)
    }
}

#[derive(clap::Args)]
pub struct Args {
    /// The ONNX model (or `demo:vit`, `demo:resnet`).
    model: String,
    /// Name on the device (default: the file name without `.onnx`).
    #[arg(long)]
    name: Option<String>,
    /// Make the model the active model of this application on the board (its stable
    /// path: <store>/apps/APP/active.onnx), if every --gate holds there.
    #[arg(long, value_name = "APP")]
    activate: Option<String>,
    #[command(flatten)]
    gates: GateArgs,
    #[command(flatten)]
    link: LinkArgs,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut artifact = ModelArtifact::from_spec(&args.model)?;
    if let Some(n) = args.name {
        artifact.name = device_name(n);
    }
    let Some(app) = args.activate else {
        let runtime = &args.gates.runtime;
        if args.gates.gate.is_some()
            || args.gates.eval.is_some()
            || runtime.runtime.is_some()
            || runtime.names_providers()
        {
            anyhow::bail!(
                "--gate, --eval, --runtime and --ep judge a model before it becomes active: add --activate APP"
            );
        }
        let mut device = connect(&args.link)?;
        let d = device.deploy(&artifact)?;
        println!("{}", deployed_line(&d, device.label()));
        return Ok(());
    };
    // Data and gate errors first, before any board is reached.
    let plan = args.gates.plan(&app, artifact)?;
    let mut device = connect(&args.link)?;
    let label = device.label().to_string();
    let a = deploy_and_activate(&mut device, &plan)?;
    if let Some(d) = &a.deployed {
        println!("{}", deployed_line(d, &label));
    }
    print!("{}", apps::activation(&label, &app, &a));
    match a.outcome() {
        ActivationOutcome::GateFailed => {
            let failed: Vec<String> = a.failed_checks().iter().map(|c| c.to_string()).collect();
            anyhow::bail!("gate failed on board {label}: {}; the old model stays active", failed.join("; "))
        }
        _ => match a.result.as_ref().and_then(|r| r.hook.as_ref()).filter(|h| !h.succeeded()) {
            Some(h) => anyhow::bail!("{label}: the model is active, but the activation hook failed: {}", h.status()),
            None => Ok(()),
        },
    }
}

/// Connects with progress bars on the terminal (and says so when it pins a
/// new board's identity).
pub fn connect(link: &LinkArgs) -> anyhow::Result<Device> {
    let mut device = Device::connect(&Target::from_options(&link.into())?)?;
    if let Some(note) = device.pin_note() {
        eprintln!("{note}");
    }
    device.set_progress(std::sync::Arc::new(Terminal::stderr()));
    Ok(device)
}

/// What a deploy did, in one line.
pub fn deployed_line(d: &Deployed, device: &str) -> String {
    let size = format_bytes(d.size);
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
