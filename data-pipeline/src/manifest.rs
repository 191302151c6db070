//! `manifest.json`: what a prepared dataset folder holds and how it was made.
//!
//! Folder layout written by `edkd data prepare --out DIR`:
//!
//! ```text
//! DIR/manifest.json
//! DIR/train/shard-00000.arrow ...
//! DIR/validation/shard-00000.arrow ...   (only when a validation split was requested)
//! ```
//!
//! Shard paths in the manifest are relative to DIR.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::tokenizer::SpecialIds;

/// Format tag of data manifests; readers refuse other values.
pub const MANIFEST_FORMAT: &str = "edkd-data-manifest/1";
pub const MANIFEST_FILE: &str = "manifest.json";
pub const TRAIN: &str = "train";
pub const VALIDATION: &str = "validation";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub edkd_version: String,
    /// The command line that produced this folder, argument by argument.
    pub command: Vec<String>,
    pub tokenizer: TokenizerInfo,
    pub settings: PrepareSettings,
    pub splits: BTreeMap<String, SplitInfo>,
    /// Present when every shard has the `image` column (absent from manifests of text-only
    /// data, which are unchanged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<ImagesInfo>,
}

/// How a dataset's images are stored and marked in the text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImagesInfo {
    /// The shards' column of encoded PNG/JPEG bytes (Arrow binary, null: no image).
    pub column: String,
    /// Text marking the image's place in an input ([`crate::images::IMAGE_PLACEHOLDER`]).
    pub placeholder: String,
    /// The placeholder's one token id when the tokenizer has it as an added token; `None`:
    /// it was tokenised as ordinary text.
    pub image_token_id: Option<u32>,
    /// Largest width or height accepted ([`crate::images::MAX_IMAGE_SIDE`]).
    pub max_side: u32,
}

/// Images of one split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ImageStats {
    /// Examples with an image.
    pub count: u64,
    pub png: u64,
    pub jpeg: u64,
    /// Encoded bytes of all images.
    pub bytes: u64,
    pub max_width: u32,
    pub max_height: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenizerInfo {
    /// sha256 of the `tokenizer.json` bytes, lowercase hex.
    pub sha256: String,
    pub vocab_size: usize,
    pub special_ids: SpecialIds,
}

/// The options that shaped the token ids (so a reader can explain the data).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrepareSettings {
    pub input: String,
    pub target: String,
    pub max_input_tokens: Option<usize>,
    pub max_target_tokens: Option<usize>,
    pub input_truncation: String,
    pub target_truncation: String,
    pub val_fraction: Option<f64>,
    pub shard_rows: usize,
    pub keep_text: bool,
    /// The field images were read from (`--image-field`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_field: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitInfo {
    pub rows: u64,
    pub shards: Vec<ShardInfo>,
    pub input_tokens: LengthStats,
    pub target_tokens: LengthStats,
    /// Examples per task name.
    pub tasks: BTreeMap<String, u64>,
    pub truncated_inputs: u64,
    pub truncated_targets: u64,
    /// Examples skipped by the `drop` truncation policy.
    pub dropped: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<ImageStats>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    /// Path relative to the dataset folder.
    pub file: String,
    pub rows: u64,
    pub sha256: String,
}

/// Token-length statistics with a power-of-two histogram.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct LengthStats {
    pub count: u64,
    pub total: u64,
    pub min: u64,
    pub max: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    /// `[lo, hi, count]`: lengths in `lo..=hi`; buckets are 0, 1, 2-3, 4-7, ...
    pub histogram: Vec<[u64; 3]>,
}

impl LengthStats {
    /// Statistics of `lengths` given as `length -> count`.
    pub fn from_counts(counts: &BTreeMap<u64, u64>) -> Self {
        let count: u64 = counts.values().sum();
        if count == 0 {
            return Self::default();
        }
        let total: u64 = counts.iter().map(|(l, c)| l * c).sum();
        let quantile = |q: f64| -> u64 {
            let rank = ((q * count as f64).ceil() as u64).clamp(1, count);
            let mut seen = 0;
            for (&len, &c) in counts {
                seen += c;
                if seen >= rank {
                    return len;
                }
            }
            0
        };
        let mut histogram: Vec<[u64; 3]> = Vec::new();
        for (&len, &c) in counts {
            let (lo, hi) = bucket(len);
            match histogram.last_mut() {
                Some(last) if last[0] == lo => last[2] += c,
                _ => histogram.push([lo, hi, c]),
            }
        }
        Self {
            count,
            total,
            min: *counts.keys().next().unwrap_or(&0),
            max: *counts.keys().next_back().unwrap_or(&0),
            mean: total as f64 / count as f64,
            p50: quantile(0.5),
            p90: quantile(0.9),
            p99: quantile(0.99),
            histogram,
        }
    }
}

fn bucket(len: u64) -> (u64, u64) {
    if len == 0 {
        return (0, 0);
    }
    let lo = 1u64 << (63 - len.leading_zeros());
    (lo, lo * 2 - 1)
}

/// What a consumer checks before trusting a dataset folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Hash every shard and compare with the manifest (reads all bytes once, shards in
    /// parallel).
    Full,
    /// Only check that shards exist and have the manifest's row counts (for datasets too
    /// large to hash at every start); token ids are still range-checked batch by batch.
    RowCounts,
}

impl Manifest {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(MANIFEST_FILE)
    }

    pub fn load(dir: &Path) -> Result<Self> {
        let path = Self::path(dir);
        let text = std::fs::read_to_string(&path).map_err(Error::io(&path))?;
        let manifest: Manifest = serde_json::from_str(&text).map_err(|e| Error::Manifest {
            path: path.clone(),
            message: e.to_string(),
        })?;
        if manifest.format != MANIFEST_FORMAT {
            return Err(Error::Manifest {
                path,
                message: format!(
                    "format `{}`, this edkd reads `{MANIFEST_FORMAT}`",
                    manifest.format
                ),
            });
        }
        Ok(manifest)
    }

    /// Pretty JSON with a trailing newline; field order is fixed, so output is deterministic.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("manifest serializes");
        s.push('\n');
        s
    }

    pub fn split(&self, name: &str) -> Result<&SplitInfo> {
        self.splits.get(name).ok_or_else(|| Error::UnknownSplit {
            split: name.to_owned(),
            available: self.splits.keys().cloned().collect::<Vec<_>>().join(", "),
        })
    }

    /// Errors unless the data was tokenized with the tokenizer whose sha256 is `expected`.
    pub fn check_tokenizer(&self, expected: &str, dir: &Path) -> Result<()> {
        if !self.tokenizer.sha256.eq_ignore_ascii_case(expected) {
            return Err(Error::TokenizerMismatch {
                what: format!("dataset {}", dir.display()),
                expected: expected.to_owned(),
                found: self.tokenizer.sha256.clone(),
            });
        }
        Ok(())
    }

    /// Checks the shards of `split` against the manifest (see [`Verify`]); shards are
    /// hashed in parallel, and the first failure in manifest order is reported.
    pub fn verify_split(&self, dir: &Path, split: &str, verify: Verify) -> Result<()> {
        use rayon::prelude::*;
        self.split(split)?
            .shards
            .par_iter()
            .map(|shard| {
                let path = dir.join(&shard.file);
                match verify {
                    Verify::Full => {
                        let actual = crate::fsutil::sha256_file(&path)?;
                        if !actual.eq_ignore_ascii_case(&shard.sha256) {
                            return Err(Error::ShardChecksum {
                                shard: path,
                                expected: shard.sha256.clone(),
                                actual,
                            });
                        }
                    }
                    Verify::RowCounts => {
                        if !path.is_file() {
                            return Err(Error::io(&path)(std::io::ErrorKind::NotFound.into()));
                        }
                    }
                }
                Ok(())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_quantiles_and_buckets() {
        let counts: BTreeMap<u64, u64> = [(1, 1), (3, 2), (10, 1)].into_iter().collect();
        let s = LengthStats::from_counts(&counts);
        assert_eq!((s.count, s.total, s.min, s.max), (4, 17, 1, 10));
        assert_eq!(s.p50, 3);
        assert_eq!(s.p99, 10);
        assert_eq!(s.histogram, vec![[1, 1, 1], [2, 3, 2], [8, 15, 1]]);
    }
}
