//! Loss values and gradients against PyTorch (fixture: fixtures/make_loss_fixture.py),
//! masking, top-k with k = |V| equal to full forward KL, and AdamW against torch.optim.

use edkd_trainer::loss::{Divergence, KdLoss, TeacherTargets};
use edkd_trainer::optim::{AdamW, AdamWConfig};
use tch::{Kind, Tensor, nn::VarStore};

const TOL: f64 = 1e-5;
const TEMPERATURE: f64 = 2.0;
const TEACHER_VOCAB: i64 = 37;

struct Fixture(Vec<(String, Tensor)>);

impl Fixture {
    fn load() -> Self {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/losses.safetensors"
        );
        Self(Tensor::read_safetensors(path).unwrap())
    }
    fn get(&self, k: &str) -> Tensor {
        self.0
            .iter()
            .find(|(n, _)| n == k)
            .unwrap_or_else(|| panic!("fixture lacks {k}"))
            .1
            .shallow_clone()
    }
}

fn divergences() -> Vec<(&'static str, Divergence)> {
    vec![
        ("fkl", Divergence::ForwardKl),
        ("rkl", Divergence::ReverseKl),
        ("jsd_0.5", Divergence::Jsd { beta: 0.5 }),
        ("jsd_0.1", Divergence::Jsd { beta: 0.1 }),
        ("skl_0.1", Divergence::SkewKl { alpha: 0.1 }),
        ("srkl_0.1", Divergence::SkewReverseKl { alpha: 0.1 }),
    ]
}

fn kd(divergence: Divergence) -> KdLoss {
    KdLoss {
        divergence,
        temperature: TEMPERATURE,
        alpha: 1.0,
        label_smoothing: 0.0,
    }
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// Loss value and gradient w.r.t. the student logits.
fn value_and_grad(f: impl Fn(&Tensor) -> Tensor, z0: &Tensor) -> (Tensor, Tensor) {
    let z = z0.detach().set_requires_grad(true);
    let loss = f(&z);
    loss.backward();
    (loss.detach().reshape([1]), z.grad())
}

fn check(fx: &Fixture, name: &str, f: impl Fn(&Tensor) -> Tensor) {
    check_on(fx, "student_logits", name, f)
}

fn check_on(fx: &Fixture, input: &str, name: &str, f: impl Fn(&Tensor) -> Tensor) {
    let (loss, grad) = value_and_grad(f, &fx.get(input));
    let dl = max_diff(&loss, &fx.get(&format!("{name}.loss")));
    let dg = max_diff(&grad, &fx.get(&format!("{name}.grad")));
    assert!(
        dl <= TOL && dg <= TOL,
        "{name}: loss diff {dl:.2e}, grad diff {dg:.2e}"
    );
}

#[test]
fn divergences_match_pytorch_full_and_topk() {
    let fx = Fixture::load();
    let full = TeacherTargets::Full {
        logits: fx.get("teacher_logits"),
    };
    let topk = TeacherTargets::TopK {
        ids: fx.get("topk_ids"),
        logprobs: fx.get("topk_logprobs"),
        tail_logmass: fx.get("topk_tail"),
    };
    for (name, div) in divergences() {
        check(&fx, &format!("full.{name}"), |z| {
            kd(div).distill(z, &full, TEACHER_VOCAB)
        });
        check(&fx, &format!("topk.{name}"), |z| {
            kd(div).distill(z, &topk, TEACHER_VOCAB)
        });
    }
}

#[test]
fn a_confident_students_tail_matches_pytorch() {
    // Nine of ten rows leave ~1e-8 of their mass outside the teacher's top-k: `1 - sum` in
    // f32 would be noise there, so those rows take the exact path.
    let fx = Fixture::load();
    let topk = TeacherTargets::TopK {
        ids: fx.get("topk_ids"),
        logprobs: fx.get("topk_logprobs"),
        tail_logmass: fx.get("topk_tail"),
    };
    check_on(&fx, "student_logits_peaked", "topk_peaked.fkl", |z| {
        kd(Divergence::ForwardKl).distill(z, &topk, TEACHER_VOCAB)
    });
}

#[test]
fn total_rows_equals_the_masked_total_and_shares_one_log_softmax() {
    let fx = Fixture::load();
    let z = fx.get("student_logits").narrow(1, 0, TEACHER_VOCAB);
    let labels = fx.get("labels");
    let topk = TeacherTargets::TopK {
        ids: fx.get("topk_ids"),
        logprobs: fx.get("topk_logprobs"),
        tail_logmass: fx.get("topk_tail"),
    };
    // Temperature 1 and equal vocabularies: CE and KD read the same log-softmax.
    let loss = KdLoss {
        temperature: 1.0,
        alpha: 0.6,
        ..kd(Divergence::ForwardKl)
    };
    let rows = loss.total_rows(&z, &labels, Some((&topk, TEACHER_VOCAB)));
    let separate =
        loss.cross_entropy(&z, &labels) * 0.4 + loss.distill(&z, &topk, TEACHER_VOCAB) * 0.6;
    let d = max_diff(&rows.total, &separate);
    assert!(d <= 1e-6, "shared log-softmax total differs by {d}");
    let mask = Tensor::ones([z.size()[0], 1], (Kind::Bool, tch::Device::Cpu));
    let masked = loss.total(
        &z.unsqueeze(1),
        &labels.unsqueeze(1),
        &mask,
        Some((&topk, TEACHER_VOCAB)),
    );
    assert_eq!(masked.total.double_value(&[]), rows.total.double_value(&[]));
    assert_eq!(rows.tokens, z.size()[0]);
}

#[test]
fn cross_entropy_and_total_match_pytorch() {
    let fx = Fixture::load();
    let labels = fx.get("labels");
    let plain = KdLoss {
        label_smoothing: 0.0,
        ..kd(Divergence::ForwardKl)
    };
    check(&fx, "ce", |z| plain.cross_entropy(z, &labels));
    let smooth = KdLoss {
        label_smoothing: 0.1,
        ..plain
    };
    check(&fx, "ce_ls0.1", |z| smooth.cross_entropy(z, &labels));
    // The total over a padded [b, t] batch: padding rows hold garbage and must not count.
    let mixed = KdLoss {
        alpha: 0.7,
        ..plain
    };
    let full = TeacherTargets::Full {
        logits: fx.get("teacher_logits"),
    };
    check(&fx, "total.fkl.alpha0.7", |z| {
        let (n, v) = z.size2().unwrap();
        let garbage = Tensor::full([n, v], 1e3, (Kind::Float, tch::Device::Cpu));
        let padded = Tensor::stack(&[z, &garbage], 1); // [n, 2, v]: every 2nd position is padding
        let mask = Tensor::stack(
            &[
                Tensor::ones([n], (Kind::Bool, tch::Device::Cpu)),
                Tensor::zeros([n], (Kind::Bool, tch::Device::Cpu)),
            ],
            1,
        );
        let labels2 = Tensor::stack(&[&labels, &labels.zeros_like()], 1);
        mixed
            .total(&padded, &labels2, &mask, Some((&full, TEACHER_VOCAB)))
            .total
    });
}

#[test]
fn topk_with_k_equal_vocab_is_full_forward_kl() {
    let fx = Fixture::load();
    let a = fx.get("teacher_logits");
    let log_p = (&a / TEMPERATURE).log_softmax(-1, Kind::Float);
    let (logprobs, ids) = log_p.topk(TEACHER_VOCAB, -1, true, true);
    let all = TeacherTargets::TopK {
        ids,
        logprobs,
        tail_logmass: Tensor::full(
            [a.size()[0]],
            f64::NEG_INFINITY,
            (Kind::Float, tch::Device::Cpu),
        ),
    };
    let full = TeacherTargets::Full { logits: a };
    let z = fx.get("student_logits");
    let loss = kd(Divergence::ForwardKl);
    let d = max_diff(
        &loss.distill(&z, &all, TEACHER_VOCAB),
        &loss.distill(&z, &full, TEACHER_VOCAB),
    );
    assert!(d <= 1e-6, "top-|V| vs full: {d}");
}

#[test]
fn adamw_matches_torch_optim() {
    let fx = Fixture::load();
    let vs = VarStore::new(tch::Device::Cpu);
    let layer = vs.root() / "layer";
    let w = layer.var_copy("weight", &fx.get("adamw.w0"));
    let b = layer.var_copy("bias", &fx.get("adamw.b0"));
    let mut opt = AdamW::new(
        &vs,
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        },
    );
    for i in 0..3 {
        opt.zero_grad();
        // Set the fixed gradients through a linear surrogate: d/dw sum(w * g) = g.
        let loss = (&w * fx.get(&format!("adamw.grad_w.{i}"))).sum(Kind::Float)
            + (&b * fx.get(&format!("adamw.grad_b.{i}"))).sum(Kind::Float);
        loss.backward();
        opt.step(0.01);
    }
    let dw = max_diff(&w, &fx.get("adamw.w3"));
    let db = max_diff(&b, &fx.get("adamw.b3"));
    assert!(
        dw <= 1e-6 && db <= 1e-6,
        "AdamW drift: w {dw:.2e}, b {db:.2e}"
    );
}

#[test]
fn bad_hyperparameters_are_named() {
    let err = kd(Divergence::Jsd { beta: 1.0 }).validate().unwrap_err();
    assert!(err.contains("beta"), "{err}");
    let err = KdLoss {
        temperature: 0.0,
        ..kd(Divergence::ForwardKl)
    }
    .validate()
    .unwrap_err();
    assert!(err.contains("temperature"), "{err}");
}
