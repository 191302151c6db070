//! One split of a prepared dataset folder, opened: memory-mapped shards addressed by a
//! global example index. RAM holds only the per-shard row offsets.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::manifest::{Manifest, Verify};
use crate::shard::Shard;

/// How to open a dataset split.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    pub split: String,
    pub verify: Verify,
    /// sha256 of the tokenizer the consumer uses; data from another tokenizer is refused.
    pub expect_tokenizer_sha256: Option<String>,
    /// Token ids must be below this (checked as batches are built); default: the manifest's
    /// tokenizer vocabulary size.
    pub vocab_limit: Option<usize>,
}

impl OpenOptions {
    /// Opens `split` with every shard's sha256 checked, ids checked against the manifest's
    /// vocabulary, any tokenizer accepted.
    pub fn new(split: &str) -> Self {
        Self {
            split: split.to_owned(),
            verify: Verify::Full,
            expect_tokenizer_sha256: None,
            vocab_limit: None,
        }
    }
}

/// A split of a dataset folder with global indices `0..len()` in manifest shard order.
#[derive(Debug)]
pub struct Dataset {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub split: String,
    shards: Vec<Shard>,
    /// First global index of each shard, plus the total at the end.
    starts: Vec<u64>,
    vocab_limit: usize,
}

impl Dataset {
    pub fn open(dir: &Path, options: &OpenOptions) -> Result<Self> {
        let manifest = Manifest::load(dir)?;
        if let Some(expected) = &options.expect_tokenizer_sha256 {
            manifest.check_tokenizer(expected, dir)?;
        }
        let vocab_limit = options.vocab_limit.unwrap_or(manifest.tokenizer.vocab_size);
        let specials = manifest.tokenizer.special_ids;
        for (name, id) in [
            ("bos", specials.bos),
            ("eos", specials.eos),
            ("pad", specials.pad),
        ] {
            if id as usize >= vocab_limit {
                return Err(Error::Manifest {
                    path: Manifest::path(dir),
                    message: format!(
                        "tokenizer.special_ids.{name} = {id} is not below the vocabulary size {vocab_limit}"
                    ),
                });
            }
        }
        manifest.verify_split(dir, &options.split, options.verify)?;
        let info = manifest.split(&options.split)?;
        let mut shards = Vec::with_capacity(info.shards.len());
        let mut starts = vec![0u64];
        let has_images = manifest.images.is_some();
        for s in &info.shards {
            let path = dir.join(&s.file);
            let shard = Shard::open(&path)?;
            if shard.has_images() != has_images {
                return Err(Error::Schema {
                    path,
                    message: format!(
                        "the shard {} an `image` column but the manifest says the dataset {}",
                        if has_images { "lacks" } else { "has" },
                        if has_images { "has images" } else { "has none" }
                    ),
                });
            }
            if shard.num_rows() as u64 != s.rows {
                return Err(Error::ShardRows {
                    shard: path,
                    expected: s.rows,
                    actual: shard.num_rows() as u64,
                });
            }
            starts.push(starts.last().copied().unwrap_or(0) + s.rows);
            shards.push(shard);
        }
        Ok(Self {
            dir: dir.to_owned(),
            split: options.split.clone(),
            manifest,
            shards,
            starts,
            vocab_limit,
        })
    }

    /// Whether examples carry images (every shard has the `image` column).
    pub fn has_images(&self) -> bool {
        self.manifest.images.is_some()
    }

    /// Token ids of this dataset are below this value.
    pub fn vocab_limit(&self) -> usize {
        self.vocab_limit
    }

    pub fn len(&self) -> u64 {
        *self.starts.last().unwrap_or(&0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The shard and row of global index `i`.
    #[inline]
    pub fn locate(&self, i: u64) -> (&Shard, usize) {
        let s = self.starts.partition_point(|&start| start <= i) - 1;
        (&self.shards[s], (i - self.starts[s]) as usize)
    }

    /// (input length, target length) of example `i`, read from the offsets only.
    #[inline]
    pub fn lengths(&self, i: u64) -> (usize, usize) {
        let (shard, row) = self.locate(i);
        shard.lengths(row)
    }

    pub fn example(&self, i: u64) -> ExampleRef<'_> {
        let (shard, row) = self.locate(i);
        ExampleRef {
            index: i,
            id: shard.id(row),
            task: shard.task(row),
            input_ids: shard.input_ids(row),
            target_ids: shard.target_ids(row),
            image: shard.image(row),
        }
    }
}

/// A borrowed view of one example.
#[derive(Debug, Clone, Copy)]
pub struct ExampleRef<'a> {
    pub index: u64,
    pub id: &'a str,
    pub task: &'a str,
    pub input_ids: &'a [u32],
    pub target_ids: &'a [u32],
    /// Encoded PNG/JPEG bytes; `None` when the example (or the dataset) has no image.
    pub image: Option<&'a [u8]>,
}
