//! mergekit's `slices:` syntax: the output's layers are runs of input layers, stacked in order
//! (mergekit 0.1.5's `MergePlanner.plan_slice`). Every slice merges layer `a_j + k` of each
//! source `j` into output layer `offset + k`, so a slice can read layer 7 of one model for
//! output layer 2, and a passthrough recipe can stack ranges of different models into a deeper
//! model (a "frankenmerge").
//!
//! The plan is the ordinary [`MergePlan`](super::plan::MergePlan): each output tensor is a
//! [`TensorTask`] whose inputs are `(member, tensor index)` pairs, so the engine, the GPU
//! backend, the preview and the export need nothing slice-specific. Tensors outside the layers
//! follow mergekit: the embeddings (pre-weights) are merged from the first slice's sources, the
//! final norm and head (post-weights) from the last slice's, both at `t = 0`.

use std::path::Path;

use super::BaseUse;
use super::params::{InputSource, ParamsAt};
use super::plan::{
    ModelInput, Opened, Opener, PlanError, Planned, TensorInputs, TensorPlanner, TensorTask,
    check_input_count, tied_name,
};
use super::recipe::{OutputSlice, Recipe, RecipeError};
use crate::family::{Family, Member};
use crate::layout::{Layout, ModuleKind, split_block};

/// Checks what can be checked without opening a model: every slice has sources, no source has
/// an empty range, and the sources of a slice have the same number of layers.
pub fn check_shape(slices: &[OutputSlice], file: &Path) -> Result<(), RecipeError> {
    let bad = |key: String, message: String| RecipeError::BadValue {
        file: file.to_path_buf(),
        key,
        message,
    };
    for (s, slice) in slices.iter().enumerate() {
        let Some(first) = slice.sources.first() else {
            return Err(bad(
                format!("slices[{s}].sources"),
                "the slice lists no sources; add `- model: PATH` with a `layer_range: [start, end]`"
                    .to_owned(),
            ));
        };
        for (j, source) in slice.sources.iter().enumerate() {
            let [start, end] = source.layer_range;
            if start >= end {
                return Err(bad(
                    format!("slices[{s}].sources[{j}].layer_range"),
                    format!(
                        "[{start}, {end}] holds no layers; the range is half-open, so \
                         [{start}, {}] is layer {start} alone",
                        start + 1
                    ),
                ));
            }
            if source.len() != first.len() {
                return Err(bad(
                    format!("slices[{s}].sources[{j}].layer_range"),
                    format!(
                        "[{start}, {end}] holds {} layers but slices[{s}].sources[0] holds {}; \
                         all sources of a slice must hold the same number of layers",
                        source.len(),
                        first.len()
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// A slice's source, opened.
struct Source<'r> {
    /// Index into the opened models.
    opened: usize,
    /// Index into the family's models; `None` for the base.
    member: Option<usize>,
    params: InputSource<'r>,
    first_layer: usize,
}

/// Plans a `slices:` recipe (see the module docs).
pub(super) fn plan(
    recipe: &Recipe,
    tensors: &TensorPlanner<'_>,
    opener: &mut Opener<'_>,
    base_ref: Option<&Opened>,
) -> Result<Planned, PlanError> {
    let file = tensors.file;
    let spec = tensors.method.spec();
    let contract = |message: String| -> PlanError {
        RecipeError::Contract {
            file: file.to_path_buf(),
            message,
        }
        .into()
    };

    // Every model the slices read, once each: a model used by several slices is one member.
    let mut opened: Vec<Opened> = Vec::new();
    let mut at: Vec<Vec<usize>> = Vec::with_capacity(recipe.slices.len());
    for (s, slice) in recipe.slices.iter().enumerate() {
        let mut here = Vec::with_capacity(slice.sources.len());
        for (j, source) in slice.sources.iter().enumerate() {
            let o = opener.open(&source.model, &format!("slices[{s}].sources[{j}].model"))?;
            let index = match opened.iter().position(|x| x.key == o.key) {
                Some(i) => i,
                None => {
                    opened.push(o);
                    opened.len() - 1
                }
            };
            if here.contains(&index) {
                // mergekit keys a slice's inputs by model, so the second range would silently
                // replace the first.
                return Err(RecipeError::BadValue {
                    file: file.to_path_buf(),
                    key: format!("slices[{s}].sources[{j}].model"),
                    message: format!(
                        "`{}` is already a source of this slice; a model can be read once per \
                         slice (put its other range in a slice of its own)",
                        source.model
                    ),
                }
                .into());
            }
            here.push(index);
        }
        at.push(here);
    }

    // The base: the recipe's, or a slice's own `base_model`, the same for every slice.
    let base_key = match spec.base {
        BaseUse::Ignored => None,
        BaseUse::Required | BaseUse::Optional => {
            let mut key = None;
            for (s, slice) in recipe.slices.iter().enumerate() {
                let this = match &slice.base_model {
                    Some(m) => Some(opener.open(m, &format!("slices[{s}].base_model"))?),
                    None => None,
                };
                let this = this.as_ref().or(base_ref);
                if spec.base == BaseUse::Required && this.is_none() {
                    return Err(contract(format!(
                        "{} takes task vectors against a base model; add `base_model: PATH`",
                        spec.name
                    )));
                }
                let this = this.map(|o| o.key.clone());
                if s > 0 && this != key {
                    return Err(RecipeError::Unsupported {
                        file: file.to_path_buf(),
                        key: format!("slices[{s}].base_model"),
                        hint: "give every slice the same base model".to_owned(),
                    }
                    .into());
                }
                key = this;
            }
            key
        }
    };
    let base_at = base_key
        .as_ref()
        .map(|key| {
            opened.iter().position(|o| &o.key == key).ok_or_else(|| {
                contract(format!(
                    "the base model is not a source of any slice; {} reads the base's layers \
                     from each slice, so list it among every slice's sources",
                    spec.name
                ))
            })
        })
        .transpose()?;
    let member_of: Vec<Option<usize>> = {
        let mut next = 0;
        (0..opened.len())
            .map(|i| {
                (Some(i) != base_at).then(|| {
                    next += 1;
                    next - 1
                })
            })
            .collect()
    };
    let family = Family {
        base: base_at.map(|i| opened[i].member.clone()),
        models: opened
            .iter()
            .enumerate()
            .filter(|&(i, _)| Some(i) != base_at)
            .map(|(_, o)| o.member.clone())
            .collect(),
    };

    // The model whose tensor names are the output's: mergekit's output config comes from the
    // base model, else from a referenced model (the first slice's first source here).
    let template: &Member = base_ref.map_or(&opened[at[0][0]].member, |b| &b.member);
    let template_layout = Layout::of_checkpoint(&template.checkpoint);
    let stack = match template_layout.stacks.keys().collect::<Vec<_>>().as_slice() {
        [one] => (*one).clone(),
        stacks => {
            return Err(contract(format!(
                "slices need a model with one stack of layers, but {} has {}; mergekit \
                 requires its `modules:` syntax for such models, which mergescope does not \
                 support yet",
                template.label,
                if stacks.is_empty() {
                    "none".to_owned()
                } else {
                    stacks
                        .iter()
                        .map(|s| format!("`{s}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            )));
        }
    };
    let layer_counts: Vec<usize> = opened
        .iter()
        .map(|o| {
            Layout::of_checkpoint(&o.member.checkpoint)
                .stacks
                .get(&stack)
                .copied()
                .unwrap_or(0)
        })
        .collect();

    let mut slices: Vec<Vec<Source<'_>>> = Vec::with_capacity(recipe.slices.len());
    for (s, slice) in recipe.slices.iter().enumerate() {
        let mut sources = Vec::with_capacity(slice.sources.len());
        for (j, source) in slice.sources.iter().enumerate() {
            let opened_index = at[s][j];
            let layers = layer_counts[opened_index];
            let [start, end] = source.layer_range;
            if end > layers {
                return Err(RecipeError::BadValue {
                    file: file.to_path_buf(),
                    key: format!("slices[{s}].sources[{j}].layer_range"),
                    message: format!(
                        "[{start}, {end}] reaches past `{}`, which has {layers} layers in \
                         `{stack}` (0 to {}); the end is exclusive, at most {layers}",
                        source.model,
                        layers.saturating_sub(1)
                    ),
                }
                .into());
            }
            sources.push(Source {
                opened: opened_index,
                member: member_of[opened_index],
                params: InputSource {
                    own: Some((
                        ParamsAt::SliceSource {
                            slice: s,
                            source: j,
                        },
                        &source.parameters,
                    )),
                },
                first_layer: start,
            });
        }
        let non_base = sources.iter().filter(|x| x.member.is_some()).count();
        if base_at.is_some() && non_base == sources.len() {
            return Err(contract(format!(
                "slices[{s}] does not list the base model among its sources; {} reads the \
                 base's layers from the slice",
                spec.name
            )));
        }
        check_input_count(
            tensors,
            base_at.is_some(),
            non_base,
            &format!("slices[{s}]"),
        )?;
        slices.push(sources);
    }

    // The layer template: the names of one layer of the template model, in file order, as the
    // text after the layer index (`.self_attn.q_proj.weight`).
    let first_block = template
        .checkpoint
        .tensors()
        .iter()
        .filter_map(|t| split_block(&t.name).filter(|(st, _)| *st == stack))
        .map(|(_, b)| b)
        .min()
        .unwrap_or(0);
    let layer_prefix = format!("{stack}.{first_block}.");
    let suffixes: Vec<&str> = template
        .checkpoint
        .tensors()
        .iter()
        .filter_map(|t| t.name.strip_prefix(&layer_prefix))
        .collect();
    let loose: Vec<&str> = template
        .checkpoint
        .tensors()
        .iter()
        .map(|t| t.name.as_str())
        .filter(|n| split_block(n).is_none())
        .collect();
    let is_post = |name: &str| {
        matches!(
            ModuleKind::classify(name),
            ModuleKind::Head | ModuleKind::Norm
        )
    };

    let mut warnings = Vec::new();
    let mut tasks: Vec<TensorTask> = Vec::new();
    let mut plan_one = |slice: usize,
                        sources: &[Source<'_>],
                        out_name: &str,
                        in_names: &[String],
                        t: f64|
     -> Result<(), PlanError> {
        let index = |source: &Source<'_>, name: &str| {
            let checkpoint = &opened[source.opened].member.checkpoint;
            checkpoint
                .index_of(name)
                .or_else(|| tied_name(name).and_then(|n| checkpoint.index_of(n)))
        };
        let inputs = TensorInputs {
            name: out_name,
            base: base_at.map(|_| {
                sources
                    .iter()
                    .zip(in_names)
                    .find(|(x, _)| x.member.is_none())
                    .and_then(|(x, n)| index(x, n))
            }),
            models: sources
                .iter()
                .zip(in_names)
                .filter_map(|(x, n)| {
                    x.member.map(|member| ModelInput {
                        member,
                        index: index(x, n),
                        source: x.params,
                        name: n,
                    })
                })
                .collect(),
            t,
        };
        let resolver = tensors.resolver(recipe, Some((slice, &recipe.slices[slice].parameters)));
        if let Some(task) = tensors.task(&family, &inputs, &resolver, &mut warnings)? {
            tasks.push(task);
        }
        Ok(())
    };

    // Embeddings and other tensors outside the layers: the first slice's sources, t = 0.
    for &name in loose.iter().filter(|n| !is_post(n)) {
        let names = vec![name.to_owned(); slices[0].len()];
        plan_one(0, &slices[0], name, &names, 0.0)?;
    }
    let mut out_layer = 0;
    for (s, sources) in slices.iter().enumerate() {
        let layers = recipe.slices[s].sources[0].len();
        for k in 0..layers {
            // mergekit: each slice restarts the gradient with its own length (ALGORITHMS.md §1.3).
            let t = if layers > 1 {
                k as f64 / (layers - 1) as f64
            } else {
                1.0
            };
            for suffix in &suffixes {
                let out_name = format!("{stack}.{out_layer}.{suffix}");
                let in_names: Vec<String> = sources
                    .iter()
                    .map(|x| format!("{stack}.{}.{suffix}", x.first_layer + k))
                    .collect();
                plan_one(s, sources, &out_name, &in_names, t)?;
            }
            out_layer += 1;
        }
    }
    // Final norm and head: the last slice's sources, t = 0. mergekit pairs them with the first
    // slice's source count (`zip` in `plan_module`), so a longer last slice loses its extra
    // sources here; that is reproduced.
    let last = slices.len() - 1;
    let post_sources = &slices[last][..slices[last].len().min(slices[0].len())];
    for &name in loose.iter().filter(|n| is_post(n)) {
        let names = vec![name.to_owned(); post_sources.len()];
        plan_one(last, post_sources, name, &names, 0.0)?;
    }

    let names: Vec<&str> = tasks.iter().map(|t| t.name.as_str()).collect();
    let layout = Layout::from_names(template.checkpoint.config(), &names);
    Ok(Planned {
        family,
        layout,
        tasks,
        warnings,
        layer_count: Some(out_layer),
    })
}
