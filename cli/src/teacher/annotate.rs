//! `edkd teacher annotate`.

use std::path::PathBuf;
use std::sync::Arc;

use edkd_models::chat::{TeacherView, ViewSpec};
use edkd_teacher::AnnotateConfig;

use super::ConnectArgs;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Prepared dataset folder (holding manifest.json).
    #[arg(long)]
    data: PathBuf,
    /// Split to annotate.
    #[arg(long, default_value = "train")]
    split: String,
    /// Cache folder; an existing one is resumed (finished shards are not rescored).
    #[arg(long)]
    out: PathBuf,
    /// Top-k log-probs kept per target position.
    #[arg(long, default_value_t = 64)]
    top_k: usize,
    /// Softmax temperature of the cached log-probs.
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    /// Sequences per request.
    #[arg(long, default_value_t = 16)]
    sequences_per_request: usize,
    /// Requests kept in flight.
    #[arg(long, default_value_t = 8)]
    in_flight: usize,
    /// Examples per cache shard.
    #[arg(long, default_value_t = 4096)]
    shard_rows: usize,
    /// Stop after scoring this many examples (resume later).
    #[arg(long)]
    limit: Option<usize>,
    /// How the teacher reads each input: raw, chat (its chat template, one user turn and
    /// the generation prompt) or plain (--prompt-template). Recorded in the cache.
    #[arg(long, default_value = "raw")]
    prompt: String,
    /// The teacher's tokenizer.json (chat and plain prompts); a chat template is looked
    /// for in its folder's tokenizer_config.json unless --chat-template says where.
    #[arg(long)]
    teacher_tokenizer: Option<PathBuf>,
    /// tokenizer_config.json (or a folder holding one) with the chat template.
    #[arg(long)]
    chat_template: Option<PathBuf>,
    /// A system turn before the user turn (chat).
    #[arg(long)]
    system_prompt: Option<String>,
    /// The plain prompt, with one `{input}`.
    #[arg(long, default_value = "")]
    prompt_template: String,
    /// Write a packed cache (format version 2): bits-q8/q6/q4, delta-q8/q6/q5/q4,
    /// delta-e8/e6/e5, freq-q8/q6/q4 or freq-e8/e6/e5 (see
    /// `experiments/reports/compression.md` for what each costs; freq-e5 is the smallest
    /// under 0.5 % KD-loss error). Default: version 1, u32 ids and f32 values.
    #[arg(long)]
    packing: Option<String>,
    /// With a freq packing: examples whose rows calibrate the cache's id order.
    #[arg(long, default_value_t = edkd_teacher::annotate::CALIBRATION_EXAMPLES)]
    calibration_examples: usize,
    /// With --packing: compress each row with zstd at this level (1..=22).
    #[arg(long)]
    zstd: Option<i32>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let client = args.connect.client()?;
    let view = TeacherView::from_spec(&ViewSpec {
        kind: args.prompt.parse()?,
        tokenizer: args.teacher_tokenizer.clone(),
        template_places: args.chat_template.iter().cloned().collect(),
        system: args.system_prompt.clone(),
        plain: args.prompt_template.clone(),
    })?;
    let config = AnnotateConfig {
        data: args.data,
        split: args.split,
        out: args.out.clone(),
        top_k: args.top_k,
        temperature: args.temperature,
        sequences_per_request: args.sequences_per_request,
        in_flight: args.in_flight,
        shard_rows: args.shard_rows,
        limit: args.limit,
        progress: true,
        view: Arc::new(view),
        packing: args
            .packing
            .as_deref()
            .map(edkd_data::packing::Packing::from_name)
            .transpose()?,
        zstd_level: args.zstd,
        calibration_examples: args.calibration_examples,
    };
    let s = edkd_teacher::annotate(&client, &config).await?;
    println!("cache      {}", args.out.display());
    println!(
        "examples   {} ({} already cached, {} scored now)",
        s.examples, s.skipped, s.scored
    );
    println!("positions  {}", s.target_positions);
    println!("shards     {}", s.shards);
    println!(
        "time       {:.1} s ({:.0} positions/s)",
        s.elapsed.as_secs_f64(),
        s.target_positions as f64 / s.elapsed.as_secs_f64().max(1e-9)
    );
    Ok(())
}
