//! The inputs of one planned tensor as its method reads them. The engine, the workbench's
//! preview and the survival analysis all read through [`TaskInputs`], so they see the same
//! inputs: views into the checkpoints, narrowed to the task's rows when vocabularies are
//! truncated, or every input's rows permuted into the output vocabulary when the recipe aligns
//! vocabularies.

use super::plan::{MergePlan, TensorTask};
use super::vocab::AlignedInputs;
use crate::checkpoint::TensorView;

/// One task's inputs, permuted in memory where the recipe aligns vocabularies.
pub struct TaskInputs<'a> {
    plan: &'a MergePlan,
    task: &'a TensorTask,
    aligned: Option<AlignedInputs>,
}

impl MergePlan {
    /// The inputs of `task` (a task of this plan). Permuting a vocabulary tensor can fail on a
    /// token rule; the message names the token.
    pub fn inputs_of<'a>(&'a self, task: &'a TensorTask) -> Result<TaskInputs<'a>, String> {
        let aligned = match &self.vocab {
            Some(vocab) => vocab.align(&self.family, task)?,
            None => None,
        };
        Ok(TaskInputs {
            plan: self,
            task,
            aligned,
        })
    }
}

impl TaskInputs<'_> {
    /// The base's view (when the task has one) and each model's, showing `shape`'s leading
    /// rows (the task's shape, or fewer rows for a subsample).
    pub fn views<'s>(
        &'s self,
        shape: &'s [usize],
    ) -> (Option<TensorView<'s>>, Vec<TensorView<'s>>) {
        let family = &self.plan.family;
        let (base, models) = match &self.aligned {
            Some(aligned) => aligned.views(),
            None => (
                family
                    .base
                    .as_ref()
                    .zip(self.task.base)
                    .map(|(b, i)| b.checkpoint.view(i)),
                self.task
                    .models
                    .iter()
                    .map(|&(m, i)| family.models[m].checkpoint.view(i))
                    .collect(),
            ),
        };
        (
            base.map(|v| v.leading_rows(shape)),
            models.into_iter().map(|v| v.leading_rows(shape)).collect(),
        )
    }
}
