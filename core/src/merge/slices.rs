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
            if source.layer_count() != first.layer_count() {
                return Err(bad(
                    format!("slices[{s}].sources[{j}].layer_range"),
                    format!(
                        "[{start}, {end}] holds {} layers but slices[{s}].sources[0] holds {}; \
                         all sources of a slice must hold the same number of layers",
                        source.layer_count(),
                        first.layer_count()
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
        let layers = recipe.slices[s].sources[0].layer_count();
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::dtype::FloatType;
    use crate::job::Job;
    use crate::merge::Value;
    use crate::merge::plan::{MergePlan, PlanOptions, TaskAction};
    use crate::synth::{LlamaShape, SynthFamily};

    /// A base and two fine-tunes of 4 layers, written once per test into `dir`.
    fn family(dir: &Path) {
        let shape = LlamaShape {
            hidden: 8,
            intermediate: 16,
            layers: 4,
            vocab: 16,
            heads: 2,
            kv_heads: 1,
        };
        let mut family = SynthFamily::new(shape, 2);
        family.dtype = FloatType::F32;
        family.write(dir, false, &Job::default()).unwrap();
    }

    fn plan(dir: &Path, yaml: &str) -> Result<MergePlan, PlanError> {
        let file = dir.join("recipe.yml");
        std::fs::write(&file, yaml).unwrap();
        let options = PlanOptions {
            cwd: dir.to_path_buf(),
            random_seed: Some(1),
            truncate_vocab: false,
        };
        MergePlan::from_file(&file, &options)
    }

    fn task<'p>(plan: &'p MergePlan, name: &str) -> &'p TensorTask {
        plan.tasks
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("no task {name}"))
    }

    /// The name of tensor `index` of family model `member`.
    fn input_name(plan: &MergePlan, member: usize, index: usize) -> (String, PathBuf) {
        let m = &plan.family.models[member];
        (
            m.checkpoint.tensors()[index].name.clone(),
            PathBuf::from(&m.label),
        )
    }

    const FRANKEN: &str = "merge_method: passthrough
slices:
  - sources:
      - model: base
        layer_range: [0, 3]
  - sources:
      - model: ft_1
        layer_range: [1, 4]
        parameters:
          scale:
            - filter: layers.2.
              value: 0.5
            - value: 1
  - sources:
      - model: base
        layer_range: [3, 4]
";

    #[test]
    fn a_frankenmerge_renames_layers_and_reads_each_from_its_source() {
        let dir = tempfile::tempdir().unwrap();
        family(dir.path());
        let plan = plan(dir.path(), FRANKEN).unwrap();
        // base is one member though two slices read it.
        assert_eq!(plan.family.models.len(), 2);
        assert!(plan.family.base.is_none());
        assert_eq!(plan.layer_count, Some(7));
        assert_eq!(plan.layout.num_layers(), 7);
        let q = |layer: usize| format!("model.layers.{layer}.self_attn.q_proj.weight");
        for (out, member, input) in [(0, 0, 0), (2, 0, 2), (3, 1, 1), (5, 1, 3), (6, 0, 3)] {
            let t = task(&plan, &q(out));
            assert_eq!(t.models.len(), 1);
            let (name, label) = input_name(&plan, t.models[0].0, t.models[0].1);
            assert_eq!((t.models[0].0, name.as_str()), (member, q(input).as_str()));
            assert_eq!(label, PathBuf::from(["base", "ft_1"][member]));
        }
        // The filter tests ft_1's own name: its layer 2 is output layer 4.
        let scale = |layer: usize| match &task(&plan, &q(layer)).action {
            TaskAction::Merge { params, .. } => params.model_f64(0, "scale"),
            other => panic!("{other:?}"),
        };
        assert_eq!((scale(3), scale(4), scale(5)), (1.0, 0.5, 1.0));
        // Embeddings from the first slice, final norm and head from the last: base either way.
        for name in [
            "model.embed_tokens.weight",
            "model.norm.weight",
            "lm_head.weight",
        ] {
            assert_eq!(task(&plan, name).models[0].0, 0, "{name}");
        }
        assert_eq!(plan.tasks.len(), 3 + 7 * 9);
    }

    #[test]
    fn each_slice_restarts_the_gradient_and_reads_its_own_parameters() {
        let dir = tempfile::tempdir().unwrap();
        family(dir.path());
        let yaml = "merge_method: slerp
base_model: base
slices:
  - sources:
      - model: base
        layer_range: [0, 3]
      - model: ft_1
        layer_range: [0, 3]
  - sources:
      - model: base
        layer_range: [3, 4]
      - model: ft_2
        layer_range: [1, 2]
    parameters:
      t: [0.25, 0.75]
parameters:
  t: [0, 1]
";
        let plan = plan(dir.path(), yaml).unwrap();
        assert_eq!(plan.layer_count, Some(4));
        let t = |name: &str| match &task(&plan, name).action {
            TaskAction::Merge { params, .. } => params.shared("t"),
            other => panic!("{other:?}"),
        };
        let mlp = |layer: usize| format!("model.layers.{layer}.mlp.up_proj.weight");
        // Slice 0: 3 layers, t = 0, 0.5, 1. Slice 1: one layer, t = 1 (mergekit), of its own
        // gradient.
        assert_eq!(t(&mlp(0)), Value::Float(0.0));
        assert_eq!(t(&mlp(1)), Value::Float(0.5));
        assert_eq!(t(&mlp(2)), Value::Float(1.0));
        assert_eq!(t(&mlp(3)), Value::Float(0.75));
        // Pre-weights take the first slice's parameters, post-weights the last's, at t = 0.
        assert_eq!(t("model.embed_tokens.weight"), Value::Float(0.0));
        assert_eq!(t("lm_head.weight"), Value::Float(0.25));
        let last = task(&plan, &mlp(3));
        assert!(last.base.is_some());
        let (name, label) = input_name(&plan, last.models[0].0, last.models[0].1);
        assert_eq!((name, label), (mlp(1), PathBuf::from("ft_2")));
    }

    fn error(yaml: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        family(dir.path());
        plan(dir.path(), yaml).unwrap_err().to_string()
    }

    #[test]
    fn bad_slices_are_named() {
        let source = |model: &str, a: usize, b: usize| {
            format!("      - model: {model}\n        layer_range: [{a}, {b}]\n")
        };
        let err = error(&format!(
            "merge_method: passthrough\nslices:\n  - sources:\n{}",
            source("base", 2, 6)
        ));
        assert!(
            err.contains("slices[0].sources[0].layer_range") && err.contains("4 layers"),
            "{err}"
        );
        let err = error(&format!(
            "merge_method: linear\nslices:\n  - sources:\n{}{}",
            source("base", 0, 2),
            source("ft_1", 0, 3)
        ));
        assert!(
            err.contains("slices[0].sources[1].layer_range") && err.contains("same number"),
            "{err}"
        );
        let err = error(&format!(
            "merge_method: passthrough\nslices:\n  - sources:\n{}",
            source("base", 2, 2)
        ));
        assert!(err.contains("holds no layers"), "{err}");
        let err = error("merge_method: passthrough\nslices:\n  - sources: []\n");
        assert!(
            err.contains("slices[0].sources") && err.contains("no sources"),
            "{err}"
        );
        let err = error(&format!(
            "merge_method: linear\nslices:\n  - sources:\n{}{}",
            source("base", 0, 2),
            source("base", 2, 4)
        ));
        assert!(err.contains("slices[0].sources[1].model"), "{err}");
        let err = error(&format!(
            "merge_method: slerp\nbase_model: base\nslices:\n  - sources:\n{}{}  - sources:\n{}{}",
            source("base", 0, 2),
            source("ft_1", 0, 2),
            source("ft_1", 2, 4),
            source("ft_2", 2, 4)
        ));
        assert!(err.contains("slices[1]") && err.contains("base"), "{err}");
        let err = error(&format!(
            "merge_method: passthrough\nslices:\n  - sources:\n{}{}",
            source("base", 0, 2),
            source("ft_1", 0, 2)
        ));
        assert!(
            err.contains("exactly 1") && err.contains("slices[0]"),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");
    }
}
