//! `edkd experiment efficiency`: a thin wrapper over
//! `edkd_experiments::efficiency::experiment` (each measurement runs in a child
//! `edkd bench efficiency --worker` process).

use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;
use edkd_experiments::efficiency::experiment::{self, GridOptions};
use edkd_experiments::efficiency::report_md;

#[derive(clap::Args)]
pub struct Args {
    /// Student presets, each against its decoder-only twin.
    #[arg(long, value_delimiter = ',', default_value = "mid,mu-330m")]
    presets: Vec<String>,
    /// Input lengths in tokens.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "128,256,512,1024,2048,4096"
    )]
    input_lengths: Vec<i64>,
    /// libtorch intra-op thread counts (CPU).
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    threads: Vec<i32>,
    /// Weight and compute dtypes: f32, bf16 (f16 on CUDA).
    #[arg(long, value_delimiter = ',', default_value = "f32,bf16")]
    dtypes: Vec<String>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", env = "EDKD_DEVICE")]
    device: String,
    /// Generated tokens per run.
    #[arg(long, default_value_t = 32)]
    new_tokens: usize,
    /// Timed runs per measurement after one warm-up, best kept (small presets).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Timed runs per measurement for mu-330m.
    #[arg(long, default_value_t = 1)]
    full_size_repeats: usize,
    #[arg(long, default_value_t = 0)]
    seed: i64,
    /// Image tokens before the text of every input (576 = one 336-pixel tile of
    /// CLIP ViT-L/14-336, 2304 = four), through the same tower and projector on both
    /// sides; the input lengths are then the text's. 0: text only.
    #[arg(long, default_value_t = 0)]
    image_tokens: i64,
    /// The vision tower of --image-tokens: clip-vit-l-14-336, clip-vit-b-16 or tiny.
    #[arg(long, default_value = "clip-vit-l-14-336")]
    tower: String,
    /// Report file names: <NAME>.md, .json, .png.
    #[arg(long, default_value = report_md::DEFAULT_NAME)]
    report_name: String,
    /// Work folder: the journal of measurements (a rerun reuses it).
    #[arg(long, default_value = "out/experiment/efficiency")]
    out: PathBuf,
    /// Discard the journal and measure everything again.
    #[arg(long)]
    fresh: bool,
    /// Where efficiency.md / .json / the figures go.
    #[arg(long, default_value = "experiments/reports")]
    report_dir: PathBuf,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let opts = GridOptions {
        presets: a.presets,
        input_lengths: a.input_lengths,
        threads: a.threads,
        dtypes: a.dtypes,
        device: a.device,
        new_tokens: a.new_tokens,
        repeats: (a.repeats, a.full_size_repeats),
        seed: a.seed,
        image_tokens: a.image_tokens,
        tower: a.tower,
    };
    let journal = a.out.join(experiment::JOURNAL);
    if a.fresh && journal.exists() {
        std::fs::remove_file(&journal)
            .with_context(|| format!("removing {}", journal.display()))?;
    }
    let exe = std::env::current_exe().context("locating the edkd binary")?;
    let child = || {
        let mut cmd = Command::new(&exe);
        cmd.args(["bench", "efficiency", "--worker"]);
        cmd
    };
    let report = experiment::run(&opts, command, &a.out, experiment::in_child(child))?;
    let written = report_md::write(&report, &a.report_dir, &a.report_name)?;
    for s in &report.settings {
        println!("{}", s.name());
        print!("{}", edkd_experiments::efficiency::table(&s.rows));
    }
    println!(
        "report: {} ({} settings, {:.0} s); {}",
        written.markdown.display(),
        report.settings.len(),
        report.wall_s,
        written.json.display()
    );
    Ok(())
}
