//! What the benches share: models, synthetic inputs, the Python baselines
//! and the results table that `bench/run` collects.

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;

use rba_host::demo::DemoModel;
use rba_host::model::run::nd;
use rba_host::model::Model;
use rba_host::onnx::OnnxModel;

/// False under `cargo test --benches` (which runs a `harness = false` bench
/// without `--bench`): the heavy benches then only say so and return.
pub fn run_as_bench(name: &str) -> bool {
    let yes = std::env::args().any(|a| a == "--bench");
    if !yes {
        println!("{name}: skipped outside `cargo bench` (see bench/README.md)");
    }
    yes
}

/// Deterministic uniform noise in [0, 1) (xorshift), the same for every run.
pub fn random_batch(shape: &[usize], seed: u64) -> nd::ArrayD<f32> {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    nd::ArrayD::from_shape_fn(shape.to_vec(), |_| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32
    })
}

/// `demo:vit` (embedded) or an ONNX path.
pub fn load(spec: &str) -> Model {
    let onnx = match spec {
        "demo:vit" => DemoModel::Vit.load().expect("embedded model"),
        path => OnnxModel::load(path).expect("model file"),
    };
    Model::new(onnx, None).expect("blocks")
}

/// The models a bench runs: the demo ViT, then `RBA_BENCH_MODELS`
/// (comma-separated ONNX files, e.g. the ViT-S; opt-in).
pub fn model_specs() -> Vec<String> {
    let mut specs = vec!["demo:vit".to_string()];
    if let Ok(extra) = std::env::var("RBA_BENCH_MODELS") {
        specs.extend(extra.split(',').filter(|s| !s.is_empty()).map(str::to_string));
    }
    specs
}

/// A short label for a model spec.
pub fn label(spec: &str) -> String {
    match spec {
        "demo:vit" => "demo ViT".into(),
        p => std::path::Path::new(p).file_stem().map_or(p.to_string(), |s| s.to_string_lossy().into_owned()),
    }
}

/// A file path for the model (the embedded demo is written to a temp file),
/// for the Python baselines.
pub fn model_file(spec: &str) -> PathBuf {
    match spec {
        "demo:vit" => {
            let p =
                std::env::temp_dir().join(format!("rba-bench-{}-{}", std::process::id(), DemoModel::Vit.file_name()));
            std::fs::write(&p, DemoModel::Vit.bytes()).unwrap();
            p
        }
        path => PathBuf::from(path),
    }
}

/// Threads for the forward pass and the statistics (`RBA_BENCH_THREADS`,
/// default: all cores).
pub fn threads() -> usize {
    std::env::var("RBA_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The Python interpreter for the baselines (`RBA_BENCH_PYTHON`, default
/// `python3`; empty disables them).
pub fn python() -> Option<String> {
    let p = std::env::var("RBA_BENCH_PYTHON").unwrap_or_else(|_| "python3".into());
    (!p.is_empty()).then_some(p)
}

/// Path of a script in the repository's `bench/` folder.
pub fn script(name: &str) -> PathBuf {
    crate::workspace().join("bench").join(name)
}

/// Runs a baseline script and returns its (one-line JSON) output, or why not.
pub fn run_python_json(args: &[String]) -> Result<String, String> {
    let py = python().ok_or("RBA_BENCH_PYTHON is empty")?;
    let out = Command::new(&py).args(args).output().map_err(|e| format!("{py}: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(err.lines().last().unwrap_or("failed").to_string());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a baseline script and returns the number after `"key": ` in its
/// JSON output, or why not.
pub fn run_python(args: &[String], key: &str) -> Result<f64, String> {
    let text = run_python_json(args)?;
    json_number(&text, key).ok_or_else(|| format!("no '{key}' in the output"))
}

/// The number after `"key": ` in a one-line JSON object.
pub fn json_number(text: &str, key: &str) -> Option<f64> {
    let at = text.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = text[at..].trim_start();
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end].trim().parse().ok()
}

/// One row of the results table: printed, and appended to `RBA_BENCH_OUT`
/// when set (bench/run collects those rows into bench/README.md).
/// `ratio` is `value / baseline` in the direction the target is stated.
pub fn row(figure: &str, value: &str, baseline: &str, ratio: f64, target: &str, met: Option<bool>) {
    let met = match met {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => "-",
    };
    let line = format!("| {figure} | {value} | {baseline} | {ratio:.3} | {target} | {met} |");
    println!("{line}");
    if let Ok(path) = std::env::var("RBA_BENCH_OUT") {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
        writeln!(f, "{line}").unwrap();
    }
}

/// A note under the table (a skipped figure, say), printed and collected.
pub fn note(text: &str) {
    println!("note: {text}");
    if let Ok(path) = std::env::var("RBA_BENCH_OUT") {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
        writeln!(f, "NOTE {text}").unwrap();
    }
}

/// Peak resident memory of this process, KiB.
pub fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// Sets tract's matrix-product executor for every thread: `threads > 1`
/// uses a rayon pool of that size (tract-linalg's `multithread-mm`);
/// `RBA_BENCH_TRACT_THREADS` overrides the count.
pub fn tract_threads(threads: usize) {
    use tract_linalg::multithread::{set_default_executor, Executor};
    let threads = std::env::var("RBA_BENCH_TRACT_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(threads);
    set_default_executor(if threads > 1 { Executor::multithread(threads) } else { Executor::SingleThread });
}

/// The median of `v` (sorted in place).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// MACs per image of `model` at batch 1 (the host's cost model).
pub fn macs(model: &OnnxModel) -> u64 {
    use rba_host::model::cost::total_macs;
    use rba_host::model::run::tensor_shapes;
    use rba_host::onnx::graph::GraphIndex;
    let index = GraphIndex::new(model.graph()).unwrap();
    total_macs(model.graph(), &index, &tensor_shapes(model, 1).unwrap())
}

/// The original model and variants with 1, 2 and 4 consecutive middle
/// blocks replaced by one `D x D` linear map (an identity-initialised
/// translator, a MatMul), as the compacted bench builds them.
pub fn compacted_variants(model: &Model) -> Vec<(String, OnnxModel)> {
    use rba_host::compact::surgery::{replace_spans, Span, Translator};
    let blocks = model.blocks.blocks.len();
    let mut variants = vec![("original".to_string(), model.onnx.clone())];
    for k in [1usize, 2, 4].into_iter().filter(|&k| k < blocks) {
        let start = (blocks - k) / 2;
        let span = Span::new(start, start + k);
        let d = model.blocks.blocks[start].features().unwrap();
        let mut weight = vec![0f32; d * d];
        for i in 0..d {
            weight[i * d + i] = 1.0;
        }
        let slim =
            replace_spans(&model.onnx, &model.blocks, &[(span, Translator::Linear { weight, bias: None })]).unwrap();
        variants.push((format!("{k} block(s) removed (span {span})"), slim));
    }
    variants
}
