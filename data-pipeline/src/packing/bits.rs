//! Little-endian bit streams: values of up to 32 bits written back to back, the first bit
//! of a value in the lowest free bit of the current byte.

/// Appends values of a given width.
#[derive(Debug, Default)]
pub struct BitWriter {
    bytes: Vec<u8>,
    acc: u64,
    filled: u32,
}

impl BitWriter {
    pub fn with_capacity(bytes: usize) -> Self {
        Self {
            bytes: Vec::with_capacity(bytes),
            ..Self::default()
        }
    }

    /// Writes the low `bits` bits of `value` (`bits` <= 32).
    pub fn put(&mut self, value: u64, bits: u32) {
        debug_assert!(bits <= 32 && (bits == 64 || value >> bits == 0));
        self.acc |= value << self.filled;
        self.filled += bits;
        while self.filled >= 8 {
            self.bytes.push(self.acc as u8);
            self.acc >>= 8;
            self.filled -= 8;
        }
    }

    /// `q` one-bits then a zero (the quotient of a Rice code).
    pub fn put_unary(&mut self, mut q: u64) {
        while q >= 32 {
            self.put(u32::MAX as u64, 32);
            q -= 32;
        }
        self.put((1u64 << q) - 1, q as u32 + 1);
    }

    /// The bytes, the last one padded with zero bits.
    pub fn finish(mut self) -> Vec<u8> {
        if self.filled > 0 {
            self.bytes.push(self.acc as u8);
        }
        self.bytes
    }
}

/// Reads what a [`BitWriter`] wrote; `None` past the end.
#[derive(Debug)]
pub struct BitReader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> BitReader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    /// The next `bits` bits (`bits` <= 32) as a number.
    pub fn get(&mut self, bits: u32) -> Option<u64> {
        let end = self.pos + bits as usize;
        if end > self.bytes.len() * 8 {
            return None;
        }
        let (byte, shift) = (self.pos / 8, self.pos % 8);
        let mut window = 0u64;
        for (i, &b) in self.bytes[byte..].iter().take(5).enumerate() {
            window |= (b as u64) << (8 * i);
        }
        self.pos = end;
        Some((window >> shift) & ((1u64 << bits) - 1))
    }

    /// Ones up to a zero (consumed) or up to `limit` ones (then no zero is read); `None`
    /// past the end.
    pub fn get_ones(&mut self, limit: u64) -> Option<u64> {
        let mut q = 0;
        while q < limit && self.get(1)? == 1 {
            q += 1;
        }
        Some(q)
    }

    /// Bits read so far.
    pub fn position(&self) -> usize {
        self.pos
    }
}

/// Bits needed to write any id below `vocab` (at least 1).
pub fn id_bits(vocab: usize) -> u32 {
    (usize::BITS - vocab.saturating_sub(1).leading_zeros()).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_of_mixed_widths_round_trip() {
        let items: Vec<(u64, u32)> = (0..200u64)
            .map(|i| {
                let bits = (i % 32 + 1) as u32;
                (i.wrapping_mul(0x9E37_79B9) & ((1u64 << bits) - 1), bits)
            })
            .collect();
        let mut w = BitWriter::default();
        for &(v, b) in &items {
            w.put(v, b);
        }
        w.put_unary(0);
        w.put_unary(70);
        let total: u32 = items.iter().map(|&(_, b)| b).sum::<u32>() + 1 + 71;
        let bytes = w.finish();
        assert_eq!(bytes.len(), total.div_ceil(8) as usize);
        let mut r = BitReader::new(&bytes);
        for &(v, b) in &items {
            assert_eq!(r.get(b), Some(v));
        }
        assert_eq!(r.get_ones(100), Some(0));
        assert_eq!(r.get_ones(69), Some(69), "stops at the limit");
        assert_eq!(r.get_ones(100), Some(1), "then reads on");
    }

    #[test]
    fn reading_past_the_end_is_none() {
        let mut r = BitReader::new(&[0xff]);
        assert_eq!(r.get(8), Some(255));
        assert_eq!(r.get(1), None);
        assert_eq!(BitReader::new(&[0xff]).get_ones(100), None);
    }

    #[test]
    fn id_bits_cover_the_vocabulary() {
        assert_eq!(id_bits(1), 1);
        assert_eq!(id_bits(2), 1);
        assert_eq!(id_bits(256), 8);
        assert_eq!(id_bits(257), 9);
        assert_eq!(id_bits(49152), 16);
        assert_eq!(id_bits(65536), 16);
        assert_eq!(id_bits(65537), 17);
        assert_eq!(id_bits(151_936), 18);
    }
}
