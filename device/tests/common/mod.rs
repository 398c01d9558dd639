//! Shared helpers of the device's integration tests: tiny ONNX models built
//! in code (so expected outputs are known by hand), daemons in-process and
//! as the real binary.

#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use rba_device::{spawn_in_process, InProcessBoard, InProcessLink, InProcessOptions};
use rba_protocol::mem::{duplex, MemLink};
use rba_protocol::*;
use tract_onnx::pb;

pub mod qemu;

pub const KEY: &str = "test-key-0123456789abcdef";

fn dim(d: &Dim) -> pb::tensor_shape_proto::Dimension {
    use pb::tensor_shape_proto::dimension::Value;
    pb::tensor_shape_proto::Dimension {
        value: Some(match d {
            Dim::Fixed(v) => Value::DimValue(*v),
            Dim::Sym(s) => Value::DimParam(s.to_string()),
        }),
        ..Default::default()
    }
}

pub enum Dim {
    Fixed(i64),
    Sym(&'static str),
}

pub fn value_info(name: &str, dims: &[Dim]) -> pb::ValueInfoProto {
    value_info_typed(name, dims, 1)
}

pub fn value_info_typed(name: &str, dims: &[Dim], elem_type: i32) -> pb::ValueInfoProto {
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type,
                shape: Some(pb::TensorShapeProto { dim: dims.iter().map(dim).collect() }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn tensor(name: &str, dims: &[i64], values: &[f32]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: 1,
        float_data: values.to_vec(),
        ..Default::default()
    }
}

pub fn node(op: &str, inputs: &[&str], outputs: &[&str]) -> pb::NodeProto {
    pb::NodeProto {
        op_type: op.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        name: format!("{op}_{}", outputs.first().unwrap_or(&"")),
        ..Default::default()
    }
}

pub fn model(graph: pb::GraphProto) -> Vec<u8> {
    let m = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 13 }],
        producer_name: "rba-device-tests".into(),
        graph: Some(graph),
        ..Default::default()
    };
    prost::Message::encode_to_vec(&m)
}

/// `y = x W + b` with `x: [batch_size, k]` (symbolic batch, as exporters
/// write it, with a stale symbolic `value_info` hint on the intermediate).
pub fn linear_model(w: &[f32], b: &[f32], k: usize, n: usize) -> Vec<u8> {
    assert_eq!(w.len(), k * n);
    assert_eq!(b.len(), n);
    let (k, n) = (k as i64, n as i64);
    model(pb::GraphProto {
        name: "linear".into(),
        node: vec![node("MatMul", &["x", "W"], &["xw"]), node("Add", &["xw", "b"], &["y"])],
        initializer: vec![tensor("W", &[k, n], w), tensor("b", &[n], b)],
        input: vec![value_info("x", &[Dim::Sym("batch_size"), Dim::Fixed(k)])],
        output: vec![value_info("y", &[Dim::Sym("batch_size"), Dim::Fixed(n)])],
        value_info: vec![value_info("xw", &[Dim::Sym("batch_size"), Dim::Fixed(n)])],
        ..Default::default()
    })
}

/// The linear model used by most tests: 4 inputs, 3 classes.
/// W = [[1,0,0],[0,1,0],[0,0,1],[1,1,1]], b = [0.5, 0, -0.5]:
/// y = (x0 + x3 + 0.5, x1 + x3, x2 + x3 - 0.5).
pub fn small_linear() -> Vec<u8> {
    linear_model(&[1., 0., 0., 0., 1., 0., 0., 0., 1., 1., 1., 1.], &[0.5, 0., -0.5], 4, 3)
}

pub fn small_linear_eval(x: &[f32]) -> [f32; 3] {
    [x[0] + x[3] + 0.5, x[1] + x[3], x[2] + x[3] - 0.5]
}

/// A chain of `layers` square MatMul+Relu layers of `width` (fixed batch 1):
/// a model whose cost grows with its size, for A/B comparisons.
pub fn mlp_model(width: usize, layers: usize) -> Vec<u8> {
    let w = width as i64;
    let mut nodes = Vec::new();
    let mut inits = Vec::new();
    let mut prev = "x".to_string();
    for l in 0..layers {
        let wname = format!("W{l}");
        let mm = format!("mm{l}");
        let out = if l + 1 == layers { "y".to_string() } else { format!("h{l}") };
        let values: Vec<f32> = (0..width * width).map(|i| ((i * 7 + l) % 13) as f32 / 13.0 - 0.4).collect();
        inits.push(tensor(&wname, &[w, w], &values));
        nodes.push(node("MatMul", &[&prev, &wname], &[&mm]));
        nodes.push(node("Relu", &[&mm], &[&out]));
        prev = out;
    }
    model(pb::GraphProto {
        name: "mlp".into(),
        node: nodes,
        initializer: inits,
        input: vec![value_info("x", &[Dim::Fixed(1), Dim::Fixed(w)])],
        output: vec![value_info("y", &[Dim::Fixed(1), Dim::Fixed(w)])],
        ..Default::default()
    })
}

/// A well-formed ONNX file using an operator tract does not know.
pub fn unknown_op_model() -> Vec<u8> {
    model(pb::GraphProto {
        name: "weird".into(),
        node: vec![node("TotallyMadeUpOp", &["x"], &["y"])],
        input: vec![value_info("x", &[Dim::Fixed(1), Dim::Fixed(4)])],
        output: vec![value_info("y", &[Dim::Fixed(1), Dim::Fixed(4)])],
        ..Default::default()
    })
}

/// An eval bundle for the small linear model with hand-computed labels
/// and expected outputs.
pub fn linear_bundle(samples: &[[f32; 4]], labels: Option<Vec<u32>>, expected: Option<Vec<[f32; 3]>>) -> Vec<u8> {
    let n = samples.len() as u64;
    let xs: Vec<f32> = samples.iter().flatten().copied().collect();
    let expected = expected.map(|e| {
        let v: Vec<f32> = e.iter().flatten().copied().collect();
        vec![TensorF32::from_f32(Some("y".into()), vec![n, 3], &v)]
    });
    EvalBundle { inputs: vec![TensorF32::from_f32(Some("x".into()), vec![n, 4], &xs)], labels, expected }
        .encode()
        .unwrap()
}

pub fn fast_client_config(key: Option<&str>) -> ClientConfig {
    ClientConfig {
        key: key.map(|k| PreSharedKey::new(k.as_bytes())),
        request_timeout: Duration::from_secs(3),
        job_idle_timeout: Duration::from_secs(30),
        max_retries: 2,
        ..ClientConfig::serial()
    }
}

/// The tests' in-process daemon: board "test", one inference thread, its
/// store in `dir` (uploads up to `quota`), a key when given.
pub fn test_options(dir: &Path, quota: u64, key: Option<&str>) -> InProcessOptions {
    InProcessOptions {
        store_dir: Some(dir.to_path_buf()),
        quota,
        board_name: "test".into(),
        threads: 1,
        key: key.map(|k| PreSharedKey::new(k.as_bytes())),
        ..InProcessOptions::default()
    }
}

/// A daemon serving every link sent to it, one session after another.
pub fn spawn_inproc(options: InProcessOptions) -> (mpsc::Sender<MemLink>, InProcessBoard) {
    let (tx, rx) = mpsc::channel::<MemLink>();
    (tx, spawn_in_process(options, InProcessLink::Memory(rx)).unwrap())
}

pub fn connect_inproc(dev: &mpsc::Sender<MemLink>, config: ClientConfig) -> Result<Client<MemLink>, ClientError> {
    let (mut host, board) = duplex();
    host.set_read_timeout(Some(Duration::from_millis(5)));
    dev.send(board).unwrap();
    Client::connect(host, config)
}

pub fn no_progress(_: &Progress) -> std::ops::ControlFlow<()> {
    std::ops::ControlFlow::Continue(())
}

pub fn bench_req(model: &str, runs: u32) -> BenchmarkRequest {
    BenchmarkRequest {
        model: model.into(),
        threads: None,
        warmup: RunPolicy { count: 2, min_time_ms: 0 },
        runs: RunPolicy { count: runs, min_time_ms: 0 },
        input_bundle: None,
    }
}

/// The real `rba-device` binary, its stderr collected line by line.
pub struct Proc {
    pub child: Child,
    pub lines: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rba-device"));
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        cmd.env_remove("RBA_DEVICE_KEY");
        for (k, v) in env {
            cmd.env(k, v);
        }
        Proc::from_command(cmd)
    }

    pub fn from_command(mut cmd: Command) -> Proc {
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[daemon] {line}");
                sink.lock().unwrap().push(line);
            }
        });
        Proc { child, lines }
    }

    /// Waits for a stderr line containing `needle`; returns it.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(l) = self.lines.lock().unwrap().iter().find(|l| l.contains(needle)) {
                return Some(l.clone());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The address from "listening on ADDR".
    pub fn tcp_addr(&self) -> String {
        let line = self.wait_for("listening on ", Duration::from_secs(20)).expect("daemon did not start listening");
        line.rsplit("listening on ").next().unwrap().trim().to_string()
    }

    pub fn sigterm(&self) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }

    /// Waits for the exit status, killing the process after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }

    pub fn stderr(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn store_files(dir: &Path, sub: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(dir.join(sub)).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    v.sort();
    v
}
