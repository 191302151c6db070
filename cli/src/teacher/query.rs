//! `edkd teacher query`.

use std::path::PathBuf;

use anyhow::{Context, ensure};
use edkd_models::Tokenizer;
use edkd_teacher::proto::{ScoreRequest, Sequence, ValueFormat};
use edkd_teacher::wire::decode_response;

use super::ConnectArgs;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Text to score. Without --prompt, its first token is the context and the rest is scored.
    #[arg(long)]
    text: String,
    /// Context before --text (then all of --text is scored).
    #[arg(long)]
    prompt: Option<String>,
    /// The teacher's tokenizer.json (its sha256 is checked against the server's).
    #[arg(long, env = "EDKD_TOKENIZER")]
    tokenizer: PathBuf,
    /// Tokens shown per position.
    #[arg(long, default_value_t = 5)]
    top_k: u32,
    /// Softmax temperature.
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    /// Ask for packed scores (bits-q8, delta-q4, ...): what a trainer would receive.
    #[arg(long)]
    packing: Option<String>,
    /// A PNG or JPEG for a vision-language teacher, sent as is; one per `<image>`
    /// placeholder in --prompt, in order (repeat the flag for more).
    #[arg(long)]
    image: Vec<PathBuf>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let tokenizer = Tokenizer::from_file(&args.tokenizer)
        .with_context(|| format!("loading {}", args.tokenizer.display()))?;
    let to_u32 = |ids: Vec<i64>| ids.into_iter().map(|i| i as u32).collect::<Vec<u32>>();
    let (prompt, target) = match &args.prompt {
        Some(p) => {
            let prompt = to_u32(tokenizer.encode(p, true)?);
            let target = to_u32(tokenizer.encode(&args.text, false)?);
            ensure!(
                !prompt.is_empty(),
                "--prompt {p:?} encodes to no tokens: the teacher predicts each token of --text \
                 from the tokens before it (leave --prompt out to use --text's first token)"
            );
            ensure!(
                !target.is_empty(),
                "--text {:?} encodes to no tokens",
                args.text
            );
            (prompt, target)
        }
        None => {
            let mut ids = to_u32(tokenizer.encode(&args.text, true)?);
            ensure!(
                ids.len() >= 2,
                "--text needs at least two tokens (or give --prompt)"
            );
            let target = ids.split_off(1);
            (ids, target)
        }
    };
    let images = args
        .image
        .iter()
        .map(|p| {
            std::fs::read(p)
                .map(Into::into)
                .with_context(|| format!("reading --image {}", p.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let client = args.connect.client()?;
    let info = client.info().await?;
    ensure!(
        images.is_empty() || info.accepts_images,
        "--image: teacher {} reads no images (its Info says accepts_images = false)",
        info.model_id
    );
    let response = client
        .score(ScoreRequest {
            request_id: 0,
            sequences: vec![Sequence {
                id: "query".into(),
                prompt_ids: prompt,
                target_ids: target.clone(),
                images,
            }],
            top_k: args.top_k,
            temperature: args.temperature,
            value_format: ValueFormat::F32 as i32,
            tokenizer_sha256: tokenizer.sha256().to_owned(),
            packing: args
                .packing
                .as_deref()
                .map(edkd_data::packing::Packing::from_name)
                .transpose()?
                .map_or(0, |p| p.code() as i32),
        })
        .await?;
    let scores = decode_response(&response)?.remove(0);
    let piece = |id: u32| {
        tokenizer
            .decode(&[i64::from(id)], false)
            .unwrap_or_else(|_| format!("<{id}>"))
    };
    println!(
        "teacher {} ({}), T = {}, top {}",
        info.model_id, info.architecture, args.temperature, args.top_k
    );
    let k = scores.k;
    for (p, &gold) in target.iter().enumerate() {
        let top: Vec<String> = (0..k)
            .map(|j| {
                let (id, lp) = (scores.topk_ids[p * k + j], scores.topk_logprobs[p * k + j]);
                format!("{:?} {:.3}", piece(id), lp.exp())
            })
            .collect();
        println!(
            "{p:>4} {:<16} p={:.4}  tail={:.4} | {}",
            format!("{:?}", piece(gold)),
            scores.gold_logprob[p].exp(),
            scores.tail_logmass[p].exp(),
            top.join("  ")
        );
    }
    Ok(())
}
