//! ggml tensor types and their dequantization to f32.
//!
//! Each block format follows ggml's `block_*` structs (little-endian, f16 scales); the
//! arithmetic is done in the same order as ggml and gguf-py (`d * q + m`, no fused
//! multiply-add), so results are bit-identical to `gguf.quants.dequantize`
//! (tests/gguf_quants.rs checks every type on random blocks).

use rayon::prelude::*;

/// Elements per K-quant super-block (`QK_K`).
const QK_K: usize = 256;
/// Blocks dequantized per parallel work item.
const BLOCKS_PER_TASK: usize = 1024;

/// A ggml tensor type id (`enum ggml_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GgmlType(pub u32);

/// id, name, elements per block, bytes per block (ggml's type traits).
const LAYOUTS: [(u32, &str, u64, u64); 34] = [
    (0, "F32", 1, 4),
    (1, "F16", 1, 2),
    (2, "Q4_0", 32, 18),
    (3, "Q4_1", 32, 20),
    (6, "Q5_0", 32, 22),
    (7, "Q5_1", 32, 24),
    (8, "Q8_0", 32, 34),
    (9, "Q8_1", 32, 40),
    (10, "Q2_K", 256, 84),
    (11, "Q3_K", 256, 110),
    (12, "Q4_K", 256, 144),
    (13, "Q5_K", 256, 176),
    (14, "Q6_K", 256, 210),
    (15, "Q8_K", 256, 292),
    (16, "IQ2_XXS", 256, 66),
    (17, "IQ2_XS", 256, 74),
    (18, "IQ3_XXS", 256, 98),
    (19, "IQ1_S", 256, 50),
    (20, "IQ4_NL", 32, 18),
    (21, "IQ3_S", 256, 110),
    (22, "IQ2_S", 256, 82),
    (23, "IQ4_XS", 256, 136),
    (24, "I8", 1, 1),
    (25, "I16", 1, 2),
    (26, "I32", 1, 4),
    (27, "I64", 1, 8),
    (28, "F64", 1, 8),
    (29, "IQ1_M", 256, 56),
    (30, "BF16", 1, 2),
    (34, "TQ1_0", 256, 54),
    (35, "TQ2_0", 256, 66),
    (39, "MXFP4", 32, 17),
    (40, "NVFP4", 64, 36),
    (41, "Q1_0", 128, 18),
];

impl GgmlType {
    pub const F32: Self = Self(0);
    pub const F16: Self = Self(1);
    pub const Q4_0: Self = Self(2);
    pub const Q4_1: Self = Self(3);
    pub const Q5_0: Self = Self(6);
    pub const Q5_1: Self = Self(7);
    pub const Q8_0: Self = Self(8);
    pub const Q2_K: Self = Self(10);
    pub const Q3_K: Self = Self(11);
    pub const Q4_K: Self = Self(12);
    pub const Q5_K: Self = Self(13);
    pub const Q6_K: Self = Self(14);
    pub const BF16: Self = Self(30);

    /// The types [`dequantize`] reads.
    pub const SUPPORTED: [Self; 13] = [
        Self::F32,
        Self::F16,
        Self::BF16,
        Self::Q8_0,
        Self::Q4_0,
        Self::Q4_1,
        Self::Q5_0,
        Self::Q5_1,
        Self::Q2_K,
        Self::Q3_K,
        Self::Q4_K,
        Self::Q5_K,
        Self::Q6_K,
    ];

    /// ggml's name for the type (`Q4_K`), or `type N` for ids this build does not know.
    pub fn name(self) -> String {
        LAYOUTS
            .iter()
            .find(|l| l.0 == self.0)
            .map_or_else(|| format!("type {}", self.0), |l| l.1.to_string())
    }

    /// (elements per block, bytes per block), for every type ggml defines.
    pub fn layout(self) -> Option<(u64, u64)> {
        LAYOUTS.iter().find(|l| l.0 == self.0).map(|l| (l.2, l.3))
    }

    /// Bytes that `n` elements take; `None` if the type is unknown or `n` is not whole blocks.
    pub fn byte_size(self, n: u64) -> Option<u64> {
        let (elems, bytes) = self.layout()?;
        n.is_multiple_of(elems).then(|| n / elems * bytes)
    }

    pub fn is_supported(self) -> bool {
        Self::SUPPORTED.contains(&self)
    }

    pub fn supported_names() -> String {
        Self::SUPPORTED
            .iter()
            .map(|t| t.name())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

/// Fixed-size views of one block, so the decoders below index without bounds checks.
#[inline]
fn block<'a, const B: usize, const N: usize>(
    b: &'a [u8],
    y: &'a mut [f32],
) -> (&'a [u8; B], &'a mut [f32; N]) {
    (
        b.try_into().expect("callers pass whole blocks"),
        y.try_into().expect("callers pass whole blocks"),
    )
}

#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// One block's decoder: `block` bytes in, `out` (block elements) written.
type BlockFn = fn(&[u8], &mut [f32]);

fn block_fn(ty: GgmlType) -> Option<BlockFn> {
    Some(match ty {
        GgmlType::F32 => |b, y| y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        GgmlType::F16 => |b, y| y[0] = f16_at(b, 0),
        GgmlType::BF16 => {
            |b, y| y[0] = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16)
        }
        GgmlType::Q4_0 => q4_0,
        GgmlType::Q4_1 => q4_1,
        GgmlType::Q5_0 => q5_0,
        GgmlType::Q5_1 => q5_1,
        GgmlType::Q8_0 => q8_0,
        GgmlType::Q2_K => q2_k,
        GgmlType::Q3_K => q3_k,
        GgmlType::Q4_K => q4_k,
        GgmlType::Q5_K => q5_k,
        GgmlType::Q6_K => q6_k,
        _ => return None,
    })
}

/// Dequantizes `bytes` (whole blocks of `ty`) into `out`; `None` for an unsupported type or
/// lengths that disagree (callers check both first and name the tensor).
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Option<()> {
    let f = block_fn(ty)?;
    let (elems, size) = ty.layout()?;
    let (elems, size) = (elems as usize, size as usize);
    if !out.len().is_multiple_of(elems) || bytes.len() != out.len() / elems * size {
        return None;
    }
    out.par_chunks_mut(elems * BLOCKS_PER_TASK)
        .zip(bytes.par_chunks(size * BLOCKS_PER_TASK))
        .for_each(|(y, b)| {
            for (yb, bb) in y.chunks_exact_mut(elems).zip(b.chunks_exact(size)) {
                f(bb, yb);
            }
        });
    Some(())
}

fn q4_0(b: &[u8], y: &mut [f32]) {
    let (b, y) = block::<18, 32>(b, y);
    let d = f16_at(b, 0);
    let qs = &b[2..18];
    for j in 0..16 {
        y[j] = d * ((qs[j] & 0x0F) as i32 - 8) as f32;
        y[j + 16] = d * ((qs[j] >> 4) as i32 - 8) as f32;
    }
}

fn q4_1(b: &[u8], y: &mut [f32]) {
    let (b, y) = block::<20, 32>(b, y);
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qs = &b[4..20];
    for j in 0..16 {
        y[j] = d * (qs[j] & 0x0F) as f32 + m;
        y[j + 16] = d * (qs[j] >> 4) as f32 + m;
    }
}

/// The 5-bit values of a Q5 block: low nibbles from `qs`, fifth bits from `qh`.
fn q5_values(qh: u32, qs: &[u8]) -> [u8; 32] {
    let mut q = [0u8; 32];
    for j in 0..16 {
        let h0 = ((qh >> j) & 1) as u8;
        let h1 = ((qh >> (j + 16)) & 1) as u8;
        q[j] = (qs[j] & 0x0F) | (h0 << 4);
        q[j + 16] = (qs[j] >> 4) | (h1 << 4);
    }
    q
}

fn q5_0(b: &[u8], y: &mut [f32]) {
    let (b, y) = block::<22, 32>(b, y);
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for (yj, q) in y.iter_mut().zip(q5_values(qh, &b[6..22])) {
        *yj = d * (q as i32 - 16) as f32;
    }
}

fn q5_1(b: &[u8], y: &mut [f32]) {
    let (b, y) = block::<24, 32>(b, y);
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    for (yj, q) in y.iter_mut().zip(q5_values(qh, &b[8..24])) {
        *yj = d * q as f32 + m;
    }
}

fn q8_0(b: &[u8], y: &mut [f32]) {
    let (b, y) = block::<34, 32>(b, y);
    let d = f16_at(b, 0);
    for (yj, &q) in y.iter_mut().zip(&b[2..34]) {
        *yj = (q as i8) as f32 * d;
    }
}

/// 2-bit values at flat position `h*128 + s*32 + l` from byte `qs[h*32 + l] >> 2s`.
fn crumbs(qs: &[u8]) -> [u8; QK_K] {
    let mut q = [0u8; QK_K];
    for h in 0..2 {
        for s in 0..4 {
            for l in 0..32 {
                q[h * 128 + s * 32 + l] = (qs[h * 32 + l] >> (2 * s)) & 3;
            }
        }
    }
    q
}

fn q2_k(b: &[u8], y: &mut [f32]) {
    let (b, y) = block::<84, 256>(b, y);
    let (scales, qs) = (&b[0..16], &b[16..80]);
    let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
    let q = crumbs(qs);
    for (p, yp) in y.iter_mut().enumerate() {
        let sc = scales[p / 16];
        let dl = d * (sc & 0x0F) as f32;
        let ml = dmin * (sc >> 4) as f32;
        *yp = dl * q[p] as f32 - ml;
    }
}

fn q3_k(b: &[u8], y: &mut [f32]) {
    let (b, y) = block::<110, 256>(b, y);
    let (hmask, qs, sc) = (&b[0..32], &b[32..96], &b[96..108]);
    let d = f16_at(b, 108);
    let mut dl = [0f32; 16];
    for (k, dk) in dl.iter_mut().enumerate() {
        let low = (sc[k % 8] >> (4 * (k / 8))) & 0x0F;
        let high = (sc[8 + k % 4] >> (2 * (k / 4))) & 0x03;
        *dk = d * ((low | (high << 4)) as i32 - 32) as f32;
    }
    let low = crumbs(qs);
    for (p, yp) in y.iter_mut().enumerate() {
        let hbit = (hmask[p % 32] >> (p / 32)) & 1;
        // The high bit set means no offset; clear means -4.
        let q = low[p] as i32 - (((hbit ^ 1) as i32) << 2);
        *yp = dl[p / 16] * q as f32;
    }
}

/// The eight 6-bit (scale, min) pairs of a Q4_K/Q5_K block.
fn scale_min_k4(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let (mut sc, mut mn) = ([0u8; 8], [0u8; 8]);
    for i in 0..4 {
        sc[i] = s[i] & 0x3F;
        mn[i] = s[i + 4] & 0x3F;
        sc[i + 4] = (s[i + 8] & 0x0F) | ((s[i] >> 2) & 0x30);
        mn[i + 4] = (s[i + 8] >> 4) | ((s[i + 4] >> 2) & 0x30);
    }
    (sc, mn)
}

/// Q4_K and Q5_K: `qh`, when given, supplies the fifth bit of sub-block `j` from bit `j`.
fn k_quant_4_5(b: &[u8], qs: &[u8], qh: Option<&[u8]>, y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (sc, mn) = scale_min_k4(&b[4..16]);
    for j in 0..8 {
        let dj = d * sc[j] as f32;
        let mj = dmin * mn[j] as f32;
        let (c, nib) = (j / 2, j % 2);
        for l in 0..32 {
            let mut q = (qs[c * 32 + l] >> (4 * nib)) & 0x0F;
            if let Some(qh) = qh {
                q |= ((qh[l] >> j) & 1) << 4;
            }
            y[j * 32 + l] = dj * q as f32 - mj;
        }
    }
}

fn q4_k(b: &[u8], y: &mut [f32]) {
    let (b, y) = block::<144, 256>(b, y);
    k_quant_4_5(b, &b[16..144], None, y);
}

fn q5_k(b: &[u8], y: &mut [f32]) {
    let (b, y) = block::<176, 256>(b, y);
    k_quant_4_5(b, &b[48..176], Some(&b[16..48]), y);
}

fn q6_k(b: &[u8], y: &mut [f32]) {
    let (b, y) = block::<210, 256>(b, y);
    let (ql, qh, scales) = (&b[0..128], &b[128..192], &b[192..208]);
    let d = f16_at(b, 208);
    for h in 0..2 {
        for i in 0..64 {
            for nib in 0..2 {
                let p = h * 128 + nib * 64 + i;
                let low = (ql[h * 64 + i] >> (4 * nib)) & 0x0F;
                let (s, l) = ((p % 128) / 32, p % 32);
                let high = (qh[h * 32 + l] >> (2 * s)) & 0x03;
                let q = (low | (high << 4)) as i32 - 32;
                let dk = d * (scales[p / 16] as i8) as f32;
                y[p] = dk * q as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_the_block_layout() {
        assert_eq!(GgmlType::Q4_K.byte_size(512), Some(288));
        assert_eq!(GgmlType::Q4_K.byte_size(100), None);
        assert_eq!(GgmlType(9999).byte_size(32), None);
        assert_eq!(GgmlType(16).name(), "IQ2_XXS");
        assert!(!GgmlType(16).is_supported());
    }

    #[test]
    fn q8_0_scales_signed_bytes() {
        let mut b = vec![0u8; 34];
        b[0..2].copy_from_slice(&half::f16::from_f32(0.5).to_bits().to_le_bytes());
        b[2] = 4;
        b[3] = 0xFE; // -2
        let mut y = [0f32; 32];
        dequantize(GgmlType::Q8_0, &b, &mut y).unwrap();
        assert_eq!(&y[..3], &[2.0, -1.0, 0.0]);
    }
}
