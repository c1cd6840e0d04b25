//! Checkpoint tensors as `f32`, whatever float type a safetensors file stores.

use anyhow::{Result, bail};
use safetensors::Dtype;
use safetensors::tensor::TensorView;

/// Decodes a safetensors view (F32, F16 or BF16, little-endian) to `f32` values; `name`
/// and `file` only label the error.
pub fn view_to_f32(view: &TensorView<'_>, name: &str, file: &std::path::Path) -> Result<Vec<f32>> {
    let data = view.data();
    Ok(match view.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => bail!(
            "{}: tensor {name} has dtype {other:?}; expected F32, F16 or BF16",
            file.display()
        ),
    })
}
