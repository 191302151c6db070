//! Teacher-logit cache: Arrow IPC shards keyed by example id, so one cache serves any batch
//! size, world size or shuffle order.
//!
//! Folder: `DIR/cache-00000.arrow`, `DIR/cache-00001.arrow`, ... Each row is one example:
//!
//! | column | type | shape |
//! |---|---|---|
//! | `id` | utf8 | |
//! | `topk_ids` | list<uint32> | `[positions * k]`, row-major `[positions, k]` |
//! | `topk_logprobs` | list<float32> | `[positions * k]`, log-probs at temperature T |
//! | `tail_logmass` | list<float32> | `[positions]`: `log(1 - sum(exp(topk_logprobs)))` |
//! | `gold_logprob` | list<float32> | `[positions]`: teacher log-prob of the label token |
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

use arrow_array::builder::{Float32Builder, ListBuilder, StringBuilder, UInt32Builder};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, UInt32Type};
use arrow_array::{ArrayRef, RecordBatch, StringArray};
use arrow_buffer::{OffsetBuffer, ScalarBuffer};
use arrow_ipc::writer::FileWriter;
use arrow_schema::{DataType, Field, Schema};
use serde::{Deserialize, Serialize};

use crate::batch::Batch;
use crate::error::{Error, Result};
use crate::shard::MappedIpc;

pub const CACHE_FORMAT_VERSION: u32 = 1;
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

fn schema(meta: &CacheMeta) -> Schema {
    let list = |t: DataType| DataType::List(Arc::new(Field::new("item", t, true)));
    let metadata = HashMap::from([(
        CACHE_METADATA_KEY.to_owned(),
        serde_json::to_string(meta).expect("meta serializes"),
    )]);
    Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("topk_ids", list(DataType::UInt32), false),
        Field::new("topk_logprobs", list(DataType::Float32), false),
        Field::new("tail_logmass", list(DataType::Float32), false),
        Field::new("gold_logprob", list(DataType::Float32), false),
    ])
    .with_metadata(metadata)
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
    serde_json::from_str(text).map_err(|e| Error::Cache {
        path: ipc.path.clone(),
        message: format!("bad metadata: {e}"),
    })
}

/// Appends examples to a cache folder, one finished shard at a time.
pub struct CacheWriter {
    dir: PathBuf,
    meta: CacheMeta,
    schema: Arc<Schema>,
    shard_rows: usize,
    next_shard: usize,
    done: HashSet<String>,
    pending: Pending,
}

#[derive(Default)]
struct Pending {
    rows: usize,
    ids: StringBuilder,
    topk_ids: ListBuilder<UInt32Builder>,
    topk_logprobs: ListBuilder<Float32Builder>,
    tail: ListBuilder<Float32Builder>,
    gold: ListBuilder<Float32Builder>,
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
            schema: Arc::new(schema(&meta)),
            meta,
            shard_rows,
            next_shard: shards.len(),
            done,
            pending: Pending::default(),
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
        let p = &mut self.pending;
        p.ids.append_value(entry.id);
        p.topk_ids.values().append_slice(entry.topk_ids);
        p.topk_ids.append(true);
        p.topk_logprobs.values().append_slice(entry.topk_logprobs);
        p.topk_logprobs.append(true);
        p.tail.values().append_slice(entry.tail_logmass);
        p.tail.append(true);
        p.gold.values().append_slice(entry.gold_logprob);
        p.gold.append(true);
        p.rows += 1;
        self.done.insert(entry.id.to_owned());
        if self.pending.rows >= self.shard_rows {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes pending rows as a finished shard (temp file, fsync, rename).
    pub fn flush(&mut self) -> Result<()> {
        if self.pending.rows == 0 {
            return Ok(());
        }
        let mut p = std::mem::take(&mut self.pending);
        let columns: Vec<ArrayRef> = vec![
            Arc::new(p.ids.finish()),
            Arc::new(p.topk_ids.finish()),
            Arc::new(p.topk_logprobs.finish()),
            Arc::new(p.tail.finish()),
            Arc::new(p.gold.finish()),
        ];
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

/// `list<T>` column borrowed from the map: offsets + values.
struct ListColumn<T: arrow_buffer::ArrowNativeType> {
    offsets: OffsetBuffer<i32>,
    values: ScalarBuffer<T>,
}

impl<T: arrow_buffer::ArrowNativeType> ListColumn<T> {
    fn row(&self, row: usize) -> &[T] {
        let o = self.offsets.as_ref();
        &self.values[o[row] as usize..o[row + 1] as usize]
    }
}

struct CachePart {
    ids: StringArray,
    topk_ids: ListColumn<u32>,
    topk_logprobs: ListColumn<f32>,
    tail: ListColumn<f32>,
    gold: ListColumn<f32>,
}

/// Random access by example id over a cache folder (memory-mapped).
pub struct CacheReader {
    dir: PathBuf,
    meta: CacheMeta,
    parts: Vec<CachePart>,
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
        let mut index = Vec::new();
        for path in &shards {
            let ipc = MappedIpc::open(path)?;
            let found = read_meta(&ipc)?;
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
                let part = part_of(path, batch)?;
                let p = parts.len() as u32;
                for row in 0..batch.num_rows() {
                    index.push((crate::rng::hash_str(part.ids.value(row)), p, row as u32));
                }
                parts.push(part);
            }
        }
        index.sort_unstable();
        let reader = Self {
            dir: dir.to_owned(),
            meta: meta.expect("at least one shard"),
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
        self.parts[p as usize].ids.value(r as usize)
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

    pub fn get(&self, id: &str) -> Option<CacheEntry<'_>> {
        let h = crate::rng::hash_str(id);
        let start = self.index.partition_point(|e| e.0 < h);
        self.index[start..]
            .iter()
            .take_while(|e| e.0 == h)
            .find(|&&e| self.id_at(e) == id)
            .map(|&(_, p, r)| {
                let (part, r) = (&self.parts[p as usize], r as usize);
                CacheEntry {
                    id: part.ids.value(r),
                    topk_ids: part.topk_ids.row(r),
                    topk_logprobs: part.topk_logprobs.row(r),
                    tail_logmass: part.tail.row(r),
                    gold_logprob: part.gold.row(r),
                }
            })
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
            let e = self.get(id).ok_or_else(|| Error::Cache {
                path: self.dir.clone(),
                message: format!("no entry for example `{id}`"),
            })?;
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

fn part_of(path: &Path, batch: &RecordBatch) -> Result<CachePart> {
    let bad = |name: &str| Error::Schema {
        path: path.to_owned(),
        message: format!("missing or mistyped column `{name}`"),
    };
    let ids = batch
        .column_by_name("id")
        .and_then(|c| c.as_string_opt::<i32>().cloned())
        .ok_or_else(|| bad("id"))?;
    let u32_list = |name: &str| -> Result<ListColumn<u32>> {
        let list = batch
            .column_by_name(name)
            .and_then(|c| c.as_list_opt::<i32>())
            .ok_or_else(|| bad(name))?;
        let values = list
            .values()
            .as_primitive_opt::<UInt32Type>()
            .ok_or_else(|| bad(name))?;
        Ok(ListColumn {
            offsets: list.offsets().clone(),
            values: values.values().clone(),
        })
    };
    let f32_list = |name: &str| -> Result<ListColumn<f32>> {
        let list = batch
            .column_by_name(name)
            .and_then(|c| c.as_list_opt::<i32>())
            .ok_or_else(|| bad(name))?;
        let values = list
            .values()
            .as_primitive_opt::<Float32Type>()
            .ok_or_else(|| bad(name))?;
        Ok(ListColumn {
            offsets: list.offsets().clone(),
            values: values.values().clone(),
        })
    };
    Ok(CachePart {
        ids,
        topk_ids: u32_list("topk_ids")?,
        topk_logprobs: f32_list("topk_logprobs")?,
        tail: f32_list("tail_logmass")?,
        gold: f32_list("gold_logprob")?,
    })
}
