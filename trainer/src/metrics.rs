//! Task metrics for evaluation: SQuAD-style exact match and token F1, and ROUGE-1/2/L/Lsum
//! as Python `rouge-score` 0.1.2 computes them (`RougeScorer(..., use_stemmer=False)`,
//! default tokenizer). `tests/metrics_parity.rs` checks both against the Python references.
//!
//! Argument order is always `(pred, gold)`; ROUGE-Lsum is not symmetric in it.

pub mod bootstrap;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

const ARTICLES: [&str; 3] = ["a", "an", "the"];

/// Python's `str.isspace()`: Unicode White_Space plus the ASCII information separators
/// U+001C..U+001F, which Python splits on and Rust's `is_whitespace` does not.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's regex `\w` on str patterns, approximated by Rust's `is_alphanumeric` (the two
/// differ only on combining marks that Unicode lists as Other_Alphabetic).
fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// SQuAD answer normalisation: lowercase, drop ASCII punctuation, replace the whole words
/// "a", "an", "the" by a space, collapse whitespace to single spaces (and trim).
pub fn normalize_answer(s: &str) -> String {
    let no_punct: String = s
        .to_lowercase()
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    // Replace each maximal run of word characters that is an article.
    let mut no_articles = String::with_capacity(no_punct.len());
    let mut rest = no_punct.as_str();
    while let Some(c) = rest.chars().next() {
        let word = is_word_char(c);
        let end = rest
            .find(|ch: char| is_word_char(ch) != word)
            .unwrap_or(rest.len());
        let (run, tail) = rest.split_at(end);
        no_articles.push_str(if word && ARTICLES.contains(&run) {
            " "
        } else {
            run
        });
        rest = tail;
    }
    no_articles
        .split(is_py_space)
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// 1.0 when the normalised answers are equal, else 0.0.
pub fn exact_match(pred: &str, gold: &str) -> f64 {
    f64::from(u8::from(normalize_answer(pred) == normalize_answer(gold)))
}

/// SQuAD bag-of-tokens F1 over normalised tokens. When either side has no tokens the score
/// is 1.0 if both are empty and 0.0 otherwise (SQuAD v2 convention).
pub fn token_f1(pred: &str, gold: &str) -> f64 {
    let (pred, gold) = (normalize_answer(pred), normalize_answer(gold));
    let pred_tokens: Vec<&str> = pred.split(' ').filter(|t| !t.is_empty()).collect();
    let gold_tokens: Vec<&str> = gold.split(' ').filter(|t| !t.is_empty()).collect();
    if pred_tokens.is_empty() || gold_tokens.is_empty() {
        return f64::from(u8::from(pred_tokens == gold_tokens));
    }
    let gold_counts = counts(gold_tokens.iter().copied());
    let same = overlap(&counts(pred_tokens.iter().copied()), &gold_counts);
    if same == 0 {
        return 0.0;
    }
    let precision = same as f64 / pred_tokens.len() as f64;
    let recall = same as f64 / gold_tokens.len() as f64;
    (2.0 * precision * recall) / (precision + recall)
}

/// Precision, recall and their harmonic mean for one ROUGE variant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Prf {
    pub precision: f64,
    pub recall: f64,
    pub fmeasure: f64,
}

impl Prf {
    fn new(precision: f64, recall: f64) -> Self {
        let fmeasure = if precision + recall > 0.0 {
            2.0 * precision * recall / (precision + recall)
        } else {
            0.0
        };
        Self {
            precision,
            recall,
            fmeasure,
        }
    }
}

/// ROUGE scores of one prediction against one reference.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RougeScores {
    pub rouge1: Prf,
    pub rouge2: Prf,
    pub rouge_l: Prf,
    /// Summary-level LCS over newline-separated sentences (union LCS, no double counting).
    pub rouge_lsum: Prf,
}

/// ROUGE-1, -2, -L and -Lsum of `pred` against the reference `gold`.
pub fn rouge(pred: &str, gold: &str) -> RougeScores {
    let (pred_lower, gold_lower) = (pred.to_lowercase(), gold.to_lowercase());
    let pred_tokens = rouge_tokens(&pred_lower);
    let gold_tokens = rouge_tokens(&gold_lower);
    RougeScores {
        rouge1: rouge_n(&pred_tokens, &gold_tokens, 1),
        rouge2: rouge_n(&pred_tokens, &gold_tokens, 2),
        rouge_l: rouge_l(&pred_tokens, &gold_tokens),
        rouge_lsum: rouge_lsum(&pred_lower, &gold_lower),
    }
}

/// rouge-score's default tokenizer on already lowercased text: maximal runs of `[a-z0-9]`.
fn rouge_tokens(lowered: &str) -> Vec<&str> {
    lowered
        .split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
        .filter(|t| !t.is_empty())
        .collect()
}

fn counts<T: Eq + std::hash::Hash>(items: impl Iterator<Item = T>) -> HashMap<T, usize> {
    let mut map = HashMap::new();
    for item in items {
        *map.entry(item).or_insert(0) += 1;
    }
    map
}

/// Size of the multiset intersection.
fn overlap<T: Eq + std::hash::Hash>(a: &HashMap<T, usize>, b: &HashMap<T, usize>) -> usize {
    b.iter()
        .map(|(k, &n)| n.min(a.get(k).copied().unwrap_or(0)))
        .sum()
}

fn rouge_n(pred: &[&str], gold: &[&str], n: usize) -> Prf {
    let pred_ngrams = counts(pred.windows(n));
    let gold_ngrams = counts(gold.windows(n));
    let hits = overlap(&pred_ngrams, &gold_ngrams) as f64;
    let n_pred = pred.len().saturating_sub(n - 1).max(1) as f64;
    let n_gold = gold.len().saturating_sub(n - 1).max(1) as f64;
    Prf::new(hits / n_pred, hits / n_gold)
}

/// LCS length table, `(gold.len() + 1) x (pred.len() + 1)`, row-major.
fn lcs_table(gold: &[&str], pred: &[&str]) -> Vec<u32> {
    let cols = pred.len() + 1;
    let mut t = vec![0u32; (gold.len() + 1) * cols];
    for i in 1..=gold.len() {
        for j in 1..=pred.len() {
            t[i * cols + j] = if gold[i - 1] == pred[j - 1] {
                t[(i - 1) * cols + j - 1] + 1
            } else {
                t[(i - 1) * cols + j].max(t[i * cols + j - 1])
            };
        }
    }
    t
}

fn rouge_l(pred: &[&str], gold: &[&str]) -> Prf {
    if pred.is_empty() || gold.is_empty() {
        return Prf::default();
    }
    let lcs = f64::from(*lcs_table(gold, pred).last().expect("non-empty table"));
    Prf::new(lcs / pred.len() as f64, lcs / gold.len() as f64)
}

/// Indices into `gold` of one LCS with `pred`, ascending. The tie-breaking (move left only
/// when strictly better) is rouge-score's and decides which tokens the union LCS counts.
fn lcs_gold_indices(gold: &[&str], pred: &[&str]) -> Vec<usize> {
    let t = lcs_table(gold, pred);
    let cols = pred.len() + 1;
    let (mut i, mut j) = (gold.len(), pred.len());
    let mut out = Vec::new();
    while i > 0 && j > 0 {
        if gold[i - 1] == pred[j - 1] {
            out.push(i - 1);
            i -= 1;
            j -= 1;
        } else if t[i * cols + j - 1] > t[(i - 1) * cols + j] {
            j -= 1;
        } else {
            i -= 1;
        }
    }
    out.reverse();
    out
}

/// Newline-separated sentences (empty lines dropped), tokenised.
fn rouge_sentences(lowered: &str) -> Vec<Vec<&str>> {
    lowered
        .split('\n')
        .filter(|s| !s.is_empty())
        .map(rouge_tokens)
        .collect()
}

fn rouge_lsum(pred_lower: &str, gold_lower: &str) -> Prf {
    let (pred_sents, gold_sents) = (rouge_sentences(pred_lower), rouge_sentences(gold_lower));
    let n_pred: usize = pred_sents.iter().map(Vec::len).sum();
    let n_gold: usize = gold_sents.iter().map(Vec::len).sum();
    if n_pred == 0 || n_gold == 0 {
        return Prf::default();
    }
    // Each token occurrence counts at most once over all sentences.
    let mut left_pred = counts(pred_sents.iter().flatten().copied());
    let mut left_gold = counts(gold_sents.iter().flatten().copied());
    let mut hits = 0usize;
    for gold in &gold_sents {
        let union: BTreeSet<usize> = pred_sents
            .iter()
            .flat_map(|pred| lcs_gold_indices(gold, pred))
            .collect();
        for token in union.into_iter().map(|i| gold[i]) {
            let (Some(p), Some(g)) = (left_pred.get_mut(token), left_gold.get_mut(token)) else {
                continue;
            };
            if *p > 0 && *g > 0 {
                hits += 1;
                *p -= 1;
                *g -= 1;
            }
        }
    }
    Prf::new(hits as f64 / n_pred as f64, hits as f64 / n_gold as f64)
}

/// Every metric of one (prediction, reference) pair.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SampleMetrics {
    pub exact_match: f64,
    pub f1: f64,
    pub rouge: RougeScores,
}

impl SampleMetrics {
    pub fn compute(pred: &str, gold: &str) -> Self {
        Self {
            exact_match: exact_match(pred, gold),
            f1: token_f1(pred, gold),
            rouge: rouge(pred, gold),
        }
    }
}

/// Means of the F-measures (and EM, F1) over a set of samples; all zero when `count == 0`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricMeans {
    pub count: usize,
    pub exact_match: f64,
    pub f1: f64,
    pub rouge1: f64,
    pub rouge2: f64,
    pub rouge_l: f64,
    pub rouge_lsum: f64,
}

/// Running sums of the per-sample metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
struct Sums {
    count: usize,
    exact_match: f64,
    f1: f64,
    rouge1: f64,
    rouge2: f64,
    rouge_l: f64,
    rouge_lsum: f64,
}

impl Sums {
    fn add(&mut self, m: &SampleMetrics) {
        self.count += 1;
        self.exact_match += m.exact_match;
        self.f1 += m.f1;
        self.rouge1 += m.rouge.rouge1.fmeasure;
        self.rouge2 += m.rouge.rouge2.fmeasure;
        self.rouge_l += m.rouge.rouge_l.fmeasure;
        self.rouge_lsum += m.rouge.rouge_lsum.fmeasure;
    }

    fn merge(&mut self, o: &Sums) {
        self.count += o.count;
        self.exact_match += o.exact_match;
        self.f1 += o.f1;
        self.rouge1 += o.rouge1;
        self.rouge2 += o.rouge2;
        self.rouge_l += o.rouge_l;
        self.rouge_lsum += o.rouge_lsum;
    }

    fn means(&self) -> MetricMeans {
        let n = self.count.max(1) as f64;
        MetricMeans {
            count: self.count,
            exact_match: self.exact_match / n,
            f1: self.f1 / n,
            rouge1: self.rouge1 / n,
            rouge2: self.rouge2 / n,
            rouge_l: self.rouge_l / n,
            rouge_lsum: self.rouge_lsum / n,
        }
    }
}

/// Accumulates metrics per task; `overall` pools all samples (each sample weighs the same).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricSums {
    tasks: BTreeMap<String, Sums>,
}

impl MetricSums {
    pub fn new() -> Self {
        Self::default()
    }

    /// Scores `pred` against `gold` and adds the result to `task`.
    pub fn add(&mut self, task: &str, pred: &str, gold: &str) -> SampleMetrics {
        let m = SampleMetrics::compute(pred, gold);
        self.add_metrics(task, &m);
        m
    }

    /// Adds metrics computed elsewhere (e.g. on another worker).
    pub fn add_metrics(&mut self, task: &str, m: &SampleMetrics) {
        self.tasks.entry(task.to_owned()).or_default().add(m);
    }

    /// Adds every sample of `other`, task by task.
    pub fn merge(&mut self, other: &MetricSums) {
        for (task, sums) in &other.tasks {
            self.tasks.entry(task.clone()).or_default().merge(sums);
        }
    }

    pub fn by_task(&self) -> BTreeMap<String, MetricMeans> {
        self.tasks
            .iter()
            .map(|(task, s)| (task.clone(), s.means()))
            .collect()
    }

    pub fn overall(&self) -> MetricMeans {
        let mut all = Sums::default();
        for s in self.tasks.values() {
            all.merge(s);
        }
        all.means()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_drops_articles_punctuation_and_case() {
        assert_eq!(normalize_answer("  The  Cat's\ta hat!  "), "cats hat");
        assert_eq!(normalize_answer("an\u{1c}apple"), "apple");
        assert_eq!(normalize_answer("théa anthem"), "théa anthem");
    }

    #[test]
    fn f1_edge_cases() {
        assert_eq!(token_f1("", "the"), 1.0);
        assert_eq!(token_f1("cat", ""), 0.0);
        assert_eq!(token_f1("a cat sat", "cat sat down"), 0.8);
    }

    #[test]
    fn aggregation_weighs_samples_equally() {
        let mut sums = MetricSums::new();
        sums.add("qa", "x", "x");
        sums.add("qa", "x", "y");
        sums.add("sum", "y", "y");
        assert_eq!(sums.by_task()["qa"].exact_match, 0.5);
        let all = sums.overall();
        assert_eq!((all.count, all.exact_match), (3, 2.0 / 3.0));
        assert_eq!(MetricSums::new().overall().count, 0);
    }
}
