//! EM, token F1 and ROUGE against the Python references (rouge-score 0.1.2 and a SQuAD
//! normaliser), per pair and aggregated. Fixture: fixtures/make_metrics_fixture.py.

use edkd_trainer::metrics::{self, MetricMeans, MetricSums, Prf};
use serde_json::Value;

/// The same float operations run on both sides, so only JSON round-off and summation
/// order (for the means) separate the two.
const TOL: f64 = 1e-12;

fn fixture() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/metrics.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).expect("metrics.json is valid JSON")
}

fn num(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("fixture lacks number {key} in {v}"))
}

/// Largest absolute difference, recording which field it came from.
#[derive(Default)]
struct MaxDiff {
    diff: f64,
    at: String,
}

impl MaxDiff {
    fn check(&mut self, what: impl FnOnce() -> String, ours: f64, want: f64) {
        let d = (ours - want).abs();
        if d > self.diff || d.is_nan() {
            self.diff = if d.is_nan() { f64::INFINITY } else { d };
            self.at = format!("{}: ours {ours}, reference {want}", what());
        }
    }

    fn assert_within(&self, tol: f64) {
        assert!(
            self.diff <= tol,
            "max |diff| {} > {tol} at {}",
            self.diff,
            self.at
        );
    }
}

fn check_prf(md: &mut MaxDiff, case: usize, name: &str, ours: &Prf, want: &Value) {
    for (field, value) in [
        ("precision", ours.precision),
        ("recall", ours.recall),
        ("fmeasure", ours.fmeasure),
    ] {
        md.check(
            || format!("case {case} {name}.{field}"),
            value,
            num(&want[name], field),
        );
    }
}

fn check_means(md: &mut MaxDiff, label: &str, ours: &MetricMeans, want: &Value) {
    assert_eq!(
        ours.count as u64,
        want["count"].as_u64().unwrap(),
        "{label} count"
    );
    for (field, value) in [
        ("exact_match", ours.exact_match),
        ("f1", ours.f1),
        ("rouge1", ours.rouge1),
        ("rouge2", ours.rouge2),
        ("rouge_l", ours.rouge_l),
        ("rouge_lsum", ours.rouge_lsum),
    ] {
        md.check(|| format!("{label}.{field}"), value, num(want, field));
    }
}

#[test]
fn per_pair_scores_match_python() {
    let fx = fixture();
    let cases = fx["cases"].as_array().expect("cases");
    assert!(cases.len() >= 50, "fixture has only {} cases", cases.len());
    let mut md = MaxDiff::default();
    for (i, case) in cases.iter().enumerate() {
        let (pred, gold) = (
            case["pred"].as_str().unwrap(),
            case["gold"].as_str().unwrap(),
        );
        md.check(
            || format!("case {i} exact_match"),
            metrics::exact_match(pred, gold),
            num(case, "exact_match"),
        );
        md.check(
            || format!("case {i} f1"),
            metrics::token_f1(pred, gold),
            num(case, "f1"),
        );
        let r = metrics::rouge(pred, gold);
        check_prf(&mut md, i, "rouge1", &r.rouge1, case);
        check_prf(&mut md, i, "rouge2", &r.rouge2, case);
        check_prf(&mut md, i, "rouge_l", &r.rouge_l, case);
        check_prf(&mut md, i, "rouge_lsum", &r.rouge_lsum, case);
    }
    md.assert_within(TOL);
}

#[test]
fn aggregates_match_python() {
    let fx = fixture();
    let mut sums = MetricSums::new();
    for case in fx["cases"].as_array().unwrap() {
        let s = |k: &str| case[k].as_str().unwrap();
        sums.add(s("task"), s("pred"), s("gold"));
    }
    let want_tasks = fx["by_task"].as_object().unwrap();
    let by_task = sums.by_task();
    let names = |it: Vec<&String>| it.into_iter().cloned().collect::<Vec<_>>();
    assert_eq!(
        names(by_task.keys().collect()),
        names(want_tasks.keys().collect())
    );
    let mut md = MaxDiff::default();
    for (task, want) in want_tasks {
        check_means(&mut md, task, &by_task[task], want);
    }
    check_means(&mut md, "overall", &sums.overall(), &fx["overall"]);
    md.assert_within(TOL);
}

#[test]
fn means_serialise_with_rust_field_names() {
    let mut sums = MetricSums::new();
    sums.add("qa", "The cat", "cat");
    let json = serde_json::to_value(sums.overall()).unwrap();
    assert_eq!(json["count"], 1);
    assert_eq!(json["exact_match"], 1.0);
    assert!(json.get("rouge_lsum").is_some(), "{json}");
}
