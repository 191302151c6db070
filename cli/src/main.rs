//! `edkd`: the one command users type.

mod bench;
mod convert;
mod data;
mod demo;
mod device;
mod experiment;
mod experiment_ablations;
mod experiment_compression;
mod experiment_efficiency;
mod experiment_kd;
mod experiment_vision;
mod export;
mod generate;
mod info;
mod launch;
mod student;
mod teacher;
mod train;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Distil decoder-only language models into small, fast encoder-decoder students.
#[derive(Parser)]
#[command(name = "edkd", version, about)]
struct Cli {
    /// Log lines on stderr: text for people (coloured only on a terminal, never with
    /// NO_COLOR set), or json, one object per line, for cluster log collectors. Progress
    /// bars are drawn only on a terminal.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t = LogFormat::Text,
        env = "EDKD_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Print the runtime (torch version, CUDA) and, optionally, a model's shape.
    Info(info::Args),
    /// Benchmarks that print edkd next to a reference implementation.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Generate from a student or teacher folder (or a teacher .gguf file).
    Generate(generate::Args),
    /// Export a student, twin or teacher folder to ONNX (optionally int8) for ONNX Runtime.
    Export(export::Args),
    /// Import a reference-layout checkpoint as a student folder, or a GGUF file as a teacher folder.
    Convert(convert::Args),
    /// Prepare, inspect and synthesize datasets.
    #[command(subcommand)]
    Data(data::Command),
    /// Serve a teacher over gRPC, query it, and annotate datasets with its top-k logits.
    #[command(subcommand)]
    Teacher(teacher::Command),
    /// The whole story on an embedded default: synthesize tasks, train a teacher, serve it,
    /// distil a student, train a CE-only student, evaluate all three.
    Demo(demo::Args),
    /// Distil a student (or train any model) from a TOML job config.
    Train(train::TrainArgs),
    /// Evaluate a model folder on a prepared dataset: losses, EM, F1, ROUGE per task.
    Eval(train::EvalArgs),
    /// Experiments that answer a question end to end and write a report.
    #[command(subcommand)]
    Experiment(experiment::Command),
    /// Build students: `edkd student init` from a decoder-only checkpoint.
    #[command(subcommand)]
    Student(student::Command),
    /// Run a job spec (teachers + MPI trainer ranks) here, on Slurm or on Kubernetes.
    Launch(launch::LaunchArgs),
    /// Progress of a run from its output folder: step, loss, eval, ETA, checkpoint, restarts.
    Status(launch::StatusArgs),
}

/// Whether stderr may carry ANSI colours: a terminal, and no `NO_COLOR` (no-color.org).
fn colour_on_stderr() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// `RUST_LOG` filters (default `info`); lines go to stderr, stdout stays for results.
fn init_logging(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => fmt.with_ansi(colour_on_stderr()).init(),
        LogFormat::Json => fmt.json().flatten_event(true).with_ansi(false).init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match cli.log_format {
                // anyhow's own report: the error and its causes.
                LogFormat::Text => eprintln!("Error: {e:?}"),
                // One parseable line, causes joined with ": ".
                LogFormat::Json => tracing::error!(error = format!("{e:#}"), "edkd failed"),
            }
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Info(args) => info::run(args),
        Command::Bench(cmd) => bench::run(cmd),
        Command::Data(cmd) => data::run(cmd),
        Command::Teacher(cmd) => teacher::run(cmd),
        Command::Generate(args) => generate::run(args),
        Command::Export(args) => export::run(args),
        Command::Convert(args) => convert::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Train(args) => train::run(args),
        Command::Eval(args) => train::eval(args),
        Command::Experiment(cmd) => experiment::run(cmd),
        Command::Student(cmd) => student::run(cmd),
        Command::Launch(args) => launch::run(args),
        Command::Status(args) => launch::status(args),
    }
}
