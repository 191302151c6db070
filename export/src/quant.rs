//! int8 quantisation of weights: symmetric, one scale per output channel (per row of an
//! embedding table), zero points 0, values in [-127, 127].

use tch::{Kind, Tensor};

use crate::error::Result;

/// How the linear layers (and optionally the embeddings) are stored and computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scheme {
    /// f32 weights, f32 compute.
    #[default]
    None,
    /// int8 weights; activations quantised per tensor to uint8 at run time
    /// (DynamicQuantizeLinear + MatMulInteger, integer matmuls; ONNX Runtime fuses the
    /// pattern into its DynamicQuantizeMatMul kernel).
    Int8,
    /// int8 weights dequantised to f32 in the graph (DequantizeLinear + MatMul): small
    /// files, f32 compute.
    Int8Weight,
}

impl Scheme {
    pub fn is_quantized(self) -> bool {
        self != Scheme::None
    }

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "none" | "f32" => Some(Scheme::None),
            "int8" => Some(Scheme::Int8),
            "int8-weight" => Some(Scheme::Int8Weight),
            _ => None,
        }
    }
}

/// Largest magnitude of a symmetric int8 value (-128 is left out so the range is symmetric).
pub const QMAX: f64 = 127.0;

/// Largest weight magnitude of the `int8` scheme's integer matmuls (7-bit weights). x86
/// CPUs without VNNI (AVX2, AVX-512 without VNNI) multiply u8 activations by s8 weights
/// with `vpmaddubsw`, which adds pairs of products into i16 and saturates once
/// `2 * 255 * |w|` passes 32767; with `|w| <= 63` it cannot. ONNX Runtime's own quantiser
/// calls this `reduce_range`. Measured on a 2-core AVX2 EPYC, full-range weights moved a
/// test student's logits by 40 % of their spread.
pub const QMAX_INTEGER_MATMUL: f64 = 63.0;

/// Scales below this are treated as an all-zero channel (scale 1, all values 0).
const MIN_SCALE: f64 = 1e-30;

/// A quantised matrix: `values ~= q * scale` along `axis`.
pub struct Quantized {
    pub q: Vec<i8>,
    pub scale: Vec<f32>,
    pub dims: Vec<i64>,
}

/// Quantises a 2-D f32 matrix with one scale per index of `axis` (0: per row, 1: per
/// column), the maximum magnitude over the other axis mapping to 127.
pub fn quantize(w: &Tensor, axis: i64) -> Result<Quantized> {
    quantize_to(w, axis, QMAX)
}

/// [`quantize`] with the largest magnitude mapping to `qmax` (at most [`QMAX`]).
pub fn quantize_to(w: &Tensor, axis: i64, qmax: f64) -> Result<Quantized> {
    let qmax = qmax.min(QMAX);
    let w = w.to_kind(Kind::Float).contiguous();
    let other = 1 - axis;
    let amax = w.abs().amax([other], true); // keepdim for broadcasting
    let scale = amax / qmax;
    let scale = scale.where_self(&scale.gt(MIN_SCALE), &scale.ones_like());
    let q = (&w / &scale)
        .round()
        .clamp(-qmax, qmax)
        .to_kind(Kind::Int8)
        .flatten(0, -1);
    Ok(Quantized {
        q: Vec::<i8>::try_from(&q)?,
        scale: Vec::<f32>::try_from(&scale.flatten(0, -1))?,
        dims: w.size(),
    })
}

/// The f32 values a quantised matrix stands for (for tests and error figures).
pub fn dequantize(q: &Quantized, axis: i64) -> Tensor {
    let t = Tensor::from_slice(&q.q)
        .to_kind(Kind::Float)
        .reshape(&q.dims);
    let s = Tensor::from_slice(&q.scale);
    let s = if axis == 0 {
        s.unsqueeze(1)
    } else {
        s.unsqueeze(0)
    };
    t * s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_channel_error_is_within_half_a_step() {
        tch::manual_seed(0);
        let mut w = Tensor::randn([33, 17], (Kind::Float, tch::Device::Cpu));
        let w = w.index_put_(
            &[None::<Tensor>, Some(Tensor::from_slice(&[3i64]))],
            &Tensor::zeros([33, 1], (Kind::Float, tch::Device::Cpu)),
            false,
        ); // an all-zero column
        for axis in [0, 1] {
            let q = quantize(&w, axis).unwrap();
            let back = dequantize(&q, axis);
            let step = Tensor::from_slice(&q.scale);
            let step = if axis == 0 {
                step.unsqueeze(1)
            } else {
                step.unsqueeze(0)
            };
            let err = (&back - &w).abs() - &step * 0.5;
            assert!(err.max().double_value(&[]) <= 1e-6, "axis {axis}");
            assert!(q.q.iter().all(|&v| v >= -127));
            // The largest magnitude of each channel maps to +-127.
            assert_eq!(q.q.iter().map(|v| v.unsigned_abs()).max(), Some(127));
        }
        let q = quantize(&w, 1).unwrap();
        assert_eq!(q.scale[3], 1.0, "all-zero column keeps scale 1");
    }
}
