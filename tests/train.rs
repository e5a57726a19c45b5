//! Training: the optimizer and schedule against values computed by hand; exact resume; data
//! parallel against gradient accumulation; the run loop's checkpoints and its NaN handling.

use tinygpt::candle_core::{DType, Device, Tensor, Var};
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
    opt.save(&path, &params).unwrap();
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

#[test]
fn sum_of_squares_over_chunks_equals_the_sum_by_hand() {
    use tinygpt::train::sum_of_squares;
    use tinygpt_tests::sevens;
    let dev = Device::Cpu;
    // 200,004 numbers: three full CPU chunks of 65,536 and a partial one; 28,572 runs of seven.
    let (x, want) = sevens(200_004);
    assert_eq!(want, 800_016.0);
    let t = Tensor::from_vec(x, (4, 50_001, 1), &dev).unwrap();
    let got = sum_of_squares(&t).unwrap();
    assert_eq!(got.dims(), &[] as &[usize]);
    assert_eq!(got.to_scalar::<f32>().unwrap(), 800_016.0);
    // A strided view and f64 numbers take the same path (made contiguous f32 first).
    let col = Tensor::new(&[[1f64, 2.0], [3.0, 4.0]], &dev)
        .unwrap()
        .t()
        .unwrap();
    assert_eq!(
        sum_of_squares(&col).unwrap().to_scalar::<f32>().unwrap(),
        30.0
    );
    let empty = Tensor::zeros(0, DType::F32, &dev).unwrap();
    assert_eq!(
        sum_of_squares(&empty).unwrap().to_scalar::<f32>().unwrap(),
        0.0
    );
    // Gradient-like numbers, 4M of them: within 1e-6 of the sum in f64. (One f32 running sum
    // drifts by far more: every addition rounds, and the sum grows large against each new term.)
    let n = 1 << 22;
    let x: Vec<f32> = (0..n).map(|i| (i as f32 * 0.618).sin() * 1e-3).collect();
    let want: f64 = x.iter().map(|&a| a as f64 * a as f64).sum();
    let t = Tensor::from_vec(x, n, &dev).unwrap();
    let got = sum_of_squares(&t).unwrap().to_scalar::<f32>().unwrap() as f64;
    assert!((got - want).abs() < 1e-6 * want, "{got} vs {want}");
    let naive = t.sqr().unwrap().sum_all().unwrap();
    println!(
        "Σx² of {n} numbers: f64 {want}, ours {got}, sqr().sum_all() {}",
        naive.to_scalar::<f32>().unwrap()
    );
}

/// Shards of the TinyStories sample tokenized with a small BPE trained on it, in a temp folder
/// that also holds the tokenizer.json (as `prepare --tokenizer bpe:N` leaves it).
fn small_shards() -> tempfile::TempDir {
    use tinygpt::data::{prepare, PrepareOptions, Source};
    let dir = tempfile::tempdir().unwrap();
    let source = Source::Dir(tinygpt_tests::tinystories_dir());
    let stories = source.stories(tinygpt::data::Split::Val).unwrap();
    let texts: Vec<&str> = stories.iter().map(String::as_str).collect();
    let bpe = tinygpt::tokenizer::Bpe::train(&texts, 300, &["<|endoftext|>".to_string()]).unwrap();
    let tok = tinygpt::Tokenizer::from_bpe(bpe, "bpe:300").unwrap();
    tok.save(&dir.path().join("tokenizer.json")).unwrap();
    let options = PrepareOptions {
        shard_tokens: 400_000,
        force: false,
        progress: false,
    };
    prepare(&source, &tok, dir.path(), &options).unwrap();
    dir
}

fn tiny_run(max_steps: u64) -> tinygpt::train::TrainConfig {
    tinygpt::train::TrainConfig::recipe(
        tinygpt::GptConfig::gpt2(2, 2, 32, 64, 300),
        4,
        2,
        max_steps,
    )
}

#[test]
fn evaluation_is_the_mean_loss_over_every_validation_target() {
    use tinygpt::data::loader::ValLoader;
    let data = small_shards();
    let dev = Device::Cpu;
    let model = tinygpt::Gpt::new(&tinygpt::GptConfig::gpt2(2, 2, 32, 64, 300), 3, &dev).unwrap();
    // The reference: each batch's mean loss (the training loss), weighted by its targets.
    let (mut nats, mut count, mut batches) = (0f64, 0f64, 0);
    for batch in ValLoader::open(data.path(), 4, 64, 0, 1, None).unwrap() {
        let loss = model.loss(&batch.to_tensors(&dev).unwrap()).unwrap();
        let n = batch.n_targets() as f64;
        nats += loss.to_scalar::<f32>().unwrap() as f64 * n;
        count += n;
        batches += 1;
        if batches == 1 {
            let (first, _) =
                tinygpt::train::evaluate(&model, data.path(), 4, None, Some(1)).unwrap();
            assert!(
                (first - nats / count).abs() < 1e-5 * first,
                "the first batch alone: {first} vs {}",
                nats / count
            );
        }
    }
    assert!(
        batches > 2,
        "the sample's validation split fills {batches} batches"
    );
    let (loss, bpb) = tinygpt::train::evaluate(&model, data.path(), 4, None, None).unwrap();
    assert!(
        (loss - nats / count).abs() < 1e-5 * loss,
        "evaluate {loss} vs Σ batch loss · targets / Σ targets {}",
        nats / count
    );
    let manifest = tinygpt::data::Manifest::load(data.path()).unwrap();
    let bytes = manifest.splits[&tinygpt::data::Split::Val].text_bytes as f64;
    let expected_bpb = nats / std::f64::consts::LN_2 / bytes;
    assert!(
        (bpb - expected_bpb).abs() < 1e-5 * bpb,
        "{bpb} vs {expected_bpb}"
    );
}

#[test]
fn resuming_from_a_checkpoint_reproduces_the_uninterrupted_run_bit_for_bit() {
    use tinygpt::train::Trainer;
    let data = small_shards();
    let dev = Device::Cpu;
    let mut straight = Trainer::new(tiny_run(8), data.path(), &[dev.clone()]).unwrap();
    let expected: Vec<f32> = (0..8).map(|_| straight.step().unwrap().loss).collect();
    assert!(expected[7] < expected[0], "the loss falls: {expected:?}");

    let ckpt = data.path().join("ckpt");
    let mut first = Trainer::new(tiny_run(8), data.path(), &[dev.clone()]).unwrap();
    let mut losses: Vec<f32> = (0..4).map(|_| first.step().unwrap().loss).collect();
    first.save(&ckpt).unwrap();
    first.save(&ckpt).unwrap(); // saving again replaces the folder whole
    drop(first);
    let mut resumed = Trainer::resume(&ckpt, data.path(), &[dev.clone()]).unwrap();
    assert_eq!(resumed.steps_done(), 4);
    losses.extend((0..4).map(|_| resumed.step().unwrap().loss));
    assert_eq!(losses, expected, "resumed run");
    // The final weights agree too.
    for ((name, a), (_, b)) in straight
        .model()
        .params()
        .iter()
        .zip(resumed.model().params().iter())
    {
        assert_eq!(values(a), values(b), "{name}");
    }
    // Evaluation: bits per byte is the summed loss in bits over the validation text's bytes.
    let (loss, bpb) = resumed.evaluate().unwrap();
    let manifest = tinygpt::data::Manifest::load(data.path()).unwrap();
    let val = &manifest.splits[&tinygpt::data::Split::Val];
    let expected_bpb = loss * val.tokens as f64 / std::f64::consts::LN_2 / val.text_bytes as f64;
    assert!(
        loss.is_finite() && (bpb - expected_bpb).abs() / expected_bpb < 0.02,
        "loss {loss}, bpb {bpb} vs {expected_bpb}"
    );
    // A folder that is not a training checkpoint.
    let err = Trainer::resume(data.path(), data.path(), &[dev.clone()])
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("trainer.json") && err.contains("nothing to resume"),
        "{err}"
    );
}

#[test]
fn a_tiny_model_overfits_a_single_batch() {
    use tinygpt::data::Batch;
    use tinygpt::train::{clip_factor, grad_norm};
    let dev = Device::Cpu;
    let model = tinygpt::Gpt::new(&tinygpt::GptConfig::gpt2(2, 2, 32, 32, 50), 5, &dev).unwrap();
    let row: Vec<u32> = (0..33).map(|i| (i * 7 + 3) % 50).collect();
    let (doc, pos) = tinygpt::data::document_ids(&row[..32], 0);
    let batch = Batch {
        b: 1,
        t: 32,
        x: row[..32].to_vec(),
        y: row[1..].to_vec(),
        doc,
        pos,
    }
    .to_tensors(&dev)
    .unwrap();
    let mut opt = AdamW::new(AdamWConfig {
        weight_decay: 0.0,
        ..AdamWConfig::default()
    });
    let mut loss = f32::MAX;
    for _ in 0..300 {
        let l = model.loss(&batch).unwrap();
        loss = l.to_scalar::<f32>().unwrap();
        if loss < 0.1 {
            break;
        }
        let grads = l.backward().unwrap();
        let norm = grad_norm(model.params(), &grads).unwrap();
        opt.step(model.params(), &grads, 1e-2, clip_factor(norm, 1.0))
            .unwrap();
    }
    assert!(
        loss < 0.1,
        "after training on one batch the loss is still {loss}"
    );
}

#[test]
fn two_data_parallel_workers_equal_one_worker_with_the_whole_batch() {
    use tinygpt::train::Trainer;
    let data = small_shards();
    // 1 worker × 4 rows vs 2 workers × 2 rows: the same 4 rows per step (worker r reads the r-th
    // half of each chunk), so the same averaged gradient and the same updates. Without biases:
    // the key bias has a gradient of exactly zero in exact arithmetic (softmax ignores a constant
    // added to every score), so its computed gradient is rounding noise, which Adam's first step
    // (±lr whatever the gradient's size) would blow up into differences of the learning rate's size.
    let one = tinygpt::train::TrainConfig {
        grad_accum: 1,
        model: tinygpt::GptConfig {
            bias: false,
            ..tiny_run(3).model
        },
        ..tiny_run(3)
    };
    let two = tinygpt::train::TrainConfig {
        batch_size: 2,
        ..one.clone()
    };
    let mut single = Trainer::new(one, data.path(), &[Device::Cpu]).unwrap();
    let mut pair = Trainer::new(two, data.path(), &[Device::Cpu, Device::Cpu]).unwrap();
    assert_eq!(pair.world_size(), 2);
    assert_eq!(single.tokens_per_step(), pair.tokens_per_step());
    for step in 0..3 {
        let (a, b) = (single.step().unwrap(), pair.step().unwrap());
        assert!(
            (a.loss - b.loss).abs() < 1e-5
                && (a.grad_norm - b.grad_norm).abs() < 1e-4 * a.grad_norm,
            "step {step}: loss {} vs {}, norm {} vs {}",
            a.loss,
            b.loss,
            a.grad_norm,
            b.grad_norm
        );
        assert_eq!(a.tokens, b.tokens);
    }
    let mut worst = 0f32;
    for ((name, a), (_, b)) in single
        .model()
        .params()
        .iter()
        .zip(pair.model().params().iter())
    {
        for (x, y) in values(a).iter().zip(values(b)) {
            worst = worst.max((x - y).abs());
            assert!((x - y).abs() <= 1e-5 + 1e-4 * x.abs(), "{name}: {x} vs {y}");
        }
    }
    // …and the weights did move (a test of equality between two frozen models proves nothing).
    let fresh = tinygpt::Gpt::new(&single.config().model, 1337, &Device::Cpu).unwrap();
    let moved = values(fresh.params().get("wte.weight").unwrap())
        != values(pair.model().params().get("wte.weight").unwrap());
    assert!(moved);
    println!("largest difference between the two runs' weights: {worst:e}");

    // A two-worker checkpoint resumes only on two workers.
    let ckpt = data.path().join("dp-ckpt");
    pair.save(&ckpt).unwrap();
    let err = Trainer::resume(&ckpt, data.path(), &[Device::Cpu])
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("2 devices"), "{err}");
    let resumed = Trainer::resume(&ckpt, data.path(), &[Device::Cpu, Device::Cpu]).unwrap();
    assert_eq!(resumed.steps_done(), 3);
}

#[test]
fn the_run_loop_keeps_history_and_best_and_never_saves_a_broken_model() {
    use tinygpt::train::{run, Event, RunOptions, StopReason, Trainer};
    let data = small_shards();
    let out = data.path().join("run");
    let mut trainer = Trainer::new(tiny_run(6), data.path(), &[Device::Cpu]).unwrap();
    let options = RunOptions {
        eval_interval: 2,
        keep_last: 2,
        step_budget: Some(4),
        ..RunOptions::new(&out)
    };
    let mut evaluated = vec![];
    let summary = run(&mut trainer, &options, |e| {
        if let Event::Step(r) = e {
            if r.val_loss.is_some() {
                evaluated.push(r.step)
            }
        }
    })
    .unwrap();
    assert_eq!(summary.reason, StopReason::StepBudget);
    assert_eq!(evaluated, vec![2, 4]);
    let lines = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 4);
    assert!(out
        .join("history/step-00000002/model.safetensors")
        .is_file());
    assert!(out.join("history/step-00000004/trainer.json").is_file());
    let (best_step, best_loss) = summary.best.unwrap();
    assert!(best_loss.is_finite() && (best_step == 2 || best_step == 4));
    assert!(
        out.join("best/best.json").is_file() && out.join("best/optimizer.safetensors").is_file()
    );

    // The weights go bad (as after an overflow): every step is skipped, nothing is saved, and
    // after `max_skipped` steps in a row the run gives up, naming the checkpoint to go back to.
    let before = std::fs::read(out.join("checkpoint/model.safetensors")).unwrap();
    let wte = trainer.model().params().get("wte.weight").unwrap();
    wte.set(&(wte.as_tensor() * f64::NAN).unwrap()).unwrap();
    let mut messages = vec![];
    let options = RunOptions {
        eval_interval: 1,
        max_skipped: 3,
        step_budget: None,
        ..options
    };
    let err = run(&mut trainer, &options, |e| {
        if let Event::Message(m) = e {
            messages.push(m)
        }
    })
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("diverged") && err.contains("checkpoint"),
        "{err}"
    );
    assert_eq!(messages.len(), 3, "{messages:?}");
    assert!(messages[0].contains("not finite"), "{messages:?}");
    assert_eq!(trainer.steps_done(), 4);
    let records = tinygpt::train::read_metrics(&out.join("metrics.jsonl")).unwrap();
    assert_eq!(records.len(), 7);
    assert!(records[6].skipped && records[6].loss.is_nan() && records[3].val_loss.is_some());
    assert_eq!(
        std::fs::read(out.join("checkpoint/model.safetensors")).unwrap(),
        before,
        "the good checkpoint was kept"
    );
    let resumed = Trainer::resume(&out.join("checkpoint"), data.path(), &[Device::Cpu]).unwrap();
    assert_eq!(resumed.steps_done(), 4);
}

#[test]
fn run_configs_no_run_can_use_are_refused_by_name() {
    assert!(tiny_run(10).validate().is_ok());
    type Spoil = fn(&mut tinygpt::train::TrainConfig);
    let cases: [(&str, Spoil); 10] = [
        ("batch_size", |c| c.batch_size = 0),
        ("max_lr", |c| c.max_lr = -1e-3),
        ("min_lr", |c| c.min_lr = 1.0),
        ("beta1", |c| c.optimizer.beta1 = 1.5),
        ("beta2", |c| c.optimizer.beta2 = 1.0),
        ("eps", |c| c.optimizer.eps = 0.0),
        ("weight_decay", |c| c.optimizer.weight_decay = -0.1),
        ("grad_clip", |c| c.grad_clip = 0.0),
        ("grad_clip", |c| c.grad_clip = f64::INFINITY),
        ("dtype", |c| c.dtype = "f64".into()),
    ];
    for (name, spoil) in cases {
        let mut config = tiny_run(10);
        spoil(&mut config);
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains(name), "{name}: {err}");
    }
}

#[test]
fn a_gpu_out_of_memory_names_a_smaller_micro_batch_with_the_same_rows_per_step() {
    use tinygpt::train::with_memory_advice;
    // What candle reports when cudarc cannot allocate a buffer.
    let oom = || {
        tinygpt::Error::Candle(tinygpt::candle_core::Error::Msg(
            "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")".into(),
        ))
    };
    let mut config = tiny_run(10); // micro-batches of 4 rows × 64 tokens, 2 per step
    let advice = with_memory_advice(oom(), &config).to_string();
    assert!(
        advice.contains("CUDA_ERROR_OUT_OF_MEMORY")
            && advice.contains("4 rows × 64 tokens")
            && advice.contains("--batch-size 2 --grad-accum 4")
            && advice.contains("same 8 rows per step"),
        "{advice}"
    );
    // The smallest factor keeps the rows per step whole: 9 = 3 · 3, and a prime goes to 1 row.
    config.batch_size = 9;
    let advice = with_memory_advice(oom(), &config).to_string();
    assert!(advice.contains("--batch-size 3 --grad-accum 6"), "{advice}");
    config.batch_size = 7;
    let advice = with_memory_advice(oom(), &config).to_string();
    assert!(
        advice.contains("--batch-size 1 --grad-accum 14"),
        "{advice}"
    );
    config.batch_size = 1;
    let advice = with_memory_advice(oom(), &config).to_string();
    assert!(advice.contains("one row is the smallest"), "{advice}");
    // cuBLAS's words for the same; any other error passes through as it was.
    let cublas = tinygpt::Error::Invalid("CublasError(CUBLAS_STATUS_ALLOC_FAILED)".into());
    assert!(with_memory_advice(cublas, &config)
        .to_string()
        .contains("ran out of memory"));
    let other = with_memory_advice(tinygpt::Error::Invalid("no such file".into()), &config);
    assert_eq!(other.to_string(), "no such file");
}
