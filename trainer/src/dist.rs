//! Collectives behind one trait: the training loop all-reduces gradients once per
//! optimizer step, broadcasts parameters from rank 0 and averages metrics, without knowing
//! whether it runs alone, over MPI, or over NCCL.

use tch::{Kind, Tensor, nn::VarStore};

/// Gradients are flattened into buckets of at most this many elements (16 MiB of f32).
pub const BUCKET_ELEMENTS: i64 = 4 << 20;

pub trait Collective {
    fn rank(&self) -> usize;
    fn world(&self) -> usize;
    /// Sums `t` over all ranks, in place (same shape and kind everywhere).
    fn all_reduce_sum(&mut self, t: &mut Tensor);
    /// Copies rank `root`'s `t` into every rank's `t`.
    fn broadcast(&mut self, t: &mut Tensor, root: usize);
    fn barrier(&mut self);
    /// Short description for logs (`single process`, `MPI, 2 ranks`, ...).
    fn describe(&self) -> String;
}

/// One process: every collective is the identity.
#[derive(Debug, Default, Clone, Copy)]
pub struct Single;

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn all_reduce_sum(&mut self, _t: &mut Tensor) {}
    fn broadcast(&mut self, _t: &mut Tensor, _root: usize) {}
    fn barrier(&mut self) {}
    fn describe(&self) -> String {
        "single process".into()
    }
}

/// Trainable variables in a fixed (name) order: every rank walks the same list.
fn trainable(vs: &VarStore) -> Vec<(String, Tensor)> {
    let mut named: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named
}

/// Gives every trainable variable without a gradient a zero one (a rank with an empty
/// batch, or a parameter unused by this step), so every rank reduces the same buckets.
pub fn ensure_grads(vs: &VarStore) {
    let missing: Vec<Tensor> = trainable(vs)
        .into_iter()
        .map(|(_, v)| v)
        .filter(|v| !v.grad().defined())
        .collect();
    if missing.is_empty() {
        return;
    }
    let zero = missing
        .iter()
        .map(|v| v.sum(Kind::Float) * 0.0)
        .reduce(|a, b| a + b)
        .expect("non-empty");
    zero.backward();
}

/// Sums gradients over ranks once per optimizer step.
///
/// On the first call every f32 gradient is moved into one flat buffer and left there as a
/// view (the parameter's `.grad` points into the buffer), as PyTorch DDP's
/// `gradient_as_bucket_view` does: backward passes accumulate into the buffer in place and
/// `zero_()` keeps it, so each later step reduces the buffer's buckets (at most
/// [`BUCKET_ELEMENTS`] each) directly, with no flattening and no copying back. Should a
/// gradient ever stop being a view of the buffer (replaced rather than accumulated), the
/// next call notices by address and binds again. Gradients of other kinds (bf16 weights)
/// are reduced through an f32 copy.
#[derive(Default)]
pub struct GradReducer {
    flat: Option<Tensor>,
    /// Trainable f32 variables in name order with their offset in `flat`.
    bound: Vec<(Tensor, i64)>,
    /// Trainable variables of other kinds, in name order.
    other: Vec<Tensor>,
    /// `VarStore::len` when bound (a variable added since means binding again).
    store_len: usize,
}

impl GradReducer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sums every trainable variable's gradient over ranks, in place; returns the bytes
    /// this rank reduced. Call [`ensure_grads`] first.
    pub fn all_reduce(&mut self, coll: &mut dyn Collective, vs: &VarStore) -> u64 {
        if coll.world() == 1 {
            return 0;
        }
        if self.store_len != vs.len() || !self.is_bound() {
            self.bind(vs);
        }
        let mut bytes = 0u64;
        if let Some(flat) = &self.flat {
            let n = flat.numel() as i64;
            let mut start = 0;
            while start < n {
                let len = BUCKET_ELEMENTS.min(n - start);
                let mut bucket = flat.narrow(0, start, len);
                coll.all_reduce_sum(&mut bucket);
                start += len;
            }
            bytes += (n * 4) as u64;
        }
        for v in &self.other {
            let mut g = v.grad().to_kind(Kind::Float).contiguous();
            coll.all_reduce_sum(&mut g);
            bytes += (g.numel() * 4) as u64;
            tch::no_grad(|| v.grad().copy_(&g.to_kind(v.kind())));
        }
        bytes
    }

    /// Whether every bound variable's gradient is still the view of `flat` set by `bind`.
    fn is_bound(&self) -> bool {
        let Some(flat) = &self.flat else {
            return false;
        };
        let base = flat.data_ptr() as usize;
        self.bound.iter().all(|(v, off)| {
            let g = v.grad();
            g.defined() && g.is_contiguous() && g.data_ptr() as usize == base + 4 * *off as usize
        })
    }

    /// Copies the f32 gradients into a new flat buffer and makes each one a view of it.
    fn bind(&mut self, vs: &VarStore) {
        let (float, other): (Vec<_>, Vec<_>) = trainable(vs)
            .into_iter()
            .map(|(_, v)| v)
            .partition(|v| v.kind() == Kind::Float);
        self.store_len = vs.len();
        self.other = other;
        self.bound.clear();
        let total: i64 = float.iter().map(|v| v.numel() as i64).sum();
        let device = float.first().map_or(tch::Device::Cpu, Tensor::device);
        let flat = Tensor::zeros([total], (Kind::Float, device));
        let mut offset = 0;
        tch::no_grad(|| {
            for v in float {
                let n = v.numel() as i64;
                let size = v.size();
                flat.narrow(0, offset, n).copy_(&v.grad().reshape([-1]));
                let strides = contiguous_strides(&size);
                let mut g = v.grad();
                let _ = g.set_source_tensor_storage_offset_(&flat, offset, &size, &strides);
                self.bound.push((v, offset));
                offset += n;
            }
        });
        self.flat = Some(flat);
    }
}

fn contiguous_strides(size: &[i64]) -> Vec<i64> {
    let mut strides = vec![1; size.len()];
    for i in (0..size.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * size[i + 1].max(1);
    }
    strides
}

/// Makes every rank's parameters equal to rank 0's.
pub fn broadcast_vars(coll: &mut dyn Collective, vs: &VarStore) {
    if coll.world() == 1 {
        return;
    }
    for (_, v) in trainable(vs) {
        let mut t = v.detach().to_kind(Kind::Float).contiguous();
        coll.broadcast(&mut t, 0);
        tch::no_grad(|| v.shallow_clone().copy_(&t.to_kind(v.kind())));
    }
}

/// Sums plain numbers over ranks.
pub fn sum_f64(coll: &mut dyn Collective, values: &mut [f64]) {
    if coll.world() == 1 || values.is_empty() {
        return;
    }
    let mut t = Tensor::from_slice(values).to_kind(Kind::Double);
    coll.all_reduce_sum(&mut t);
    let back: Vec<f64> = Vec::<f64>::try_from(&t).expect("f64 tensor");
    values.copy_from_slice(&back);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, nn};

    /// Two ranks holding the same gradients: the sum doubles every element in place.
    struct TwinRanks {
        calls: usize,
    }

    impl Collective for TwinRanks {
        fn rank(&self) -> usize {
            0
        }
        fn world(&self) -> usize {
            2
        }
        fn all_reduce_sum(&mut self, t: &mut Tensor) {
            self.calls += 1;
            let _ = t.g_mul_scalar_(2.0);
        }
        fn broadcast(&mut self, _t: &mut Tensor, _root: usize) {}
        fn barrier(&mut self) {}
        fn describe(&self) -> String {
            "twin ranks".into()
        }
    }

    fn grads(vs: &VarStore) -> Vec<(String, Tensor)> {
        trainable(vs)
            .into_iter()
            .map(|(n, v)| (n, v.grad().copy()))
            .collect()
    }

    #[test]
    fn gradients_become_views_of_the_buckets_and_stay_bound() {
        let vs = VarStore::new(Device::Cpu);
        let root = vs.root();
        let a = root.var("a", &[3, 4], nn::Init::Uniform { lo: -1.0, up: 1.0 });
        let b = root.var("b", &[5], nn::Init::Uniform { lo: -1.0, up: 1.0 });
        let frozen = root.var("frozen", &[2], nn::Init::Const(1.0));
        let _ = frozen.set_requires_grad(false);
        let mut reducer = GradReducer::new();
        let mut coll = TwinRanks { calls: 0 };
        let mut ptrs = Vec::new();
        for step in 0..3 {
            let x = Tensor::from_slice(&[1.0f32, 2.0, 3.0]).view([1, 3]);
            let loss =
                x.matmul(&a).sum(Kind::Float) * (step as f64 + 1.0) + (&b * &b).sum(Kind::Float);
            loss.backward();
            ensure_grads(&vs);
            let before = grads(&vs);
            let bytes = reducer.all_reduce(&mut coll, &vs);
            assert_eq!(bytes, 4 * (12 + 5));
            for ((name, g0), (_, v)) in before.iter().zip(trainable(&vs)) {
                let diff = (v.grad() - g0 * 2.0).abs().max().double_value(&[]);
                assert!(diff < 1e-6, "step {step}, {name}: {diff}");
            }
            let now: Vec<usize> = trainable(&vs)
                .iter()
                .map(|(_, v)| v.grad().data_ptr() as usize)
                .collect();
            // Consecutive in one buffer, and the same addresses every step.
            assert_eq!(now[1] - now[0], 4 * 12, "a then b, back to back");
            if step > 0 {
                assert_eq!(now, ptrs, "step {step}: gradients were rebound");
            }
            ptrs = now;
            for (_, v) in trainable(&vs) {
                let _ = v.grad().zero_();
            }
        }
        // One bucket per step: the buffer is reduced once, not per tensor.
        assert_eq!(coll.calls, 3);
    }
}
