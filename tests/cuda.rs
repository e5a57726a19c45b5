//! The model on a CUDA GPU, against the same model on the CPU. Compiled only with
//! `--features cuda` (run by `scripts/gpu-check.sh` on a GPU machine). Run them one at a time
//! (`--test-threads 1`, as the script does): they share one GPU, and one of them flips the
//! process-wide TF32 setting that the exact f32 comparisons of the others must not see.
#![cfg(feature = "cuda")]

use tinygpt::candle_core::{DType, Device, Tensor};
use tinygpt::data::loader::Batch;
use tinygpt::model::{Gpt, GptConfig, KvCache};
use tinygpt_tests::{max_abs_diff, packed_batch, packed_vs_separate, three_stories};

fn gpu() -> Device {
    Device::new_cuda(0).expect("a CUDA GPU (these tests run on GPU machines only)")
}

fn configs() -> Vec<GptConfig> {
    vec![
        GptConfig::gpt2(2, 4, 64, 64, 96),
        GptConfig::llama(2, 4, 2, 64, 96, 64, 96),
    ]
}

fn sample_batch() -> Batch {
    let rows: Vec<Vec<u32>> = (0..3u32)
        .map(|r| {
            (0..65u32)
                .map(|i| {
                    if (i + 7 * r) % 23 == 0 {
                        0
                    } else {
                        (i * 31 + r * 17) % 95 + 1
                    }
                })
                .collect()
        })
        .collect();
    packed_batch(&rows, 0)
}

#[test]
fn gpu_logits_and_gradients_match_the_cpu() {
    let batch = sample_batch();
    for cfg in configs() {
        let cpu = Gpt::new(&cfg, 1, &Device::Cpu).unwrap();
        let cuda = Gpt::new(&cfg, 1, &gpu()).unwrap();
        let (bc, bg) = (
            batch.to_tensors(&Device::Cpu).unwrap(),
            batch.to_tensors(&gpu()).unwrap(),
        );
        let lc = cpu.forward(&bc.x, &bc.doc, &bc.pos).unwrap();
        let lg = cuda.forward(&bg.x, &bg.doc, &bg.pos).unwrap();
        assert!(
            max_abs_diff(&lc, &lg) < 1e-3,
            "{cfg:?}: logits differ by {}",
            max_abs_diff(&lc, &lg)
        );
        let gc = cpu.loss(&bc).unwrap().backward().unwrap();
        let gg = cuda.loss(&bg).unwrap().backward().unwrap();
        for (name, var) in cuda.params().iter() {
            let g = gg
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {name} on the GPU"));
            let reference = gc.get(cpu.params().get(name).unwrap().as_tensor()).unwrap();
            let scale = max_abs_diff(reference, &reference.zeros_like().unwrap()).max(1e-6);
            assert!(
                max_abs_diff(g, reference) / scale < 1e-3,
                "{name}: GPU gradient differs"
            );
        }
    }
}

#[test]
fn bf16_loss_agrees_with_f32_and_every_weight_gets_a_gradient() {
    let batch = sample_batch().to_tensors(&gpu()).unwrap();
    for cfg in configs() {
        let mut model = Gpt::new(&cfg, 2, &gpu()).unwrap();
        let f32_loss = model.loss(&batch).unwrap().to_scalar::<f32>().unwrap();
        model.set_compute_dtype(DType::BF16);
        let loss = model.loss(&batch).unwrap();
        let bf16_loss = loss
            .to_dtype(DType::F32)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            (f32_loss - bf16_loss).abs() < 0.02 * f32_loss,
            "f32 {f32_loss} vs bf16 {bf16_loss}"
        );
        let grads = loss.backward().unwrap();
        for (name, var) in model.params().iter() {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("bf16: no gradient for {name}"));
            assert_eq!(g.dtype(), DType::F32, "{name}: master gradients are f32");
            let v: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
            assert!(
                v.iter().all(|x| x.is_finite()) && v.iter().any(|&x| x != 0.0),
                "bf16: bad gradient for {name}"
            );
        }
    }
}

#[test]
fn gpu_packed_rows_equal_separate_stories_and_kv_cache_equals_recompute() {
    let dev = gpu();
    let row = |v: &[u32]| Tensor::from_slice(v, (1, v.len()), &dev).unwrap();
    let packed: Vec<u32> = three_stories(0).concat();
    for cfg in configs() {
        let model = Gpt::new(&cfg, 3, &dev).unwrap();
        assert!(
            packed_vs_separate(&model, &three_stories(0), 0) < 1e-4,
            "packed != separate on the GPU"
        );
        let s = &packed[..9];
        let full = model
            .forward(&row(s), &row(&[0; 9]), &row(&(0..9).collect::<Vec<_>>()))
            .unwrap();
        let mut cache = KvCache::default();
        for i in 0..s.len() {
            let step = model
                .forward_cached(&row(&s[i..i + 1]), &mut cache)
                .unwrap();
            assert!(
                max_abs_diff(&step, &full.narrow(1, i, 1).unwrap().squeeze(1).unwrap()) < 1e-4,
                "KV cache step {i}"
            );
        }
    }
}

#[cfg(feature = "nccl")]
#[test]
fn nccl_with_one_gpu_sums_and_broadcasts_as_the_identity() {
    use tinygpt::train::collective::{Collective, Nccl};
    let group = Nccl::group(&[gpu()]).unwrap();
    assert_eq!((group[0].rank(), group[0].world_size()), (0, 1));
    let t = Tensor::new(&[1f32, -2.5, 3.0, 1e-7], &gpu()).unwrap();
    let sum: Vec<f32> = group[0].all_reduce_sum(&t).unwrap().to_vec1().unwrap();
    assert_eq!(sum, vec![1.0, -2.5, 3.0, 1e-7]);
    let b: Vec<f32> = group[0].broadcast(&t).unwrap().to_vec1().unwrap();
    assert_eq!(b, vec![1.0, -2.5, 3.0, 1e-7]);
}

#[test]
fn fused_cuda_kernels_equal_the_composed_formulas_in_value_and_gradient() {
    use tinygpt::candle_core::Var;
    use tinygpt::model::{attention, fused, gpt};
    let dev = gpu();
    let data = sample_batch().to_tensors(&dev).unwrap();
    let t = data.x.dim(1).unwrap();
    // Softmax with the document mask over (B, H, T, T) scores, in f32 and in bf16.
    for (dtype, tol) in [(DType::F32, 1e-5f32), (DType::BF16, 2e-2)] {
        let mask = attention::document_mask(&data.doc, dtype).unwrap();
        let scores = Tensor::randn(0f32, 2.0, (3, 2, t, t), &dev).unwrap();
        let scores = Var::from_tensor(&scores.to_dtype(dtype).unwrap()).unwrap();
        let weights = Tensor::randn(0f32, 1.0, (3, 2, t, t), &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        assert!(fused::available(&scores));
        let a = fused::masked_softmax(&scores, &mask).unwrap();
        let b = attention::softmax_last_dim(&scores.broadcast_add(&mask).unwrap()).unwrap();
        assert!(
            max_abs_diff(&a, &b) < tol,
            "{dtype:?} softmax: {}",
            max_abs_diff(&a, &b)
        );
        let grad = |y: Tensor| {
            let g = (y * &weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            g.get(&scores).unwrap().clone()
        };
        let (ga, gb) = (grad(a), grad(b));
        assert!(
            max_abs_diff(&ga, &gb) < 4.0 * tol,
            "{dtype:?} softmax gradient: {}",
            max_abs_diff(&ga, &gb)
        );
    }
    // Cross-entropy with an ignored target, on logits as wide as GPT-2's vocabulary (seeded, one
    // row's softmax near 1).
    let x = tinygpt_tests::wide_logits(6, 50304);
    let logits = Var::from_tensor(&Tensor::from_vec(x, (6, 50304), &dev).unwrap()).unwrap();
    let targets = Tensor::new(&[3u32, 0, 50303, u32::MAX, 7, 7], &dev).unwrap();
    let (sum, count) = tinygpt::model::cross_entropy_sum(&logits, &targets).unwrap();
    let (sum2, count2) = gpt::cross_entropy_composed(&logits, &targets).unwrap();
    assert_eq!(count.to_scalar::<f32>().unwrap(), 5.0);
    assert_eq!(count2.to_scalar::<f32>().unwrap(), 5.0);
    let (s1, s2) = (
        sum.to_scalar::<f32>().unwrap(),
        sum2.to_scalar::<f32>().unwrap(),
    );
    assert!((s1 - s2).abs() < 1e-4 * s2.abs(), "{s1} vs {s2}");
    // Relative to each gradient: both sides' f32 sums over 50,304 exponentials err by parts in a
    // million (the backward takes its log-normaliser from the loss; see tests/model.rs).
    let (g1, g2) = (sum.backward().unwrap(), sum2.backward().unwrap());
    let (a, b) = (g1.get(&logits).unwrap(), g2.get(&logits).unwrap());
    let worst = tinygpt_tests::max_share_of_bound(a, b, 1e-4, 1e-8);
    assert!(
        worst <= 1.0,
        "cross-entropy gradient: {worst} × (1e-4 relative + 1e-8)"
    );
    let rows: Vec<Vec<f32>> = a.to_vec2().unwrap();
    assert!(rows[3].iter().all(|&v| v == 0.0));
}

#[test]
fn fused_cuda_norms_and_bf16_cross_entropy_equal_the_composed_formulas() {
    use std::collections::HashMap;
    use tinygpt::candle_core::{Module, Var};
    use tinygpt::model::params::{ParamBuilder, WeightSource};
    use tinygpt::model::{fused_norm, gpt, norm, Norm};
    let dev = gpu();
    // max |a − b| relative to max |b|.
    let rel = |a: &Tensor, b: &Tensor| {
        let scale = b
            .to_dtype(DType::F32)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        max_abs_diff(a, b) / scale.to_scalar::<f32>().unwrap().max(1e-30)
    };
    for kind in [Norm::LayerNorm, Norm::RmsNorm] {
        for (dtype, tol) in [(DType::F32, 1e-5f32), (DType::BF16, 2e-2)] {
            let c = 512;
            let mut weights = HashMap::new();
            let gain = Tensor::randn(1f32, 0.5, c, &dev).unwrap();
            weights.insert("ln.weight".to_string(), gain);
            if kind == Norm::LayerNorm {
                let bias = Tensor::randn(0f32, 0.5, c, &dev).unwrap();
                weights.insert("ln.bias".to_string(), bias);
            }
            let mut p = ParamBuilder::new(WeightSource::Loaded(weights), &dev);
            let ln = norm::Norm::new(&mut p, "ln", kind, c, true, 1e-5).unwrap();
            let params = p.finish().unwrap();
            let x = Tensor::randn(0.3f32, 2.0, (3, 37, c), &dev).unwrap();
            let x = Var::from_tensor(&x.to_dtype(dtype).unwrap()).unwrap();
            let w = Tensor::randn(0f32, 1.0, (3, 37, c), &dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            assert!(fused_norm::available(&x));
            let (a, b) = (ln.forward(&x).unwrap(), ln.forward_composed(&x).unwrap());
            assert!(rel(&a, &b) < tol, "{kind:?} {dtype:?}: {}", rel(&a, &b));
            let ga = (a * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let gb = (b * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let vars =
                std::iter::once(("x", &x)).chain(params.iter().map(|(n, v)| (n.as_str(), v)));
            for (name, var) in vars {
                let (da, db) = (ga.get(var).unwrap(), gb.get(var).unwrap());
                assert_eq!(
                    da.dtype(),
                    var.dtype(),
                    "{name}: the gradient keeps the dtype"
                );
                assert!(
                    rel(da, db) < 2.0 * tol,
                    "{kind:?} {dtype:?} d{name}: {}",
                    rel(da, db)
                );
            }
        }
    }
    // The bias add and its column-sum gradient against candle's broadcast add, f32 and bf16.
    for (dtype, tol) in [(DType::F32, 1e-5f32), (DType::BF16, 2e-2)] {
        let x = Tensor::randn(0f32, 1.0, (2, 300, 700), &dev).unwrap();
        let x = Var::from_tensor(&x.to_dtype(dtype).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, 700, &dev).unwrap()).unwrap();
        let w = Tensor::randn(0f32, 1.0, (2, 300, 700), &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let a = tinygpt::model::fused::add_bias(&x, &b).unwrap();
        let c = x.broadcast_add(&b.to_dtype(dtype).unwrap()).unwrap();
        assert!(rel(&a, &c) < tol, "bias add {dtype:?}: {}", rel(&a, &c));
        // d/dx = w; d/db = Σ_rows w (summed in f32 here; candle's bf16 sum would be coarser).
        let g = (a * &w).unwrap().sum_all().unwrap().backward().unwrap();
        assert_eq!(max_abs_diff(g.get(&x).unwrap(), &w), 0.0);
        let db = w.to_dtype(DType::F32).unwrap().sum((0, 1)).unwrap();
        let ours = g.get(&b).unwrap();
        assert!(
            rel(ours, &db) < tol,
            "bias gradient {dtype:?}: {}",
            rel(ours, &db)
        );
    }
    // Embedding lookup and its scatter-add backward against candle's index_select (repeated ids).
    let table = Var::from_tensor(&Tensor::randn(0f32, 1.0, (97, 300), &dev).unwrap()).unwrap();
    let ids: Vec<u32> = (0..1000u32).map(|i| (i * i + 7) % 97).collect();
    let ids = Tensor::new(ids.as_slice(), &dev).unwrap();
    let w = Tensor::randn(0f32, 1.0, (1000, 300), &dev).unwrap();
    let a = tinygpt::model::embedding::lookup(&table, &ids).unwrap();
    let b = table.index_select(&ids, 0).unwrap();
    assert_eq!(max_abs_diff(&a, &b), 0.0);
    let ga = (a * &w).unwrap().sum_all().unwrap().backward().unwrap();
    let gb = (b * &w).unwrap().sum_all().unwrap().backward().unwrap();
    let (da, db) = (ga.get(&table).unwrap(), gb.get(&table).unwrap());
    assert!(rel(da, db) < 1e-5, "embedding gradient: {}", rel(da, db));
    // GELU against candle's gelu_erf, value and gradient, f32 and bf16.
    for (dtype, tol) in [(DType::F32, 1e-5f32), (DType::BF16, 2e-2)] {
        let x = Tensor::randn(0f32, 2.0, (5, 1000), &dev).unwrap();
        let x = Var::from_tensor(&x.to_dtype(dtype).unwrap()).unwrap();
        let (a, b) = (
            tinygpt::model::fused::gelu(&x).unwrap(),
            x.gelu_erf().unwrap(),
        );
        assert!(rel(&a, &b) < tol, "gelu {dtype:?}: {}", rel(&a, &b));
        let (ga, gb) = (
            a.sum_all().unwrap().backward().unwrap(),
            b.sum_all().unwrap().backward().unwrap(),
        );
        let (da, db) = (ga.get(&x).unwrap(), gb.get(&x).unwrap());
        assert!(
            rel(da, db) < 2.0 * tol,
            "gelu gradient {dtype:?}: {}",
            rel(da, db)
        );
    }
    // Cross-entropy reading bf16 logits directly: the loss in f32, the gradient in bf16.
    let logits = Tensor::randn(0f32, 3.0, (6, 50304), &dev).unwrap();
    let logits = Var::from_tensor(&logits.to_dtype(DType::BF16).unwrap()).unwrap();
    let targets = Tensor::new(&[3u32, 0, 50303, u32::MAX, 7, 7], &dev).unwrap();
    let (sum, count) = tinygpt::model::cross_entropy_sum(&logits, &targets).unwrap();
    assert_eq!(
        (sum.dtype(), count.to_scalar::<f32>().unwrap()),
        (DType::F32, 5.0)
    );
    let wide = logits.to_dtype(DType::F32).unwrap();
    let (sum2, _) = gpt::cross_entropy_composed(&wide, &targets).unwrap();
    let (s1, s2) = (
        sum.to_scalar::<f32>().unwrap(),
        sum2.to_scalar::<f32>().unwrap(),
    );
    assert!(
        (s1 - s2).abs() < 1e-4 * s2.abs(),
        "bf16 cross-entropy {s1} vs {s2}"
    );
    let (g1, g2) = (sum.backward().unwrap(), sum2.backward().unwrap());
    let (a, b) = (g1.get(&logits).unwrap(), g2.get(&logits).unwrap());
    assert_eq!(a.dtype(), DType::BF16);
    assert!(
        max_abs_diff(a, b) < 4e-3,
        "bf16 cross-entropy gradient: {}",
        max_abs_diff(a, b)
    );
}

#[test]
fn adamw_in_place_update_on_the_gpu_equals_the_cpu() {
    use tinygpt::train::adamw_fused::{Moments, Update};
    let dev = gpu();
    let n = 100_003; // not a multiple of any block size
    let host = |seed: f32, len: usize| {
        let x: Vec<f32> = (0..len)
            .map(|i| ((i as f32 * 0.37 + seed).sin()) * 0.1)
            .collect();
        Tensor::from_vec(x, len, &Device::Cpu).unwrap()
    };
    // [m; v]: the second row squared, as second moments are.
    let mv = Tensor::stack(&[host(0.2, n), host(0.3, n).sqr().unwrap()], 0).unwrap();
    let (theta, g) = (host(0.1, n), host(0.4, n));
    let on_gpu = |t: &Tensor| t.to_device(&dev).unwrap();
    let copy = |t: &Tensor| t.copy().unwrap();
    let (gt, gmv, gg) = (on_gpu(&theta), on_gpu(&mv), on_gpu(&g));
    let (ct, cmv) = (copy(&theta), copy(&mv));
    let moments = Moments {
        beta1: 0.9,
        beta2: 0.95,
        scale: 0.7,
    };
    let update = Update {
        decay: 1.0 - 1e-3 * 0.01,
        step: 1e-3 / 0.19,
        bias2_sqrt: 0.3f64.sqrt(),
        eps: 1e-8,
    };
    for (t, mv, g) in [(&gt, &gmv, &gg), (&ct, &cmv, &g)] {
        mv.inplace_op2(g, &moments).unwrap();
        let (m, v) = (mv.get(0).unwrap(), mv.get(1).unwrap());
        t.inplace_op3(&m, &v, &update).unwrap();
    }
    for (name, a, b) in [("[m; v]", &gmv, &cmv), ("theta", &gt, &ct)] {
        assert!(max_abs_diff(a, b) < 1e-6, "{name}: {}", max_abs_diff(a, b));
    }
    assert!(max_abs_diff(&gt, &theta) > 1e-4, "the weights moved");
    assert!(max_abs_diff(&gmv, &mv) > 1e-3, "the moments moved");
}

#[test]
fn sum_of_squares_on_the_gpu_equals_the_sum_by_hand_run_after_run() {
    use tinygpt::train::sum_of_squares;
    // 5,000,003 numbers: more than the 1,024 blocks of 4,096 the grid grows to, and a tail after
    // the last 16-byte pack; then the same from an odd offset, read a number at a time.
    let (x, want) = tinygpt_tests::sevens(5_000_003);
    let all = Tensor::from_vec(x, 5_000_003, &gpu()).unwrap();
    let rest = all.narrow(0, 1, 5_000_002).unwrap();
    let want_rest = want - 9.0; // x_0 = −3
    for (x, want) in [(&all, want), (&rest, want_rest)] {
        let a = sum_of_squares(x).unwrap().to_scalar::<f32>().unwrap();
        let b = sum_of_squares(x).unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(a.to_bits(), b.to_bits(), "the same sum every run");
        assert!(
            (a as f64 - want).abs() < 1e-6 * want,
            "{a} vs {want} by hand"
        );
    }
}

#[test]
fn fused_cuda_attention_equals_the_cpu_kernel_in_value_and_gradient() {
    use tinygpt::candle_core::Var;
    use tinygpt::model::fused_attention::{attention, Documents};
    let (dev, cpu) = (gpu(), Device::Cpu);
    let data = sample_batch().to_tensors(&cpu).unwrap();
    let (b, t) = data.x.dims2().unwrap();
    // T = 65: two blocks of the tensor-core kernels. The GPU finds the stories' starts itself.
    let docs = Documents::new(&data.doc).unwrap();
    let docs_gpu = Documents::new(&data.doc.to_device(&dev).unwrap()).unwrap();
    // Grouped heads with a head size that is not a multiple of 32 (warp kernels only), grouped
    // heads of 64 and the seed model's heads of 128 (tensor cores in bf16, and the warp kernels
    // when TINYGPT_CUDA_ATTENTION=fused-warp).
    for (nh, nkv, hd) in [(4, 2, 40), (4, 2, 64), (4, 4, 128)] {
        let width = (nh + 2 * nkv) * hd;
        let qkv = Tensor::randn(0f32, 1.0, (b, t, width), &cpu).unwrap();
        let w = Tensor::randn(0f32, 1.0, (b, t, nh * hd), &cpu).unwrap();
        // The CPU kernel (checked against the composed attention in tests/model.rs).
        let x = Var::from_tensor(&qkv).unwrap();
        let y_cpu = attention(&x, &docs, nh, nkv).unwrap();
        let g = (&y_cpu * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g_cpu = g.get(&x).unwrap().clone();
        let runs = [
            (DType::F32, 1e-4f32, "fused"),
            (DType::BF16, 3e-2, "fused"),
            (DType::BF16, 3e-2, "fused-warp"),
        ];
        for (dtype, tol, kernels) in runs {
            std::env::set_var("TINYGPT_CUDA_ATTENTION", kernels);
            let x =
                Var::from_tensor(&qkv.to_device(&dev).unwrap().to_dtype(dtype).unwrap()).unwrap();
            let y = attention(&x, &docs_gpu, nh, nkv).unwrap();
            let err = max_abs_diff(&y, &y_cpu);
            let case = format!("({nh}, {nkv}, {hd}) {dtype:?} {kernels}");
            assert!(err < tol, "{case}: y off by {err}");
            let w = w.to_device(&dev).unwrap().to_dtype(dtype).unwrap();
            let g = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let err = max_abs_diff(g.get(&x).unwrap(), &g_cpu);
            assert!(err < 4.0 * tol, "{case}: dqkv off by {err}");
        }
        std::env::remove_var("TINYGPT_CUDA_ATTENTION");
    }
    // Documents built on the CPU do not serve GPU tensors: a clear error, not a wrong answer.
    let qkv = Tensor::zeros((b, t, 3 * 64), DType::F32, &dev).unwrap();
    assert!(attention(&qkv, &docs, 1, 1).is_err());
}

#[test]
fn a_gpu_opened_by_parse_device_computes_f32_products_in_tf32() {
    use tinygpt::device::{allow_tf32, parse_device};
    let dev = parse_device("cuda:0").unwrap(); // turns TF32 on (TINYGPT_TF32 unset)
    let cpu = Device::Cpu;
    let a = Tensor::randn(0f32, 1.0, (256, 512), &cpu).unwrap();
    let b = Tensor::randn(0f32, 1.0, (512, 256), &cpu).unwrap();
    let (ga, gb) = (a.to_device(&dev).unwrap(), b.to_device(&dev).unwrap());
    let fast = ga.matmul(&gb).unwrap();
    allow_tf32(false);
    let exact = ga.matmul(&gb).unwrap();
    let reference = a.matmul(&b).unwrap();
    assert!(
        max_abs_diff(&exact, &reference) < 1e-3,
        "exact f32 on the GPU"
    );
    // TF32 keeps 10 of f32's 23 mantissa bits: the products differ from exact f32 ...
    let diff = (fast.to_device(&cpu).unwrap() - &reference)
        .unwrap()
        .abs()
        .unwrap();
    let max = diff.max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(max > 1e-4, "TF32 is off: the products are exact ({max})");
    // ... by at most the rounding of both inputs to TF32 (under 2⁻¹⁰ relative each, even if the
    // hardware truncates): |Δ(a b)_ij| ≤ Σ_k |a_ik| |b_kj| · 2⁻⁹, plus f32's own rounding.
    let bound = (a.abs().unwrap().matmul(&b.abs().unwrap()).unwrap() * 2f64.powi(-9))
        .unwrap()
        .affine(1.0, 1e-3)
        .unwrap();
    let over = diff.gt(&bound).unwrap().to_dtype(DType::F32).unwrap();
    let over = over.sum_all().unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(
        over, 0.0,
        "TF32 products off by more than the input rounding"
    );
}

#[test]
fn a_gpu_opened_by_parse_device_keeps_freed_memory_and_counts_its_peak() {
    use tinygpt::device::{allow_tf32, gpu_memory, parse_device, reset_gpu_memory_peak};
    const MIB: u64 = 1 << 20;
    let dev = parse_device("cuda:0").unwrap();
    allow_tf32(false); // the other tests compare f32 products exactly
    dev.synchronize().unwrap();
    reset_gpu_memory_peak(&dev).unwrap();
    let before = gpu_memory(&dev).unwrap().expect("a GPU has a memory pool");
    let big = Tensor::zeros((64, MIB as usize), DType::F32, &dev).unwrap(); // 256 MiB
    dev.synchronize().unwrap();
    let held = gpu_memory(&dev).unwrap().unwrap();
    assert!(
        held.in_use >= before.in_use + 256 * MIB && held.in_use <= before.in_use + 260 * MIB,
        "{} MiB in use with 256 MiB more held (before: {} MiB)",
        held.in_use / MIB,
        before.in_use / MIB
    );
    assert!(held.peak >= held.in_use, "peak {} MiB", held.peak / MIB);
    drop(big);
    // With CUDA's default release threshold this synchronisation would hand the freed 256 MiB
    // back to the driver; parse_device's pool keeps them for the next allocation.
    dev.synchronize().unwrap();
    let after = gpu_memory(&dev).unwrap().unwrap();
    assert!(
        after.in_use < before.in_use + MIB,
        "the tensor's memory is free again"
    );
    assert!(
        after.reserved >= after.in_use + 256 * MIB,
        "the pool kept only {} MiB",
        after.reserved / MIB
    );
    assert!(after.peak >= held.in_use, "the peak is remembered");
    reset_gpu_memory_peak(&dev).unwrap();
    assert!(gpu_memory(&dev).unwrap().unwrap().peak < after.peak);
    assert_eq!(gpu_memory(&Device::Cpu).unwrap(), None);
}
