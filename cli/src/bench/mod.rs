//! `edkd bench ...`: argument structs and one call each into edkd-experiments, which
//! measures edkd next to a reference implementation and reports.

pub mod allreduce;
pub mod edge;
pub mod efficiency;
pub mod generation;
pub mod teacher;
pub mod train;

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Student and twin on libtorch f32, ONNX Runtime f32 and int8, 1 and 2 threads (CSV).
    Edge(edge::Args),
    /// Teacher forward throughput (tokens/s) for edkd and transformers on the same weights.
    Teacher(teacher::Args),
    /// Encoder-decoder student vs its decoder-only twin: first-token latency, decode
    /// throughput and peak memory per input length (CSV and PNG).
    Efficiency(efficiency::Args),
    /// Student cached vs recomputed decoding; twin generation in edkd vs transformers.
    Generation(generation::Args),
    /// Data-parallel step split into compute and gradient all-reduce, bytes per step, and
    /// the bucketed all-reduce's bandwidth vs a raw MPI_Allreduce (run under mpirun).
    Allreduce(allreduce::Args),
    /// Distillation step time with the remote teacher vs the cache, edkd's training step
    /// vs PyTorch's (tokens/s), and model FLOP utilisation against the matmul peak.
    Train(train::Args),
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Edge(args) => edge::run(args),
        BenchCommand::Teacher(args) => teacher::run(args),
        BenchCommand::Efficiency(args) => efficiency::run(args),
        BenchCommand::Generation(args) => generation::run(args),
        BenchCommand::Allreduce(args) => allreduce::run(args),
        BenchCommand::Train(args) => train::run(args),
    }
}
