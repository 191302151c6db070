//! `edkd experiment`: experiments that answer a question end to end and write a report.

use crate::{experiment_compression, experiment_kd};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Real distillation: SmolLM2-135M-Instruct (chat template, instruction) into
    /// encoder-decoder students on code summarisation from this machine's Python sources;
    /// random- vs decoder-initialised students, CE vs KD, the teacher as a reference row;
    /// bootstrap 95% intervals, validation curves, sizes and first-token latency.
    Kd(experiment_kd::KdArgs),
    /// The student's training step at a 49k vocabulary split into body, LM head and loss
    /// (forward and backward), before and after the loss changes, and with a bf16 LM head.
    KdStep(experiment_kd::StepArgs),
    /// What packing the teacher's top-k costs: bytes per target token and the relative
    /// error of the KD loss and its gradient, per packing and k, on real SmolLM2 targets.
    Compression(experiment_compression::Args),
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Kd(args) => experiment_kd::kd(args),
        Command::KdStep(args) => experiment_kd::step(args),
        Command::Compression(args) => experiment_compression::run(args),
    }
}
