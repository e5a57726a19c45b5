//! The optimizer and schedule against values computed by hand.

use tinygpt::candle_core::{Device, Tensor, Var};
use tinygpt::model::params::{Init, ParamBuilder, WeightSource};
use tinygpt::train::{clip_factor, grad_norm, AdamW, AdamWConfig};

/// Two weights: a matrix (decays) and a vector (does not), with a loss whose gradient we choose:
/// `loss = Σ w ⊙ c` has gradient `c`.
fn setup() -> (tinygpt::model::params::Params, Tensor, Tensor) {
    let tensors = [
        (
            "matrix".to_string(),
            Tensor::new(&[[1.0f32, -2.0], [0.5, 3.0]], &Device::Cpu).unwrap(),
        ),
        (
            "vector".to_string(),
            Tensor::new(&[1.0f32, -1.0], &Device::Cpu).unwrap(),
        ),
    ];
    let mut p = ParamBuilder::new(
        WeightSource::Loaded(tensors.into_iter().collect()),
        &Device::Cpu,
    );
    let m = p.get("matrix", &[2, 2], Init::Zeros).unwrap();
    let v = p.get("vector", &[2], Init::Zeros).unwrap();
    (p.finish().unwrap(), m, v)
}

fn grads_for(
    m: &Tensor,
    v: &Tensor,
    cm: &[[f32; 2]; 2],
    cv: &[f32; 2],
) -> tinygpt::candle_core::backprop::GradStore {
    let loss = ((m * Tensor::new(cm, &Device::Cpu).unwrap())
        .unwrap()
        .sum_all()
        .unwrap()
        + (v * Tensor::new(cv, &Device::Cpu).unwrap())
            .unwrap()
            .sum_all()
            .unwrap())
    .unwrap();
    loss.backward().unwrap()
}

fn values(var: &Var) -> Vec<f32> {
    var.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn adamw_matches_hand_computed_updates_and_decays_only_matrices() {
    let (params, m, v) = setup();
    let cfg = AdamWConfig {
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
    };
    let mut opt = AdamW::new(cfg);
    let lr = 0.01;
    // Step 1: m̂ = g and v̂ = g², so the step is lr·g/(|g| + ε) ≈ lr·sign(g).
    let g1m = [[0.5f32, -1.0], [2.0, 0.25]];
    let g1v = [4.0f32, -0.1];
    opt.step(&params, &grads_for(&m, &v, &g1m, &g1v), lr, 1.0)
        .unwrap();
    let matrix = values(params.get("matrix").unwrap());
    let vector = values(params.get("vector").unwrap());
    // matrix[0]: 1·(1 − 0.01·0.1) − 0.01·sign(0.5) = 0.999 − 0.01 = 0.989
    let expect_m = [
        0.989f32,
        -2.0 * 0.999 + 0.01,
        0.5 * 0.999 - 0.01,
        3.0 * 0.999 - 0.01,
    ];
    for (a, b) in matrix.iter().zip(expect_m) {
        assert!((a - b).abs() < 1e-6, "{matrix:?} vs {expect_m:?}");
    }
    // The vector does not decay: 1 − 0.01, −1 + 0.01.
    assert!(
        (vector[0] - 0.99).abs() < 1e-6 && (vector[1] + 0.99).abs() < 1e-6,
        "{vector:?}"
    );
    // Step 2 with gradient 1 on the vector's first weight, after gradient 4 at step 1:
    // m = 0.9·0.4 + 0.1·1 = 0.46, v = 0.95·0.8 + 0.05·1 = 0.81 (0.05·16 = 0.8 after step 1),
    // m̂ = 0.46/0.19, v̂ = 0.81/0.0975, step = 0.01 · m̂ / (√v̂ + ε).
    opt.step(&params, &grads_for(&m, &v, &g1m, &[1.0, -0.1]), lr, 1.0)
        .unwrap();
    let expected = 0.99 - 0.01 * (0.46f64 / 0.19) / ((0.81f64 / 0.0975).sqrt() + 1e-8);
    let got = values(params.get("vector").unwrap())[0] as f64;
    assert!((got - expected).abs() < 1e-6, "{got} vs {expected}");
    assert_eq!(opt.steps_done(), 2);
}

#[test]
fn optimizer_state_round_trips_and_refuses_another_model() {
    let dir = tempfile::tempdir().unwrap();
    let (params, m, v) = setup();
    let mut opt = AdamW::new(AdamWConfig::default());
    opt.step(
        &params,
        &grads_for(&m, &v, &[[1.0, 2.0], [3.0, 4.0]], &[1.0, 1.0]),
        1e-3,
        1.0,
    )
    .unwrap();
    let path = dir.path().join("optimizer.safetensors");
    opt.save(&path).unwrap();
    // Two optimizers, one restored, take the same next step.
    let mut restored = AdamW::load(AdamWConfig::default(), &path, &params).unwrap();
    assert_eq!(restored.steps_done(), 1);
    let (params2, m2, v2) = setup();
    let snapshot: Vec<Vec<f32>> = params.iter().map(|(_, var)| values(var)).collect();
    for ((_, var), vals) in params2.iter().zip(&snapshot) {
        var.set(&Tensor::from_slice(vals, var.shape(), &Device::Cpu).unwrap())
            .unwrap();
    }
    let g = [[0.3f32, -0.2], [0.1, 0.9]];
    opt.step(&params, &grads_for(&m, &v, &g, &[0.5, 0.5]), 1e-3, 1.0)
        .unwrap();
    restored
        .step(&params2, &grads_for(&m2, &v2, &g, &[0.5, 0.5]), 1e-3, 1.0)
        .unwrap();
    for ((name, a), (_, b)) in params.iter().zip(params2.iter()) {
        assert_eq!(values(a), values(b), "{name}");
    }
    // State for a model with other weights.
    let other = {
        let t = [(
            "vector".to_string(),
            Tensor::new(&[1.0f32, 2.0, 3.0], &Device::Cpu).unwrap(),
        )];
        let mut p = ParamBuilder::new(WeightSource::Loaded(t.into_iter().collect()), &Device::Cpu);
        p.get("vector", &[3], Init::Zeros).unwrap();
        p.finish().unwrap()
    };
    let err = AdamW::load(AdamWConfig::default(), &path, &other)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("optimizer.safetensors") && err.contains("vector"),
        "{err}"
    );
}

#[test]
fn gradient_norm_and_clipping_factor() {
    let (params, m, v) = setup();
    // ‖g‖² = 9 + 16 (matrix: 3, 4, 0, 0) + 0 (vector) → 5.
    let grads = grads_for(&m, &v, &[[3.0, 4.0], [0.0, 0.0]], &[0.0, 0.0]);
    let norm = grad_norm(&params, &grads).unwrap();
    assert!((norm - 5.0).abs() < 1e-6);
    assert!((clip_factor(norm, 1.0) - 0.2).abs() < 1e-6);
    assert_eq!(clip_factor(0.5, 1.0), 1.0);
}
