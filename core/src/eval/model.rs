//! A model's tensors as the demo objective reads them: from a checkpoint on disk, or from
//! values held in memory (a merge preview).

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};

use super::EvalError;
use super::vit::VitConfig;
use crate::checkpoint::Checkpoint;

/// Named f32 tensors of the demo architecture.
#[derive(Clone, Debug, Default)]
pub struct ModelTensors {
    pub values: BTreeMap<String, Vec<f32>>,
}

impl ModelTensors {
    /// Every float tensor of `checkpoint`, decoded to f32 (a whole model in memory: for the
    /// small models the in-process objectives run).
    pub fn all_floats(checkpoint: &Checkpoint) -> Self {
        let values = checkpoint
            .tensors()
            .iter()
            .enumerate()
            .filter(|(_, t)| t.float_type().is_some())
            .map(|(i, t)| (t.name.clone(), checkpoint.view(i).to_f32_vec()))
            .collect();
        Self { values }
    }

    /// Decodes every tensor the demo ViT needs from `checkpoint` (any float dtype).
    pub fn from_checkpoint(checkpoint: &Checkpoint, config: VitConfig) -> Result<Self, EvalError> {
        let mut values = BTreeMap::new();
        for (name, shape) in config.tensors() {
            let index = checkpoint
                .index_of(&name)
                .ok_or_else(|| EvalError::NotDemoModel {
                    path: checkpoint.source().to_path_buf(),
                    reason: format!("it has no tensor `{name}`"),
                })?;
            let view = checkpoint.view(index);
            if view.shape != shape.as_slice() || view.info.float_type().is_none() {
                return Err(EvalError::NotDemoModel {
                    path: checkpoint.source().to_path_buf(),
                    reason: format!(
                        "`{name}` is {:?} {:?}, the demo ViT has f32 {shape:?}",
                        view.info.dtype, view.shape
                    ),
                });
            }
            values.insert(name, view.to_f32_vec());
        }
        Ok(Self { values })
    }

    /// The tensors on the CPU device, shaped as `config` says.
    pub fn to_candle(&self, config: VitConfig) -> candle_core::Result<BTreeMap<String, Tensor>> {
        config
            .tensors()
            .into_iter()
            .map(|(name, shape)| {
                let data = self.values.get(&name).ok_or_else(|| {
                    candle_core::Error::Msg(format!("the model has no tensor `{name}`"))
                })?;
                Ok((name, Tensor::from_slice(data, shape, &Device::Cpu)?))
            })
            .collect()
    }
}
