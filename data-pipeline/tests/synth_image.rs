//! The synthetic image tasks answer what the pixels show: each PNG is decoded and read
//! back independently of the generator (shapes as connected regions of one palette colour,
//! classified by how much of their bounding box they fill; words by matching ink blocks
//! against the font), and every question is answered again from that reading.

use edkd_data::images::{RgbImage, decode_rgb8};
use edkd_data::synth::Split;
use edkd_data::synth_image::font::{GLYPH_HEIGHT, GLYPH_SPACING, GLYPH_WIDTH, glyph};
use edkd_data::synth_image::scene::{GRID, INK, PALETTE};
use edkd_data::synth_image::{IMAGE_MIX, ImageSynthConfig, generate_images};

/// A shape as read from pixels.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Seen {
    row: u32,
    col: u32,
    colour: &'static str,
    kind: &'static str,
}

/// Connected (4-neighbour) regions of each palette colour, with kind and grid cell.
fn shapes_in(img: &RgbImage) -> Vec<Seen> {
    let (w, h) = img.dimensions();
    let cell = w / GRID;
    let mut done = vec![false; (w * h) as usize];
    let mut seen = Vec::new();
    for start in 0..w * h {
        let (x0, y0) = (start % w, start / w);
        let Some(&(colour, rgb)) = PALETTE.iter().find(|p| img.get_pixel(x0, y0).0 == p.1) else {
            continue;
        };
        if done[start as usize] {
            continue;
        }
        let (mut stack, mut pixels) = (vec![(x0, y0)], Vec::new());
        done[start as usize] = true;
        while let Some((x, y)) = stack.pop() {
            pixels.push((x, y));
            let next = [
                (x.wrapping_sub(1), y),
                (x + 1, y),
                (x, y.wrapping_sub(1)),
                (x, y + 1),
            ];
            for (nx, ny) in next {
                if nx < w
                    && ny < h
                    && !done[(ny * w + nx) as usize]
                    && img.get_pixel(nx, ny).0 == rgb
                {
                    done[(ny * w + nx) as usize] = true;
                    stack.push((nx, ny));
                }
            }
        }
        let (xs, ys): (Vec<u32>, Vec<u32>) = pixels.iter().copied().unzip();
        let (left, right) = (*xs.iter().min().unwrap(), *xs.iter().max().unwrap());
        let (top, bottom) = (*ys.iter().min().unwrap(), *ys.iter().max().unwrap());
        let fill = pixels.len() as f64 / ((right - left + 1) * (bottom - top + 1)) as f64;
        let kind = match fill {
            f if f > 0.95 => "square",
            f if f > 0.68 => "circle",
            _ => "triangle",
        };
        seen.push(Seen {
            row: (top + bottom) / 2 / cell,
            col: (left + right) / 2 / cell,
            colour,
            kind,
        });
    }
    seen.sort();
    seen
}

/// The word written in ink, read by matching each glyph's blocks against the font.
fn word_in(img: &RgbImage) -> Option<String> {
    let ink: Vec<(u32, u32)> = img
        .enumerate_pixels()
        .filter(|(_, _, p)| p.0 == INK)
        .map(|(x, y, _)| (x, y))
        .collect();
    let left = ink.iter().map(|p| p.0).min()?;
    let top = ink.iter().map(|p| p.1).min()?;
    let bottom = ink.iter().map(|p| p.1).max()?;
    // Every glyph has ink in its top and bottom rows, so the ink is 7 blocks tall.
    let scale = (bottom - top + 1) / GLYPH_HEIGHT;
    let right = ink.iter().map(|p| p.0).max()?;
    let letters =
        (right - left + 1 + GLYPH_SPACING * scale) / ((GLYPH_WIDTH + GLYPH_SPACING) * scale);
    let mut word = String::new();
    for i in 0..letters {
        let x0 = left + i * (GLYPH_WIDTH + GLYPH_SPACING) * scale;
        let mut rows = [0u8; 7];
        for (r, bits) in rows.iter_mut().enumerate() {
            for c in 0..GLYPH_WIDTH {
                let (x, y) = (
                    x0 + c * scale + scale / 2,
                    top + r as u32 * scale + scale / 2,
                );
                *bits = (*bits << 1) | u8::from(img.get_pixel(x, y).0 == INK);
            }
        }
        word.push(('A'..='Z').find(|&l| glyph(l) == rows)?);
    }
    Some(word)
}

/// The answer to `question` from what the pixels show.
fn answer(question: &str, shapes: &[Seen], word: Option<String>) -> String {
    fn only<'a>(question: &str, found: Vec<&'a Seen>) -> &'a Seen {
        assert_eq!(found.len(), 1, "{question}: {found:?}");
        found[0]
    }
    let only = |found| only(question, found);
    let named = |colour: &str, kind: &str| {
        only(
            shapes
                .iter()
                .filter(|s| s.colour == colour && s.kind == kind)
                .collect(),
        )
    };
    let words: Vec<&str> = question.trim_end_matches('?').split(' ').collect();
    match words.as_slice() {
        ["How", "many", colour, "shapes"] => shapes
            .iter()
            .filter(|s| s.colour == *colour)
            .count()
            .to_string(),
        ["What", "colour", "is", "the", kind] => {
            only(shapes.iter().filter(|s| s.kind == *kind).collect())
                .colour
                .to_owned()
        }
        ["What", "shape", "is", "left", "of", "the", colour, kind] => {
            let a = named(colour, kind);
            only(
                shapes
                    .iter()
                    .filter(|s| s.row == a.row && s.col < a.col)
                    .collect(),
            )
            .kind
            .to_owned()
        }
        ["What", "shape", "is", "above", "the", colour, kind] => {
            let a = named(colour, kind);
            only(
                shapes
                    .iter()
                    .filter(|s| s.col == a.col && s.row < a.row)
                    .collect(),
            )
            .kind
            .to_owned()
        }
        ["What", "word", "is", "written"] => word.expect("a word in the image"),
        _ => panic!("unexpected question {question:?}"),
    }
}

#[test]
fn answers_match_what_the_pixels_show() {
    for size in [64, 56, 112] {
        let cfg = ImageSynthConfig {
            size,
            ..ImageSynthConfig::new(IMAGE_MIX, Split::Validation, 2, 150)
        };
        for e in generate_images(&cfg).unwrap() {
            let img = decode_rgb8(&e.png, &e.id).unwrap();
            assert_eq!(img.dimensions(), (size, size));
            assert_eq!(
                img,
                e.scene.render(),
                "{}: PNG differs from the scene",
                e.id
            );
            let shapes = shapes_in(&img);
            let mut described: Vec<Seen> = e
                .scene
                .shapes
                .iter()
                .map(|s| Seen {
                    row: s.row,
                    col: s.col,
                    colour: s.colour_name(),
                    kind: s.kind.name(),
                })
                .collect();
            described.sort();
            assert_eq!(shapes, described, "{}: pixels and scene disagree", e.id);
            let question = e.input.split("Question: ").nth(1).unwrap();
            let word = word_in(&img);
            assert_eq!(
                word.as_deref(),
                e.scene.word.as_ref().map(|w| w.text.as_str()),
                "{}",
                e.id
            );
            assert_eq!(
                answer(question, &shapes, word),
                e.answer,
                "{}: {question}",
                e.id
            );
        }
    }
}

#[test]
fn the_same_seed_gives_the_same_bytes_and_another_seed_other_images() {
    let cfg = ImageSynthConfig::new(IMAGE_MIX, Split::Train, 9, 25);
    let (a, b) = (
        generate_images(&cfg).unwrap(),
        generate_images(&cfg).unwrap(),
    );
    assert!(
        a.iter()
            .zip(&b)
            .all(|(x, y)| x.png == y.png && x.input == y.input && x.id == y.id)
    );
    let other = generate_images(&ImageSynthConfig { seed: 10, ..cfg }).unwrap();
    let same = a.iter().zip(&other).filter(|(x, y)| x.png == y.png).count();
    assert_eq!(same, 0);
}
