//! `edkd info`: what this build runs on, and what a model folder or preset holds.

use std::path::PathBuf;

use edkd_models::student::{FolderKind, StudentConfig, folder_kind, twin_config};
use edkd_models::teacher::CausalLmConfig;

#[derive(clap::Args)]
pub struct Args {
    /// A model folder or .gguf file to describe (config only; weights are not loaded).
    #[arg(long)]
    model: Option<PathBuf>,
    /// A student preset to describe, with its decoder-only twin (mu-330m, mid, small, tiny).
    #[arg(long)]
    preset: Option<String>,
}

fn millions(n: i64) -> String {
    format!("{:.1}M", n as f64 / 1e6)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let (version, cuda, devices) = edkd_models::torch_info();
    println!("edkd          {}", env!("CARGO_PKG_VERSION"));
    println!("torch         {version}");
    println!(
        "cuda          {}",
        if cuda { "available" } else { "not available" }
    );
    println!("cuda devices  {devices}");
    println!("cpu threads   {}", tch::get_num_threads());
    if let Some(dir) = args.model {
        match folder_kind(&dir)? {
            FolderKind::Teacher if edkd_models::gguf::is_gguf(&dir) => {
                let g = edkd_models::gguf::GgufModel::open(&dir)?;
                println!(
                    "model         {} (GGUF v{}, {} -> {})",
                    dir.display(),
                    g.file.version,
                    g.arch.name(),
                    g.config.family.architecture()
                );
                println!("tensors       {}", g.file.type_summary());
                print_causal(&g.config);
            }
            FolderKind::Teacher => {
                let c = CausalLmConfig::from_folder(&dir)?;
                println!(
                    "model         {} ({})",
                    dir.display(),
                    c.family.architecture()
                );
                print_causal(&c);
            }
            FolderKind::Student => {
                let text = std::fs::read_to_string(dir.join("config.json"))?;
                let c: StudentConfig = serde_json::from_str(&text)?;
                println!("model         {} (encoder-decoder student)", dir.display());
                print_student(&c);
            }
        }
    }
    if let Some(name) = args.preset {
        let (base, twin_only) = match name.strip_prefix("dec-") {
            Some(base) => (base, true),
            None => (name.as_str(), false),
        };
        let s = StudentConfig::preset(base)?;
        if !twin_only {
            println!("preset        {name} (encoder-decoder student)");
            print_student(&s);
        }
        let t = twin_config(&s);
        println!("twin          dec-{base} (decoder-only, Llama-shaped)");
        print_causal(&t);
        println!(
            "twin/student  {:.4}",
            t.num_parameters() as f64 / s.num_parameters() as f64
        );
    }
    Ok(())
}

fn print_student(c: &StudentConfig) {
    println!(
        "parameters    {} ({})",
        millions(c.num_parameters()),
        c.num_parameters()
    );
    println!(
        "shape         {} enc + {} dec layers, d_model {}, attention {} ({} heads of {}, {} KV heads, {:?}), ffn {} {:?}, vocab {}",
        c.encoder_layers,
        c.decoder_layers,
        c.d_model,
        c.attn_dim,
        c.num_heads,
        c.head_dim(),
        c.num_kv_heads,
        c.gqa_mapping,
        c.ffn_dim,
        c.ffn_kind,
        c.vocab_size
    );
}

fn print_causal(c: &CausalLmConfig) {
    println!(
        "parameters    {} ({})",
        millions(c.num_parameters()),
        c.num_parameters()
    );
    println!(
        "shape         {} layers, d={}, heads {}/{} kv, head_dim {}, ffn {}, vocab {}",
        c.num_layers,
        c.hidden_size,
        c.num_heads,
        c.num_kv_heads,
        c.head_dim,
        c.intermediate_size,
        c.vocab_size
    );
}
