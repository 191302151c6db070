//! `edkd data prepare`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use edkd_data::ingest::{FieldMap, TextSpec};
use edkd_data::prepare::{PrepareConfig, Truncation, prepare};

#[derive(Parser)]
pub struct Args {
    /// Input files or glob patterns (.jsonl, .parquet, .csv by extension).
    #[arg(long, required = true, num_args = 1..)]
    input: Vec<String>,
    /// Separate validation files (instead of --val-fraction).
    #[arg(long, num_args = 1..)]
    validation_input: Vec<String>,
    /// Field holding the encoder input.
    #[arg(long, default_value = "input", conflicts_with = "input_template")]
    input_field: String,
    /// Template for the input, e.g. "Question: {question}\nContext: {context}".
    #[arg(long)]
    input_template: Option<String>,
    /// Field holding the target.
    #[arg(long, default_value = "target", conflicts_with = "target_template")]
    target_field: String,
    /// Template for the target.
    #[arg(long)]
    target_template: Option<String>,
    /// Field with a unique example id (rows without it get "<file>:<line>").
    #[arg(long, default_value = "id")]
    id_field: String,
    /// Field with the task name.
    #[arg(long, default_value = "task")]
    task_field: String,
    /// Task name for rows without the task field.
    #[arg(long, default_value = "default")]
    task: String,
    /// Field with each example's image, stored as PNG/JPEG bytes in the shards' `image`
    /// column: a path (relative to the input file's folder, or absolute), in JSONL also
    /// {"path": ...} or {"bytes": base64}, in Parquet also binary bytes or a
    /// struct<bytes, path>; null means no image. Each image must decode (PNG or JPEG, at most
    /// 8192 px a side).
    #[arg(long)]
    image_field: Option<String>,
    /// The teacher's tokenizer.json.
    #[arg(long)]
    tokenizer: PathBuf,
    /// Token limit for inputs.
    #[arg(long)]
    max_input_tokens: Option<usize>,
    /// Token limit for targets (eos not counted).
    #[arg(long)]
    max_target_tokens: Option<usize>,
    /// What to do with inputs over the limit: keep-start, keep-end, drop, error.
    #[arg(long, default_value = "keep-start")]
    input_truncation: Truncation,
    /// What to do with targets over the limit: keep-start, keep-end, drop, error.
    #[arg(long, default_value = "keep-start")]
    target_truncation: Truncation,
    /// Fraction of examples (chosen by a hash of the id) that go to the validation split.
    #[arg(long)]
    val_fraction: Option<f64>,
    /// Rows per shard file.
    #[arg(long, default_value_t = 65536)]
    shard_rows: usize,
    /// Also store text_input/text_target columns.
    #[arg(long)]
    keep_text: bool,
    /// Largest record in bytes (a JSONL or CSV line, a Parquet row's used cells); a longer
    /// one is an error naming its file and line.
    #[arg(long, default_value_t = edkd_data::ingest::DEFAULT_MAX_RECORD_BYTES)]
    max_record_bytes: usize,
    /// Output folder (created atomically).
    #[arg(long)]
    out: PathBuf,
    /// Replace an existing output folder.
    #[arg(long)]
    overwrite: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let spec = |template: Option<String>, field: String| -> anyhow::Result<TextSpec> {
        Ok(match template {
            Some(t) => TextSpec::template(&t)?,
            None => TextSpec::Field(field),
        })
    };
    let cfg = PrepareConfig {
        inputs: a.input,
        validation_inputs: a.validation_input,
        fields: FieldMap {
            input: spec(a.input_template, a.input_field)?,
            target: spec(a.target_template, a.target_field)?,
            id_field: a.id_field,
            task_field: a.task_field,
            default_task: a.task,
            image_field: a.image_field,
        },
        tokenizer: a.tokenizer,
        max_input_tokens: a.max_input_tokens,
        max_target_tokens: a.max_target_tokens,
        input_truncation: a.input_truncation,
        target_truncation: a.target_truncation,
        val_fraction: a.val_fraction,
        shard_rows: a.shard_rows,
        keep_text: a.keep_text,
        max_record_bytes: a.max_record_bytes,
        out: a.out.clone(),
        overwrite: a.overwrite,
        command: super::command_line(),
        progress: true,
    };
    let summary = prepare(&cfg).with_context(|| format!("preparing {}", a.out.display()))?;
    let secs = summary.elapsed.as_secs_f64();
    println!(
        "wrote {} in {secs:.1}s ({:.0} tokens/s)",
        a.out.display(),
        summary.tokens as f64 / secs.max(1e-9)
    );
    for (name, split) in &summary.manifest.splits {
        println!(
            "  {name}: {} rows, {} shards, input tokens mean {:.1} max {}, target mean {:.1} max {}, truncated {}/{} dropped {}",
            split.rows,
            split.shards.len(),
            split.input_tokens.mean,
            split.input_tokens.max,
            split.target_tokens.mean,
            split.target_tokens.max,
            split.truncated_inputs,
            split.truncated_targets,
            split.dropped
        );
    }
    println!("  tokenizer sha256 {}", summary.manifest.tokenizer.sha256);
    if let Some(images) = &summary.manifest.images {
        let placeholder = match images.image_token_id {
            Some(id) => format!("token id {id}"),
            None => "ordinary text: the tokenizer has no such added token".into(),
        };
        println!(
            "  images: placeholder {} is {placeholder}",
            images.placeholder
        );
        for (name, split) in &summary.manifest.splits {
            if let Some(s) = &split.images {
                println!(
                    "  {name}: {} images ({} PNG, {} JPEG), {} bytes, up to {}x{} px",
                    s.count, s.png, s.jpeg, s.bytes, s.max_width, s.max_height
                );
            }
        }
    }
    Ok(())
}
