//! The two on-disk layouts of a cache shard: version 1 (one list column per array, f32
//! log-probs, u32 ids) and version 2 (one packed binary per example, optionally zstd).

use std::path::Path;
use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, Float32Builder, ListBuilder, StringBuilder, UInt32Builder,
};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, UInt32Type};
use arrow_array::{ArrayRef, ArrowPrimitiveType, BinaryArray, RecordBatch, StringArray};
use arrow_buffer::{OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, Field};

use super::{CacheEntry, Layout};
use crate::error::{Error, Result};
use crate::packing::{self, Targets, TargetsRef};

/// Fields of a shard in `layout`.
pub(super) fn fields(layout: &Layout) -> Vec<Field> {
    let list = |t: DataType| DataType::List(Arc::new(Field::new("item", t, true)));
    match layout {
        Layout::V1 => vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("topk_ids", list(DataType::UInt32), false),
            Field::new("topk_logprobs", list(DataType::Float32), false),
            Field::new("tail_logmass", list(DataType::Float32), false),
            Field::new("gold_logprob", list(DataType::Float32), false),
        ],
        Layout::V2 { .. } => vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("positions", DataType::UInt32, false),
            Field::new("packed", DataType::Binary, false),
        ],
    }
}

/// Rows waiting to become a shard.
// One per writer, never in a collection: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub(super) enum Pending {
    V1 {
        ids: StringBuilder,
        topk_ids: ListBuilder<UInt32Builder>,
        topk_logprobs: ListBuilder<Float32Builder>,
        tail: ListBuilder<Float32Builder>,
        gold: ListBuilder<Float32Builder>,
    },
    V2 {
        ids: StringBuilder,
        positions: UInt32Builder,
        packed: BinaryBuilder,
    },
}

impl Pending {
    pub(super) fn new(layout: &Layout) -> Self {
        match layout {
            Layout::V1 => Pending::V1 {
                ids: StringBuilder::new(),
                topk_ids: ListBuilder::new(UInt32Builder::new()),
                topk_logprobs: ListBuilder::new(Float32Builder::new()),
                tail: ListBuilder::new(Float32Builder::new()),
                gold: ListBuilder::new(Float32Builder::new()),
            },
            Layout::V2 { .. } => Pending::V2 {
                ids: StringBuilder::new(),
                positions: UInt32Builder::new(),
                packed: BinaryBuilder::new(),
            },
        }
    }

    /// Appends one example; a packing error names the example.
    pub(super) fn push(
        &mut self,
        e: &CacheEntry<'_>,
        layout: &Layout,
        k: usize,
        dir: &Path,
    ) -> Result<()> {
        let bad = |message: String| Error::Cache {
            path: dir.to_owned(),
            message: format!("example `{}`: {message}", e.id),
        };
        match (self, layout) {
            (
                Pending::V1 {
                    ids,
                    topk_ids,
                    topk_logprobs,
                    tail,
                    gold,
                },
                _,
            ) => {
                ids.append_value(e.id);
                topk_ids.values().append_slice(e.topk_ids);
                topk_ids.append(true);
                topk_logprobs.values().append_slice(e.topk_logprobs);
                topk_logprobs.append(true);
                tail.values().append_slice(e.tail_logmass);
                tail.append(true);
                gold.values().append_slice(e.gold_logprob);
                gold.append(true);
            }
            (
                Pending::V2 {
                    ids,
                    positions,
                    packed,
                },
                &Layout::V2 {
                    packing,
                    vocab,
                    zstd_level,
                    ref order,
                },
            ) => {
                let row = packing::pack(&e.targets(k), packing, vocab, order.as_deref())
                    .map_err(|err| bad(err.to_string()))?;
                let row = match zstd_level {
                    Some(level) => zstd::bulk::compress(&row, level)
                        .map_err(|err| bad(format!("zstd: {err}")))?,
                    None => row,
                };
                ids.append_value(e.id);
                positions.append_value(e.positions() as u32);
                packed.append_value(&row);
            }
            (Pending::V2 { .. }, Layout::V1) => unreachable!("pending rows follow the layout"),
        }
        Ok(())
    }

    pub(super) fn finish(&mut self) -> Vec<ArrayRef> {
        match self {
            Pending::V1 {
                ids,
                topk_ids,
                topk_logprobs,
                tail,
                gold,
            } => vec![
                Arc::new(ids.finish()),
                Arc::new(topk_ids.finish()),
                Arc::new(topk_logprobs.finish()),
                Arc::new(tail.finish()),
                Arc::new(gold.finish()),
            ],
            Pending::V2 {
                ids,
                positions,
                packed,
            } => vec![
                Arc::new(ids.finish()),
                Arc::new(positions.finish()),
                Arc::new(packed.finish()),
            ],
        }
    }
}

/// `list<T>` column borrowed from the map: offsets + values.
pub(super) struct ListColumn<T: arrow_buffer::ArrowNativeType> {
    offsets: OffsetBuffer<i32>,
    values: ScalarBuffer<T>,
}

impl<T: arrow_buffer::ArrowNativeType> ListColumn<T> {
    fn row(&self, row: usize) -> &[T] {
        let o = self.offsets.as_ref();
        &self.values[o[row] as usize..o[row + 1] as usize]
    }
}

/// One record batch of a shard, its columns borrowed from the map.
pub(super) enum Part {
    V1 {
        ids: StringArray,
        topk_ids: ListColumn<u32>,
        topk_logprobs: ListColumn<f32>,
        tail: ListColumn<f32>,
        gold: ListColumn<f32>,
    },
    V2 {
        ids: StringArray,
        positions: ScalarBuffer<u32>,
        packed: BinaryArray,
    },
}

/// A looked-up example: borrowed from the map (version 1) or decoded (version 2).
#[derive(Debug, Clone, PartialEq)]
pub enum CacheRow<'a> {
    Borrowed(CacheEntry<'a>),
    Decoded { id: &'a str, targets: Targets },
}

impl CacheRow<'_> {
    /// The example's arrays, wherever they live.
    pub fn entry(&self) -> CacheEntry<'_> {
        match self {
            CacheRow::Borrowed(e) => *e,
            CacheRow::Decoded { id, targets } => CacheEntry {
                id,
                topk_ids: &targets.topk_ids,
                topk_logprobs: &targets.topk_logprobs,
                tail_logmass: &targets.tail_logmass,
                gold_logprob: &targets.gold_logprob,
            },
        }
    }
}

impl Part {
    pub(super) fn ids(&self) -> &StringArray {
        match self {
            Part::V1 { ids, .. } | Part::V2 { ids, .. } => ids,
        }
    }

    /// Target positions of row `r`, without decoding it.
    pub(super) fn positions(&self, r: usize) -> usize {
        match self {
            Part::V1 { tail, .. } => tail.row(r).len(),
            Part::V2 { positions, .. } => positions[r] as usize,
        }
    }

    /// Stored bytes of row `r`'s teacher arrays (ids and values, no Arrow offsets).
    pub(super) fn stored_bytes(&self, r: usize) -> usize {
        match self {
            Part::V1 {
                topk_ids,
                topk_logprobs,
                tail,
                gold,
                ..
            } => {
                4 * (topk_ids.row(r).len()
                    + topk_logprobs.row(r).len()
                    + tail.row(r).len()
                    + gold.row(r).len())
            }
            Part::V2 { packed, .. } => packed.value(r).len(),
        }
    }

    /// Row `r`, decoded if packed; errors name the shard and the example.
    pub(super) fn row(
        &self,
        r: usize,
        layout: &Layout,
        k: usize,
        path: &Path,
    ) -> Result<CacheRow<'_>> {
        match (self, layout) {
            (
                Part::V1 {
                    ids,
                    topk_ids,
                    topk_logprobs,
                    tail,
                    gold,
                },
                _,
            ) => Ok(CacheRow::Borrowed(CacheEntry {
                id: ids.value(r),
                topk_ids: topk_ids.row(r),
                topk_logprobs: topk_logprobs.row(r),
                tail_logmass: tail.row(r),
                gold_logprob: gold.row(r),
            })),
            (
                Part::V2 {
                    ids,
                    positions,
                    packed,
                },
                &Layout::V2 {
                    packing,
                    vocab,
                    zstd_level,
                    ref order,
                },
            ) => {
                let id = ids.value(r);
                let bad = |message: String| Error::Cache {
                    path: path.to_owned(),
                    message: format!("example `{id}`: {message}"),
                };
                let p = positions[r] as usize;
                let bytes = packed.value(r);
                let raw;
                let row = if zstd_level.is_some() {
                    raw = zstd::bulk::decompress(bytes, packing.max_bytes(p, k, vocab))
                        .map_err(|e| bad(format!("packed: zstd: {e}")))?;
                    &raw[..]
                } else {
                    bytes
                };
                let targets = packing::unpack(row, packing, vocab, k, order.as_deref())
                    .map_err(|e| bad(e.to_string()))?;
                if targets.positions() != p {
                    return Err(bad(format!(
                        "packed row has {} positions, the `positions` column says {p}",
                        targets.positions()
                    )));
                }
                Ok(CacheRow::Decoded { id, targets })
            }
            (Part::V2 { .. }, Layout::V1) => unreachable!("parts follow the layout"),
        }
    }
}

impl<'a> CacheEntry<'a> {
    /// The arrays as packing input.
    pub fn targets(&self, k: usize) -> TargetsRef<'a> {
        TargetsRef {
            k,
            topk_ids: self.topk_ids,
            topk_logprobs: self.topk_logprobs,
            tail_logmass: self.tail_logmass,
            gold_logprob: self.gold_logprob,
        }
    }
}

/// Reads one record batch of a shard in `layout`.
pub(super) fn part_of(path: &Path, batch: &RecordBatch, layout: &Layout) -> Result<Part> {
    let bad = |name: &str| Error::Schema {
        path: path.to_owned(),
        message: format!("missing or mistyped column `{name}`"),
    };
    let ids = batch
        .column_by_name("id")
        .and_then(|c| c.as_string_opt::<i32>().cloned())
        .ok_or_else(|| bad("id"))?;
    if let Layout::V2 { .. } = layout {
        let positions = batch
            .column_by_name("positions")
            .and_then(|c| c.as_primitive_opt::<UInt32Type>())
            .ok_or_else(|| bad("positions"))?
            .values()
            .clone();
        let packed = batch
            .column_by_name("packed")
            .and_then(|c| c.as_binary_opt::<i32>().cloned())
            .ok_or_else(|| bad("packed"))?;
        return Ok(Part::V2 {
            ids,
            positions,
            packed,
        });
    }
    Ok(Part::V1 {
        ids,
        topk_ids: list_column::<UInt32Type>(batch, "topk_ids", &bad)?,
        topk_logprobs: list_column::<Float32Type>(batch, "topk_logprobs", &bad)?,
        tail: list_column::<Float32Type>(batch, "tail_logmass", &bad)?,
        gold: list_column::<Float32Type>(batch, "gold_logprob", &bad)?,
    })
}

/// The list<T> column `name` of `batch` (offsets and values), or `bad(name)`.
fn list_column<T: ArrowPrimitiveType>(
    batch: &RecordBatch,
    name: &str,
    bad: &dyn Fn(&str) -> Error,
) -> Result<ListColumn<T::Native>> {
    let list = batch
        .column_by_name(name)
        .and_then(|c| c.as_list_opt::<i32>())
        .ok_or_else(|| bad(name))?;
    let values = list
        .values()
        .as_primitive_opt::<T>()
        .ok_or_else(|| bad(name))?;
    Ok(ListColumn {
        offsets: list.offsets().clone(),
        values: values.values().clone(),
    })
}
