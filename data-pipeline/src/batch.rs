//! Collating examples into padded, row-major arrays for the student and the teacher.
//!
//! Conventions (right padding everywhere):
//! - encoder: `input_ids`, no specials added.
//! - decoder input `[bos] + target`, labels `target + [eos]` (same length `T + 1`).
//! - teacher sequence `input ++ target`; the teacher logit at position
//!   `target_start - 1 + t` predicts `labels[t]` for `t in 0..=T` (the last one predicts eos).

use crate::dataset::{Dataset, ExampleRef};
use crate::error::{Error, Result};
use crate::images::{RgbImage, decode_rgb8};
use crate::tokenizer::SpecialIds;

/// Label value at padded positions (what torch's cross-entropy ignores by default).
pub const IGNORE_INDEX: i64 = -100;

/// A padded batch. Every `Vec` is row-major with the shape named in its comment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    /// Number of examples; 0 only for a rank's filler batch in an epoch's last step.
    pub rows: usize,
    /// Global example index in the split, `[rows]`.
    pub indices: Vec<u64>,
    /// Example ids (keys of the teacher cache), `[rows]`.
    pub ids: Vec<String>,
    pub enc_len: usize,
    /// `[rows, enc_len]`, pad id at padding.
    pub encoder_ids: Vec<i64>,
    /// `[rows, enc_len]`, true at real tokens.
    pub encoder_mask: Vec<bool>,
    pub dec_len: usize,
    /// `[rows, dec_len]`: `[bos] + target`, pad id at padding.
    pub decoder_input_ids: Vec<i64>,
    /// `[rows, dec_len]`: `target + [eos]`, [`IGNORE_INDEX`] at padding.
    pub labels: Vec<i64>,
    /// `[rows, dec_len]`, true where `labels` is real.
    pub decoder_mask: Vec<bool>,
    /// 0 when the reader was asked not to build teacher arrays.
    pub teacher_len: usize,
    /// `[rows, teacher_len]`: `input ++ target`, pad id at padding.
    pub teacher_ids: Vec<i64>,
    /// `[rows, teacher_len]`.
    pub teacher_mask: Vec<bool>,
    /// `[rows]`: length of the input part (where the target starts in `teacher_ids`).
    pub target_start: Vec<i64>,
    /// `[rows]` encoded PNG/JPEG bytes (`None` for a row without an image), or `None` when
    /// the dataset has no images; [`Batch::decode_images`] gives the pixels.
    pub images: Option<Vec<Option<Vec<u8>>>>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Each row's image as 8-bit RGB (`None` for a row without one); an image that does not
    /// decode is an error naming the row's example id.
    pub fn decode_images(&self) -> Result<Vec<Option<RgbImage>>> {
        let Some(images) = &self.images else {
            return Ok(vec![None; self.rows]);
        };
        images
            .iter()
            .zip(&self.ids)
            .map(|(bytes, id)| bytes.as_deref().map(|b| decode_rgb8(b, id)).transpose())
            .collect()
    }

    /// Real (unpadded) input + target tokens.
    pub fn real_tokens(&self) -> usize {
        self.encoder_mask.iter().filter(|&&m| m).count()
            + self.decoder_mask.iter().filter(|&&m| m).count()
            - self.rows
    }
}

/// Errors unless every token id of `e` is below `vocab`, naming the shard, row, column,
/// position and value of the first that is not.
fn check_ids(ds: &Dataset, e: &ExampleRef<'_>, vocab: usize) -> Result<()> {
    for (column, ids) in [("input_ids", e.input_ids), ("target_ids", e.target_ids)] {
        if let Some(position) = ids.iter().position(|&id| id as usize >= vocab) {
            let (shard, row) = ds.locate(e.index);
            return Err(Error::TokenOutOfRange {
                shard: shard.path.clone(),
                row,
                id: e.id.to_owned(),
                column,
                position,
                value: ids[position],
                vocab,
            });
        }
    }
    Ok(())
}

/// Builds a [`Batch`] from examples `indices` of `ds`; a token id at or above the dataset's
/// vocabulary ([`Dataset::vocab_limit`]) is an error naming where it is.
pub fn collate(
    ds: &Dataset,
    indices: &[u64],
    specials: SpecialIds,
    teacher: bool,
) -> Result<Batch> {
    let rows = indices.len();
    let examples: Vec<_> = indices.iter().map(|&i| ds.example(i)).collect();
    for e in &examples {
        check_ids(ds, e, ds.vocab_limit())?;
    }
    let enc_len = examples
        .iter()
        .map(|e| e.input_ids.len())
        .max()
        .unwrap_or(0);
    let dec_len = examples
        .iter()
        .map(|e| e.target_ids.len() + 1)
        .max()
        .unwrap_or(0);
    let pad = specials.pad as i64;

    let mut encoder_ids = vec![pad; rows * enc_len];
    let mut encoder_mask = vec![false; rows * enc_len];
    let mut decoder_input_ids = vec![pad; rows * dec_len];
    let mut labels = vec![IGNORE_INDEX; rows * dec_len];
    let mut decoder_mask = vec![false; rows * dec_len];
    for (r, e) in examples.iter().enumerate() {
        let (n, t) = (e.input_ids.len(), e.target_ids.len());
        let enc = &mut encoder_ids[r * enc_len..r * enc_len + n];
        widen(enc, e.input_ids);
        encoder_mask[r * enc_len..r * enc_len + n].fill(true);

        let dec = &mut decoder_input_ids[r * dec_len..r * dec_len + t + 1];
        dec[0] = specials.bos as i64;
        widen(&mut dec[1..], e.target_ids);
        let lab = &mut labels[r * dec_len..r * dec_len + t + 1];
        widen(&mut lab[..t], e.target_ids);
        lab[t] = specials.eos as i64;
        decoder_mask[r * dec_len..r * dec_len + t + 1].fill(true);
    }

    let (mut teacher_len, mut teacher_ids, mut teacher_mask) = (0, Vec::new(), Vec::new());
    let mut target_start = Vec::with_capacity(rows);
    for e in &examples {
        target_start.push(e.input_ids.len() as i64);
    }
    if teacher {
        teacher_len = examples
            .iter()
            .map(|e| e.input_ids.len() + e.target_ids.len())
            .max()
            .unwrap_or(0);
        teacher_ids = vec![pad; rows * teacher_len];
        teacher_mask = vec![false; rows * teacher_len];
        for (r, e) in examples.iter().enumerate() {
            let (n, t) = (e.input_ids.len(), e.target_ids.len());
            let row = &mut teacher_ids[r * teacher_len..(r + 1) * teacher_len];
            widen(&mut row[..n], e.input_ids);
            widen(&mut row[n..n + t], e.target_ids);
            teacher_mask[r * teacher_len..r * teacher_len + n + t].fill(true);
        }
    }
    Ok(Batch {
        rows,
        indices: indices.to_vec(),
        ids: examples.iter().map(|e| e.id.to_owned()).collect(),
        enc_len,
        encoder_ids,
        encoder_mask,
        dec_len,
        decoder_input_ids,
        labels,
        decoder_mask,
        teacher_len,
        teacher_ids,
        teacher_mask,
        target_start,
        images: ds.has_images().then(|| {
            examples
                .iter()
                .map(|e| e.image.map(<[u8]>::to_vec))
                .collect()
        }),
    })
}

impl Batch {
    /// Row `r`'s teacher prompt: `teacher_ids` before its target.
    pub fn teacher_prompt(&self, r: usize) -> &[i64] {
        let start = r * self.teacher_len;
        &self.teacher_ids[start..start + self.target_start[r] as usize]
    }

    /// Row `r`'s target as the teacher reads it (after its prompt).
    pub fn teacher_target(&self, r: usize) -> &[i64] {
        let row = &self.teacher_ids[r * self.teacher_len..(r + 1) * self.teacher_len];
        let mask = &self.teacher_mask[r * self.teacher_len..(r + 1) * self.teacher_len];
        let end = mask.iter().rposition(|&m| m).map_or(0, |i| i + 1);
        &row[self.target_start[r] as usize..end]
    }

    /// The batch with each row's teacher prompt replaced by `prompts[r]` (the teacher's
    /// view of the input, e.g. inside its chat template): `teacher_ids = prompt ++ target`,
    /// `target_start = len(prompt)`. The student's side is unchanged, so target token `t`
    /// is still predicted at teacher position `target_start - 1 + t`.
    pub fn with_teacher_prompts(&self, prompts: &[Vec<i64>], pad: i64) -> Batch {
        assert_eq!(prompts.len(), self.rows, "one prompt per row");
        let targets: Vec<&[i64]> = (0..self.rows).map(|r| self.teacher_target(r)).collect();
        let teacher_len = prompts
            .iter()
            .zip(&targets)
            .map(|(p, t)| p.len() + t.len())
            .max()
            .unwrap_or(0);
        let mut teacher_ids = vec![pad; self.rows * teacher_len];
        let mut teacher_mask = vec![false; self.rows * teacher_len];
        for (r, (p, t)) in prompts.iter().zip(&targets).enumerate() {
            let row = &mut teacher_ids[r * teacher_len..(r + 1) * teacher_len];
            row[..p.len()].copy_from_slice(p);
            row[p.len()..p.len() + t.len()].copy_from_slice(t);
            teacher_mask[r * teacher_len..r * teacher_len + p.len() + t.len()].fill(true);
        }
        Batch {
            teacher_len,
            teacher_ids,
            teacher_mask,
            target_start: prompts.iter().map(|p| p.len() as i64).collect(),
            ..self.clone()
        }
    }
}

#[inline]
fn widen(dst: &mut [i64], src: &[u32]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = s as i64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_teacher_prompts_move_the_targets_and_keep_the_student_side() {
        // Rows: input [5, 6] target [7]; input [8] target [9, 10].
        let b = Batch {
            rows: 2,
            indices: vec![0, 1],
            ids: vec!["a".into(), "b".into()],
            enc_len: 2,
            encoder_ids: vec![5, 6, 8, 0],
            encoder_mask: vec![true, true, true, false],
            dec_len: 3,
            decoder_input_ids: vec![1, 7, 0, 1, 9, 10],
            labels: vec![7, 2, IGNORE_INDEX, 9, 10, 2],
            decoder_mask: vec![true, true, false, true, true, true],
            teacher_len: 3,
            teacher_ids: vec![5, 6, 7, 8, 9, 10],
            teacher_mask: vec![true; 6],
            target_start: vec![2, 1],
            images: None,
        };
        assert_eq!(b.teacher_prompt(1), &[8]);
        assert_eq!(b.teacher_target(1), &[9, 10]);
        let v = b.with_teacher_prompts(&[vec![40, 5, 6, 41], vec![40, 8, 41]], 0);
        assert_eq!(v.teacher_len, 5);
        assert_eq!(v.teacher_ids, vec![40, 5, 6, 41, 7, 40, 8, 41, 9, 10]);
        assert_eq!(
            v.teacher_mask,
            vec![true, true, true, true, true, true, true, true, true, true]
        );
        assert_eq!(v.target_start, vec![4, 3]);
        assert_eq!(v.teacher_target(0), &[7]);
        assert_eq!(
            (v.encoder_ids.clone(), v.labels.clone()),
            (b.encoder_ids.clone(), b.labels.clone())
        );
        // Shorter prompts pad the rest.
        let w = b.with_teacher_prompts(&[vec![5, 6], vec![8]], 0);
        assert_eq!(w.teacher_ids, b.teacher_ids);
        assert_eq!(w.target_start, b.target_start);
    }
}
