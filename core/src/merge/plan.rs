//! Turns a recipe and the checkpoints it names into per-tensor tasks, checking everything that
//! can be checked before a byte is written: model paths, the method's input contract, tensor
//! alignment, dtypes, and every parameter of every tensor.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::methods::{self, Lookup};
use super::params::{InputSource, Resolver};
use super::recipe::{Recipe, RecipeError};
use super::{BaseUse, MergeMethod, MissingPolicy, TensorParams};
use crate::checkpoint::{Checkpoint, CheckpointError};
use crate::dtype::{Dtype, FloatType};
use crate::family::{AlignmentIssue, Family, Member, MemberId, dtype_name};
use crate::layout::{Layout, ModuleKind};

/// What to do for one output tensor.
#[derive(Clone, Debug, PartialEq)]
pub enum TaskAction {
    /// Run the method in f32 and round once to `out`.
    Merge {
        out: FloatType,
        params: TensorParams,
    },
    /// A tensor that is not computed on (integer buffers, F64): copied from the reference,
    /// provided every input holds the same bytes.
    CopyIdentical,
    /// A float tensor only one input has, which the method's policy copies (slerp, nuslerp,
    /// nearswap, model_stock): decoded and written in the output dtype.
    Convert { out: FloatType },
}

/// One output tensor and where its inputs are.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorTask {
    pub name: String,
    pub shape: Vec<usize>,
    /// The dtype written.
    pub dtype: Dtype,
    /// Index of the tensor in the base checkpoint, when the method has a base and the base has it.
    pub base: Option<usize>,
    /// `(model, tensor index)` for every model that has the tensor, in the family's model order.
    /// Usually every model; fewer when the tensor is missing from some (ALGORITHMS.md §1.6).
    pub models: Vec<(usize, usize)>,
    pub action: TaskAction,
}

impl TensorTask {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn out_bytes(&self) -> u64 {
        (self.numel() * self.dtype.bitsize() / 8) as u64
    }
}

/// Everything needed to run a merge, fully checked.
#[derive(Debug)]
pub struct MergePlan {
    pub recipe: Recipe,
    pub recipe_file: PathBuf,
    pub method: &'static dyn MergeMethod,
    pub family: Family,
    pub layout: Layout,
    /// In the reference model's file order.
    pub tasks: Vec<TensorTask>,
    /// Folder whose `config.json` and `generation_config.json` are copied.
    pub config_source: Option<PathBuf>,
    /// Folder whose tokenizer files are copied.
    pub tokenizer_source: Option<PathBuf>,
    /// The output dtype when every merged tensor has the same one (written into `config.json`).
    pub output_type: Option<FloatType>,
    /// The seed of the random methods: the one asked for, or one drawn and recorded in the
    /// output's metadata so the merge can be repeated.
    pub random_seed: u64,
    /// Things the user should know that do not stop the merge.
    pub warnings: Vec<String>,
}

/// Why a merge cannot be planned.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(
        "{file}: tensor `{tensor}` is missing from {member}{more}; every model must have the tensors the reference model has"
    )]
    MissingTensor {
        file: PathBuf,
        tensor: String,
        member: String,
        more: String,
    },
    #[error(
        "{file}: tensor `{tensor}` has shape {got:?} in {member} but {expected:?} in {reference}; \
         models of different architectures or vocabulary sizes cannot be merged elementwise{hint}"
    )]
    ShapeMismatch {
        file: PathBuf,
        tensor: String,
        member: String,
        reference: String,
        expected: Vec<usize>,
        got: Vec<usize>,
        hint: &'static str,
    },
    #[error(
        "{file}: tensor `{tensor}` is {got} in {member} but {expected} in {reference}; float tensors \
         (F32/F16/BF16) can only be merged with float tensors"
    )]
    MixedKinds {
        file: PathBuf,
        tensor: String,
        member: String,
        reference: String,
        expected: String,
        got: String,
    },
    #[error("{file}: tensor `{tensor}`: {method}: {message}")]
    Method {
        file: PathBuf,
        tensor: String,
        method: String,
        message: String,
    },
}

/// Where the plan looks for things.
#[derive(Clone, Debug)]
pub struct PlanOptions {
    /// Relative model paths resolve against this folder first (mergekit's rule), then against
    /// the recipe's folder.
    pub cwd: PathBuf,
    pub random_seed: Option<u64>,
    /// Embedding and head tensors whose vocabulary sizes differ keep the leading rows every
    /// model has (ALGORITHMS.md §1.6); otherwise they are an error.
    pub truncate_vocab: bool,
}

impl MergePlan {
    /// Reads the recipe file and plans the merge.
    pub fn from_file(recipe_file: &Path, options: &PlanOptions) -> Result<Self, PlanError> {
        let recipe = Recipe::from_file(recipe_file)?;
        Self::new(recipe, recipe_file, options)
    }

    pub fn new(
        recipe: Recipe,
        recipe_file: &Path,
        options: &PlanOptions,
    ) -> Result<Self, PlanError> {
        let file = recipe_file.to_path_buf();
        let method = match methods::lookup(&recipe.merge_method) {
            Lookup::Found(m) => m,
            Lookup::NotImplemented => {
                return Err(RecipeError::MethodNotImplemented {
                    file,
                    method: recipe.merge_method.clone(),
                    implemented: methods::implemented_names().join(", "),
                }
                .into());
            }
            Lookup::Unknown => {
                return Err(RecipeError::UnknownMethod {
                    file,
                    method: recipe.merge_method.clone(),
                    known: methods::MERGEKIT_METHODS.join(", "),
                }
                .into());
            }
        };
        let spec = method.spec();
        let mut opener = Opener::new(&file, &options.cwd);

        let base_ref = recipe
            .base_model
            .as_deref()
            .map(|m| opener.open(m, "base_model"))
            .transpose()?;
        let entries = recipe
            .models
            .iter()
            .enumerate()
            .map(|(i, e)| opener.open(&e.model, &format!("models[{i}].model")))
            .collect::<Result<Vec<_>, _>>()?;

        // Which checkpoints are the method's inputs, and where their parameters come from.
        let mut base = None;
        let mut inputs: Vec<(Member, InputSource<'_>)> = Vec::new();
        if spec.base == BaseUse::Required && base_ref.is_none() {
            return Err(RecipeError::Contract {
                file,
                message: format!(
                    "{} takes task vectors against a base model; add `base_model: PATH`",
                    spec.name
                ),
            }
            .into());
        }
        let separate_base = match spec.base {
            BaseUse::Required | BaseUse::Optional => base_ref.as_ref(),
            BaseUse::Ignored => None,
        };
        match separate_base {
            Some(base_opened) => {
                base = Some(base_opened.member.clone());
                for (i, opened) in entries.iter().enumerate() {
                    if opened.key != base_opened.key {
                        inputs.push((
                            opened.member.clone(),
                            InputSource {
                                entry: Some((i, &recipe.models[i])),
                            },
                        ));
                    }
                }
            }
            None => {
                for (i, opened) in entries.iter().enumerate() {
                    inputs.push((
                        opened.member.clone(),
                        InputSource {
                            entry: Some((i, &recipe.models[i])),
                        },
                    ));
                }
                // mergekit appends a base_model missing from `models:` as an ordinary input.
                if let Some(b) = &base_ref
                    && !entries.iter().any(|e| e.key == b.key)
                {
                    inputs.push((b.member.clone(), InputSource { entry: None }));
                }
            }
        }
        let fewest = spec.min_models.max(usize::from(base.is_none()));
        let most = spec.max_models.unwrap_or(usize::MAX);
        if inputs.len() < fewest || inputs.len() > most {
            let besides = if base.is_some() {
                " besides the base"
            } else {
                ""
            };
            let wanted = match spec.max_models {
                Some(m) if m == fewest => format!("exactly {m}"),
                Some(m) => format!("{fewest} to {m}"),
                None => format!("at least {fewest}"),
            };
            return Err(RecipeError::Contract {
                file,
                message: format!(
                    "{} takes {wanted} model(s){besides}; the recipe gives {}",
                    spec.name,
                    inputs.len()
                ),
            }
            .into());
        }

        let family = Family {
            base,
            models: inputs.iter().map(|(m, _)| m.clone()).collect(),
        };
        let sources: Vec<InputSource<'_>> = inputs.iter().map(|(_, s)| *s).collect();
        let reference = family
            .reference()
            .expect("a family with inputs has a reference")
            .clone();
        let alignment = family.align();
        let mut warnings = Vec::new();
        note_alignment(&reference, &alignment.issues, &mut warnings);

        let reference_ckpt = &reference.checkpoint;
        let layout = Layout::of_checkpoint(reference_ckpt);
        let compute = recipe.compute_type(&file)?;
        let output = recipe.output_type(&file)?;
        let resolver = Resolver {
            recipe: &recipe,
            file: &file,
            method: spec.name,
            specs: spec.params,
        };
        for key in resolver.unused_keys() {
            warnings.push(format!(
                "{}: `{key}` is not a parameter of {}; ignored",
                file.display(),
                spec.name
            ));
        }

        let mut tasks = Vec::with_capacity(alignment.groups.len());
        for group in &alignment.groups {
            let Some(reference_index) = reference_ckpt.index_of(&group.name) else {
                continue; // only in other models: reported above as a warning
            };
            let reference_info = &reference_ckpt.tensors()[reference_index];
            // The alignment found each member's tensor; a member without it may still supply a
            // tied one (an untied head read from the embedding).
            let tied = |found: Option<usize>, ckpt: &Checkpoint| {
                found.or_else(|| tied_name(&group.name).and_then(|t| ckpt.index_of(t)))
            };
            let base_index = family
                .base
                .as_ref()
                .and_then(|b| tied(group.base, &b.checkpoint));
            let present: Vec<(usize, usize)> = family
                .models
                .iter()
                .zip(&group.models)
                .enumerate()
                .filter_map(|(m, (member, &found))| tied(found, &member.checkpoint).map(|i| (m, i)))
                .collect();
            let mut infos: Vec<(&Member, &crate::checkpoint::TensorInfo)> = Vec::new();
            if let (Some(b), Some(i)) = (&family.base, base_index) {
                infos.push((b, &b.checkpoint.tensors()[i]));
            }
            for &(m, i) in &present {
                let member = &family.models[m];
                infos.push((member, &member.checkpoint.tensors()[i]));
            }
            let mut shape = reference_info.shape.clone();
            let mut truncated = false;
            let vocabulary = matches!(
                ModuleKind::classify(&group.name),
                ModuleKind::Embedding | ModuleKind::Head
            );
            for (member, info) in &infos {
                if info.shape == reference_info.shape {
                    continue;
                }
                let rows_differ_only = info.shape.len() == shape.len()
                    && !shape.is_empty()
                    && info.shape[1..] == shape[1..];
                if vocabulary && rows_differ_only && options.truncate_vocab {
                    shape[0] = shape[0].min(info.shape[0]);
                    truncated = true;
                    continue;
                }
                return Err(PlanError::ShapeMismatch {
                    file,
                    tensor: group.name.clone(),
                    member: member.label.clone(),
                    reference: reference.label.clone(),
                    expected: reference_info.shape.clone(),
                    got: info.shape.clone(),
                    hint: if vocabulary && rows_differ_only {
                        " (pass --truncate-vocab to keep the leading rows every model has)"
                    } else {
                        ""
                    },
                });
            }
            if truncated {
                warnings.push(format!(
                    "`{}` truncated to the {} leading rows every model has (vocabularies differ)",
                    group.name, shape[0]
                ));
            }

            // Inputs lacking the tensor: the method's policy decides (ALGORITHMS.md §1.6).
            let missing: Vec<&str> = family
                .members()
                .filter(|(id, _)| match id {
                    MemberId::Base => base_index.is_none(),
                    MemberId::Model(i) => !present.iter().any(|(p, _)| p == i),
                })
                .map(|(_, m)| m.label.as_str())
                .collect();
            let mut convert_single = false;
            if !missing.is_empty() {
                let have = present.len() + usize::from(base_index.is_some());
                let missing_error = || PlanError::MissingTensor {
                    file: file.clone(),
                    tensor: group.name.clone(),
                    member: missing.join(", "),
                    more: format!(" and {} needs it there", spec.name),
                };
                match method.when_missing() {
                    MissingPolicy::CopySingle if have == 1 => convert_single = true,
                    MissingPolicy::CopySingleBase if have == 1 && base_index.is_some() => {
                        convert_single = true;
                    }
                    MissingPolicy::StockOrSkip if have < 3 => {
                        if have == 1 && base_index.is_some() {
                            convert_single = true;
                        } else {
                            warnings.push(format!(
                                "`{}` is in fewer than 3 inputs; {} skips it, so it is not written",
                                group.name, spec.name
                            ));
                            continue;
                        }
                    }
                    _ => {
                        if family.base.is_some() && base_index.is_none() {
                            return Err(missing_error());
                        }
                        if present.len() < spec.min_models.max(usize::from(family.base.is_none())) {
                            return Err(missing_error());
                        }
                    }
                }
                if !convert_single {
                    warnings.push(format!(
                        "`{}` is missing from {}; merged over the {} input(s) that have it",
                        group.name,
                        missing.join(", "),
                        have
                    ));
                }
            }

            let mut computed: Option<FloatType> = None;
            let mut all_float = true;
            let mut any_float = false;
            for (member, info) in &infos {
                match info.float_type() {
                    Some(ty) => {
                        any_float = true;
                        computed = Some(computed.map_or(ty, |c| FloatType::promote(c, ty)));
                    }
                    None => all_float = false,
                }
                if any_float && !all_float {
                    return Err(PlanError::MixedKinds {
                        file,
                        tensor: group.name.clone(),
                        member: member.label.clone(),
                        reference: reference.label.clone(),
                        expected: dtype_name(reference_info.dtype),
                        got: dtype_name(info.dtype),
                    });
                }
            }
            let (action, dtype) = match computed {
                Some(promoted) if all_float => {
                    let compute_ty = compute.unwrap_or(promoted);
                    let out = output.unwrap_or(compute_ty);
                    if convert_single {
                        (TaskAction::Convert { out }, out.dtype())
                    } else {
                        let t = layout.depth(&group.name);
                        let present_sources: Vec<InputSource<'_>> =
                            present.iter().map(|&(m, _)| sources[m]).collect();
                        let params = resolver.resolve(&group.name, t, &present_sources)?;
                        method.check(&params).map_err(|message| PlanError::Method {
                            file: file.clone(),
                            tensor: group.name.clone(),
                            method: spec.name.to_owned(),
                            message,
                        })?;
                        (TaskAction::Merge { out, params }, out.dtype())
                    }
                }
                _ => (TaskAction::CopyIdentical, reference_info.dtype),
            };
            tasks.push(TensorTask {
                name: group.name.clone(),
                shape,
                dtype,
                base: base_index,
                models: present,
                action,
            });
        }

        let mut out_types = tasks.iter().filter_map(|t| match t.action {
            TaskAction::Merge { out, .. } | TaskAction::Convert { out } => Some(out),
            TaskAction::CopyIdentical => None,
        });
        let first = out_types.next();
        let output_type = first.filter(|f| out_types.all(|t| t == *f));

        // mergekit copies config and tokenizer from the base model, else from the first model.
        let sidecar_member = base_ref.as_ref().map_or(&reference, |b| &b.member);
        let config_source = sidecar_member.checkpoint.folder().map(Path::to_path_buf);
        let tokenizer_source = match recipe.tokenizer_source.as_deref() {
            None => config_source.clone(),
            Some("base") => {
                match &base_ref {
                    Some(b) => b.member.checkpoint.folder().map(Path::to_path_buf),
                    None => {
                        return Err(RecipeError::BadValue {
                        file,
                        key: "tokenizer_source".to_owned(),
                        message: "is `base` but the recipe has no base_model; name a model path instead".to_owned(),
                    }
                    .into());
                    }
                }
            }
            Some(path) => {
                let opened = opener.open(path, "tokenizer_source")?;
                opened.member.checkpoint.folder().map(Path::to_path_buf)
            }
        };

        Ok(Self {
            recipe,
            recipe_file: file,
            method,
            family,
            layout,
            tasks,
            config_source,
            tokenizer_source,
            output_type,
            random_seed: options.random_seed.unwrap_or_else(super::rng::draw_seed),
            warnings,
        })
    }

    /// Every path the merge reads, so the export can refuse to write over any of them.
    pub fn input_paths(&self) -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> = self
            .family
            .members()
            .flat_map(|(_, m)| {
                let ckpt = &m.checkpoint;
                ckpt.folder()
                    .map(Path::to_path_buf)
                    .into_iter()
                    .chain(ckpt.shards().iter().map(|s| s.path().to_path_buf()))
            })
            .collect();
        paths.extend(self.tokenizer_source.iter().cloned());
        paths.sort();
        paths.dedup();
        paths
    }

    /// Bytes the merge writes (tensor data only).
    pub fn output_bytes(&self) -> u64 {
        self.tasks.iter().map(TensorTask::out_bytes).sum()
    }
}

fn note_alignment(reference: &Member, issues: &[AlignmentIssue], warnings: &mut Vec<String>) {
    let mut dtype_counts: HashMap<(&str, &str, &str), usize> = HashMap::new();
    for issue in issues {
        match issue {
            AlignmentIssue::Extra { tensor, member } => warnings.push(format!(
                "`{tensor}` exists in {member} but not in {}; it is not written",
                reference.label
            )),
            AlignmentIssue::DtypeMismatch {
                member,
                expected,
                got,
                ..
            } => {
                *dtype_counts
                    .entry((member.as_str(), expected.as_str(), got.as_str()))
                    .or_default() += 1;
            }
            // Checked per tensor while planning (missing tensors follow the method's policy,
            // vocabulary rows may be truncated).
            AlignmentIssue::Missing { .. } | AlignmentIssue::ShapeMismatch { .. } => {}
        }
    }
    let mut dtype_notes: Vec<_> = dtype_counts.into_iter().collect();
    dtype_notes.sort();
    for ((member, expected, got), count) in dtype_notes {
        warnings.push(format!(
            "{member} stores {count} tensor(s) as {got} where {} has {expected}; they are promoted as mergekit promotes them",
            reference.label
        ));
    }
}

/// A checkpoint opened for the recipe, with a key that identifies the same folder reached by
/// different spellings (`family/base` and `./family/base/`).
struct Opened {
    key: PathBuf,
    member: Member,
}

struct Opener<'a> {
    file: &'a Path,
    cwd: &'a Path,
    cache: HashMap<PathBuf, Arc<Checkpoint>>,
}

impl<'a> Opener<'a> {
    fn new(file: &'a Path, cwd: &'a Path) -> Self {
        Self {
            file,
            cwd,
            cache: HashMap::new(),
        }
    }

    fn open(&mut self, model: &str, key: &str) -> Result<Opened, PlanError> {
        let path = resolve_model_path(model, key, self.cwd, self.file)?;
        let canonical = path.canonicalize().map_err(|e| CheckpointError::Io {
            path: path.clone(),
            source: e,
        })?;
        let checkpoint = match self.cache.get(&canonical) {
            Some(c) => Arc::clone(c),
            None => {
                let c = Arc::new(Checkpoint::open(&path)?);
                self.cache.insert(canonical.clone(), Arc::clone(&c));
                c
            }
        };
        Ok(Opened {
            key: canonical,
            member: Member {
                label: model.to_owned(),
                checkpoint,
            },
        })
    }
}

/// Where a recipe's models are, resolved as a merge resolves them: the base (if it names one)
/// and the other models in order (the base is left out of them when it is listed there too).
pub fn recipe_model_paths(
    recipe: &Recipe,
    file: &Path,
    cwd: &Path,
) -> Result<(Option<PathBuf>, Vec<PathBuf>), RecipeError> {
    let base = recipe
        .base_model
        .as_deref()
        .map(|b| resolve_model_path(b, "base_model", cwd, file))
        .transpose()?;
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    };
    let mut models = Vec::with_capacity(recipe.models.len());
    for (i, entry) in recipe.models.iter().enumerate() {
        let path = resolve_model_path(&entry.model, &format!("models[{i}].model"), cwd, file)?;
        if !base.as_deref().is_some_and(|b| same(b, &path)) {
            models.push(path);
        }
    }
    Ok((base, models))
}

/// Where a recipe's `model` (at `key`, for errors) is on disk. mergekit resolves relative paths
/// against the working folder; when nothing is there, mergescope also tries the recipe's own
/// folder.
pub fn resolve_model_path(
    model: &str,
    key: &str,
    cwd: &Path,
    recipe_file: &Path,
) -> Result<PathBuf, RecipeError> {
    let given = Path::new(model);
    let in_cwd = cwd.join(given);
    if in_cwd.exists() {
        return Ok(in_cwd);
    }
    let recipe_dir = recipe_file.parent().unwrap_or(Path::new("."));
    let in_recipe_dir = cwd.join(recipe_dir).join(given);
    if in_recipe_dir.exists() {
        return Ok(in_recipe_dir);
    }
    Err(RecipeError::ModelNotFound {
        file: recipe_file.to_path_buf(),
        key: key.to_owned(),
        model: model.to_owned(),
        tried_cwd: in_cwd,
        tried_recipe: in_recipe_dir,
    })
}

/// The tensor a model without `name` supplies in its place, when the two are tied (mergekit's
/// architecture definitions mark an untied head optional, read from the embedding).
fn tied_name(name: &str) -> Option<&'static str> {
    match name {
        "lm_head.weight" => Some("model.embed_tokens.weight"),
        _ => None,
    }
}
