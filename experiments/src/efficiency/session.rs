//! One generation at batch 1, timed per component: the student's encoder, its
//! cross-attention K/V projection, its decoder layers and the LM head; the twin's layers
//! and its LM head. The parts of a run add up to the run (nothing else is timed), so the
//! breakdown explains the end-to-end figures instead of estimating them.

use std::time::Instant;

use edkd_models::CausalLm;
use edkd_models::nn::AttnMask;
use edkd_models::student::{DecoderCache, Encoded, Student};
use edkd_models::teacher::LmCache;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::vision::ImageInput;

/// A component of a generation step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Part {
    /// The student's encoder stack over the input (embedding, layers, final norm).
    Encoder,
    /// The student's cross-attention K and V of the encoder output, once per input.
    CrossKv,
    /// The student's decoder stack (embedding, self- and cross-attention, MLP, norm).
    Decoder,
    /// The twin's whole stack (the prefill over the input, then one token per step).
    Layers,
    /// Output projection to the vocabulary and the greedy pick.
    LmHead,
    /// The vision tower over the image tiles (the same tower on both sides).
    Tower,
    /// The `mlp2x_gelu` projector from the tower's width to the text model's.
    Projector,
}

impl Part {
    pub fn label(self) -> &'static str {
        match self {
            Part::Encoder => "encoder",
            Part::CrossKv => "cross K/V",
            Part::Decoder => "decoder layers",
            Part::Layers => "layers",
            Part::LmHead => "LM head",
            Part::Tower => "vision tower",
            Part::Projector => "projector",
        }
    }
}

/// Seconds per component, in the order first seen.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Parts(pub Vec<(Part, f64)>);

impl Parts {
    fn add(&mut self, part: Part, secs: f64) {
        match self.0.iter_mut().find(|(p, _)| *p == part) {
            Some((_, s)) => *s += secs,
            None => self.0.push((part, secs)),
        }
    }

    pub fn total(&self) -> f64 {
        self.0.iter().map(|(_, s)| s).sum()
    }

    pub fn get(&self, part: Part) -> f64 {
        self.0
            .iter()
            .find(|(p, _)| *p == part)
            .map_or(0.0, |(_, s)| *s)
    }

    /// Every component divided by `n` (per-step means).
    pub fn scaled(&self, n: f64) -> Parts {
        Parts(self.0.iter().map(|&(p, s)| (p, s / n)).collect())
    }
}

/// Times closures on one device: on CUDA it waits for the device before and after each
/// part, so a part's time is its kernels' and not the launch queue's.
pub struct Clock {
    device: Device,
    pub parts: Parts,
}

impl Clock {
    pub fn new(device: Device) -> Self {
        Self {
            device,
            parts: Parts::default(),
        }
    }

    fn sync(&self) {
        if let Device::Cuda(i) = self.device {
            tch::Cuda::synchronize(i as i64);
        }
    }

    pub fn time<T>(&mut self, part: Part, f: impl FnOnce() -> T) -> T {
        self.sync();
        let t0 = Instant::now();
        let out = f();
        self.sync();
        self.parts.add(part, t0.elapsed().as_secs_f64());
        out
    }
}

/// The model under test and its per-run state.
pub trait Session {
    /// Processes the input and returns the first greedy token.
    fn first(&mut self, ids: &Tensor, clock: &mut Clock) -> i64;
    /// Feeds the previous token and returns the next one.
    fn next(&mut self, token: i64, clock: &mut Clock) -> i64;
}

/// The input embeddings: image tokens (if any) before the text's.
fn with_image(image: Option<&Tensor>, text: Tensor) -> Tensor {
    match image {
        Some(image) => Tensor::cat(&[image, &text], 1),
        None => text,
    }
}

fn greedy(logits: &Tensor) -> i64 {
    logits.argmax(-1, false).int64_value(&[0])
}

fn token_tensor(token: i64, device: Device) -> Tensor {
    Tensor::from_slice(&[token]).reshape([1, 1]).to(device)
}

pub struct StudentSession<'a> {
    pub model: &'a Student,
    pub new_tokens: i64,
    pub state: Option<(Encoded, DecoderCache)>,
    /// Image tiles whose projected patch tokens go before the text in the encoder input.
    pub images: Option<&'a ImageInput>,
}

impl Session for StudentSession<'_> {
    fn first(&mut self, ids: &Tensor, clock: &mut Clock) -> i64 {
        let m = self.model;
        let image = self.images.map(|i| i.embeds(clock)); // [1, image tokens, d]
        let enc = clock.time(Part::Encoder, || {
            let x = with_image(image.as_ref(), m.embed(ids)); // [1, s, d]
            let (b, s, _) = x.size3().expect("[b, s, d] embeddings");
            let valid = Tensor::ones([b, s], (Kind::Bool, ids.device()));
            m.encode_embeds(&x, &valid, false)
        });
        let cache = clock.time(Part::CrossKv, || m.new_cache(&enc, self.new_tokens));
        let (enc, cache) = self.state.insert((enc, cache));
        let bos = token_tensor(m.config.bos_token_id, ids.device());
        let h = clock.time(Part::Decoder, || m.decode(&bos, enc, Some(cache), false)); // [1, 1, d]
        clock.time(Part::LmHead, || greedy(&m.logits(&h.squeeze_dim(1))))
    }

    fn next(&mut self, token: i64, clock: &mut Clock) -> i64 {
        let m = self.model;
        let (enc, cache) = self.state.as_mut().expect("first() ran");
        let ids = token_tensor(token, m.device());
        let h = clock.time(Part::Decoder, || m.decode(&ids, enc, Some(cache), false));
        clock.time(Part::LmHead, || greedy(&m.logits(&h.squeeze_dim(1))))
    }
}

pub struct TwinSession<'a> {
    pub model: &'a CausalLm,
    pub new_tokens: i64,
    pub cache: Option<LmCache>,
    /// Image tiles whose projected patch tokens go before the text in the prompt.
    pub images: Option<&'a ImageInput>,
}

impl Session for TwinSession<'_> {
    fn first(&mut self, ids: &Tensor, clock: &mut Clock) -> i64 {
        let m = self.model;
        let image = self.images.map(|i| i.embeds(clock)); // [1, image tokens, d]
        let (b, text) = ids.size2().expect("[b, t] ids");
        let t = text + image.as_ref().map_or(0, |x| x.size()[1]);
        let cache = self.cache.insert(m.new_cache(b, t + self.new_tokens));
        let positions = Tensor::arange(t, (Kind::Int64, ids.device())).unsqueeze(0); // [1, t]
        let h = clock.time(Part::Layers, || {
            let x = with_image(image.as_ref(), m.embed(ids)); // [1, t, d]
            m.hidden_embeds(&x, &positions, &AttnMask::Causal, Some(cache), false)
        }); // [1, t, d]
        clock.time(Part::LmHead, || {
            greedy(&m.logits(&h.narrow(1, t - 1, 1).squeeze_dim(1)))
        })
    }

    fn next(&mut self, token: i64, clock: &mut Clock) -> i64 {
        let m = self.model;
        let cache = self.cache.as_mut().expect("first() ran");
        let device = m.device();
        let pos = Tensor::from_slice(&[cache.len()])
            .reshape([1, 1])
            .to(device);
        let ids = token_tensor(token, device);
        let h = clock.time(Part::Layers, || {
            m.hidden(&ids, &pos, &AttnMask::Full, Some(cache), false)
        });
        clock.time(Part::LmHead, || greedy(&m.logits(&h.squeeze_dim(1))))
    }
}

/// One timed generation: the first token's parts and the remaining steps' parts.
pub fn timed_run(
    session: &mut dyn Session,
    ids: &Tensor,
    new_tokens: usize,
    device: Device,
) -> (Parts, Parts) {
    let mut clock = Clock::new(device);
    let mut token = session.first(ids, &mut clock);
    let first = std::mem::take(&mut clock.parts);
    for _ in 1..new_tokens {
        token = session.next(token, &mut clock);
    }
    (first, clock.parts)
}
