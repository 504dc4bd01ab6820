//! One vocabulary tensor's rows, permuted into the output vocabulary for every input (mergekit
//! 0.1.5's `PermutedVocabulary` in `tokenizer/embed.py`).
//!
//! For each output token: an input that has it keeps its own row, unless a `tokens:` entry
//! forces a source. An input lacking it gets the token's default row: the single model that has
//! it gives its row; none has it: zeros; several: the base's row when the base has it, else
//! their mean; a `tokens:` entry names the source (a model's row for the token, another row of
//! a model, or zeros). Padding rows (`pad_to_multiple_of`) hold the input's mean real row.

use crate::checkpoint::{TensorInfo, TensorView};
use crate::dtype::{FloatType, TensorBytes};
use crate::family::{Family, MemberId};
use crate::merge::plan::TensorTask;

use super::VocabAlignment;
use super::rules::Source;

/// The default row of one token, by position among the tensor's inputs.
#[derive(Clone, Debug, PartialEq)]
enum DefaultRow {
    /// The mean of these inputs' own rows.
    Mean(Vec<usize>),
    Zero,
    /// Row `row` of the input at `input`'s original tensor.
    Row {
        input: usize,
        row: usize,
    },
}

/// What one output token's rows are built from.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Fill {
    /// Every input takes the default, even one that has the token.
    force: bool,
    /// `None` when every input has the token and nothing is forced.
    default: Option<DefaultRow>,
}

/// The permuted inputs of one tensor, owned; [`views`](Self::views) lends them to a method.
pub struct AlignedInputs {
    infos: Vec<TensorInfo>,
    data: Vec<TensorBytes>,
    has_base: bool,
}

impl AlignedInputs {
    /// The base's view (when the task has one) and the models', as the method expects them.
    pub fn views(&self) -> (Option<TensorView<'_>>, Vec<TensorView<'_>>) {
        let mut views = self
            .infos
            .iter()
            .zip(&self.data)
            .map(|(info, data)| TensorView::new(info, data.as_bytes()));
        let base = if self.has_base { views.next() } else { None };
        (base, views.collect())
    }
}

impl VocabAlignment {
    /// How each output token is filled for a tensor whose inputs are `inputs` (in order).
    /// `Err((token, message))` when a `tokens:` entry cannot be honoured for them.
    pub(super) fn fills(&self, inputs: &[MemberId]) -> Result<Vec<Fill>, (String, String)> {
        let rows: Vec<&Vec<Option<usize>>> = inputs
            .iter()
            .map(|id| {
                &self
                    .rows_of
                    .iter()
                    .find(|(m, _)| m == id)
                    .expect("every input is a member")
                    .1
            })
            .collect();
        let position = |member: MemberId| inputs.iter().position(|m| *m == member);
        let mut fills = Vec::with_capacity(self.tokens.len());
        for (t, token) in self.tokens.iter().enumerate() {
            let have: Vec<usize> = (0..inputs.len())
                .filter(|&i| rows[i][t].is_some())
                .collect();
            let fail = |message: String| (token.clone(), message);
            let rule = self.rules.get(&t);
            let force = rule.is_some_and(|r| r.force);
            if !force && have.len() == inputs.len() {
                fills.push(Fill {
                    force,
                    default: None,
                });
                continue;
            }
            let default = match rule.map(|r| &r.source) {
                None => match (have.as_slice(), self.base.and_then(position)) {
                    ([single], _) => DefaultRow::Row {
                        input: *single,
                        row: rows[*single][t].expect("present"),
                    },
                    ([], _) => DefaultRow::Zero,
                    (_, Some(b)) if rows[b][t].is_some() => DefaultRow::Row {
                        input: b,
                        row: rows[b][t].expect("present"),
                    },
                    _ => DefaultRow::Mean(have),
                },
                Some(Source::Zero) => DefaultRow::Zero,
                Some(Source::Unset) => {
                    return Err(fail(
                        "some models lack the token and the entry has no `source`; give one (a model path, `{kind: zero}` or `{kind: model_token, model: ..., token: ...}`)".to_owned(),
                    ));
                }
                Some(Source::Model(m)) => {
                    let input = position(*m).ok_or_else(|| {
                        fail("its source model does not have this tensor".to_owned())
                    })?;
                    let row = rows[input][t].ok_or_else(|| {
                        fail("its source model's tokenizer does not have the token; use `{kind: model_token, ...}` to pick another row".to_owned())
                    })?;
                    DefaultRow::Row { input, row }
                }
                Some(Source::Row(m, row)) => DefaultRow::Row {
                    input: position(*m).ok_or_else(|| {
                        fail("its source model does not have this tensor".to_owned())
                    })?,
                    row: *row,
                },
            };
            fills.push(Fill {
                force,
                default: Some(default),
            });
        }
        Ok(fills)
    }

    /// `task`'s inputs with their rows permuted into the output vocabulary, or `None` when
    /// `task` is not a vocabulary tensor of this alignment.
    pub fn align(
        &self,
        family: &Family,
        task: &TensorTask,
    ) -> Result<Option<AlignedInputs>, String> {
        if !self.aligns(&task.name) {
            return Ok(None);
        }
        let present = super::input_rows(family, task);
        let ids: Vec<MemberId> = present.iter().map(|(m, _)| *m).collect();
        let fills = self
            .fills(&ids)
            .map_err(|(token, message)| format!("token `{token}`: {message}"))?;
        let views: Vec<TensorView<'_>> = family
            .base
            .iter()
            .zip(task.base)
            .map(|(b, i)| b.checkpoint.view(i))
            .chain(
                task.models
                    .iter()
                    .map(|&(m, i)| family.models[m].checkpoint.view(i)),
            )
            .collect();
        // mergekit gathers the rows in the recipe's dtype, else in the inputs' promoted type.
        let ty = self.compute.unwrap_or_else(|| {
            views
                .iter()
                .filter_map(|v| v.info.float_type())
                .reduce(FloatType::promote)
                .unwrap_or(FloatType::F32)
        });
        let width = task.shape[1..].iter().product::<usize>();
        let originals: Vec<Vec<f32>> = views
            .iter()
            .map(|v| {
                let mut values = v.to_f32_vec();
                round_all(ty, &mut values);
                values
            })
            .collect();
        let permuted = self.permute_rows(&ids, &fills, &originals, width, ty);
        let mut infos = Vec::with_capacity(views.len());
        let mut data = Vec::with_capacity(views.len());
        for (view, values) in views.iter().zip(permuted) {
            let mut shape = view.shape.to_vec();
            shape[0] = self.rows;
            let bytes = TensorBytes::encode(values, ty);
            infos.push(TensorInfo {
                name: task.name.clone(),
                dtype: ty.dtype(),
                shape,
                shard: 0,
                start: 0,
                end: bytes.as_bytes().len(),
            });
            data.push(bytes);
        }
        Ok(Some(AlignedInputs {
            infos,
            data,
            has_base: task.base.is_some() && family.base.is_some(),
        }))
    }

    /// Every input's rows (`originals[i]`, `width` wide, already in `ty`) permuted into the
    /// output vocabulary as `fills` says, padding rows included.
    fn permute_rows(
        &self,
        ids: &[MemberId],
        fills: &[Fill],
        originals: &[Vec<f32>],
        width: usize,
        ty: FloatType,
    ) -> Vec<Vec<f32>> {
        let row = |input: usize, row: usize| &originals[input][row * width..(row + 1) * width];

        let defaults: Vec<Option<Vec<f32>>> = fills
            .iter()
            .enumerate()
            .map(|(t, fill)| {
                fill.default.as_ref().map(|d| match d {
                    DefaultRow::Zero => vec![0.0; width],
                    DefaultRow::Row { input, row: r } => row(*input, *r).to_vec(),
                    DefaultRow::Mean(inputs) => {
                        // torch: `embed = embed + row` per model, then `embed /= count`, each
                        // rounded to the gathering type.
                        let mut sum = vec![0f32; width];
                        for &i in inputs {
                            let own = self.rows_of_input(ids, i)[t]
                                .expect("a mean is over inputs that have the token");
                            for (s, x) in sum.iter_mut().zip(row(i, own)) {
                                *s = round(ty, *s + x);
                            }
                        }
                        let count = inputs.len() as f32;
                        sum.iter_mut().for_each(|s| *s = round(ty, *s / count));
                        sum
                    }
                })
            })
            .collect();

        let tokens = self.tokens.len();
        let mut permuted = Vec::with_capacity(originals.len());
        for input in 0..originals.len() {
            let own_rows = self.rows_of_input(ids, input);
            let mut values = vec![0f32; self.rows * width];
            for (t, fill) in fills.iter().enumerate() {
                let out = &mut values[t * width..(t + 1) * width];
                match (own_rows[t], &defaults[t]) {
                    (Some(r), _) if !fill.force => out.copy_from_slice(row(input, r)),
                    (_, Some(d)) => out.copy_from_slice(d),
                    // Unreachable after `fills`: a token every input has and nobody forces.
                    _ => {}
                }
            }
            if self.rows > tokens {
                let mean = mean_row(ty, &values[..tokens * width], width);
                for pad in values[tokens * width..].chunks_exact_mut(width) {
                    pad.copy_from_slice(&mean);
                }
            }
            permuted.push(values);
        }
        permuted
    }

    /// Input `input`'s row for every output token.
    fn rows_of_input(&self, inputs: &[MemberId], input: usize) -> &[Option<usize>] {
        &self
            .rows_of
            .iter()
            .find(|(m, _)| *m == inputs[input])
            .expect("every input is a member")
            .1
    }
}

/// `x` rounded to `ty` (to nearest even), as torch stores each intermediate result.
fn round(ty: FloatType, x: f32) -> f32 {
    crate::merge::rounding(ty)(x)
}

fn round_all(ty: FloatType, values: &mut [f32]) {
    if ty != FloatType::F32 {
        values.iter_mut().for_each(|v| *v = round(ty, *v));
    }
}

/// The mean of `rows` (row-major, `width` wide), accumulated in f64 and rounded once, as
/// torch's `mean(dim=0)` accumulates in a wider type.
fn mean_row(ty: FloatType, rows: &[f32], width: usize) -> Vec<f32> {
    let count = (rows.len() / width) as f64;
    let mut sum = vec![0f64; width];
    for chunk in rows.chunks_exact(width) {
        for (s, x) in sum.iter_mut().zip(chunk) {
            *s += f64::from(*x);
        }
    }
    sum.into_iter()
        .map(|s| round(ty, (s / count) as f32))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::merge::vocab::rules::TokenRule;

    const BASE: MemberId = MemberId::Base;
    const A: MemberId = MemberId::Model(0);
    const B: MemberId = MemberId::Model(1);

    /// Tokens `a b c d`; the base has a, b; model A has c, a; model B has a, _, b, c (rows
    /// 0, 2, 1); nobody has d. Two padding rows.
    fn alignment(rules: HashMap<usize, TokenRule>) -> VocabAlignment {
        let model = tokenizers::models::wordlevel::WordLevel::builder()
            .build()
            .unwrap();
        VocabAlignment {
            tokenizer: tokenizers::Tokenizer::new(model),
            source_folder: Default::default(),
            tokens: ["a", "b", "c", "d"].map(String::from).to_vec(),
            rows: 6,
            rows_of: vec![
                (BASE, vec![Some(0), Some(1), None, None]),
                (A, vec![Some(1), None, Some(0), None]),
                (B, vec![Some(0), Some(2), Some(1), None]),
            ],
            base: Some(BASE),
            rules,
            tensors: Vec::new(),
            compute: None,
        }
    }

    fn permute(alignment: &VocabAlignment) -> Vec<Vec<f32>> {
        let ids = [BASE, A, B];
        let fills = alignment.fills(&ids).unwrap();
        let originals = [vec![10., 11.], vec![20., 21.], vec![30., 31., 32.]];
        alignment.permute_rows(&ids, &fills, &originals, 1, FloatType::F32)
    }

    #[test]
    fn rows_follow_mergekits_defaults() {
        let rows = permute(&alignment(HashMap::new()));
        // a: everyone's own row. b: the base's row for A, which lacks it. c: the mean of A's
        // and B's rows for the base. d: zeros. Padding: each input's mean real row.
        assert_eq!(rows[0], [10., 11., 25.5, 0., 11.625, 11.625]);
        assert_eq!(rows[1], [21., 11., 20., 0., 13., 13.]);
        assert_eq!(rows[2], [30., 32., 31., 0., 23.25, 23.25]);
    }

    #[test]
    fn forced_tokens_take_their_source_everywhere() {
        let rules = HashMap::from([(
            0,
            TokenRule {
                source: Source::Row(B, 2),
                force: true,
            },
        )]);
        let rows = permute(&alignment(rules));
        assert_eq!([rows[0][0], rows[1][0], rows[2][0]], [32., 32., 32.]);
    }

    #[test]
    fn a_source_model_lacking_the_token_is_refused() {
        let rules = HashMap::from([(
            1,
            TokenRule {
                source: Source::Model(A),
                force: false,
            },
        )]);
        let (token, message) = alignment(rules).fills(&[BASE, A, B]).unwrap_err();
        assert_eq!(token, "b");
        assert!(message.contains("does not have the token"), "{message}");
    }

    #[test]
    fn means_round_each_step_in_narrow_types() {
        // bf16 keeps 8 significant bits: 1 + 2^-8 rounds to 1 on the way, as torch's would.
        assert_eq!(round(FloatType::BF16, 1.0 + 1.0 / 256.0), 1.0);
        assert_eq!(round(FloatType::F32, 1.0 + 1.0 / 256.0), 1.0 + 1.0 / 256.0);
        assert_eq!(mean_row(FloatType::F32, &[1., 2., 3., 6.], 2), [2., 4.]);
    }
}
