//! Objects as their renders: one grid per object (a row per ring of polar angle, a column
//! per azimuth) with its caption, what a user of the study looks at to check what Blender
//! drew. Paged by object over the render stage's recorded items, so a page reads only its
//! own objects whatever the cache holds.

use super::layout::{Nav, page};
use super::{UiError, UiState};
use crate::render::camera::ViewSpec;
use crate::stages::embed::CAPTION_SUFFIX;
use crate::stages::render::VIEW_SEPARATOR;
use crate::store::Store;
use crate::store::records::Latest;
use axum::extract::{Query, State};
use axum::response::Html;
use maud::{Markup, html};
use serde::Deserialize;
use std::sync::Arc;

/// Objects on one page.
pub const OBJECTS_PER_PAGE: usize = 12;

#[derive(Deserialize)]
pub struct ObjectsQuery {
    /// The render stage (default: the first).
    pub stage: Option<String>,
    /// The first object of the page (default: the first of all).
    pub from: Option<String>,
}

/// One view of an object: its camera, and what the page shows for it.
struct View {
    spec: ViewSpec,
    /// The image's URL, when the view has a result with a PNG.
    src: Option<String>,
    key: String,
}

struct Object {
    uid: String,
    views: Vec<View>,
}

pub async fn objects_page(
    State(state): State<Arc<UiState>>,
    Query(q): Query<ObjectsQuery>,
) -> Result<Html<String>, UiError> {
    // (name, kind) of every stage: the render stages are the grids, the others hold captions.
    let stages: Vec<(String, String)> = state.live.read(|s| {
        s.stages
            .iter()
            .map(|st| (st.name.clone(), st.kind.clone()))
            .collect()
    });
    let renders: Vec<String> = stages
        .iter()
        .filter(|(_, kind)| kind == "render")
        .map(|(name, _)| name.clone())
        .collect();
    let Some(stage) = q.stage.clone().or_else(|| renders.first().cloned()) else {
        let body = html! { h1 { "Objects" } p { "This pipeline has no render stage." } };
        return Ok(page("Objects", Nav::Objects, body));
    };
    if !renders.contains(&stage) {
        return Err(UiError::NotFound(format!("no render stage `{stage}`")));
    }
    let from = q.from.clone().unwrap_or_default();
    let (objects, next) = read_objects(&state.store, &stage, &from)?;
    let base = format!("/objects?{}", query(&[("stage", &stage)]));
    let body = html! {
        h1 { "Objects" }
        p.muted {
            "Render stage " b { (stage) } @if renders.len() > 1 {
                " (others: " @for r in renders.iter().filter(|r| **r != stage) {
                    a href=(format!("/objects?{}", query(&[("stage", r)]))) { (r) } " "
                } ")"
            }
            ". Rows are rings of polar angle, columns azimuths; " (OBJECTS_PER_PAGE) " objects a page."
        }
        @if objects.is_empty() { p { "No renders recorded yet." } }
        @for o in &objects { (object_grid(o, caption(&state.store, &stages, &o.uid))) }
        p.pager {
            @if !from.is_empty() { a href=(base.clone()) { "← first page" } }
            @if let Some(next) = &next {
                a href=(format!("/objects?{}", query(&[("stage", &stage), ("from", next)]))) { "next objects →" }
            }
        }
    };
    Ok(page("Objects", Nav::Objects, body))
}

/// A query string, its values encoded.
fn query(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// The objects of one page, and the first object of the next page.
fn read_objects(
    store: &Store,
    stage: &str,
    from: &str,
) -> Result<(Vec<Object>, Option<String>), UiError> {
    let mut objects: Vec<Object> = Vec::new();
    for entry in store.latest_of_stage(stage, from) {
        let (item, latest) = entry?;
        let Some((uid, view_id)) = item.split_once(VIEW_SEPARATOR) else {
            continue;
        };
        let Some(spec) = ViewSpec::parse_id(view_id) else {
            continue;
        };
        if objects.last().is_none_or(|o| o.uid != uid) {
            if objects.len() == OBJECTS_PER_PAGE {
                return Ok((objects, Some(uid.to_string())));
            }
            objects.push(Object {
                uid: uid.to_string(),
                views: Vec::new(),
            });
        }
        let view = view_of(store, spec, stage, &item, &latest)?;
        objects.last_mut().expect("pushed above").views.push(view);
    }
    Ok((objects, None))
}

fn view_of(
    store: &Store,
    spec: ViewSpec,
    stage: &str,
    item: &str,
    latest: &Latest,
) -> Result<View, UiError> {
    let key = latest.key;
    let src = store.result_of(&key, stage, item)?.and_then(|r| {
        r.outputs
            .iter()
            .enumerate()
            .find(|(_, o)| o.name.ends_with(".png"))
            .map(|(i, o)| match o.inline {
                Some(_) => format!("/task/{}/output/{i}", key.to_hex()),
                None => format!("/blob/{}", o.digest.to_hex()),
            })
    });
    Ok(View {
        spec,
        src,
        key: key.to_hex(),
    })
}

/// The object's caption: as an embed stage keyed its caption item, else as the stage that
/// made the object holds it in its item's parameters (a `command` stage's `items`).
fn caption(store: &Store, stages: &[(String, String)], uid: &str) -> Option<String> {
    let of = |stage: &str, item: &str| {
        let latest = store.latest(stage, item).ok()??;
        let record = store.record_of(&latest.key, stage, item).ok()??;
        let params = &record.item_params;
        params
            .get("caption")
            .cloned()
            .or_else(|| params.get("params.caption").map(|v| toml_text(v)))
    };
    let caption_item = format!("{uid}{CAPTION_SUFFIX}");
    stages
        .iter()
        .filter(|(_, kind)| kind == "embed")
        .find_map(|(stage, _)| of(stage, &caption_item))
        .or_else(|| stages.iter().find_map(|(stage, _)| of(stage, uid)))
}

/// A command item's parameter as its record keeps it (a TOML value: a string is quoted), as
/// text.
fn toml_text(value: &str) -> String {
    toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|t| t.get("v").and_then(|v| v.as_str()).map(str::to_string))
        .unwrap_or_else(|| value.to_string())
}

/// Degrees without trailing zeros.
fn deg(x: f64) -> String {
    let s = format!("{x:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn object_grid(o: &Object, caption: Option<String>) -> Markup {
    let sorted = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.dedup();
        v
    };
    let azimuths = sorted(o.views.iter().map(|v| v.spec.azimuth).collect());
    let polars = sorted(o.views.iter().map(|v| v.spec.polar).collect());
    html! {
        div.card.object {
            h3 { code { (o.uid) } }
            p.caption { @match &caption { Some(c) => { "“" (c) "”" } None => span.muted { "(no caption recorded)" } } }
            table.grid {
                tr {
                    th {}
                    @for a in &azimuths { th.label { "az " (deg(*a)) "°" } }
                }
                @for p in &polars {
                    tr {
                        th.label { "polar " (deg(*p)) "°" }
                        @for a in &azimuths {
                            @let view = o.views.iter().find(|v| v.spec.polar == *p && v.spec.azimuth == *a);
                            td { @match view {
                                Some(View { src: Some(src), key, .. }) => {
                                    a href=(format!("/task/{key}")) { img src=(src) alt=(format!("az {} polar {}", deg(*a), deg(*p))) loading="lazy"; }
                                }
                                Some(View { key, .. }) => { a.label href=(format!("/task/{key}")) { "no image" } }
                                None => { "–" }
                            } }
                        }
                    }
                }
            }
        }
    }
}
