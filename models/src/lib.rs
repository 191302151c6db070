//! edkd-models: transformer layers on libtorch (tch), decoder-only teachers loaded from
//! Hugging Face checkpoints or GGUF files, the encoder-decoder student and its decoder-only twin, KV
//! caches and generation.

pub mod chat;
pub mod device;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod multimodal;
pub mod nn;
pub mod pt;
pub mod rng;
pub mod sampling;
pub mod student;
pub mod teacher;
pub mod tokenizer;
pub mod vision;
pub mod weights;

pub use error::{Error, Result};
pub use generate::{
    Decoding, GenerationConfig, generate, generate_from_embeds, generate_from_encoded,
    generate_seq2seq,
};
pub use sampling::Sampling;
pub use teacher::{CausalLm, LoadOptions, Teacher};
pub use tokenizer::Tokenizer;

/// Versions of the runtime, for `edkd info`.
pub fn torch_info() -> (String, bool, i64) {
    let version = env!("EDKD_TORCH_VERSION").to_string();
    (
        version,
        tch::Cuda::is_available(),
        tch::Cuda::device_count(),
    )
}
