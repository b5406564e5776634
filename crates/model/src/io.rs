//! Parameters to and from safetensors, by the names in the model's spec table.

use safetensors::{tensor::TensorView, Dtype, SafeTensors};

use crate::error::{ModelError, Result};
use crate::model::Model;

impl Model {
    /// Copies every parameter from `<prefix><name>` in `tensors`. Every parameter must be present,
    /// f32, and of the exact shape; extra tensors are ignored.
    pub fn load_params(&mut self, tensors: &SafeTensors, prefix: &str) -> Result<()> {
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
