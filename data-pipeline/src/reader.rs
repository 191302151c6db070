//! The training reader: a deterministic epoch order shared by all ranks, token-budget
//! batches with length bucketing, and a global cursor that survives a change of world size.
//!
//! How an epoch is laid out (everything depends on seed, epoch and the batching settings,
//! never on rank or world size):
//! 1. A keyed permutation of `0..N` (O(1) memory) gives the shuffled example order.
//! 2. The order is cut into windows of `bucket_window` examples. Inside a window examples are
//!    sorted by length and packed greedily into *micro-batches* whose padded
//!    encoder + decoder tokens stay within `max_tokens`; the micro-batches of a window are
//!    then shuffled.
//! 3. The epoch is the sequence of all micro-batches, window after window. A training step
//!    consumes the next `world` micro-batches: rank `r` takes the `r`-th. In the epoch's last
//!    step ranks past the end get an empty batch, so every rank takes the same number of
//!    steps and every example is seen exactly once per epoch.
//!
//! The [`Cursor`] is the position in that global sequence after the last step, identical
//! on every rank. Since micro-batches do not depend on the world size, a job resumed with a
//! different number of ranks continues from the exact next micro-batch: no gap, no repeat.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::batch::{Batch, collate};
use crate::dataset::Dataset;
use crate::error::{Error, Result};
use crate::rng::{Permutation, Rng, seed_of};

/// Default examples planned (and length-sorted) together.
pub const DEFAULT_BUCKET_WINDOW: usize = 16384;
/// Windows kept planned at once (the current one and those a step may reach into).
const PLAN_CACHE_WINDOWS: usize = 8;

/// Batching and sharding settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaderConfig {
    pub rank: usize,
    pub world: usize,
    pub seed: u64,
    /// Budget of padded encoder + decoder tokens per (per-rank) batch. An example larger
    /// than the budget still forms a batch of its own.
    pub max_tokens: usize,
    /// Cap on rows per batch; 0 means no cap.
    pub max_rows: usize,
    /// Examples planned together: sorted by length (if `bucket_by_length`), packed into
    /// micro-batches and shuffled. Larger windows pad less and mix more; memory is O(window).
    pub bucket_window: usize,
    /// Sort each window by length before packing (less padding).
    pub bucket_by_length: bool,
    /// False keeps manifest order (evaluation); batches are then still length-bucketed.
    pub shuffle: bool,
    /// Build `teacher_ids`/`teacher_mask` in each batch.
    pub teacher: bool,
}

impl Default for ReaderConfig {
    fn default() -> Self {
        Self {
            rank: 0,
            world: 1,
            seed: 0,
            max_tokens: 16384,
            max_rows: 0,
            bucket_window: DEFAULT_BUCKET_WINDOW,
            bucket_by_length: true,
            shuffle: true,
            teacher: true,
        }
    }
}

/// Where the next step starts. Save it with a checkpoint; any rank's copy is the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub epoch: u64,
    /// Window of the next micro-batch.
    pub window: u64,
    /// Index of the next micro-batch inside its window.
    pub batch: u64,
    /// Examples consumed so far in this epoch (all ranks together).
    pub examples_done: u64,
    /// Hash of what shapes the epoch layout (dataset size, seed, batching settings).
    pub layout: String,
}

/// Micro-batches of one window, each a list of global example indices.
type Plan = Vec<Vec<u64>>;

/// Deterministic batches for one rank; see the module docs.
pub struct Reader {
    ds: Dataset,
    cfg: ReaderConfig,
    cursor: Cursor,
    windows: u64,
    perm: Permutation,
    plans: BTreeMap<u64, Plan>,
}

impl Reader {
    /// Starts at epoch 0, or at `cursor` when resuming.
    pub fn new(ds: Dataset, cfg: ReaderConfig, cursor: Option<Cursor>) -> Result<Self> {
        if cfg.world == 0 || cfg.rank >= cfg.world {
            return Err(Error::Config {
                message: format!("rank {} not in a world of {}", cfg.rank, cfg.world),
            });
        }
        if cfg.max_tokens == 0 || cfg.bucket_window == 0 {
            return Err(Error::Config {
                message: "max_tokens and bucket_window must be positive".into(),
            });
        }
        let n = ds.len();
        let layout = layout_hash(&cfg, n);
        let windows = n.div_ceil(cfg.bucket_window as u64);
        let cursor = match cursor {
            None => Cursor {
                epoch: 0,
                window: 0,
                batch: 0,
                examples_done: 0,
                layout,
            },
            Some(c) => {
                if c.layout != layout {
                    return Err(Error::Cursor {
                        message: format!(
                            "cursor layout {} but this reader's is {layout} (dataset size, seed, \
                             max_tokens, max_rows, bucket settings or shuffle changed)",
                            c.layout
                        ),
                    });
                }
                if c.window > windows {
                    return Err(Error::Cursor {
                        message: format!("window {} past the last ({windows})", c.window),
                    });
                }
                c
            }
        };
        let perm = Permutation::new(n, seed_of(&[cfg.seed, cursor.epoch]));
        Ok(Self {
            ds,
            cfg,
            cursor,
            windows,
            perm,
            plans: BTreeMap::new(),
        })
    }

    pub fn dataset(&self) -> &Dataset {
        &self.ds
    }

    pub fn config(&self) -> &ReaderConfig {
        &self.cfg
    }

    /// The position after the last step taken (identical on every rank).
    pub fn cursor(&self) -> &Cursor {
        &self.cursor
    }

    pub fn epoch(&self) -> u64 {
        self.cursor.epoch
    }

    /// This rank's batch of the next step, or `None` when the epoch is over (the following
    /// call starts the next epoch). The batch is empty (`rows == 0`) when the epoch's last
    /// step has fewer micro-batches than ranks. A token id outside the vocabulary (a
    /// corrupt shard read without [`crate::Verify::Full`]) is an error naming shard, row
    /// and value; the cursor has then moved past the bad batch.
    pub fn try_next_batch(&mut self) -> Result<Option<Batch>> {
        let Some(indices) = self.next_indices() else {
            return Ok(None);
        };
        let specials = self.ds.manifest.tokenizer.special_ids;
        collate(&self.ds, &indices, specials, self.cfg.teacher).map(Some)
    }

    /// [`Reader::try_next_batch`] for data known to be sound (e.g. opened with
    /// [`crate::Verify::Full`]).
    ///
    /// # Panics
    /// On a token id outside the vocabulary, with the message of the error
    /// [`Reader::try_next_batch`] returns; use that where bad data must not panic.
    pub fn next_batch(&mut self) -> Option<Batch> {
        self.try_next_batch().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Reader::next_batch`] but returns only the global example indices.
    pub fn next_indices(&mut self) -> Option<Vec<u64>> {
        let mut pos = self.normalize((self.cursor.window, self.cursor.batch));
        if pos.0 >= self.windows {
            self.start_epoch(self.cursor.epoch + 1);
            return None;
        }
        let (rank, world) = (self.cfg.rank, self.cfg.world);
        let mut mine = Vec::new();
        let mut consumed = 0;
        for r in 0..world {
            if pos.0 >= self.windows {
                break;
            }
            let micro = &self.plan(pos.0)[pos.1 as usize];
            consumed += micro.len() as u64;
            if r == rank {
                mine = micro.clone();
            }
            pos = self.normalize((pos.0, pos.1 + 1));
        }
        self.cursor.window = pos.0;
        self.cursor.batch = pos.1;
        self.cursor.examples_done += consumed;
        self.plans.retain(|&w, _| w >= pos.0);
        Some(mine)
    }

    fn start_epoch(&mut self, epoch: u64) {
        self.cursor = Cursor {
            epoch,
            window: 0,
            batch: 0,
            examples_done: 0,
            layout: self.cursor.layout.clone(),
        };
        self.perm = Permutation::new(self.ds.len(), seed_of(&[self.cfg.seed, epoch]));
        self.plans.clear();
    }

    /// Moves `(window, batch)` past exhausted windows.
    fn normalize(&mut self, (mut w, mut b): (u64, u64)) -> (u64, u64) {
        while w < self.windows && b >= self.plan(w).len() as u64 {
            w += 1;
            b = 0;
        }
        (w, b)
    }

    fn plan(&mut self, w: u64) -> &Plan {
        if !self.plans.contains_key(&w) {
            let plan = self.make_plan(w);
            if self.plans.len() >= PLAN_CACHE_WINDOWS {
                self.plans.pop_first();
            }
            self.plans.insert(w, plan);
        }
        &self.plans[&w]
    }

    /// Sorts window `w` by length and packs it into shuffled micro-batches.
    fn make_plan(&self, w: u64) -> Plan {
        let n = self.ds.len();
        let window = self.cfg.bucket_window as u64;
        let (lo, hi) = (w * window, ((w + 1) * window).min(n));
        // (sort key, position, example index, input len, decoder len)
        let mut items: Vec<(usize, u64, u64, usize, usize)> = (lo..hi)
            .map(|p| {
                let i = if self.cfg.shuffle { self.perm.at(p) } else { p };
                let (a, t) = self.ds.lengths(i);
                (a + t + 1, p, i, a, t + 1)
            })
            .collect();
        if self.cfg.bucket_by_length {
            items.sort_unstable_by_key(|&(key, p, ..)| (key, p));
        }
        let mut plan: Plan = Vec::new();
        let mut current: Vec<u64> = Vec::new();
        let (mut max_in, mut max_dec) = (0, 0);
        for (_, _, i, a, d) in items {
            let (new_in, new_dec) = (max_in.max(a), max_dec.max(d));
            let cost = (current.len() + 1) * (new_in + new_dec);
            let full = self.cfg.max_rows > 0 && current.len() == self.cfg.max_rows;
            if !current.is_empty() && (cost > self.cfg.max_tokens || full) {
                plan.push(std::mem::take(&mut current));
                (max_in, max_dec) = (a, d);
            } else {
                (max_in, max_dec) = (new_in, new_dec);
            }
            current.push(i);
        }
        if !current.is_empty() {
            plan.push(current);
        }
        if self.cfg.shuffle {
            Rng::new(seed_of(&[self.cfg.seed, self.cursor.epoch, w, 1])).shuffle(&mut plan);
        }
        plan
    }
}

fn layout_hash(cfg: &ReaderConfig, n: u64) -> String {
    let h = seed_of(&[
        n,
        cfg.seed,
        cfg.max_tokens as u64,
        cfg.max_rows as u64,
        cfg.bucket_window as u64,
        cfg.bucket_by_length as u64,
        cfg.shuffle as u64,
    ]);
    format!("{h:016x}")
}
