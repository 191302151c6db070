//! What a cache holds, for `edkd data inspect CACHE_DIR`: its metadata, layout, sizes
//! (bytes per target position as stored and on disk) and the top of a few examples.

use std::fmt::Write;

use arrow_array::Array;

use super::{CacheReader, Layout};
use crate::error::{Error, Result};

/// Top-k entries shown per example.
const TOP_SHOWN: usize = 5;

/// Sizes of a cache.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CacheStats {
    pub examples: usize,
    pub shards: usize,
    /// Target positions over all examples.
    pub positions: usize,
    /// Bytes of the teacher arrays as stored (packed rows, or the v1 lists' values).
    pub stored_bytes: usize,
    /// Bytes of the shard files (Arrow framing and ids included).
    pub file_bytes: u64,
}

impl CacheStats {
    pub fn stored_per_position(&self) -> f64 {
        self.stored_bytes as f64 / self.positions.max(1) as f64
    }

    pub fn file_per_position(&self) -> f64 {
        self.file_bytes as f64 / self.positions.max(1) as f64
    }
}

impl CacheReader {
    /// Sizes, from the columns (nothing is decoded) and the files.
    pub fn stats(&self) -> Result<CacheStats> {
        let mut s = CacheStats {
            examples: self.len(),
            shards: self.shards.len(),
            positions: 0,
            stored_bytes: 0,
            file_bytes: 0,
        };
        for part in &self.parts {
            for r in 0..part.ids().len() {
                s.positions += part.positions(r);
                s.stored_bytes += part.stored_bytes(r);
            }
        }
        for path in &self.shards {
            s.file_bytes += std::fs::metadata(path).map_err(Error::io(path))?.len();
        }
        Ok(s)
    }

    /// Decodes every row; the first that fails is the error.
    pub fn verify(&self) -> Result<usize> {
        let mut rows = 0;
        for (p, part) in self.parts.iter().enumerate() {
            for r in 0..part.ids().len() {
                self.row_at(p, r)?;
                rows += 1;
            }
        }
        Ok(rows)
    }

    /// A one-screen description: metadata, layout, sizes and the first position of the
    /// first `examples` examples (top entries as probabilities, the tail mass).
    pub fn describe(&self, examples: usize) -> Result<String> {
        let m = &self.meta;
        let st = self.stats()?;
        let mut s = String::new();
        let _ = writeln!(s, "teacher cache {}", self.dir.display());
        let _ = writeln!(
            s,
            "format version {}  teacher {}  view {}  k {}  temperature {}",
            m.format_version, m.teacher_model, m.teacher_prompt, m.k, m.temperature
        );
        let _ = writeln!(s, "tokenizer sha256 {}", m.tokenizer_sha256);
        let layout = match &self.layout {
            Layout::V1 => "u32 ids, f32 log-probs, tail and gold (lists)".to_owned(),
            Layout::V2 {
                packing,
                vocab,
                zstd_level,
                order,
            } => format!(
                "packed {} (vocabulary {vocab}, {} id bits{}), {}",
                packing.name(),
                crate::packing::bits::id_bits(*vocab),
                order.as_ref().map_or(String::new(), |o| format!(
                    ", id order of {} calibration ids",
                    o.leading().len()
                )),
                zstd_level.map_or("no zstd".into(), |l| format!("zstd level {l}"))
            ),
        };
        let _ = writeln!(s, "rows: {layout}");
        let _ = writeln!(
            s,
            "{} examples in {} shards, {} target positions; {:.1} B per position stored, {:.1} B on disk ({} bytes)",
            st.examples,
            st.shards,
            st.positions,
            st.stored_per_position(),
            st.file_per_position(),
            st.file_bytes
        );
        let mut shown = 0;
        'parts: for (p, part) in self.parts.iter().enumerate() {
            for r in 0..part.ids().len() {
                if shown >= examples {
                    break 'parts;
                }
                let row = self.row_at(p, r)?;
                let e = row.entry();
                let k = m.k.min(TOP_SHOWN);
                let top: Vec<String> = (0..k)
                    .map(|j| format!("{}:{:.4}", e.topk_ids[j], e.topk_logprobs[j].exp()))
                    .collect();
                let _ = writeln!(
                    s,
                    "  `{}`: {} positions; position 0 top {} [{}], tail mass {:.4}, gold p {:.4}",
                    e.id,
                    e.positions(),
                    k,
                    top.join(" "),
                    e.tail_logmass.first().map_or(0.0, |t| t.exp()),
                    e.gold_logprob.first().map_or(0.0, |g| g.exp()),
                );
                shown += 1;
            }
        }
        Ok(s)
    }
}
