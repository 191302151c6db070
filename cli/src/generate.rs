//! `edkd generate`: run a student or teacher folder on one input (with an image for a
//! vision-language folder).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use edkd_models::multimodal::{VisionStudentModel, VisionTwinModel};
use edkd_models::student::{FolderKind, StudentModel, folder_kind};
use edkd_models::vision::ImageProcessor;
use edkd_models::{Decoding, GenerationConfig, LoadOptions, Sampling, Teacher, Tokenizer};
use edkd_trainer::model::vision::{VisionFolder, folder_kind as vision_folder_kind};
use tch::Tensor;

use crate::device::DeviceArgs;
use crate::export::{DEFAULT_THREADS, Runtime};

#[derive(clap::Args)]
pub struct Args {
    /// A student folder (edkd), a Hugging Face decoder-only teacher folder or a .gguf file;
    /// with `--runtime onnx`, an `edkd export` folder.
    #[arg(long)]
    model: PathBuf,
    /// torch (libtorch, model folders) or onnx (ONNX Runtime, export folders).
    #[arg(long, value_enum, default_value_t = Runtime::Torch)]
    runtime: Runtime,
    /// ONNX Runtime intra-op threads (with --runtime onnx).
    #[arg(long, default_value_t = DEFAULT_THREADS)]
    threads: usize,
    /// Input text (encoded with the folder's tokenizer.json).
    #[arg(
        long,
        conflicts_with = "input_ids",
        required_unless_present = "input_ids"
    )]
    input: Option<String>,
    /// Input token ids, comma-separated.
    #[arg(long, value_delimiter = ',')]
    input_ids: Option<Vec<i64>>,
    /// A PNG or JPEG for a vision-language folder (a VL student or its decoder-only twin):
    /// the input must hold the image placeholder (`<image>` in the text, or its id), where
    /// the image's patch tokens go.
    #[arg(long)]
    image: Option<PathBuf>,
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Sample instead of greedy decoding.
    #[arg(long)]
    sample: bool,
    #[arg(long, default_value_t = 1.0, requires = "sample")]
    temperature: f64,
    #[arg(long, requires = "sample")]
    top_k: Option<usize>,
    #[arg(long, requires = "sample")]
    top_p: Option<f64>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    device: DeviceArgs,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let opts: LoadOptions = args.device.load_options()?;
    let sampling = if args.sample {
        if args.temperature <= 0.0 {
            bail!("--temperature must be > 0, got {}", args.temperature);
        }
        Sampling::Sample {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
        }
    } else {
        Sampling::Greedy
    };
    let config_for = |eos: i64, pad: i64| GenerationConfig {
        max_new_tokens: args.max_new_tokens,
        sampling: sampling.clone(),
        eos_token_ids: vec![eos],
        pad_token_id: pad,
        seed: args.seed,
        max_token_id: None,
    };
    if args.runtime == Runtime::Onnx {
        let mut m = edkd_export::OnnxModel::load(&args.model, args.threads)
            .with_context(|| format!("opening the ONNX export {}", args.model.display()))?;
        let tok = m.tokenizer()?;
        let causal = m.kind() == edkd_export::ModelKind::Causal;
        let ids = input_ids(&args, tok.as_ref(), causal)?;
        let mut cfg = config_for(-1, m.manifest.pad_token_id);
        cfg.eos_token_ids = m.manifest.eos_token_ids.clone();
        let out = m.generate(&[ids], &cfg)?;
        return print_output(&out[0], tok.as_ref());
    }
    if let Some(kind) = vision_folder_kind(&args.model) {
        return generate_vision(&args, kind, opts, config_for);
    }
    if let Some(image) = &args.image {
        bail!(
            "--image {}: {} is a text model (no vision tower); images need a vision-language \
             student or twin folder",
            image.display(),
            args.model.display()
        );
    }
    match folder_kind(&args.model)? {
        FolderKind::Student => {
            let s = StudentModel::load(&args.model, opts)?;
            let c = &s.model.config;
            let ids = input_ids(&args, s.tokenizer.as_ref(), false)?;
            let out = edkd_models::generate_seq2seq(
                &s.model,
                &[ids],
                &config_for(c.eos_token_id, c.pad_token_id),
                Decoding::Cached,
            )?;
            print_output(&out[0], s.tokenizer.as_ref())
        }
        FolderKind::Teacher => {
            let t = Teacher::load(&args.model, opts)?;
            let c = &t.model.config;
            let ids = input_ids(&args, t.tokenizer.as_ref(), true)?;
            let mut cfg = config_for(-1, c.pad_token_id.unwrap_or(0));
            cfg.eos_token_ids = c.eos_token_ids.clone();
            let out = edkd_models::generate(&t.model, &[ids], &cfg)?;
            print_output(&out[0], t.tokenizer.as_ref())
        }
    }
}

/// A vision-language student or twin: the image (if any) is processed as the folder's
/// processor does, and must have exactly one placeholder in the input to go to.
fn generate_vision(
    args: &Args,
    kind: VisionFolder,
    opts: LoadOptions,
    config_for: impl Fn(i64, i64) -> GenerationConfig,
) -> anyhow::Result<()> {
    // As evaluation does: never an id past the tokenizer's (the vocabulary's padding rows).
    let cfg_of = |tok: Option<&Tokenizer>, eos: i64, pad: i64| {
        let mut cfg = config_for(eos, pad);
        cfg.max_token_id = tok.map(|t| t.vocab_size() as i64);
        cfg
    };
    match kind {
        VisionFolder::Student => {
            let m = VisionStudentModel::load(&args.model, opts)?;
            let c = m.model.config();
            let image_id = c.vision.as_ref().map_or(-1, |v| v.image_token_id);
            let ids = input_ids(args, m.tokenizer.as_ref(), false)?;
            let pixels = pixels(args, &ids, image_id, &m.processor, m.model.text.device())?;
            let cfg = cfg_of(m.tokenizer.as_ref(), c.eos_token_id, c.pad_token_id);
            let out = m
                .model
                .generate(&[ids], pixels.as_ref(), &cfg, Decoding::Cached)?;
            print_output(&out[0], m.tokenizer.as_ref())
        }
        VisionFolder::Twin => {
            let m = VisionTwinModel::load(&args.model, opts)?;
            let c = &m.model.text.config;
            let image_id = m.model.embedder.config.image_token_id;
            let ids = input_ids(args, m.tokenizer.as_ref(), true)?;
            let pixels = pixels(args, &ids, image_id, &m.processor, m.model.text.device())?;
            let mut cfg = cfg_of(m.tokenizer.as_ref(), -1, c.pad_token_id.unwrap_or(0));
            cfg.eos_token_ids = c.eos_token_ids.clone();
            let out = m.model.generate(&[ids], pixels.as_ref(), &cfg)?;
            print_output(&out[0], m.tokenizer.as_ref())
        }
    }
}

/// `--image` decoded and processed, after checking that the input has one placeholder for
/// it (or none, and no image).
fn pixels(
    args: &Args,
    ids: &[i64],
    image_token_id: i64,
    processor: &ImageProcessor,
    device: tch::Device,
) -> anyhow::Result<Option<Tensor>> {
    let slots = ids.iter().filter(|&&i| i == image_token_id).count();
    match (&args.image, slots) {
        (None, 0) => Ok(None),
        (None, _) => bail!(
            "the input holds the image placeholder (id {image_token_id}) but no --image was \
             given: pass --image FILE.png, or drop the placeholder for a text-only answer"
        ),
        (Some(image), 0) => bail!(
            "--image {}: the input has no image placeholder to put it at: write `<image>` \
             where the image belongs in --input (id {image_token_id} in --input-ids)",
            image.display()
        ),
        (Some(image), 1) => Ok(Some(process(image, processor)?.to_device(device))),
        (Some(_), n) => bail!(
            "the input holds the image placeholder (id {image_token_id}) {n} times; one \
             --image fills exactly one"
        ),
    }
}

fn process(image: &Path, processor: &ImageProcessor) -> anyhow::Result<Tensor> {
    let rgb = edkd_models::vision::open_rgb(image)
        .with_context(|| format!("--image {}", image.display()))?;
    Ok(processor.batch(&[rgb])?)
}

fn input_ids(args: &Args, tok: Option<&Tokenizer>, add_special: bool) -> anyhow::Result<Vec<i64>> {
    if let Some(ids) = &args.input_ids {
        return Ok(ids.clone());
    }
    let text = args.input.as_deref().unwrap_or_default();
    let tok = tok.with_context(|| {
        format!(
            "{} has no tokenizer.json: pass --input-ids instead of --input",
            args.model.display()
        )
    })?;
    Ok(tok.encode(text, add_special)?)
}

fn print_output(ids: &[i64], tok: Option<&Tokenizer>) -> anyhow::Result<()> {
    if let Some(tok) = tok {
        println!("{}", tok.decode(ids, true)?);
    }
    let list: Vec<String> = ids.iter().map(i64::to_string).collect();
    println!("ids: {}", list.join(","));
    Ok(())
}
