//! Request validation: every bad input becomes `INVALID_ARGUMENT` naming the field and the
//! limit, before anything reaches the batcher.

use edkd_proto::teacher::v1::{ScoreRequest, ValueFormat};

use crate::error::{Error, Result};
use crate::scoring::SeqInput;
use crate::served::ImageSpec;
use crate::wire;

/// Lowest accepted temperature. Below it a logit gap of 1 already puts probabilities under
/// f32's normal range (`exp(-1 / 0.01)` = 3.7e-44): the answer is one-hot for any use, and
/// `logits / T` heads for overflow (at 1e-45 every value came back NaN).
pub const MIN_TEMPERATURE: f32 = 0.01;
/// Highest accepted temperature (the distribution is uniform well before it).
pub const MAX_TEMPERATURE: f32 = 1000.0;

/// Why an empty prompt is refused (shared with `annotate`, which checks before sending).
pub const EMPTY_PROMPT: &str = "is empty; must hold at least one token: the teacher predicts \
    target token t from the tokens before it (e.g. BOS when there is no other context)";

/// Server-side request limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub vocab_size: usize,
    pub max_positions: usize,
    pub max_top_k: usize,
    /// Most prompt + target tokens per request (also the batcher's token budget).
    pub max_request_tokens: usize,
    pub max_sequences: usize,
    pub max_response_bytes: usize,
    /// How a vision-language teacher takes images; `None`: it takes none.
    pub images: Option<ImageLimits>,
}

/// Image limits of a vision-language teacher.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImageLimits {
    pub spec: ImageSpec,
    /// Largest encoded image, in bytes.
    pub max_image_bytes: usize,
    pub max_images_per_sequence: usize,
}

/// Checks the images of sequence `i` (cheap checks only: counts, sizes and signatures; the
/// batcher decodes them) and returns the positions they add.
fn check_images(
    i: usize,
    prompt: &[u32],
    target: &[u32],
    images: &[bytes::Bytes],
    limits: Option<&ImageLimits>,
) -> Result<usize> {
    let field = |name: &str| format!("sequences[{i}].{name}");
    let Some(limits) = limits else {
        if images.is_empty() {
            return Ok(0);
        }
        return Err(Error::invalid(
            field("images"),
            format!(
                "{} image(s) sent to a teacher that reads no images (Info.accepts_images is \
                 false): serve a vision-language teacher, or send text only",
                images.len()
            ),
        ));
    };
    let placeholder = limits.spec.image_token_id;
    if let Some(j) = target.iter().position(|&t| t == placeholder) {
        return Err(Error::invalid(
            format!("{}[{j}]", field("target_ids")),
            format!("is the image placeholder token {placeholder}; images belong in the prompt"),
        ));
    }
    if images.len() > limits.max_images_per_sequence {
        return Err(Error::invalid(
            field("images"),
            format!(
                "{} images, over the limit of {} per sequence",
                images.len(),
                limits.max_images_per_sequence
            ),
        ));
    }
    let placeholders = prompt.iter().filter(|&&t| t == placeholder).count();
    if placeholders != images.len() {
        return Err(Error::invalid(
            field("images"),
            format!(
                "{} image(s) for {placeholders} image placeholder(s) (token {placeholder}) in \
                 prompt_ids: each placeholder takes one image, in order",
                images.len()
            ),
        ));
    }
    for (j, image) in images.iter().enumerate() {
        let field = format!("{}[{j}]", field("images"));
        if image.len() > limits.max_image_bytes {
            return Err(Error::invalid(
                field,
                format!(
                    "{} bytes, over the limit of {} bytes per image",
                    image.len(),
                    limits.max_image_bytes
                ),
            ));
        }
        edkd_data::images::sniff(image)
            .map_err(|problem| Error::invalid(field, problem.to_string()))?;
    }
    Ok(limits.spec.extra_positions(images.len()))
}

/// A validated request.
#[derive(Debug)]
pub struct Validated {
    pub seqs: Vec<SeqInput>,
    pub ids: Vec<String>,
    pub format: ValueFormat,
    /// `None`: the separate arrays in `format`.
    pub packing: Option<edkd_data::packing::Packing>,
}

/// Checks `req` against `limits` and the teacher's tokenizer (`tokenizer_sha256`, empty if
/// the teacher has none).
pub fn validate(req: ScoreRequest, limits: &Limits, tokenizer_sha256: &str) -> Result<Validated> {
    if !req.tokenizer_sha256.is_empty()
        && !req.tokenizer_sha256.eq_ignore_ascii_case(tokenizer_sha256)
    {
        return Err(Error::invalid(
            "tokenizer_sha256",
            format!(
                "client tokenizer {} differs from the teacher's {}",
                req.tokenizer_sha256,
                if tokenizer_sha256.is_empty() {
                    "(none)"
                } else {
                    tokenizer_sha256
                }
            ),
        ));
    }
    let format = ValueFormat::try_from(req.value_format).map_err(|_| {
        Error::invalid(
            "value_format",
            format!("unknown value {} (1 f32, 2 f16, 3 bf16)", req.value_format),
        )
    })?;
    let format = wire::resolve(format);
    let packing = wire::requested_packing(req.packing)?;
    let k = req.top_k as usize;
    if k == 0 || k > limits.max_top_k {
        return Err(Error::invalid(
            "top_k",
            format!("{k} is outside 1..={}", limits.max_top_k),
        ));
    }
    let temperature = req.temperature;
    if !(MIN_TEMPERATURE..=MAX_TEMPERATURE).contains(&temperature) {
        return Err(Error::invalid(
            "temperature",
            format!("{temperature:?} is outside [{MIN_TEMPERATURE:?}, {MAX_TEMPERATURE:?}]"),
        ));
    }
    if req.sequences.is_empty() {
        return Err(Error::invalid("sequences", "is empty; send at least one"));
    }
    if req.sequences.len() > limits.max_sequences {
        return Err(Error::invalid(
            "sequences",
            format!(
                "{} sequences, over the limit of {} per request",
                req.sequences.len(),
                limits.max_sequences
            ),
        ));
    }
    let mut total_tokens = 0usize;
    let mut total_image_positions = 0usize;
    let mut total_targets = 0usize;
    let mut seqs = Vec::with_capacity(req.sequences.len());
    let mut ids = Vec::with_capacity(req.sequences.len());
    for (i, s) in req.sequences.into_iter().enumerate() {
        let field = |name: &str| format!("sequences[{i}].{name}");
        if s.prompt_ids.is_empty() {
            return Err(Error::invalid(field("prompt_ids"), EMPTY_PROMPT));
        }
        if s.target_ids.is_empty() {
            return Err(Error::invalid(
                field("target_ids"),
                "is empty; nothing to score",
            ));
        }
        for (name, tokens) in [("prompt_ids", &s.prompt_ids), ("target_ids", &s.target_ids)] {
            if let Some((j, &id)) = tokens
                .iter()
                .enumerate()
                .find(|&(_, &id)| id as usize >= limits.vocab_size)
            {
                return Err(Error::invalid(
                    format!("{}[{j}]", field(name)),
                    format!("token id {id} >= vocab size {}", limits.vocab_size),
                ));
            }
        }
        let image_positions = check_images(
            i,
            &s.prompt_ids,
            &s.target_ids,
            &s.images,
            limits.images.as_ref(),
        )?;
        let len = s.prompt_ids.len() + s.target_ids.len() + image_positions;
        if len > limits.max_positions {
            let images = if image_positions > 0 {
                format!(" + {image_positions} image positions")
            } else {
                String::new()
            };
            return Err(Error::invalid(
                field("prompt_ids + target_ids"),
                format!(
                    "{len} tokens ({} + {}{images}), over the teacher's max positions {}",
                    s.prompt_ids.len(),
                    s.target_ids.len(),
                    limits.max_positions
                ),
            ));
        }
        total_tokens += len;
        total_image_positions += image_positions;
        total_targets += s.target_ids.len();
        ids.push(s.id);
        seqs.push(SeqInput {
            prompt: s.prompt_ids,
            target: s.target_ids,
            k,
            temperature,
            images: s.images,
            image_positions,
        });
    }
    if total_tokens > limits.max_request_tokens {
        return Err(Error::invalid(
            "sequences",
            format!(
                "{total_tokens} prompt + target tokens{}, over the token budget of {} per request",
                if total_image_positions > 0 {
                    format!(" ({total_image_positions} of them image positions)")
                } else {
                    String::new()
                },
                limits.max_request_tokens
            ),
        ));
    }
    let bytes = match packing {
        Some(p) => {
            wire::packed_payload_bytes(seqs.iter().map(|s| s.target.len()), k, p, limits.vocab_size)
        }
        None => wire::payload_bytes(total_targets, k, format),
    };
    if bytes > limits.max_response_bytes {
        return Err(Error::invalid(
            "top_k",
            format!(
                "response would take {bytes} bytes ({total_targets} targets x k {k}), over the limit of {}",
                limits.max_response_bytes
            ),
        ));
    }
    Ok(Validated {
        seqs,
        ids,
        format,
        packing,
    })
}
