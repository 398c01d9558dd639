//! Compacted-model speedup: host latency of the original model against the
//! model with 1, 2 and 4 blocks replaced by one linear map (the paper's
//! translator, a `D x D` MatMul), measured interleaved in the same run, and
//! compared with the ideal speedup from MACs (translator MACs counted):
//! `cargo bench -p rba-host --bench compacted --profile dev`.
//! `RBA_BENCH_MODELS=vit_s.onnx` adds models, `RBA_BENCH_THREADS` sets
//! tract's threads, `RBA_BENCH_LATENCY_BATCH` (default 1) the batch.

#![allow(clippy::unwrap_used)] // a benchmark may panic

use std::time::Instant;

use rba_host::model::run::{input_shape, Runner};
use rba_testkit::bench::*;

fn main() {
    if !run_as_bench("compacted") {
        return;
    }
    let threads = threads();
    tract_threads(threads);
    let batch: usize = std::env::var("RBA_BENCH_LATENCY_BATCH").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let specs = model_specs();
    for spec in &specs {
        let model = load(spec);
        let name = label(spec);
        let variants = compacted_variants(&model);
        let runners: Vec<Runner> = variants.iter().map(|(_, m)| Runner::new(m, batch, &[]).unwrap()).collect();
        let input = random_batch(&input_shape(&model.onnx, batch).unwrap(), 7);
        // Warm-up, then rounds interleaved across the variants so drift hits all alike.
        for r in &runners {
            r.run(input.clone()).unwrap();
        }
        let per_run = {
            let t = Instant::now();
            runners[0].run(input.clone()).unwrap();
            t.elapsed().as_secs_f64()
        };
        let rounds = ((8.0 / (per_run * runners.len() as f64)) as usize).clamp(15, 400);
        let mut samples = vec![Vec::with_capacity(rounds); runners.len()];
        for _ in 0..rounds {
            for (r, s) in runners.iter().zip(samples.iter_mut()) {
                let x = input.clone();
                let t = Instant::now();
                r.run(x).unwrap();
                s.push(t.elapsed().as_secs_f64());
            }
        }
        let medians: Vec<f64> = samples.iter_mut().map(|s| median(s)).collect();
        let macs: Vec<u64> = variants.iter().map(|(_, m)| macs(m)).collect();
        println!(
            "{name}: batch {batch}, {threads} threads, {rounds} interleaved rounds; original {:.3} ms, {:.2} GMACs",
            1e3 * medians[0],
            macs[0] as f64 / 1e9
        );
        for i in 1..variants.len() {
            let measured = medians[0] / medians[i];
            let ideal = macs[0] as f64 / macs[i] as f64;
            row(
                &format!("compacted {name}, {}: measured speedup vs ideal from MACs", variants[i].0),
                &format!("{measured:.3}x ({:.3} ms)", 1e3 * medians[i]),
                &format!("{ideal:.3}x ({:.3} ms original)", 1e3 * medians[0]),
                measured / ideal,
                ">= 0.9",
                Some(measured / ideal >= 0.9),
            );
        }
    }
}
