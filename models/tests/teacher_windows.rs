//! Sliding-window attention against transformers: each window fixture is scored past its
//! window, and the same weights with no window or a window one slot off score measurably
//! differently (so the parity tests pin the window and its boundary).

mod common;

use common::{WINDOW_CASES, expected, fixture, masked_max_diff};
use edkd_models::teacher::{CausalLm, CausalLmConfig};
use tch::nn::VarStore;

const WINDOW: i64 = 8;

/// A fixture's model with `window` on the layers that have one.
fn rewindowed(name: &str, window: Option<i64>) -> (VarStore, CausalLm) {
    let dir = fixture(name);
    let mut cfg = CausalLmConfig::from_folder(&dir).unwrap();
    for kind in cfg.features.layers.iter_mut() {
        if kind.window.is_some() {
            kind.window = window;
        }
    }
    let mut vs = VarStore::new(tch::Device::Cpu);
    let model = CausalLm::new(&vs.root(), &cfg);
    edkd_models::weights::load_folder(&mut vs, &dir).unwrap();
    (vs, model)
}

#[test]
fn window_fixtures_have_windowed_and_the_window_decides_the_logits() {
    for name in WINDOW_CASES {
        let cfg = CausalLmConfig::from_folder(&fixture(name)).unwrap();
        let windowed = (0..cfg.num_layers as usize)
            .filter(|&i| cfg.layer_kind(i).window == Some(WINDOW))
            .count();
        assert!(windowed > 0, "{name}: no layer has the window");
        let e = expected(&fixture(name));
        assert!(
            e.ids.size()[1] >= 5 * WINDOW,
            "{name}: too short to test the window"
        );
        for other in [None, Some(WINDOW - 1), Some(WINDOW + 1)] {
            let (_vs, model) = rewindowed(name, other);
            let logits = tch::no_grad(|| model.forward_padded(&e.ids, &e.valid));
            let diff = masked_max_diff(&logits, &e.logits, &e.valid);
            println!("{name}: window {other:?} instead of {WINDOW}: max diff {diff:.3}");
            assert!(
                diff > 1e-2,
                "{name}: window {other:?} scores like {WINDOW} (diff {diff})"
            );
        }
    }
}
