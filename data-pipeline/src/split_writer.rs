//! One split of `edkd data prepare`'s output: buffers tokenized rows, writes a shard when
//! `shard_rows` rows (or [`SHARD_IMAGE_BYTES`] of images) are buffered, and keeps the
//! statistics the manifest reports.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::images::ImageFormat;
use crate::manifest::{ImageStats, LengthStats, ShardInfo, SplitInfo};
use crate::prepare::PrepareConfig;
use crate::shard::{self, Columns, Example};

/// Image bytes after which a shard is written early, so buffered rows stay small.
pub const SHARD_IMAGE_BYTES: usize = 256 << 20;

/// A tokenized record, or the reason it is skipped.
pub(crate) struct Tokenized {
    pub example: Option<Example>,
    pub truncated_input: bool,
    pub truncated_target: bool,
    /// Format and size of the example's image.
    pub image: Option<(ImageFormat, u32, u32)>,
}

/// Buffers one split's rows and writes full shards as they fill.
pub(crate) struct SplitWriter {
    name: &'static str,
    dir: PathBuf,
    shard_rows: usize,
    columns: Columns,
    rows: Vec<Example>,
    /// Image bytes in `rows`.
    row_image_bytes: usize,
    /// `None` for a dataset without images.
    images: Option<ImageStats>,
    shards: Vec<ShardInfo>,
    input_lengths: BTreeMap<u64, u64>,
    target_lengths: BTreeMap<u64, u64>,
    tasks: BTreeMap<String, u64>,
    truncated_inputs: u64,
    truncated_targets: u64,
    dropped: u64,
}

impl SplitWriter {
    pub fn new(root: &Path, name: &'static str, cfg: &PrepareConfig) -> Result<Self> {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
        Ok(Self {
            name,
            dir,
            shard_rows: cfg.shard_rows,
            columns: Columns {
                text: cfg.keep_text,
                image: cfg.fields.image_field.is_some(),
            },
            rows: Vec::new(),
            row_image_bytes: 0,
            images: cfg
                .fields
                .image_field
                .as_ref()
                .map(|_| ImageStats::default()),
            shards: Vec::new(),
            input_lengths: BTreeMap::new(),
            target_lengths: BTreeMap::new(),
            tasks: BTreeMap::new(),
            truncated_inputs: 0,
            truncated_targets: 0,
            dropped: 0,
        })
    }

    pub fn push(&mut self, t: Tokenized) -> Result<()> {
        self.truncated_inputs += t.truncated_input as u64;
        self.truncated_targets += t.truncated_target as u64;
        let Some(example) = t.example else {
            self.dropped += 1;
            return Ok(());
        };
        *self
            .input_lengths
            .entry(example.input_ids.len() as u64)
            .or_default() += 1;
        *self
            .target_lengths
            .entry(example.target_ids.len() as u64)
            .or_default() += 1;
        match self.tasks.get_mut(&example.task) {
            Some(n) => *n += 1,
            None => {
                self.tasks.insert(example.task.clone(), 1);
            }
        }
        if let (Some(stats), Some((format, width, height)), Some(bytes)) =
            (&mut self.images, t.image, &example.image)
        {
            stats.count += 1;
            match format {
                ImageFormat::Png => stats.png += 1,
                ImageFormat::Jpeg => stats.jpeg += 1,
            }
            stats.bytes += bytes.len() as u64;
            stats.max_width = stats.max_width.max(width);
            stats.max_height = stats.max_height.max(height);
            self.row_image_bytes += bytes.len();
        }
        self.rows.push(example);
        if self.rows.len() >= self.shard_rows || self.row_image_bytes >= SHARD_IMAGE_BYTES {
            self.write_shard()?;
        }
        Ok(())
    }

    fn write_shard(&mut self) -> Result<()> {
        let file = format!("{}/shard-{:05}.arrow", self.name, self.shards.len());
        let path = self
            .dir
            .join(format!("shard-{:05}.arrow", self.shards.len()));
        shard::write_shard(&path, &self.rows, self.columns)?;
        self.shards.push(ShardInfo {
            file,
            rows: self.rows.len() as u64,
            sha256: crate::fsutil::sha256_file(&path)?,
        });
        self.rows.clear();
        self.row_image_bytes = 0;
        Ok(())
    }

    pub fn finish(mut self) -> Result<(String, SplitInfo)> {
        if !self.rows.is_empty() {
            self.write_shard()?;
        }
        let rows: u64 = self.shards.iter().map(|s| s.rows).sum();
        if rows == 0 {
            return Err(Error::EmptySplit {
                split: self.name.into(),
            });
        }
        Ok((
            self.name.to_owned(),
            SplitInfo {
                rows,
                shards: self.shards,
                input_tokens: LengthStats::from_counts(&self.input_lengths),
                target_tokens: LengthStats::from_counts(&self.target_lengths),
                tasks: self.tasks,
                truncated_inputs: self.truncated_inputs,
                truncated_targets: self.truncated_targets,
                dropped: self.dropped,
                images: self.images,
            },
        ))
    }
}
