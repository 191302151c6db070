//! Splicing image embeddings into text embeddings at each row's `<image>` placeholder.
//!
//! Images belong to the rows that have a placeholder, in row order (LLaVA's convention: the
//! `k`-th image fills the `k`-th placeholder). A row with a placeholder at `p` becomes
//! `text[..p] ++ image ++ text[p+1..len]`, so it grows by `tokens_per_image - 1`; a row
//! without one is its text. Rows are then padded again to the longest, on the side the
//! consumer wants: right for the encoder and for training, left for decoder-only prefill.

use tch::{Kind, Tensor};

use crate::error::{Error, Result};

/// Which end of a row the padding goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Left,
    Right,
}

/// One row's image: where its placeholder is and which image fills it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// Position of the placeholder in the row's text.
    pub position: i64,
    /// Index into the batch's images.
    pub image: i64,
}

/// Each row's slot (or none), found from the ids and checked against the number of images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSlots {
    pub rows: Vec<Option<Slot>>,
}

impl ImageSlots {
    /// Finds the placeholder of each row among its first `lengths[r]` ids (`ids`: one
    /// `Vec` per row). Errors name the row: two placeholders in one row, a placeholder row
    /// left without an image, an image left without a placeholder row.
    pub fn find(
        ids: &[Vec<i64>],
        lengths: &[i64],
        image_token_id: i64,
        n_images: i64,
    ) -> Result<Self> {
        let mut rows = Vec::with_capacity(ids.len());
        let mut next_image = 0;
        for (r, (row, &len)) in ids.iter().zip(lengths).enumerate() {
            let found: Vec<usize> = row[..len as usize]
                .iter()
                .enumerate()
                .filter(|(_, t)| **t == image_token_id)
                .map(|(i, _)| i)
                .collect();
            match found.as_slice() {
                [] => rows.push(None),
                [p] => {
                    if next_image >= n_images {
                        return Err(Error::Input(format!(
                            "row {r} has an image placeholder (token {image_token_id}) at \
                             position {p}, but only {n_images} image(s) were given; images \
                             fill the placeholder rows in order"
                        )));
                    }
                    rows.push(Some(Slot {
                        position: *p as i64,
                        image: next_image,
                    }));
                    next_image += 1;
                }
                many => {
                    return Err(Error::Input(format!(
                        "row {r} has {} image placeholders (token {image_token_id}) at \
                         positions {many:?}; a row takes at most one image",
                        many.len()
                    )));
                }
            }
        }
        if next_image < n_images {
            return Err(Error::Input(format!(
                "{n_images} images for {next_image} row(s) with an image placeholder \
                 (token {image_token_id}): image {next_image} has no placeholder row"
            )));
        }
        Ok(Self { rows })
    }

    /// The number of images the slots take.
    pub fn images(&self) -> i64 {
        self.rows.iter().flatten().count() as i64
    }
}

/// The text model's input after splicing.
#[derive(Debug)]
pub struct Merged {
    /// `[b, L, d]`; padding slots are zeros.
    pub embeds: Tensor,
    /// `[b, L]` bool: which slots are attended to.
    pub valid: Tensor,
    pub slots: ImageSlots,
    pub tokens_per_image: i64,
    /// Each row's merged length (text, plus the image less its placeholder).
    pub lengths: Vec<i64>,
    pub side: Side,
}

impl Merged {
    /// Where text position `i` of `row` sits in the merged sequence (the placeholder's own
    /// position is where its image starts). Lets a trainer find its target positions.
    pub fn text_position(&self, row: usize, i: i64) -> i64 {
        let shift = match self.slots.rows[row] {
            Some(slot) if i > slot.position => self.tokens_per_image - 1,
            _ => 0,
        };
        let width = self.valid.size()[1];
        let pad = match self.side {
            Side::Left => width - self.lengths[row],
            Side::Right => 0,
        };
        pad + i + shift
    }
}

/// Splices `images` (`[n, tokens_per_image, d]`) into `text` (`[b, s, d]`, right-padded,
/// row `r` using its first `lengths[r]` slots) at `slots`; `key_valid` (`[b, s]`) marks
/// which text slots are attended to and is carried along.
pub fn splice(
    text: &Tensor,
    key_valid: &Tensor,
    lengths: &[i64],
    slots: ImageSlots,
    images: Option<&Tensor>,
    side: Side,
) -> Result<Merged> {
    let (b, _, d) = text.size3()?;
    let device = text.device();
    let tokens_per_image = match images {
        Some(img) => img.size3()?.1,
        None => 0,
    };
    let mut rows_x = Vec::with_capacity(b as usize);
    let mut rows_v = Vec::with_capacity(b as usize);
    for (r, slot) in slots.rows.iter().enumerate() {
        let (x, v) = (text.get(r as i64), key_valid.get(r as i64));
        let len = lengths[r];
        let row = match (slot, images) {
            (Some(slot), Some(images)) => {
                let p = slot.position;
                let after = len - p - 1;
                let img = images.get(slot.image).to_kind(x.kind()); // [tokens, d]
                let img_valid = Tensor::ones([tokens_per_image], (Kind::Bool, device));
                (
                    Tensor::cat(&[x.narrow(0, 0, p), img, x.narrow(0, p + 1, after)], 0),
                    Tensor::cat(
                        &[v.narrow(0, 0, p), img_valid, v.narrow(0, p + 1, after)],
                        0,
                    ),
                )
            }
            (Some(_), None) => {
                return Err(Error::Input(format!(
                    "row {r} has an image placeholder but no images were given"
                )));
            }
            (None, _) => (x.narrow(0, 0, len), v.narrow(0, 0, len)),
        };
        rows_x.push(row.0);
        rows_v.push(row.1);
    }
    let merged_lengths: Vec<i64> = rows_v.iter().map(|v| v.size()[0]).collect();
    let width = merged_lengths.iter().copied().max().unwrap_or(0);
    let pad = |x: Tensor, v: Tensor| {
        let n = width - v.size()[0];
        let zx = Tensor::zeros([n, d], (x.kind(), device));
        let zv = Tensor::zeros([n], (Kind::Bool, device));
        match side {
            Side::Right => (Tensor::cat(&[x, zx], 0), Tensor::cat(&[v, zv], 0)),
            Side::Left => (Tensor::cat(&[zx, x], 0), Tensor::cat(&[zv, v], 0)),
        }
    };
    let (xs, vs): (Vec<Tensor>, Vec<Tensor>) = rows_x
        .into_iter()
        .zip(rows_v)
        .map(|(x, v)| pad(x, v))
        .unzip();
    Ok(Merged {
        embeds: Tensor::stack(&xs, 0),
        valid: Tensor::stack(&vs, 0),
        slots,
        tokens_per_image,
        lengths: merged_lengths,
        side,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMG: i64 = 9;

    #[test]
    fn slots_follow_row_order_and_errors_name_the_row() {
        let ids = vec![vec![1, IMG, 2], vec![3, 4, 0], vec![IMG, 5, 6]];
        let lens = [3, 2, 3];
        let s = ImageSlots::find(&ids, &lens, IMG, 2).unwrap();
        assert_eq!(
            s.rows,
            vec![
                Some(Slot {
                    position: 1,
                    image: 0
                }),
                None,
                Some(Slot {
                    position: 0,
                    image: 1
                })
            ]
        );
        let e = ImageSlots::find(&ids, &lens, IMG, 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("row 2") && e.contains("only 1 image"), "{e}");
        let e = ImageSlots::find(&ids, &lens, IMG, 3)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("3 images for 2 row") && e.contains("image 2"),
            "{e}"
        );
        let two = vec![vec![1, 2], vec![IMG, IMG]];
        let e = ImageSlots::find(&two, &[2, 2], IMG, 2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("row 1 has 2 image placeholders"), "{e}");
        // A placeholder id in the padding is padding.
        let padded = vec![vec![1, 2, IMG]];
        assert_eq!(
            ImageSlots::find(&padded, &[2], IMG, 0).unwrap().rows,
            vec![None]
        );
    }

    #[test]
    fn left_padded_positions_count_the_padding() {
        let ids = vec![vec![1, IMG, 2], vec![3, 4, 5]];
        let slots = ImageSlots::find(&ids, &[3, 3], IMG, 1).unwrap();
        let text = Tensor::arange(18, (Kind::Float, tch::Device::Cpu)).view([2, 3, 3]);
        let images = Tensor::full([1, 4, 3], -1.0, (Kind::Float, tch::Device::Cpu));
        let valid = Tensor::ones([2, 3], (Kind::Bool, tch::Device::Cpu));
        let m = splice(&text, &valid, &[3, 3], slots, Some(&images), Side::Left).unwrap();
        assert_eq!(m.lengths, vec![6, 3]);
        assert_eq!(m.embeds.size(), [2, 6, 3]);
        assert_eq!(
            Vec::<bool>::try_from(m.valid.get(1)).unwrap(),
            [false, false, false, true, true, true]
        );
        // Row 1's text token 0 is at slot 3; row 0's token 2 follows the 4 image tokens.
        assert_eq!(m.text_position(1, 0), 3);
        assert_eq!(m.text_position(0, 2), 5);
        assert!(m.embeds.get(1).get(3).equal(&text.get(1).get(0)));
        assert!(m.embeds.get(0).get(5).equal(&text.get(0).get(2)));
    }
}
