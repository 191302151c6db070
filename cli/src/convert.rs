//! `edkd convert`: import a checkpoint of the paper's reference code as a student folder,
//! or a GGUF file as an ordinary Hugging Face teacher folder.

use std::path::PathBuf;

use edkd_models::gguf::convert_to_folder;
use edkd_models::student::convert::{ConvertOptions, Layout, SpecialIds, convert_reference};

#[derive(clap::Args)]
pub struct Args {
    /// Reference-layout weights (`transformer.wte`, `transformer.e.{i}.*`, ...): safetensors,
    /// or a torch.save file (.pt/.pth/.bin/.ckpt), read without Python and without running
    /// its pickle.
    #[arg(
        long,
        required_unless_present = "from_gguf",
        conflicts_with = "from_gguf"
    )]
    weights: Option<PathBuf>,
    /// The reference config.json (n_encoder_layer, n_embd, ...); default: the
    /// `model_config` stored in a .pt file, else the layout's defaults (mu-v1: the
    /// released Mu's).
    #[arg(long, requires = "weights")]
    config: Option<PathBuf>,
    /// tokenizer.json to place in the student folder; its declared bos/eos/pad
    /// (tokenizer_config.json or special_tokens_map.json beside it) become the model's.
    #[arg(long, requires = "weights")]
    tokenizer: Option<PathBuf>,
    /// Start id (default: the tokenizer's, else the released model's 1).
    #[arg(long, requires = "weights")]
    bos_id: Option<i64>,
    /// End id (default: the tokenizer's, else the released model's 32000, `<|endoftext|>`).
    #[arg(long, requires = "weights")]
    eos_id: Option<i64>,
    /// Pad id (default: the tokenizer's, else the reference config's pad_token_id).
    #[arg(long, requires = "weights")]
    pad_id: Option<i64>,
    /// `mu-v1` (src/mu/models) or `mu-v2` (mu_vision's language model: lm_head bias,
    /// interleaved KV heads); default: mu-v2 when the config's model_type is mu/llava_mu
    /// or the weights have lm_head.bias.
    #[arg(long, requires = "weights", value_parser = parse_layout)]
    layout: Option<Layout>,
    /// Treat every token whose id is the pad id as padding (masked as an attention key
    /// wherever it stands), as the reference does; needed for exact parity on inputs
    /// that contain the pad id.
    #[arg(long, requires = "weights")]
    mask_pad_tokens: bool,
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
    let weights = args.weights.clone().expect("clap requires --weights");
    let declared = match &args.tokenizer {
        Some(t) => Some(edkd_data::tokenizer::Tokenizer::load(t)?.specials),
        None => None,
    };
    let specials = SpecialIds {
        bos: args.bos_id.or(declared.map(|d| i64::from(d.bos))),
        eos: args.eos_id.or(declared.map(|d| i64::from(d.eos))),
        pad: args.pad_id.or(declared.map(|d| i64::from(d.pad))),
    };
    let s = convert_reference(&ConvertOptions {
        weights,
        config: args.config.clone(),
        tokenizer: args.tokenizer.clone(),
        out: args.out.clone(),
        specials,
        layout: args.layout,
        mask_pad_tokens: args.mask_pad_tokens,
    })?;
    let c = &s.model.config;
    let from = |flag: Option<i64>, fallback: &'static str| match (flag, declared) {
        (Some(_), _) => "flag",
        (None, Some(_)) => "tokenizer",
        (None, None) => fallback,
    };
    let gqa = format!("{:?}", c.gqa_mapping).to_lowercase();
    println!(
        "wrote {}: {:.1}M parameters, {} encoder + {} decoder layers, d_model {}, vocab {}, \
         {} GQA, bos {} ({}), eos {} ({}), pad {} ({}){}",
        args.out.display(),
        s.num_parameters() as f64 / 1e6,
        c.encoder_layers,
        c.decoder_layers,
        c.d_model,
        c.vocab_size,
        gqa,
        c.bos_token_id,
        from(args.bos_id, "released model"),
        c.eos_token_id,
        from(args.eos_id, "released model"),
        c.pad_token_id,
        from(args.pad_id, "reference config"),
        if c.mask_pad_tokens {
            ", every pad id masked"
        } else {
            ""
        }
    );
    Ok(())
}

fn parse_layout(s: &str) -> Result<Layout, String> {
    Layout::parse(s).map_err(|e| e.to_string())
}
