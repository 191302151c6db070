//! `edkd data synth`.

use std::path::PathBuf;

use clap::Parser;
use edkd_data::synth::{Split, generate, write_jsonl};
use edkd_data::synth_image::{
    DEFAULT_IMAGE_SIZE, IMAGE_MIX, IMAGE_TASKS, ImageSynthConfig, generate_images,
    write_jsonl_with_images,
};

#[derive(Parser)]
pub struct Args {
    /// kv (key-value retrieval), qa (extractive QA), agg (count/majority/list) or mix; or an
    /// image task: image-count, image-colour, image-left, image-above, image-word or
    /// image-mix (rendered scenes with a question about them).
    #[arg(long)]
    task: String,
    /// Number of examples.
    #[arg(long)]
    n: usize,
    /// Seed of the stream.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// train, validation or test: independent streams for the same seed.
    #[arg(long, default_value = "train")]
    split: Split,
    /// Image tasks: width and height of the images in pixels (32-1024; a multiple of the
    /// student's ViT patch size, e.g. 56 or 64).
    #[arg(long, default_value_t = DEFAULT_IMAGE_SIZE)]
    image_size: u32,
    /// Output JSONL file (fields id, task, input, target, answer; image tasks also `image`,
    /// the path of a PNG written to `<stem>-images/` next to it).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    if a.task == IMAGE_MIX || IMAGE_TASKS.contains(&a.task.as_str()) {
        return run_images(a);
    }
    let examples = generate(&a.task, a.split, a.seed, a.n)?;
    write_jsonl(&a.out, &examples)?;
    let chars: usize = examples.iter().map(|e| e.input.len()).sum();
    println!(
        "wrote {} {} examples ({} split, seed {}) to {}; mean input {:.0} chars",
        examples.len(),
        a.task,
        a.split.name(),
        a.seed,
        a.out.display(),
        chars as f64 / examples.len().max(1) as f64
    );
    Ok(())
}

fn run_images(a: Args) -> anyhow::Result<()> {
    let cfg = ImageSynthConfig {
        size: a.image_size,
        ..ImageSynthConfig::new(&a.task, a.split, a.seed, a.n)
    };
    let examples = generate_images(&cfg)?;
    write_jsonl_with_images(&a.out, &examples)?;
    let bytes: usize = examples.iter().map(|e| e.png.len()).sum();
    println!(
        "wrote {} {} examples ({} split, seed {}, {px}x{px} PNGs, mean {:.0} bytes) to {}",
        examples.len(),
        a.task,
        a.split.name(),
        a.seed,
        bytes as f64 / examples.len().max(1) as f64,
        a.out.display(),
        px = a.image_size
    );
    Ok(())
}
