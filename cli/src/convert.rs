//! `edkd convert`: import a checkpoint in the paper's reference layout as a student folder,
//! or a GGUF file as an ordinary Hugging Face teacher folder.

use std::path::PathBuf;

use edkd_models::gguf::convert_to_folder;
use edkd_models::student::convert::convert_reference;

#[derive(clap::Args)]
pub struct Args {
    /// Reference-layout weights (`transformer.wte`, `transformer.e.{i}.*`, ...) as safetensors.
    #[arg(
        long,
        required_unless_present = "from_gguf",
        conflicts_with = "from_gguf"
    )]
    weights: Option<PathBuf>,
    /// The reference config.json (n_encoder_layer, n_embd, ...); default: the released Mu's.
    #[arg(long, requires = "weights")]
    config: Option<PathBuf>,
    /// tokenizer.json to place in the student folder.
    #[arg(long, requires = "weights")]
    tokenizer: Option<PathBuf>,
    /// A GGUF file (llama.cpp) to write as a Hugging Face folder: config.json,
    /// model.safetensors (f32), tokenizer.json, tokenizer_config.json (chat template).
    #[arg(long, value_name = "FILE")]
    from_gguf: Option<PathBuf>,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(gguf) = &args.from_gguf {
        let c = convert_to_folder(gguf, &args.out)?;
        let m = &c.config;
        println!(
            "wrote {}: {} ({}) {:.1}M parameters, {} layers, d {}, heads {}/{} kv, vocab {}, {}",
            args.out.display(),
            m.family.architecture(),
            c.arch.name(),
            c.num_parameters as f64 / 1e6,
            m.num_layers,
            m.hidden_size,
            m.num_heads,
            m.num_kv_heads,
            m.vocab_size,
            if c.has_tokenizer {
                "with tokenizer.json and tokenizer_config.json"
            } else {
                "no tokenizer in the file"
            }
        );
        return Ok(());
    }
    let weights = args.weights.as_deref().expect("clap requires --weights");
    let s = convert_reference(
        weights,
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
