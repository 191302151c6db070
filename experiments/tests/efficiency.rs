//! End-to-end: the efficiency experiment on the tiny preset writes a well-formed CSV and
//! a figure; the generation comparison agrees token for token.

use edkd_experiments::efficiency::report::{
    CSV_COLUMNS, PLOT_HEIGHT, PLOT_WIDTH, STUDENT_COLOUR, TWIN_COLOUR,
};
use edkd_experiments::efficiency::{self, Arch, Options};
use edkd_experiments::generation;
/// Columns left empty when the kernel does not let a process reset its peak RSS (the
/// ratio also when the twin's runs needed no new memory).
const OPTIONAL: [&str; 3] = [
    "student_run_peak_kib",
    "twin_run_peak_kib",
    "run_peak_ratio",
];
/// Memory the runs needed beyond the loaded model: a tiny model's runs may need no new
/// pages at all (it depends on the allocator), so 0 is a valid measurement there.
const MAY_BE_ZERO: [&str; 3] = OPTIONAL;

fn tiny() -> Options {
    Options {
        preset: "tiny".into(),
        input_lengths: vec![8, 32],
        new_tokens: 4,
        repeats: 1,
        threads: 1,
        seed: 0,
        dtype: "f32".into(),
        device: "cpu".into(),
        image_tokens: 0,
        tower: String::new(),
    }
}

#[test]
fn tiny_run_writes_csv_and_png() {
    let dir = tempfile::tempdir().unwrap();
    let mut seen = Vec::new();
    let rows = efficiency::run(&tiny(), efficiency::measure, |s| {
        seen.push((s.arch, s.input_length))
    })
    .unwrap();
    assert_eq!(
        seen,
        [
            (Arch::Student, 8),
            (Arch::Twin, 8),
            (Arch::Student, 32),
            (Arch::Twin, 32)
        ]
    );
    let csv = dir.path().join("e.csv");
    efficiency::write_csv(&csv, &rows).unwrap();

    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next().unwrap(), CSV_COLUMNS.join(","));
    let data: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(data.len(), 2);
    for (row, len) in data.iter().zip(["8", "32"]) {
        assert_eq!(row.len(), CSV_COLUMNS.len());
        assert_eq!(row[0], len);
        for (col, field) in CSV_COLUMNS.iter().zip(row) {
            if field.is_empty() && OPTIONAL.contains(col) {
                continue;
            }
            let v: f64 = field
                .parse()
                .unwrap_or_else(|_| panic!("{col} = {field:?}"));
            let floor_ok = if MAY_BE_ZERO.contains(col) {
                v >= 0.0
            } else {
                v > 0.0
            };
            assert!(v.is_finite() && floor_ok, "{col} = {v}");
        }
    }
    // The twin's cache holds input + output for every layer; the student's decoder fewer.
    for r in &rows {
        assert!(r.kv_cache_ratio() < 1.0, "kv ratio {}", r.kv_cache_ratio());
        let rel = (r.student.params - r.twin.params).abs() as f64 / r.twin.params as f64;
        assert!(
            rel < 0.02,
            "params {} vs {}",
            r.student.params,
            r.twin.params
        );
    }

    // The figure: a PNG of its size, with the student's and the twin's colours in both
    // panels (latency on the left half, throughput on the right).
    let png = dir.path().join("e.png");
    efficiency::plot(&rows, &png, "tiny").unwrap();
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (PLOT_WIDTH, PLOT_HEIGHT));
    assert_eq!(info.color_type, png::ColorType::Rgb);
    let count = |colour: [u8; 3], left_half: bool| {
        buf[..info.buffer_size()]
            .chunks(3)
            .enumerate()
            .filter(|(i, p)| {
                let x = *i as u32 % info.width;
                *p == colour && (x < info.width / 2) == left_half
            })
            .count()
    };
    for (name, colour) in [("student", STUDENT_COLOUR), ("twin", TWIN_COLOUR)] {
        for left in [true, false] {
            let n = count(colour, left);
            assert!(
                n > 100,
                "{name} in the {} panel: {n} pixels",
                if left { "left" } else { "right" }
            );
        }
    }
}

#[test]
fn one_new_token_is_rejected_with_the_field_name() {
    let spec = efficiency::MeasureSpec {
        arch: Arch::Student,
        preset: "tiny".into(),
        input_length: 8,
        new_tokens: 1,
        repeats: 1,
        threads: 1,
        seed: 0,
        dtype: "f32".into(),
        device: "cpu".into(),
        image_tokens: 0,
        tower: String::new(),
    };
    let err = efficiency::measure(&spec).unwrap_err().to_string();
    assert!(err.contains("new_tokens"), "{err}");
}

#[test]
fn cached_and_recomputed_student_generation_agree() {
    let opts = generation::Options {
        preset: "tiny".into(),
        input_length: 16,
        new_tokens: 12,
        repeats: 1,
        threads: 1,
        seed: 3,
    };
    let r = generation::student_cached_vs_recompute(&opts).unwrap();
    assert!(r.same_tokens);
    assert!(r.cached_s > 0.0 && r.recompute_s > 0.0);
}

/// The paper-size experiment's machinery on the tiny preset: every component of a run is
/// timed (the parts add up to the end-to-end figures), FLOPs by construction favour the
/// student, the report names the paper's claims, and a rerun takes nothing again.
#[test]
fn the_grid_experiment_breaks_down_time_and_resumes_from_its_journal() {
    use edkd_experiments::efficiency::experiment::{self, GridOptions};
    use edkd_experiments::efficiency::{Part, report_md};
    let work = tempfile::tempdir().unwrap();
    let reports = tempfile::tempdir().unwrap();
    let opts = GridOptions {
        presets: vec!["tiny".into()],
        input_lengths: vec![16, 64],
        threads: vec![1],
        dtypes: vec!["f32".into(), "bf16".into()],
        device: "cpu".into(),
        new_tokens: 4,
        repeats: (1, 1),
        seed: 0,
        image_tokens: 0,
        tower: String::new(),
    };
    let mut taken = 0;
    let r = experiment::run(&opts, "test".into(), work.path(), |s| {
        taken += 1;
        efficiency::measure(s)
    })
    .unwrap();
    assert_eq!(taken, 8);
    assert_eq!(r.measured_now, 8);
    assert_eq!(r.settings.len(), 2);
    for s in &r.settings {
        for row in &s.rows {
            let (st, tw) = (&row.student, &row.twin);
            let sum = st.first_parts_ms.total();
            assert!(
                (sum - st.first_token_ms).abs() < 1e-9,
                "{sum} vs {}",
                st.first_token_ms
            );
            for part in [Part::Encoder, Part::CrossKv, Part::Decoder, Part::LmHead] {
                assert!(st.first_parts_ms.get(part) > 0.0, "{part:?}");
            }
            assert!(tw.first_parts_ms.get(Part::Layers) > 0.0);
            assert_eq!(tw.first_parts_ms.get(Part::Encoder), 0.0);
            let step_ms = 1e3 / st.decode_tokens_per_s;
            assert!((st.step_parts_ms.total() - step_ms).abs() < 1e-6 * step_ms.max(1.0));
            assert!(st.cost.first_flops < tw.cost.first_flops);
            assert!(st.cost.step_bytes() < tw.cost.step_bytes());
        }
        // bf16 halves the cache bytes against f32.
        if s.dtype == "bf16" {
            let f32_rows = &r.settings.iter().find(|x| x.dtype == "f32").unwrap().rows;
            assert_eq!(
                2 * s.rows[0].twin.kv_cache_bytes,
                f32_rows[0].twin.kv_cache_bytes
            );
        }
    }
    let written = report_md::write(&r, reports.path(), "efficiency").unwrap();
    let md = std::fs::read_to_string(&written.markdown).unwrap();
    assert!(
        md.contains("| first-token latency lower by | 47% |"),
        "{md}"
    );
    assert!(md.contains("### tiny bf16 1t"));
    assert_eq!(written.figures.len(), 3); // ratios + one per setting of the largest preset

    // A rerun measures nothing new; hand-written commentary survives it.
    let mut text = md;
    text += &format!("\n{}\n\nkept\n", report_md::COMMENTARY);
    std::fs::write(&written.markdown, text).unwrap();
    let again = experiment::run(&opts, "test".into(), work.path(), |_| {
        panic!("the journal has every measurement")
    })
    .unwrap();
    assert_eq!(again.measured_now, 0);
    assert_eq!(again.settings.len(), 2);
    report_md::write(&again, reports.path(), "efficiency").unwrap();
    let md = std::fs::read_to_string(&written.markdown).unwrap();
    assert!(md.ends_with("kept\n"), "{md}");
}

#[test]
fn a_bad_grid_names_the_field() {
    use edkd_experiments::efficiency::experiment::{self, GridOptions};
    let work = tempfile::tempdir().unwrap();
    let mut opts = GridOptions {
        threads: vec![0],
        ..GridOptions::default()
    };
    let err = experiment::run(&opts, "t".into(), work.path(), efficiency::measure)
        .unwrap_err()
        .to_string();
    assert!(err.contains("threads"), "{err}");
    opts.threads = vec![1];
    opts.dtypes = vec!["f8".into()];
    let err = experiment::run(&opts, "t".into(), work.path(), efficiency::measure)
        .unwrap_err()
        .to_string();
    assert!(err.contains("dtype"), "{err}");
}

/// Image tokens go through the same tower and projector on both sides: both time them,
/// both count their FLOPs alike, and the caches hold them as input.
#[test]
fn image_tokens_run_the_same_tower_on_both_sides() {
    let mut spec = efficiency::MeasureSpec {
        arch: Arch::Student,
        preset: "tiny".into(),
        input_length: 8,
        new_tokens: 3,
        repeats: 1,
        threads: 1,
        seed: 0,
        dtype: "f32".into(),
        device: "cpu".into(),
        image_tokens: 32, // two 32-pixel tiles of 16 patches
        tower: "tiny".into(),
    };
    let s = efficiency::measure(&spec).unwrap();
    spec.arch = Arch::Twin;
    let t = efficiency::measure(&spec).unwrap();
    use edkd_experiments::efficiency::Part;
    for m in [&s, &t] {
        assert!(m.first_parts_ms.get(Part::Tower) > 0.0);
        assert!(m.first_parts_ms.get(Part::Projector) > 0.0);
        assert!(m.cost.image_flops > 0.0);
    }
    assert_eq!(s.cost.image_flops, t.cost.image_flops);
    let rel = (s.params - t.params).abs() as f64 / t.params as f64;
    assert!(rel < 0.02, "{} vs {}", s.params, t.params);
    let text_only = {
        spec.image_tokens = 0;
        efficiency::measure(&spec).unwrap()
    };
    assert!(t.kv_cache_bytes > text_only.kv_cache_bytes);
    assert!(
        t.params > text_only.params,
        "the tower's parameters are counted"
    );

    spec.image_tokens = 20; // not a multiple of 16
    let err = efficiency::measure(&spec).unwrap_err().to_string();
    assert!(err.contains("image_tokens"), "{err}");
}
