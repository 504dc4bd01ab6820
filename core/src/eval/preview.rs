//! A merge computed in memory, for objectives to score while the user tunes it (the demo
//! family's 35 K parameters merge in about a millisecond; nothing touches the disk).

use std::collections::BTreeMap;

use super::ModelTensors;
use crate::backend::Backend;
use crate::merge::MethodInputs;
use crate::merge::plan::{MergePlan, TaskAction};

/// Every output tensor of `plan`, merged on `backend` into f32 values. Meant for small models:
/// the whole merged model is held in memory.
pub fn merge_in_memory(plan: &MergePlan, backend: &dyn Backend) -> Result<ModelTensors, String> {
    let family = &plan.family;
    let mut values = BTreeMap::new();
    let verify = |task: &crate::merge::plan::TensorTask| -> Result<(), String> {
        let base = family.base.as_ref().zip(task.base);
        base.into_iter()
            .map(|(b, i)| (&b.checkpoint, i))
            .chain(
                task.models
                    .iter()
                    .map(|&(m, i)| (&family.models[m].checkpoint, i)),
            )
            .try_for_each(|(c, i)| c.verify_tensor(i))
            .map_err(|e| e.to_string())
    };
    for task in &plan.tasks {
        verify(task)?;
        let inputs = plan
            .inputs_of(task)
            .map_err(|e| format!("tensor `{}`: {e}", task.name))?;
        let (base, models) = inputs.views(&task.shape);
        let merged = match &task.action {
            TaskAction::Merge { params, .. } => {
                let mut out = vec![0f32; task.numel()];
                let inputs = MethodInputs {
                    tensor: &task.name,
                    seed: plan.random_seed,
                    base,
                    models: models.clone(),
                    params,
                };
                plan.method
                    .merge_on(backend, &inputs, &mut out)
                    .map_err(|e| format!("tensor `{}`: {e}", task.name))?;
                out
            }
            TaskAction::Convert { .. } | TaskAction::CopyIdentical => {
                let first = base
                    .or_else(|| models.first().cloned())
                    .ok_or_else(|| format!("tensor `{}` has no input", task.name))?;
                if first.info.float_type().is_none() {
                    continue;
                }
                first.to_f32_vec()
            }
        };
        verify(task)?;
        values.insert(task.name.clone(), merged);
    }
    Ok(ModelTensors { values })
}
