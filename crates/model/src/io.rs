//! Parameters to and from safetensors, by the names in the model's spec table.
//!
//! Besides parameters, a model has state that no gradient trains but that its outputs depend on:
//! the aux-free MoE selection biases. They are saved as `<block>.ffn.selection_bias`.

use safetensors::{tensor::TensorView, Dtype, SafeTensors};

use crate::block::FeedForward;
use crate::error::{ModelError, Result};
use crate::model::Model;

impl Model {
    /// Every parameter under its spec name, plus the MoE selection biases, as safetensors bytes.
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        if self.is_quantized() {
            return Err(ModelError::Quantized("be saved as f32 safetensors"));
        }
        let mut tensors: Vec<(String, TensorView)> = Vec::with_capacity(self.specs.len());
        for spec in &self.specs {
            let bytes = bytemuck::cast_slice(spec.handle.of(&self.params));
            tensors.push((spec.name.clone(), TensorView::new(Dtype::F32, spec.shape.clone(), bytes)?));
        }
        for (name, bias) in self.selection_biases() {
            tensors.push((name, TensorView::new(Dtype::F32, vec![bias.len()], bytemuck::cast_slice(bias))?));
        }
        Ok(safetensors::serialize(tensors, None)?)
    }

    fn selection_biases(&self) -> impl Iterator<Item = (String, &[f32])> {
        self.blocks.iter().enumerate().filter_map(|(i, block)| match &block.ffn {
            FeedForward::Moe(moe) => {
                Some((format!("blocks.{i}.ffn.selection_bias"), &moe.selection_bias[..]))
            }
            FeedForward::Dense(_) => None,
        })
    }

    /// Parameters as [`Model::load_params`] reads them, and the MoE selection biases when the file
    /// has them (files from other tools do not; the biases then stay zero).
    pub fn load_safetensors(&mut self, tensors: &SafeTensors) -> Result<()> {
        self.load_params(tensors, "")?;
        for (i, block) in self.blocks.iter_mut().enumerate() {
            if let FeedForward::Moe(moe) = &mut block.ffn {
                let name = format!("blocks.{i}.ffn.selection_bias");
                if let Ok(view) = tensors.tensor(&name) {
                    moe.selection_bias = f32_values(&name, &view, &[moe.selection_bias.len()])?;
                }
            }
        }
        Ok(())
    }

    /// Copies every parameter from `<prefix><name>` in `tensors`. Every parameter must be present,
    /// f32, and of the exact shape; extra tensors are ignored.
    pub fn load_params(&mut self, tensors: &SafeTensors, prefix: &str) -> Result<()> {
        if self.is_quantized() {
            return Err(ModelError::Quantized("load f32 parameters"));
        }
        for spec in &self.specs {
            let key = format!("{prefix}{}", spec.name);
            let view = tensors
                .tensor(&key)
                .map_err(|_| ModelError::Tensor { name: key.clone(), problem: "missing".into() })?;
            let values = f32_values(&key, &view, &spec.shape)?;
            spec.handle.of_mut(&mut self.params).copy_from_slice(&values);
        }
        Ok(())
    }
}

/// The values of an f32 tensor of the expected shape.
pub fn f32_values(name: &str, view: &TensorView, shape: &[usize]) -> Result<Vec<f32>> {
    if view.dtype() != Dtype::F32 {
        return Err(ModelError::Tensor {
            name: name.into(),
            problem: format!("dtype {:?}, expected F32", view.dtype()),
        });
    }
    if view.shape() != shape {
        return Err(ModelError::Tensor {
            name: name.into(),
            problem: format!("shape {:?}, expected {:?}", view.shape(), shape),
        });
    }
    Ok(view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}
