//! `edkd convert`: import a checkpoint in the paper's reference layout as a student folder.

use std::path::PathBuf;

use edkd_models::student::convert::convert_reference;

#[derive(clap::Args)]
pub struct Args {
    /// Reference-layout weights (`transformer.wte`, `transformer.e.{i}.*`, ...) as safetensors.
    #[arg(long)]
    weights: PathBuf,
    /// The reference config.json (n_encoder_layer, n_embd, ...); default: the released Mu's.
    #[arg(long)]
    config: Option<PathBuf>,
    /// tokenizer.json to place in the student folder.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Output student folder.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let s = convert_reference(
        &args.weights,
        args.config.as_deref(),
        args.tokenizer.as_deref(),
        &args.out,
    )?;
    let c = &s.model.config;
    println!(
        "wrote {}: {:.1}M parameters, {} encoder + {} decoder layers, d_model {}, vocab {}",
        args.out.display(),
        s.num_parameters() as f64 / 1e6,
        c.encoder_layers,
        c.decoder_layers,
        c.d_model,
        c.vocab_size
    );
    Ok(())
}
