//! Where a CLIP vision tower's weights sit in the checkpoints transformers writes, and the
//! strict load that copies them into a VarStore.
//!
//! Three layouts exist: `CLIPModel` (any transformers version) and `CLIPVisionModel` saved by
//! transformers 4.x (the Hub's OpenAI checkpoints) put the tower under `vision_model.`;
//! `CLIPVisionModel` saved by transformers 5.x has no prefix. A `CLIPModel` also carries its
//! text tower and projections, which are known and skipped; any other extra key is an error.

use std::path::Path;

use safetensors::SafeTensors;
use tch::nn::VarStore;

use super::config::ClipCheckpoint;
use crate::error::{Error, Result};
use crate::weights::{KeyPlan, checkpoint_files, load_files_planned};

/// The tower's key prefix in `CLIPModel` and transformers 4.x `CLIPVisionModel` checkpoints.
pub const VISION_PREFIX: &str = "vision_model.";

/// A `CLIPModel`'s tensors outside the vision tower.
fn is_clip_text_side(key: &str) -> bool {
    key.starts_with("text_model.")
        || matches!(
            key,
            "text_projection.weight" | "visual_projection.weight" | "logit_scale"
        )
}

/// Buffers older checkpoints persisted; they are `arange(n)`, derived rather than learned.
fn is_position_ids(key: &str) -> bool {
    key.ends_with("embeddings.position_ids")
}

/// Every tensor name in the checkpoint's safetensors files.
fn checkpoint_keys(files: &[std::path::PathBuf]) -> Result<Vec<String>> {
    let mut keys = Vec::new();
    for path in files {
        let file = std::fs::File::open(path).map_err(Error::io(path))?;
        // SAFETY: read-only map, dropped at the end of this iteration.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(Error::io(path))?;
        let st = SafeTensors::deserialize(&mmap).map_err(|e| Error::Safetensors {
            path: path.clone(),
            msg: e.to_string(),
        })?;
        keys.extend(st.names().into_iter().map(str::to_string));
    }
    Ok(keys)
}

/// Copies the tower's weights from the checkpoint in `dir` into the variables of `vs` under
/// `scope` (the path [`super::ClipVisionModel::new`] was given: `"vision_model"` for a
/// standalone tower, or wherever a larger model keeps it). Other variables are untouched.
pub fn load_tower_weights(
    vs: &mut VarStore,
    scope: &str,
    dir: &Path,
    checkpoint: ClipCheckpoint,
) -> Result<()> {
    let files = checkpoint_files(dir)?;
    let from = match checkpoint {
        ClipCheckpoint::FullModel => VISION_PREFIX,
        ClipCheckpoint::VisionModel => {
            let keys = checkpoint_keys(&files)?;
            if keys.iter().any(|k| k.starts_with(VISION_PREFIX)) {
                VISION_PREFIX
            } else {
                ""
            }
        }
    };
    let to = if scope.is_empty() {
        String::new()
    } else {
        format!("{scope}.")
    };
    let skip = |key: &str| {
        is_position_ids(key)
            || match checkpoint {
                ClipCheckpoint::FullModel => is_clip_text_side(key),
                // CLIPVisionModelWithProjection shares the vision config's model_type.
                ClipCheckpoint::VisionModel => key == "visual_projection.weight",
            }
    };
    let plan = KeyPlan {
        from,
        to: &to,
        skip: &skip,
    };
    load_files_planned(vs, &files, dir, &plan)
}
