//! A connected device: one protocol session, reopened when the link breaks;
//! deploy (skipped when the bytes are already there, resumed after a broken
//! link), benchmark, evaluate.

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rba_protocol::client::upload_resumable;
use rba_protocol::{
    hex, ActivateRequest, ActivationResult, AppStatus, ArtifactKind, BenchmarkRequest, BenchmarkResult, Client,
    ClientConfig, ClientError, CompareRequest, DeviceIdentity, DeviceInfo, EvalBundle, EvalRequest, EvalResult,
    RemoteError, RollbackRequest, RuntimeRequest, Session,
};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::bench::{speedup_ci, AbComparison, BenchOptions, BenchReport};
use super::emulated::{start_qemu, QemuBoard};
use super::known::{self, Check, KnownBoards};
use super::local::{start_local, LocalBoard};
use super::transport::{Connector, Route, Stream};
use super::{BoardError, Target, KEY_ENV};
use crate::onnx::OnnxModel;
use crate::progress::{Progress, Silent, Unit};

/// Sessions `deploy` opens before giving up on a flaky link.
const UPLOAD_ATTEMPTS: u32 = 4;

/// A connected device: one protocol session, reopened when the link breaks.
pub struct Device {
    label: String,
    connector: Connector,
    client: Option<Client<Stream>>,
    session: Session,
    /// What pinning did at connect time, for the user.
    pin_note: Option<String>,
    progress: Arc<dyn Progress>,
    // Declared last: dropped after the client, so the boards outlive it.
    _local: Option<LocalBoard>,
    _qemu: Option<QemuBoard>,
}

/// Where the identity of a board reached over a link is pinned.
#[derive(Clone, Debug, Default)]
pub enum Pinning {
    /// The known-boards file ([`known::default_path`]).
    #[default]
    Default,
    /// This known-boards file.
    File(std::path::PathBuf),
    /// Nowhere: only this `Device`'s own reconnects must meet the same device.
    Off,
}

/// What `deploy` did.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Deployed {
    pub name: String,
    pub size: u64,
    /// Lower-case hex SHA-256 of the bytes.
    pub sha256: String,
    /// The device already held these bytes under this name.
    pub skipped: bool,
    /// Bytes the device already had staged from an interrupted upload
    /// (the upload resumed there; 0 for a fresh one).
    pub resumed_from: u64,
}

/// A model to deploy: its device name, the model, and the exact bytes sent.
#[derive(Clone, Debug)]
pub struct ModelArtifact {
    pub name: String,
    pub onnx: OnnxModel,
    pub bytes: Vec<u8>,
}

impl ModelArtifact {
    /// A model argument (`demo:vit`, `demo:resnet`, or an ONNX file with any
    /// external data pulled inline, since the board gets one file).
    pub fn from_spec(spec: &str) -> Result<ModelArtifact, BoardError> {
        let onnx = crate::demo::load_model_spec(spec)?;
        let name = match spec {
            "demo:vit" => "vit-digits".to_string(),
            "demo:resnet" => "resnet-digits".to_string(),
            path => device_name(Path::new(path).file_stem().map_or(path.into(), |s| s.to_string_lossy())),
        };
        Ok(ModelArtifact::new(name, onnx))
    }

    /// A model held in memory (e.g. a freshly compacted one).
    pub fn new(name: impl AsRef<str>, onnx: OnnxModel) -> ModelArtifact {
        let bytes = onnx.to_bytes();
        ModelArtifact { name: device_name(name.as_ref()), onnx, bytes }
    }
}

/// One arm of a benchmark: a model on the device (its device name) and the
/// runtime that runs it (`None`: tract).
#[derive(Clone, Debug, PartialEq)]
pub struct BenchArm {
    pub model: String,
    pub runtime: Option<RuntimeRequest>,
}

/// An arm's name in a comparison: the model, and its runtime when the two
/// arms differ in runtime (`vit-digits (onnxruntime [cuda])`).
fn arm_label(r: &BenchmarkResult, other: &BenchmarkResult) -> String {
    if r.model == other.model || r.runtime.label() != other.runtime.label() {
        format!("{} ({})", r.model, r.runtime.label())
    } else {
        r.model.clone()
    }
}

/// A valid device artifact name (`[A-Za-z0-9._-]{1,64}`, no leading dot).
pub fn device_name(name: impl AsRef<str>) -> String {
    let cleaned: String = name
        .as_ref()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '-' })
        .collect();
    let trimmed: String = cleaned.trim_start_matches('.').chars().take(64).collect();
    if trimmed.is_empty() {
        "model".into()
    } else {
        trimmed
    }
}

impl Device {
    /// Connects (starting the `local` or `qemu-aarch64` board first) and
    /// completes the handshake.
    pub fn connect(target: &Target) -> Result<Device, BoardError> {
        Self::open(target, false, &Pinning::Default)
    }

    /// Like [`Device::connect`] with short timeouts, for discovery.
    pub fn discover(target: &Target) -> Result<Device, BoardError> {
        Self::open(target, true, &Pinning::Default)
    }

    /// [`Device::connect`] with the device's identity pinned as `pinning` says.
    pub fn connect_pinned(target: &Target, pinning: &Pinning) -> Result<Device, BoardError> {
        Self::open(target, false, pinning)
    }

    fn open(target: &Target, quick: bool, pinning: &Pinning) -> Result<Device, BoardError> {
        let label = target.label();
        let setup = |problem: String| BoardError::Setup { device: label.clone(), problem };
        let mut config = ClientConfig::serial();
        let (mut local, mut qemu) = (None, None);
        let route = match target {
            Target::Serial { path, baud, key, .. } => {
                config.key = key.clone();
                Route::Serial { path: path.clone(), baud: *baud }
            }
            Target::Tcp { addr, key, .. } => {
                let Some(key) = key.clone() else {
                    return Err(setup(format!(
                        "TCP needs the device's pre-shared key: pass --key-file PATH or set ${KEY_ENV}"
                    )));
                };
                config = ClientConfig::tcp(key);
                Route::Tcp { addr: addr.clone() }
            }
            Target::Local { store } => {
                let (master, b) = start_local(store).map_err(setup)?;
                local = Some(b);
                // A pty moves large frames as fast as small ones.
                config.preferred_chunk = rba_protocol::DEFAULT_TCP_CHUNK;
                Route::Pty(master)
            }
            Target::Qemu { store } => {
                let (master, b) = start_qemu(store).map_err(setup)?;
                qemu = Some(b);
                // Emulation is tens of times slower: be patient.
                config.preferred_chunk = 64 * 1024;
                config.request_timeout = Duration::from_secs(15);
                config.job_idle_timeout = Duration::from_secs(120);
                config.max_retries = 2;
                Route::Pty(master)
            }
        };
        if quick && !matches!(target, Target::Qemu { .. }) {
            config.request_timeout = Duration::from_millis(1500);
            config.max_retries = 0;
        }
        let connector = Connector {
            route,
            config,
            connect_timeout: if quick { Duration::from_secs(2) } else { Duration::from_secs(10) },
        };
        // A TCP daemon serves one host at a time and answers Busy until it
        // has noticed that the previous host (often this same user's last
        // command) left: give it a moment before reporting it. Likewise a
        // short backoff after failed authentications from this address.
        let mut busy_retries = if quick { 2 } else { 10 };
        // Boards reached over a link are pinned on first use; the ones rba
        // starts itself get a fresh identity every time.
        let pinning_off = matches!(pinning, Pinning::Off);
        let file = match pinning {
            Pinning::Default => known::default_path(),
            Pinning::File(f) => Some(f.clone()),
            Pinning::Off => None,
        };
        let pinning = match (target.pin_name(), file) {
            (Some(name), Some(path)) => Some((name, KnownBoards::load(&path)?)),
            _ => None,
        };
        let mut connector = connector;
        if let Some((name, kb)) = &pinning {
            connector.config.expected_device = kb.get(name).map(|p| p.fingerprint);
        }
        let client = loop {
            match connector.connect() {
                Err(ClientError::Remote(RemoteError::Busy) | ClientError::RetryLater) if busy_retries > 0 => {
                    busy_retries -= 1;
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(ClientError::IdentityChanged { expected, got }) => {
                    let (name, kb) = pinning.as_ref().map_or((String::new(), None), |(n, k)| (n.clone(), Some(k)));
                    let line = kb.and_then(|k| k.get(&name)).map_or(0, |p| p.line);
                    return Err(BoardError::IdentityChanged(Box::new(super::IdentityChange {
                        device: label.clone(),
                        file: kb.map_or_else(String::new, |k| k.path().display().to_string()),
                        target: name,
                        line,
                        pinned: expected,
                        proved: got,
                    })));
                }
                Err(source) => return Err(BoardError::Device { device: label.clone(), source }),
                Ok(c) => break c,
            }
        };
        let session = client.session().cloned().ok_or_else(|| setup("no session after the handshake".into()))?;
        let fingerprint = session.fingerprint();
        let pin_note = match pinning {
            // Pinned on first use under a lock, reading the file again: the
            // boards of a fleet connect in parallel.
            Some((name, kb)) => match known::pin_if_new(kb.path(), &name, &fingerprint)? {
                Check::New => Some(format!(
                    "note: pinned the identity of new board {name} ({fingerprint}) in {}",
                    kb.path().display()
                )),
                Check::Changed(pin) => {
                    return Err(BoardError::IdentityChanged(Box::new(super::IdentityChange {
                        device: label.clone(),
                        file: kb.path().display().to_string(),
                        target: name,
                        line: pin.line,
                        pinned: pin.fingerprint,
                        proved: fingerprint,
                    })))
                }
                Check::Matches => None,
            },
            None if target.pin_name().is_some() && !pinning_off => Some(format!(
                "note: {label} ({fingerprint}) not pinned: set ${} or $HOME for a known-boards file",
                known::KNOWN_BOARDS_ENV
            )),
            None => None,
        };
        // Reconnects (after a broken link) must meet the same device.
        connector.config.expected_device = Some(fingerprint);
        Ok(Device {
            label,
            connector,
            client: Some(client),
            session,
            pin_note,
            progress: Arc::new(Silent),
            _local: local,
            _qemu: qemu,
        })
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// Who the device said it is in the handshake.
    pub fn identity(&self) -> &DeviceIdentity {
        &self.session.device
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    /// `SHA256:...` of the static key the device proved in the handshake.
    pub fn fingerprint(&self) -> String {
        self.session.fingerprint()
    }

    /// A line for the user when connecting pinned a new board (or could not).
    pub fn pin_note(&self) -> Option<&str> {
        self.pin_note.as_deref()
    }

    /// Where uploads and jobs report progress (default: nowhere).
    pub fn set_progress(&mut self, progress: Arc<dyn Progress>) {
        self.progress = progress;
    }

    fn error(&self, source: ClientError) -> BoardError {
        BoardError::Device { device: self.label.clone(), source }
    }

    /// The session, reopened if an earlier failure dropped it.
    pub fn client(&mut self) -> Result<&mut Client<Stream>, BoardError> {
        let client = match self.client.take() {
            Some(c) => c,
            None => self.connector.connect().map_err(|e| self.error(e))?,
        };
        Ok(self.client.insert(client))
    }

    /// Runs one request; a failed session is dropped so the next call reconnects.
    fn with_client<T>(
        &mut self,
        f: impl FnOnce(&mut Client<Stream>) -> Result<T, ClientError>,
    ) -> Result<T, BoardError> {
        let client = self.client()?;
        match f(client) {
            Ok(v) => Ok(v),
            Err(e) => {
                if e.ends_session() {
                    self.client = None;
                }
                Err(self.error(e))
            }
        }
    }

    pub fn info(&mut self) -> Result<DeviceInfo, BoardError> {
        self.with_client(|c| c.device_info())
    }

    /// Deploys a model under its name; skipped when the device already
    /// holds the same bytes under that name.
    pub fn deploy(&mut self, model: &ModelArtifact) -> Result<Deployed, BoardError> {
        self.upload(ArtifactKind::Model, &model.name, &model.bytes)
    }

    /// Uploads an artifact unless the device already has these bytes
    /// (same name and SHA-256); resumes across broken links.
    pub fn upload(&mut self, kind: ArtifactKind, name: &str, bytes: &[u8]) -> Result<Deployed, BoardError> {
        let sha: [u8; 32] = Sha256::digest(bytes).into();
        let size = bytes.len() as u64;
        let have = self.with_client(|c| c.list(Some(kind)))?;
        if have.iter().any(|a| a.name == name && a.sha256 == sha && a.size == size) {
            return Ok(Deployed { name: name.into(), size, sha256: hex(&sha), skipped: true, resumed_from: 0 });
        }
        let task = self.progress.task(&format!("upload {name}"), Some(size), Unit::Bytes);
        let mut first = self.client.take();
        let connector = &self.connector;
        let mut resumed_from = 0;
        let result = upload_resumable(
            || match first.take() {
                Some(c) => Ok(c),
                None => connector.connect(),
            },
            kind,
            name,
            bytes,
            UPLOAD_ATTEMPTS,
            |p| {
                resumed_from = p.resumed_from;
                task.set(p.acked);
            },
        );
        drop(task);
        match result {
            Ok((client, info)) => {
                self.client = Some(client);
                Ok(Deployed {
                    name: info.name,
                    size: info.size,
                    sha256: hex(&info.sha256),
                    skipped: false,
                    resumed_from,
                })
            }
            Err(e) => Err(self.error(e)),
        }
    }

    /// Benchmarks one model, or A/B-compares two with interleaved runs
    /// (models are device names, see [`Device::deploy`]), all with
    /// `options.runtime`.
    pub fn bench(&mut self, models: &[&str], options: &BenchOptions) -> Result<BenchReport, BoardError> {
        let arms: Vec<BenchArm> =
            models.iter().map(|m| BenchArm { model: (*m).to_string(), runtime: options.runtime.clone() }).collect();
        self.bench_arms(&arms, options)
    }

    /// Benchmarks one arm, or A/B-compares two with interleaved runs: two
    /// models, or one model under two runtimes (the same paired bootstrap
    /// interval either way). `options.runtime` is not used.
    pub fn bench_arms(&mut self, arms: &[BenchArm], options: &BenchOptions) -> Result<BenchReport, BoardError> {
        let names: Vec<String> = arms
            .iter()
            .map(|a| match &a.runtime {
                Some(r) => format!("{} ({})", a.model, r.runtime),
                None => a.model.clone(),
            })
            .collect();
        let what = format!("benchmark {}", names.join(" vs "));
        let task = self.progress.task(&what, None, Unit::Steps);
        let show = |p: &rba_protocol::Progress| {
            let total = p.total.map_or(String::new(), |t| format!("/{t}"));
            task.message(&format!("{what}: {:?} {}{total}", p.phase, p.done));
            ControlFlow::Continue(())
        };
        let result = match arms {
            [one] => {
                let req = BenchmarkRequest {
                    model: one.model.clone(),
                    threads: options.threads,
                    warmup: options.warmup,
                    runs: options.runs,
                    input_bundle: options.input_bundle.clone(),
                    runtime: one.runtime.clone(),
                };
                self.with_client(|c| c.benchmark(&req, show)).map(|r| (vec![r], None))
            }
            [a, b] => {
                let req = CompareRequest {
                    model_a: a.model.clone(),
                    model_b: b.model.clone(),
                    threads: options.threads,
                    warmup: options.warmup,
                    runs: options.runs,
                    input_bundle: options.input_bundle.clone(),
                    runtime_a: a.runtime.clone(),
                    runtime_b: b.runtime.clone(),
                };
                self.with_client(|c| c.compare(&req, show)).map(|r| {
                    let speedup = speedup_ci(&r.a.samples_ns, &r.b.samples_ns, 0.95, options.resamples, options.seed);
                    let ab = AbComparison {
                        model_a: arm_label(&r.a, &r.b),
                        model_b: arm_label(&r.b, &r.a),
                        ratio_of_medians: r.ratio_of_medians,
                        speedup,
                    };
                    (vec![r.a, r.b], Some(ab))
                })
            }
            _ => Err(BoardError::Usage(format!("bench takes one or two models or runtimes, got {}", arms.len()))),
        };
        drop(task);
        let (results, ab) = result?;
        Ok(BenchReport { device: self.identity().clone(), results, ab })
    }

    /// Uploads the bundle (skipped when already there) and evaluates
    /// `model` on it on the device, with tract.
    pub fn evaluate(&mut self, model: &str, bundle: &EvalBundle) -> Result<EvalResult, BoardError> {
        self.evaluate_with(model, bundle, None)
    }

    /// [`Device::evaluate`] with `runtime` (`None`: tract).
    pub fn evaluate_with(
        &mut self,
        model: &str,
        bundle: &EvalBundle,
        runtime: Option<&RuntimeRequest>,
    ) -> Result<EvalResult, BoardError> {
        let name = self.upload_bundle(bundle)?;
        let task = self.progress.task(&format!("evaluate {model}"), None, Unit::Steps);
        let req = EvalRequest { model: model.into(), bundle: name, threads: None, runtime: runtime.cloned() };
        self.with_client(|c| {
            c.evaluate(&req, |p| {
                task.message(&format!("evaluate {model}: {}/{}", p.done, p.total.unwrap_or(0)));
                ControlFlow::Continue(())
            })
        })
    }

    /// Uploads an eval bundle under a name made of its digest (skipped
    /// when the device has it); returns the name.
    pub fn upload_bundle(&mut self, bundle: &EvalBundle) -> Result<String, BoardError> {
        let bytes = bundle.encode()?;
        let name = format!("eval-{}", &hex(&Sha256::digest(&bytes))[..16]);
        self.upload(ArtifactKind::EvalBundle, &name, &bytes)?;
        Ok(name)
    }

    /// Gates on the device, then the switch of the application's active
    /// model if they all hold (PROTOCOL.md 5.5); the model (and bundle)
    /// must be on the device.
    pub fn activate(&mut self, req: &ActivateRequest) -> Result<ActivationResult, BoardError> {
        let task = self.progress.task(&format!("activate {} as {}", req.model, req.app), None, Unit::Steps);
        let what = format!("activate {} as {}", req.model, req.app);
        let r = self.with_client(|c| {
            c.activate(req, |p| {
                task.message(&format!("{what}: {:?}", p.phase));
                ControlFlow::Continue(())
            })
        });
        drop(task);
        r
    }

    /// Restores the application's previous model (`from_generation`: the
    /// generation the caller saw active).
    pub fn rollback(&mut self, app: &str, from_generation: Option<u64>) -> Result<ActivationResult, BoardError> {
        let task = self.progress.task(&format!("roll back {app}"), None, Unit::Steps);
        let req = RollbackRequest { app: app.into(), from_generation };
        let r = self.with_client(|c| c.rollback(&req, |_| ControlFlow::Continue(())));
        drop(task);
        r
    }

    /// Applications (`None`: all) with their active models and the last
    /// `history` entries of their histories.
    pub fn app_status(&mut self, app: Option<&str>, history: u32) -> Result<Vec<AppStatus>, BoardError> {
        match self.with_client(|c| c.app_status(app, history)) {
            // An application never activated on this board.
            Err(BoardError::Device { source: ClientError::Remote(RemoteError::NotFound(_)), .. }) if app.is_some() => {
                Ok(Vec::new())
            }
            r => r,
        }
    }
}
