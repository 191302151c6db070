//! Synthetic asymmetric tasks: long inputs (a few hundred tokens), short answers that need
//! the whole input. Small entity vocabularies and regular templates keep them learnable by
//! a few-million-parameter student; random layouts keep them from being trivial.
//!
//! Tasks:
//! - `kv`: a record of 24-40 `key = value` lines; the question names one key.
//! - `qa`: a passage of facts about 6-9 people plus distractor sentences; the question asks
//!   one fact, answered by a span of the passage.
//! - `agg`: an inventory of 20-36 items; the question asks a count, the majority colour, or
//!   the list of item numbers in one place.
//! - `mix`: the three in turn (example `i` is task `i % 3`).
//!
//! Splits: example `i` of split `s` with seed `S` is generated from its own random stream
//! keyed by (task, s, S, i), so splits are independent streams and `--n` only extends a
//! stream (the first 100 of `--n 1000` equal `--n 100`). Use the same seed with
//! `--split train`, `validation` and `test` for disjoint sets.

use std::io::Write;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::rng::{Rng, hash_str, seed_of};

pub const TASKS: [&str; 3] = ["kv", "qa", "agg"];

const ADJECTIVES: [&str; 12] = [
    "amber", "brisk", "calm", "dusty", "eager", "faint", "gentle", "hollow", "icy", "jolly",
    "keen", "lucky",
];
const NOUNS: [&str; 12] = [
    "falcon", "river", "lantern", "meadow", "anchor", "comet", "harbor", "orchid", "pebble",
    "summit", "thistle", "violin",
];
const NAMES: [&str; 16] = [
    "Alice", "Bruno", "Chloe", "Dmitri", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas",
    "Kira", "Liam", "Maya", "Nils", "Olga", "Pablo",
];
const CITIES: [&str; 12] = [
    "Lisbon", "Oslo", "Cairo", "Lima", "Kyoto", "Dublin", "Quito", "Perth", "Riga", "Tunis",
    "Hanoi", "Bern",
];
const JOBS: [&str; 12] = [
    "baker", "pilot", "nurse", "farmer", "painter", "teacher", "plumber", "chemist", "tailor",
    "judge", "miner", "poet",
];
const PETS: [&str; 6] = ["cat", "dog", "parrot", "rabbit", "turtle", "goat"];
const COLORS: [&str; 6] = ["red", "blue", "green", "yellow", "black", "white"];
const OBJECTS: [&str; 10] = [
    "box", "lamp", "chair", "kettle", "basket", "clock", "vase", "drum", "bottle", "helmet",
];
const PLACES: [&str; 5] = ["attic", "garage", "kitchen", "cellar", "hallway"];
const WEATHER: [&str; 5] = ["sunny", "rainy", "windy", "foggy", "snowy"];
const DAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// Which stream of examples to draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Validation,
    Test,
}

impl FromStr for Split {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "train" => Ok(Self::Train),
            "validation" | "val" => Ok(Self::Validation),
            "test" => Ok(Self::Test),
            _ => Err(format!("unknown split `{s}` (train, validation, test)")),
        }
    }
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Self::Train => "train",
            Self::Validation => "validation",
            Self::Test => "test",
        }
    }
}

/// One generated example (a JSONL line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SynthExample {
    pub id: String,
    pub task: String,
    pub input: String,
    pub target: String,
    /// The exact answer to score against (normalised like `target`).
    pub answer: String,
}

/// How big the generated inputs are: inclusive ranges `(lo, hi)` of lines, people and items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// `kv`: record lines.
    pub kv_lines: (usize, usize),
    /// `qa`: people described (three facts each).
    pub qa_people: (usize, usize),
    /// `qa`: weather sentences that answer nothing.
    pub qa_distractors: (usize, usize),
    /// `agg`: inventory items.
    pub agg_items: (usize, usize),
}

impl Shape {
    /// Inputs of a few hundred tokens (the module docs' sizes).
    pub const STANDARD: Shape = Shape {
        kv_lines: (24, 40),
        qa_people: (6, 9),
        qa_distractors: (4, 8),
        agg_items: (20, 36),
    };
    /// Inputs of roughly 50-100 tokens: the same tasks, learnable in minutes on a CPU
    /// (`edkd demo`).
    pub const COMPACT: Shape = Shape {
        kv_lines: (6, 10),
        qa_people: (2, 4),
        qa_distractors: (1, 3),
        agg_items: (5, 9),
    };
}

/// Generates examples `0..n` of `task` (`kv`, `qa`, `agg` or `mix`) of [`Shape::STANDARD`].
pub fn generate(task: &str, split: Split, seed: u64, n: usize) -> Result<Vec<SynthExample>> {
    generate_shaped(task, split, seed, n, &Shape::STANDARD)
}

/// Generates examples `0..n` of `task` with inputs of the given shape.
pub fn generate_shaped(
    task: &str,
    split: Split,
    seed: u64,
    n: usize,
    shape: &Shape,
) -> Result<Vec<SynthExample>> {
    if task != "mix" && !TASKS.contains(&task) {
        return Err(Error::Config {
            message: format!("unknown task `{task}` (kv, qa, agg, mix)"),
        });
    }
    Ok((0..n)
        .map(|i| {
            let name = if task == "mix" {
                TASKS[i % TASKS.len()]
            } else {
                task
            };
            let key = seed_of(&[hash_str(name), hash_str(split.name()), seed, i as u64]);
            let mut rng = Rng::new(key);
            let (input, target) = match name {
                "kv" => kv(&mut rng, shape),
                "qa" => qa(&mut rng, shape),
                _ => agg(&mut rng, shape),
            };
            SynthExample {
                id: format!("{task}-{}-{seed}-{i:07}", split.name()),
                task: name.to_owned(),
                answer: target.clone(),
                input,
                target,
            }
        })
        .collect())
}

/// Writes examples as JSONL, atomically.
pub fn write_jsonl(path: &Path, examples: &[SynthExample]) -> Result<()> {
    let mut out = Vec::new();
    for e in examples {
        serde_json::to_writer(&mut out, e).expect("serializes");
        out.write_all(b"\n").expect("in memory");
    }
    crate::fsutil::write_atomic(path, &out)
}

fn kv(rng: &mut Rng, shape: &Shape) -> (String, String) {
    let lines = rng.range(shape.kv_lines.0, shape.kv_lines.1);
    let keys = rng.sample(ADJECTIVES.len() * NOUNS.len(), lines);
    let mut text = String::from("Record:\n");
    let mut entries = Vec::with_capacity(lines);
    for k in keys {
        let key = format!("{}-{}", ADJECTIVES[k / NOUNS.len()], NOUNS[k % NOUNS.len()]);
        let value = rng.range(100, 999).to_string();
        text.push_str(&format!("{key} = {value}\n"));
        entries.push((key, value));
    }
    let (key, value) = &entries[rng.below(entries.len())];
    text.push_str(&format!("Question: what is the value of {key}?"));
    (text, value.clone())
}

fn qa(rng: &mut Rng, shape: &Shape) -> (String, String) {
    let count = rng.range(shape.qa_people.0, shape.qa_people.1);
    let people = rng.sample(NAMES.len(), count);
    let mut sentences = Vec::new();
    let mut facts = Vec::new();
    for &p in &people {
        let name = NAMES[p];
        let city = *rng.pick(&CITIES);
        let job = *rng.pick(&JOBS);
        let pet = format!("{} {}", rng.pick(&COLORS), rng.pick(&PETS));
        sentences.push(format!("{name} lives in {city}."));
        sentences.push(format!("{name} works as a {job}."));
        sentences.push(format!("{name} has a {pet}."));
        facts.push((name, city.to_owned(), job.to_owned(), pet));
    }
    for _ in 0..rng.range(shape.qa_distractors.0, shape.qa_distractors.1) {
        sentences.push(format!(
            "The weather in {} was {} on {}.",
            rng.pick(&CITIES),
            rng.pick(&WEATHER),
            rng.pick(&DAYS)
        ));
    }
    rng.shuffle(&mut sentences);
    let (name, city, job, pet) = &facts[rng.below(facts.len())];
    let (question, answer) = match rng.below(3) {
        0 => (format!("where does {name} live?"), city.clone()),
        1 => (format!("what does {name} work as?"), job.clone()),
        _ => (format!("what pet does {name} have?"), pet.clone()),
    };
    let text = format!("Passage: {}\nQuestion: {question}", sentences.join(" "));
    (text, answer)
}

fn agg(rng: &mut Rng, shape: &Shape) -> (String, String) {
    let n = rng.range(shape.agg_items.0, shape.agg_items.1);
    let items: Vec<(usize, usize, usize)> = (0..n)
        .map(|_| {
            (
                rng.below(COLORS.len()),
                rng.below(OBJECTS.len()),
                rng.below(PLACES.len()),
            )
        })
        .collect();
    let mut text = String::from("Inventory:\n");
    for (i, &(c, o, p)) in items.iter().enumerate() {
        text.push_str(&format!(
            "item {}: {} {} in the {}\n",
            i + 1,
            COLORS[c],
            OBJECTS[o],
            PLACES[p]
        ));
    }
    let mut color_counts = [0usize; COLORS.len()];
    for &(c, _, _) in &items {
        color_counts[c] += 1;
    }
    let top = *color_counts.iter().max().unwrap_or(&0);
    let unique_majority = color_counts.iter().filter(|&&c| c == top).count() == 1;
    let kind = rng.below(3);
    let (question, answer) = if kind == 1 && unique_majority {
        let c = color_counts.iter().position(|&c| c == top).unwrap_or(0);
        (
            "which colour is most common?".to_owned(),
            COLORS[c].to_owned(),
        )
    } else if kind == 2 {
        let place = rng.below(PLACES.len());
        let listed: Vec<String> = items
            .iter()
            .enumerate()
            .filter(|(_, it)| it.2 == place)
            .map(|(i, _)| (i + 1).to_string())
            .collect();
        let answer = if listed.is_empty() {
            "none".to_owned()
        } else {
            listed.join(", ")
        };
        (format!("which items are in the {}?", PLACES[place]), answer)
    } else {
        let c = rng.below(COLORS.len());
        (
            format!("how many {} items are there?", COLORS[c]),
            color_counts[c].to_string(),
        )
    };
    text.push_str(&format!("Question: {question}"));
    (text, answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_prefix_stable_and_split_dependent() {
        let a = generate("mix", Split::Train, 7, 9).unwrap();
        let b = generate("mix", Split::Train, 7, 3).unwrap();
        assert_eq!(&a[..3], &b[..]);
        let t = generate("mix", Split::Test, 7, 9).unwrap();
        assert!(a.iter().zip(&t).all(|(x, y)| x.input != y.input));
        assert_eq!(a[1].task, "qa");
    }

    #[test]
    fn answers_are_grounded_in_the_input() {
        for e in generate("mix", Split::Train, 1, 60).unwrap() {
            assert!(!e.target.is_empty());
            match e.task.as_str() {
                "kv" | "qa" => assert!(e.input.contains(&e.answer), "{e:?}"),
                _ => {}
            }
        }
    }

    #[test]
    fn agg_count_matches_the_inventory() {
        for e in generate("agg", Split::Validation, 3, 40).unwrap() {
            if let Some(rest) = e.input.split("Question: how many ").nth(1) {
                let color = rest.split(' ').next().unwrap();
                let count = e
                    .input
                    .lines()
                    .filter(|l| l.starts_with("item ") && l.contains(&format!(": {color} ")))
                    .count();
                assert_eq!(e.answer, count.to_string());
            }
        }
    }

    #[test]
    fn compact_inputs_have_the_compact_sizes_and_grounded_answers() {
        let compact = generate_shaped("mix", Split::Train, 4, 90, &Shape::COMPACT).unwrap();
        let standard = generate("mix", Split::Train, 4, 90).unwrap();
        for e in &compact {
            let lines = e.input.lines().count() - 2; // header and question
            match e.task.as_str() {
                "kv" => {
                    assert!((6..=10).contains(&lines), "{lines}: {e:?}");
                    assert!(e.input.contains(&e.answer), "{e:?}");
                }
                "agg" => assert!((5..=9).contains(&lines), "{lines}: {e:?}"),
                _ => assert!(e.input.contains(&e.answer), "{e:?}"),
            }
        }
        let chars = |v: &[SynthExample]| v.iter().map(|e| e.input.len()).sum::<usize>();
        assert!(chars(&compact) * 3 < chars(&standard));
    }
}
