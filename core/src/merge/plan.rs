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
use crate::family::{AlignmentIssue, Family, Member, dtype_name};
use crate::layout::Layout;

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
    /// The output's layer count when it differs from the config source's (a `slices:` recipe):
    /// the `config.json` key that holds it and the value written there.
    pub layer_count: Option<usize>,
    /// Folder whose `config.json` and `generation_config.json` are copied.
    pub config_source: Option<PathBuf>,
    /// Folder whose tokenizer files are copied.
    pub tokenizer_source: Option<PathBuf>,
    /// The output vocabulary when the recipe aligns differing vocabularies
    /// (`tokenizer_source` / `tokenizer:`): vocabulary tensors are permuted into it.
    pub vocab: Option<super::vocab::VocabAlignment>,
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
    #[error(transparent)]
    Vocab(#[from] super::vocab::VocabError),
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
            Lookup::Unknown => {
                return Err(RecipeError::UnknownMethod {
                    file,
                    method: recipe.merge_method.clone(),
                    known: methods::MERGEKIT_METHODS.join(", "),
                }
                .into());
            }
        };
        let mut opener = Opener::new(&file, &options.cwd);
        let base_ref = recipe
            .base_model
            .as_deref()
            .map(|m| opener.open(m, "base_model"))
            .transpose()?;
        let tensors = TensorPlanner {
            file: &file,
            method,
            compute: recipe.compute_type(&file)?,
            output: recipe.output_type(&file)?,
            truncate_vocab: options.truncate_vocab,
            align_vocab: super::vocab::requested(&recipe),
        };
        let Planned {
            family,
            layout,
            mut tasks,
            mut warnings,
            layer_count,
        } = if recipe.slices.is_empty() {
            plan_models(&recipe, &tensors, &mut opener, base_ref.as_ref())?
        } else {
            super::slices::plan(&recipe, &tensors, &mut opener, base_ref.as_ref())?
        };
        let reference = family
            .reference()
            .expect("a family with inputs has a reference")
            .clone();
        let resolver = tensors.resolver(&recipe, None);
        for key in resolver.unused_keys() {
            warnings.push(format!(
                "{}: `{key}` is not a parameter of {}; ignored",
                file.display(),
                method.spec().name
            ));
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
        let vocab = super::vocab::VocabAlignment::plan(
            &recipe,
            &file,
            &options.cwd,
            &family,
            &mut tasks,
            &mut warnings,
        )?;
        let tokenizer_source = match recipe.tokenizer_source.as_deref() {
            _ if vocab.is_some() => vocab.as_ref().map(|v| v.source_folder.clone()),
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
            layer_count,
            config_source,
            tokenizer_source,
            vocab,
            output_type,
            random_seed: options.random_seed.unwrap_or_else(super::rng::draw_seed),
            warnings,
        })
    }

    /// The `config.json` the merge's output has, from the reference model's `original`: the
    /// output dtype, an aligned vocabulary's row count and a `slices:` merge's layer count.
    /// The export writes it, and a merge made in memory is built as it says.
    pub fn output_config(&self, original: &[u8]) -> Vec<u8> {
        use crate::export::sidecar;
        let bytes = sidecar::config_with_dtype(original, self.output_type);
        let bytes = match &self.vocab {
            Some(vocab) => super::vocab::config_with_vocab_size(&bytes, vocab.rows),
            None => bytes,
        };
        match self.layer_count {
            Some(layers) => sidecar::config_with_layers(&bytes, layers),
            None => bytes,
        }
    }

    /// Every path the merge reads, so the export can refuse to write over any of them.
    pub fn input_paths(&self) -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> = self
            .family
            .members()
            .flat_map(|(_, m)| m.checkpoint.input_paths())
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

/// What planning the inputs produced, whichever syntax the recipe used.
pub(super) struct Planned {
    pub family: Family,
    pub layout: Layout,
    pub tasks: Vec<TensorTask>,
    pub warnings: Vec<String>,
    pub layer_count: Option<usize>,
}

/// Plans a `models:` recipe: every tensor of the reference model, merged from the same name in
/// every model.
fn plan_models(
    recipe: &Recipe,
    tensors: &TensorPlanner<'_>,
    opener: &mut Opener<'_>,
    base_ref: Option<&Opened>,
) -> Result<Planned, PlanError> {
    let file = tensors.file;
    let spec = tensors.method.spec();
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
            file: file.to_path_buf(),
            message: format!(
                "{} takes task vectors against a base model; add `base_model: PATH`",
                spec.name
            ),
        }
        .into());
    }
    let separate_base = match spec.base {
        BaseUse::Required | BaseUse::Optional => base_ref,
        BaseUse::Ignored => None,
    };
    match separate_base {
        Some(base_opened) => {
            base = Some(base_opened.member.clone());
            for (i, opened) in entries.iter().enumerate() {
                if opened.key != base_opened.key {
                    inputs.push((
                        opened.member.clone(),
                        InputSource::entry(i, &recipe.models[i]),
                    ));
                }
            }
        }
        None => {
            for (i, opened) in entries.iter().enumerate() {
                inputs.push((
                    opened.member.clone(),
                    InputSource::entry(i, &recipe.models[i]),
                ));
            }
            // mergekit appends a base_model missing from `models:` as an ordinary input.
            if let Some(b) = base_ref
                && !entries.iter().any(|e| e.key == b.key)
            {
                inputs.push((b.member.clone(), InputSource { own: None }));
            }
        }
    }
    check_input_count(tensors, base.is_some(), inputs.len(), "the recipe")?;

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
    let resolver = tensors.resolver(recipe, None);
    let mut tasks = Vec::with_capacity(alignment.groups.len());
    for group in &alignment.groups {
        if reference_ckpt.index_of(&group.name).is_none() {
            continue; // only in other models: reported above as a warning
        }
        // The alignment found each member's tensor; a member without it may still supply a
        // tied one (an untied head read from the embedding).
        let tied = |found: Option<usize>, ckpt: &Checkpoint| {
            found.or_else(|| tied_name(&group.name).and_then(|t| ckpt.index_of(t)))
        };
        let inputs = TensorInputs {
            name: &group.name,
            base: family
                .base
                .as_ref()
                .map(|b| tied(group.base, &b.checkpoint)),
            models: family
                .models
                .iter()
                .zip(&group.models)
                .zip(&sources)
                .enumerate()
                .map(|(m, ((member, &found), &source))| ModelInput {
                    member: m,
                    index: tied(found, &member.checkpoint),
                    source,
                    name: &group.name,
                })
                .collect(),
            t: layout.depth(&group.name),
        };
        if let Some(task) = tensors.task(&family, &inputs, &resolver, &mut warnings)? {
            tasks.push(task);
        }
    }
    Ok(Planned {
        family,
        layout,
        tasks,
        warnings,
        layer_count: None,
    })
}

/// Checks the method's input-count contract for `inputs` non-base inputs (`scope` names where
/// they are listed in errors).
pub(super) fn check_input_count(
    tensors: &TensorPlanner<'_>,
    has_base: bool,
    inputs: usize,
    scope: &str,
) -> Result<(), PlanError> {
    let spec = tensors.method.spec();
    let fewest = spec.min_models.max(usize::from(!has_base));
    let most = spec.max_models.unwrap_or(usize::MAX);
    if inputs >= fewest && inputs <= most {
        return Ok(());
    }
    let besides = if has_base { " besides the base" } else { "" };
    let wanted = match spec.max_models {
        Some(m) if m == fewest => format!("exactly {m}"),
        Some(m) => format!("{fewest} to {m}"),
        None => format!("at least {fewest}"),
    };
    Err(RecipeError::Contract {
        file: tensors.file.to_path_buf(),
        message: format!(
            "{} takes {wanted} model(s){besides}; {scope} gives {inputs}",
            spec.name
        ),
    }
    .into())
}

/// What every output tensor is checked against, however its inputs were found.
pub(super) struct TensorPlanner<'p> {
    pub file: &'p Path,
    pub method: &'static dyn MergeMethod,
    pub compute: Option<FloatType>,
    pub output: Option<FloatType>,
    pub truncate_vocab: bool,
    /// Vocabulary tensors whose row counts differ are aligned after planning
    /// ([`super::vocab`]) instead of being an error.
    pub align_vocab: bool,
}

/// One output tensor's inputs, as found in the family.
pub(super) struct TensorInputs<'a> {
    /// The output tensor's name.
    pub name: &'a str,
    /// `None`: the task has no base input; `Some(None)`: the base lacks the tensor.
    pub base: Option<Option<usize>>,
    /// The method's non-base inputs, in the order it receives them.
    pub models: Vec<ModelInput<'a>>,
    /// Relative depth for gradients (ALGORITHMS.md §1.3).
    pub t: f64,
}

/// One non-base input of a tensor.
pub(super) struct ModelInput<'a> {
    /// Index in the family's models.
    pub member: usize,
    /// The tensor's index in that member, `None` when it lacks it.
    pub index: Option<usize>,
    pub source: InputSource<'a>,
    /// The input's tensor name (per-input filters test it).
    pub name: &'a str,
}

impl<'p> TensorPlanner<'p> {
    pub(super) fn resolver<'r>(
        &self,
        recipe: &'r Recipe,
        slice: Option<(usize, &'r super::recipe::Parameters)>,
    ) -> Resolver<'r>
    where
        'p: 'r,
    {
        let spec = self.method.spec();
        Resolver {
            recipe,
            slice,
            file: self.file,
            method: spec.name,
            specs: spec.params,
        }
    }

    /// Checks one output tensor's inputs (shapes, missing inputs, dtypes, parameters) and
    /// decides what to do with it; `None` when the method's policy skips it.
    pub(super) fn task(
        &self,
        family: &Family,
        inputs: &TensorInputs<'_>,
        resolver: &Resolver<'_>,
        warnings: &mut Vec<String>,
    ) -> Result<Option<TensorTask>, PlanError> {
        let file = self.file.to_path_buf();
        let spec = self.method.spec();
        let name = inputs.name;
        let base_index = inputs.base.flatten();
        let present: Vec<(usize, usize)> = inputs
            .models
            .iter()
            .filter_map(|m| m.index.map(|i| (m.member, i)))
            .collect();
        let mut infos: Vec<(&Member, &crate::checkpoint::TensorInfo)> = Vec::new();
        if let (Some(b), Some(i)) = (&family.base, base_index) {
            infos.push((b, &b.checkpoint.tensors()[i]));
        }
        for &(m, i) in &present {
            let member = &family.models[m];
            infos.push((member, &member.checkpoint.tensors()[i]));
        }
        // The first input that has the tensor sets its shape and names the reference in errors.
        let Some(&(reference, reference_info)) = infos.first() else {
            return Ok(None);
        };
        let mut shape = reference_info.shape.clone();
        let mut truncated = false;
        let vocabulary = super::vocab::is_vocabulary(name);
        for (member, info) in &infos {
            if info.shape == reference_info.shape {
                continue;
            }
            let rows_differ_only = info.shape.len() == shape.len()
                && !shape.is_empty()
                && info.shape[1..] == shape[1..];
            if vocabulary && rows_differ_only && self.align_vocab {
                continue; // the alignment gives the task its rows
            }
            if vocabulary && rows_differ_only && self.truncate_vocab {
                shape[0] = shape[0].min(info.shape[0]);
                truncated = true;
                continue;
            }
            return Err(PlanError::ShapeMismatch {
                file,
                tensor: name.to_owned(),
                member: member.label.clone(),
                reference: reference.label.clone(),
                expected: reference_info.shape.clone(),
                got: info.shape.clone(),
                hint: if vocabulary && rows_differ_only {
                    " (add `tokenizer_source: union` to the recipe to align the vocabularies by \
                     token, or pass --truncate-vocab to keep the leading rows every model has)"
                } else {
                    ""
                },
            });
        }
        if truncated {
            warnings.push(format!(
                "`{name}` truncated to the {} leading rows every model has (vocabularies differ)",
                shape[0]
            ));
        }

        // Inputs lacking the tensor: the method's policy decides (ALGORITHMS.md §1.6).
        let base_missing = inputs.base == Some(None);
        let missing: Vec<&str> = family
            .base
            .iter()
            .filter(|_| base_missing)
            .chain(
                inputs
                    .models
                    .iter()
                    .filter(|m| m.index.is_none())
                    .map(|m| &family.models[m.member]),
            )
            .map(|m| m.label.as_str())
            .collect();
        let mut convert_single = false;
        if !missing.is_empty() {
            let have = present.len() + usize::from(base_index.is_some());
            let missing_error = || PlanError::MissingTensor {
                file: file.clone(),
                tensor: name.to_owned(),
                member: missing.join(", "),
                more: format!(" and {} needs it there", spec.name),
            };
            match self.method.when_missing() {
                MissingPolicy::CopySingle if have == 1 => convert_single = true,
                MissingPolicy::CopySingleBase if have == 1 && base_index.is_some() => {
                    convert_single = true;
                }
                MissingPolicy::StockOrSkip if have < 3 => {
                    if have == 1 && base_index.is_some() {
                        convert_single = true;
                    } else {
                        warnings.push(format!(
                            "`{name}` is in fewer than 3 inputs; {} skips it, so it is not written",
                            spec.name
                        ));
                        return Ok(None);
                    }
                }
                _ => {
                    if base_missing {
                        return Err(missing_error());
                    }
                    if present.len() < spec.min_models.max(usize::from(inputs.base.is_none())) {
                        return Err(missing_error());
                    }
                }
            }
            if !convert_single {
                warnings.push(format!(
                    "`{name}` is missing from {}; merged over the {have} input(s) that have it",
                    missing.join(", "),
                ));
            }
        }

        let mut computed: Option<FloatType> = None;
        let mut all_float = true;
        let mut any_float = false;
        for (member, info) in &infos {
            // A LoRA-adapted tensor counts as its base's dtype, as mergekit saves it.
            let nominal = member
                .checkpoint
                .index_of(&info.name)
                .map(|i| member.checkpoint.nominal_dtype(i));
            match nominal.and_then(FloatType::from_dtype) {
                Some(ty) => {
                    any_float = true;
                    computed = Some(computed.map_or(ty, |c| FloatType::promote(c, ty)));
                }
                None => all_float = false,
            }
            if any_float && !all_float {
                return Err(PlanError::MixedKinds {
                    file,
                    tensor: name.to_owned(),
                    member: member.label.clone(),
                    reference: reference.label.clone(),
                    expected: dtype_name(reference_info.dtype),
                    got: dtype_name(info.dtype),
                });
            }
        }
        let (action, dtype) = match computed {
            Some(promoted) if all_float => {
                let compute_ty = self.compute.unwrap_or(promoted);
                let out = self.output.unwrap_or(compute_ty);
                if convert_single {
                    (TaskAction::Convert { out }, out.dtype())
                } else {
                    let here = inputs.models.iter().filter(|m| m.index.is_some());
                    let sources: Vec<InputSource<'_>> = here.clone().map(|m| m.source).collect();
                    let names: Vec<&str> = here.map(|m| m.name).collect();
                    let params = resolver
                        .resolve_renamed(name, &names, inputs.t, &sources)?
                        .computed_in(compute_ty);
                    self.method
                        .check(&params)
                        .map_err(|message| PlanError::Method {
                            file: file.clone(),
                            tensor: name.to_owned(),
                            method: spec.name.to_owned(),
                            message,
                        })?;
                    // A method may return a wider type than it computes in (mergekit).
                    let out = self.output.unwrap_or(self.method.result_type(compute_ty));
                    (TaskAction::Merge { out, params }, out.dtype())
                }
            }
            _ => (TaskAction::CopyIdentical, reference_info.dtype),
        };
        Ok(Some(TensorTask {
            name: name.to_owned(),
            shape,
            dtype,
            base: base_index,
            models: present,
            action,
        }))
    }
}

pub(super) fn note_alignment(
    reference: &Member,
    issues: &[AlignmentIssue],
    warnings: &mut Vec<String>,
) {
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
pub(super) struct Opened {
    pub(super) key: PathBuf,
    pub(super) member: Member,
}

pub(super) struct Opener<'a> {
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

    pub(super) fn open(&mut self, model: &str, key: &str) -> Result<Opened, PlanError> {
        let path = resolve_model_path(model, key, self.cwd, self.file)?;
        let canonical = crate::lora::canonicalize(&path).map_err(|e| CheckpointError::Io {
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
    let mut models: Vec<PathBuf> = Vec::with_capacity(recipe.models.len());
    for (i, entry) in recipe.models.iter().enumerate() {
        let path = resolve_model_path(&entry.model, &format!("models[{i}].model"), cwd, file)?;
        if !base.as_deref().is_some_and(|b| same(b, &path)) {
            models.push(path);
        }
    }
    // A `slices:` recipe names its models in the slices' sources: each is one model however
    // many slices read it (as the plan's family has it).
    for (s, slice) in recipe.slices.iter().enumerate() {
        for (j, source) in slice.sources.iter().enumerate() {
            let key = format!("slices[{s}].sources[{j}].model");
            let path = resolve_model_path(&source.model, &key, cwd, file)?;
            if !base.iter().chain(&models).any(|p| same(p, &path)) {
                models.push(path);
            }
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
    // mergekit's `BASE+ADAPTER`: each half is found as a model is; opening splits them again.
    if let Some(Ok((base, adapter))) = crate::lora::split_reference(model) {
        let base = resolve_model_path(base, key, cwd, recipe_file)?;
        let adapter = resolve_model_path(adapter, key, cwd, recipe_file)?;
        return Ok(crate::lora::join_reference(&base, &adapter));
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
pub(super) fn tied_name(name: &str) -> Option<&'static str> {
    match name {
        "lm_head.weight" => Some("model.embed_tokens.weight"),
        _ => None,
    }
}
