//! `edkd demo`: the whole story on an embedded default, on CPU, in minutes.
//!
//! 1. synthesize asymmetric tasks (long input, short answer: kv lookup, reading QA,
//!    aggregation; the compact shape, inputs of ~50-100 tokens, so that they are learnt in
//!    minutes on a CPU); train a BPE tokenizer on them;
//! 2. train a small decoder-only teacher with cross-entropy on all labelled examples;
//! 3. serve it over gRPC on loopback (a real `edkd teacher` server);
//! 4. the teacher answers the inputs whose labels the students do not get (pseudo-labels,
//!    i.e. sequence-level KD over unlabelled inputs);
//! 5. distil a student: the labelled subset plus the pseudo-labelled inputs, with token-level
//!    KD from the served teacher's top-k log-probs;
//! 6. train the same student with cross-entropy only on the labelled subset (same steps,
//!    same hyperparameters);
//! 7. evaluate the teacher and both students on held-out examples and print one table;
//!    then export the distilled student to ONNX int8, evaluate it once more on ONNX
//!    Runtime and print that row (score, model bytes, first-token latency, decode tokens/s)
//!    next to the libtorch row.
//!
//! The comparison is the paper's setting in miniature: the students see fewer labels than
//! the teacher did; distillation is how the teacher's knowledge of the rest reaches them.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use edkd_data::synth::{self, Split, SynthExample};
use edkd_experiments::synthetic;
use edkd_trainer::eval::{EvalReport, Scores};

#[derive(clap::Args)]
pub struct Args {
    /// Where everything is written (data, models, runs, report).
    #[arg(long, default_value = "edkd-demo")]
    out: PathBuf,
    /// Labelled examples the teacher is trained on.
    #[arg(long, default_value_t = 12000)]
    teacher_examples: usize,
    /// Of those, labelled examples the students get (the rest are unlabelled inputs).
    #[arg(long, default_value_t = 3000)]
    student_examples: usize,
    /// Held-out examples for the final table.
    #[arg(long, default_value_t = 150)]
    eval_examples: usize,
    #[arg(long, default_value_t = 1200)]
    teacher_steps: u64,
    #[arg(long, default_value_t = 800)]
    student_steps: u64,
    /// Input tokens kept (the end of the input, where the question is).
    #[arg(long, default_value_t = 160)]
    max_input_tokens: usize,
    #[arg(long, default_value_t = 1024)]
    vocab_size: usize,
    /// libtorch threads (0: all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Start over even if the output folder has results.
    #[arg(long)]
    fresh: bool,
}

fn stage(n: usize, what: &str, started: &Instant) {
    eprintln!(
        "\n[{:>5.0} s] ({n}/7) {what}",
        started.elapsed().as_secs_f64()
    );
}

/// The students: the encoder-decoder `edkd bench train` measures too.
const STUDENT: &[&str] = edkd_experiments::training::STUDENT;

fn run_training(
    name: &str,
    overrides: Vec<String>,
    out: &Path,
    fresh: bool,
) -> anyhow::Result<EvalReport> {
    let (_, eval) = synthetic::train_run(name, &overrides, out, fresh)
        .with_context(|| format!("training the {name}"))?;
    Ok(eval)
}

fn prepare_data(
    train: &Path,
    validation: &Path,
    tokenizer: &Path,
    out: &Path,
    max_input: usize,
) -> anyhow::Result<()> {
    synthetic::prepare_split(train, validation, tokenizer, out, max_input, "edkd demo")
        .with_context(|| format!("preparing {}", out.display()))
}

fn base_overrides(args: &Args, data: &Path, tokenizer: &Path, steps: u64) -> Vec<String> {
    synthetic::base_overrides(&synthetic::RunSettings {
        data,
        tokenizer,
        seed: args.seed,
        threads: args.threads,
        steps,
    })
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    if args.student_examples >= args.teacher_examples {
        bail!("--student-examples must be below --teacher-examples (the rest are unlabelled)");
    }
    let out = args.out.clone();
    if args.fresh && out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("clearing {}", out.display()))?;
    }
    std::fs::create_dir_all(&out)?;
    if args.threads > 0 {
        tch::set_num_threads(args.threads as i32);
    }

    stage(1, "synthesizing tasks and training a tokenizer", &started);
    let shape = &synth::Shape::COMPACT;
    let all = synth::generate_shaped("mix", Split::Train, args.seed, args.teacher_examples, shape)?;
    let val = synth::generate_shaped(
        "mix",
        Split::Validation,
        args.seed,
        args.eval_examples,
        shape,
    )?;
    let (labelled, unlabelled) = all.split_at(args.student_examples);
    let raw = out.join("raw");
    std::fs::create_dir_all(&raw)?;
    synth::write_jsonl(&raw.join("teacher.jsonl"), &all)?;
    synth::write_jsonl(&raw.join("labelled.jsonl"), labelled)?;
    synth::write_jsonl(&raw.join("validation.jsonl"), &val)?;
    let tokenizer = out.join("tokenizer.json");
    if !tokenizer.is_file() {
        let texts =
            edkd_data::tokenizer::training_texts(&[raw.join("teacher.jsonl")], "input", "target")?;
        edkd_data::tokenizer::train_bpe_to_file(texts, args.vocab_size, 2, &tokenizer)?;
    }
    let data = out.join("data");
    prepare_data(
        &raw.join("teacher.jsonl"),
        &raw.join("validation.jsonl"),
        &tokenizer,
        &data.join("teacher"),
        args.max_input_tokens,
    )?;
    prepare_data(
        &raw.join("labelled.jsonl"),
        &raw.join("validation.jsonl"),
        &tokenizer,
        &data.join("labelled"),
        args.max_input_tokens,
    )?;
    eprintln!(
        "  {} labelled examples for the teacher, {} of them for the students, {} unlabelled \
         inputs, {} held out; tokenizer {} tokens",
        all.len(),
        labelled.len(),
        unlabelled.len(),
        val.len(),
        args.vocab_size
    );

    stage(
        2,
        "training the decoder-only teacher (cross-entropy)",
        &started,
    );
    let runs = out.join("runs");
    let mut o = base_overrides(&args, &data.join("teacher"), &tokenizer, args.teacher_steps);
    o.extend(synthetic::TEACHER.iter().map(|s| s.to_string()));
    let teacher_eval = run_training("teacher", o, &runs.join("teacher"), false)?;
    let teacher_dir = runs.join("teacher/final");

    stage(3, "serving the teacher over gRPC on loopback", &started);
    // The served teacher computes on this process's cores next to the KD student: it gets
    // its fair share of them (half), the student keeps every thread; see `edkd launch`.
    let cores = if args.threads > 0 {
        args.threads
    } else {
        edkd_models::device::cores()
    };
    let teacher_threads = edkd_cluster::local::split_cores(cores, 2)[1];
    let (rt, server) = edkd_experiments::loopback::serve_on_loopback(
        &teacher_dir,
        "edkd-demo-teacher",
        1,
        teacher_threads,
    )?;
    let addr = server.addr.to_string();
    eprintln!("  teacher service on {addr} ({teacher_threads} of {cores} threads)");

    stage(
        4,
        "pseudo-labelling the unlabelled inputs with the teacher",
        &started,
    );
    let pseudo = synthetic::pseudo_label(&teacher_dir, unlabelled, args.max_input_tokens)?;
    let mut kd_examples: Vec<SynthExample> = labelled.to_vec();
    kd_examples.extend(pseudo);
    synth::write_jsonl(&raw.join("kd.jsonl"), &kd_examples)?;
    prepare_data(
        &raw.join("kd.jsonl"),
        &raw.join("validation.jsonl"),
        &tokenizer,
        &data.join("kd"),
        args.max_input_tokens,
    )?;

    stage(
        5,
        "distilling the encoder-decoder student from the served teacher",
        &started,
    );
    let mut o = base_overrides(&args, &data.join("kd"), &tokenizer, args.student_steps);
    o.extend(STUDENT.iter().map(|s| s.to_string()));
    o.extend([
        "teacher.kind=remote".to_string(),
        format!("teacher.addr=\"{addr}\""),
        "teacher.top_k=32".into(),
        "loss.alpha=0.5".into(),
        "loss.temperature=1.0".into(),
    ]);
    let kd_eval = run_training("KD student", o, &runs.join("student-kd"), false)?;

    stage(
        6,
        "training the same student with cross-entropy only",
        &started,
    );
    let mut o = base_overrides(
        &args,
        &data.join("labelled"),
        &tokenizer,
        args.student_steps,
    );
    o.extend(STUDENT.iter().map(|s| s.to_string()));
    let ce_eval = run_training("CE-only student", o, &runs.join("student-ce"), false)?;
    rt.block_on(server.shutdown())?;

    stage(7, "evaluating on held-out examples", &started);
    let mut rows = Vec::new();
    for (name, dir) in [
        ("teacher (decoder-only)", runs.join("teacher/final")),
        ("student, CE only", runs.join("student-ce/final")),
        ("student, KD", runs.join("student-kd/final")),
    ] {
        let report = evaluate_folder(&dir, &data.join("teacher"), args.eval_examples)?;
        rows.push((name.to_string(), report));
    }
    let _ = (teacher_eval, kd_eval, ce_eval);
    let mut table = render_table(&rows);
    eprintln!("  exporting the KD student to ONNX int8 and evaluating it on ONNX Runtime");
    if let Some(device) = crate::export::demo_device_table(
        &runs.join("student-kd/final"),
        &data.join("teacher"),
        &eval_section(args.eval_examples),
        &rows[2].1,
        &out.join("student-kd-onnx-int8"),
    )? {
        table += &format!(
            "\nOn a device format (one held-out input, greedy, {} threads):\n\n{device}",
            crate::export::DEFAULT_THREADS
        );
    }
    println!("\n{table}");
    let report = out.join("report.md");
    std::fs::write(
        &report,
        format!(
            "# edkd demo\n\nHeld-out examples: {}. Teacher trained on {} labelled examples; \
             students on {} labelled (+ {} teacher-labelled inputs for KD).\n\n{table}\n",
            args.eval_examples,
            args.teacher_examples,
            args.student_examples,
            args.teacher_examples - args.student_examples
        ),
    )?;
    let json: Vec<_> = rows
        .iter()
        .map(|(n, r)| serde_json::json!({"model": n, "report": r}))
        .collect();
    std::fs::write(
        out.join("report.json"),
        serde_json::to_string_pretty(&json)? + "\n",
    )?;
    plot_runs(&runs, &out.join("loss.png"))?;
    println!(
        "report: {}, {}; loss curves: {}; TensorBoard: {}/*/tensorboard ({:.0} s in all)",
        report.display(),
        out.join("report.json").display(),
        out.join("loss.png").display(),
        runs.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn eval_section(n: usize) -> edkd_trainer::config::EvalSection {
    edkd_trainer::config::EvalSection {
        every: 0,
        max_examples: n,
        generate: true,
        max_new_tokens: 24,
        batch_rows: 32,
    }
}

fn evaluate_folder(model: &Path, data: &Path, n: usize) -> anyhow::Result<EvalReport> {
    Ok(edkd_trainer::eval::evaluate_folder(
        model,
        data,
        "validation",
        &eval_section(n),
        tch::Device::Cpu,
    )?)
}

/// One table: task x model, EM / F1 / ROUGE-L.
fn render_table(rows: &[(String, EvalReport)]) -> String {
    let mut tasks: Vec<String> = rows
        .iter()
        .flat_map(|(_, r)| r.by_task.keys().cloned())
        .collect();
    tasks.sort();
    tasks.dedup();
    tasks.push("all".into());
    let mut s = format!(
        "| {:<8} | {:<22} | {:>6} | {:>6} | {:>7} |\n|{}|{}|{}|{}|{}|\n",
        "task",
        "model",
        "EM",
        "F1",
        "ROUGE-L",
        "-".repeat(10),
        "-".repeat(24),
        "-".repeat(8),
        "-".repeat(8),
        "-".repeat(9)
    );
    for task in &tasks {
        for (name, r) in rows {
            let sc: Option<&Scores> = if task == "all" {
                r.overall.as_ref()
            } else {
                r.by_task.get(task)
            };
            if let Some(sc) = sc {
                s += &format!(
                    "| {:<8} | {:<22} | {:>6.3} | {:>6.3} | {:>7.3} |\n",
                    task, name, sc.em, sc.f1, sc.rouge_l
                );
            }
        }
    }
    s
}

/// Training-CE curves (smoothed over raw) and validation CE of the three runs in one PNG.
fn plot_runs(runs: &Path, png: &Path) -> anyhow::Result<()> {
    let dirs = [
        ("teacher", runs.join("teacher")),
        ("student CE", runs.join("student-ce")),
        ("student KD", runs.join("student-kd")),
    ];
    let series: Vec<(&str, &Path)> = dirs.iter().map(|(n, d)| (*n, d.as_path())).collect();
    edkd_trainer::observe::plot_runs(png, &series, "ce", "edkd demo")
        .with_context(|| format!("writing {}", png.display()))?;
    Ok(())
}
