//! Sweeps: a stage parameter written `{ sweep = [a, b, c] }` makes the stage one stage per
//! value, named `STAGE[param=value]`. Two swept parameters of one stage give their product;
//! parameters written `{ zip = [...] }` are paired instead, value by value. A stage that reads
//! a swept stage follows it, one stage per variant of its input (`eval_contrastive` follows
//! `train_contrastive`), pairing the variants of its inputs that agree on what they share; a
//! stage that takes every variant (the report) reads them all instead.
//!
//! The sweep is expanded in the merged TOML table, before any kind reads it, so each variant
//! is an ordinary stage table that its kind checks as it checks any other, and its errors
//! still point at the file, overlay or override that wrote the value.

use super::PipelineError;
use super::layers::{Sources, is_sweep};
use crate::exec::workflow::Swept;
use crate::report::variants::VariantOf;
use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// The most variants one stage may have (its own sweeps' product times the variants of its
/// inputs): more is a typo more often than a plan, and each variant is a training run.
pub const MOST_VARIANTS: usize = 1000;

/// The parameter left out of variant names, so that variants differing only by seed group
/// together (the report gives them as mean ± std).
pub const SEED: &str = "seed";

/// The pipeline with its sweeps expanded.
pub struct Expanded<'s> {
    pub root: Spanned<DeTable<'s>>,
    /// Each stage of the file that a sweep made several.
    pub groups: Vec<Swept>,
    /// Every variant stage: the stage it is a variant of and the values that make it one.
    pub variants: HashMap<String, VariantOf>,
}

/// One value a variant takes for one swept parameter.
#[derive(Clone)]
struct Choice<'s> {
    /// The stage whose parameter it is.
    stage: String,
    param: String,
    /// The value as variant names print it.
    label: String,
    value: Spanned<DeValue<'s>>,
}

/// A stage's variant while the sweep is expanded.
#[derive(Clone)]
struct Variant<'s> {
    name: String,
    /// Its own choices and those it inherits from its inputs.
    choices: Vec<Choice<'s>>,
    /// The variant of each swept input stage it reads.
    picks: HashMap<String, usize>,
}

/// A swept parameter of one stage.
struct SweptParam<'s> {
    param: String,
    values: Vec<Spanned<DeValue<'s>>>,
    labels: Vec<String>,
    zip: bool,
}

/// Expands every sweep of the merged pipeline.
pub fn expand<'s>(
    merged: Spanned<DeTable<'s>>,
    sources: &Sources,
    takes_every_variant: &dyn Fn(&str) -> bool,
) -> Result<Expanded<'s>, PipelineError> {
    let span = merged.span();
    let mut root = merged.into_inner();
    for (name, value) in root.iter() {
        if name.get_ref() != "stage" {
            refuse_nested(value, sources, name.get_ref())?;
        }
    }
    let mut groups = Vec::new();
    let mut variant_of = HashMap::new();
    if let Some(stage_value) = root.get_mut("stage")
        && let DeValue::Table(stages) = stage_value.get_mut()
    {
        let taken = std::mem::take(stages);
        *stages = expand_stages(
            taken,
            sources,
            takes_every_variant,
            &mut groups,
            &mut variant_of,
        )?;
    }
    Ok(Expanded {
        root: Spanned::new(span, root),
        groups,
        variants: variant_of,
    })
}

fn expand_stages<'s>(
    stages: DeTable<'s>,
    sources: &Sources,
    takes_every_variant: &dyn Fn(&str) -> bool,
    groups: &mut Vec<Swept>,
    variant_of: &mut HashMap<String, VariantOf>,
) -> Result<DeTable<'s>, PipelineError> {
    for (key, value) in stages.iter() {
        super::parse::check_stage_name(sources, key.get_ref(), value.span())?;
    }
    let names: Vec<String> = stages.keys().map(|k| k.get_ref().to_string()).collect();
    let mut done: HashMap<String, Vec<Variant<'s>>> = HashMap::new();
    for i in topological(&stages, &names) {
        let name = &names[i];
        let (key, value) = stages.get_key_value(name.as_str()).expect("listed above");
        let DeValue::Table(table) = value.get_ref() else {
            // Not a table: the kinds' reading says so.
            continue;
        };
        let own = sweeps_of(name, table, sources)?;
        let gathers = reads_every_variant(table, takes_every_variant);
        let variants = variants_of(name, key.span(), table, &own, gathers, &done, sources)?;
        done.insert(name.clone(), variants);
    }
    let mut out = DeTable::new();
    for (key, value) in stages {
        let name = key.get_ref().to_string();
        let Some(variants) = done.get(&name) else {
            out.insert(key, value);
            continue;
        };
        let DeValue::Table(table) = value.get_ref() else {
            out.insert(key, value);
            continue;
        };
        let swept = is_swept(variants);
        if !swept && !reads_swept(table, &done) {
            out.insert(key, value);
            continue;
        }
        let gathers = reads_every_variant(table, takes_every_variant);
        for variant in variants {
            let t = variant_table(&name, table, variant, gathers, &done);
            out.insert(
                Spanned::new(key.span(), Cow::Owned(variant.name.clone())),
                Spanned::new(value.span(), DeValue::Table(t)),
            );
        }
        if swept {
            let described: Vec<VariantOf> = variants
                .iter()
                .map(|v| describe(&name, &v.choices))
                .collect();
            groups.push(group_of(&name, variants, &described));
            for (v, d) in variants.iter().zip(described) {
                variant_of.insert(v.name.clone(), d);
            }
        }
    }
    Ok(out)
}

/// Whether a stage of this table reads every variant of its inputs (a report).
fn reads_every_variant(table: &DeTable, takes_every_variant: &dyn Fn(&str) -> bool) -> bool {
    table
        .get("kind")
        .is_some_and(|k| matches!(k.get_ref(), DeValue::String(s) if takes_every_variant(s)))
}

/// What `mvc plan` lists of a swept stage: its stages, its variants without their seeds, and
/// the seeds each has.
fn group_of(stage: &str, variants: &[Variant], described: &[VariantOf]) -> Swept {
    let mut group = Swept {
        stage: stage.to_string(),
        stages: variants.iter().map(|v| v.name.clone()).collect(),
        variants: Vec::new(),
        seeds: Vec::new(),
    };
    for d in described {
        let seeds: Vec<String> = d.seeds.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let seeds = seeds.join(",");
        if !group.variants.contains(&d.name()) {
            group.variants.push(d.name());
        }
        if !seeds.is_empty() && !group.seeds.contains(&seeds) {
            group.seeds.push(seeds);
        }
    }
    group
}

/// The stages in an order where each comes after the stages it reads (declaration order
/// otherwise; inputs that name no stage, and cycles, are the graph check's to report).
fn topological(stages: &DeTable, names: &[String]) -> Vec<usize> {
    let index: HashMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let deps: Vec<BTreeSet<usize>> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            input_refs(stages.get(n.as_str()).and_then(|v| v.get_ref().as_table()))
                .iter()
                .filter_map(|(r, _)| index.get(base_of(r)).copied())
                .filter(|&d| d != i)
                .collect()
        })
        .collect();
    let mut placed = vec![false; names.len()];
    let mut order = Vec::with_capacity(names.len());
    loop {
        let next = (0..names.len()).find(|&i| !placed[i] && deps[i].iter().all(|&d| placed[d]));
        match next {
            Some(i) => {
                placed[i] = true;
                order.push(i);
            }
            None => break,
        }
    }
    // A cycle: the rest in declaration order (the graph check reports it).
    order.extend((0..names.len()).filter(|&i| !placed[i]));
    order
}

/// The stage an input names: `objects` for `objects` and for its sub-stage `objects.select`.
fn base_of(input: &str) -> &str {
    input.split('.').next().unwrap_or(input)
}

/// A stage table's `inputs`, as written, with their spans.
fn input_refs(table: Option<&DeTable>) -> Vec<(String, std::ops::Range<usize>)> {
    let Some(t) = table else {
        return Vec::new();
    };
    match t.get("inputs").map(|i| i.get_ref()) {
        Some(DeValue::Array(list)) => list
            .iter()
            .filter_map(|v| match v.get_ref() {
                DeValue::String(s) => Some((s.to_string(), v.span())),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn is_swept(variants: &[Variant]) -> bool {
    !(variants.len() == 1 && variants[0].choices.is_empty())
}

fn reads_swept(table: &DeTable, done: &HashMap<String, Vec<Variant>>) -> bool {
    input_refs(Some(table))
        .iter()
        .any(|(r, _)| done.get(base_of(r)).is_some_and(|v| is_swept(v)))
}

/// A stage's own swept parameters, checked.
fn sweeps_of<'s>(
    stage: &str,
    table: &DeTable<'s>,
    sources: &Sources,
) -> Result<Vec<SweptParam<'s>>, PipelineError> {
    let mut out = Vec::new();
    for (key, value) in table {
        let param = key.get_ref().to_string();
        if !is_sweep(value.get_ref()) {
            refuse_nested(value, sources, &format!("stage.{stage}.{param}"))?;
            continue;
        }
        let DeValue::Table(marker) = value.get_ref() else {
            unreachable!("a sweep is a table")
        };
        let (how, list) = marker.iter().next().expect("a sweep has one key");
        let zip = how.get_ref() == "zip";
        let at =
            |message: String| sources.at(value.span().start, format!("stage `{stage}`: {message}"));
        if matches!(param.as_str(), "kind" | "inputs") {
            return Err(at(format!(
                "`{param}` cannot be swept: a sweep varies a parameter of one stage; write a \
                 stage per {param} (or an overlay per experiment, given with --with)"
            )));
        }
        let DeValue::Array(values) = list.get_ref() else {
            return Err(at(format!(
                "`{} = ...` takes a list of values, e.g. {param} = {{ {} = [0.1, 0.5, 1.0] }}",
                how.get_ref(),
                how.get_ref()
            )));
        };
        if values.is_empty() {
            return Err(at(format!(
                "the sweep of `{param}` is empty; give at least one value"
            )));
        }
        if let Some(mixed) = values
            .iter()
            .find(|v| type_name(v.get_ref()) != type_name(values[0].get_ref()))
        {
            return Err(sources.at(
                mixed.span().start,
                format!(
                    "stage `{stage}`: the sweep of `{param}` mixes types: {} and {}; every value \
                     of a sweep is of one type",
                    type_name(values[0].get_ref()),
                    type_name(mixed.get_ref())
                ),
            ));
        }
        for v in values {
            refuse_nested(v, sources, &format!("stage.{stage}.{param}"))?;
        }
        let labels: Vec<String> = values.iter().map(|v| label(v.get_ref())).collect();
        let mut seen = BTreeSet::new();
        for (v, l) in values.iter().zip(&labels) {
            if !seen.insert(l.as_str()) {
                return Err(sources.at(
                    v.span().start,
                    format!(
                        "stage `{stage}`: the sweep of `{param}` has `{l}` twice (variant names \
                         print values this way); give each value once"
                    ),
                ));
            }
        }
        out.push(SweptParam {
            param,
            values: values.iter().cloned().collect(),
            labels,
            zip,
        });
    }
    let zipped: Vec<&SweptParam> = out.iter().filter(|s| s.zip).collect();
    if let Some(first) = zipped.first()
        && let Some(other) = zipped.iter().find(|s| s.values.len() != first.values.len())
    {
        let at = table
            .get(other.param.as_str())
            .map_or(0, |v| v.span().start);
        return Err(sources.at(
            at,
            format!(
                "stage `{stage}`: `{}` zips {} values and `{}` {}; values are paired one by one, \
                 so zipped lists have the same length",
                first.param,
                first.values.len(),
                other.param,
                other.values.len()
            ),
        ));
    }
    Ok(out)
}

/// A sweep anywhere but on a stage's own key is an error that says where to put it.
fn refuse_nested(
    value: &Spanned<DeValue>,
    sources: &Sources,
    path: &str,
) -> Result<(), PipelineError> {
    match value.get_ref() {
        v if is_sweep(v) => Err(sources.at(
            value.span().start,
            format!(
                "`{path}`: a sweep varies a stage's own parameter; write it on the stage's key, \
                 with whole values: `KEY = {{ sweep = [...] }}` in a [stage.NAME] table"
            ),
        )),
        DeValue::Table(t) => t
            .iter()
            .try_for_each(|(k, v)| refuse_nested(v, sources, &format!("{path}.{}", k.get_ref()))),
        DeValue::Array(a) => a.iter().try_for_each(|v| refuse_nested(v, sources, path)),
        _ => Ok(()),
    }
}

/// The type a sweep's values must share (integers and floats are both numbers: `[0.1, 1]`
/// is one sweep of a float).
fn type_name(v: &DeValue) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) | DeValue::Float(_) => "a number",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date",
        DeValue::Array(_) => "a list",
        DeValue::Table(_) => "a table",
    }
}

/// A value as variant names print it: numbers as written, strings bare with characters that
/// do not belong in a file name as `_`, lists and tables compact.
pub fn label(v: &DeValue) -> String {
    match v {
        DeValue::String(s) => s
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "_-.+".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect(),
        DeValue::Integer(i) => i.to_string(),
        DeValue::Float(f) => f.as_str().to_string(),
        DeValue::Boolean(b) => b.to_string(),
        DeValue::Datetime(d) => d.to_string().replace(':', "-"),
        DeValue::Array(a) => format!(
            "[{}]",
            a.iter()
                .map(|v| label(v.get_ref()))
                .collect::<Vec<_>>()
                .join(",")
        ),
        DeValue::Table(t) => format!(
            "{{{}}}",
            t.iter()
                .map(|(k, v)| format!("{}={}", k.get_ref(), label(v.get_ref())))
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

/// Every variant of one stage: the variants of its swept inputs that agree on what they
/// share, times its own sweeps.
fn variants_of<'s>(
    stage: &str,
    header: std::ops::Range<usize>,
    table: &DeTable<'s>,
    own: &[SweptParam<'s>],
    gathers: bool,
    done: &HashMap<String, Vec<Variant<'s>>>,
    sources: &Sources,
) -> Result<Vec<Variant<'s>>, PipelineError> {
    let own_count: usize = dimensions(own).iter().product();
    let too_many = |count: usize, what: String| {
        sources.at(
            header.start,
            format!(
                "stage `{stage}`: {what} make {count} variants; the most one stage may have is \
                 {MOST_VARIANTS}: sweep fewer values, or pair them with `zip` instead of taking \
                 their product"
            ),
        )
    };
    if own_count > MOST_VARIANTS {
        let sizes: Vec<String> = dimensions(own).iter().map(|n| n.to_string()).collect();
        return Err(too_many(
            own_count,
            format!("its sweeps ({})", sizes.join(" × ")),
        ));
    }
    let own_combos = own_product(stage, own);
    let mut partial: Vec<(Vec<Choice<'s>>, HashMap<String, usize>)> =
        vec![(Vec::new(), HashMap::new())];
    if !gathers {
        // Each swept stage it reads, once (`objects` and `objects.select` are one).
        let mut bases: Vec<String> = Vec::new();
        for (r, _) in input_refs(Some(table)) {
            let base = base_of(&r).to_string();
            if !bases.contains(&base) && done.get(&base).is_some_and(|v| is_swept(v)) {
                bases.push(base);
            }
        }
        for base in bases {
            let upstream = &done[&base];
            let mut next = Vec::new();
            for (choices, picks) in &partial {
                for (i, v) in upstream.iter().enumerate() {
                    if agree(choices, &v.choices) {
                        let mut merged = choices.clone();
                        for c in &v.choices {
                            if !merged
                                .iter()
                                .any(|m| m.stage == c.stage && m.param == c.param)
                            {
                                merged.push(c.clone());
                            }
                        }
                        let mut picks = picks.clone();
                        picks.insert(base.clone(), i);
                        next.push((merged, picks));
                    }
                }
            }
            if next.len() * own_count > MOST_VARIANTS {
                return Err(too_many(
                    next.len() * own_count,
                    "the variants of its inputs and its own sweeps".into(),
                ));
            }
            partial = next;
        }
    }
    let mut out = Vec::with_capacity(partial.len() * own_count);
    for (choices, picks) in &partial {
        for combo in &own_combos {
            let mut all = choices.clone();
            all.extend(combo.iter().cloned());
            out.push(Variant {
                name: variant_name(stage, &all),
                choices: all,
                picks: picks.clone(),
            });
        }
    }
    Ok(out)
}

/// The sizes of a stage's sweep dimensions: each swept parameter, and all zipped ones as one.
fn dimensions(own: &[SweptParam]) -> Vec<usize> {
    let mut dims: Vec<usize> = own
        .iter()
        .filter(|s| !s.zip)
        .map(|s| s.values.len())
        .collect();
    if let Some(z) = own.iter().find(|s| s.zip) {
        dims.push(z.values.len());
    }
    dims
}

/// A stage's own choices, one list per variant: the product of its swept parameters, with
/// zipped parameters taken together value by value. No sweeps: one empty list.
fn own_product<'s>(stage: &str, own: &[SweptParam<'s>]) -> Vec<Vec<Choice<'s>>> {
    let choice = |s: &SweptParam<'s>, i: usize| Choice {
        stage: stage.to_string(),
        param: s.param.clone(),
        label: s.labels[i].clone(),
        value: s.values[i].clone(),
    };
    let mut combos: Vec<Vec<Choice<'s>>> = vec![Vec::new()];
    let mut zip_done = false;
    for s in own {
        if s.zip {
            if zip_done {
                continue;
            }
            zip_done = true;
            let zipped: Vec<&SweptParam> = own.iter().filter(|z| z.zip).collect();
            combos = combos
                .into_iter()
                .flat_map(|c| {
                    let zipped = &zipped;
                    (0..s.values.len()).map(move |i| {
                        let mut c = c.clone();
                        c.extend(zipped.iter().map(|z| choice(z, i)));
                        c
                    })
                })
                .collect();
        } else {
            combos = combos
                .into_iter()
                .flat_map(|c| {
                    (0..s.values.len()).map(move |i| {
                        let mut c = c.clone();
                        c.push(choice(s, i));
                        c
                    })
                })
                .collect();
        }
    }
    combos
}

/// Whether two lists of choices agree on every parameter both set.
fn agree(a: &[Choice], b: &[Choice]) -> bool {
    b.iter().all(|c| {
        a.iter()
            .find(|x| x.stage == c.stage && x.param == c.param)
            .is_none_or(|x| x.label == c.label)
    })
}

/// `STAGE[param=value,…]`: the seeds last; a parameter is named by its stage too
/// (`split.seed`) when two stages' parameters of that name are in the list.
fn variant_name(stage: &str, choices: &[Choice]) -> String {
    if choices.is_empty() {
        return stage.to_string();
    }
    let shown = labelled(choices);
    let parts: Vec<String> = shown
        .iter()
        .filter(|(_, _, seed)| !seed)
        .chain(shown.iter().filter(|(_, _, seed)| *seed))
        .map(|(k, v, _)| format!("{k}={v}"))
        .collect();
    format!("{stage}[{}]", parts.join(","))
}

/// Each choice as `(name, value, is a seed)`.
fn labelled(choices: &[Choice]) -> Vec<(String, String, bool)> {
    choices
        .iter()
        .map(|c| {
            let shared = choices.iter().filter(|o| o.param == c.param).count() > 1;
            let key = if shared {
                format!("{}.{}", c.stage, c.param)
            } else {
                c.param.clone()
            };
            (key, c.label.clone(), c.param == SEED)
        })
        .collect()
}

fn describe(stage: &str, choices: &[Choice]) -> VariantOf {
    let shown = labelled(choices);
    VariantOf {
        stage: stage.to_string(),
        params: shown
            .iter()
            .filter(|(_, _, seed)| !seed)
            .map(|(k, v, _)| (k.clone(), v.clone()))
            .collect(),
        seeds: shown
            .iter()
            .filter(|(_, _, seed)| *seed)
            .map(|(k, v, _)| (k.clone(), v.clone()))
            .collect(),
    }
}

/// A variant's table: its own choices in place of the sweeps, and its inputs renamed to the
/// variants it reads (every variant, for a stage that takes them all).
fn variant_table<'s>(
    stage: &str,
    table: &DeTable<'s>,
    variant: &Variant<'s>,
    gathers: bool,
    done: &HashMap<String, Vec<Variant<'s>>>,
) -> DeTable<'s> {
    let mut t = table.clone();
    for c in variant.choices.iter().filter(|c| c.stage == stage) {
        if let Some(v) = t.get_mut(c.param.as_str()) {
            *v = c.value.clone();
        }
    }
    if let Some(inputs) = t.get_mut("inputs")
        && let DeValue::Array(list) = inputs.get_mut()
    {
        let mut renamed = Vec::with_capacity(list.len());
        for item in list.iter() {
            let DeValue::String(r) = item.get_ref() else {
                renamed.push(item.clone());
                continue;
            };
            let base = base_of(r);
            let suffix = &r[base.len()..];
            let renamed_to = |name: &str| {
                Spanned::new(
                    item.span(),
                    DeValue::String(Cow::Owned(format!("{name}{suffix}"))),
                )
            };
            match done.get(base) {
                Some(up) if is_swept(up) && gathers => {
                    renamed.extend(up.iter().map(|v| renamed_to(&v.name)))
                }
                Some(up) if is_swept(up) => match variant.picks.get(base) {
                    Some(&i) => renamed.push(renamed_to(&up[i].name)),
                    None => renamed.push(item.clone()),
                },
                _ => renamed.push(item.clone()),
            }
        }
        *list = renamed.into_iter().collect();
    }
    t
}

#[cfg(test)]
mod tests {
    use crate::pipeline::{Layers, Pipeline};
    use std::path::Path;

    const FILE: &str = r#"
[stage.a]
kind = "command"
items = ["x"]
cmd = "true"
timeout = { sweep = [1.0, 2.5] }

[stage.b]
kind = "command"
inputs = ["a"]
cmd = "true"
params = { sweep = [{ K = "one" }, { K = "two words/x" }] }

[stage.c]
kind = "command"
inputs = ["a", "b"]
cmd = "true"
"#;

    fn names(text: &str, set: &[&str]) -> Vec<String> {
        let layers = Layers {
            with: Vec::new(),
            set: set.iter().map(|s| s.to_string()).collect(),
        };
        let p = Pipeline::parse_with(Path::new("p.toml"), text, &layers).unwrap();
        p.workflow.stages.iter().map(|s| s.name.clone()).collect()
    }

    #[test]
    fn downstream_stages_follow_the_variants_of_their_inputs_that_agree() {
        let got = names(FILE, &[]);
        assert_eq!(
            got,
            [
                "a[timeout=1.0]",
                "a[timeout=2.5]",
                "b[timeout=1.0,params={K=one}]",
                "b[timeout=1.0,params={K=two_words_x}]",
                "b[timeout=2.5,params={K=one}]",
                "b[timeout=2.5,params={K=two_words_x}]",
                // c reads a and b: only the pairs that agree on a's timeout.
                "c[timeout=1.0,params={K=one}]",
                "c[timeout=1.0,params={K=two_words_x}]",
                "c[timeout=2.5,params={K=one}]",
                "c[timeout=2.5,params={K=two_words_x}]",
            ]
        );
    }

    #[test]
    fn a_variant_reads_its_input_under_the_name_the_file_gives_it() {
        let p = Pipeline::parse(Path::new("p.toml"), FILE).unwrap();
        let c = p
            .workflow
            .stages
            .iter()
            .find(|s| s.name.starts_with("c[timeout=2.5"))
            .unwrap();
        assert_eq!(
            c.inputs,
            ["a[timeout=2.5]", "b[timeout=2.5,params={K=one}]"]
        );
        assert_eq!(c.input_keys, ["a", "b"]);
        let groups: Vec<&str> = p
            .workflow
            .variants
            .iter()
            .map(|g| g.stage.as_str())
            .collect();
        assert_eq!(groups, ["a", "b", "c"]);
    }

    #[test]
    fn seeds_come_last_and_a_shared_name_is_qualified_by_its_stage() {
        let text = "[stage.a]\nkind = \"command\"\nitems = [\"x\"]\ncmd = \"true\"\n\
                    params = { sweep = [{ s = \"1\" }] }\n[stage.split]\nkind = \"split\"\n\
                    inputs = [\"a\"]\nseed = { sweep = [2, 1] }\n";
        let got = names(text, &[]);
        assert_eq!(got[0], "a[params={s=1}]");
        assert!(
            got.contains(&"split[params={s=1},seed=2]".to_string()),
            "{got:?}"
        );
        let got = names(FILE, &["a.timeout=1.0", "c.timeout={ sweep = [3, 4] }"]);
        // a's timeout is one value now (no sweep); b's params and c's own timeout vary.
        assert_eq!(
            &got[got.len() - 4..],
            [
                "c[params={K=one},timeout=3]",
                "c[params={K=one},timeout=4]",
                "c[params={K=two_words_x},timeout=3]",
                "c[params={K=two_words_x},timeout=4]",
            ]
        );
        let text = "[stage.a]\nkind = \"command\"\nitems = [\"x\"]\ncmd = \"true\"\n\
                    timeout = { sweep = [1, 2] }\n[stage.b]\nkind = \"command\"\n\
                    inputs = [\"a\"]\ncmd = \"true\"\ntimeout = { sweep = [3] }\n";
        assert_eq!(
            names(text, &[]),
            [
                "a[timeout=1]",
                "a[timeout=2]",
                "b[a.timeout=1,b.timeout=3]",
                "b[a.timeout=2,b.timeout=3]"
            ]
        );
    }
}
