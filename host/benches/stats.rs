//! Statistics files benchmark, through the `rba` binary, every figure
//! against a baseline measured in the same run:
//! - `analyze` + `compact` with one capture (`rba calibrate` once, then
//!   `--stats`) against the two captures they make on their own, and
//!   whether both write the same compacted model (demo ViT: 3 interleaved
//!   rounds, best of each; ViT-S: one round, `--spans 1..2` on 16 held-out
//!   images, a timing figure: its first output is not a classifier's);
//! - four `rba calibrate --shard I/4` processes at once (one thread each)
//!   against the one-shot capture, the time `rba stats merge` takes, and
//!   whether the merged statistics equal the one-shot ones (every sum,
//!   relative 1e-12, and bit for bit).
//!
//! `cargo bench -p rba-host --bench stats --profile dev` runs it on the demo
//! ViT; `RBA_BENCH_MODELS=vit_s_focus.onnx` adds the shard figures on the
//! ViT-S (64 digits upscaled to 224x224, batch 8: one round, a capture takes
//! about a minute); `RBA_BENCH_THREADS` the one-shot's threads (default: all
//! cores). `bash bench/run` runs it with the real ViT-S.

#![allow(clippy::unwrap_used)] // a benchmark may panic

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use rba_host::calibrate::file::StatsFile;
use rba_host::report::text::format_bytes;
use rba_testkit::bench::*;

const RBA: &str = env!("CARGO_BIN_EXE_rba");

fn rba(args: &[&str]) -> Command {
    let mut cmd = Command::new(RBA);
    cmd.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
    for v in ["JOB_COMPLETION_INDEX", "RBA_SHARDS", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"] {
        cmd.env_remove(v);
    }
    cmd
}

fn wait(cmd: &str, child: Child) {
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Seconds a command takes.
fn timed(args: &[&str]) -> f64 {
    let t = Instant::now();
    wait(&args.join(" "), rba(args).spawn().unwrap());
    t.elapsed().as_secs_f64()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// analyze + compact with two captures vs one capture and two `--stats`:
/// `calibration` the model and calibration flags, `calibrate` what `rba
/// calibrate` adds (e.g. `--no-fold` when the translator needs none),
/// `compact` the budget and translator.
fn one_capture_vs_two(
    dir: &Path,
    name: &str,
    calibration: &[&str],
    calibrate: &[&str],
    compact: &[&str],
    threads: &str,
    rounds: usize,
) {
    let stats = dir.join(format!("{name}.bin"));
    let data = [calibration, &["--threads", threads]].concat();
    let (mut two, mut one, mut cal) = (f64::INFINITY, f64::INFINITY, f64::INFINITY);
    let (a_two, c_two) = (dir.join(format!("{name}-analysis-two")), dir.join(format!("{name}-two.onnx")));
    let (a_one, c_one) = (dir.join(format!("{name}-analysis-one")), dir.join(format!("{name}-one.onnx")));
    for _round in 0..rounds {
        let t = timed(&[&["analyze"][..], &data, &["--out", p(&a_two)]].concat())
            + timed(&[&["compact"][..], &data, compact, &["--out", p(&c_two)]].concat());
        two = two.min(t);
        let c = timed(&[&["calibrate"][..], &data, calibrate, &["--out", p(&stats)]].concat());
        let t = c
            + timed(&[&["analyze"][..], &data, &["--stats", p(&stats), "--out", p(&a_one)]].concat())
            + timed(&[&["compact"][..], &data, compact, &["--stats", p(&stats), "--out", p(&c_one)]].concat());
        cal = cal.min(c);
        one = one.min(t);
    }
    let same = std::fs::read(&c_one).unwrap() == std::fs::read(&c_two).unwrap();
    let how = if rounds > 1 { format!("best of {rounds} interleaved rounds") } else { "one round".into() };
    println!("{name}: analyze + compact ({}), {how}; rba calibrate alone {cal:.2} s", compact.join(" "));
    let images = calibration.iter().position(|a| *a == "--samples").map_or("500", |k| calibration[k + 1]);
    row(
        &format!(
            "analyze + compact {name} ({images} images, {}): calibrate once, then --stats twice, vs two captures (speedup)",
            compact.join(" ")
        ),
        &format!("{one:.2} s"),
        &format!("{two:.2} s"),
        two / one,
        "-",
        None,
    );
    row(
        &format!("same, {name}: the compacted models of both ways are the same bytes"),
        if same { "same bytes" } else { "differ" },
        "-",
        f64::from(u8::from(same)),
        "same",
        Some(same),
    );
}

/// Four concurrent shard processes vs the one-shot capture; merge time and
/// equality.
fn shards(dir: &Path, name: &str, calibration: &[&str], threads: &str, rounds: usize) {
    let one_shot = dir.join(format!("{name}-one.bin"));
    let shard_files: Vec<PathBuf> = (0..4).map(|i| dir.join(format!("{name}-shard-{i}.bin"))).collect();
    let merged = dir.join(format!("{name}-merged.bin"));
    let (mut one, mut four, mut merge) = (f64::INFINITY, f64::INFINITY, f64::INFINITY);
    for _round in 0..rounds {
        one =
            one.min(timed(&[&["calibrate"][..], calibration, &["--threads", threads, "--out", p(&one_shot)]].concat()));
        let t = Instant::now();
        let children: Vec<Child> = shard_files
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let shard = format!("{i}/4");
                rba(&[&["calibrate"][..], calibration, &["--threads", "1", "--shard", &shard, "--out", p(f)]].concat())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for c in children {
            wait("rba calibrate --shard", c);
        }
        four = four.min(t.elapsed().as_secs_f64());
        let files: Vec<&str> = shard_files.iter().map(|f| p(f)).collect();
        merge = merge.min(timed(&[&["stats", "merge"][..], &files, &["--out", p(&merged)]].concat()));
    }
    let (a, b) = (StatsFile::read(&one_shot).unwrap().statistics, StatsFile::read(&merged).unwrap().statistics);
    let (mut worst, mut differ, mut total) = (0f64, 0usize, 0usize);
    for ((_, x), (_, y)) in a.named_sums().iter().zip(&b.named_sums()) {
        for (&u, &v) in x.iter().zip(y) {
            let scale = u.abs().max(v.abs());
            worst = worst.max(if scale == 0.0 { 0.0 } else { (u - v).abs() / scale });
            differ += usize::from(u.to_bits() != v.to_bits());
            total += 1;
        }
    }
    let size = std::fs::metadata(&shard_files[0]).map_or(0, |m| m.len());
    let images = a.images;
    let how = if rounds > 1 { format!("best of {rounds}") } else { "one round".into() };
    println!("{name}: {images} images, 4 shards, {how}");
    row(
        &format!("calibrate {name} ({images} images): 4 concurrent shard processes (1 thread each) vs one-shot ({threads} threads), wall time (speedup)"),
        &format!("{four:.2} s"),
        &format!("{one:.2} s"),
        one / four,
        "-",
        None,
    );
    row(
        &format!("stats merge {name}: 4 shard files of {} vs the one-shot capture", format_bytes(size)),
        &format!("{merge:.2} s"),
        &format!("{one:.2} s"),
        merge / one,
        "-",
        None,
    );
    row(
        &format!("merged vs one-shot statistics {name}: largest relative difference over {total} sums ({differ} not bit-identical)"),
        &format!("{worst:.1e}"),
        "1e-12",
        worst,
        "<= 1e-12",
        Some(worst <= 1e-12),
    );
}

fn main() {
    if !run_as_bench("stats") {
        return;
    }
    let threads = threads().to_string();
    let dir = tempfile::tempdir().unwrap();
    let demo = ["demo:vit", "--data", "demo"];
    one_capture_vs_two(dir.path(), "demo ViT", &demo, &[], &["--remove", "2", "--translator", "folded"], &threads, 3);
    shards(dir.path(), "demo ViT", &demo, &threads, 3);
    if let Ok(extra) = std::env::var("RBA_BENCH_MODELS") {
        for model in extra.split(',').filter(|s| !s.is_empty()) {
            let calibration =
                [model, "--data", "demo", "--size", "224", "--scale", "1/16", "--samples", "64", "--batch", "8"];
            // A timing figure: the model's first output stands in for logits.
            let compact = ["--spans", "1..2", "--translator", "linear", "--held-out-samples", "16"];
            one_capture_vs_two(dir.path(), &label(model), &calibration, &["--no-fold"], &compact, &threads, 1);
            shards(dir.path(), &label(model), &calibration, &threads, 1);
        }
    }
}
