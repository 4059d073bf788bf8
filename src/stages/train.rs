//! Stage kind `train`: one of the study's heads trained on a split's training objects (one
//! task). Reads a split stage and an embed stage, all of each. Outputs `head.json` (the
//! head's settings), `curve.json` (training and validation losses, the chosen step) and,
//! except for the `identity` baseline, `weights.safetensors` (the best checkpoint).

use crate::diag::at;
use super::gather::{Part, gather};
use super::{
    Binding, ExecCtx, ExpandCtx, Expansion, ParamCtx, PlannedItem, StageKind, TaskOutcome,
    UnitTask, device_param, device_resources, each_task_blocking, read_named,
};
use crate::clip::DeviceChoice;
use crate::clip::model::select_device;
use crate::clip::tensors_file;
use crate::exec::workdir::{InputData, ingest_outputs};
use crate::heads::train::{Embeddings, TrainSettings, train};
use crate::heads::{Head, HeadConfig, HeadKind, Variant};
use crate::report::coverage::{Coverage, coverage_note};
use crate::resources::Resources;
use crate::store::Store;
use crate::store::records::Output;
use crate::task::ParamSlice;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use toml::Spanned;

/// The `kind` of its tables in pipeline files (and of its key records).
pub const KIND: &str = "train";

/// 2: objects without every embedding are left out (up to `max_missing`) and listed in
/// `head.json`. 3: `study` redraws the validation views and adds 1e-7 to the autoencoder's
/// codes; `curve.json` has every loss term.
const VERSION: u32 = 3;

/// The default `max_missing`: the largest fraction of a split's part that may be left out.
pub const DEFAULT_MAX_MISSING: f64 = 0.1;

pub const ITEM: &str = "model";
pub const HEAD_FILE: &str = "head.json";
pub const CURVE_FILE: &str = "curve.json";
pub const WEIGHTS_FILE: &str = "weights.safetensors";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainParams {
    pub kind: String,
    /// A split stage and an embed stage.
    #[serde(default)]
    pub inputs: Vec<Spanned<String>>,
    pub head: Spanned<String>,
    pub variant: Option<Spanned<String>>,
    pub steps: Option<u32>,
    pub views_per_step: Option<usize>,
    pub lr: Option<f64>,
    pub validate_every: Option<u32>,
    pub seed: Option<u64>,
    pub hidden: Option<usize>,
    pub code: Option<usize>,
    pub weight_similarity: Option<f64>,
    pub weight_autoencoder: Option<f64>,
    pub temperature: Option<f64>,
    pub device: Option<Spanned<String>>,
    /// The largest fraction of the training (and of the validation) part that may lack
    /// embeddings and be left out (default 0.1; 0 needs every object).
    pub max_missing: Option<Spanned<f64>>,
}

/// `head.json`: the head's settings, and the objects it was trained on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeadFile {
    #[serde(flatten)]
    pub head: HeadConfig,
    /// The training and validation parts: used and left out.
    #[serde(default)]
    pub parts: Vec<Coverage>,
}

/// The `max_missing` of a train or evaluate stage's table, checked.
pub fn max_missing_param(stage: &str, value: &Option<Spanned<f64>>) -> Result<f64> {
    match value {
        None => Ok(DEFAULT_MAX_MISSING),
        Some(v) if (0.0..=1.0).contains(v.get_ref()) => Ok(*v.get_ref()),
        Some(v) => at(
            v.span(),
            format!(
                "stage `{stage}`: `max_missing` is {}; it is the largest fraction of a split's \
                 part that may be left out, between 0 (every object needed) and 1",
                v.get_ref()
            ),
        ),
    }
}

/// Which input of a train or evaluate stage is which.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Split,
    Embeddings,
    Model,
}

#[derive(Clone, Debug)]
pub struct TrainStage {
    stage: String,
    /// The head's settings; `dim` is read from the embeddings at run time (0 here).
    config: HeadConfig,
    settings: TrainSettings,
    device: DeviceChoice,
    max_missing: f64,
    split: usize,
    embeddings: usize,
}


/// The index of the one input with `role`, or an error saying what to add.
pub fn one_input(stage: &str, roles: &[Role], role: Role, example: &str) -> Result<usize> {
    let found: Vec<usize> = (0..roles.len()).filter(|&k| roles[k] == role).collect();
    match found.as_slice() {
        [one] => Ok(*one),
        [] => bail!(
            "stage `{stage}` needs a {} stage among its inputs, e.g. inputs = [{example}]",
            match role {
                Role::Split => "split",
                Role::Embeddings => "embed",
                Role::Model => "train",
            }
        ),
        _ => bail!(
            "stage `{stage}` reads {} stages of the same kind; name one",
            found.len()
        ),
    }
}

impl TrainStage {
    pub fn new(stage: &str, p: TrainParams, roles: &[Role]) -> Result<TrainStage> {
        let example = "\"split\", \"embed\"";
        let split = one_input(stage, roles, Role::Split, example)?;
        let embeddings = one_input(stage, roles, Role::Embeddings, example)?;
        if roles.contains(&Role::Model) {
            bail!(
                "stage `{stage}`: a train stage reads a split and an embed stage, not a train stage"
            );
        }
        let head: HeadKind = p
            .head
            .get_ref()
            .parse()
            .or_else(|e: String| at(p.head.span(), format!("stage `{stage}`: {e}")))?;
        let variant = match &p.variant {
            None => Variant::Study,
            Some(v) => v
                .get_ref()
                .parse()
                .or_else(|e: String| at(v.span(), format!("stage `{stage}`: {e}")))?,
        };
        let config = HeadConfig {
            head,
            variant,
            dim: 0,
            hidden: p.hidden.unwrap_or(512),
            code: p.code.unwrap_or(128),
            weight_similarity: p.weight_similarity.unwrap_or(0.5),
            weight_autoencoder: p.weight_autoencoder.unwrap_or(0.5),
            temperature: p.temperature.unwrap_or(0.07),
        };
        let settings = TrainSettings {
            steps: p.steps.unwrap_or(1000),
            views_per_step: p.views_per_step.unwrap_or(6),
            lr: p.lr.unwrap_or(1e-3),
            validate_every: p.validate_every.unwrap_or(10),
            seed: p.seed.unwrap_or(42),
            // The study drew the validation views afresh at every validation; `fixed` keeps
            // one draw, so that a checkpoint is chosen on the same views throughout (a lower
            // validation loss then means a better head, not luckier views).
            redraw_validation: variant == Variant::Study,
        };
        let checks = [
            (config.hidden >= 2, "`hidden` must be at least 2"),
            (config.code >= 1, "`code` must be at least 1"),
            (
                (0.0..=1.0).contains(&config.weight_similarity),
                "`weight_similarity` must be between 0 and 1",
            ),
            (
                (0.0..=1.0).contains(&config.weight_autoencoder),
                "`weight_autoencoder` must be between 0 and 1",
            ),
            (config.temperature > 0.0, "`temperature` must be above 0"),
            (settings.steps >= 1, "`steps` must be at least 1"),
            (
                settings.views_per_step >= 2,
                "`views_per_step` must be at least 2",
            ),
            (
                settings.lr > 0.0 && settings.lr.is_finite(),
                "`lr` must be above 0",
            ),
            (
                settings.validate_every >= 1,
                "`validate_every` must be at least 1",
            ),
        ];
        if let Some((_, msg)) = checks.iter().find(|(ok, _)| !ok) {
            bail!("stage `{stage}`: {msg}");
        }
        Ok(TrainStage {
            stage: stage.to_string(),
            config,
            settings,
            device: device_param(stage, &p.device)?,
            max_missing: max_missing_param(stage, &p.max_missing)?,
            split,
            embeddings,
        })
    }

    fn run(
        &self,
        store: &Store,
        inputs: &[InputData],
        stop: &dyn Fn() -> bool,
    ) -> Result<tempfile::TempDir> {
        let split_input = &inputs[self.split];
        let (_, split_result) = split_input
            .items
            .first()
            .with_context(|| format!("the split `{}` has no result", split_input.stage))?;
        let split = super::split::read(store, &split_result.outputs)?;
        let embed = &inputs[self.embeddings];
        let part = |name, uids, least| Part {
            name,
            uids,
            max_missing: self.max_missing,
            least,
        };
        let train_set = gather(store, embed, &part("training", &split.train, 2))?;
        let val_set = gather(store, embed, &part("validation", &split.validation, 1))?;
        let mut config = self.config.clone();
        config.dim = train_set.dim;
        let (device, line) = select_device(self.device).map_err(|e| anyhow::anyhow!("{e:#}"))?;
        tracing::info!(
            "{}: {} head on {line}, {} training and {} validation objects x {} views",
            self.stage,
            config.head.name(),
            train_set.uids.len(),
            val_set.uids.len(),
            train_set.views.len()
        );
        let head = Head::init(config.clone(), self.settings.seed, &device)?;
        fn data(g: &super::gather::Gathered) -> Embeddings<'_> {
            Embeddings {
                images: &g.images,
                texts: &g.texts,
                objects: g.uids.len(),
                views: g.views.len(),
                dim: g.dim,
            }
        }
        let curve = train(
            &head,
            &data(&train_set),
            &data(&val_set),
            &self.settings,
            &device,
            stop,
        )?;
        let out = tempfile::tempdir()?;
        let head_file = HeadFile {
            head: config.clone(),
            parts: vec![train_set.coverage.clone(), val_set.coverage.clone()],
        };
        std::fs::write(
            out.path().join(HEAD_FILE),
            serde_json::to_vec_pretty(&head_file)?,
        )?;
        std::fs::write(out.path().join(CURVE_FILE), serde_json::to_vec(&curve)?)?;
        if config.head != HeadKind::Identity {
            tensors_file::write(
                &out.path().join(WEIGHTS_FILE),
                &head.tensors()?,
                Default::default(),
            )?;
        }
        Ok(out)
    }
}

#[async_trait::async_trait]
impl StageKind for TrainStage {
    fn kind(&self) -> &'static str {
        KIND
    }
    fn version(&self) -> u32 {
        VERSION
    }
    fn resources(&self) -> Resources {
        device_resources(self.device)
    }
    fn shared_params(&self, _: &ParamCtx) -> Result<ParamSlice> {
        let c = &self.config;
        let s = &self.settings;
        let mut p = ParamSlice::from([
            ("head".to_string(), c.head.name().to_string()),
            ("variant".to_string(), c.variant.name().to_string()),
            ("steps".to_string(), s.steps.to_string()),
            ("views_per_step".to_string(), s.views_per_step.to_string()),
            ("lr".to_string(), s.lr.to_string()),
            ("validate_every".to_string(), s.validate_every.to_string()),
            ("seed".to_string(), s.seed.to_string()),
        ]);
        // Only what shapes this head goes into its key: a baseline does not retrain when
        // the autoencoder's code width changes.
        match c.head {
            HeadKind::Identity => {
                p.clear();
                p.insert("head".to_string(), c.head.name().to_string());
            }
            HeadKind::Object => {
                p.insert("hidden".into(), c.hidden.to_string());
            }
            HeadKind::Contrastive => {
                p.insert("hidden".into(), c.hidden.to_string());
                match c.variant {
                    Variant::Study => {
                        p.insert("weight_similarity".into(), c.weight_similarity.to_string())
                    }
                    Variant::Fixed => p.insert("temperature".into(), c.temperature.to_string()),
                };
            }
            HeadKind::Autoencoder => {
                p.insert("hidden".into(), c.hidden.to_string());
                p.insert("code".into(), c.code.to_string());
                p.insert("weight_similarity".into(), c.weight_similarity.to_string());
                p.insert(
                    "weight_autoencoder".into(),
                    c.weight_autoencoder.to_string(),
                );
            }
        }
        // Which objects a head is trained on depends on it, for every head.
        p.insert("max_missing".into(), self.max_missing.to_string());
        Ok(p)
    }
    fn fans_out(&self) -> bool {
        false
    }

    fn reads_failures(&self) -> bool {
        true
    }
    fn has_result_notes(&self) -> bool {
        true
    }
    fn result_note(&self, store: &Store, outputs: &[Output]) -> Option<String> {
        let bytes = read_named(store, outputs, HEAD_FILE, &self.stage).ok()?;
        let file: HeadFile = serde_json::from_slice(&bytes).ok()?;
        coverage_note(&file.parts)
    }
    fn expand(&self, ctx: &ExpandCtx) -> Result<Expansion> {
        Ok(Expansion {
            items: vec![PlannedItem::new(ITEM)],
            bindings: vec![Binding::All; ctx.inputs.len()],
        })
    }
    async fn execute(&self, ctx: &ExecCtx, unit: Vec<UnitTask>) -> Vec<TaskOutcome> {
        let me = self.clone();
        each_task_blocking(&self.stage, ctx, unit, move |store, task, kill| {
            let out = me.run(store, &task.inputs, &|| kill.is_cancelled())?;
            ingest_outputs(store, out.path()).map_err(anyhow::Error::msg)
        })
        .await
    }
}

/// What each input of a train or evaluate stage gives, from the input stage's kind.
pub fn input_roles(
    stage: &str,
    inputs: &[String],
    around: &super::table::Around,
) -> Result<Vec<Role>> {
    inputs
        .iter()
        .map(|name| match around.kind_of(name) {
            Some(super::split::KIND) => Ok(Role::Split),
            Some(super::embed::KIND) => Ok(Role::Embeddings),
            Some(KIND) => Ok(Role::Model),
            other => bail!(
                "stage `{stage}`: input `{name}` is {}; train and evaluate stages read a \
                 split stage, an embed stage and (evaluate) a train stage",
                other
                    .map(|k| format!("a {k} stage"))
                    .unwrap_or_else(|| "not a stage".into())
            ),
        })
        .collect()
}

impl super::table::StageTable for TrainParams {
    fn inputs(&self) -> &[Spanned<String>] {
        &self.inputs
    }
    fn build(
        self: Box<Self>,
        name: &str,
        inputs: Vec<String>,
        around: &super::table::Around,
    ) -> Result<Vec<super::table::Built>> {
        let roles = input_roles(name, &inputs, around)?;
        let stage = TrainStage::new(name, *self, &roles)?;
        Ok(super::table::Built::one(name, inputs, stage))
    }
}
