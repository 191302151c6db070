//! The task: code summarisation from real Python sources on this machine. Input: a
//! function's source with its docstring removed (long); target: the docstring's first
//! sentence (short). `scripts/kd_real_extract.py` parses the sources with Python's own
//! `ast`; this module filters, deduplicates and splits them so that the test and
//! validation functions come from source files (groups of files) the training set never
//! saw.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One extracted function (a line of the extractor's output).
#[derive(Debug, Clone, Deserialize)]
pub struct Function {
    pub package: String,
    pub file: String,
    pub name: String,
    pub line: u64,
    pub code: String,
    pub summary: String,
}

/// One example as `edkd data prepare` reads it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Example {
    pub id: String,
    pub task: String,
    pub input: String,
    pub target: String,
}

/// A root of Python sources and the licence it is distributed under.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Source {
    pub name: String,
    pub root: PathBuf,
    pub licence: String,
}

/// How the examples are chosen.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskConfig {
    pub train_examples: usize,
    pub validation_examples: usize,
    pub test_examples: usize,
    /// Examples whose input or target has more tokens are dropped (never truncated).
    pub max_input_tokens: usize,
    pub max_target_tokens: usize,
    /// Fewest words of a target sentence.
    pub min_target_words: usize,
    pub max_target_words: usize,
    /// A target sentence is kept at most this often (boilerplate like "Forward pass.").
    pub max_same_target: usize,
    pub seed: u64,
}

/// Sizes and drop counts of the built task.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TaskStats {
    pub extracted: usize,
    pub dropped_target_shape: usize,
    pub dropped_too_long: usize,
    pub dropped_duplicate_code: usize,
    pub dropped_repeated_target: usize,
    /// Held-out examples whose target sentence also occurs in the training pool.
    pub dropped_seen_target: usize,
    pub train_pool: usize,
    pub train: usize,
    pub validation: usize,
    pub test: usize,
    pub groups: usize,
    pub test_groups: usize,
    pub validation_groups: usize,
    /// Examples per source package in each split.
    pub per_package: BTreeMap<String, [usize; 3]>,
    pub mean_input_tokens: f64,
    pub mean_target_tokens: f64,
}

/// The task's three splits.
pub struct Splits {
    pub train: Vec<Example>,
    pub validation: Vec<Example>,
    pub test: Vec<Example>,
    pub stats: TaskStats,
}

/// Runs the extractor over `sources` into `out` (JSON lines).
pub fn extract(python: &Path, sources: &[Source], out: &Path) -> Result<()> {
    let script = crate::python::script("kd_real_extract.py");
    let file = std::fs::File::create(out).map_err(Error::io(out))?;
    let status = std::process::Command::new(python)
        .arg(&script)
        .args(
            sources
                .iter()
                .map(|s| format!("{}={}", s.name, s.root.display())),
        )
        .stdout(file)
        .status()
        .map_err(Error::io(python))?;
    if !status.success() {
        let _ = std::fs::remove_file(out);
        return Err(Error::Script {
            script: "kd_real_extract.py".into(),
            msg: format!("exited with {status}"),
        });
    }
    Ok(())
}

pub fn read_functions(path: &Path) -> Result<Vec<Function>> {
    let f = std::fs::File::open(path).map_err(Error::io(path))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.map_err(Error::io(path))?;
        let row: Function = serde_json::from_str(&line).map_err(|e| Error::Input {
            field: "extracted functions",
            msg: format!("{}:{}: {e}", path.display(), i + 1),
        })?;
        out.push(row);
    }
    Ok(out)
}

pub fn write_jsonl(path: &Path, rows: &[Example]) -> Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(Error::io(path))?);
    for r in rows {
        let line = serde_json::to_string(r).expect("examples serialise");
        writeln!(f, "{line}").map_err(Error::io(path))?;
    }
    f.flush().map_err(Error::io(path))
}

/// FNV-1a of a string and a seed: a stable order for groups and examples.
fn hash(seed: u64, s: &str) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x100_0000_01b3);
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// The unit of the split: a package's top-level module or subpackage (`torch/nn`,
/// `stdlib/email`, `stdlib/argparse.py`), so copies inside one subpackage stay together.
fn group(f: &Function) -> String {
    let top = f.file.split('/').next().unwrap_or(&f.file);
    format!("{}/{top}", f.package)
}

/// Lowercase alphanumerics only: two targets that differ in case or punctuation are one.
fn normalised(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_alphanumeric() || c.is_whitespace())
        .flat_map(char::to_lowercase)
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether a first sentence reads like a summary: a sentence (ends with a period, starts
/// with a letter) of a few words, not a signature, a directive or a doctest.
fn summary_shape_ok(s: &str, cfg: &TaskConfig) -> bool {
    let words = s.split_whitespace().count();
    s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && s.ends_with('.')
        && (cfg.min_target_words..=cfg.max_target_words).contains(&words)
        && !s.contains("::")
        && !s.contains(">>>")
        && !s.contains("`")
}

/// Filters, deduplicates and splits `functions`; `count_tokens` measures a text in the
/// task tokenizer's tokens.
pub fn build(
    functions: Vec<Function>,
    cfg: &TaskConfig,
    count_tokens: &dyn Fn(&str) -> Result<usize>,
) -> Result<Splits> {
    let mut stats = TaskStats {
        extracted: functions.len(),
        ..Default::default()
    };
    let mut seen_code = HashSet::new();
    let mut target_count: HashMap<String, usize> = HashMap::new();
    let mut kept: Vec<(Function, usize, usize)> = Vec::new();
    for f in functions {
        if !summary_shape_ok(&f.summary, cfg) {
            stats.dropped_target_shape += 1;
            continue;
        }
        let code_key: String = f.code.split_whitespace().collect::<Vec<_>>().join(" ");
        if !seen_code.insert(code_key) {
            stats.dropped_duplicate_code += 1;
            continue;
        }
        // Cheap bound first: a token is at least one character.
        if f.code.len() > cfg.max_input_tokens * 8 {
            stats.dropped_too_long += 1;
            continue;
        }
        let (n_in, n_out) = (count_tokens(&f.code)?, count_tokens(&f.summary)?);
        if n_in > cfg.max_input_tokens || n_out > cfg.max_target_tokens {
            stats.dropped_too_long += 1;
            continue;
        }
        let n = target_count.entry(normalised(&f.summary)).or_default();
        *n += 1;
        if *n > cfg.max_same_target {
            stats.dropped_repeated_target += 1;
            continue;
        }
        kept.push((f, n_in, n_out));
    }

    // Groups in a seeded order; small groups fill the test split, then validation.
    let mut by_group: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, (f, _, _)) in kept.iter().enumerate() {
        by_group.entry(group(f)).or_default().push(i);
    }
    stats.groups = by_group.len();
    let mut order: Vec<&String> = by_group.keys().collect();
    order.sort_by_key(|g| hash(cfg.seed, g));
    let mut split_of = vec![0usize; kept.len()]; // 0 train, 1 validation, 2 test
    // Held-out examples are later thinned (seen targets); take some margin.
    let want = |n: usize| n + n / 5 + 1;
    let (mut test_n, mut val_n) = (0, 0);
    for g in order {
        let members = &by_group[g];
        let small = |target: usize| members.len() <= (target / 4).max(8);
        if test_n < want(cfg.test_examples) && small(cfg.test_examples) {
            members.iter().for_each(|&i| split_of[i] = 2);
            test_n += members.len();
            stats.test_groups += 1;
        } else if val_n < want(cfg.validation_examples) && small(cfg.validation_examples) {
            members.iter().for_each(|&i| split_of[i] = 1);
            val_n += members.len();
            stats.validation_groups += 1;
        }
    }
    let train_targets: HashSet<String> = kept
        .iter()
        .zip(&split_of)
        .filter(|(_, s)| **s == 0)
        .map(|((f, _, _), _)| normalised(&f.summary))
        .collect();

    let mut pools: [Vec<(u64, usize)>; 3] = Default::default();
    for (i, ((f, _, _), &s)) in kept.iter().zip(&split_of).enumerate() {
        if s > 0 && train_targets.contains(&normalised(&f.summary)) {
            stats.dropped_seen_target += 1;
            continue;
        }
        let key = format!("{}:{}:{}", f.package, f.file, f.name);
        pools[s].push((hash(cfg.seed ^ 0x5eed, &key), i));
    }
    stats.train_pool = pools[0].len();
    let limits = [
        cfg.train_examples,
        cfg.validation_examples,
        cfg.test_examples,
    ];
    let names = ["train", "validation", "test"];
    let mut splits: [Vec<Example>; 3] = Default::default();
    let (mut in_tokens, mut out_tokens, mut n_all) = (0usize, 0usize, 0usize);
    for s in 0..3 {
        pools[s].sort_unstable();
        if pools[s].len() < limits[s] {
            return Err(Error::Input {
                field: "task sizes",
                msg: format!(
                    "{} split: {} examples wanted, only {} available from these sources \
                     (lower the size or add sources)",
                    names[s],
                    limits[s],
                    pools[s].len()
                ),
            });
        }
        for &(_, i) in pools[s].iter().take(limits[s]) {
            let (f, n_in, n_out) = &kept[i];
            stats.per_package.entry(f.package.clone()).or_default()[s] += 1;
            in_tokens += n_in;
            out_tokens += n_out;
            n_all += 1;
            splits[s].push(Example {
                id: format!("{}:{}:{}:{}", f.package, f.file, f.line, f.name),
                task: f.package.clone(),
                input: f.code.clone(),
                target: f.summary.clone(),
            });
        }
    }
    let [train, validation, test] = splits;
    stats.train = train.len();
    stats.validation = validation.len();
    stats.test = test.len();
    stats.mean_input_tokens = in_tokens as f64 / n_all.max(1) as f64;
    stats.mean_target_tokens = out_tokens as f64 / n_all.max(1) as f64;
    Ok(Splits {
        train,
        validation,
        test,
        stats,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(package: &str, file: &str, name: &str, code: &str, summary: &str) -> Function {
        Function {
            package: package.into(),
            file: file.into(),
            name: name.into(),
            line: 1,
            code: code.into(),
            summary: summary.into(),
        }
    }

    fn cfg() -> TaskConfig {
        TaskConfig {
            train_examples: 6,
            validation_examples: 1,
            test_examples: 1,
            max_input_tokens: 40,
            max_target_tokens: 12,
            min_target_words: 3,
            max_target_words: 20,
            max_same_target: 1,
            seed: 0,
        }
    }

    #[test]
    fn held_out_groups_are_unseen_and_duplicates_are_dropped() {
        let mut fs = Vec::new();
        for g in 0..12 {
            for j in 0..2 {
                fs.push(f(
                    "pkg",
                    &format!("mod{g}/a.py"),
                    &format!("f{j}"),
                    &format!("def f{j}():\n    return {g} + {j}\n"),
                    &format!("Return the sum of {g} and {j} here."),
                ));
            }
        }
        fs.push(fs[0].clone()); // duplicate code
        fs.push(f("pkg", "x.py", "g", "def g(): pass", "Too short.")); // two words
        fs.push(f(
            "pkg",
            "y.py",
            "h",
            "def h():\n    return 1\n",
            "Return the sum of 0 and 0 here.",
        ));
        let words = |s: &str| Ok(s.split_whitespace().count());
        let s = build(fs, &cfg(), &words).unwrap();
        assert_eq!(s.stats.dropped_duplicate_code, 1);
        assert_eq!(s.stats.dropped_target_shape, 1);
        assert_eq!(s.stats.dropped_repeated_target, 1);
        assert_eq!((s.train.len(), s.validation.len(), s.test.len()), (6, 1, 1));
        let group_of = |e: &Example| {
            e.id.split(':')
                .nth(1)
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .to_owned()
        };
        let train_groups: HashSet<String> = s.train.iter().map(group_of).collect();
        for e in s.test.iter().chain(&s.validation) {
            assert!(!train_groups.contains(&group_of(e)), "{} leaks", e.id);
        }
        let err = build(Vec::new(), &cfg(), &words).err().unwrap().to_string();
        assert!(
            err.contains("train split") && err.contains("6 examples wanted"),
            "{err}"
        );
    }
}
