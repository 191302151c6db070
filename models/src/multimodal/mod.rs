//! Vision-language models in the way of LLaVA and the paper's Mu-vision: a CLIP tower
//! ([`crate::vision`]) reads the image, its layer -2 patch features go through an
//! `mlp2x_gelu` projector to the text model's width, and the projected patches replace the
//! `<image>` placeholder in the text. In the encoder-decoder student they enter the
//! ENCODER (the decoder sees them only through cross-attention, so decoding costs nothing
//! more per token); in the decoder-only twin they enter the prompt, with the identical
//! tower and projector so the two stay equal in size.
//!
//! Checkpoint key prefixes: `vision_tower.vision_model.*` (a `CLIPVisionModel`'s keys),
//! `mm_projector.{0,2}.*` (LLaVA's), and the text model's own keys at the root (the
//! student's `embed_tokens.*`, `encoder.*`, `decoder.*`; the twin's `model.*`, `lm_head.*`).

pub mod config;
pub mod embedder;
pub mod folder;
pub mod merge;
pub mod projector;
pub mod student;
pub mod twin;
pub mod twin_folder;

pub use config::{ProjectorKind, VisionConfig};
pub use embedder::{ImageEmbedder, PROJECTOR_SCOPE, TOWER_SCOPE, TextBatch, VISION_SCOPE};
pub use folder::{TextSource, VisionChoices, VisionStudentModel, apply_trainable};
pub use merge::{ImageSlots, Merged, Side, Slot};
pub use projector::Projector;
pub use student::VisionStudent;
pub use twin::VisionTwin;
pub use twin_folder::{TWIN_MODEL_TYPE, VisionTwinModel};
