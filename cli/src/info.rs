//! `edkd info`: what this build runs on, and what a model folder holds.

use std::path::PathBuf;

use edkd_models::teacher::CausalLmConfig;

#[derive(clap::Args)]
pub struct Args {
    /// A Hugging Face model folder to describe (config only; weights are not loaded).
    #[arg(long)]
    model: Option<PathBuf>,
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
        let c = CausalLmConfig::from_folder(&dir)?;
        println!(
            "model         {} ({})",
            dir.display(),
            c.family.architecture()
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
    Ok(())
}
