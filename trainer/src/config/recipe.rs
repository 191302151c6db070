//! Named recipes: a TOML table laid under the job's own config, so a job names the recipe
//! and changes only what it means to change (`recipe = "mu"`, then any field by hand or
//! with `--set`). Each recipe sets only fields the trainer really implements; what it
//! cannot reproduce is listed in `trainer/README.md`.

use super::{ConfigError, field};

/// The paper's distillation recipe, from the reference code (microsoft/encoder-decoder-slm):
/// `src/mu/train_text2text_by_kd.py` (`TrainText2TextByKD` defaults, `KDDataset`,
/// `KDModel`) and `src/mu/train.py` (`get_optimizer`, `_get_lr_lambda`, `Trainer`).
pub const MU: &str = r#"
[loss]
divergence = { kind = "forward_kl" }  # KDModel.forward_kd: F.kl_div over the full vocabulary
temperature = 1.0                     # no temperature in the KD term
alpha = 0.9                           # kd_alpha: alpha * KD + (1 - alpha) * CE
label_smoothing = 0.0
on_policy_fraction = 1.0              # every step: KD on the student's own samples, CE on gold
sample_temperature = 0.9              # generate_temperature (KDDataset temperature=0.9)
sample_top_k = 128                    # generate_top_k
sample_max_tokens = 256               # decoder_seq_len: generate up to max_new_tokens=256

[optim]
lr = 1e-4                             # learning_rate
weight_decay = 0.01                   # on >= 2-D parameters only (edkd: not on norms, biases)
beta1 = 0.9
beta2 = 0.98                          # get_optimizer betas (0.9, 0.98)
eps = 1e-8                            # torch AdamW default
clip = 1.0                            # max_grad_norm
schedule = "cosine"                   # linear warmup, then cosine to zero
warmup_steps = 4                      # warmup_steps
min_lr_ratio = 0.0
"#;

/// Every recipe by name.
pub const RECIPES: [(&str, &str); 1] = [("mu", MU)];

/// Lays the recipe named by the table's `recipe` field (if any) under the table: fields
/// the job sets keep their values, the others take the recipe's.
pub(super) fn apply(table: &mut toml::Table) -> Result<(), ConfigError> {
    let Some(name) = table.get("recipe") else {
        return Ok(());
    };
    let name = name
        .as_str()
        .ok_or_else(|| field("recipe", "must be a string"))?;
    let text = RECIPES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, t)| *t)
        .ok_or_else(|| {
            let known: Vec<&str> = RECIPES.iter().map(|(n, _)| *n).collect();
            field(
                "recipe",
                format!("unknown recipe `{name}`; known: {}", known.join(", ")),
            )
        })?;
    let recipe: toml::Table = toml::from_str(text).expect("built-in recipes parse");
    lay_under(table, recipe);
    Ok(())
}

fn lay_under(table: &mut toml::Table, recipe: toml::Table) {
    for (key, value) in recipe {
        if !table.contains_key(&key) {
            table.insert(key, value);
        } else if let (Some(toml::Value::Table(ours)), toml::Value::Table(theirs)) =
            (table.get_mut(&key), value)
        {
            lay_under(ours, theirs);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{ScheduleKind, TrainConfig};
    use crate::loss::Divergence;

    #[test]
    fn mu_recipe_sets_the_papers_values_and_yields_to_the_job() {
        let cfg = TrainConfig::from_overrides(&[
            "recipe=mu".into(),
            "data.manifest=x".into(),
            "optim.steps=500".into(),
            "loss.sample_top_k=64".into(),
        ])
        .unwrap();
        let (l, o) = (&cfg.loss, &cfg.optim);
        assert_eq!(l.divergence, Divergence::ForwardKl);
        assert_eq!((l.alpha, l.temperature), (0.9, 1.0));
        assert_eq!((l.on_policy_fraction, l.sample_temperature), (1.0, 0.9));
        assert_eq!(l.sample_top_k, 64, "the job's own value wins");
        assert_eq!(l.sample_max_tokens, 256);
        assert_eq!(
            (o.lr, o.weight_decay, o.beta1, o.beta2),
            (1e-4, 0.01, 0.9, 0.98)
        );
        assert_eq!((o.clip, o.warmup_steps, o.min_lr_ratio), (1.0, 4, 0.0));
        assert_eq!(o.schedule, ScheduleKind::Cosine);
        assert_eq!(o.steps, 500);
        // Without the recipe, edkd's defaults.
        let plain = TrainConfig::from_overrides(&["data.manifest=x".into()]).unwrap();
        assert_eq!((plain.loss.alpha, plain.optim.lr), (0.5, 1e-3));
        // The saved config reloads to the same values.
        let back: TrainConfig = toml::from_str(&cfg.to_toml()).unwrap();
        assert_eq!(back, cfg);
    }

    #[test]
    fn unknown_recipes_are_named() {
        let err = TrainConfig::from_overrides(&["recipe=mu2".into()]).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("recipe") && msg.contains("mu2") && msg.contains("known: mu"),
            "{msg}"
        );
    }
}
