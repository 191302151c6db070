//! Compact teacher targets: one byte string per sequence, used on the wire
//! (`ScoredSequence.packed`) and in version-2 cache shards (the `packed` column).
//!
//! Each target position holds the top-k ids, their log-probs, the tail log-mass and the
//! gold token's log-prob. A packing chooses how ids and log-probs are written:
//!
//! - ids, `bits`: each id in `ceil(log2 vocab)` bits, in rank order (16 bits at a 49k
//!   vocabulary). `delta`: the row's ids as an ascending set, each gap Rice-coded with a
//!   parameter that follows the running mean of the gaps before it (BPE vocabularies put
//!   frequent tokens at low ids, so a row's gaps grow along it: about 10 bits an id at
//!   k = 64 on SmolLM2, against 11 for the best single parameter per row); a quotient of
//!   [`RICE_ESCAPE`] or more is sent as the raw gap instead. Log-probs are then stored in
//!   id order and a decoded row is sorted again by descending log-prob.
//!   `freq`: as `delta`, on each id's rank in an [`IdOrder`] (the ids by how often they
//!   appear in a calibration set's top-k rows) instead of the id itself. A cache's top-k
//!   sets concentrate on a few thousand tokens of its domain, so ranks are denser than ids
//!   (about 7 bits a rank at k = 64 on SmolLM2, against 10 an id). The order travels with
//!   the rows (a cache keeps it in its metadata), so `freq` is for caches, not the wire.
//! - log-probs, `q8` / `q6` / `q5` / `q4`: the row's top log-prob as f16, every other as a
//!   code of `b` bits on `r = (p / p_top)^(1/3)`, uniform on `[0, 1]` (`c = round((1 - r) M)`,
//!   `M = 2^b - 1`). The cube root spends codes where the mass is: the relative error of
//!   `p` is about `3 / (2 M r)`, small near the top and large only for tokens that carry
//!   little mass; `r` itself is off by at most `1 / (2 M)`. `e8` / `e6` / `e5` / `e4`: the
//!   same codes, entropy-coded: each position's `v = M - c` (small for the many tokens far
//!   below the top) Rice-coded with the cheapest parameter for that position, sent first in
//!   3 bits; a quotient of [`CODE_ESCAPE`] or more is sent as the raw `b`-bit code. Same
//!   error as `q<b>`, about 30 % fewer bits.
//! - tail log-mass and gold log-prob: f16 each (-inf kept for the tail, values below f16's
//!   range floored at -65504).
//!
//! Layout, little endian: an 8-byte header (packing number, id bits, k as u16, positions as
//! u32); per position `top, tail, gold` as f16; the id section, one bit stream ([`bits`])
//! over all positions (`bits`: k ids each; `delta`: k gaps each);
//! the code section from the next byte on (`bits`: k - 1 codes each, the top's code being
//! 0; `delta`, `freq`: k codes each, in id order; `e`: each position's 3-bit Rice
//! parameter first), ending on a byte boundary. Sections keep like
//! with like, so zstd over a row finds the skew of ids and codes. A row whose length or
//! contents disagree with its header is an error naming the field.

pub mod bits;
mod order;

pub use order::IdOrder;

use half::f16;
use serde::{Deserialize, Serialize};

use bits::{BitReader, BitWriter, id_bits};

/// Header bytes of a packed row.
pub const HEADER_BYTES: usize = 8;
/// f16 fields per position: top log-prob, tail log-mass, gold log-prob.
const F16_FIELDS: usize = 3;
/// A Rice quotient this large is sent as that many ones and the raw gap (bounds a row).
pub const RICE_ESCAPE: u64 = 8;
/// A Rice quotient of an `e` code this large is sent as that many ones and the raw code.
pub const CODE_ESCAPE: u64 = 6;
/// Bits of an `e` position's Rice parameter.
const CODE_PARAM_BITS: u32 = 3;
/// Largest id width a packed row can hold.
pub const MAX_ID_BITS: u32 = 31;
/// Exponent of the code domain `r = (p / p_top)^(1 / VALUE_ROOT)`.
const VALUE_ROOT: f32 = 3.0;
/// Largest k a packed row can hold (its header keeps k in 16 bits).
pub const MAX_K: usize = u16::MAX as usize;

/// How ids are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdCoding {
    /// `ceil(log2 vocab)` bits each, rank order.
    Bits,
    /// Ascending set, Rice-coded gaps.
    Delta,
    /// As `Delta`, on ranks in an [`IdOrder`].
    Freq,
}

/// A packing: id coding and log-prob code width. Its number is the proto's `Packing` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Packing {
    pub ids: IdCoding,
    /// 4, 5, 6 or 8.
    pub value_bits: u32,
    /// Codes entropy-coded (`e<b>`) rather than `b` bits each (`q<b>`).
    pub rice_codes: bool,
}

/// Every packing, in the order of their numbers (1..); new ones are appended.
pub const PACKINGS: [Packing; 16] = [
    Packing::new(IdCoding::Bits, 8),
    Packing::new(IdCoding::Bits, 4),
    Packing::new(IdCoding::Delta, 8),
    Packing::new(IdCoding::Delta, 4),
    Packing::new(IdCoding::Bits, 6),
    Packing::new(IdCoding::Delta, 6),
    Packing::new(IdCoding::Delta, 5),
    Packing::new(IdCoding::Delta, 8).rice(),
    Packing::new(IdCoding::Delta, 6).rice(),
    Packing::new(IdCoding::Delta, 5).rice(),
    Packing::new(IdCoding::Freq, 8),
    Packing::new(IdCoding::Freq, 6),
    Packing::new(IdCoding::Freq, 4),
    Packing::new(IdCoding::Freq, 8).rice(),
    Packing::new(IdCoding::Freq, 6).rice(),
    Packing::new(IdCoding::Freq, 5).rice(),
];

/// What went wrong, naming the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct PackError {
    pub field: String,
    pub message: String,
}

fn err<T>(field: impl Into<String>, message: impl Into<String>) -> Result<T, PackError> {
    Err(PackError {
        field: field.into(),
        message: message.into(),
    })
}

impl Packing {
    pub const fn new(ids: IdCoding, value_bits: u32) -> Self {
        Self {
            ids,
            value_bits,
            rice_codes: false,
        }
    }

    /// The same packing with entropy-coded codes.
    pub const fn rice(self) -> Self {
        Self {
            rice_codes: true,
            ..self
        }
    }

    /// Whether rows need an [`IdOrder`] to be packed and read (`freq`).
    pub fn needs_order(self) -> bool {
        self.ids == IdCoding::Freq
    }

    /// The proto's `Packing` number (0 is "not packed").
    pub fn code(self) -> u8 {
        PACKINGS
            .iter()
            .position(|&p| p == self)
            .map_or(0, |i| i as u8 + 1)
    }

    pub fn from_code(code: i32) -> Option<Self> {
        usize::try_from(code)
            .ok()
            .and_then(|c| c.checked_sub(1))
            .and_then(|i| PACKINGS.get(i).copied())
    }

    /// `bits-q8`, `delta-q4`, ...
    pub fn name(self) -> String {
        let ids = match self.ids {
            IdCoding::Bits => "bits",
            IdCoding::Delta => "delta",
            IdCoding::Freq => "freq",
        };
        let codes = if self.rice_codes { 'e' } else { 'q' };
        format!("{ids}-{codes}{}", self.value_bits)
    }

    pub fn from_name(name: &str) -> Result<Self, PackError> {
        PACKINGS
            .iter()
            .copied()
            .find(|p| p.name() == name)
            .map_or_else(
                || {
                    let known: Vec<String> = PACKINGS.iter().map(|p| p.name()).collect();
                    err(
                        "packing",
                        format!("unknown `{name}` (known: {})", known.join(", ")),
                    )
                },
                Ok,
            )
    }

    fn code_max(self) -> u32 {
        (1 << self.value_bits) - 1
    }

    /// Largest `|r' - r|` of a decoded log-prob, `r = exp((lp - top') / 3)` with `top'` the
    /// decoded top log-prob: half a code step.
    pub fn r_error_bound(self) -> f32 {
        0.5 / self.code_max() as f32
    }

    /// Most bytes a row of `positions` x `k` ids below `vocab` can take.
    pub fn max_bytes(self, positions: usize, k: usize, vocab: usize) -> usize {
        let w = id_bits(vocab) as usize;
        // An escaped code is the dearest: CODE_ESCAPE ones and b bits.
        let b = if self.rice_codes {
            CODE_ESCAPE as usize + self.value_bits as usize
        } else {
            self.value_bits as usize
        };
        let param = if self.rice_codes {
            CODE_PARAM_BITS as usize
        } else {
            0
        };
        let (id_bits, code_bits) = match self.ids {
            IdCoding::Bits => (k * w, k.saturating_sub(1) * b + param),
            // An escaped gap is the dearest: RICE_ESCAPE ones and w bits.
            IdCoding::Delta | IdCoding::Freq => (k * (RICE_ESCAPE as usize + w), k * b + param),
        };
        HEADER_BYTES
            + positions * 2 * F16_FIELDS
            + (positions * id_bits).div_ceil(8)
            + (positions * code_bits).div_ceil(8)
    }
}

/// One sequence's teacher targets, row-major `[positions, k]` / `[positions]`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Targets {
    pub k: usize,
    pub topk_ids: Vec<u32>,
    pub topk_logprobs: Vec<f32>,
    pub tail_logmass: Vec<f32>,
    pub gold_logprob: Vec<f32>,
}

/// Borrowed [`Targets`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TargetsRef<'a> {
    pub k: usize,
    pub topk_ids: &'a [u32],
    pub topk_logprobs: &'a [f32],
    pub tail_logmass: &'a [f32],
    pub gold_logprob: &'a [f32],
}

impl Targets {
    pub fn positions(&self) -> usize {
        self.tail_logmass.len()
    }

    pub fn as_ref(&self) -> TargetsRef<'_> {
        TargetsRef {
            k: self.k,
            topk_ids: &self.topk_ids,
            topk_logprobs: &self.topk_logprobs,
            tail_logmass: &self.tail_logmass,
            gold_logprob: &self.gold_logprob,
        }
    }
}

impl TargetsRef<'_> {
    pub fn positions(&self) -> usize {
        self.tail_logmass.len()
    }

    fn check(&self, vocab: usize) -> Result<(), PackError> {
        let (p, k) = (self.positions(), self.k);
        if k == 0 || k > MAX_K {
            return err("k", format!("{k} is outside 1..={MAX_K}"));
        }
        if vocab == 0 || id_bits(vocab) > MAX_ID_BITS {
            return err(
                "vocab_size",
                format!("{vocab} needs more than {MAX_ID_BITS} id bits"),
            );
        }
        for (name, len, want) in [
            ("topk_ids", self.topk_ids.len(), p * k),
            ("topk_logprobs", self.topk_logprobs.len(), p * k),
            ("gold_logprob", self.gold_logprob.len(), p),
        ] {
            if len != want {
                return err(
                    name,
                    format!("{len} values for {p} positions x k {k} (expected {want})"),
                );
            }
        }
        if u32::try_from(p).is_err() {
            return err("positions", format!("{p} is over {}", u32::MAX));
        }
        Ok(())
    }
}

/// f16 bits of a log-prob: NaN refused, values below f16's range floored at its lowest,
/// -inf kept only where `keep_neg_inf`.
fn f16_bits(v: f32, keep_neg_inf: bool, field: impl FnOnce() -> String) -> Result<u64, PackError> {
    if v.is_nan() {
        return err(field(), "is NaN");
    }
    let lowest = f16::MIN.to_f32();
    let v = if v == f32::NEG_INFINITY && keep_neg_inf {
        v
    } else {
        v.clamp(lowest, f16::MAX.to_f32())
    };
    Ok(f16::from_f32(v).to_bits() as u64)
}

fn from_f16_bits(bits: u64) -> f32 {
    f16::from_bits(bits as u16).to_f32()
}

/// The code of log-prob `lp` below the decoded top `top`.
fn value_code(lp: f32, top: f32, max: u32) -> u32 {
    let r = ((lp - top).min(0.0) / VALUE_ROOT).exp(); // in [0, 1]; 0 for -inf
    ((1.0 - r) * max as f32).round().clamp(0.0, max as f32) as u32
}

/// The log-prob a code stands for; the last code (`r` in `[0, 1/(2M)]`) reads as the middle
/// of its interval, so every decoded log-prob is finite.
fn code_value(code: u32, top: f32, max: u32) -> f32 {
    let r = if code == max {
        0.25 / max as f32
    } else {
        1.0 - code as f32 / max as f32
    };
    top + VALUE_ROOT * r.ln()
}

/// The Rice parameter of each gap of a row: `floor(log2(estimate))`, integer arithmetic
/// (in sixteenths) so both ends agree bit for bit. `delta`: the estimate is `0.69 * mean`
/// of an exponential running mean (weight 0.3) of the gaps before it, starting at
/// `vocab / k`. `freq`: the average of that (starting at 4) and `3/16` of the key the gap
/// starts from: ranks thin out about as `1 / rank` (Zipf), so a gap grows with the rank it
/// leaves, which the running mean alone follows late (6.8 bits a rank instead of 8.2 at
/// k = 64 on SmolLM2's rows).
struct AdaptiveRice {
    mean16: u64,
    max: u32,
    by_rank: bool,
}

impl AdaptiveRice {
    fn new(ids: IdCoding, vocab: usize, k: usize, w: u32) -> Self {
        let by_rank = ids == IdCoding::Freq;
        let start = if by_rank {
            4
        } else {
            (vocab / k).max(1) as u64
        };
        Self {
            mean16: start * 16,
            max: w,
            by_rank,
        }
    }

    /// The parameter of the gap from key `at` on.
    fn param(&self, at: u64) -> u32 {
        let from_mean16 = self.mean16 * 69 / 100;
        let est16 = if self.by_rank {
            ((at + 1).saturating_mul(3) + from_mean16) / 2
        } else {
            from_mean16
        };
        let m = est16 / 16;
        if m <= 1 {
            0
        } else {
            (63 - m.leading_zeros()).min(self.max)
        }
    }

    fn update(&mut self, gap: u64) {
        self.mean16 = (7 * self.mean16 + 48 * (gap + 1)) / 10;
    }
}

/// The order a `freq` packing needs, checked against the vocabulary; `None` for the others.
fn order_for(
    packing: Packing,
    vocab: usize,
    order: Option<&IdOrder>,
) -> Result<Option<&IdOrder>, PackError> {
    if !packing.needs_order() {
        return Ok(None);
    }
    match order {
        None => err(
            "id_order",
            format!(
                "{} rows need an id order, and none was given",
                packing.name()
            ),
        ),
        Some(o) if o.vocab() != vocab => err(
            "id_order",
            format!(
                "orders {} ids, but the vocabulary size is {vocab}",
                o.vocab()
            ),
        ),
        Some(o) => Ok(Some(o)),
    }
}

/// Writes one position's codes: `b` bits each, or (`e`) Rice-coded `M - c` after the
/// cheapest parameter.
fn put_codes(out: &mut BitWriter, codes: &[u32], packing: Packing) {
    let b = packing.value_bits;
    if !packing.rice_codes {
        codes.iter().for_each(|&c| out.put(c as u64, b));
        return;
    }
    let max = packing.code_max();
    let cost = |r: u32| -> u64 {
        codes
            .iter()
            .map(|&c| {
                let q = ((max - c) >> r) as u64;
                if q < CODE_ESCAPE {
                    q + 1 + r as u64
                } else {
                    CODE_ESCAPE + b as u64
                }
            })
            .sum()
    };
    let r = (0..b.min(1 << CODE_PARAM_BITS))
        .min_by_key(|&r| cost(r))
        .unwrap_or(0);
    out.put(r as u64, CODE_PARAM_BITS);
    for &c in codes {
        let v = max - c;
        let q = (v >> r) as u64;
        if q < CODE_ESCAPE {
            out.put_unary(q);
            out.put((v & ((1 << r) - 1)) as u64, r);
        } else {
            out.put((1 << CODE_ESCAPE) - 1, CODE_ESCAPE as u32);
            out.put(c as u64, b);
        }
    }
}

/// Reads `n` codes written by [`put_codes`]; `None` where the stream ends or a code is
/// out of range.
fn get_codes(
    input: &mut BitReader<'_>,
    n: usize,
    packing: Packing,
    out: &mut Vec<u32>,
) -> Option<()> {
    let (b, max) = (packing.value_bits, packing.code_max());
    out.clear();
    if !packing.rice_codes {
        for _ in 0..n {
            out.push(input.get(b)? as u32);
        }
        return Some(());
    }
    let r = input.get(CODE_PARAM_BITS)? as u32;
    if r >= b {
        return None;
    }
    for _ in 0..n {
        let q = input.get_ones(CODE_ESCAPE)?;
        let c = if q < CODE_ESCAPE {
            let v = (q << r | input.get(r)?) as u32;
            max.checked_sub(v)?
        } else {
            input.get(b)? as u32
        };
        out.push(c);
    }
    Some(())
}

/// Packs `t` (ids below `vocab`) with `packing`; `order` is the id order of a `freq`
/// packing (ignored by the others).
pub fn pack(
    t: &TargetsRef<'_>,
    packing: Packing,
    vocab: usize,
    order: Option<&IdOrder>,
) -> Result<Vec<u8>, PackError> {
    t.check(vocab)?;
    let order = order_for(packing, vocab, order)?;
    let (positions, k) = (t.positions(), t.k);
    let w = id_bits(vocab);
    let max = packing.code_max();
    let mut out = Vec::with_capacity(packing.max_bytes(positions, k, vocab));
    out.push(packing.code());
    out.push(w as u8);
    out.extend_from_slice(&(k as u16).to_le_bytes());
    out.extend_from_slice(&(positions as u32).to_le_bytes());
    let mut ids_out = BitWriter::with_capacity(positions * k * (w as usize + 1) / 8);
    let mut codes_out = BitWriter::with_capacity(positions * k * packing.value_bits as usize / 8);
    let mut sorted: Vec<usize> = Vec::with_capacity(k);
    let mut keys: Vec<u32> = Vec::with_capacity(k);
    let mut gaps: Vec<u32> = Vec::with_capacity(k);
    let mut codes: Vec<u32> = Vec::with_capacity(k);
    for p in 0..positions {
        let ids = &t.topk_ids[p * k..(p + 1) * k];
        let lps = &t.topk_logprobs[p * k..(p + 1) * k];
        if let Some(j) = ids.iter().position(|&id| id as usize >= vocab) {
            return err(
                format!("topk_ids[{p}][{j}]"),
                format!(
                    "{} is not below the vocabulary size {vocab} ({w} id bits)",
                    ids[j]
                ),
            );
        }
        if let Some(j) = lps.iter().position(|v| v.is_nan()) {
            return err(format!("topk_logprobs[{p}][{j}]"), "is NaN");
        }
        let top_raw = lps.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let top_bits = f16_bits(top_raw, false, || format!("topk_logprobs[{p}]"))?;
        let top = from_f16_bits(top_bits);
        out.extend_from_slice(&(top_bits as u16).to_le_bytes());
        let tail = f16_bits(t.tail_logmass[p], true, || format!("tail_logmass[{p}]"))?;
        out.extend_from_slice(&(tail as u16).to_le_bytes());
        let gold = f16_bits(t.gold_logprob[p], false, || format!("gold_logprob[{p}]"))?;
        out.extend_from_slice(&(gold as u16).to_le_bytes());
        match packing.ids {
            IdCoding::Bits => {
                // Rank 0 must be the top: rows arrive sorted by descending log-prob.
                if lps[0] != top_raw {
                    return err(
                        format!("topk_logprobs[{p}]"),
                        "is not sorted by descending log-prob",
                    );
                }
                ids.iter().for_each(|&id| ids_out.put(id as u64, w));
                codes.clear();
                codes.extend(lps[1..].iter().map(|&lp| value_code(lp, top, max)));
                put_codes(&mut codes_out, &codes, packing);
            }
            IdCoding::Delta | IdCoding::Freq => {
                // The coded keys: ids, or their ranks in the order.
                keys.clear();
                match order {
                    Some(o) => keys.extend(ids.iter().map(|&id| o.rank(id))),
                    None => keys.extend_from_slice(ids),
                }
                sorted.clear();
                sorted.extend(0..k);
                sorted.sort_unstable_by_key(|&j| keys[j]);
                gaps.clear();
                let mut next = 0u32; // smallest key the next one may take
                for &j in &sorted {
                    if keys[j] < next {
                        return err(
                            format!("topk_ids[{p}]"),
                            format!("holds id {} twice", ids[j]),
                        );
                    }
                    gaps.push(keys[j] - next);
                    next = keys[j] + 1;
                }
                let mut rice = AdaptiveRice::new(packing.ids, vocab, k, w);
                let mut at = 0u64;
                for &g in &gaps {
                    let r = rice.param(at);
                    at += g as u64 + 1;
                    let q = (g >> r) as u64;
                    if q < RICE_ESCAPE {
                        ids_out.put_unary(q);
                        ids_out.put((g & ((1u32 << r) - 1)) as u64, r);
                    } else {
                        ids_out.put((1 << RICE_ESCAPE) - 1, RICE_ESCAPE as u32);
                        ids_out.put(g as u64, w);
                    }
                    rice.update(g as u64);
                }
                codes.clear();
                codes.extend(sorted.iter().map(|&j| value_code(lps[j], top, max)));
                put_codes(&mut codes_out, &codes, packing);
            }
        }
    }
    out.extend_from_slice(&ids_out.finish());
    out.extend_from_slice(&codes_out.finish());
    Ok(out)
}

/// The header of a packed row: `(packing, id bits, k, positions)`.
pub fn header(bytes: &[u8]) -> Result<(Packing, u32, usize, usize), PackError> {
    if bytes.len() < HEADER_BYTES {
        return err(
            "packed",
            format!(
                "{} bytes, shorter than the {HEADER_BYTES}-byte header",
                bytes.len()
            ),
        );
    }
    let packing = Packing::from_code(bytes[0] as i32).ok_or_else(|| PackError {
        field: "packed".into(),
        message: format!(
            "unknown packing number {} (this build knows 1..={})",
            bytes[0],
            PACKINGS.len()
        ),
    })?;
    let k = u16::from_le_bytes([bytes[2], bytes[3]]) as usize;
    let positions = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
    Ok((packing, bytes[1] as u32, k, positions))
}

/// Unpacks a row made by [`pack`], checking it against what the receiver expects; `order`
/// as given to [`pack`].
pub fn unpack(
    bytes: &[u8],
    packing: Packing,
    vocab: usize,
    k: usize,
    order: Option<&IdOrder>,
) -> Result<Targets, PackError> {
    let order = order_for(packing, vocab, order)?;
    let (found, w, found_k, positions) = header(bytes)?;
    if found != packing {
        return err(
            "packed",
            format!(
                "row is packed as {}, expected {}",
                found.name(),
                packing.name()
            ),
        );
    }
    if w != id_bits(vocab) {
        return err(
            "packed",
            format!(
                "row's ids take {w} bits, but the vocabulary size {vocab} needs {}",
                id_bits(vocab)
            ),
        );
    }
    if found_k != k {
        return err("packed", format!("row has k {found_k}, expected {k}"));
    }
    let max = packing.code_max();
    let corrupt = |what: String| PackError {
        field: "packed".into(),
        message: format!("corrupt row: {what}"),
    };
    let longest = packing.max_bytes(positions, k, vocab);
    if bytes.len() > longest {
        return Err(corrupt(format!(
            "{} bytes, more than {longest} for {positions} positions x k {k}",
            bytes.len()
        )));
    }
    let f16_end = HEADER_BYTES + positions * 2 * F16_FIELDS;
    if bytes.len() < f16_end {
        return Err(corrupt(format!(
            "{} bytes, its {positions} positions' f16 fields alone take {f16_end}",
            bytes.len()
        )));
    }
    let f16_at = |p: usize, field: usize| {
        let o = HEADER_BYTES + (p * F16_FIELDS + field) * 2;
        from_f16_bits(u16::from_le_bytes([bytes[o], bytes[o + 1]]) as u64)
    };
    let mut out = Targets {
        k,
        topk_ids: Vec::with_capacity(positions * k),
        topk_logprobs: Vec::with_capacity(positions * k),
        tail_logmass: (0..positions).map(|p| f16_at(p, 1)).collect(),
        gold_logprob: (0..positions).map(|p| f16_at(p, 2)).collect(),
    };
    // The id section, all positions; then the code section on the next byte.
    let mut ids_in = BitReader::new(&bytes[f16_end..]);
    let short =
        |what: &str, p: usize| corrupt(format!("{what} end inside position {p} of {positions}"));
    for p in 0..positions {
        match packing.ids {
            IdCoding::Bits => {
                for _ in 0..k {
                    let id = ids_in.get(w).ok_or_else(|| short("ids", p))?;
                    out.topk_ids.push(id as u32);
                }
            }
            IdCoding::Delta | IdCoding::Freq => {
                let mut rice = AdaptiveRice::new(packing.ids, vocab, k, w);
                let mut next = 0u64;
                for _ in 0..k {
                    let r = rice.param(next);
                    let q = ids_in
                        .get_ones(RICE_ESCAPE)
                        .ok_or_else(|| short("ids", p))?;
                    let gap = if q < RICE_ESCAPE {
                        q << r | ids_in.get(r).ok_or_else(|| short("ids", p))?
                    } else {
                        ids_in.get(w).ok_or_else(|| short("ids", p))?
                    };
                    rice.update(gap);
                    let key = next + gap;
                    if key >= vocab as u64 {
                        return Err(corrupt(format!(
                            "id {key} at position {p} is not below the vocabulary size {vocab}"
                        )));
                    }
                    out.topk_ids
                        .push(order.map_or(key as u32, |o| o.id(key as u32)));
                    next = key + 1;
                }
            }
        }
    }
    let codes_start = f16_end + ids_in.position().div_ceil(8);
    let mut codes_in = BitReader::new(&bytes[codes_start.min(bytes.len())..]);
    let mut row: Vec<(u32, f32)> = Vec::with_capacity(k);
    let mut codes: Vec<u32> = Vec::with_capacity(k);
    for p in 0..positions {
        let top = f16_at(p, 0);
        if !top.is_finite() {
            return Err(corrupt(format!("top log-prob {top} at position {p}")));
        }
        row.clear();
        row.extend(out.topk_ids[p * k..(p + 1) * k].iter().map(|&id| (id, top)));
        let coded = match packing.ids {
            IdCoding::Bits => &mut row[1..],
            IdCoding::Delta | IdCoding::Freq => &mut row[..],
        };
        get_codes(&mut codes_in, coded.len(), packing, &mut codes).ok_or_else(|| {
            corrupt(format!(
                "codes end or leave their range inside position {p} of {positions}"
            ))
        })?;
        for (entry, &c) in coded.iter_mut().zip(&codes) {
            entry.1 = code_value(c, top, max);
        }
        if packing.ids != IdCoding::Bits {
            // Back to rank order: descending log-prob, ties by id.
            row.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            for (slot, e) in out.topk_ids[p * k..(p + 1) * k].iter_mut().zip(&row) {
                *slot = e.0;
            }
        }
        if let Some(&(id, _)) = row.iter().find(|e| e.0 as usize >= vocab) {
            return Err(corrupt(format!(
                "id {id} at position {p} is not below the vocabulary size {vocab}"
            )));
        }
        out.topk_logprobs.extend(row.iter().map(|e| e.1));
    }
    let used = codes_start + codes_in.position().div_ceil(8);
    if used != bytes.len() {
        return Err(corrupt(format!(
            "{} bytes, its {positions} positions take {used}",
            bytes.len()
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
