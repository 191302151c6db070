//! `kd-real.md`: the report as a reader sees it, from the command line that reproduces it
//! to the facts the conclusions rest on.

use std::fmt::Write as _;

use super::arms::Init;
use super::report::{KdRealReport, ci, count, difference_table, score_table};

/// The commentary's facts, computed (so that they cannot disagree with the tables).
fn findings(r: &KdRealReport) -> Vec<String> {
    let mut out = Vec::new();
    for d in &r.differences {
        let l = &d.metrics[0];
        let verdict = if l.contains(0.0) {
            "inside the 95% interval of no difference"
        } else if l.mean > 0.0 {
            "resolved: a is better"
        } else {
            "resolved: b is better"
        };
        out.push(format!(
            "{}: ROUGE-L {:+.3} [{:+.3}, {:+.3}], {verdict}.",
            d.name, l.mean, l.lo, l.hi
        ));
    }
    if let Some(best) = r
        .arms
        .iter()
        .max_by(|a, b| a.scores.rouge_l.mean.total_cmp(&b.scores.rouge_l.mean))
    {
        let (s, t) = (best.scores.rouge_l.mean, r.teacher.rouge_l.mean);
        out.push(format!(
            "Best student by ROUGE-L: {} at {:.3}; the teacher scores {:.3} ({:+.3}, the student \
             at {:.0}% of the teacher).",
            best.name,
            s,
            t,
            s - t,
            if t > 0.0 { 100.0 * s / t } else { f64::NAN }
        ));
    }
    let l = &r.latency;
    out.push(format!(
        "Size: the student has {} parameters, the teacher {} ({:.2}x). First-token \
         latency at batch 1 on this machine ({} threads, median of {}): student {:.1} ms on \
         {:.0} input tokens, teacher {:.1} ms on {:.0} prompt tokens (its chat view), {:.2}x.",
        count(l.student_parameters),
        count(l.teacher_parameters),
        l.student_parameters as f64 / l.teacher_parameters.max(1) as f64,
        l.threads,
        l.examples,
        l.student_ms,
        l.mean_student_input_tokens,
        l.teacher_ms,
        l.mean_teacher_prompt_tokens,
        l.teacher_ms / l.student_ms.max(1e-9)
    ));
    out
}

pub fn markdown(r: &KdRealReport) -> String {
    let c = &r.config;
    let mut s = String::new();
    let teacher = c
        .teacher
        .file_stem()
        .map_or("the teacher".into(), |n| n.to_string_lossy());
    let _ = writeln!(
        s,
        "# kd-real: distilling {teacher} into encoder-decoder students\n"
    );
    let _ = writeln!(s, "Reproduce with:\n\n```\n{}\n```\n", r.command);
    let _ = writeln!(
        s,
        "Preset `{}`; machine: {}; device `{}`; total wall time {:.0} s ({:.1} h).\n",
        c.preset,
        r.machine,
        c.device,
        r.elapsed_s,
        r.elapsed_s / 3600.0
    );

    let _ = writeln!(s, "## Task: summarise a Python function in one sentence\n");
    let _ = writeln!(
        s,
        "Input: a function's source with its docstring removed; target: the docstring's first \
         sentence. Functions come from the Python sources on this machine, parsed with Python's \
         `ast` (`experiments/scripts/kd_real_extract.py`; test folders skipped). Dropped: \
         targets that do not read like a sentence of {}-{} words ({}), inputs over {} or \
         targets over {} tokens ({}), duplicate code ({}), a target sentence seen more than {} \
         times ({}), held-out examples whose target also occurs in training ({}). Splits are \
         by source group (a package's top-level module or subpackage, {} groups): test and \
         validation functions come from files no training example came from.\n",
        c.task.min_target_words,
        c.task.max_target_words,
        r.task.dropped_target_shape,
        c.task.max_input_tokens,
        c.task.max_target_tokens,
        r.task.dropped_too_long,
        r.task.dropped_duplicate_code,
        c.task.max_same_target,
        r.task.dropped_repeated_target,
        r.task.dropped_seen_target,
        r.task.groups
    );
    let _ = writeln!(
        s,
        "| source | licence | root | train | validation | test |\n|---|---|---|---|---|---|"
    );
    for src in &c.sources {
        let n = r
            .task
            .per_package
            .get(&src.name)
            .copied()
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "| {} | {} | `{}` | {} | {} | {} |",
            src.name,
            src.licence,
            src.root.display(),
            n[0],
            n[1],
            n[2]
        );
    }
    let _ = writeln!(
        s,
        "\n{} functions extracted; {} train (of a pool of {}), {} validation ({} groups), {} \
         test ({} groups); mean {:.0} input and {:.1} target tokens (the teacher's tokenizer).\n",
        r.task.extracted,
        r.task.train,
        r.task.train_pool,
        r.task.validation,
        r.task.validation_groups,
        r.task.test,
        r.task.test_groups,
        r.task.mean_input_tokens,
        r.task.mean_target_tokens
    );

    let _ = writeln!(s, "## Models and training\n");
    let _ = writeln!(
        s,
        "- Teacher: `{}` ({} parameters), reading its chat template with the instruction \
         below as the user turn; {}.\n- Students: encoder-decoder, \
         encoder from teacher layers {:?}, decoder from teacher layers {:?} (cross-attention \
         from the same layers' self-attention, output projection x {}), {} parameters. \
         Decoder-init students start from those weights (`edkd student init`); random-init \
         students have the same architecture with fresh weights.\n- Every arm: {} steps, lr \
         {} (cosine, {} warm-up), weight decay {}, batches of <= {} rows / {} tokens, {}; KD \
         arms `{}` CE + `{}` KD (forward KL over the teacher's top-{} + tail, T = {}) from the \
         teacher-logit cache annotated once.\n- Seeds: decoder-init {:?}, random-init {:?}.\n",
        c.teacher.display(),
        count(r.latency.teacher_parameters),
        if c.teacher_finetune_steps > 0 {
            format!(
                "first fine-tuned with cross-entropy for {} steps on view(input) ++ target of \
                 the training split",
                c.teacher_finetune_steps
            )
        } else {
            "not fine-tuned (the instruct model as published)".into()
        },
        c.encoder_layers,
        c.decoder_layers,
        c.cross_attn_scale,
        count(r.latency.student_parameters),
        c.train.steps,
        c.train.lr,
        c.train.warmup_steps,
        c.train.weight_decay,
        c.train.max_rows,
        c.train.max_tokens,
        c.train.precision,
        1.0 - c.train.alpha,
        c.train.alpha,
        c.top_k,
        c.train.temperature,
        c.decoder_seeds,
        c.random_seeds
    );

    let _ = writeln!(
        s,
        "The teacher's user turn (`{{input}}`: the function):\n\n````text\n{}\n````\n",
        c.instruction
    );
    let _ = writeln!(
        s,
        "## Results on {} held-out functions\n\nMeans with percentile-bootstrap 95% intervals \
         ({} resamples); greedy decoding, at most {} tokens, every prediction cut to its first \
         sentence.\n",
        r.teacher.examples,
        edkd_trainer::metrics::bootstrap::RESAMPLES,
        c.max_new_tokens
    );
    s += &score_table(r);
    let _ = writeln!(
        s,
        "\nPaired differences (bootstrap over the same test examples; `*`: the interval \
         excludes 0):\n"
    );
    s += &difference_table(r);
    let _ = writeln!(s, "\n## What the numbers say\n");
    for f in findings(r) {
        let _ = writeln!(s, "- {f}");
    }
    let _ = writeln!(
        s,
        "\n![validation curves](kd-real-curves.png)\n\nValidation cross-entropy on {} \
         validation functions every {} steps, per arm.\n",
        c.train.eval_examples, c.train.eval_every
    );

    let _ = writeln!(
        s,
        "## Wall time per phase\n\nSummed over the runs that worked on a phase (an interrupted run resumes).\n\n| phase | seconds |\n|---|---|"
    );
    for (name, secs) in &r.phases.0 {
        let _ = writeln!(s, "| {name} | {secs:.1} |");
    }
    let _ = writeln!(s, "\n## Samples\n");
    let decoder_kd = r
        .arms
        .iter()
        .find(|a| a.arm.init == Init::Decoder && a.arm.kd);
    for (i, t) in r.teacher_samples.iter().enumerate() {
        let _ = writeln!(
            s,
            "- `{}`\n  - reference: {}\n  - teacher: {}",
            t.id, t.reference, t.prediction
        );
        if let Some(p) = decoder_kd.and_then(|a| a.samples.get(i)) {
            let _ = writeln!(s, "  - decoder-init KD student: {}", p.prediction);
        }
    }
    let _ = writeln!(s, "\nTeacher ROUGE-L {}.", ci(&r.teacher.rouge_l));
    s
}
