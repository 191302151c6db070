//! A tiny built-in bitmap font: uppercase A-Z, 5x7 pixels a glyph, drawn at an integer
//! scale. No system fonts, so rendered words are the same on every machine.

use image::{Rgb, RgbImage};

/// Glyph width and height in font pixels.
pub const GLYPH_WIDTH: u32 = 5;
pub const GLYPH_HEIGHT: u32 = 7;
/// Font pixels between two glyphs.
pub const GLYPH_SPACING: u32 = 1;

/// Rows of each letter, top to bottom; `#` is ink.
const GLYPHS: [[&str; 7]; 26] = [
    [
        ".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#",
    ], // A
    [
        "####.", "#...#", "#...#", "####.", "#...#", "#...#", "####.",
    ], // B
    [
        ".###.", "#...#", "#....", "#....", "#....", "#...#", ".###.",
    ], // C
    [
        "####.", "#...#", "#...#", "#...#", "#...#", "#...#", "####.",
    ], // D
    [
        "#####", "#....", "#....", "####.", "#....", "#....", "#####",
    ], // E
    [
        "#####", "#....", "#....", "####.", "#....", "#....", "#....",
    ], // F
    [
        ".###.", "#...#", "#....", "#.###", "#...#", "#...#", ".###.",
    ], // G
    [
        "#...#", "#...#", "#...#", "#####", "#...#", "#...#", "#...#",
    ], // H
    [
        ".###.", "..#..", "..#..", "..#..", "..#..", "..#..", ".###.",
    ], // I
    [
        "..###", "...#.", "...#.", "...#.", "...#.", "#..#.", ".##..",
    ], // J
    [
        "#...#", "#..#.", "#.#..", "##...", "#.#..", "#..#.", "#...#",
    ], // K
    [
        "#....", "#....", "#....", "#....", "#....", "#....", "#####",
    ], // L
    [
        "#...#", "##.##", "#.#.#", "#.#.#", "#...#", "#...#", "#...#",
    ], // M
    [
        "#...#", "#...#", "##..#", "#.#.#", "#..##", "#...#", "#...#",
    ], // N
    [
        ".###.", "#...#", "#...#", "#...#", "#...#", "#...#", ".###.",
    ], // O
    [
        "####.", "#...#", "#...#", "####.", "#....", "#....", "#....",
    ], // P
    [
        ".###.", "#...#", "#...#", "#...#", "#.#.#", "#..#.", ".##.#",
    ], // Q
    [
        "####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#",
    ], // R
    [
        ".####", "#....", "#....", ".###.", "....#", "....#", "####.",
    ], // S
    [
        "#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#..",
    ], // T
    [
        "#...#", "#...#", "#...#", "#...#", "#...#", "#...#", ".###.",
    ], // U
    [
        "#...#", "#...#", "#...#", "#...#", "#...#", ".#.#.", "..#..",
    ], // V
    [
        "#...#", "#...#", "#...#", "#.#.#", "#.#.#", "#.#.#", ".#.#.",
    ], // W
    [
        "#...#", "#...#", ".#.#.", "..#..", ".#.#.", "#...#", "#...#",
    ], // X
    [
        "#...#", "#...#", ".#.#.", "..#..", "..#..", "..#..", "..#..",
    ], // Y
    [
        "#####", "....#", "...#.", "..#..", ".#...", "#....", "#####",
    ], // Z
];

/// The glyph of an uppercase ASCII letter as 7 rows of 5 bits (bit 4 = leftmost pixel).
///
/// # Panics
/// On anything but `A`-`Z` (the generator draws only its own word list).
pub fn glyph(letter: char) -> [u8; 7] {
    assert!(letter.is_ascii_uppercase(), "no glyph for {letter:?}");
    let rows = GLYPHS[(letter as u8 - b'A') as usize];
    rows.map(|row| {
        row.bytes()
            .fold(0u8, |bits, c| (bits << 1) | u8::from(c == b'#'))
    })
}

/// Width in pixels of `text` drawn at `scale`.
pub fn text_width(text: &str, scale: u32) -> u32 {
    let n = text.chars().count() as u32;
    (n * GLYPH_WIDTH + n.saturating_sub(1) * GLYPH_SPACING) * scale
}

/// Draws `text` with its top-left corner at `(x, y)`, each font pixel a `scale` x `scale`
/// block of `colour`; pixels past the image's edge are skipped.
pub fn draw_text(
    image: &mut RgbImage,
    text: &str,
    (x, y): (u32, u32),
    scale: u32,
    colour: [u8; 3],
) {
    let advance = (GLYPH_WIDTH + GLYPH_SPACING) * scale;
    for (i, letter) in text.chars().enumerate() {
        let left = x + i as u32 * advance;
        for (row, bits) in glyph(letter).iter().enumerate() {
            for col in 0..GLYPH_WIDTH {
                if bits >> (GLYPH_WIDTH - 1 - col) & 1 == 0 {
                    continue;
                }
                for dy in 0..scale {
                    for dx in 0..scale {
                        let (px, py) = (left + col * scale + dx, y + row as u32 * scale + dy);
                        if px < image.width() && py < image.height() {
                            image.put_pixel(px, py, Rgb(colour));
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glyphs_are_distinct_and_well_formed() {
        for (i, rows) in GLYPHS.iter().enumerate() {
            assert!(rows.iter().all(|r| r.len() == GLYPH_WIDTH as usize), "{i}");
        }
        let all: Vec<[u8; 7]> = ('A'..='Z').map(glyph).collect();
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(glyph('T')[0], 0b11111);
        assert_eq!(glyph('T')[6], 0b00100);
    }

    #[test]
    fn scaled_text_covers_the_glyph_blocks() {
        let mut img = RgbImage::from_pixel(30, 20, Rgb([255; 3]));
        draw_text(&mut img, "IT", (1, 2), 2, [0, 0, 0]);
        assert_eq!(text_width("IT", 2), 22);
        let ink = |x, y| img.get_pixel(x, y).0 == [0, 0, 0];
        // I's top bar is font columns 1..4 -> pixels 3..9 on rows 2..4.
        assert!((3..9).all(|x| ink(x, 2) && ink(x, 3)));
        assert!(!ink(1, 2) && !ink(9, 2));
        // T starts after 5 + 1 font pixels: its top bar spans pixels 13..23.
        assert!((13..23).all(|x| ink(x, 2)));
        assert!(!ink(12, 2) && !ink(23, 2));
    }
}
