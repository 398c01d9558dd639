//! Statistics files end to end through the `rba` binary (host/STATS.md):
//! `rba calibrate` one-shot and in four concurrent shard processes, `rba
//! stats merge`, `analyze`/`compact --stats`, and the refusals.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use rba_host::calibrate::file::StatsFile;
use rba_host::calibrate::Statistics;

const RBA: &str = env!("CARGO_BIN_EXE_rba");
/// Every scheduler variable `--shard auto` reads, removed from the children
/// so a test machine that is itself a Slurm task does not leak into them.
const SCHEDULER_VARS: [&str; 7] = [
    "JOB_COMPLETION_INDEX",
    "RBA_SHARDS",
    "SLURM_ARRAY_TASK_ID",
    "SLURM_ARRAY_TASK_COUNT",
    "SLURM_ARRAY_TASK_MIN",
    "SLURM_ARRAY_TASK_MAX",
    "SLURM_ARRAY_TASK_STEP",
];

fn rba(args: &[&str]) -> Command {
    let mut cmd = Command::new(RBA);
    cmd.args(args);
    for v in SCHEDULER_VARS {
        cmd.env_remove(v);
    }
    cmd
}

fn run(mut cmd: Command) -> Output {
    let out = cmd.output().expect("run rba");
    assert!(
        out.status.success(),
        "{:?} failed:\n{}{}",
        cmd,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a command that must fail and returns its stderr.
fn fails(mut cmd: Command) -> String {
    let out = cmd.output().expect("run rba");
    assert!(!out.status.success(), "{cmd:?} succeeded:\n{}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The demo ViT's statistics, captured once for all tests: one-shot, as
/// four shards by four concurrent processes, and the shards merged.
struct Captures {
    dir: tempfile::TempDir,
    one_shot: PathBuf,
    shards: Vec<PathBuf>,
    merged: PathBuf,
}

fn captures() -> &'static Captures {
    static CAPTURES: OnceLock<Captures> = OnceLock::new();
    CAPTURES.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let one_shot = dir.path().join("one-shot.bin");
        // The one-shot capture with all cores, the shards single-threaded:
        // thread counts must not change the statistics either.
        let mut children: Vec<(Command, std::process::Child)> = (0..4)
            .map(|i| {
                let out = dir.path().join(format!("shard-{i}.bin"));
                let shard = format!("{i}/4");
                let mut cmd = rba(&["calibrate", "demo:vit", "--data", "demo", "--threads", "1", "--shard", &shard]);
                cmd.arg("--out").arg(&out);
                let child = cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn();
                (cmd, child.unwrap())
            })
            .collect();
        run({
            let mut c = rba(&["calibrate", "demo:vit", "--data", "demo", "--out"]);
            c.arg(&one_shot);
            c
        });
        for (cmd, child) in children.drain(..) {
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        let shards: Vec<PathBuf> = (0..4).map(|i| dir.path().join(format!("shard-{i}.bin"))).collect();
        let merged = dir.path().join("merged.bin");
        // Out of order on purpose.
        let mut merge = rba(&["stats", "merge"]);
        merge.args([&shards[2], &shards[0], &shards[3], &shards[1]]).arg("--out").arg(&merged);
        let out = run(merge);
        assert!(String::from_utf8_lossy(&out.stdout).contains("500 images (all 4 shards of 500 calibration images"));
        Captures { dir, one_shot, shards, merged }
    })
}

/// Compares every sum of two captures: relative difference at most `rel`
/// (against the larger magnitude); returns (the largest relative
/// difference, the number of values not equal bit for bit, values).
fn compare(a: &Statistics, b: &Statistics, rel: f64) -> (f64, usize, usize) {
    let (x, y) = (a.named_sums(), b.named_sums());
    assert_eq!(x.len(), y.len(), "the same statistics");
    let (mut worst, mut differ, mut total) = (0f64, 0, 0);
    for ((name, u), (other, v)) in x.iter().zip(&y) {
        assert_eq!(name, other);
        assert_eq!(u.len(), v.len(), "{name}");
        for (k, (&p, &q)) in u.iter().zip(v).enumerate() {
            let scale = p.abs().max(q.abs());
            let d = if scale == 0.0 { 0.0 } else { (p - q).abs() / scale };
            assert!(d <= rel, "{name}[{k}]: {p} vs {q} (relative {d:e})");
            worst = worst.max(d);
            differ += usize::from(p.to_bits() != q.to_bits());
            total += 1;
        }
    }
    (worst, differ, total)
}

#[test]
fn four_concurrent_shards_merge_to_the_one_shot_statistics() {
    let c = captures();
    let one = StatsFile::read(&c.one_shot).unwrap();
    let merged = StatsFile::read(&c.merged).unwrap();
    assert_eq!(one.statistics.images, 500);
    assert_eq!(merged.statistics.images, 500);
    let shard_images: Vec<usize> = c.shards.iter().map(|p| StatsFile::read(p).unwrap().statistics.images).collect();
    assert_eq!(shard_images, vec![128, 128, 128, 116], "groups of 128 images (8 batches of 16), round robin");
    // The provenance agrees but for the shards held.
    let (mut a, b) = (one.provenance.clone(), merged.provenance.clone());
    a.shards = b.shards.clone();
    assert_eq!(a, b);
    assert!(b.shards.is_complete() && b.shards.count == 4);
    // Every sum at relative 1e-12 ...
    let (worst, differ, total) = compare(&one.statistics, &merged.statistics, 1e-12);
    println!("{total} sums: largest relative difference {worst:e}, {differ} not bit-identical");
    // ... and, the sums being compensated, bit for bit.
    assert_eq!(differ, 0, "largest relative difference {worst:e}");
}

#[test]
fn compact_from_merged_statistics_writes_the_model_compact_from_images_writes() {
    let c = captures();
    let out = c.dir.path();
    let (from_images, from_stats) = (out.join("images.onnx"), out.join("stats.onnx"));
    let args = ["compact", "demo:vit", "--data", "demo", "--remove", "2", "--translator", "folded", "--out"];
    run({
        let mut cmd = rba(&args);
        cmd.arg(&from_images);
        cmd
    });
    let o = run({
        let mut cmd = rba(&args);
        cmd.arg(&from_stats).arg("--stats").arg(&c.merged);
        cmd
    });
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("statistics from ") && stderr.contains("all 4 shards"), "{stderr}");
    let (a, b) = (std::fs::read(&from_images).unwrap(), std::fs::read(&from_stats).unwrap());
    assert!(a == b, "the compacted models differ ({} vs {} bytes)", a.len(), b.len());
    let report = |p: &Path| {
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(p.with_extension("report.json")).unwrap()).unwrap();
        v["output"] = serde_json::Value::Null;
        // The default cache budget is a share of the memory available at the time.
        v["verification"]["cache"]["budget"] = serde_json::Value::Null;
        v
    };
    assert_eq!(
        report(&from_images),
        report(&from_stats),
        "the reports too (but for the output's path and cache budget)"
    );
}

#[test]
fn analyze_from_a_file_of_longer_spans_reports_what_a_capture_reports() {
    let c = captures();
    let (a, b) = (c.dir.path().join("analysis-images"), c.dir.path().join("analysis-stats"));
    run({
        let mut cmd = rba(&["analyze", "demo:vit", "--data", "demo", "--out"]);
        cmd.arg(&a);
        cmd
    });
    // The file holds spans of up to 4 blocks; analyze scores up to 3.
    run({
        let mut cmd = rba(&["analyze", "demo:vit", "--data", "demo", "--out"]);
        cmd.arg(&b).arg("--stats").arg(&c.one_shot);
        cmd
    });
    let json = |d: &Path| {
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(d.join("report.json")).unwrap()).unwrap();
        v["seconds"] = serde_json::Value::Null;
        v
    };
    let (x, y) = (json(&a), json(&b));
    assert_eq!(x["spans"].as_array().map(Vec::len), Some(33));
    assert_eq!(x, y);
}

#[test]
fn a_file_from_another_capture_is_refused_naming_what_differs() {
    let c = captures();
    let stats = s(&c.one_shot);
    let name = c.one_shot.display().to_string();
    let compact = |extra: &[&str]| {
        let mut cmd = rba(&["compact", "--remove", "1", "--stats", stats]);
        cmd.args(extra).arg("--out").arg(c.dir.path().join("refused.onnx"));
        cmd
    };
    // Another model.
    let err = fails(compact(&["demo:resnet", "--data", "demo"]));
    assert!(
        err.contains(&format!("{name} was captured from a model with SHA-256 3ae0103f464b… (demo:vit), this is ")),
        "{err}"
    );
    assert!(err.trim_end().ends_with("(demo:resnet): another model"), "{err}");
    // Other boundaries: every other one of the demo ViT's.
    let one = StatsFile::read(&c.one_shot).unwrap();
    let every_other: Vec<String> = one.provenance.boundaries.iter().step_by(2).cloned().collect();
    let err = fails(compact(&["demo:vit", "--data", "demo", "--boundaries", &every_other.join(",")]));
    assert!(err.contains(&format!("{name} was captured at other boundaries: boundary 1 is")), "{err}");
    // Other preprocessing.
    let err = fails(compact(&["demo:vit", "--data", "demo", "--scale", "1/8"]));
    assert!(
        err.contains("was captured with other preprocessing: scale 0.0625 vs 0.125 (the file's vs this command's)"),
        "{err}"
    );
    // Other calibration images.
    let err = fails(compact(&["demo:vit", "--data", "demo", "--seed", "1"]));
    assert!(err.contains("was captured on other calibration images: --seed 0 vs 1"), "{err}");
    // Longer spans than the file holds.
    let err = fails(compact(&["demo:vit", "--data", "demo", "--max-span", "5"]));
    assert!(err.contains("holds spans of up to 4 blocks, this needs 5 (--max-span)"), "{err}");
    // A shard alone.
    let err = fails({
        let mut cmd = rba(&["analyze", "demo:vit", "--data", "demo", "--stats", s(&c.shards[1]), "--out"]);
        cmd.arg(c.dir.path().join("refused"));
        cmd
    });
    assert!(err.contains("holds shard 1/4 of the calibration images") && err.contains("(missing 0, 2, 3)"), "{err}");
    assert!(!c.dir.path().join("refused.onnx").exists() && !c.dir.path().join("refused").exists());
}

#[test]
fn a_file_without_fold_statistics_serves_linear_but_not_folded_translators() {
    let c = captures();
    let no_fold = c.dir.path().join("no-fold.bin");
    run({
        let mut cmd = rba(&["calibrate", "demo:vit", "--data", "demo", "--no-fold", "--max-span", "2", "--out"]);
        cmd.arg(&no_fold);
        cmd
    });
    let compact = |translator: &str| {
        let mut cmd = rba(&["compact", "demo:vit", "--data", "demo", "--spans", "9..10", "--max-span", "2"]);
        cmd.args(["--translator", translator, "--stats", s(&no_fold), "--out"]).arg(c.dir.path().join("nf.onnx"));
        cmd
    };
    run(compact("linear"));
    let err = fails(compact("folded"));
    assert!(err.contains("holds no fold statistics (captured with --no-fold)"), "{err}");
    // The no-fold file's spans equal the one-shot file's (fold statistics are separate).
    let (a, mut b) = (StatsFile::read(&no_fold).unwrap().statistics, StatsFile::read(&c.one_shot).unwrap().statistics);
    b.restrict_spans(2);
    b.drop_branches();
    assert_eq!(compare(&a, &b, 0.0).1, 0);
}

#[test]
fn truncated_or_corrupted_files_are_refused() {
    let c = captures();
    let bytes = std::fs::read(&c.one_shot).unwrap();
    let analyze = |file: &Path| {
        let mut cmd = rba(&["analyze", "demo:vit", "--data", "demo", "--stats", s(file), "--out"]);
        cmd.arg(c.dir.path().join("damaged"));
        cmd
    };
    let truncated = c.dir.path().join("truncated.bin");
    std::fs::write(&truncated, &bytes[..bytes.len() - 4096]).unwrap();
    let err = fails(analyze(&truncated));
    assert!(
        err.contains(&format!(
            "{} is truncated (expected {} bytes, found {})",
            truncated.display(),
            bytes.len(),
            bytes.len() - 4096
        )),
        "{err}"
    );
    let corrupted = c.dir.path().join("corrupted.bin");
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 3] ^= 0x01;
    std::fs::write(&corrupted, &flipped).unwrap();
    let err = fails(analyze(&corrupted));
    assert!(err.contains(&format!("{}: checksum mismatch", corrupted.display())), "{err}");
    assert!(err.contains("(the file is corrupted)"), "{err}");
    let not_stats = c.dir.path().join("model.onnx");
    std::fs::write(&not_stats, rba_host::demo::VIT_ONNX).unwrap();
    let err = fails(analyze(&not_stats));
    assert!(err.contains("is not an rba statistics file"), "{err}");
    // Merging refuses them as well.
    let err = fails({
        let mut cmd = rba(&["stats", "merge", s(&c.shards[0]), s(&truncated), "--out"]);
        cmd.arg(c.dir.path().join("m.bin"));
        cmd
    });
    assert!(err.contains("is truncated"), "{err}");
}

#[test]
fn merge_names_missing_shards_and_refuses_duplicates() {
    let c = captures();
    let out = c.dir.path().join("partial.bin");
    let merge = |files: &[&PathBuf], extra: &[&str]| {
        let mut cmd = rba(&["stats", "merge"]);
        cmd.args(files).args(extra).arg("--out").arg(&out);
        cmd
    };
    let err = fails(merge(&[&c.shards[0], &c.shards[2]], &[]));
    assert!(err.contains("shard(s) 1, 3 of 4 are missing"), "{err}");
    assert!(!out.exists());
    let err = fails(merge(&[&c.shards[0], &c.shards[1], &c.shards[0]], &[]));
    assert!(err.contains("both hold shard 0/4: merging both would count its images twice"), "{err}");
    // A partial merge can be written, and completed later.
    let o = run(merge(&[&c.shards[0], &c.shards[2]], &["--allow-partial"]));
    assert!(String::from_utf8_lossy(&o.stderr).contains("warning: writing a partial merge"));
    let rest = c.dir.path().join("rest.bin");
    run({
        let mut cmd = rba(&["stats", "merge", s(&c.shards[3]), s(&c.shards[1]), "--allow-partial", "--out"]);
        cmd.arg(&rest);
        cmd
    });
    let all = c.dir.path().join("two-level.bin");
    run({
        let mut cmd = rba(&["stats", "merge", s(&out), s(&rest), "--out"]);
        cmd.arg(&all);
        cmd
    });
    let (a, b) = (StatsFile::read(&all).unwrap().statistics, StatsFile::read(&c.one_shot).unwrap().statistics);
    assert_eq!(compare(&a, &b, 1e-12).1, 0, "a two-level merge is the one-shot capture too");
    // Shards of another capture (another --samples) do not merge.
    let other = c.dir.path().join("other-shard.bin");
    run({
        let mut cmd = rba(&["calibrate", "demo:vit", "--data", "demo", "--samples", "200", "--shard", "1/4", "--out"]);
        cmd.arg(&other);
        cmd
    });
    let err = fails(merge(&[&c.shards[0], &other], &[]));
    assert!(
        err.contains("were captured on other calibration images: 500 vs 200 images, --samples 500 vs 200"),
        "{err}"
    );
}

#[test]
fn shard_auto_reads_kubernetes_and_slurm_variables() {
    let c = captures();
    let auto = |env: &[(&str, &str)], extra: &[&str], out: &Path| {
        let mut cmd = rba(&["calibrate", "demo:vit", "--data", "demo", "--threads", "1", "--shard", "auto"]);
        cmd.args(extra).arg("--out").arg(out);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    };
    let same_as = |file: &Path, shard: &Path| {
        let (a, b) = (StatsFile::read(file).unwrap(), StatsFile::read(shard).unwrap());
        assert_eq!(a.provenance, b.provenance);
        assert_eq!(compare(&a.statistics, &b.statistics, 0.0).1, 0);
    };
    // A Kubernetes Indexed Job: the index from JOB_COMPLETION_INDEX, the count from RBA_SHARDS.
    let k8s = c.dir.path().join("k8s.bin");
    run(auto(&[("JOB_COMPLETION_INDEX", "1"), ("RBA_SHARDS", "4")], &[], &k8s));
    same_as(&k8s, &c.shards[1]);
    let err = fails(auto(&[("JOB_COMPLETION_INDEX", "1")], &[], &k8s));
    assert!(err.contains("pass --shards N or set RBA_SHARDS"), "{err}");
    // A Slurm array submitted as --array=1-4: task 3 is shard 2/4.
    let slurm = c.dir.path().join("slurm.bin");
    let env = [
        ("SLURM_ARRAY_TASK_ID", "3"),
        ("SLURM_ARRAY_TASK_COUNT", "4"),
        ("SLURM_ARRAY_TASK_MIN", "1"),
        ("SLURM_ARRAY_TASK_MAX", "4"),
    ];
    run(auto(&env, &[], &slurm));
    same_as(&slurm, &c.shards[2]);
    let err = fails(auto(&[], &["--shards", "4"], &slurm));
    assert!(err.contains("--shard auto found neither a Kubernetes Indexed Job (JOB_COMPLETION_INDEX) nor a Slurm array task (SLURM_ARRAY_TASK_ID)"), "{err}");
}
