//! A base model and N models aligned by tensor name.
//!
//! Alignment never fails: missing, extra, shape- and dtype-mismatched tensors are reported as
//! [`AlignmentIssue`]s, and whoever consumes the family (a merge plan, an analysis, the GUI)
//! decides which of them matter.

use std::collections::HashMap;
use std::sync::Arc;

use crate::checkpoint::Checkpoint;
use crate::dtype::Dtype;

/// One opened checkpoint with the label the user knows it by (its path in the recipe).
#[derive(Clone, Debug)]
pub struct Member {
    pub label: String,
    pub checkpoint: Arc<Checkpoint>,
}

/// Which member of a [`Family`] a tensor comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MemberId {
    Base,
    Model(usize),
}

/// One tensor name across the family: its index in each member's tensor list, when present.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorGroup {
    pub name: String,
    pub base: Option<usize>,
    pub models: Vec<Option<usize>>,
}

/// Something that keeps a tensor from lining up across the family.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AlignmentIssue {
    /// The reference has the tensor and this member does not.
    Missing { tensor: String, member: String },
    /// This member has a tensor the reference does not.
    Extra { tensor: String, member: String },
    ShapeMismatch {
        tensor: String,
        member: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    DtypeMismatch {
        tensor: String,
        member: String,
        expected: String,
        got: String,
    },
}

impl std::fmt::Display for AlignmentIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing { tensor, member } => write!(f, "`{tensor}` is missing from {member}"),
            Self::Extra { tensor, member } => write!(
                f,
                "`{tensor}` exists only in {member}, not in the reference model"
            ),
            Self::ShapeMismatch {
                tensor,
                member,
                expected,
                got,
            } => {
                write!(
                    f,
                    "`{tensor}` has shape {got:?} in {member} but {expected:?} in the reference model"
                )
            }
            Self::DtypeMismatch {
                tensor,
                member,
                expected,
                got,
            } => {
                write!(
                    f,
                    "`{tensor}` is {got} in {member} but {expected} in the reference model"
                )
            }
        }
    }
}

/// A base model (optional) and the models compared with or merged into it.
#[derive(Clone, Debug)]
pub struct Family {
    pub base: Option<Member>,
    pub models: Vec<Member>,
}

/// The result of lining a family up by tensor name.
#[derive(Clone, Debug, Default)]
pub struct Alignment {
    /// In the reference member's file order (so reads stay sequential), then tensors that only
    /// other members have, in their order.
    pub groups: Vec<TensorGroup>,
    pub issues: Vec<AlignmentIssue>,
}

impl Alignment {
    /// Issues that make a tensor impossible to combine elementwise (everything but dtypes).
    pub fn blocking_issues(&self) -> impl Iterator<Item = &AlignmentIssue> {
        self.issues
            .iter()
            .filter(|i| !matches!(i, AlignmentIssue::DtypeMismatch { .. }))
    }
}

impl Family {
    /// The member whose file order and tensor set define the family: the base, or else the
    /// first model.
    pub fn reference(&self) -> Option<&Member> {
        self.base.as_ref().or_else(|| self.models.first())
    }

    pub fn member(&self, id: MemberId) -> &Member {
        match id {
            MemberId::Base => self
                .base
                .as_ref()
                .expect("MemberId::Base used on a family without a base"),
            MemberId::Model(i) => &self.models[i],
        }
    }

    /// Members in the order base, model 0, model 1, ...
    pub fn members(&self) -> impl Iterator<Item = (MemberId, &Member)> {
        self.base.iter().map(|b| (MemberId::Base, b)).chain(
            self.models
                .iter()
                .enumerate()
                .map(|(i, m)| (MemberId::Model(i), m)),
        )
    }

    /// Lines every member up against the reference.
    pub fn align(&self) -> Alignment {
        let Some(reference) = self.reference() else {
            return Alignment::default();
        };
        let reference_ckpt = &reference.checkpoint;
        let mut groups: Vec<TensorGroup> = Vec::with_capacity(reference_ckpt.tensors().len());
        let mut issues = Vec::new();
        let mut extra_groups: HashMap<String, usize> = HashMap::new();

        for (r, info) in reference_ckpt.tensors().iter().enumerate() {
            let mut group = TensorGroup {
                name: info.name.clone(),
                base: None,
                models: vec![None; self.models.len()],
            };
            for (id, member) in self.members() {
                let index = member.checkpoint.index_of(&info.name);
                match index {
                    None => issues.push(AlignmentIssue::Missing {
                        tensor: info.name.clone(),
                        member: member.label.clone(),
                    }),
                    Some(i) => {
                        let other = &member.checkpoint.tensors()[i];
                        if other.shape != info.shape {
                            issues.push(AlignmentIssue::ShapeMismatch {
                                tensor: info.name.clone(),
                                member: member.label.clone(),
                                expected: info.shape.clone(),
                                got: other.shape.clone(),
                            });
                        } else {
                            // A LoRA-adapted tensor counts as its base's dtype (`nominal_dtype`).
                            let expected = reference_ckpt.nominal_dtype(r);
                            let got = member.checkpoint.nominal_dtype(i);
                            if got != expected {
                                issues.push(AlignmentIssue::DtypeMismatch {
                                    tensor: info.name.clone(),
                                    member: member.label.clone(),
                                    expected: dtype_name(expected),
                                    got: dtype_name(got),
                                });
                            }
                        }
                    }
                }
                match id {
                    MemberId::Base => group.base = index,
                    MemberId::Model(m) => group.models[m] = index,
                }
            }
            groups.push(group);
        }

        for (id, member) in self.members() {
            for (i, info) in member.checkpoint.tensors().iter().enumerate() {
                if reference_ckpt.index_of(&info.name).is_some() {
                    continue;
                }
                issues.push(AlignmentIssue::Extra {
                    tensor: info.name.clone(),
                    member: member.label.clone(),
                });
                let slot = *extra_groups.entry(info.name.clone()).or_insert_with(|| {
                    groups.push(TensorGroup {
                        name: info.name.clone(),
                        base: None,
                        models: vec![None; self.models.len()],
                    });
                    groups.len() - 1
                });
                match id {
                    MemberId::Base => groups[slot].base = Some(i),
                    MemberId::Model(m) => groups[slot].models[m] = Some(i),
                }
            }
        }
        Alignment { groups, issues }
    }
}

/// The dtype as safetensors headers spell it (`BF16`, `F32`, ...).
pub fn dtype_name(dtype: Dtype) -> String {
    format!("{dtype:?}")
}
