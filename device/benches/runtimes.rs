//! tract against onnxruntime on this machine (the `local` board's
//! runtimes, through rba-device's runtime layer, as a job runs them): the
//! demo ViT (and `RBA_BENCH_MODELS`, e.g. the ViT-S) at batch 1, the
//! original and variants with 1, 2 and 4 middle blocks replaced by one
//! linear map, every (variant, runtime) pair measured in interleaved rounds
//! in one process. Rows: onnxruntime's latency against tract's per variant,
//! and each runtime's measured speedup of a compacted variant against the
//! ideal from MACs: `cargo bench -p rba-device --bench runtimes --profile
//! dev`. The onnxruntime library is python's package's (`pip install
//! onnxruntime`); without it the onnxruntime rows are skipped with a note.
//! `RBA_BENCH_THREADS` sets both runtimes' threads.

#![allow(clippy::unwrap_used)] // a benchmark may panic

use std::time::Instant;

use rba_device::runtime::{LoadedModel, OrtSetup, Prepared, Runtime};
use rba_protocol::RuntimeRequest;
use rba_testkit::bench::*;

struct Arm {
    variant: usize,
    runtime: &'static str,
    model: LoadedModel,
    input: Prepared,
    samples: Vec<f64>,
}

fn main() {
    if !run_as_bench("runtimes") {
        return;
    }
    let threads = threads();
    tract_threads(threads);
    let cache = tempfile::tempdir().unwrap();
    let ort = match rba_testkit::onnxruntime::library() {
        Ok(library) => Some(Runtime::OnnxRuntime(OrtSetup {
            library,
            request: RuntimeRequest::onnxruntime(vec![], None),
            profile: Default::default(),
            cache_dir: cache.path().to_path_buf(),
            no_spinning: false,
        })),
        Err(why) => {
            note(&format!("tract vs onnxruntime skipped: {why}"));
            None
        }
    };
    let specs = model_specs();
    for spec in &specs {
        let model = load(spec);
        let name = label(spec);
        let variants = compacted_variants(&model);
        let macs: Vec<u64> = variants.iter().map(|(_, m)| macs(m)).collect();
        let mut runtimes: Vec<(&'static str, Runtime)> = vec![("tract", Runtime::Tract)];
        if let Some(o) = &ort {
            runtimes.push(("onnxruntime", o.clone()));
        }
        let mut arms = Vec::new();
        for (v, (_, onnx)) in variants.iter().enumerate() {
            let bytes = onnx.to_bytes();
            for (rname, runtime) in &runtimes {
                let mut model = runtime.load(&bytes, 1, None, threads as u32).unwrap();
                let input = model.synthetic_inputs(7).unwrap();
                let t = Instant::now();
                model.run(&input).unwrap();
                model.finish_first_run(t.elapsed().as_nanos() as u64).unwrap();
                arms.push(Arm { variant: v, runtime: rname, model, input, samples: Vec::new() });
            }
        }
        // Warm-up, then rounds interleaved across every arm.
        for a in &arms {
            for _ in 0..3 {
                a.model.run(&a.input).unwrap();
            }
        }
        let per_round = {
            let t = Instant::now();
            for a in &arms {
                a.model.run(&a.input).unwrap();
            }
            t.elapsed().as_secs_f64()
        };
        let rounds = ((20.0 / per_round) as usize).clamp(15, 400);
        for _ in 0..rounds {
            for a in arms.iter_mut() {
                let t = Instant::now();
                a.model.run(&a.input).unwrap();
                a.samples.push(t.elapsed().as_secs_f64());
            }
        }
        let medians: Vec<f64> = arms.iter_mut().map(|a| median(&mut a.samples)).collect();
        let med = |v: usize, r: &str| -> Option<f64> {
            arms.iter().zip(&medians).find(|(a, _)| a.variant == v && a.runtime == r).map(|(_, m)| *m)
        };
        let report = |r: &str| arms.iter().find(|a| a.runtime == r).map(|a| a.model.report().clone());
        if let Some(rep) = report("onnxruntime") {
            println!(
                "{name}: {}, nodes {}; tract nodes {}",
                rep.version,
                rep.nodes_text(),
                report("tract").map(|t| t.nodes_text()).unwrap_or_default()
            );
        }
        println!("{name}: batch 1, {threads} threads, {rounds} interleaved rounds of {} arms", arms.len());
        for (v, (vname, _)) in variants.iter().enumerate() {
            if let (Some(t), Some(o)) = (med(v, "tract"), med(v, "onnxruntime")) {
                row(
                    &format!("runtimes {name} ({vname}): onnxruntime latency vs tract ({threads} threads, batch 1)"),
                    &format!("{:.3} ms", 1e3 * o),
                    &format!("{:.3} ms", 1e3 * t),
                    o / t,
                    "-",
                    None,
                );
            }
        }
        for r in ["tract", "onnxruntime"] {
            let Some(base) = med(0, r) else { continue };
            for v in 1..variants.len() {
                let Some(m) = med(v, r) else { continue };
                let measured = base / m;
                let ideal = macs[0] as f64 / macs[v] as f64;
                row(
                    &format!("compacted {name}, {} under {r}: measured speedup vs ideal from MACs", variants[v].0),
                    &format!("{measured:.3}x ({:.3} ms)", 1e3 * m),
                    &format!("{ideal:.3}x ({:.3} ms original)", 1e3 * base),
                    measured / ideal,
                    ">= 0.9",
                    Some(measured / ideal >= 0.9),
                );
            }
        }
    }
}
