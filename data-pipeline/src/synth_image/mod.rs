//! Synthetic image-to-text tasks: rendered scenes of coloured shapes and short words
//! ([`scene`], drawn with the built-in bitmap [`font`]), a question about the scene, and a
//! one-word answer. The input is `"<image>\nQuestion: ..."`
//! ([`crate::images::IMAGE_PLACEHOLDER`]), the image a PNG.
//!
//! Tasks (question types):
//! - `image-count`: "How many red shapes?" -> "2" (2-6 shapes, any colour may be asked).
//! - `image-colour`: "What colour is the circle?" -> "blue" (the only circle of the scene).
//! - `image-left`: "What shape is left of the green square?" -> "triangle" (the only shape
//!   to its left in its grid row; "the green square" is the only green square).
//! - `image-above`: "What shape is above the red circle?" -> "square" (likewise, in its
//!   grid column).
//! - `image-word`: "What word is written?" -> "CAT" (a word across one grid row, 1-3 shapes
//!   in the other rows).
//! - `image-mix`: the five in turn (example `i` is task `i % 5`).
//!
//! Like [`crate::synth`], example `i` of a split with seed `S` comes from its own random
//! stream keyed by (task, split, S, i): splits are independent and `n` only extends a
//! stream. The same arguments always give the same PNG bytes.

pub mod font;
pub mod scene;

use std::io::Write;
use std::path::Path;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::images::{IMAGE_PLACEHOLDER, encode_png};
use crate::rng::{Rng, hash_str, seed_of};
use crate::synth::Split;
use scene::{GRID, PALETTE, Scene, ShapeKind};

pub const IMAGE_TASKS: [&str; 5] = [
    "image-count",
    "image-colour",
    "image-left",
    "image-above",
    "image-word",
];
/// The task name that cycles through [`IMAGE_TASKS`].
pub const IMAGE_MIX: &str = "image-mix";
/// Default width and height of the images, in pixels.
pub const DEFAULT_IMAGE_SIZE: u32 = 64;
/// Smallest and largest accepted image size (the 4-letter words need 32 pixels).
pub const MIN_IMAGE_SIZE: u32 = 32;
pub const MAX_IMAGE_SIZE: u32 = 1024;
/// Words that may be written (3-4 letters, so they fit at [`MIN_IMAGE_SIZE`]).
pub const WORDS: [&str; 24] = [
    "CAT", "DOG", "SUN", "BOX", "MAP", "KEY", "CUP", "HAT", "OWL", "FOX", "BEE", "JAM", "PEN",
    "RUG", "VAN", "ZIP", "FISH", "BIRD", "TREE", "STAR", "MOON", "LAMP", "KITE", "WOLF",
];
/// Scenes drawn before giving up on one that asks an answerable question (each draw
/// succeeds with probability well above 1/10, so this is never reached in practice).
const MAX_DRAWS: usize = 10_000;

/// What to generate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSynthConfig {
    /// One of [`IMAGE_TASKS`] or [`IMAGE_MIX`].
    pub task: String,
    pub split: Split,
    pub seed: u64,
    pub n: usize,
    /// Image width and height in pixels (a multiple of a ViT's patch size suits students).
    pub size: u32,
}

impl ImageSynthConfig {
    /// `n` examples of `task` at [`DEFAULT_IMAGE_SIZE`].
    pub fn new(task: &str, split: Split, seed: u64, n: usize) -> Self {
        Self {
            task: task.to_owned(),
            split,
            seed,
            n,
            size: DEFAULT_IMAGE_SIZE,
        }
    }
}

/// One generated example.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageExample {
    pub id: String,
    pub task: String,
    /// `"<image>\nQuestion: ..."`.
    pub input: String,
    pub target: String,
    /// The exact answer to score against (equal to `target`).
    pub answer: String,
    /// The rendered scene as PNG bytes.
    #[serde(skip)]
    pub png: Vec<u8>,
    /// What the image shows.
    pub scene: Scene,
}

/// Generates examples `0..n`; see the module docs.
pub fn generate_images(cfg: &ImageSynthConfig) -> Result<Vec<ImageExample>> {
    if cfg.task != IMAGE_MIX && !IMAGE_TASKS.contains(&cfg.task.as_str()) {
        return Err(Error::Config {
            message: format!(
                "unknown image task `{}` ({}, {IMAGE_MIX})",
                cfg.task,
                IMAGE_TASKS.join(", ")
            ),
        });
    }
    if !(MIN_IMAGE_SIZE..=MAX_IMAGE_SIZE).contains(&cfg.size) {
        return Err(Error::Config {
            message: format!(
                "image size {} px is outside {MIN_IMAGE_SIZE}..={MAX_IMAGE_SIZE}",
                cfg.size
            ),
        });
    }
    Ok((0..cfg.n).map(|i| example(cfg, i)).collect())
}

fn example(cfg: &ImageSynthConfig, i: usize) -> ImageExample {
    let task = if cfg.task == IMAGE_MIX {
        IMAGE_TASKS[i % IMAGE_TASKS.len()]
    } else {
        cfg.task.as_str()
    };
    let key = seed_of(&[
        hash_str(task),
        hash_str(cfg.split.name()),
        cfg.seed,
        i as u64,
    ]);
    let mut rng = Rng::new(key);
    let (scene, question, answer) = (0..MAX_DRAWS)
        .find_map(|_| draw(task, &mut rng, cfg.size))
        .unwrap_or_else(|| panic!("no answerable {task} scene in {MAX_DRAWS} draws"));
    ImageExample {
        id: format!("{}-{}-{}-{i:07}", cfg.task, cfg.split.name(), cfg.seed),
        task: task.to_owned(),
        input: format!("{IMAGE_PLACEHOLDER}\nQuestion: {question}"),
        target: answer.clone(),
        answer,
        png: encode_png(&scene.render()),
        scene,
    }
}

/// One random scene with a question of `task` and its answer, or `None` when the scene
/// cannot ask it unambiguously (the caller draws again).
fn draw(task: &str, rng: &mut Rng, size: u32) -> Option<(Scene, String, String)> {
    let cells = (GRID * GRID) as usize;
    match task {
        "image-count" => {
            let n = rng.range(2, 6);
            let scene = Scene::random(rng, size, n, None);
            // Mostly a colour that is present, sometimes any (answers of 0 too).
            let colour = if rng.chance(0.75) {
                scene.shapes[rng.below(scene.shapes.len())].colour
            } else {
                rng.below(PALETTE.len())
            };
            let question = format!("How many {} shapes?", PALETTE[colour].0);
            let count = scene.count_colour(colour).to_string();
            Some((scene, question, count))
        }
        "image-colour" => {
            let n = rng.range(2, 5);
            let scene = Scene::random(rng, size, n, None);
            let kind = *rng.pick(&ShapeKind::ALL);
            let shape = scene.only_of_kind(kind)?;
            let (question, answer) = (
                format!("What colour is the {}?", kind.name()),
                shape.colour_name().to_owned(),
            );
            Some((scene, question, answer))
        }
        "image-left" | "image-above" => {
            let n = rng.range(3, cells - 3);
            let scene = Scene::random(rng, size, n, None);
            let anchor = &scene.shapes[rng.below(scene.shapes.len())];
            let (relation, other) = if task == "image-left" {
                ("left of", scene.only_left_of(anchor)?)
            } else {
                ("above", scene.only_above(anchor)?)
            };
            if !scene.is_unique(anchor) {
                return None;
            }
            let question = format!(
                "What shape is {relation} the {} {}?",
                anchor.colour_name(),
                anchor.kind.name()
            );
            let answer = other.kind.name().to_owned();
            Some((scene, question, answer))
        }
        _ => {
            let row = rng.below(GRID as usize) as u32;
            let n = rng.range(1, 3);
            let mut scene = Scene::random(rng, size, n, Some(row));
            let word = *rng.pick(&WORDS);
            scene.write(rng, word, row);
            Some((scene, "What word is written?".to_owned(), word.to_owned()))
        }
    }
}

/// Writes each example's PNG as `<stem>-images/<id>.png` next to `path` and the examples
/// as JSONL at `path` (fields id, task, input, target, answer, `image`: the PNG's path
/// relative to the JSONL's folder, as `edkd data prepare --image-field image` reads it).
/// The JSONL is written last and atomically.
pub fn write_jsonl_with_images(path: &Path, examples: &[ImageExample]) -> Result<()> {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "synth".into());
    let folder = format!("{stem}-images");
    let dir = path.parent().unwrap_or(Path::new("")).join(&folder);
    std::fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
    let mut out = Vec::new();
    for e in examples {
        let file = format!("{}.png", e.id);
        crate::fsutil::write_atomic(&dir.join(&file), &e.png)?;
        let line = serde_json::json!({
            "id": e.id, "task": e.task, "input": e.input, "target": e.target,
            "answer": e.answer, "image": format!("{folder}/{file}"),
        });
        serde_json::to_writer(&mut out, &line).expect("serializes");
        out.write_all(b"\n").expect("in memory");
    }
    crate::fsutil::write_atomic(path, &out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_deterministic_prefix_stable_and_split_dependent() {
        let cfg = ImageSynthConfig::new(IMAGE_MIX, Split::Train, 3, 10);
        let a = generate_images(&cfg).unwrap();
        assert_eq!(a, generate_images(&cfg).unwrap());
        let short = generate_images(&ImageSynthConfig {
            n: 4,
            ..cfg.clone()
        })
        .unwrap();
        assert_eq!(&a[..4], &short[..]);
        let test = generate_images(&ImageSynthConfig {
            split: Split::Test,
            ..cfg.clone()
        })
        .unwrap();
        assert!(a.iter().zip(&test).all(|(x, y)| x.png != y.png));
        let tasks: Vec<&str> = a.iter().map(|e| e.task.as_str()).collect();
        assert_eq!(&tasks[..5], &IMAGE_TASKS[..]);
        assert!(a.iter().all(|e| e.input.starts_with("<image>\nQuestion: ")));
    }

    #[test]
    fn sizes_outside_the_range_and_unknown_tasks_are_refused() {
        let mut cfg = ImageSynthConfig::new("image-count", Split::Train, 0, 1);
        cfg.size = 31;
        let err = generate_images(&cfg).unwrap_err().to_string();
        assert!(
            err.contains("image size 31 px is outside 32..=1024"),
            "{err}"
        );
        let err = generate_images(&ImageSynthConfig::new("image-nope", Split::Train, 0, 1))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown image task `image-nope`"), "{err}");
    }

    #[test]
    fn every_answer_kind_occurs() {
        for (task, answers) in [
            ("image-left", vec!["square", "circle", "triangle"]),
            ("image-colour", PALETTE.iter().map(|p| p.0).collect()),
        ] {
            let examples =
                generate_images(&ImageSynthConfig::new(task, Split::Train, 1, 150)).unwrap();
            for answer in answers {
                assert!(
                    examples.iter().any(|e| e.answer == answer),
                    "{task}: {answer}"
                );
            }
        }
    }
}
