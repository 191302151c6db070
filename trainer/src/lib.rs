//! edkd-trainer: knowledge-distillation losses, optimisation, and (as it grows) the
//! training loop that distils an encoder-decoder student from a decoder-only teacher.

pub mod loss;
pub mod optim;

pub use loss::{Divergence, KdLoss, TeacherTargets};
