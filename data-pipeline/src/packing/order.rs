//! [`IdOrder`]: a renumbering of the vocabulary by how often each id appears in a set of
//! top-k rows, the key of the `freq` packings.

use super::{PackError, err};

/// The vocabulary renumbered: rank 0 is the id seen most often in the calibration rows,
/// ties and unseen ids in id order. Only the seen ids (the `leading` ranks) are stored;
/// the rest follow implicitly, so the order of a cache's metadata is a few thousand ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdOrder {
    /// Rank -> id, the whole vocabulary.
    ids: Vec<u32>,
    /// Id -> rank.
    ranks: Vec<u32>,
    leading: usize,
}

impl IdOrder {
    /// The order of the ids in `rows` (each a top-k row of ids below `vocab`) by how many
    /// rows hold them, most first.
    pub fn from_rows<'a>(
        vocab: usize,
        rows: impl IntoIterator<Item = &'a [u32]>,
    ) -> Result<Self, PackError> {
        let mut counts = vec![0u64; vocab];
        for row in rows {
            for &id in row {
                match counts.get_mut(id as usize) {
                    Some(c) => *c += 1,
                    None => {
                        return err(
                            "topk_ids",
                            format!("{id} is not below the vocabulary size {vocab}"),
                        );
                    }
                }
            }
        }
        let mut seen: Vec<u32> = (0..vocab as u32)
            .filter(|&i| counts[i as usize] > 0)
            .collect();
        seen.sort_by(|&a, &b| counts[b as usize].cmp(&counts[a as usize]).then(a.cmp(&b)));
        Self::from_leading(vocab, &seen)
    }

    /// The order whose first ranks are `leading` (distinct ids below `vocab`), the other
    /// ids after them in id order: what [`IdOrder::leading`] stored.
    pub fn from_leading(vocab: usize, leading: &[u32]) -> Result<Self, PackError> {
        if vocab == 0 || u32::try_from(vocab).is_err() {
            return err(
                "vocab_size",
                format!("{vocab} is not a usable vocabulary size"),
            );
        }
        let mut ranks = vec![u32::MAX; vocab];
        for (r, &id) in leading.iter().enumerate() {
            match ranks.get_mut(id as usize) {
                Some(slot) if *slot == u32::MAX => *slot = r as u32,
                Some(_) => return err(format!("id_order[{r}]"), format!("repeats id {id}")),
                None => {
                    return err(
                        format!("id_order[{r}]"),
                        format!("{id} is not below the vocabulary size {vocab}"),
                    );
                }
            }
        }
        let mut ids = leading.to_vec();
        ids.reserve(vocab - leading.len());
        for id in 0..vocab as u32 {
            if ranks[id as usize] == u32::MAX {
                ranks[id as usize] = ids.len() as u32;
                ids.push(id);
            }
        }
        Ok(Self {
            ids,
            ranks,
            leading: leading.len(),
        })
    }

    pub fn vocab(&self) -> usize {
        self.ids.len()
    }

    /// The stored part: the ids of the first ranks, most frequent first.
    pub fn leading(&self) -> &[u32] {
        &self.ids[..self.leading]
    }

    /// Rank of `id` (below [`IdOrder::vocab`]).
    pub fn rank(&self, id: u32) -> u32 {
        self.ranks[id as usize]
    }

    /// Id of `rank` (below [`IdOrder::vocab`]).
    pub fn id(&self, rank: u32) -> u32 {
        self.ids[rank as usize]
    }
}
