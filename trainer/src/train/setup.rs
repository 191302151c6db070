//! Construction of a run: data checked against its tokenizer, the teacher source checked
//! against the data, the model and optimizer, and the resume state.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use edkd_data::{Cursor, Dataset, ReaderConfig};
use edkd_models::Tokenizer;
use tch::Device;

use crate::checkpoint::{self, TrainerState};
use crate::config::{TeacherKind, TrainConfig};
use crate::error::{Error, Result};
use crate::model::{Net, Vocab};
use crate::optim::AdamW;
use crate::source::{self, TeacherSource};

use super::RunOptions;

/// What the run keeps of its data: the evaluation split if the manifest has one, and the
/// tokenizer the data was made with (the training split goes to the reader).
pub(crate) struct RunData {
    pub eval: Option<Dataset>,
    /// sha256 of the tokenizer recorded in the data's manifest.
    pub tokenizer_sha256: String,
    pub tokenizer: Option<Tokenizer>,
    /// The tokenizer file (copied into every checkpoint and the final model).
    pub tokenizer_path: Option<PathBuf>,
    /// The data's vocabulary and special ids.
    pub vocab: Vocab,
}

impl RunData {
    /// Opens both splits, refusing data made with another tokenizer than the run's;
    /// returns the training split beside.
    pub fn open(cfg: &TrainConfig, out: &Path) -> Result<(Self, Dataset)> {
        let tokenizer_path = tokenizer_path(cfg, out)?;
        let tokenizer = match &tokenizer_path {
            Some(p) => Some(Tokenizer::from_file(p)?),
            None => None,
        };
        let mut open = edkd_data::OpenOptions::new(&cfg.data.train_split);
        open.verify = cfg.data.verify.mode();
        open.expect_tokenizer_sha256 = tokenizer.as_ref().map(|t| t.sha256().to_owned());
        let train = Dataset::open(&cfg.data.manifest, &open)?;
        let eval = if train.manifest.splits.contains_key(&cfg.data.eval_split) {
            let mut o = open.clone();
            o.split = cfg.data.eval_split.clone();
            Some(Dataset::open(&cfg.data.manifest, &o)?)
        } else {
            None
        };
        let t = &train.manifest.tokenizer;
        let vocab = Vocab {
            size: t.vocab_size as i64,
            pad: t.special_ids.pad as i64,
            bos: t.special_ids.bos as i64,
            eos: t.special_ids.eos as i64,
            image_token_id: image_token_id(&train)?,
        };
        let data = Self {
            eval,
            tokenizer_sha256: t.sha256.clone(),
            tokenizer,
            tokenizer_path,
            vocab,
        };
        Ok((data, train))
    }

    /// The reader settings of `rank` of `world`.
    pub fn reader_config(cfg: &TrainConfig, rank: usize, world: usize) -> ReaderConfig {
        ReaderConfig {
            rank,
            world,
            seed: cfg.seed,
            max_tokens: cfg.batch.max_tokens,
            max_rows: cfg.batch.max_rows,
            // 0 turns length sorting off; the window then only bounds how many examples are
            // packed (in shuffled order) and shuffled together, so it stays large: a window
            // of one example would make every micro-batch a single row.
            bucket_window: match cfg.batch.bucket_window {
                0 => edkd_data::reader::DEFAULT_BUCKET_WINDOW,
                w => w,
            },
            bucket_by_length: cfg.batch.bucket_window > 0,
            shuffle: cfg.batch.shuffle,
            teacher: true,
        }
    }
}

/// The data's image placeholder id: `None` for text data; an error for data with images
/// whose tokenizer did not have the placeholder as one token.
pub(crate) fn image_token_id(ds: &Dataset) -> Result<Option<i64>> {
    let Some(images) = &ds.manifest.images else {
        return Ok(None);
    };
    match images.image_token_id {
        Some(id) => Ok(Some(i64::from(id))),
        None => Err(Error::Config(format!(
            "{}: the data has images but `images.image_token_id` is null (its tokenizer has              no `{}` token, so the placeholder was split into ordinary tokens); train the              tokenizer with --special \"{}\" and prepare the data again",
            ds.dir.join("manifest.json").display(),
            images.placeholder,
            images.placeholder
        ))),
    }
}

/// Refuses a text in-process teacher on data with images: it would answer blind, and
/// distilling blind answers teaches the student to ignore the image. (Checked before the
/// teacher is loaded.)
pub(crate) fn check_teacher_images(cfg: &TrainConfig, data: &RunData) -> Result<()> {
    use crate::model::vision::{VisionFolder, folder_kind};
    if data.vocab.image_token_id.is_none() || cfg.teacher.kind != TeacherKind::Model {
        return Ok(());
    }
    match &cfg.teacher.model {
        Some(dir) if folder_kind(dir) != Some(VisionFolder::Twin) => Err(crate::config::field(
            "teacher.model",
            format!(
                "{} is a text model, but the data has images: an in-process teacher for \
                 images is a vision-language twin folder ({})",
                dir.display(),
                edkd_models::multimodal::TWIN_MODEL_TYPE
            ),
        )
        .into()),
        _ => Ok(()),
    }
}

/// Refuses a text model on data with images (the images would be silently ignored; a
/// blind baseline is trained on data prepared without --image-field). The opposite, a
/// vision-language model on text data, is refused when it is built.
pub(crate) fn check_model_images(cfg: &TrainConfig, data: &RunData, net: &Net) -> Result<()> {
    if data.vocab.image_token_id.is_some() && !net.is_vision() {
        return Err(crate::config::field(
            "model.vision",
            format!(
                "absent, but the data ({}) has images: set [model.vision] to train a \
                 vision-language model (or prepare the data without --image-field for a \
                 text-only baseline)",
                cfg.data.manifest.display()
            ),
        )
        .into());
    }
    Ok(())
}

/// The tokenizer file the run uses: configured, or the teacher's (a folder's
/// `tokenizer.json`; a `.gguf` teacher's, written into `out/teacher-tokenizer/`).
fn tokenizer_path(cfg: &TrainConfig, out: &Path) -> Result<Option<PathBuf>> {
    if let Some(p) = &cfg.data.tokenizer {
        return Ok(Some(p.clone()));
    }
    for src in [&cfg.teacher.model, &cfg.model.init].into_iter().flatten() {
        if edkd_models::gguf::is_gguf(src) {
            let dir = out.join("teacher-tokenizer");
            if let Some(p) = edkd_models::gguf::extract_tokenizer(src, &dir)? {
                return Ok(Some(p));
            }
            continue;
        }
        let p = src.join("tokenizer.json");
        if p.is_file() {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

/// Opens the configured teacher source.
/// `vocab` is the tokenizer's size (the cache cannot tell the teacher's).
pub fn open_source(
    cfg: &TrainConfig,
    device: Device,
    vocab: i64,
) -> Result<Option<Box<dyn TeacherSource>>> {
    let t = &cfg.teacher;
    Ok(match t.kind {
        TeacherKind::None => None,
        TeacherKind::Model => Some(Box::new(source::InProcess::load(
            t.model.as_deref().expect("validated"),
            device,
        )?)),
        TeacherKind::Cache => Some(Box::new(source::Cache::open(
            t.cache.as_deref().expect("validated"),
            vocab,
        )?)),
        TeacherKind::Remote => {
            let token = match &t.auth_token_file {
                Some(p) => Some(
                    fs::read_to_string(p)
                        .map_err(Error::io(p))?
                        .trim()
                        .to_owned(),
                ),
                None => None,
            };
            Some(Box::new(source::Remote::connect(source::RemoteConfig {
                addr: t.addr.clone(),
                top_k: t.top_k,
                temperature: cfg.loss.temperature as f32,
                auth_token: token,
                timeout: Duration::from_secs_f64(t.timeout_s),
                retry_for: Duration::from_secs_f64(t.retry_for_s),
                packing: t.wire_packing()?,
            })?))
        }
    })
}

/// The configured teacher source, reading the configured view of the inputs: a live
/// teacher applies the view to every batch; a cache must have been made with it.
pub(crate) fn open_viewed_source(
    cfg: &TrainConfig,
    device: Device,
    data: &RunData,
) -> Result<Option<Box<dyn TeacherSource>>> {
    let Some(src) = open_source(cfg, device, data.vocab.size)? else {
        return Ok(None);
    };
    let view = crate::view::build(cfg, data.tokenizer_path.as_deref())?;
    if let Some(made_with) = &src.info().teacher_prompt {
        if *made_with != view.key() {
            return Err(Error::Config(format!(
                "{}: made with teacher prompts `{made_with}`, but teacher.prompt gives `{}` \
                 ({}); annotate the cache again with this view, or set teacher.prompt to match",
                src.info().description,
                view.key(),
                view.describe()
            )));
        }
        return Ok(Some(src));
    }
    Ok(Some(crate::view::Viewed::wrap(src, view, data.vocab.pad)))
}

/// Refuses a teacher that speaks another tokenizer than the data, or answers at another
/// temperature than the loss uses.
pub(crate) fn check_source(
    src: &dyn TeacherSource,
    cfg: &TrainConfig,
    data: &RunData,
) -> Result<()> {
    let info = src.info();
    let data_sha = &data.tokenizer_sha256;
    match &info.tokenizer_sha256 {
        Some(sha) if !sha.eq_ignore_ascii_case(data_sha) => {
            return Err(Error::Config(format!(
                "{}: its tokenizer (sha256 {sha}) differs from the data's ({data_sha}, in {}); \
                 prepare the data with the teacher's tokenizer",
                info.description,
                cfg.data.manifest.display()
            )));
        }
        None => tracing::warn!(
            teacher = %info.description,
            "the teacher does not report a tokenizer sha256; cannot check it against the data"
        ),
        _ => {}
    }
    if let Some(t) = info.temperature
        && (t as f64 - cfg.loss.temperature).abs() > 1e-6
    {
        return Err(Error::Config(format!(
            "{}: log-probs at temperature {t}, but loss.temperature = {}",
            info.description, cfg.loss.temperature
        )));
    }
    Ok(())
}

/// How the student's vocabulary relates to the data's and the teacher's.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Vocabs {
    /// The student's output size: covers the teacher's whole vocabulary (teachers often
    /// pad theirs past the tokenizer).
    pub model: Vocab,
    /// Columns the KD term compares (the teacher's vocabulary).
    pub kd: i64,
    /// On-policy samples stay below this: ids the tokenizer has and the teacher can read.
    pub sample: i64,
}

impl Vocabs {
    pub fn new(data: Vocab, teacher_vocab: Option<i64>) -> Self {
        let kd = teacher_vocab.unwrap_or(data.size);
        Self {
            model: Vocab {
                size: data.size.max(kd),
                ..data
            },
            kd,
            sample: data.size.min(kd),
        }
    }
}

/// The state a fresh run starts from.
pub(crate) fn fresh_state(cfg: &TrainConfig, world: usize) -> TrainerState {
    TrainerState {
        step: 0,
        total_steps: cfg.optim.steps,
        seed: cfg.seed,
        cursor: Cursor {
            epoch: 0,
            window: 0,
            batch: 0,
            examples_done: 0,
            layout: String::new(),
        },
        world,
        tokens: 0,
        elapsed_s: 0.0,
        best: None,
        last_eval: None,
    }
}

/// Restores the newest valid checkpoint under `root` into `net` and `opt` when resuming;
/// refuses to start over a folder that holds checkpoints otherwise. Returns the state
/// and the data cursor to continue from.
///
/// Checkpoints that do not verify are never used and never silently outlive good ones:
/// those newer than the one resumed from are moved to `root/corrupt/`; when none verifies
/// the resume fails, unless `discard_corrupt` moves them all aside to start over.
pub(crate) fn resume(
    cfg: &TrainConfig,
    opts: &RunOptions,
    root: &Path,
    net: &mut Net,
    opt: &mut AdamW,
    world: usize,
) -> Result<(TrainerState, Option<Cursor>)> {
    let fresh = fresh_state(cfg, world);
    let all = checkpoint::list(root);
    if !opts.resume {
        if !all.is_empty() {
            return Err(Error::Config(format!(
                "{} already holds checkpoints: pass --resume to continue that run, or choose \
                 another output folder",
                root.display()
            )));
        }
        return Ok((fresh, None));
    }
    let mut bad = Vec::new();
    let found = checkpoint::latest_valid(root, |e| {
        tracing::warn!("skipping a checkpoint that does not verify: {e}");
        bad.push(e.to_string());
    });
    let Some((dir, st)) = found else {
        if all.is_empty() {
            tracing::info!("--resume: no checkpoint yet, starting from scratch");
            return Ok((fresh, None));
        }
        if !opts.discard_corrupt {
            return Err(Error::Checkpoint {
                path: root.to_owned(),
                message: format!(
                    "--resume: none of the {} checkpoints verifies ({}); repair or remove \
                     them, or pass --discard-corrupt-checkpoints to move them to {}/{} and \
                     start over",
                    all.len(),
                    bad.join("; "),
                    root.display(),
                    checkpoint::CORRUPT_DIR
                ),
            });
        }
        for (_, d) in &all {
            checkpoint::quarantine(root, d)?;
        }
        tracing::warn!(moved = all.len(), "no checkpoint verifies: starting over");
        return Ok((fresh, None));
    };
    for (_, newer) in all.iter().filter(|(s, _)| *s > st.step) {
        checkpoint::quarantine(root, newer)?;
    }
    checkpoint::restore(&dir, net, opt)?;
    tracing::info!(checkpoint = %dir.display(), step = st.step, "resuming");
    let cursor = st.cursor.clone();
    let state = TrainerState {
        total_steps: cfg.optim.steps,
        world,
        ..st
    };
    Ok((state, Some(cursor)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_window_zero_turns_sorting_off_not_batching() {
        let mut cfg = TrainConfig::default();
        cfg.batch.bucket_window = 0;
        let r = RunData::reader_config(&cfg, 0, 1);
        assert!(!r.bucket_by_length);
        assert!(r.bucket_window >= cfg.batch.max_rows, "{}", r.bucket_window);
        cfg.batch.bucket_window = 24;
        let r = RunData::reader_config(&cfg, 0, 1);
        assert!(r.bucket_by_length);
        assert_eq!(r.bucket_window, 24);
    }
}
