//! The teacher's view of each example ([`edkd_models::chat::TeacherView`]): built from the
//! run's config, and applied to every batch a live teacher scores (the prefetched batches,
//! on-policy samples, evaluation), so the teacher reads `view(input) ++ target` while the
//! student's alignment on target tokens stays as it is.

use std::path::Path;

use edkd_data::Batch;
use edkd_models::chat::{TeacherView, ViewKind, ViewSpec};

use crate::config::{TeacherPrompt, TrainConfig};
use crate::error::{Error, Result};
use crate::source::{SourceInfo, TeacherOut, TeacherSource};

/// The configured view; `tokenizer` is the run's tokenizer file (the teacher's). A chat
/// template is looked for at `teacher.chat_template`, then in the teacher folder, then
/// next to the tokenizer.
pub fn build(cfg: &TrainConfig, tokenizer: Option<&Path>) -> Result<TeacherView> {
    let t = &cfg.teacher;
    let kind = match t.prompt {
        TeacherPrompt::Raw => ViewKind::Raw,
        TeacherPrompt::Chat => ViewKind::Chat,
        TeacherPrompt::Plain => ViewKind::Plain,
    };
    let spec = ViewSpec {
        kind,
        tokenizer: tokenizer.map(Path::to_path_buf),
        template_places: [t.chat_template.clone(), t.model.clone()]
            .into_iter()
            .flatten()
            .collect(),
        system: t.system_prompt.clone(),
        plain: t.prompt_template.clone(),
    };
    TeacherView::from_spec(&spec).map_err(|e| Error::Config(format!("teacher.prompt: {e}")))
}

/// A source whose batches are re-collated with the teacher's view before scoring.
pub struct Viewed {
    inner: Box<dyn TeacherSource>,
    view: TeacherView,
    pad: i64,
    info: SourceInfo,
}

impl Viewed {
    /// Wraps `inner`; a raw view leaves it as it is.
    pub fn wrap(
        inner: Box<dyn TeacherSource>,
        view: TeacherView,
        pad: i64,
    ) -> Box<dyn TeacherSource> {
        if view.is_raw() {
            return inner;
        }
        let mut info = inner.info().clone();
        info.description = format!("{}, prompts: {}", info.description, view.describe());
        Box::new(Self {
            inner,
            view,
            pad,
            info,
        })
    }

    /// The batch as the teacher reads it.
    pub fn apply(view: &TeacherView, batch: &Batch, pad: i64) -> Result<Batch> {
        let mut prompts = Vec::with_capacity(batch.rows);
        for r in 0..batch.rows {
            let input: Vec<u32> = batch.teacher_prompt(r).iter().map(|&i| i as u32).collect();
            let ids = view
                .prompt(&input)
                .map_err(|e| Error::Source(format!("teacher view of `{}`: {e}", batch.ids[r])))?;
            prompts.push(ids.into_iter().map(i64::from).collect());
        }
        Ok(batch.with_teacher_prompts(&prompts, pad))
    }
}

impl TeacherSource for Viewed {
    fn info(&self) -> &SourceInfo {
        &self.info
    }

    fn score(&mut self, batch: &Batch) -> Result<TeacherOut> {
        let viewed = Self::apply(&self.view, batch, self.pad)?;
        self.inner.score(&viewed)
    }
}
