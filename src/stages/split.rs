//! Stage kind `split`: objects into train / validation / test, by object uid. One task; its
//! output `split.json` is the manifest. The task's key holds the uid list (not the upstream
//! files), so new renders or embeddings of the same objects leave it cached.
//!
//! - `method = "study"`: the uids sorted, shuffled with `seed` exactly as NumPy's
//!   `np.random.seed(seed); np.random.shuffle(uids)` (`crate::numpy_random`), then int(f₀·N)
//!   train, int(f₁·N) validation, the rest test (the study: 0.8 / 0.1 / rest, seed 42). The
//!   study shuffled its objects in the order its files were listed, not sorted, so the same
//!   objects land in the study's parts only if that order was sorted too.
//! - `method = "hash"`: each uid placed by a hash of (seed, uid) alone, so adding objects
//!   never moves an existing one.

use crate::diag::at;
use super::{
    Binding, ExecCtx, ExpandCtx, Expansion, ParamCtx, PlannedItem, StageKind, TaskOutcome, UnitTask,
};
use crate::exec::workdir::output_from_bytes;
use crate::resources::Resources;
use crate::store::records::now_ms;
use crate::task::ParamSlice;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use toml::Spanned;

/// The `kind` of its tables in pipeline files (and of its key records).
pub const KIND: &str = "split";

/// 2: the study method shuffles as NumPy (it used fastrand's shuffle).
const VERSION: u32 = 2;

/// The stage's one item.
pub const ITEM: &str = "split";
/// Its one output.
pub const MANIFEST: &str = "split.json";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitParams {
    pub kind: String,
    /// A download stage (its selection) or any stage whose items are objects or views.
    #[serde(default)]
    pub inputs: Vec<Spanned<String>>,
    /// `study` (default) or `hash`.
    pub method: Option<Spanned<String>>,
    /// Train, validation, test (default [0.8, 0.1, 0.1]).
    pub fractions: Option<Spanned<Vec<f64>>>,
    /// Default 42.
    pub seed: Option<Spanned<u64>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Study,
    Hash,
}

/// The split manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Split {
    pub method: Method,
    pub seed: u64,
    pub fractions: [f64; 3],
    pub train: Vec<String>,
    pub validation: Vec<String>,
    pub test: Vec<String>,
}

/// Places `uids` (any order; duplicates are ignored). The study method takes seeds below
/// 2³², NumPy's range (the stage refuses others); a larger one is reduced modulo 2³².
pub fn assign(uids: &[String], method: Method, fractions: [f64; 3], seed: u64) -> Split {
    let mut sorted: Vec<String> = uids.to_vec();
    sorted.sort();
    sorted.dedup();
    let (mut train, mut validation, mut test) = (Vec::new(), Vec::new(), Vec::new());
    match method {
        Method::Study => {
            crate::numpy_random::Mt19937::new(seed as u32).shuffle(&mut sorted);
            let n = sorted.len() as f64;
            let a = (fractions[0] * n).floor() as usize;
            let b = a + (fractions[1] * n).floor() as usize;
            for (k, uid) in sorted.into_iter().enumerate() {
                match k {
                    _ if k < a => train.push(uid),
                    _ if k < b => validation.push(uid),
                    _ => test.push(uid),
                }
            }
        }
        Method::Hash => {
            for uid in sorted {
                let mut h = blake3::Hasher::new();
                h.update(&seed.to_le_bytes());
                h.update(uid.as_bytes());
                let bytes: [u8; 8] = h.finalize().as_bytes()[..8].try_into().expect("8 bytes");
                let x = u64::from_le_bytes(bytes) as f64 / 2f64.powi(64);
                if x < fractions[0] {
                    train.push(uid);
                } else if x < fractions[0] + fractions[1] {
                    validation.push(uid);
                } else {
                    test.push(uid);
                }
            }
        }
    }
    train.sort();
    validation.sort();
    test.sort();
    Split {
        method,
        seed,
        fractions,
        train,
        validation,
        test,
    }
}

impl Split {
    /// Whether the parts are large enough for training and evaluation.
    pub fn check(&self, stage: &str) -> Result<()> {
        let total = self.train.len() + self.validation.len() + self.test.len();
        for (part, n, least, what) in [
            ("test", self.test.len(), 2, "evaluation compares objects"),
            (
                "training",
                self.train.len(),
                2,
                "a head trains on several objects",
            ),
            (
                "validation",
                self.validation.len(),
                1,
                "training keeps the best checkpoint by it",
            ),
        ] {
            if n < least {
                bail!(
                    "stage `{stage}`: the {part} part has {n} of {total} objects; it needs at \
                     least {least} ({what}). Add objects or raise its fraction."
                );
            }
        }
        Ok(())
    }
}

/// Reads a split manifest from an upstream split task's outputs.
pub fn read(
    store: &crate::store::Store,
    outputs: &[crate::store::records::Output],
) -> Result<Split> {
    let output = outputs
        .iter()
        .find(|o| o.name == MANIFEST)
        .with_context(|| format!("the split has no {MANIFEST}"))?;
    let bytes = store
        .read_output(output)
        .with_context(|| format!("reading {MANIFEST}; run the pipeline again"))?;
    serde_json::from_slice(&bytes).with_context(|| format!("reading {MANIFEST}"))
}

#[derive(Debug)]
pub struct SplitStage {
    stage: String,
    method: Method,
    fractions: [f64; 3],
    seed: u64,
    /// The input is a download stage's selection (else: any stage's item ids).
    from_selection: bool,
}


impl SplitStage {
    pub fn new(stage: &str, p: SplitParams, from_selection: bool) -> Result<SplitStage> {
        if p.inputs.len() != 1 {
            bail!(
                "stage `{stage}`: a split stage reads one stage that lists the objects (a \
                 download stage, or e.g. an embed stage), as inputs = [\"objects\"]"
            );
        }
        let method = match &p.method {
            None => Method::Study,
            Some(m) => match m.get_ref().as_str() {
                "study" => Method::Study,
                "hash" => Method::Hash,
                other => {
                    return at(
                        m.span(),
                        format!(
                            "stage `{stage}`: unknown method `{other}`; use \"study\" (shuffle \
                             with the seed) or \"hash\" (adding objects never moves one)"
                        ),
                    );
                }
            },
        };
        let fractions = match &p.fractions {
            None => [0.8, 0.1, 0.1],
            Some(f) => {
                let v = f.get_ref();
                let sum: f64 = v.iter().sum();
                if v.len() != 3 || v.iter().any(|x| !(0.0..=1.0).contains(x)) {
                    return at(
                        f.span(),
                        format!(
                            "stage `{stage}`: `fractions` is [train, validation, test], three \
                             numbers between 0 and 1, e.g. [0.8, 0.1, 0.1]"
                        ),
                    );
                }
                if (sum - 1.0).abs() > 1e-6 {
                    return at(
                        f.span(),
                        format!(
                            "stage `{stage}`: `fractions` sum to {sum}; they must sum to 1 \
                             (e.g. [0.8, 0.1, 0.1])"
                        ),
                    );
                }
                [v[0], v[1], v[2]]
            }
        };
        let seed = p.seed.as_ref().map(|s| *s.get_ref()).unwrap_or(42);
        if let (Method::Study, Some(s)) = (method, &p.seed)
            && u32::try_from(seed).is_err()
        {
            return at(
                s.span(),
                format!(
                    "stage `{stage}`: seed = {seed} is above 4294967295 (2³² − 1), the largest \
                     seed NumPy's shuffle takes, which the study method reproduces; use a \
                     smaller seed (the study's is 42)"
                ),
            );
        }
        Ok(SplitStage {
            stage: stage.to_string(),
            method,
            fractions,
            seed,
            from_selection,
        })
    }

    fn uids(&self, ctx: &ExpandCtx) -> Result<Vec<String>> {
        let mut uids: Vec<String> = if self.from_selection {
            super::download::read_selection(ctx.store, ctx.outputs[0])?
                .objects
                .into_iter()
                .map(|o| o.uid)
                .collect()
        } else {
            let outputs = ctx.outputs[0].context("internal: the split's input was not resolved")?;
            outputs
                .items
                .iter()
                .map(|(id, _)| object_of(id).to_string())
                .collect()
        };
        uids.sort();
        uids.dedup();
        Ok(uids)
    }
}

/// The object uid of an item id: a view `<uid>@<view>`, a caption `<uid>#caption`, or a uid.
pub fn object_of(item: &str) -> &str {
    let item = item
        .strip_suffix(super::embed::CAPTION_SUFFIX)
        .unwrap_or(item);
    match item.rsplit_once(super::render::VIEW_SEPARATOR) {
        Some((uid, _)) => uid,
        None => item,
    }
}

#[async_trait::async_trait]
impl StageKind for SplitStage {
    fn fans_out(&self) -> bool {
        false
    }

    fn kind(&self) -> &'static str {
        KIND
    }
    fn version(&self) -> u32 {
        VERSION
    }
    fn resources(&self) -> Resources {
        Resources::ONE_CPU
    }
    fn shared_params(&self, _: &ParamCtx) -> Result<ParamSlice> {
        Ok(ParamSlice::from([
            (
                "method".to_string(),
                format!("{:?}", self.method).to_lowercase(),
            ),
            ("fractions".to_string(), format!("{:?}", self.fractions)),
            ("seed".to_string(), self.seed.to_string()),
        ]))
    }
    fn expands_from_outputs(&self) -> bool {
        true
    }
    fn expand(&self, ctx: &ExpandCtx) -> Result<Expansion> {
        let uids = self.uids(ctx)?;
        // Checked while planning, so `mvc plan` says it before anything trains.
        assign(&uids, self.method, self.fractions, self.seed).check(&self.stage)?;
        let mut item = PlannedItem::new(ITEM);
        item.params = std::sync::Arc::new(ParamSlice::from([("objects".to_string(), uids.join("\n"))]));
        Ok(Expansion {
            items: vec![item],
            bindings: vec![Binding::Expansion],
        })
    }
    async fn execute(&self, ctx: &ExecCtx, unit: Vec<UnitTask>) -> Vec<TaskOutcome> {
        unit.iter()
            .map(|task| {
                let started_ms = now_ms();
                let uids: Vec<String> = task
                    .item_params
                    .get("objects")
                    .map(|s| s.lines().map(str::to_string).collect())
                    .unwrap_or_default();
                let split = assign(&uids, self.method, self.fractions, self.seed);
                if let Err(e) = split.check(&self.stage) {
                    return TaskOutcome::Failed {
                        error: format!("{e:#}"),
                        stderr: None,
                    };
                }
                let bytes = serde_json::to_vec_pretty(&split).expect("a split serialises");
                match output_from_bytes(&ctx.store, MANIFEST.into(), bytes) {
                    Ok(output) => TaskOutcome::Success {
                        outputs: vec![output],
                        stdout: None,
                        stderr: None,
                        started_ms,
                        duration_ms: now_ms() - started_ms,
                    },
                    Err(e) => TaskOutcome::Aborted(e),
                }
            })
            .collect()
    }
}

impl super::table::StageTable for SplitParams {
    fn inputs(&self) -> &[Spanned<String>] {
        &self.inputs
    }
    fn build(
        self: Box<Self>,
        name: &str,
        inputs: Vec<String>,
        around: &super::table::Around,
    ) -> Result<Vec<super::table::Built>> {
        // A download stage gives its objects through its selection.
        let inputs: Vec<String> = inputs.iter().map(|i| around.read_as(i)).collect();
        let selection = format!(".{}", super::download::SELECT);
        let from_selection = inputs.last().is_some_and(|i| i.ends_with(&selection));
        let stage = SplitStage::new(name, *self, from_selection)?;
        Ok(super::table::Built::one(name, inputs, stage))
    }
}
