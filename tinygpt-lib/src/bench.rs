//! Small measurements shared by `tinygpt bench` and the notebooks, so that a notebook cell and the
//! release binary time exactly the same code.

use std::time::Instant;

use candle_core::{Device, Tensor};

/// GFLOP/s of an `n×n · n×n` f32 matmul on the CPU (best of `repeats`, after one warm-up): a
/// multiply-add per inner-product term, so `2·n³` floating-point operations per matmul.
pub fn matmul_gflops(n: usize, repeats: usize) -> candle_core::Result<f64> {
    let device = Device::Cpu;
    let a = Tensor::randn(0f32, 1f32, (n, n), &device)?;
    let b = Tensor::randn(0f32, 1f32, (n, n), &device)?;
    a.matmul(&b)?; // warm-up: thread pool start, page faults
    let mut best = f64::INFINITY;
    for _ in 0..repeats.max(1) {
        let start = Instant::now();
        let c = a.matmul(&b)?;
        std::hint::black_box(&c);
        best = best.min(start.elapsed().as_secs_f64());
    }
    Ok(2.0 * (n as f64).powi(3) / best / 1e9)
}

/// What `tinygpt bench train` measures.
#[derive(Clone, Debug)]
pub struct TrainBenchOptions {
    pub config: crate::model::GptConfig,
    pub device: Device,
    pub dtype: candle_core::DType,
    pub batch_size: usize,
    pub block_size: usize,
    /// Untimed steps first (kernel compilation, allocator warm-up).
    pub warmup_steps: usize,
    pub steps: usize,
    /// The device's peak FLOP/s for MFU; `None` on the CPU = measure a 1024³ matmul.
    pub peak_flops: Option<f64>,
}

impl TrainBenchOptions {
    /// Rows and tokens per row of a step: the batch size, and the block size up to the model's
    /// context. Both must be at least 1.
    fn shape(&self) -> crate::Result<(usize, usize)> {
        if self.batch_size == 0 || self.block_size == 0 {
            return Err(crate::Error::Invalid(format!(
                "bench: batch size {} × block size {}: both must be at least 1",
                self.batch_size, self.block_size
            )));
        }
        Ok((self.batch_size, self.block_size.min(self.config.block_size)))
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct TrainBenchReport {
    pub device: String,
    /// The CPU's f32 matmul library (`gemm` or `mkl`, see `device::cpu_matmul_library`);
    /// `cuda` on a GPU.
    pub matmul: String,
    pub dtype: String,
    pub params: usize,
    pub batch_size: usize,
    pub block_size: usize,
    pub steps: usize,
    pub step_ms: f64,
    pub tokens_per_s: f64,
    /// Model FLOPs per token (forward + backward) as nanoGPT counts them: 6·N + 12·L·C·T.
    pub flops_per_token: f64,
    pub peak_flops: f64,
    /// Model FLOPs utilisation: achieved model FLOP/s over the peak.
    pub mfu: f64,
    pub first_loss: f32,
    pub last_loss: f32,
    /// On a GPU, the most memory that tensors held at once during the benchmark, in bytes (the
    /// number to compare with PyTorch's `torch.cuda.max_memory_allocated`); `None` on the CPU.
    pub peak_memory: Option<u64>,
}

/// Times full training steps — forward, backward, gradient-norm clipping, AdamW — on synthetic
/// stories (random tokens, an end-of-text every ~200 tokens so the document mask does real work).
pub fn train_throughput(o: &TrainBenchOptions) -> crate::Result<TrainBenchReport> {
    use crate::data::loader::{document_ids, Batch};
    use crate::model::Gpt;
    use crate::train::{clip_factor, flatten_grads, sum_of_squares, AdamW, AdamWConfig};

    let cfg = &o.config;
    let (b, t) = o.shape()?;
    crate::device::reset_gpu_memory_peak(&o.device)?;
    let mut model = Gpt::new(cfg, 1337, &o.device)?;
    model.set_compute_dtype(o.dtype);
    let mut rng = crate::rng::Rng::new(7);
    let eos = 0u32;
    let mut batch = Batch {
        b,
        t,
        x: vec![],
        y: vec![],
        doc: vec![],
        pos: vec![],
    };
    for _ in 0..b {
        let row: Vec<u32> = (0..=t)
            .map(|_| {
                if rng.uniform() < 0.005 {
                    eos
                } else {
                    1 + (rng.next_u64() % (cfg.vocab_size as u64 - 1)) as u32
                }
            })
            .collect();
        let (doc, pos) = document_ids(&row[..t], eos);
        batch.x.extend(&row[..t]);
        batch.y.extend(&row[1..]);
        batch.doc.extend(doc);
        batch.pos.extend(pos);
    }
    let data = batch.to_tensors(&o.device)?;
    let mut opt = AdamW::new(AdamWConfig::default());
    let mut losses = vec![];
    // As the trainer does: the gradients laid end to end, their norm and the loss read in one
    // trip to the host (the step's only wait for the device), AdamW on them.
    let step = |opt: &mut AdamW| -> crate::Result<f32> {
        let loss = model.loss(&data)?.to_dtype(candle_core::DType::F32)?;
        let grads = flatten_grads(model.params(), &loss.backward()?)?;
        let stats: Vec<f32> =
            Tensor::cat(&[sum_of_squares(&grads)?.reshape(1)?, loss.reshape(1)?], 0)?.to_vec1()?;
        let norm = (stats[0] as f64).sqrt();
        opt.step_flat(model.params(), &grads, 1e-3, clip_factor(norm, 1.0))?;
        Ok(stats[1])
    };
    for _ in 0..o.warmup_steps {
        losses.push(step(&mut opt)?);
    }
    crate::device::synchronize(&o.device)?;
    let start = Instant::now();
    for _ in 0..o.steps.max(1) {
        losses.push(step(&mut opt)?);
    }
    crate::device::synchronize(&o.device)?;
    let seconds = start.elapsed().as_secs_f64();
    let summary = crate::model::ParamSummary::of(&model);
    let flops_per_token = summary.training_flops_per_token(cfg, t);
    let tokens_per_s = (b * t * o.steps.max(1)) as f64 / seconds;
    let peak_flops = match o.peak_flops {
        Some(p) => p,
        None => matmul_gflops(1024, 5)? * 1e9,
    };
    Ok(TrainBenchReport {
        device: format!("{:?}", o.device.location()),
        matmul: match o.device {
            Device::Cpu => crate::device::cpu_matmul_library().to_string(),
            _ => "cuda".to_string(),
        },
        dtype: format!("{:?}", o.dtype).to_lowercase(),
        params: summary.total,
        batch_size: b,
        block_size: t,
        steps: o.steps.max(1),
        step_ms: seconds * 1e3 / o.steps.max(1) as f64,
        tokens_per_s,
        flops_per_token,
        peak_flops,
        mfu: tokens_per_s * flops_per_token / peak_flops,
        first_loss: losses[0],
        last_loss: *losses.last().unwrap(),
        peak_memory: crate::device::gpu_memory(&o.device)?.map(|m| m.peak),
    })
}

/// Tokens per second of KV-cache decoding (batch 1, greedy), after a one-token prompt.
pub fn decode_tokens_per_s(
    model: &crate::model::Gpt,
    tokens: usize,
    start: u32,
) -> crate::Result<f64> {
    let options = crate::model::GenerateOptions {
        max_new_tokens: tokens,
        temperature: 0.0,
        ..Default::default()
    };
    crate::model::generate(model, &[start], &options, |_| true)?; // warm-up
    let t0 = Instant::now();
    let n = crate::model::generate(model, &[start], &options, |_| true)?.len();
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

/// Where the time of a training step goes: the step's phases (forward, backward, gradient norm,
/// optimizer) and the model's building blocks timed alone at the same shapes, each forward +
/// backward, synchronised, as milliseconds per call. A profile for finding what to optimise.
pub fn train_profile(o: &TrainBenchOptions) -> crate::Result<Vec<(String, f64)>> {
    use crate::model::attention::{document_mask, softmax_last_dim, Attention, Mask};
    use crate::model::linear::Linear;
    use crate::model::norm::Norm;
    use crate::model::params::{ParamBuilder, WeightSource};
    use crate::model::Gpt;
    use crate::train::{clip_factor, flatten_grads, grad_norm, AdamW, AdamWConfig};
    use candle_core::{Module, Var};

    let cfg = &o.config;
    let ((b, t), c, dev, dt) = (o.shape()?, cfg.n_embd, &o.device, o.dtype);
    let reps = o.steps.max(1);
    let mut rows = vec![];
    let mut time = |label: &str, f: &mut dyn FnMut() -> crate::Result<()>| -> crate::Result<()> {
        f()?; // warm-up
        crate::device::synchronize(dev)?;
        let start = Instant::now();
        for _ in 0..reps {
            f()?;
        }
        crate::device::synchronize(dev)?;
        rows.push((
            label.to_string(),
            start.elapsed().as_secs_f64() * 1e3 / reps as f64,
        ));
        Ok(())
    };
    let mut model = Gpt::new(cfg, 1, dev)?;
    model.set_compute_dtype(dt);
    let mut rng = crate::rng::Rng::new(3);
    let ids: Vec<u32> = (0..b * t)
        .map(|_| (rng.next_u64() % cfg.vocab_size as u64) as u32)
        .collect();
    let doc: Vec<u32> = (0..b * t).map(|i| ((i % t) / 200) as u32).collect();
    let pos: Vec<u32> = (0..b * t).map(|i| ((i % t) % 200) as u32).collect();
    let x = Tensor::from_vec(ids.clone(), (b, t), dev)?;
    let y = Tensor::from_vec(ids, (b, t), dev)?;
    let doc = Tensor::from_vec(doc, (b, t), dev)?;
    let pos = Tensor::from_vec(pos, (b, t), dev)?;
    let batch = crate::data::loader::BatchTensors {
        x: x.clone(),
        y,
        doc: doc.clone(),
        pos,
    };

    time("step: forward + loss", &mut || {
        model.loss(&batch)?;
        Ok(())
    })?;
    time("step: forward + loss + backward", &mut || {
        model.loss(&batch)?.backward()?;
        Ok(())
    })?;
    // As the step above: the gradients laid end to end and their norm, then AdamW on them.
    let grads = model.loss(&batch)?.backward()?;
    time("step: gradient norm", &mut || {
        grad_norm(model.params(), &grads).map(|_| ())
    })?;
    let flat = flatten_grads(model.params(), &grads)?;
    let mut opt = AdamW::new(AdamWConfig::default());
    time("step: AdamW update", &mut || {
        opt.step_flat(model.params(), &flat, 1e-4, clip_factor(1.0, 1.0))
    })?;

    // The model's building blocks alone at its shapes, inputs already in the compute dtype:
    // forward only, then forward + backward (the backward's share is the difference). The
    // backward starts from the gradient of a sum (all ones).
    let var = |shape: &[usize]| -> crate::Result<Var> {
        Ok(Var::from_tensor(
            &Tensor::randn(0f32, 1.0, shape, dev)?.to_dtype(dt)?,
        )?)
    };
    let mut piece = |label: &str, f: &dyn Fn() -> crate::Result<Tensor>| -> crate::Result<()> {
        time(&format!("{label}: forward"), &mut || f().map(|_| ()))?;
        time(&format!("{label}: forward + backward"), &mut || {
            // candle's `backward` of a tensor starts from a (contiguous) tensor of ones: the
            // gradient of its sum, as a loss would give it. (`sum_all()?.backward()` would
            // start from a broadcast scalar, and copying that into a dense gradient is slow.)
            f()?.backward()?;
            Ok(())
        })
    };
    let flat_ids = x.flatten_all()?;
    let wte = Var::from_tensor(&Tensor::randn(0f32, 1.0, (cfg.vocab_size, c), dev)?)?;
    piece("embedding lookup (f32 table)", &|| {
        Ok(crate::model::embedding::lookup(&wte, &flat_ids)?.to_dtype(dt)?)
    })?;
    let logits = var(&[b * t, cfg.vocab_size])?;
    let targets = batch.y.flatten_all()?;
    piece("cross-entropy over the logits", &|| {
        crate::model::cross_entropy(&logits, &targets)
    })?;
    let head = Linear {
        weight: wte.as_tensor().clone(),
        bias: None,
    };
    let h = var(&[b * t, c])?;
    piece(
        "lm_head matmul (tied f32 weight)",
        &|| Ok(head.forward(&h)?),
    )?;
    // The two matrix products of the lm_head's backward, alone (no gradient flows back): the
    // input's gradient dy · W and the weight's, dyᵀ · x (in W's own layout, as the backward of
    // `x · Wᵀ` computes it; vendor/candle-core/PATCH.md).
    let (dy, w) = (logits.as_tensor(), wte.as_tensor().to_dtype(dt)?);
    piece("  its backward's dy @ W alone", &|| {
        Ok(dy.matmul(&w)?.detach())
    })?;
    piece("  its backward's dyᵀ @ x alone", &|| {
        Ok(dy.t()?.matmul(h.as_tensor())?.detach())
    })?;
    let mut p = ParamBuilder::new(WeightSource::Init(crate::rng::Rng::new(1)), dev);
    let attn = Attention::new(&mut p, "attn", cfg, 0.02, 0.02)?;
    let mlp_fc = Linear::new(&mut p, "fc", c, cfg.mlp_hidden(), cfg.bias, 0.02)?;
    let ln = Norm::new(&mut p, "ln", cfg.norm, c, cfg.bias, cfg.norm_eps)?;
    let xs = var(&[b, t, c])?;
    let layer_mask = Mask::for_documents(&doc, dt)?;
    piece(
        "document mask (once per batch, no backward)",
        &|| match Mask::for_documents(&doc, dt)? {
            Mask::Additive(mask) => Ok(mask.sum_all()?.detach()),
            Mask::Documents(_) => Ok(Tensor::zeros((), dt, dev)?),
        },
    )?;
    piece("attention layer", &|| {
        attn.forward(&xs, None, &layer_mask, None)
    })?;
    if let Mask::Documents(docs) = &layer_mask {
        let qkv = var(&[b, t, (cfg.n_head + 2 * cfg.n_kv_head) * cfg.head_dim()])?;
        piece("  of which the fused attention kernel", &|| {
            crate::model::fused_attention::attention(&qkv, docs, cfg.n_head, cfg.n_kv_head)
        })?;
    }
    let mask = document_mask(&doc, dt)?;
    let scores = var(&[b, cfg.n_head, t, t])?;
    piece("  softmax(scores + mask) of the composed path", &|| {
        // The same choice as the attention layer: the fused kernel where there is one.
        if crate::model::fused::available(&scores) {
            crate::model::fused::masked_softmax(&scores, &mask)
        } else {
            softmax_last_dim(&scores.broadcast_add(&mask)?)
        }
    })?;
    piece("MLP c_fc matmul + bias + GELU", &|| {
        crate::model::fused::gelu(&mlp_fc.forward(&xs)?)
    })?;
    piece("  of which the matmul + bias", &|| Ok(mlp_fc.forward(&xs)?))?;
    let hidden = var(&[b, t, cfg.mlp_hidden()])?;
    piece("  of which the GELU", &|| {
        crate::model::fused::gelu(&hidden)
    })?;
    piece("norm", &|| Ok(ln.forward(&xs)?))?;
    Ok(rows)
}

/// What `tinygpt bench tokenizer` measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TokenizerBenchReport {
    pub text_bytes: usize,
    pub stories: usize,
    pub vocab_size: usize,
    /// Training on all stories, seconds: ours, then the `tokenizers` crate's `BpeTrainer`.
    pub train_s_ours: f64,
    pub train_s_tokenizers: f64,
    /// Encoding every story, one after another on one thread, MB/s of text.
    pub encode_mb_s_ours: f64,
    pub encode_mb_s_tokenizers: f64,
    /// Encoding every story in parallel on all cores (ours: `encode_all`; theirs: `encode_batch`).
    pub encode_all_mb_s_ours: f64,
    pub encode_all_mb_s_tokenizers: f64,
    /// Whether both encoders gave the same ids for every story.
    pub same_ids: bool,
}

/// Trains a byte-level BPE of `vocab_size` on `stories` with our trainer and with the
/// `tokenizers` crate's (same settings: GPT-2's pre-tokenizer, all 256 bytes, `<|endoftext|>`),
/// then encodes all stories with our encoder and with the `tokenizers` crate loading *our*
/// vocabulary and merges, and checks both give the same ids.
pub fn tokenizer_throughput(
    stories: &[String],
    vocab_size: usize,
) -> crate::Result<TokenizerBenchReport> {
    use crate::tokenizer::{Bpe, Tokenizer, EOS_TOKEN};
    use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::{AddedToken, TokenizerBuilder};

    let texts: Vec<&str> = stories.iter().map(String::as_str).collect();
    let text_bytes: usize = stories.iter().map(String::len).sum();
    let mb = text_bytes as f64 / 1e6;
    let tok_err = |e: tokenizers::Error| crate::Error::Invalid(format!("tokenizers: {e}"));

    let t0 = Instant::now();
    let bpe = Bpe::train(&texts, vocab_size, &[EOS_TOKEN.to_string()])?;
    let train_s_ours = t0.elapsed().as_secs_f64();

    let t0 = Instant::now();
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(0)
        .show_progress(false)
        .special_tokens(vec![AddedToken::from(EOS_TOKEN, true)])
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut theirs_trained = TokenizerBuilder::<
        BPE,
        tokenizers::NormalizerWrapper,
        ByteLevel,
        tokenizers::PostProcessorWrapper,
        ByteLevel,
    >::new()
    .with_model(BPE::default())
    .with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)))
    .with_decoder(Some(ByteLevel::default()))
    .build()
    .map_err(tok_err)?;
    theirs_trained
        .train(&mut trainer, stories.iter())
        .map_err(tok_err)?;
    let train_s_tokenizers = t0.elapsed().as_secs_f64();

    // Encoding: both with our vocabulary and merges.
    let ours = Tokenizer::from_bpe(bpe.clone(), "ours")?;
    let json = bpe.to_tokenizer_json().to_string();
    let theirs = <tokenizers::Tokenizer as std::str::FromStr>::from_str(&json).map_err(tok_err)?;

    let t0 = Instant::now();
    let mut cache = std::collections::HashMap::new();
    let ids_ours: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| bpe.encode_with_cache(t, &mut cache))
        .collect();
    let encode_mb_s_ours = mb / t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let ids_theirs: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| theirs.encode_fast(*t, false).map(|e| e.get_ids().to_vec()))
        .collect::<Result<_, _>>()
        .map_err(tok_err)?;
    let encode_mb_s_tokenizers = mb / t0.elapsed().as_secs_f64();

    let t0 = Instant::now();
    let all_ours = ours.encode_all(stories)?;
    let encode_all_mb_s_ours = mb / t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let all_theirs = theirs
        .encode_batch_fast(texts.clone(), false)
        .map_err(tok_err)?;
    let encode_all_mb_s_tokenizers = mb / t0.elapsed().as_secs_f64();

    let same_ids = ids_ours == ids_theirs
        && all_ours == ids_ours
        && all_theirs
            .iter()
            .zip(&ids_ours)
            .all(|(e, o)| e.get_ids() == o.as_slice());
    Ok(TokenizerBenchReport {
        text_bytes,
        stories: stories.len(),
        vocab_size,
        train_s_ours,
        train_s_tokenizers,
        encode_mb_s_ours,
        encode_mb_s_tokenizers,
        encode_all_mb_s_ours,
        encode_all_mb_s_tokenizers,
        same_ids,
    })
}
