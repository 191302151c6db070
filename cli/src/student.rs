//! `edkd student init`: an encoder-decoder student born from a decoder-only checkpoint.

use std::path::{Path, PathBuf};

use anyhow::Context;
use edkd_models::student::init::{InitSpec, SpecialIds, init_folder, parse_layer_list};
use edkd_models::teacher::CausalLmConfig;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Build a student folder from a decoder-only checkpoint (Hugging Face folder or .gguf):
    /// token embeddings (tied as in the source), final norm, encoder layers copied from
    /// --encoder-layers (attention made bidirectional), decoder layers from
    /// --decoder-layers, each decoder layer's cross-attention copied from the same source
    /// layer's self-attention with its output projection times --cross-attn-scale; the
    /// source's RoPE, heads (grouped GQA), gated SiLU MLP, norms and tokenizer. The folder
    /// is an ordinary student folder for `edkd generate`, `edkd train --set
    /// model.init=DIR` and `edkd eval`.
    Init(InitArgs),
}

#[derive(clap::Args)]
pub struct InitArgs {
    /// The source: a Hugging Face folder (Llama, Qwen2 or Mistral layout) or a .gguf file.
    #[arg(long)]
    from: PathBuf,
    /// Source layers for the encoder, e.g. `0-3` or `0,2,4,6` (ranges inclusive; `all`;
    /// empty for none).
    #[arg(long, default_value = "")]
    encoder_layers: String,
    /// Source layers for the decoder, e.g. `26-29` or `all`.
    #[arg(long)]
    decoder_layers: String,
    /// Factor on each cross-attention output projection (0: the decoder starts as the
    /// source model and ignores the encoder until training opens the path).
    #[arg(long, default_value_t = 0.0)]
    cross_attn_scale: f64,
    /// Centred encoder positions (`i - (len-1) div 2`, the Mu layout) instead of `0..len`.
    #[arg(long)]
    centered_encoder_positions: bool,
    #[arg(long, default_value_t = 0.0)]
    dropout: f64,
    /// Decoder start token; default: the one `edkd data prepare` resolves from the
    /// source's tokenizer (so prepared data and the student agree), else the source config's.
    #[arg(long)]
    bos: Option<i64>,
    #[arg(long)]
    eos: Option<i64>,
    #[arg(long)]
    pad: Option<i64>,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Init(args) => init(args),
    }
}

/// The source's config (folder or GGUF), to resolve the layer lists against.
fn source_config(from: &Path) -> anyhow::Result<CausalLmConfig> {
    Ok(if edkd_models::gguf::is_gguf(from) {
        edkd_models::gguf::GgufModel::open(from)?.config
    } else {
        CausalLmConfig::from_folder(from)?
    })
}

/// The special ids `edkd data prepare` would record for the source's tokenizer, when it
/// has one (written into `out` first for a .gguf).
fn data_special_ids(from: &Path, out: &Path) -> anyhow::Result<Option<SpecialIds>> {
    let tokenizer = if edkd_models::gguf::is_gguf(from) {
        edkd_models::gguf::extract_tokenizer(from, out)?
    } else {
        Some(from.join("tokenizer.json")).filter(|p| p.is_file())
    };
    let Some(path) = tokenizer else {
        return Ok(None);
    };
    let t = edkd_data::tokenizer::Tokenizer::load(&path)
        .with_context(|| format!("special tokens of {}", path.display()))?;
    Ok(Some(SpecialIds {
        bos: i64::from(t.specials.bos),
        eos: i64::from(t.specials.eos),
        pad: i64::from(t.specials.pad),
    }))
}

pub fn init(args: InitArgs) -> anyhow::Result<()> {
    let source = source_config(&args.from)?;
    let n = source.num_layers as usize;
    let encoder_layers = parse_layer_list(&args.encoder_layers, "--encoder-layers", n)?;
    let decoder_layers = parse_layer_list(&args.decoder_layers, "--decoder-layers", n)?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("{}", args.out.display()))?;
    let from_data = data_special_ids(&args.from, &args.out)?;
    let eos_default = source.eos_token_ids.first().copied().unwrap_or(0);
    let base = from_data.unwrap_or(SpecialIds {
        bos: source.bos_token_id.unwrap_or(eos_default),
        eos: eos_default,
        pad: source.pad_token_id.unwrap_or(eos_default),
    });
    let ids = SpecialIds {
        bos: args.bos.unwrap_or(base.bos),
        eos: args.eos.unwrap_or(base.eos),
        pad: args.pad.unwrap_or(base.pad),
    };
    let spec = InitSpec {
        encoder_layers,
        decoder_layers,
        cross_attn_out_scale: args.cross_attn_scale,
        special_ids: Some(ids),
        centered_encoder_positions: args.centered_encoder_positions,
        dropout: args.dropout,
        max_positions: None,
    };
    let r = init_folder(&args.from, &spec, &args.out)?;
    println!(
        "wrote {}: {:.1}M parameters ({} encoder + {} decoder layers from {} layers of {}, \
         {:.1}M parameters), cross-attention output x {}, special ids bos {} eos {} pad {}, {}",
        args.out.display(),
        r.student_parameters as f64 / 1e6,
        r.encoder_layers.len(),
        r.decoder_layers.len(),
        r.source_layers,
        r.source_architecture,
        r.source_parameters as f64 / 1e6,
        r.cross_attn_out_scale,
        ids.bos,
        ids.eos,
        ids.pad,
        if r.tokenizer {
            "with the source's tokenizer"
        } else {
            "no tokenizer in the source"
        }
    );
    Ok(())
}
