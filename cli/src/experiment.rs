//! `edkd experiment`: experiments that answer a question end to end and write a report.

use crate::{
    experiment_ablations, experiment_compression, experiment_efficiency, experiment_kd,
    experiment_vision,
};

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
    /// The paper's efficiency comparison at its size: students (mid, mu-330m) against
    /// their decoder-only twins, input lengths 128..4096, 1 and 2 threads, f32 and bf16
    /// (or a CUDA device): first-token latency, decode tokens/s, peak memory, KV-cache
    /// bytes, FLOPs, and each component's time; report with the paper's numbers.
    Efficiency(experiment_efficiency::Args),
    /// The paper's architecture ablations on the synthetic long-input tasks: encoder /
    /// decoder split at equal parameters (2/3-1/3, 1/2-1/2, 1/3-2/3), RoPE vs none in
    /// the encoder, encoder-decoder vs its decoder-only twin before and after KD; several
    /// seeds, bootstrap intervals over seeds and examples.
    Ablations(experiment_ablations::Args),
    /// Image-to-text distillation on the synthetic image tasks: a vision-language
    /// decoder-only teacher (CLIP-style tower trained from scratch), the encoder-decoder
    /// vision student with CE and with KD; EM/F1 with intervals against the majority-answer
    /// baseline, and the efficiency reports at 576 / 2,304 image tokens when present.
    Vision(experiment_vision::Args),
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Kd(args) => experiment_kd::kd(args),
        Command::KdStep(args) => experiment_kd::step(args),
        Command::Compression(args) => experiment_compression::run(args),
        Command::Efficiency(args) => experiment_efficiency::run(args),
        Command::Ablations(args) => experiment_ablations::run(args),
        Command::Vision(args) => experiment_vision::run(args),
    }
}
