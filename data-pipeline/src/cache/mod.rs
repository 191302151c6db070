//! Teacher-logit cache: Arrow IPC shards keyed by example id, so one cache serves any batch
//! size, world size or shuffle order.
//!
//! Folder: `DIR/cache-00000.arrow`, `DIR/cache-00001.arrow`, ... Each row is one example.
//! Format version 1 (f32 log-probs, u32 ids: 8 bytes per top-k entry):
//!
//! | column | type | shape |
//! |---|---|---|
//! | `id` | utf8 | |
//! | `topk_ids` | list<uint32> | `[positions * k]`, row-major `[positions, k]` |
//! | `topk_logprobs` | list<float32> | `[positions * k]`, log-probs at temperature T |
//! | `tail_logmass` | list<float32> | `[positions]`: `log(1 - sum(exp(topk_logprobs)))` |
//! | `gold_logprob` | list<float32> | `[positions]`: teacher log-prob of the label token |
//!
//! Format version 2 (the same arrays packed by [`crate::packing`], named in the metadata's
//! `packing`, each row optionally zstd-compressed at `zstd_level`):
//!
//! | column | type | |
//! |---|---|---|
//! | `id` | utf8 | |
//! | `positions` | uint32 | target positions of the row |
//! | `packed` | binary | one [`crate::packing::pack`] row (zstd frame if compressed) |
//!
//! Readers take both versions; [`CacheReader::get`] decodes a version-2 row into a
//! [`CacheRow::Decoded`].
//!
//! `positions` is the student's decoder length `T + 1` (target tokens then eos; see
//! [`crate::batch`]). The schema metadata key [`CACHE_METADATA_KEY`] holds [`CacheMeta`]
//! as JSON. Shards are written to a hidden temp file and renamed when full, so a finished
//! shard is final; a reopened [`CacheWriter`] knows which ids are done.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod columns;
mod summary;

use arrow_array::RecordBatch;
use arrow_ipc::writer::FileWriter;
use arrow_schema::Schema;
use serde::{Deserialize, Serialize};

pub use columns::CacheRow;
use columns::{Part, Pending, part_of};

use crate::batch::Batch;
use crate::error::{Error, Result};
use crate::packing::{IdOrder, Packing};
use crate::shard::MappedIpc;

/// Version of caches written without a packing (lists of u32 ids and f32 values).
pub const CACHE_FORMAT_VERSION: u32 = 1;
/// Version of packed caches (one binary row per example).
pub const CACHE_FORMAT_VERSION_PACKED: u32 = 2;
pub const CACHE_METADATA_KEY: &str = "edkd.teacher_cache";
const SHARD_PREFIX: &str = "cache-";
const SHARD_SUFFIX: &str = ".arrow";

/// What produced a cache; stored in every shard's schema metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheMeta {
    pub format_version: u32,
    pub teacher_model: String,
    pub tokenizer_sha256: String,
    pub k: usize,
    pub temperature: f32,
    /// The teacher's view of the inputs (`edkd_models::chat::TeacherView::key`); caches
    /// written before views existed read as `raw`.
    #[serde(default = "raw_prompt")]
    pub teacher_prompt: String,
    /// Version 2: the packing of the `packed` column (`bits-q8`, `delta-q4`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packing: Option<String>,
    /// Version 2: the teacher's vocabulary size (the id width of packed rows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vocab_size: Option<usize>,
    /// Version 2: zstd level each packed row was compressed at (absent: not compressed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zstd_level: Option<i32>,
    /// Version 2, `freq` packings: the leading ids of the [`IdOrder`] the rows were packed
    /// with (most frequent first; [`IdOrder::leading`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_order: Option<Vec<u32>>,
}

/// How a cache's rows are stored, resolved from its [`CacheMeta`].
#[derive(Debug, Clone, PartialEq)]
pub enum Layout {
    V1,
    V2 {
        packing: Packing,
        vocab: usize,
        zstd_level: Option<i32>,
        /// The id order of a `freq` packing.
        order: Option<Arc<IdOrder>>,
    },
}

fn raw_prompt() -> String {
    "raw".into()
}

impl CacheMeta {
    pub fn new(teacher_model: &str, tokenizer_sha256: &str, k: usize, temperature: f32) -> Self {
        Self {
            format_version: CACHE_FORMAT_VERSION,
            teacher_model: teacher_model.to_owned(),
            tokenizer_sha256: tokenizer_sha256.to_owned(),
            k,
            temperature,
            teacher_prompt: raw_prompt(),
            packing: None,
            vocab_size: None,
            zstd_level: None,
            id_order: None,
        }
    }

    /// The same cache as format version 2: rows packed with `packing` for a teacher
    /// vocabulary of `vocab_size`, each compressed with zstd at `zstd_level` if given.
    pub fn packed(self, packing: Packing, vocab_size: usize, zstd_level: Option<i32>) -> Self {
        Self {
            format_version: CACHE_FORMAT_VERSION_PACKED,
            packing: Some(packing.name()),
            vocab_size: Some(vocab_size),
            zstd_level,
            ..self
        }
    }

    /// The metadata of the cache in `dir` (its first finished shard's); `None` while it
    /// has no finished shard.
    pub fn of_folder(dir: &Path) -> Result<Option<CacheMeta>> {
        if !dir.exists() {
            return Ok(None);
        }
        match list_shards(dir)?.first() {
            None => Ok(None),
            Some(path) => Ok(Some(read_meta(&MappedIpc::open(path)?)?)),
        }
    }

    /// With the id order a `freq` packing packs by.
    pub fn with_id_order(self, order: &IdOrder) -> Self {
        Self {
            id_order: Some(order.leading().to_vec()),
            ..self
        }
    }

    /// The row layout this metadata describes; a newer version or a packing this build
    /// does not know is an error naming the field.
    pub fn layout(&self) -> std::result::Result<Layout, String> {
        match self.format_version {
            CACHE_FORMAT_VERSION => Ok(Layout::V1),
            CACHE_FORMAT_VERSION_PACKED => {
                let name = self
                    .packing
                    .as_deref()
                    .ok_or("format version 2 without `packing`")?;
                let packing = Packing::from_name(name).map_err(|e| e.to_string())?;
                let vocab = self
                    .vocab_size
                    .filter(|&v| v > 0)
                    .ok_or("format version 2 without a positive `vocab_size`")?;
                if self.k > crate::packing::MAX_K {
                    return Err(format!(
                        "k {} is over {} for packed rows",
                        self.k,
                        crate::packing::MAX_K
                    ));
                }
                let order = match (&self.id_order, packing.needs_order()) {
                    (Some(leading), true) => Some(Arc::new(
                        IdOrder::from_leading(vocab, leading).map_err(|e| e.to_string())?,
                    )),
                    (None, true) => {
                        return Err(format!(
                            "packing {name} without the `id_order` its rows need"
                        ));
                    }
                    (_, false) => None,
                };
                Ok(Layout::V2 {
                    packing,
                    vocab,
                    zstd_level: self.zstd_level,
                    order,
                })
            }
            v => Err(format!(
                "format_version {v} is newer than this build reads ({CACHE_FORMAT_VERSION} and {CACHE_FORMAT_VERSION_PACKED})"
            )),
        }
    }
}

/// One example's teacher targets (borrowed: from the caller when writing, from the memory
/// map when reading).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CacheEntry<'a> {
    pub id: &'a str,
    /// `[positions, k]`.
    pub topk_ids: &'a [u32],
    /// `[positions, k]`.
    pub topk_logprobs: &'a [f32],
    /// `[positions]`.
    pub tail_logmass: &'a [f32],
    /// `[positions]`.
    pub gold_logprob: &'a [f32],
}

impl CacheEntry<'_> {
    pub fn positions(&self) -> usize {
        self.tail_logmass.len()
    }
}

fn schema(meta: &CacheMeta, layout: &Layout) -> Schema {
    let metadata = HashMap::from([(
        CACHE_METADATA_KEY.to_owned(),
        serde_json::to_string(meta).expect("meta serializes"),
    )]);
    Schema::new(columns::fields(layout)).with_metadata(metadata)
}

fn shard_name(index: usize) -> String {
    format!("{SHARD_PREFIX}{index:05}{SHARD_SUFFIX}")
}

/// Finished shard files of a cache folder, sorted by name.
fn list_shards(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut shards = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(Error::io(dir))? {
        let path = entry.map_err(Error::io(dir))?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        if let Some(name) = name
            && name.starts_with(SHARD_PREFIX)
            && name.ends_with(SHARD_SUFFIX)
        {
            shards.push(path);
        }
    }
    shards.sort();
    Ok(shards)
}

fn read_meta(ipc: &MappedIpc) -> Result<CacheMeta> {
    let text = ipc
        .schema
        .metadata()
        .get(CACHE_METADATA_KEY)
        .ok_or_else(|| Error::Cache {
            path: ipc.path.clone(),
            message: format!("no `{CACHE_METADATA_KEY}` schema metadata"),
        })?;
    let meta: CacheMeta = serde_json::from_str(text).map_err(|e| Error::Cache {
        path: ipc.path.clone(),
        message: format!("bad metadata: {e}"),
    })?;
    meta.layout().map_err(|message| Error::Cache {
        path: ipc.path.clone(),
        message,
    })?;
    Ok(meta)
}

/// Appends examples to a cache folder, one finished shard at a time.
pub struct CacheWriter {
    dir: PathBuf,
    meta: CacheMeta,
    layout: Layout,
    schema: Arc<Schema>,
    shard_rows: usize,
    next_shard: usize,
    done: HashSet<String>,
    pending: Pending,
    pending_rows: usize,
}

impl CacheWriter {
    /// Opens (or creates) `dir`. Existing shards must carry the same `meta`; their ids
    /// count as done. Leftover temp files of a crashed writer are removed.
    pub fn open(dir: &Path, meta: CacheMeta, shard_rows: usize) -> Result<Self> {
        if shard_rows == 0 || meta.k == 0 {
            return Err(Error::Config {
                message: "cache shard_rows and k must be positive".into(),
            });
        }
        let layout = meta.layout().map_err(|message| Error::Config { message })?;
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        for entry in std::fs::read_dir(dir).map_err(Error::io(dir))? {
            let path = entry.map_err(Error::io(dir))?.path();
            if path.extension().is_some_and(|e| e == "tmp") {
                std::fs::remove_file(&path).map_err(Error::io(&path))?;
            }
        }
        let mut done = HashSet::new();
        let shards = list_shards(dir)?;
        for path in &shards {
            let ipc = MappedIpc::open(path)?;
            let found = read_meta(&ipc)?;
            if found != meta {
                return Err(Error::Cache {
                    path: path.clone(),
                    message: format!("made with {found:?}, this writer has {meta:?}"),
                });
            }
            for batch in &ipc.batches {
                for id in crate::shard::string_column(batch, "id").unwrap_or_default() {
                    done.insert(id);
                }
            }
        }
        Ok(Self {
            dir: dir.to_owned(),
            schema: Arc::new(schema(&meta, &layout)),
            meta,
            pending: Pending::new(&layout),
            layout,
            shard_rows,
            next_shard: shards.len(),
            done,
            pending_rows: 0,
        })
    }

    pub fn meta(&self) -> &CacheMeta {
        &self.meta
    }

    /// Ids already written (in finished shards or pending in the current one).
    pub fn done_ids(&self) -> &HashSet<String> {
        &self.done
    }

    pub fn is_done(&self, id: &str) -> bool {
        self.done.contains(id)
    }

    /// Adds one example; writes a shard when `shard_rows` are pending.
    pub fn push(&mut self, entry: &CacheEntry<'_>) -> Result<()> {
        let positions = entry.positions();
        let k = self.meta.k;
        let bad = |message: String| Error::Cache {
            path: self.dir.clone(),
            message: format!("example `{}`: {message}", entry.id),
        };
        if entry.topk_ids.len() != positions * k || entry.topk_logprobs.len() != positions * k {
            return Err(bad(format!(
                "top-k arrays must hold positions * k = {positions} * {k} values, got {} ids and {} log-probs",
                entry.topk_ids.len(),
                entry.topk_logprobs.len()
            )));
        }
        if entry.gold_logprob.len() != positions {
            return Err(bad(format!(
                "gold_logprob has {} values for {positions} positions",
                entry.gold_logprob.len()
            )));
        }
        if self.done.contains(entry.id) {
            return Err(bad("already in the cache".into()));
        }
        self.pending.push(entry, &self.layout, k, &self.dir)?;
        self.pending_rows += 1;
        self.done.insert(entry.id.to_owned());
        if self.pending_rows >= self.shard_rows {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes pending rows as a finished shard (temp file, fsync, rename).
    pub fn flush(&mut self) -> Result<()> {
        if self.pending_rows == 0 {
            return Ok(());
        }
        let columns = self.pending.finish();
        self.pending_rows = 0;
        let name = shard_name(self.next_shard);
        let path = self.dir.join(&name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let batch =
            RecordBatch::try_new(self.schema.clone(), columns).map_err(Error::arrow(&tmp))?;
        let file = File::create(&tmp).map_err(Error::io(&tmp))?;
        let mut writer =
            FileWriter::try_new(BufWriter::new(file), &self.schema).map_err(Error::arrow(&tmp))?;
        writer.write(&batch).map_err(Error::arrow(&tmp))?;
        writer.finish().map_err(Error::arrow(&tmp))?;
        let file = writer
            .into_inner()
            .map_err(Error::arrow(&tmp))?
            .into_inner()
            .map_err(|e| Error::io(&tmp)(e.into_error()))?;
        file.sync_all().map_err(Error::io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(Error::io(&path))?;
        self.next_shard += 1;
        Ok(())
    }

    /// Flushes the last shard. Rows pushed but never flushed are lost if the process dies.
    pub fn finish(mut self) -> Result<usize> {
        self.flush()?;
        Ok(self.next_shard)
    }
}

/// Random access by example id over a cache folder (memory-mapped).
pub struct CacheReader {
    dir: PathBuf,
    meta: CacheMeta,
    layout: Layout,
    /// Shard files, and the shard of each part.
    shards: Vec<PathBuf>,
    part_shard: Vec<usize>,
    parts: Vec<Part>,
    /// `(hash(id), part, row)` sorted by hash: 16 bytes per example, no strings in RAM.
    index: Vec<(u64, u32, u32)>,
}

impl CacheReader {
    pub fn open(dir: &Path) -> Result<Self> {
        let shards = list_shards(dir)?;
        if shards.is_empty() {
            return Err(Error::Cache {
                path: dir.to_owned(),
                message: "no cache shards".into(),
            });
        }
        let mut meta: Option<CacheMeta> = None;
        let mut parts = Vec::new();
        let mut part_shard = Vec::new();
        let mut index = Vec::new();
        for (shard, path) in shards.iter().enumerate() {
            let ipc = MappedIpc::open(path)?;
            let found = read_meta(&ipc)?;
            let layout = found.layout().expect("checked by read_meta");
            match &meta {
                Some(m) if *m != found => {
                    return Err(Error::Cache {
                        path: path.clone(),
                        message: format!("metadata {found:?} differs from other shards' {m:?}"),
                    });
                }
                _ => meta = Some(found),
            }

            for batch in &ipc.batches {
                let part = part_of(path, batch, &layout)?;
                let p = parts.len() as u32;
                for row in 0..batch.num_rows() {
                    index.push((crate::rng::hash_str(part.ids().value(row)), p, row as u32));
                }
                parts.push(part);
                part_shard.push(shard);
            }
        }
        index.sort_unstable();
        let meta = meta.expect("at least one shard");
        let reader = Self {
            dir: dir.to_owned(),
            layout: meta.layout().expect("checked by read_meta"),
            meta,
            shards,
            part_shard,
            parts,
            index,
        };
        for w in reader.index.windows(2) {
            if w[0].0 == w[1].0 {
                let (a, b) = (reader.id_at(w[0]), reader.id_at(w[1]));
                if a == b {
                    return Err(Error::Cache {
                        path: dir.to_owned(),
                        message: format!("id `{a}` appears twice"),
                    });
                }
            }
        }
        Ok(reader)
    }

    fn id_at(&self, (_, p, r): (u64, u32, u32)) -> &str {
        self.parts[p as usize].ids().value(r as usize)
    }

    pub fn meta(&self) -> &CacheMeta {
        &self.meta
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Errors unless the cache was made with the tokenizer whose sha256 is `expected`.
    pub fn check_tokenizer(&self, expected: &str) -> Result<()> {
        if !self.meta.tokenizer_sha256.eq_ignore_ascii_case(expected) {
            return Err(Error::TokenizerMismatch {
                what: format!("teacher cache {}", self.dir.display()),
                expected: expected.to_owned(),
                found: self.meta.tokenizer_sha256.clone(),
            });
        }
        Ok(())
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Example `id`'s targets (`None` if the cache does not hold it); a packed row that does
    /// not decode is an error naming the shard and the example.
    pub fn get(&self, id: &str) -> Result<Option<CacheRow<'_>>> {
        let h = crate::rng::hash_str(id);
        let start = self.index.partition_point(|e| e.0 < h);
        let Some(&(_, p, r)) = self.index[start..]
            .iter()
            .take_while(|e| e.0 == h)
            .find(|&&e| self.id_at(e) == id)
        else {
            return Ok(None);
        };
        self.row_at(p as usize, r as usize).map(Some)
    }

    fn row_at(&self, part: usize, row: usize) -> Result<CacheRow<'_>> {
        let path = &self.shards[self.part_shard[part]];
        self.parts[part].row(row, &self.layout, self.meta.k, path)
    }

    /// Teacher targets aligned with `batch`'s decoder positions.
    pub fn collate(&self, batch: &Batch) -> Result<TeacherBatch> {
        let (rows, dec_len, k) = (batch.rows, batch.dec_len, self.meta.k);
        let mut out = TeacherBatch {
            rows,
            dec_len,
            k,
            topk_ids: vec![0; rows * dec_len * k],
            topk_logprobs: vec![f32::NEG_INFINITY; rows * dec_len * k],
            tail_logmass: vec![f32::NEG_INFINITY; rows * dec_len],
            gold_logprob: vec![0.0; rows * dec_len],
        };
        for (r, id) in batch.ids.iter().enumerate() {
            let row = self.get(id)?.ok_or_else(|| Error::Cache {
                path: self.dir.clone(),
                message: format!("no entry for example `{id}`"),
            })?;
            let e = row.entry();
            let want = batch.decoder_mask[r * dec_len..(r + 1) * dec_len]
                .iter()
                .filter(|&&m| m)
                .count();
            if e.positions() != want {
                return Err(Error::Cache {
                    path: self.dir.clone(),
                    message: format!(
                        "example `{id}` has {} positions, the batch expects {want}",
                        e.positions()
                    ),
                });
            }
            let base = r * dec_len;
            for (d, &s) in out.topk_ids[base * k..(base + want) * k]
                .iter_mut()
                .zip(e.topk_ids)
            {
                *d = s as i64;
            }
            out.topk_logprobs[base * k..(base + want) * k].copy_from_slice(e.topk_logprobs);
            out.tail_logmass[base..base + want].copy_from_slice(e.tail_logmass);
            out.gold_logprob[base..base + want].copy_from_slice(e.gold_logprob);
        }
        Ok(out)
    }
}

/// Cached teacher targets padded to a batch; padded positions follow `batch.decoder_mask`.
#[derive(Debug, Clone, PartialEq)]
pub struct TeacherBatch {
    pub rows: usize,
    pub dec_len: usize,
    pub k: usize,
    /// `[rows, dec_len, k]`.
    pub topk_ids: Vec<i64>,
    /// `[rows, dec_len, k]`, -inf at padding.
    pub topk_logprobs: Vec<f32>,
    /// `[rows, dec_len]`, -inf at padding.
    pub tail_logmass: Vec<f32>,
    /// `[rows, dec_len]`, 0 at padding.
    pub gold_logprob: Vec<f32>,
}
