//! The model against independent references: finite differences, separate runs, MHA, full
//! recomputation, llama2.c's own greedy output, and round trips through the file formats.

use std::collections::HashMap;

use tinygpt::candle_core::{DType, Device, Tensor, Var};
use tinygpt::data::loader::Batch;
use tinygpt::model::{self, generate, GenerateOptions, Gpt, GptConfig, Mlp, Norm, Positions};
use tinygpt_tests::{max_abs_diff, packed_batch, packed_vs_separate, shared, three_stories};

const EOS: u32 = 0;

/// Small models of every variant the config allows.
fn variants() -> Vec<(&'static str, GptConfig)> {
    let gpt2 = GptConfig::gpt2(2, 4, 16, 32, 40);
    let llama = GptConfig::llama(2, 4, 2, 16, 24, 32, 40);
    vec![
        (
            "gpt2 (MHA, learned positions, LayerNorm, GELU, biases, tied)",
            gpt2.clone(),
        ),
        (
            "gpt2 + GQA",
            GptConfig {
                n_kv_head: 2,
                ..gpt2.clone()
            },
        ),
        (
            "gpt2 + MQA, untied, no bias",
            GptConfig {
                n_kv_head: 1,
                tied_embeddings: false,
                bias: false,
                ..gpt2.clone()
            },
        ),
        ("llama (RoPE, RMSNorm, SwiGLU, GQA, no bias)", llama.clone()),
        (
            "llama + biases, untied",
            GptConfig {
                bias: true,
                tied_embeddings: false,
                ..llama.clone()
            },
        ),
        (
            "mixed: RoPE + LayerNorm + GELU",
            GptConfig {
                positions: Positions::Rope { theta: 10_000.0 },
                norm: Norm::LayerNorm,
                mlp: Mlp::Gelu,
                ..gpt2
            },
        ),
    ]
}

fn batch(rows: &[Vec<u32>]) -> Batch {
    packed_batch(rows, EOS)
}

fn sample_rows() -> Vec<Vec<u32>> {
    vec![
        vec![EOS, 5, 9, 3, 7, EOS, 12, 30, 2, 2, 8, EOS, 39, 1, 4, 6, 11],
        vec![
            17, 3, 3, 25, EOS, 6, 14, 33, 21, 2, EOS, 9, 9, 10, 36, 5, 19,
        ],
    ]
}

#[test]
fn every_trainable_tensor_gets_a_finite_nonzero_gradient() {
    let dev = Device::Cpu;
    for (name, cfg) in variants() {
        let model = Gpt::new(&cfg, 1, &dev).unwrap();
        let loss = model
            .loss(&batch(&sample_rows()).to_tensors(&dev).unwrap())
            .unwrap();
        let grads = loss.backward().unwrap();
        for (pname, var) in model.params().iter() {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{name}: no gradient reaches {pname}"));
            let values: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
            assert!(
                values.iter().all(|v| v.is_finite()),
                "{name}: non-finite gradient in {pname}"
            );
            assert!(
                values.iter().any(|&v| v != 0.0),
                "{name}: zero gradient for {pname}"
            );
        }
    }
}

/// The same model with f64 weights computing in f64.
fn to_f64(model: &Gpt) -> Gpt {
    let tensors: HashMap<String, Tensor> = model
        .params()
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, v.to_dtype(DType::F64).unwrap()))
        .collect();
    Gpt::from_tensors(model.config(), tensors, &Device::Cpu).unwrap()
}

#[test]
fn gradients_match_finite_differences() {
    let dev = Device::Cpu;
    let data = batch(&sample_rows()).to_tensors(&dev).unwrap();
    for (name, cfg) in variants() {
        let model = to_f64(&Gpt::new(&cfg, 2, &dev).unwrap());
        assert_eq!(model.compute_dtype(), DType::F64);
        let loss = |m: &Gpt| m.loss(&data).unwrap().to_scalar::<f64>().unwrap();
        let grads = model.loss(&data).unwrap().backward().unwrap();
        for (pname, var) in model.params().iter() {
            let analytic: Vec<f64> = grads
                .get(var.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let original: Vec<f64> = var.flatten_all().unwrap().to_vec1().unwrap();
            // A few coordinates per tensor, including the largest gradient.
            let largest = (0..analytic.len())
                .max_by(|&a, &b| analytic[a].abs().total_cmp(&analytic[b].abs()))
                .unwrap();
            for i in [0, analytic.len() / 2, analytic.len() - 1, largest] {
                let eps = 1e-5;
                let at = |delta: f64| {
                    let mut v = original.clone();
                    v[i] += delta;
                    set(var, v);
                    loss(&model)
                };
                let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
                set(var, original.clone());
                let err = (numeric - analytic[i]).abs();
                assert!(
                    err <= 1e-6 + 1e-4 * analytic[i].abs(),
                    "{name}: {pname}[{i}]: analytic {} vs numeric {numeric}",
                    analytic[i]
                );
            }
        }
    }
}

fn set(var: &Var, values: Vec<f64>) {
    var.set(&Tensor::from_vec(values, var.shape(), var.device()).unwrap())
        .unwrap();
}

#[test]
fn packed_rows_give_the_logits_of_separate_stories() {
    for (name, cfg) in variants() {
        let model = Gpt::new(&cfg, 3, &Device::Cpu).unwrap();
        let diff = packed_vs_separate(&model, &three_stories(EOS), EOS);
        assert!(
            diff < 1e-5,
            "{name}: a packed story differs from it alone by {diff}"
        );
    }
}

#[test]
fn gqa_with_duplicated_key_value_heads_equals_mha() {
    let dev = Device::Cpu;
    for base in [
        GptConfig::gpt2(2, 4, 16, 32, 40),
        GptConfig::llama(2, 4, 2, 16, 24, 32, 40),
    ] {
        let gqa_cfg = GptConfig {
            n_kv_head: 2,
            ..base.clone()
        };
        let mha_cfg = GptConfig {
            n_kv_head: 4,
            ..base
        };
        let gqa = Gpt::new(&gqa_cfg, 4, &dev).unwrap();
        let hd = gqa_cfg.head_dim();
        let mut tensors: HashMap<String, Tensor> = gqa.params().tensors().into_iter().collect();
        for i in 0..gqa_cfg.n_layer {
            for suffix in ["weight", "bias"] {
                let key = format!("h.{i}.attn.c_attn.{suffix}");
                let Some(qkv) = tensors.get(&key) else {
                    continue;
                };
                let head = |start: usize| qkv.narrow(0, start * hd, hd).unwrap();
                // Query heads 0,1 share key/value head 0; heads 2,3 share head 1.
                let (k0, k1, v0, v1) = (head(4), head(5), head(6), head(7));
                let q = qkv.narrow(0, 0, 4 * hd).unwrap();
                let mha = Tensor::cat(&[&q, &k0, &k0, &k1, &k1, &v0, &v0, &v1, &v1], 0).unwrap();
                tensors.insert(key, mha);
            }
        }
        let mha = Gpt::from_tensors(&mha_cfg, tensors, &dev).unwrap();
        let data = batch(&sample_rows()).to_tensors(&dev).unwrap();
        let a = gqa.forward(&data.x, &data.doc, &data.pos).unwrap();
        let b = mha.forward(&data.x, &data.doc, &data.pos).unwrap();
        assert!(max_abs_diff(&a, &b) < 1e-5);
    }
}

#[test]
fn kv_cache_decoding_equals_full_recomputation() {
    let dev = Device::Cpu;
    let tokens: Vec<u32> = vec![EOS, 5, 9, 3, 7, 12, 30, 2, 2, 8, 21, 39, 1, 4];
    for (name, cfg) in variants() {
        let model = Gpt::new(&cfg, 5, &dev).unwrap();
        let n = tokens.len();
        let row = |v: &[u32]| Tensor::from_slice(v, (1, v.len()), &dev).unwrap();
        let full = model
            .forward(
                &row(&tokens),
                &row(&vec![0; n]),
                &row(&(0..n as u32).collect::<Vec<_>>()),
            )
            .unwrap();
        let mut cache = model::KvCache::default();
        // A 3-token prefill, then one token at a time.
        let mut at = 0;
        for step in [3].into_iter().chain(std::iter::repeat_n(1, n - 3)) {
            let logits = model
                .forward_cached(&row(&tokens[at..at + step]), &mut cache)
                .unwrap();
            at += step;
            let expected = full.narrow(1, at - 1, 1).unwrap().squeeze(1).unwrap();
            let diff = max_abs_diff(&logits, &expected);
            assert!(diff < 1e-5, "{name}: step ending at {at}: {diff}");
        }
        assert_eq!(cache.len(), n);
    }
}

#[test]
fn rope_sees_only_relative_positions() {
    let dev = Device::Cpu;
    let cfg = GptConfig::llama(2, 4, 2, 16, 24, 64, 40);
    let model = Gpt::new(&cfg, 6, &dev).unwrap();
    let tokens = [EOS, 5, 9, 3, 7, 12, 30, 2];
    let n = tokens.len() as u32;
    let row = |v: &[u32]| Tensor::from_slice(v, (1, v.len()), &dev).unwrap();
    let at = |start: u32| {
        model
            .forward(
                &row(&tokens),
                &row(&[0; 8]),
                &row(&(start..start + n).collect::<Vec<_>>()),
            )
            .unwrap()
    };
    let (a, b) = (at(0), at(17));
    assert!(
        max_abs_diff(&a, &b) < 1e-4,
        "shifting every position changed the logits"
    );
    // …whereas learned positions are absolute (the test can fail).
    let gpt2 = Gpt::new(&GptConfig::gpt2(2, 4, 16, 64, 40), 6, &dev).unwrap();
    let at = |start: u32| {
        gpt2.forward(
            &row(&tokens),
            &row(&[0; 8]),
            &row(&(start..start + n).collect::<Vec<_>>()),
        )
        .unwrap()
    };
    assert!(max_abs_diff(&at(0), &at(17)) > 1e-3);
}

#[test]
fn stories260k_greedy_matches_llama2c_run_c() {
    let path = shared().join("data/models/stories260K/stories260K.bin");
    let model = model::llama2c::load(&path, &Device::Cpu).unwrap();
    let cfg = model.config();
    assert_eq!(
        (
            cfg.n_embd,
            cfg.mlp_hidden(),
            cfg.n_layer,
            cfg.n_head,
            cfg.n_kv_head,
            cfg.vocab_size,
            cfg.block_size
        ),
        (64, 172, 5, 8, 4, 512, 512)
    );
    // The 64 ids SOURCES.md lists for `run.c -t 0` from BOS (= 1).
    let sources =
        std::fs::read_to_string(shared().join("data/models/stories260K/SOURCES.md")).unwrap();
    let line = sources
        .lines()
        .find(|l| l.starts_with("461 461 401"))
        .expect("the reference ids in SOURCES.md");
    let expected: Vec<u32> = line
        .split_whitespace()
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(expected.len(), 64);
    let options = GenerateOptions {
        max_new_tokens: 64,
        temperature: 0.0,
        ..Default::default()
    };
    let ids = generate(&model, &[1], &options, |_| true).unwrap();
    assert_eq!(ids, expected);
}

#[test]
fn llama2c_files_with_bad_headers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(shared().join("data/models/stories260K/stories260K.bin")).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "short.bin",
            good[..10].to_vec(),
            "shorter than the 28-byte header",
        ),
        (
            "truncated.bin",
            good[..good.len() - 4].to_vec(),
            "implies 1056540 bytes",
        ),
        (
            "v1.bin",
            [b"ak42".as_slice(), &good[4..]].concat(),
            "versioned format",
        ),
        (
            "heads.bin",
            [&good[..12], &7i32.to_le_bytes()[..], &good[16..]].concat(),
            "do not divide",
        ),
        (
            "negative.bin",
            [&(-64i32).to_le_bytes()[..], &good[4..]].concat(),
            "dim = -64",
        ),
    ];
    for (name, bytes, expected) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let err = model::llama2c::load(&path, &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains(name) && err.contains(expected),
            "{name}: {err}"
        );
    }
}

#[test]
fn checkpoints_round_trip_and_catch_mismatches() {
    let dev = Device::Cpu;
    let dir = tempfile::tempdir().unwrap();
    let tok = tinygpt::Tokenizer::from_file(&tinygpt_tests::gpt2_tokenizer()).unwrap();
    let cfg = GptConfig::gpt2(2, 4, 16, 32, 50304);
    let model = Gpt::new(&cfg, 7, &dev).unwrap();
    let ckpt = dir.path().join("ckpt");
    model::checkpoint::save(&ckpt, &model, Some(&tok)).unwrap();
    let loaded = model::checkpoint::load(&ckpt, &dev).unwrap();
    let load_err = || {
        model::checkpoint::load(&ckpt, &dev)
            .err()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        loaded.tokenizer.as_ref().unwrap().fingerprint(),
        tok.fingerprint()
    );
    for (name, t) in model.params().tensors() {
        let other = loaded.model.params().get(&name).unwrap();
        assert_eq!(max_abs_diff(&t, other), 0.0, "{name}");
    }
    // A config that disagrees with the weights.
    let config_path = ckpt.join("config.json");
    let original = std::fs::read_to_string(&config_path).unwrap();
    std::fs::write(
        &config_path,
        original.replace("\"n_layer\": 2", "\"n_layer\": 3"),
    )
    .unwrap();
    let err = load_err();
    assert!(
        err.contains("model.safetensors") && err.contains("h.2."),
        "{err}"
    );
    std::fs::write(
        &config_path,
        original.replace("\"n_embd\": 16", "\"n_embd\": 32"),
    )
    .unwrap();
    let err = load_err();
    assert!(err.contains("shape"), "{err}");
    std::fs::write(
        &config_path,
        original.replace("\"n_head\": 4", "\"n_head\": 3"),
    )
    .unwrap();
    let err = load_err();
    assert!(
        err.contains("config.json") && err.contains("n_embd 16 is not divisible by n_head 3"),
        "{err}"
    );
    std::fs::write(&config_path, &original).unwrap();
    // A tokenizer that is not the one recorded.
    let tok_path = ckpt.join("tokenizer.json");
    let tok_json = std::fs::read_to_string(&tok_path).unwrap();
    let (ours, theirs) = (
        "\"pre_tokenizer\":{\"add_prefix_space\":false",
        "\"pre_tokenizer\":{\"add_prefix_space\":true",
    );
    assert!(tok_json.contains(ours));
    std::fs::write(&tok_path, tok_json.replacen(ours, theirs, 1)).unwrap();
    let err = load_err();
    assert!(
        err.contains("tokenizer.json") && err.contains("fingerprint"),
        "{err}"
    );
    std::fs::write(&tok_path, &tok_json).unwrap();
    // A truncated weights file.
    let weights = ckpt.join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_err();
    assert!(
        err.contains("model.safetensors") && err.contains("truncated"),
        "{err}"
    );
    // A model too small for its tokenizer.
    let small = Gpt::new(&GptConfig::gpt2(1, 2, 8, 16, 4096), 0, &dev).unwrap();
    let err = model::checkpoint::save(&dir.path().join("small"), &small, Some(&tok))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("50257") && err.contains("4096"), "{err}");
}

#[test]
fn hugging_face_export_round_trips_with_the_fields_transformers_needs() {
    let dev = Device::Cpu;
    let dir = tempfile::tempdir().unwrap();
    for (name, cfg, arch) in [
        ("gpt2", GptConfig::gpt2(2, 4, 16, 32, 40), "GPT2LMHeadModel"),
        (
            "gpt2-untied",
            GptConfig {
                tied_embeddings: false,
                ..GptConfig::gpt2(2, 4, 16, 32, 40)
            },
            "GPT2LMHeadModel",
        ),
        (
            "llama",
            GptConfig::llama(2, 4, 2, 16, 24, 32, 40),
            "LlamaForCausalLM",
        ),
        (
            "llama-untied-bias",
            GptConfig {
                tied_embeddings: false,
                bias: true,
                ..GptConfig::llama(2, 4, 2, 16, 24, 32, 40)
            },
            "LlamaForCausalLM",
        ),
    ] {
        let model = Gpt::new(&cfg, 8, &dev).unwrap();
        let out = dir.path().join(name);
        model::hf::export(&model, None, &out).unwrap();
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(config["architectures"][0], arch);
        let needed: &[&str] = if arch == "GPT2LMHeadModel" {
            &[
                "model_type",
                "vocab_size",
                "n_positions",
                "n_embd",
                "n_layer",
                "n_head",
                "activation_function",
                "layer_norm_epsilon",
                "tie_word_embeddings",
            ]
        } else {
            &[
                "model_type",
                "vocab_size",
                "hidden_size",
                "intermediate_size",
                "num_hidden_layers",
                "num_attention_heads",
                "num_key_value_heads",
                "max_position_embeddings",
                "rms_norm_eps",
                "rope_theta",
                "hidden_act",
                "tie_word_embeddings",
            ]
        };
        for key in needed {
            assert!(!config[key].is_null(), "{name}: config.json lacks {key}");
        }
        let back = model::checkpoint::load(&out, &dev).unwrap().model;
        assert_eq!(back.config(), model.config(), "{name}");
        for (pname, t) in model.params().tensors() {
            assert_eq!(
                max_abs_diff(&t, back.params().get(&pname).unwrap()),
                0.0,
                "{name}: {pname}"
            );
        }
        // GPT-2 Conv1D weights are stored transposed: (in, out).
        if arch == "GPT2LMHeadModel" {
            let st = model::checkpoint::load_weights(&out.join("model.safetensors"), &dev).unwrap();
            assert_eq!(st["transformer.h.0.mlp.c_fc.weight"].dims(), &[16, 64]);
        }
    }
    let gqa = Gpt::new(
        &GptConfig {
            n_kv_head: 2,
            ..GptConfig::gpt2(2, 4, 16, 32, 40)
        },
        0,
        &dev,
    )
    .unwrap();
    let err = model::hf::export(&gqa, None, &dir.path().join("gqa"))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("grouped-query"), "{err}");
}

#[test]
fn a_seed_fixes_the_initial_weights_and_sampling() {
    let dev = Device::Cpu;
    let cfg = GptConfig::preset("tiny").unwrap();
    let (a, b) = (
        Gpt::new(&cfg, 42, &dev).unwrap(),
        Gpt::new(&cfg, 42, &dev).unwrap(),
    );
    let c = Gpt::new(&cfg, 43, &dev).unwrap();
    let w = |m: &Gpt| {
        m.params()
            .get("h.0.attn.c_attn.weight")
            .unwrap()
            .as_tensor()
            .clone()
    };
    assert_eq!(max_abs_diff(&w(&a), &w(&b)), 0.0);
    assert!(max_abs_diff(&w(&a), &w(&c)) > 0.0);
    // Initial standard deviations: C^-1/2 and, for residual projections, (2 n_layer)^-1/2 less.
    let std = |name: &str| {
        let v: Vec<f32> = a
            .params()
            .get(name)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt()
    };
    assert!((std("wte.weight") - 128f32.powf(-0.5)).abs() < 0.002);
    assert!((std("h.0.mlp.c_proj.weight") - 128f32.powf(-0.5) / 8f32.sqrt()).abs() < 0.001);
    let options = GenerateOptions {
        max_new_tokens: 20,
        temperature: 1.0,
        top_k: Some(50),
        top_p: Some(0.9),
        seed: 9,
        stop_token: None,
        vocab_limit: Some(100),
    };
    let one = generate(&a, &[0], &options, |_| true).unwrap();
    assert!(
        one.iter().all(|&id| id < 100),
        "ids beyond the tokenizer's vocabulary: {one:?}"
    );
    assert_eq!(one, generate(&a, &[0], &options, |_| true).unwrap());
    assert_ne!(
        one,
        generate(
            &a,
            &[0],
            &GenerateOptions {
                seed: 10,
                ..options.clone()
            },
            |_| true
        )
        .unwrap()
    );
}

#[test]
fn generation_streams_stops_and_keeps_the_last_block() {
    let dev = Device::Cpu;
    let cfg = GptConfig::gpt2(1, 2, 16, 8, 20);
    let model = Gpt::new(&cfg, 11, &dev).unwrap();
    let mut streamed = vec![];
    let options = GenerateOptions {
        max_new_tokens: 30,
        temperature: 0.0,
        ..Default::default()
    };
    let out = generate(&model, &[1, 2, 3], &options, |t| {
        streamed.push(t);
        true
    })
    .unwrap();
    assert_eq!(out.len(), 30, "generation runs past the 8-token context");
    assert_eq!(streamed, out);
    // A prompt longer than the context is cut to its last 8 tokens: the same continuation.
    let long: Vec<u32> = (0..20).map(|i| i % 20).collect();
    let a = generate(
        &model,
        &long,
        &GenerateOptions {
            max_new_tokens: 5,
            ..options.clone()
        },
        |_| true,
    )
    .unwrap();
    let b = generate(
        &model,
        &long[12..],
        &GenerateOptions {
            max_new_tokens: 5,
            ..options.clone()
        },
        |_| true,
    )
    .unwrap();
    assert_eq!(a, b);
    // Stop token and callback stop.
    let first = out[0];
    let stopped = generate(
        &model,
        &[1, 2, 3],
        &GenerateOptions {
            stop_token: Some(first),
            ..options.clone()
        },
        |_| true,
    )
    .unwrap();
    assert_eq!(stopped, vec![first]);
    let two = generate(&model, &[1, 2, 3], &options, {
        let mut n = 0;
        move |_| {
            n += 1;
            n < 2
        }
    })
    .unwrap();
    assert_eq!(two.len(), 2);
    // Bad options and prompts.
    for (bad, expected) in [
        (
            GenerateOptions {
                temperature: -1.0,
                ..options.clone()
            },
            "--temperature",
        ),
        (
            GenerateOptions {
                top_k: Some(0),
                ..options.clone()
            },
            "--top-k",
        ),
        (
            GenerateOptions {
                top_p: Some(1.5),
                ..options.clone()
            },
            "--top-p",
        ),
    ] {
        assert!(generate(&model, &[1], &bad, |_| true)
            .unwrap_err()
            .to_string()
            .contains(expected));
    }
    assert!(generate(&model, &[], &options, |_| true)
        .unwrap_err()
        .to_string()
        .contains("empty"));
    assert!(generate(&model, &[25], &options, |_| true)
        .unwrap_err()
        .to_string()
        .contains("25"));
}

#[test]
fn cpu_decoder_gives_the_logits_of_the_tensor_model_at_every_step() {
    let dev = Device::Cpu;
    let tokens: Vec<u32> = vec![EOS, 5, 9, 3, 7, 12, 30, 2, 2, 8, 21, 39, 1, 4];
    for (name, cfg) in variants() {
        let model = Gpt::new(&cfg, 12, &dev).unwrap();
        let mut decoder = model::decode::CpuDecoder::new(&model).unwrap();
        let mut cache = model::KvCache::default();
        for (i, &t) in tokens.iter().enumerate() {
            let fast = decoder.step(t).unwrap();
            let reference: Vec<f32> = model
                .forward_cached(&Tensor::new(&[[t]], &dev).unwrap(), &mut cache)
                .unwrap()
                .squeeze(0)
                .unwrap()
                .to_vec1()
                .unwrap();
            let diff = fast
                .iter()
                .zip(&reference)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(diff < 1e-4, "{name}: step {i} differs by {diff}");
        }
        // The tensor path (f64 here) and the CPU decoder (f32) sample the same greedy story.
        let options = GenerateOptions {
            max_new_tokens: 40,
            temperature: 0.0,
            ..Default::default()
        };
        let fast = generate(&model, &[EOS, 3], &options, |_| true).unwrap();
        let slow = generate(&to_f64(&model), &[EOS, 3], &options, |_| true).unwrap();
        assert_eq!(fast, slow, "{name}");
    }
}

#[test]
fn fused_cpu_kernels_equal_the_composed_formulas_in_value_and_gradient() {
    let dev = Device::Cpu;
    // Softmax with a document mask, (B, H, T, T) scores.
    let rows = sample_rows();
    let data = batch(&rows).to_tensors(&dev).unwrap();
    let t = data.x.dim(1).unwrap();
    let mask = model::attention::document_mask(&data.doc, DType::F64).unwrap();
    let scores = Var::from_tensor(&Tensor::randn(0f64, 2.0, (2, 3, t, t), &dev).unwrap()).unwrap();
    let weights = Tensor::randn(0f64, 1.0, (2, 3, t, t), &dev).unwrap();
    let fused = model::fused::masked_softmax(&scores, &mask).unwrap();
    let composed =
        model::attention::softmax_last_dim(&scores.broadcast_add(&mask).unwrap()).unwrap();
    assert!(max_abs_diff(&fused, &composed) < 1e-12);
    let g1 = (fused * &weights)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let g2 = (composed * &weights)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert!(max_abs_diff(g1.get(&scores).unwrap(), g2.get(&scores).unwrap()) < 1e-12);
    // Cross-entropy with an ignored target.
    let logits = Var::from_tensor(&Tensor::randn(0f64, 3.0, (6, 11), &dev).unwrap()).unwrap();
    let targets = Tensor::new(&[3u32, 0, 10, u32::MAX, 7, 7], &dev).unwrap();
    let (sum, count) = model::cross_entropy_sum(&logits, &targets).unwrap();
    let (sum2, count2) = model::gpt::cross_entropy_composed(&logits, &targets).unwrap();
    assert_eq!(count.to_scalar::<f64>().unwrap(), 5.0);
    assert_eq!(count2.to_scalar::<f64>().unwrap(), 5.0);
    assert!((sum.to_scalar::<f64>().unwrap() - sum2.to_scalar::<f64>().unwrap()).abs() < 1e-12);
    let g1 = sum.backward().unwrap();
    let g2 = sum2.backward().unwrap();
    let (a, b) = (g1.get(&logits).unwrap(), g2.get(&logits).unwrap());
    assert!(max_abs_diff(a, b) < 1e-12);
    // The ignored row gets no gradient; the others sum to 0 (softmax minus one-hot).
    let rows: Vec<Vec<f64>> = a.to_vec2().unwrap();
    assert!(rows[3].iter().all(|&v| v == 0.0));
    assert!(rows[0].iter().sum::<f64>().abs() < 1e-12);
    // The same in f32 on rows as wide as GPT-2's vocabulary (seeded, one row's softmax near 1).
    let x = tinygpt_tests::wide_logits(6, 50304);
    let logits = Var::from_tensor(&Tensor::from_vec(x, (6, 50304), &dev).unwrap()).unwrap();
    let targets = Tensor::new(&[3u32, 0, 50303, u32::MAX, 7, 7], &dev).unwrap();
    let (sum, _) = model::cross_entropy_sum(&logits, &targets).unwrap();
    let (sum2, _) = model::gpt::cross_entropy_composed(&logits, &targets).unwrap();
    let (s1, s2) = (
        sum.to_scalar::<f32>().unwrap(),
        sum2.to_scalar::<f32>().unwrap(),
    );
    assert!((s1 - s2).abs() < 1e-5 * s2.abs(), "{s1} vs {s2}");
    // The two sides' f32 sums over 50,304 exponentials each err by a few parts in a million (the
    // backward takes its log-normaliser from the loss, `loss + x[t]`; the composed formula adds
    // again): compare relative to each gradient.
    let (g1, g2) = (sum.backward().unwrap(), sum2.backward().unwrap());
    let (a, b) = (g1.get(&logits).unwrap(), g2.get(&logits).unwrap());
    let worst = tinygpt_tests::max_share_of_bound(a, b, 3e-5, 1e-9);
    assert!(
        worst <= 1.0,
        "f32 cross-entropy gradient: {worst} × (3e-5 relative + 1e-9)"
    );
    // GELU against candle's gelu_erf, value and gradient, in f64 and f32; Φ(0) = ½ by hand.
    for dtype in [DType::F64, DType::F32] {
        let x = Var::from_tensor(
            &Tensor::randn(0f64, 3.0, (5, 7), &dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap(),
        )
        .unwrap();
        let w = Tensor::randn(0f64, 1.0, (5, 7), &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let (a, b) = (model::fused::gelu(&x).unwrap(), x.gelu_erf().unwrap());
        let tol = if dtype == DType::F64 { 1e-12 } else { 1e-5 };
        assert!(
            max_abs_diff(&a, &b) < tol,
            "{dtype:?}: {}",
            max_abs_diff(&a, &b)
        );
        let grad = |y: Tensor| (y * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let (ga, gb) = (grad(a), grad(b));
        let d = max_abs_diff(ga.get(&x).unwrap(), gb.get(&x).unwrap());
        // candle's backward rounds 1/√(2π) to 0.398942: its gradient is good to ~1e-6.
        assert!(d < 1e-5, "{dtype:?} gradient: {d}");
    }
    let at = Tensor::new(&[0f64, 1.0], &dev).unwrap();
    let y: Vec<f64> = model::fused::gelu(&at).unwrap().to_vec1().unwrap();
    assert_eq!(y[0], 0.0);
    assert!(
        (y[1] - 0.841_344_746_068_542_9).abs() < 1e-15,
        "GELU(1) = Φ(1) = {}",
        y[1]
    );
    // A hand-computed value: uniform logits over 11 classes cost ln 11 each.
    let uniform = Tensor::zeros((2, 11), DType::F32, &dev).unwrap();
    let loss = model::cross_entropy(&uniform, &Tensor::new(&[1u32, 2], &dev).unwrap()).unwrap();
    assert!((loss.to_scalar::<f32>().unwrap() - 11f32.ln()).abs() < 1e-6);
}

#[test]
fn fused_cpu_attention_and_norms_equal_the_composed_formulas_in_value_and_gradient() {
    use model::attention::{document_mask, Attention, Mask};
    use model::fused_attention::Documents;
    use model::params::{ParamBuilder, WeightSource};
    use model::rope::Rope;
    use tinygpt::candle_core::Module;

    let dev = Device::Cpu;
    let data = batch(&sample_rows()).to_tensors(&dev).unwrap();
    let (b, t) = data.x.dims2().unwrap();
    let c = 16;
    let x = Var::from_tensor(&Tensor::randn(0f64, 1.0, (b, t, c), &dev).unwrap()).unwrap();
    let w = Tensor::randn(0f64, 1.0, (b, t, c), &dev).unwrap();
    // The gradients of Σ y ⊙ w with respect to every variable, as one long list of numbers.
    let grads = |y: Tensor, vars: &[Tensor]| -> Vec<f64> {
        let g = (y * &w).unwrap().sum_all().unwrap().backward().unwrap();
        vars.iter()
            .flat_map(|v| {
                let g = g.get(v).expect("every input gets a gradient");
                g.flatten_all().unwrap().to_vec1::<f64>().unwrap()
            })
            .collect()
    };
    let close = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(a, b)| (a - b).abs() < 1e-12);

    for (name, cfg) in variants() {
        // f32 weights from the seeded initialiser, copied to f64 (Loaded keeps f64).
        let mut p = ParamBuilder::new(WeightSource::Init(tinygpt::rng::Rng::new(7)), &dev);
        Attention::new(&mut p, "attn", &cfg, 0.3, 0.3).unwrap();
        let tensors = p
            .finish()
            .unwrap()
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().to_dtype(DType::F64).unwrap()))
            .collect();
        let mut p = ParamBuilder::new(WeightSource::Loaded(tensors), &dev);
        let attn = Attention::new(&mut p, "attn", &cfg, 0.3, 0.3).unwrap();
        let vars: Vec<Tensor> = std::iter::once(x.as_tensor().clone())
            .chain(
                p.finish()
                    .unwrap()
                    .iter()
                    .map(|(_, v)| v.as_tensor().clone()),
            )
            .collect();
        let rope = match cfg.positions {
            Positions::Rope { theta } => Some(
                Rope::new(theta, cfg.head_dim(), cfg.block_size, &dev)
                    .unwrap()
                    .angles(&data.pos, DType::F64)
                    .unwrap(),
            ),
            Positions::Learned => None,
        };
        let fused = Mask::Documents(Documents::new(&data.doc).unwrap());
        let composed = Mask::Additive(document_mask(&data.doc, DType::F64).unwrap());
        let y1 = attn.forward(&x, rope.as_ref(), &fused, None).unwrap();
        let y2 = attn.forward(&x, rope.as_ref(), &composed, None).unwrap();
        assert!(
            max_abs_diff(&y1, &y2) < 1e-12,
            "{name}: {}",
            max_abs_diff(&y1, &y2)
        );
        let (g1, g2) = (grads(y1, &vars), grads(y2, &vars));
        assert!(close(&g1, &g2), "{name}: gradients differ");
        assert!(g1.iter().any(|g| g.abs() > 1e-6), "{name}: no gradient");
    }

    // LayerNorm (with bias) and RMSNorm against the composed formulas, with non-trivial gains.
    for kind in [Norm::LayerNorm, Norm::RmsNorm] {
        let mut weights = HashMap::new();
        let gain = Tensor::randn(1f64, 0.5, c, &dev).unwrap();
        weights.insert("ln.weight".to_string(), gain);
        if kind == Norm::LayerNorm {
            let bias = Tensor::randn(0f64, 0.5, c, &dev).unwrap();
            weights.insert("ln.bias".to_string(), bias);
        }
        let mut p = ParamBuilder::new(WeightSource::Loaded(weights), &dev);
        let norm = model::norm::Norm::new(&mut p, "ln", kind, c, true, 1e-5).unwrap();
        let params = p.finish().unwrap();
        let vars: Vec<Tensor> = std::iter::once(x.as_tensor().clone())
            .chain(params.iter().map(|(_, v)| v.as_tensor().clone()))
            .collect();
        let (y1, y2) = (
            norm.forward(&x).unwrap(),
            norm.forward_composed(&x).unwrap(),
        );
        assert!(max_abs_diff(&y1, &y2) < 1e-12, "{kind:?}");
        assert!(
            close(&grads(y1, &vars), &grads(y2, &vars)),
            "{kind:?}: gradients differ"
        );
    }
    // By hand: LayerNorm of (1, 2, 3) with gain 1 is (−1, 0, 1)·√(3/2).
    let mut p = ParamBuilder::new(WeightSource::Init(tinygpt::rng::Rng::new(1)), &dev);
    let norm = model::norm::Norm::new(&mut p, "ln", Norm::LayerNorm, 3, false, 0.0).unwrap();
    let y: Vec<f64> = norm
        .forward(&Tensor::new(&[1f64, 2.0, 3.0], &dev).unwrap())
        .unwrap()
        .to_vec1()
        .unwrap();
    let s = 1.5f64.sqrt();
    assert!(close(&y, &[-s, 0.0, s]), "{y:?}");
}

/// The fused CPU attention where its kernels take their widest passes: stories of up to 100
/// tokens (a query sees up to seven runs of 16 keys: passes of three, two and one) and heads of
/// 40 and 72 numbers (three and five runs). Against dense attention written here with plain
/// tensor operations: every score, the document-causal mask added, a softmax, the values mixed.
#[test]
fn fused_cpu_attention_equals_dense_attention_for_long_stories_and_wide_heads() {
    use model::fused_attention::{attention, Documents};
    use tinygpt::candle_core::D;

    let dev = Device::Cpu;
    let t = 100;
    // Row 0: stories of 70 and 30 tokens. Row 1: a story that starts at 5 and runs to the end.
    let ids: Vec<u32> = (0..t as u32)
        .map(|i| u32::from(i >= 70))
        .chain((0..t as u32).map(|i| u32::from(i >= 5)))
        .collect();
    let doc = Tensor::from_vec(ids.clone(), (2, t), &dev).unwrap();
    let docs = Documents::new(&doc).unwrap();
    let mask: Vec<f64> = (0..2 * t * t)
        .map(|n| {
            let (b, i, j) = (n / (t * t), n / t % t, n % t);
            let same = ids[b * t + i] == ids[b * t + j];
            if same && j <= i {
                0.0
            } else {
                -1e30
            }
        })
        .collect();
    let mask = Tensor::from_vec(mask, (2, 1, t, t), &dev).unwrap();

    for (nh, nkv, hd) in [(4, 2, 72), (2, 2, 40)] {
        let width = (nh + 2 * nkv) * hd;
        let qkv =
            Var::from_tensor(&Tensor::randn(0f64, 1.0, (2, t, width), &dev).unwrap()).unwrap();
        let w = Tensor::randn(0f64, 1.0, (2, t, nh * hd), &dev).unwrap();
        // (B, T, n·hd) → (B, nh, T, hd), key/value heads repeated for the query heads they serve.
        let heads = |from: usize, n: usize| {
            let x = qkv.narrow(2, from * hd, n * hd).unwrap();
            let x = x.reshape((2, t, n, hd)).unwrap().transpose(1, 2).unwrap();
            let x = x
                .unsqueeze(2)
                .unwrap()
                .repeat((1, 1, nh / n, 1, 1))
                .unwrap();
            x.reshape((2, nh, t, hd)).unwrap().contiguous().unwrap()
        };
        let (q, k, v) = (heads(0, nh), heads(nh, nkv), heads(nh + nkv, nkv));
        let scores = (q.matmul(&k.t().unwrap()).unwrap() / (hd as f64).sqrt()).unwrap();
        let scores = scores.broadcast_add(&mask).unwrap();
        let shifted = scores
            .broadcast_sub(&scores.max_keepdim(D::Minus1).unwrap().detach())
            .unwrap();
        let e = shifted.exp().unwrap();
        let p = e.broadcast_div(&e.sum_keepdim(D::Minus1).unwrap()).unwrap();
        let dense = p.matmul(&v).unwrap().transpose(1, 2).unwrap();
        let dense = dense.reshape((2, t, nh * hd)).unwrap();
        let fused = attention(&qkv, &docs, nh, nkv).unwrap();
        let diff = max_abs_diff(&fused, &dense);
        assert!(
            diff < 1e-12,
            "nh {nh}, nkv {nkv}, hd {hd}: outputs differ by {diff}"
        );

        let grad = |y: &Tensor| {
            let g = (y * &w).unwrap().sum_all().unwrap().backward().unwrap();
            g.get(&qkv).unwrap().clone()
        };
        let diff = max_abs_diff(&grad(&fused), &grad(&dense));
        assert!(
            diff < 1e-11,
            "nh {nh}, nkv {nkv}, hd {hd}: gradients differ by {diff}"
        );
    }
}

/// The embedding table's gradient, hand-computed: each row receives the sum of the gradients of
/// the positions that looked it up. The backward of `sum_all` is a *broadcast* tensor of ones
/// (not contiguous): the patched backward in vendor/candle-core must still hand `index_add` a
/// contiguous gradient (it once stored the broadcast as it was, and this failed).
#[test]
fn embedding_gradient_counts_the_lookups_of_each_row() {
    let dev = Device::Cpu;
    let table = Var::from_tensor(&Tensor::zeros((5, 3), DType::F32, &dev).unwrap()).unwrap();
    let ids = Tensor::new(&[1u32, 3, 1, 0], &dev).unwrap();
    let rows = model::embedding::lookup(&table, &ids).unwrap();
    let grads = rows.sum_all().unwrap().backward().unwrap();
    let g: Vec<Vec<f32>> = grads.get(&table).unwrap().to_vec2().unwrap();
    let expected = [[1.0; 3], [2.0; 3], [0.0; 3], [1.0; 3], [0.0; 3]];
    assert_eq!(g, expected.map(|r| r.to_vec()).to_vec());

    // A gradient that differs per position and column: row 1 gets positions 0 and 2.
    let weights = Tensor::new(
        &[[1f32, 2., 3.], [4., 5., 6.], [7., 8., 9.], [10., 11., 12.]],
        &dev,
    )
    .unwrap();
    let grads = (rows * &weights)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let g: Vec<Vec<f32>> = grads.get(&table).unwrap().to_vec2().unwrap();
    let expected = [
        [10f32, 11., 12.],
        [8., 10., 12.],
        [0.; 3],
        [4., 5., 6.],
        [0.; 3],
    ];
    assert_eq!(g, expected.map(|r| r.to_vec()).to_vec());
}
