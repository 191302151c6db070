//! edkd-data: datasets to tokenized Arrow shards, a sharded resumable reader, synthetic
//! asymmetric tasks and the teacher-logit cache.
//!
//! - [`prepare`]: JSONL/Parquet/CSV -> Arrow IPC shards + [`manifest::Manifest`].
//! - [`reader`]: deterministic, rank-disjoint, token-budget batches with a global cursor.
//! - [`synth`]: synthetic long-input/short-output tasks.
//! - [`synth_image`]: synthetic image-to-text tasks (rendered shapes and words, PNG).
//! - [`images`]: the shards' optional image column (PNG/JPEG bytes), checked and decoded.
//! - [`tokenizer`]: loading `tokenizer.json` and training byte-level BPE.
//! - [`cache`]: teacher top-k log-prob shards keyed by example id.
//! - [`packing`]: compact top-k rows (narrow ids, quantised log-probs) for the wire and cache v2.
//! - [`inspect`]: human-readable summaries of a dataset folder.

pub mod batch;
pub mod bounded;
pub mod cache;
pub mod dataset;
pub mod error;
pub mod fsutil;
pub mod images;
pub mod ingest;
pub mod inspect;
pub mod manifest;
pub mod packing;
pub mod prepare;
pub mod reader;
pub mod rng;
pub mod shard;
mod split_writer;
pub mod synth;
pub mod synth_image;
pub mod tokenizer;

pub use error::{Error, Result};

pub use batch::{Batch, IGNORE_INDEX};
pub use cache::{CacheEntry, CacheMeta, CacheReader, CacheRow, CacheWriter, TeacherBatch};
pub use dataset::{Dataset, OpenOptions};
pub use manifest::{Manifest, Verify};
pub use reader::{Cursor, Reader, ReaderConfig};
