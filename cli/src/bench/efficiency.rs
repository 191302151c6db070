//! `edkd bench efficiency`: the encoder-decoder student against its decoder-only twin of
//! equal size (the paper's Figure 1a): first-token latency, decode throughput and peak
//! memory per input length, as a table, a CSV and a PNG.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;
use edkd_experiments::efficiency::{self, suite};

#[derive(clap::Args)]
pub struct Args {
    /// Student preset; its decoder-only twin is built to the same parameter count.
    #[arg(long, default_value = "mid")]
    preset: String,
    /// Input lengths in tokens, comma-separated [default: 256,512,1024,2048,4096;
    /// 256,1024,4096 for mu-330m].
    #[arg(long, value_delimiter = ',')]
    input_lengths: Option<Vec<i64>>,
    /// Generated tokens per run [default: 64; 32 for mu-330m].
    #[arg(long)]
    new_tokens: Option<usize>,
    /// libtorch intra-op threads.
    #[arg(long, default_value_t = 2)]
    threads: i32,
    /// Timed runs per measurement after one warm-up; the best is kept [default: 3; 1 for mu-330m].
    #[arg(long)]
    repeats: Option<usize>,
    #[arg(long, default_value_t = 0)]
    seed: i64,
    /// Weight and compute dtype: f32, bf16 (f16 on CUDA).
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", env = "EDKD_DEVICE")]
    device: String,
    /// Image tokens before the text of every input (576: one CLIP ViT-L/14-336 tile,
    /// 2304: four), through the same vision tower and projector on both sides.
    #[arg(long, default_value_t = 0)]
    image_tokens: i64,
    /// The vision tower of --image-tokens: clip-vit-l-14-336, clip-vit-b-16 or tiny.
    #[arg(long, default_value = "clip-vit-l-14-336")]
    tower: String,
    /// Output folder for efficiency-<preset>.csv/.png/.json.
    #[arg(long, default_value = "out/bench/efficiency")]
    out: PathBuf,
    /// Skip the PNG.
    #[arg(long)]
    no_plot: bool,
    /// Internal: measure one spec (JSON) in this process and print the result as JSON.
    #[arg(long, hide = true)]
    worker: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(spec) = &args.worker {
        println!("{}", suite::worker(spec)?);
        return Ok(());
    }
    let mut opts = efficiency::default_options(&args.preset);
    opts.threads = args.threads;
    opts.seed = args.seed;
    opts.dtype = args.dtype;
    opts.device = args.device;
    opts.image_tokens = args.image_tokens;
    opts.tower = args.tower;
    opts.input_lengths = args.input_lengths.unwrap_or(opts.input_lengths);
    opts.new_tokens = args.new_tokens.unwrap_or(opts.new_tokens);
    opts.repeats = args.repeats.unwrap_or(opts.repeats);

    let exe = std::env::current_exe().context("locating the edkd binary")?;
    let child = || {
        let mut cmd = Command::new(&exe);
        cmd.args(["bench", "efficiency", "--worker"]);
        cmd
    };
    let report = suite::run_in_children(&opts, child, &args.out, !args.no_plot)?;
    print!("{report}");
    eprintln!("wrote {}", report.csv.display());
    if let Some(png) = &report.png {
        eprintln!("wrote {}", png.display());
    }
    Ok(())
}
