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

/// Sums gradients over ranks in flat buckets; returns the bytes reduced by this rank.
/// Call [`ensure_grads`] first.
pub fn all_reduce_grads(coll: &mut dyn Collective, vs: &VarStore) -> u64 {
    if coll.world() == 1 {
        return 0;
    }
    let vars = trainable(vs);
    let mut bytes = 0u64;
    let mut start = 0;
    while start < vars.len() {
        let mut end = start;
        let mut numel = 0;
        while end < vars.len()
            && (end == start || numel + vars[end].1.numel() as i64 <= BUCKET_ELEMENTS)
        {
            numel += vars[end].1.numel() as i64;
            end += 1;
        }
        let grads: Vec<Tensor> = vars[start..end]
            .iter()
            .map(|(_, v)| v.grad().to_kind(Kind::Float).reshape([-1]))
            .collect();
        let mut flat = Tensor::cat(&grads, 0);
        coll.all_reduce_sum(&mut flat);
        bytes += (flat.numel() * 4) as u64;
        let mut offset = 0;
        tch::no_grad(|| {
            for (_, v) in &vars[start..end] {
                let n = v.numel() as i64;
                let part = flat
                    .narrow(0, offset, n)
                    .reshape(v.size())
                    .to_kind(v.kind());
                v.grad().copy_(&part);
                offset += n;
            }
        });
        start = end;
    }
    bytes
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
