//! Deploying for production: a model uploaded and made an application's
//! active model on a board, if its gates hold there (PROTOCOL.md 5.5);
//! skipped when the board already runs exactly these bytes for the
//! application. One board here; [`crate::fleet`] runs this on many.

use rba_protocol::gate::needs;
use rba_protocol::{
    hex, ActivateRequest, ActivationOutcome, ActivationResult, AppStatus, EvalBundle, Gate, GateCheck, RunPolicy,
    RuntimeRequest,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{BoardError, Deployed, Device, ModelArtifact};

/// What to activate, and how it is judged.
#[derive(Clone, Debug)]
pub struct ActivationPlan {
    /// Application name on the board.
    pub app: String,
    pub model: ModelArtifact,
    pub gates: Vec<Gate>,
    /// For `top1` and `agreement` gates (and recorded figures).
    pub bundle: Option<EvalBundle>,
    pub threads: Option<u32>,
    /// The on-device benchmark for latency and memory gates.
    pub warmup: RunPolicy,
    pub runs: RunPolicy,
    /// The runtime the gates are measured on (`None`: tract).
    pub runtime: Option<RuntimeRequest>,
}

impl ActivationPlan {
    /// Errors that need no board: an accuracy gate without a bundle, an
    /// agreement gate without reference outputs in it.
    pub fn validate(&self) -> Result<(), BoardError> {
        let (need_eval, _) = needs(&self.gates);
        if need_eval && self.bundle.is_none() {
            return Err(BoardError::Usage("top1 and agreement gates need eval data: pass --eval DATA".into()));
        }
        let agreement = self.gates.iter().any(|g| g.metric == rba_protocol::GateMetric::Agreement);
        if agreement && self.bundle.as_ref().is_some_and(|b| b.expected.is_none()) {
            return Err(BoardError::Usage(
                "the agreement gate needs reference outputs in the eval bundle: pass --reference MODEL".into(),
            ));
        }
        Ok(())
    }

    /// The model's SHA-256.
    pub fn sha256(&self) -> [u8; 32] {
        Sha256::digest(&self.model.bytes).into()
    }
}

/// What deploying with activation did on one board.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BoardActivation {
    /// The upload (`None`: the model was already active, nothing uploaded).
    pub deployed: Option<Deployed>,
    /// The board's answer (`None`: already active, seen in its status).
    pub result: Option<ActivationResult>,
    /// The application before, as its status said.
    pub before: Option<AppStatus>,
}

impl BoardActivation {
    pub fn outcome(&self) -> ActivationOutcome {
        self.result.as_ref().map_or(ActivationOutcome::AlreadyActive, |r| r.outcome)
    }

    /// The gates that failed, with their measured values.
    pub fn failed_checks(&self) -> Vec<&GateCheck> {
        self.result.as_ref().map(|r| r.failed_checks().collect()).unwrap_or_default()
    }
}

/// Status first: an application already running these bytes is left as
/// it is (nothing uploaded, nothing measured); otherwise the bundle and the
/// model are uploaded (each skipped when the board has it) and the board
/// checks the gates and switches.
pub fn deploy_and_activate(device: &mut Device, plan: &ActivationPlan) -> Result<BoardActivation, BoardError> {
    let sha = plan.sha256();
    let before = device.app_status(Some(&plan.app), 0)?.into_iter().next();
    if before.as_ref().and_then(|s| s.active.as_ref()).is_some_and(|a| a.sha256 == sha) {
        return Ok(BoardActivation { deployed: None, result: None, before });
    }
    let bundle = plan.bundle.as_ref().map(|b| device.upload_bundle(b)).transpose()?;
    let deployed = device.deploy(&plan.model)?;
    let req = ActivateRequest {
        app: plan.app.clone(),
        model: plan.model.name.clone(),
        sha256: sha,
        gates: plan.gates.clone(),
        eval_bundle: bundle,
        threads: plan.threads,
        warmup: plan.warmup,
        runs: plan.runs,
        runtime: plan.runtime.clone(),
    };
    let result = device.activate(&req)?;
    Ok(BoardActivation { deployed: Some(deployed), result: Some(result), before })
}

/// `sha256 0123456789abcdef...`
pub fn short_sha(sha: &[u8; 32]) -> String {
    format!("{}...", &hex(sha)[..16])
}
