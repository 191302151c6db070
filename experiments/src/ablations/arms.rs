//! The ablation arms: encoder-decoder students with the layers split 2/3-1/3, 1/2-1/2 and
//! 1/3-2/3 at equal parameters, the 2/3 split without positional encoding in the
//! encoder, and the decoder-only twin of equal size; trained with cross-entropy on the
//! labelled examples, and (the 2/3 split and the twin) with KD from the teacher.

use edkd_models::student::{StudentConfig, twin_config};
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// Layers in every arm (split between encoder and decoder for the students).
pub const LAYERS: i64 = 6;

/// What an arm varies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    /// An encoder-decoder student with this many encoder layers (the rest decode).
    Split { encoder_layers: i64 },
    /// The 4/2 student without RoPE in the encoder (no positional encoding there).
    NoEncoderRope,
    /// The decoder-only twin of the 4/2 student.
    Twin,
}

/// One arm: a model variant and its training signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Arm {
    pub variant: Variant,
    pub kd: bool,
}

impl Arm {
    /// Short name for folders and tables, e.g. `ed-4-2-ce`, `twin-kd`.
    pub fn name(&self) -> String {
        let v = match self.variant {
            Variant::Split { encoder_layers: e } => format!("ed-{e}-{}", LAYERS - e),
            Variant::NoEncoderRope => "ed-4-2-nope".into(),
            Variant::Twin => "twin".into(),
        };
        format!("{v}-{}", if self.kd { "kd" } else { "ce" })
    }

    /// A reader's label, e.g. "enc-dec 4/2 (2/3-1/3), CE".
    pub fn label(&self) -> String {
        let v = match self.variant {
            Variant::Split { encoder_layers: 4 } => "enc-dec 4+2 layers (2/3-1/3)".to_string(),
            Variant::Split { encoder_layers: 3 } => "enc-dec 3+3 layers (1/2-1/2)".to_string(),
            Variant::Split { encoder_layers: 2 } => "enc-dec 2+4 layers (1/3-2/3)".to_string(),
            Variant::Split { encoder_layers: e } => format!("enc-dec {e}+{} layers", LAYERS - e),
            Variant::NoEncoderRope => "enc-dec 4+2, no encoder RoPE".into(),
            Variant::Twin => "decoder-only twin, 6 layers".into(),
        };
        format!("{v}, {}", if self.kd { "KD" } else { "CE" })
    }
}

/// The arms in training order.
pub fn all() -> Vec<Arm> {
    let ce = |variant| Arm { variant, kd: false };
    let kd = |variant| Arm { variant, kd: true };
    let split = |e| Variant::Split { encoder_layers: e };
    vec![
        ce(split(4)),
        ce(split(3)),
        ce(split(2)),
        ce(Variant::NoEncoderRope),
        ce(Variant::Twin),
        kd(split(4)),
        kd(Variant::Twin),
    ]
}

/// The 4/2 student the others are sized against, at vocabulary `vocab`.
fn reference(vocab: i64) -> Result<StudentConfig> {
    let mut c = StudentConfig::preset("small")?;
    c.d_model = 96;
    c.attn_dim = 96;
    c.num_heads = 4;
    c.num_kv_heads = 2;
    c.ffn_dim = 384;
    c.max_positions = 512;
    c.encoder_layers = 4;
    c.decoder_layers = LAYERS - 4;
    c.vocab_size = vocab;
    Ok(c)
}

/// The FFN width (a multiple of 8) that brings a split to the 4/2 student's parameters.
fn ffn_for(split: &StudentConfig, target: i64) -> i64 {
    let mut c = split.clone();
    c.ffn_dim = 8;
    let at8 = c.num_parameters();
    c.ffn_dim = 16;
    let per8 = c.num_parameters() - at8; // parameters are affine in ffn_dim
    8 + ((target - at8) as f64 / per8 as f64).round() as i64 * 8
}

/// The student config of a split, at the 4/2 student's parameter count.
pub fn student_config(encoder_layers: i64, vocab: i64) -> Result<StudentConfig> {
    let base = reference(vocab)?;
    let mut c = base.clone();
    c.encoder_layers = encoder_layers;
    c.decoder_layers = LAYERS - encoder_layers;
    c.ffn_dim = ffn_for(&c, base.num_parameters());
    Ok(c)
}

/// The trainer overrides (`model.*`) of an arm at tokenizer vocabulary `vocab`.
pub fn model_overrides(arm: &Arm, vocab: i64) -> Result<Vec<String>> {
    let padded = StudentConfig::padded_vocab(vocab);
    let (cfg, architecture) = match arm.variant {
        Variant::Split { encoder_layers } => {
            (student_config(encoder_layers, padded)?, "encoder-decoder")
        }
        Variant::NoEncoderRope => {
            let mut c = student_config(4, padded)?;
            c.rope_encoder = false;
            (c, "encoder-decoder")
        }
        Variant::Twin => (student_config(4, padded)?, "decoder-only"),
    };
    let mut o = vec![
        format!("model.architecture={architecture}"),
        "model.preset=small".to_string(),
    ];
    for (k, v) in [
        ("d_model", cfg.d_model),
        ("encoder_layers", cfg.encoder_layers),
        ("decoder_layers", cfg.decoder_layers),
        ("attn_dim", cfg.attn_dim),
        ("num_heads", cfg.num_heads),
        ("num_kv_heads", cfg.num_kv_heads),
        ("ffn_dim", cfg.ffn_dim),
        ("max_positions", cfg.max_positions),
    ] {
        o.push(format!("model.overrides.{k}={v}"));
    }
    o.push(format!("model.overrides.rope_encoder={}", cfg.rope_encoder));
    Ok(o)
}

/// Parameters of an arm's model at vocabulary `vocab` (the twin's from its own config).
pub fn parameters(arm: &Arm, vocab: i64) -> Result<i64> {
    let padded = StudentConfig::padded_vocab(vocab);
    Ok(match arm.variant {
        Variant::Split { encoder_layers } => {
            student_config(encoder_layers, padded)?.num_parameters()
        }
        Variant::NoEncoderRope => student_config(4, padded)?.num_parameters(),
        Variant::Twin => {
            let mut c = student_config(4, padded)?;
            c.vocab_size = vocab; // the trainer gives the twin the tokenizer's vocabulary
            twin_config(&c).num_parameters()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_and_twin_have_equal_parameters() {
        let vocab = 1024;
        let target = parameters(&all()[0], vocab).unwrap();
        for arm in all() {
            let n = parameters(&arm, vocab).unwrap();
            let rel = (n - target).abs() as f64 / target as f64;
            assert!(rel < 0.02, "{}: {n} vs {target}", arm.name());
        }
        let c = student_config(2, 1024).unwrap();
        assert_eq!((c.encoder_layers, c.decoder_layers), (2, 4));
        assert!(c.ffn_dim < 384, "2/4 needs a narrower FFN: {}", c.ffn_dim);
    }

    #[test]
    fn names_are_unique() {
        let names: std::collections::BTreeSet<String> = all().iter().map(Arm::name).collect();
        assert_eq!(names.len(), all().len());
    }
}
