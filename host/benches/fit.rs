//! Fit benchmark: fitting one span's linear map from raw tokens (streaming
//! statistics + solve, `rba_host::fit`) against `numpy.linalg.lstsq` on the
//! same tokens (what the paper's code does), and the solve from statistics
//! alone against numpy's solve of the same normal equations, all in the same
//! run: `cargo bench -p rba-host --bench fit --profile dev`.
//! `RBA_BENCH_TOKENS` (default 20000) and `RBA_BENCH_DIMS` (default 384,768)
//! set the sizes; `RBA_BENCH_THREADS` the threads of both sides.

#![allow(clippy::unwrap_used)] // a benchmark may panic

use std::io::Write;
use std::time::Instant;

use faer::Par;
use rba_host::fit::{fit, Cross, FitKind, Moments};
use rba_testkit::bench::*;

/// Tokens like a residual stream: `Y = X (I + 0.1 W) + 0.01 noise`, so the
/// fit is well posed but not exact.
fn tokens(n: usize, d: usize) -> (Vec<f32>, Vec<f32>) {
    let x: Vec<f32> = random_batch(&[n, d], 1).iter().map(|v| v - 0.5).collect();
    let w: Vec<f32> = random_batch(&[d, d], 2).iter().map(|v| 0.1 * (v - 0.5)).collect();
    let noise = random_batch(&[n, d], 3);
    let mut y = vec![0f32; n * d];
    for r in 0..n {
        let (xr, yr) = (&x[r * d..(r + 1) * d], &mut y[r * d..(r + 1) * d]);
        yr.copy_from_slice(xr);
        for (k, &xv) in xr.iter().enumerate() {
            for (yv, &wv) in yr.iter_mut().zip(&w[k * d..(k + 1) * d]) {
                *yv += xv * wv;
            }
        }
        for (yv, nv) in yr.iter_mut().zip(noise.iter().skip(r * d)) {
            *yv += 0.01 * (nv - 0.5);
        }
    }
    (x, y)
}

/// rba's path: statistics over the tokens in capture-sized chunks, then the solve.
fn rba_fit(x: &[f32], y: &[f32], d: usize, par: Par) -> (f64, f64, Moments, Moments, Cross) {
    let t = Instant::now();
    let (mut mx, mut my, mut c) = (Moments::new(d), Moments::new(d), Cross::new(d, d));
    let chunk = 2048 * d;
    for (xc, yc) in x.chunks(chunk).zip(y.chunks(chunk)) {
        mx.update(xc, par);
        my.update(yc, par);
        c.update(xc, yc, par);
    }
    let f = fit(FitKind::Linear, &mx, &my, &c).unwrap();
    (t.elapsed().as_secs_f64(), f.relative_residual, mx, my, c)
}

fn main() {
    if !run_as_bench("fit") {
        return;
    }
    let threads = threads();
    let par = if threads > 1 { Par::rayon(threads) } else { Par::Seq };
    let n: usize = std::env::var("RBA_BENCH_TOKENS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let dims: Vec<usize> = std::env::var("RBA_BENCH_DIMS")
        .unwrap_or_else(|_| "384,768".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    for &d in &dims {
        let (x, y) = tokens(n, d);
        let file = std::env::temp_dir().join(format!("rba-bench-tokens-{}-{d}.f32", std::process::id()));
        {
            let mut f = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
            for v in x.iter().chain(&y) {
                f.write_all(&v.to_le_bytes()).unwrap();
            }
        }
        let (mut best, mut rel, mut stats) = (f64::INFINITY, 0.0, None);
        for _ in 0..3 {
            let (t, r, mx, my, c) = rba_fit(&x, &y, d, par);
            if t < best {
                (best, rel) = (t, r);
            }
            stats = Some((mx, my, c));
        }
        let (mx, my, c) = stats.unwrap();
        let solve = (0..3)
            .map(|_| {
                let t = Instant::now();
                fit(FitKind::Linear, &mx, &my, &c).unwrap();
                t.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min);
        std::env::set_var("OPENBLAS_NUM_THREADS", threads.to_string());
        std::env::set_var("OMP_NUM_THREADS", threads.to_string());
        let args =
            vec![script("lstsq.py").display().to_string(), file.display().to_string(), n.to_string(), d.to_string()];
        let py = run_python_json(&args).and_then(|text| {
            let get = |k: &str| json_number(&text, k).ok_or(format!("no '{k}' in the output"));
            Ok((get("lstsq_s")?, (get("solve_s")?, get("relative_residual")?)))
        });
        let _ = std::fs::remove_file(&file);
        println!("D={d}, {n} tokens, {threads} threads: rba 1-R^2 {rel:.6}");
        match py {
            Ok((lstsq, (solve_np, rel_np))) => {
                println!("  numpy lstsq 1-R^2 {rel_np:.6}");
                row(
                    &format!("fit D={d}, {n} tokens: rba statistics + solve vs numpy.linalg.lstsq (speedup)"),
                    &format!("{:.1} ms", 1e3 * best),
                    &format!("{:.1} ms", 1e3 * lstsq),
                    lstsq / best,
                    ">= 20",
                    Some(lstsq / best >= 20.0),
                );
                row(
                    &format!("fit D={d}: solve from statistics alone vs numpy.linalg.solve of the same f64 normal equations (speedup)"),
                    &format!("{:.1} ms", 1e3 * solve),
                    &format!("{:.1} ms", 1e3 * solve_np),
                    solve_np / solve,
                    if d == 768 { "< 100 ms" } else { "-" },
                    (d == 768).then_some(solve < 0.1),
                );
            }
            Err(why) => note(&format!("fit D={d}: numpy baseline skipped: {why}")),
        }
    }
}
