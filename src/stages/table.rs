//! What a kind's table offers while the pipeline's graph is built: [`StageTable`], what it
//! builds ([`Built`]), and what it may know of the other stages ([`Around`]).

use super::StageKind;
use crate::report::variants::VariantOf;
use anyhow::Result;
use std::collections::HashMap;
use std::sync::Arc;
use toml::Spanned;

/// A stage table as its kind read it, before the pipeline's graph is built.
pub trait StageTable: std::fmt::Debug + Send {
    /// The upstream stages as written.
    fn inputs(&self) -> &[Spanned<String>];
    /// The stages a stage of this kind adds before itself, named `NAME.SUFFIX` (a download's
    /// metadata and selection); other stages may read them as inputs.
    fn sub_stages(&self) -> &'static [&'static str] {
        &[]
    }
    /// The stage another stage reads when it names this one (`name` itself, or a download's
    /// selection).
    fn read_as(&self, name: &str) -> String {
        name.to_string()
    }
    /// The stage whose items carry captions when another stage names this one, if any (an
    /// embed stage reads captions from it rather than images).
    fn captions_from(&self, name: &str) -> Option<String> {
        let _ = name;
        None
    }
    /// The stages of the graph this table becomes (usually one; sub-stages first), reading
    /// `inputs` (as written); `around` says what the other stages are.
    fn build(
        self: Box<Self>,
        name: &str,
        inputs: Vec<String>,
        around: &Around,
    ) -> Result<Vec<Built>>;
}

/// A stage of the graph, as a kind built it.
pub struct Built {
    pub name: String,
    pub inputs: Vec<String>,
    pub kind: Arc<dyn StageKind>,
}

impl Built {
    /// The one stage a table makes, named as its table.
    pub fn one(name: &str, inputs: Vec<String>, kind: impl StageKind + 'static) -> Vec<Built> {
        vec![Built {
            name: name.to_string(),
            inputs,
            kind: Arc::new(kind),
        }]
    }
}

/// What one stage of the file says of itself to the others while they are built.
#[derive(Clone, Debug)]
struct Facts {
    kind: &'static str,
    read_as: String,
    captions_from: Option<String>,
    sub_stages: &'static [&'static str],
}

/// The other stages of the pipeline file, as a kind building its stage may consult them.
#[derive(Debug, Default)]
pub struct Around {
    stages: HashMap<String, Facts>,
    /// The stages that are variants of a swept stage, and what makes them so.
    variants: HashMap<String, VariantOf>,
}

impl Around {
    /// Collects what each table says of itself.
    pub fn new<'a>(
        tables: impl IntoIterator<Item = (&'a str, &'static str, &'a dyn StageTable)>,
    ) -> Around {
        let stages = tables
            .into_iter()
            .map(|(name, kind, table)| {
                let facts = Facts {
                    kind,
                    read_as: table.read_as(name),
                    captions_from: table.captions_from(name),
                    sub_stages: table.sub_stages(),
                };
                (name.to_string(), facts)
            })
            .collect();
        Around {
            stages,
            variants: HashMap::new(),
        }
    }

    /// The same, knowing which stages are variants of a sweep.
    pub fn with_variants(self, variants: HashMap<String, VariantOf>) -> Around {
        Around { variants, ..self }
    }

    /// What makes a stage a variant, when it is one.
    pub fn variant_of(&self, name: &str) -> Option<&VariantOf> {
        self.variants.get(name)
    }

    /// The kind of a stage of the file (`None` for a sub-stage or an unknown name).
    pub fn kind_of(&self, name: &str) -> Option<&'static str> {
        self.stages.get(name).map(|f| f.kind)
    }

    /// The stage read when `name` is named as an input.
    pub fn read_as(&self, name: &str) -> String {
        self.stages
            .get(name)
            .map(|f| f.read_as.clone())
            .unwrap_or_else(|| name.to_string())
    }

    /// The stage that gives captions when `name` is named as an input (a sub-stage named
    /// directly gives them when it is the one its stage gives them from).
    pub fn captions_from(&self, name: &str) -> Option<String> {
        if let Some(facts) = self.stages.get(name) {
            return facts.captions_from.clone();
        }
        let (parent, sub) = name.rsplit_once('.')?;
        let facts = self.stages.get(parent)?;
        (facts.sub_stages.contains(&sub) && facts.captions_from.as_deref() == Some(name))
            .then(|| name.to_string())
    }
}
