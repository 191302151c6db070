//! Packed little-endian arrays on the wire: token ids as u32, values as f32, f16 or bf16;
//! or, when the request asks for a `packing`, one packed row per sequence
//! ([`edkd_data::packing`]: narrow ids, quantised log-probs).

use bytes::{BufMut, Bytes, BytesMut};
use edkd_data::packing::{self, Packing, TargetsRef};
use edkd_proto::teacher::v1::{ScoreResponse, ScoredSequence, ValueFormat};
use half::{bf16, f16};

use crate::error::{Error, Result};

/// Bytes per value in `format` (UNSPECIFIED means f32).
pub fn value_bytes(format: ValueFormat) -> usize {
    match format {
        ValueFormat::F16 | ValueFormat::Bf16 => 2,
        ValueFormat::F32 | ValueFormat::Unspecified => 4,
    }
}

/// `UNSPECIFIED` resolves to f32.
pub fn resolve(format: ValueFormat) -> ValueFormat {
    match format {
        ValueFormat::Unspecified => ValueFormat::F32,
        f => f,
    }
}

pub fn encode_ids(ids: &[u32]) -> Bytes {
    let mut out = BytesMut::with_capacity(ids.len() * 4);
    for &id in ids {
        out.put_u32_le(id);
    }
    out.freeze()
}

pub fn encode_values(values: &[f32], format: ValueFormat) -> Bytes {
    let mut out = BytesMut::with_capacity(values.len() * value_bytes(format));
    match resolve(format) {
        ValueFormat::F16 => values
            .iter()
            .for_each(|&v| out.put_u16_le(f16::from_f32(v).to_bits())),
        ValueFormat::Bf16 => values
            .iter()
            .for_each(|&v| out.put_u16_le(bf16::from_f32(v).to_bits())),
        _ => values.iter().for_each(|&v| out.put_f32_le(v)),
    }
    out.freeze()
}

/// Smallest finite value of `format`.
pub fn lowest(format: ValueFormat) -> f32 {
    match resolve(format) {
        ValueFormat::F16 => f16::MIN.to_f32(),
        ValueFormat::Bf16 => bf16::MIN.to_f32(),
        _ => f32::MIN,
    }
}

/// Log-probs, packed: values below what `format` holds (and -inf) become its lowest finite
/// value, so a receiver never reads a non-finite log-prob. Inputs must not be NaN.
pub fn encode_logprobs(values: &[f32], format: ValueFormat) -> Bytes {
    let floor = lowest(format);
    if values.iter().all(|&v| v >= floor) {
        return encode_values(values, format);
    }
    let clamped: Vec<f32> = values.iter().map(|&v| v.max(floor)).collect();
    encode_values(&clamped, format)
}

/// Tail log-masses, packed: like [`encode_logprobs`], except that -inf (no mass outside
/// the top k) stays -inf.
pub fn encode_tail(values: &[f32], format: ValueFormat) -> Bytes {
    let floor = lowest(format);
    let keep = |v: f32| v == f32::NEG_INFINITY || v >= floor;
    if values.iter().all(|&v| keep(v)) {
        return encode_values(values, format);
    }
    let clamped: Vec<f32> = values
        .iter()
        .map(|&v| if keep(v) { v } else { floor })
        .collect();
    encode_values(&clamped, format)
}

pub fn decode_ids(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

pub fn decode_values(bytes: &[u8], format: ValueFormat) -> Vec<f32> {
    match resolve(format) {
        ValueFormat::F16 => bytes
            .chunks_exact(2)
            .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect(),
        ValueFormat::Bf16 => bytes
            .chunks_exact(2)
            .map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect(),
        _ => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    }
}

/// One sequence's teacher scores, unpacked. Arrays are row-major `[positions, k]` or
/// `[positions]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    pub id: String,
    pub positions: usize,
    pub k: usize,
    pub topk_ids: Vec<u32>,
    pub topk_logprobs: Vec<f32>,
    pub tail_logmass: Vec<f32>,
    pub gold_logprob: Vec<f32>,
}

/// Packings the wire carries: all but `freq`, whose rows need an id order the messages do
/// not hold.
pub fn wire_packings() -> impl Iterator<Item = Packing> {
    packing::PACKINGS.into_iter().filter(|p| !p.needs_order())
}

/// The packing a request asks for (`None`: the separate arrays). A number this build does
/// not know (a newer client), or a cache-only packing, is INVALID_ARGUMENT naming `packing`.
pub fn requested_packing(code: i32) -> Result<Option<Packing>> {
    if code == 0 {
        return Ok(None);
    }
    match Packing::from_code(code) {
        Some(p) if !p.needs_order() => Ok(Some(p)),
        found => {
            let known: Vec<String> = wire_packings()
                .map(|p| format!("{} {}", p.code(), p.name()))
                .collect();
            let what = match found {
                Some(p) => format!(
                    "{code} ({}) needs an id order and is for caches only",
                    p.name()
                ),
                None => format!("unknown value {code}"),
            };
            Err(Error::invalid(
                "packing",
                format!(
                    "{what} (this server sends 0 unpacked, {})",
                    known.join(", ")
                ),
            ))
        }
    }
}

/// One packed sequence: `SeqScores`-shaped arrays as a [`ScoredSequence`] with `packed` set.
pub fn encode_packed(
    id: String,
    t: &TargetsRef<'_>,
    packing: Packing,
    vocab: usize,
) -> Result<ScoredSequence> {
    let packed = packing::pack(t, packing, vocab, None)
        .map_err(|e| Error::Model(format!("packing sequence `{id}`: {e}")))?;
    Ok(ScoredSequence {
        id,
        num_positions: t.positions() as u32,
        packed: packed.into(),
        ..Default::default()
    })
}

impl Scores {
    /// Packs into the wire message.
    pub fn encode(&self, format: ValueFormat) -> ScoredSequence {
        ScoredSequence {
            id: self.id.clone(),
            num_positions: self.positions as u32,
            topk_ids: encode_ids(&self.topk_ids),
            topk_logprobs: encode_logprobs(&self.topk_logprobs, format),
            tail_logmass: encode_tail(&self.tail_logmass, format),
            gold_logprob: encode_logprobs(&self.gold_logprob, format),
            packed: Bytes::new(),
        }
    }

    /// Packs into the wire message as one packed row.
    pub fn encode_packed(&self, packing: Packing, vocab: usize) -> Result<ScoredSequence> {
        let t = TargetsRef {
            k: self.k,
            topk_ids: &self.topk_ids,
            topk_logprobs: &self.topk_logprobs,
            tail_logmass: &self.tail_logmass,
            gold_logprob: &self.gold_logprob,
        };
        encode_packed(self.id.clone(), &t, packing, vocab)
    }

    /// Unpacks a packed wire message, checking it against `positions`, `k` and `vocab`.
    pub fn decode_packed(
        seq: &ScoredSequence,
        k: usize,
        packing: Packing,
        vocab: usize,
    ) -> Result<Self> {
        let t = packing::unpack(&seq.packed, packing, vocab, k, None)
            .map_err(|e| Error::Wire(format!("sequence `{}`: {e}", seq.id)))?;
        if t.positions() != seq.num_positions as usize {
            return Err(Error::Wire(format!(
                "sequence `{}`: packed row has {} positions, num_positions says {}",
                seq.id,
                t.positions(),
                seq.num_positions
            )));
        }
        Ok(Self {
            id: seq.id.clone(),
            positions: t.positions(),
            k,
            topk_ids: t.topk_ids,
            topk_logprobs: t.topk_logprobs,
            tail_logmass: t.tail_logmass,
            gold_logprob: t.gold_logprob,
        })
    }

    /// Unpacks a wire message, checking every array's length against `positions` and `k`.
    pub fn decode(seq: &ScoredSequence, k: usize, format: ValueFormat) -> Result<Self> {
        let p = seq.num_positions as usize;
        let vb = value_bytes(format);
        let check = |name: &str, got: usize, want: usize| {
            if got == want {
                Ok(())
            } else {
                Err(Error::Wire(format!(
                    "sequence `{}`: {name} has {got} bytes, expected {want} ({p} positions, k {k})",
                    seq.id
                )))
            }
        };
        check("topk_ids", seq.topk_ids.len(), p * k * 4)?;
        check("topk_logprobs", seq.topk_logprobs.len(), p * k * vb)?;
        check("tail_logmass", seq.tail_logmass.len(), p * vb)?;
        check("gold_logprob", seq.gold_logprob.len(), p * vb)?;
        Ok(Self {
            id: seq.id.clone(),
            positions: p,
            k,
            topk_ids: decode_ids(&seq.topk_ids),
            topk_logprobs: decode_values(&seq.topk_logprobs, format),
            tail_logmass: decode_values(&seq.tail_logmass, format),
            gold_logprob: decode_values(&seq.gold_logprob, format),
        })
    }
}

/// Unpacks every sequence of a response, packed or not (as the response says: a server
/// that predates packing answers a packed request with the separate arrays).
pub fn decode_response(response: &ScoreResponse) -> Result<Vec<Scores>> {
    let k = response.top_k as usize;
    if response.packing != 0 {
        let packing = Packing::from_code(response.packing).ok_or_else(|| {
            Error::Wire(format!(
                "response packing {} is unknown to this client",
                response.packing
            ))
        })?;
        let vocab = response.vocab_size as usize;
        return response
            .sequences
            .iter()
            .map(|s| Scores::decode_packed(s, k, packing, vocab))
            .collect();
    }
    let format = response.value_format();
    response
        .sequences
        .iter()
        .map(|s| Scores::decode(s, k, format))
        .collect()
}

/// Largest encoded size of sequences of `positions` each at `k`, packed with `packing` for
/// `vocab`, protobuf framing excluded.
pub fn packed_payload_bytes(
    positions: impl IntoIterator<Item = usize>,
    k: usize,
    packing: Packing,
    vocab: usize,
) -> usize {
    positions
        .into_iter()
        .map(|p| packing.max_bytes(p, k, vocab))
        .sum()
}

/// Encoded size of `positions` scored positions at `k` in `format`, protobuf framing excluded.
pub fn payload_bytes(positions: usize, k: usize, format: ValueFormat) -> usize {
    positions * (k * (4 + value_bytes(format)) + 2 * value_bytes(format))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_within_format_precision() {
        let v = [0.0f32, -1.5, -0.3333, -20.0, f32::NEG_INFINITY];
        for (format, tol) in [
            (ValueFormat::F32, 0.0),
            (ValueFormat::F16, 1e-3),
            (ValueFormat::Bf16, 1e-2),
        ] {
            let bytes = encode_values(&v, format);
            assert_eq!(bytes.len(), v.len() * value_bytes(format));
            let back = decode_values(&bytes, format);
            for (a, b) in v.iter().zip(&back) {
                if a.is_infinite() {
                    assert_eq!(a, b);
                } else {
                    assert!(
                        (a - b).abs() <= tol * a.abs().max(1.0),
                        "{format:?} {a} {b}"
                    );
                }
            }
        }
        assert_eq!(decode_ids(&encode_ids(&[0, 7, u32::MAX])), [0, 7, u32::MAX]);
    }

    #[test]
    fn log_probs_stay_finite_in_every_format() {
        let v = [f32::NEG_INFINITY, -1e6, -70_000.0, -3.5];
        for format in [ValueFormat::F32, ValueFormat::F16, ValueFormat::Bf16] {
            let back = decode_values(&encode_logprobs(&v, format), format);
            assert!(back.iter().all(|x| x.is_finite()), "{format:?}: {back:?}");
            assert_eq!(back[0], lowest(format), "{format:?}");
            let tail = decode_values(&encode_tail(&v, format), format);
            assert_eq!(tail[0], f32::NEG_INFINITY, "{format:?}: -inf tail kept");
            assert!(
                tail[1..].iter().all(|x| x.is_finite()),
                "{format:?}: {tail:?}"
            );
        }
        assert_eq!(lowest(ValueFormat::F16), -65504.0);
    }

    #[test]
    fn decode_rejects_short_arrays() {
        let s = Scores {
            id: "a".into(),
            positions: 2,
            k: 3,
            topk_ids: vec![1; 6],
            topk_logprobs: vec![-1.0; 6],
            tail_logmass: vec![-2.0; 2],
            gold_logprob: vec![-1.0; 2],
        };
        let mut wire = s.encode(ValueFormat::F16);
        assert_eq!(
            Scores::decode(&wire, 3, ValueFormat::F16).unwrap().topk_ids,
            s.topk_ids
        );
        wire.topk_ids = wire.topk_ids.slice(..20);
        let err = Scores::decode(&wire, 3, ValueFormat::F16).unwrap_err();
        assert!(
            err.to_string()
                .contains("topk_ids has 20 bytes, expected 24"),
            "{err}"
        );
    }
}
