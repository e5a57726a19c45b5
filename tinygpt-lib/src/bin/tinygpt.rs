//! The `tinygpt` command-line tool. Each subcommand is a thin layer over the library, so that a
//! notebook cell and the CLI run the same code.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use tinygpt::candle_core::Device;
use tinygpt::data::{self, PrepareOptions, Source, Split};
use tinygpt::model::{checkpoint, GenerateOptions, Gpt, GptConfig, ParamSummary};
use tinygpt::Tokenizer;

#[derive(Parser)]
#[command(
    name = "tinygpt",
    version,
    about = "Pretrain a GPT-2-style transformer on TinyStories"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Tokenize TinyStories into uint16 .npy shards plus manifest.json.
    Prepare {
        /// `hub` (the parquet files), `hub:text` (TinyStories-*.txt), `hub:v2` (the GPT-4 text
        /// files), or a folder of train*/valid* text or parquet files.
        #[arg(long, env = "TINYGPT_DATA", default_value = "hub")]
        source: String,
        /// `gpt-neo` (EleutherAI/gpt-neo-125M from the hub), the path of a tokenizer.json, or
        /// `bpe:N`: our BPE with N tokens, trained on the train split (or reused) into `--out`.
        #[arg(long, default_value = "gpt-neo")]
        tokenizer: String,
        /// Output folder for the shards and the manifest (default: data/gpt-neo, or data/bpe-N).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Tokens per shard.
        #[arg(long, default_value_t = data::shards::DEFAULT_SHARD_TOKENS)]
        shard_tokens: usize,
        /// Tokenize again even if `--out` already holds shards of the same inputs.
        #[arg(long)]
        force: bool,
        /// No progress bars.
        #[arg(long)]
        quiet: bool,
    },
    /// Train a model on prepared shards (CPU or one GPU); checkpoints resume exactly.
    Train {
        #[arg(long, default_value = "small", help = preset_help())]
        preset: String,
        /// Shards written by `tinygpt prepare` (its --out folder).
        #[arg(long)]
        data: PathBuf,
        /// Run folder: `checkpoint/` and `metrics.jsonl`.
        #[arg(long, default_value = "runs/train")]
        out: PathBuf,
        /// Rows per micro-batch.
        #[arg(long, default_value_t = 8)]
        batch_size: usize,
        /// Micro-batches per optimizer step.
        #[arg(long, default_value_t = 1)]
        grad_accum: usize,
        /// Length of the schedule, in optimizer steps.
        #[arg(long, default_value_t = 1000)]
        max_steps: u64,
        /// Stop (after a checkpoint) when this many seconds have passed.
        #[arg(long)]
        time_budget: Option<f64>,
        /// Evaluate (validation loss and bits per byte) and checkpoint every N steps.
        #[arg(long, default_value_t = 100)]
        eval_interval: u64,
        /// Continue the run in `--out` from its checkpoint.
        #[arg(long)]
        resume: bool,
        #[arg(long, default_value_t = 1337)]
        seed: u64,
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// The whole pipeline on a fresh machine: TinyStories → our BPE (4096) → shards → a CPU-sized
    /// model trained within a time budget → validation loss, a loss-curve PNG and a story.
    Quickstart {
        #[arg(long, env = "TINYGPT_DATA", default_value = "hub")]
        source: String,
        /// Training time, in seconds.
        #[arg(long, default_value_t = 600.0)]
        time_budget: f64,
        #[arg(long, default_value = "runs/quickstart")]
        out: PathBuf,
        #[arg(long, default_value = "tiny", help = preset_help())]
        preset: String,
    },
    /// Validation loss and bits per byte of a checkpoint on prepared shards.
    Eval {
        /// A checkpoint folder (ours or Hugging Face) or a llama2.c .bin file.
        #[arg(long)]
        checkpoint: PathBuf,
        /// Shards written by `tinygpt prepare` with the checkpoint's tokenizer.
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value_t = 8)]
        batch_size: usize,
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Train, use and inspect tokenizers.
    Tokenizer {
        #[command(subcommand)]
        what: TokenizerCommand,
    },
    /// Write a freshly initialised model checkpoint (config.json + model.safetensors).
    Init {
        /// One of the presets (see `tinygpt summary --help`): seed-61m, small, tiny, llama-small, …
        #[arg(long)]
        preset: String,
        /// Seed of the initial weights (the same seed gives the same weights on every device).
        #[arg(long, default_value_t = 1337)]
        seed: u64,
        /// A tokenizer.json to store with the model (its vocabulary must fit the preset's).
        #[arg(long)]
        tokenizer: Option<String>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the parameter table of a preset or a checkpoint.
    Summary {
        #[arg(long, conflicts_with = "checkpoint", required_unless_present = "checkpoint", help = preset_help())]
        preset: Option<String>,
        /// A checkpoint folder (ours or Hugging Face) or a llama2.c .bin file.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
    },
    /// Generate text (streamed) from a checkpoint.
    Generate {
        /// A checkpoint folder (ours or Hugging Face) or a llama2.c .bin file.
        #[arg(long)]
        checkpoint: PathBuf,
        /// The story's beginning; without it generation starts from the end-of-text/BOS token.
        #[arg(long)]
        prompt: Option<String>,
        #[arg(long, default_value_t = 256)]
        max_new_tokens: usize,
        /// 0 = greedy.
        #[arg(long, default_value_t = 1.0)]
        temperature: f32,
        /// Keep the k most likely tokens (0 = all).
        #[arg(long, default_value_t = 50)]
        top_k: usize,
        /// Keep the most likely tokens up to this total probability.
        #[arg(long)]
        top_p: Option<f32>,
        #[arg(long, default_value_t = 1337)]
        seed: u64,
        /// `text`, or `ids` (needed for checkpoints without a tokenizer, such as llama2.c files).
        #[arg(long, default_value = "text", value_parser = ["text", "ids"])]
        format: String,
        /// The id generation starts from (default: the tokenizer's end-of-text; 1 for llama2.c files).
        #[arg(long)]
        bos: Option<u32>,
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Convert a checkpoint (ours, or a llama2.c .bin) to Hugging Face format.
    Export {
        #[arg(long)]
        checkpoint: PathBuf,
        #[arg(long, default_value = "hf", value_parser = ["hf"])]
        format: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Measurements (results go to docs/BENCHMARKS.md).
    Bench {
        #[command(subcommand)]
        what: Bench,
    },
}

#[derive(Subcommand)]
enum TokenizerCommand {
    /// Train our byte-level BPE on text files and save it as a Hugging Face tokenizer.json.
    Train {
        /// UTF-8 text files (stories separated by `<|endoftext|>` lines, or any text).
        #[arg(long, required = true, num_args = 1..)]
        input: Vec<PathBuf>,
        #[arg(long, default_value_t = 4096)]
        vocab_size: usize,
        /// Special tokens, never split or merged (repeat the flag for several).
        #[arg(long = "special", default_values_t = vec![tinygpt::tokenizer::EOS_TOKEN.to_string()])]
        specials: Vec<String>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Encode all of stdin as one text; print the ids separated by spaces.
    Encode {
        /// `gpt-neo` or the path of a tokenizer.json.
        #[arg(long)]
        tokenizer: String,
    },
    /// Decode ids (separated by whitespace) from stdin; print the text.
    Decode {
        #[arg(long)]
        tokenizer: String,
    },
}

#[derive(Subcommand)]
enum Bench {
    /// GFLOP/s of an n×n f32 matmul on the CPU, the same code as the notebook's cell.
    Matmul {
        #[arg(long, default_value_t = 1024)]
        size: usize,
        #[arg(long, default_value_t = 10)]
        repeats: usize,
    },
    /// Tokens/s and MFU of full training steps (forward, backward, clipping, AdamW).
    Train {
        #[arg(long, default_value = "small", help = preset_help())]
        preset: String,
        #[arg(long, default_value = "cpu")]
        device: String,
        /// auto (bf16 on a GPU, f32 on the CPU), f32, bf16 or f16.
        #[arg(long, default_value = "auto")]
        dtype: String,
        /// Rows per step (default: 8 on the CPU, 32 on a GPU).
        #[arg(long)]
        batch_size: Option<usize>,
        /// Tokens per row (default: the preset's context).
        #[arg(long)]
        block_size: Option<usize>,
        #[arg(long, default_value_t = 10)]
        steps: usize,
        #[arg(long, default_value_t = 2)]
        warmup_steps: usize,
        /// The device's peak TFLOP/s for MFU (default on the CPU: a measured 1024³ matmul;
        /// required on a GPU, e.g. 989 for an H100/H200 SXM in bf16).
        #[arg(long)]
        peak_tflops: Option<f64>,
        /// Print the result as one JSON object on the last line.
        #[arg(long)]
        json: bool,
        /// Also time the step's phases and the model's pieces alone (forward + backward each).
        #[arg(long)]
        profile: bool,
    },
    /// Our BPE vs the `tokenizers` crate: training time and encoding MB/s on the same stories.
    Tokenizer {
        /// Stories to train and encode on (default: TinyStories' train split from --source).
        #[arg(long)]
        input: Option<PathBuf>,
        #[arg(long, env = "TINYGPT_DATA", default_value = "hub")]
        source: String,
        #[arg(long, default_value_t = 4096)]
        vocab_size: usize,
        #[arg(long)]
        json: bool,
    },
    /// Tokens/s of KV-cache decoding (batch 1, greedy) of a checkpoint or preset.
    Decode {
        #[arg(long, conflicts_with = "checkpoint", required_unless_present = "checkpoint", help = preset_help())]
        preset: Option<String>,
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        #[arg(long, default_value_t = 256)]
        tokens: usize,
        #[arg(long, default_value = "cpu")]
        device: String,
    },
}

fn preset_help() -> String {
    let lines: Vec<String> = tinygpt::model::PRESETS
        .iter()
        .map(|(n, d)| format!("{n}: {d}"))
        .collect();
    format!("A model preset. {}", lines.join("; "))
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Prepare {
            source,
            tokenizer,
            out,
            shard_tokens,
            force,
            quiet,
        } => {
            let source = Source::parse(&source)?;
            let (tokenizer, out) = match tinygpt::tokenizer::parse_bpe_spec(&tokenizer)? {
                Some(n) => {
                    let out = out.unwrap_or_else(|| PathBuf::from(format!("data/bpe-{n}")));
                    let start = std::time::Instant::now();
                    let (tok, reused) =
                        tinygpt::tokenizer::train_or_reuse(&source, n, &out, force)?;
                    if reused {
                        println!(
                            "reusing {} (trained on the same files)",
                            out.join("tokenizer.json").display()
                        );
                    } else {
                        println!(
                            "trained our BPE ({n} tokens) on the train split in {:.1} s -> {}",
                            start.elapsed().as_secs_f64(),
                            out.join("tokenizer.json").display()
                        );
                    }
                    (tok, out)
                }
                None => (
                    Tokenizer::load(&tokenizer)?,
                    out.unwrap_or_else(|| PathBuf::from("data/gpt-neo")),
                ),
            };
            let options = PrepareOptions {
                shard_tokens,
                force,
                progress: !quiet,
            };
            let report = data::prepare(&source, &tokenizer, &out, &options)?;
            print_prepare(&report, &out);
        }
        Command::Tokenizer { what } => tokenizer_command(what)?,
        Command::Quickstart {
            source,
            time_budget,
            out,
            preset,
        } => quickstart(&source, time_budget, &out, &preset)?,
        Command::Eval {
            checkpoint: path,
            data,
            batch_size,
            device,
        } => {
            let device = tinygpt::device::parse_device(&device)?;
            let loaded = checkpoint::load(&path, &device)?;
            let (loss, bpb) = tinygpt::train::evaluate(
                &loaded.model,
                &data,
                batch_size,
                loaded.tokenizer.as_ref(),
                None,
            )?;
            println!(
                "{}: validation loss {loss:.4} nats/token, {bpb:.4} bits/byte",
                path.display()
            );
        }
        Command::Train {
            preset,
            data,
            out,
            batch_size,
            grad_accum,
            max_steps,
            time_budget,
            eval_interval,
            resume,
            seed,
            device,
        } => {
            let device = tinygpt::device::parse_device(&device)?;
            let config = tinygpt::train::TrainConfig {
                seed,
                ..tinygpt::train::TrainConfig::recipe(
                    GptConfig::preset(&preset)?,
                    batch_size,
                    grad_accum,
                    max_steps,
                )
            };
            train_command(
                config,
                &data,
                &out,
                time_budget,
                eval_interval.max(1),
                resume,
                &device,
            )?;
        }
        Command::Init {
            preset,
            seed,
            tokenizer,
            out,
        } => {
            let config = GptConfig::preset(&preset)?;
            let model = Gpt::new(&config, seed, &Device::Cpu)?;
            let tokenizer = tokenizer.map(|t| Tokenizer::load(&t)).transpose()?;
            checkpoint::save(&out, &model, tokenizer.as_ref())?;
            println!(
                "wrote {} ({preset}, seed {seed}, {} parameters)",
                out.display(),
                ParamSummary::of(&model).total
            );
        }
        Command::Summary { preset, checkpoint } => {
            let (model, _, _) = model_from(preset, checkpoint, &Device::Cpu)?;
            println!("{}", serde_json::to_string(model.config())?);
            print!("{}", ParamSummary::of(&model));
        }
        Command::Generate {
            checkpoint: path,
            prompt,
            max_new_tokens,
            temperature,
            top_k,
            top_p,
            seed,
            format,
            bos,
            device,
        } => {
            generate(
                &path,
                prompt,
                max_new_tokens,
                temperature,
                top_k,
                top_p,
                seed,
                &format,
                bos,
                &device,
            )?;
        }
        Command::Export {
            checkpoint: path,
            format: _,
            out,
        } => {
            let loaded = checkpoint::load(&path, &Device::Cpu)?;
            tinygpt::model::hf::export(&loaded.model, loaded.tokenizer.as_ref(), &out)?;
            let arch = tinygpt::model::hf::HfArch::of(loaded.model.config())?;
            println!("wrote {} ({arch:?}); load it with transformers' AutoModelForCausalLM.from_pretrained", out.display());
        }
        Command::Bench {
            what:
                Bench::Train {
                    preset,
                    device,
                    dtype,
                    batch_size,
                    block_size,
                    steps,
                    warmup_steps,
                    peak_tflops,
                    json,
                    profile,
                },
        } => {
            let config = GptConfig::preset(&preset)?;
            let device = tinygpt::device::parse_device(&device)?;
            let dtype = tinygpt::device::parse_dtype(&dtype, &device)?;
            if !device.is_cpu() && peak_tflops.is_none() {
                anyhow::bail!("--peak-tflops is needed on a GPU to compute MFU (e.g. 989 for an H100/H200 SXM in bf16)");
            }
            let options = tinygpt::bench::TrainBenchOptions {
                batch_size: batch_size.unwrap_or(if device.is_cpu() { 8 } else { 32 }),
                block_size: block_size.unwrap_or(config.block_size),
                config,
                device,
                dtype,
                warmup_steps,
                steps,
                peak_flops: peak_tflops.map(|t| t * 1e12),
            };
            if profile {
                println!(
                    "profile of {preset} ({:?}, batch {} x {}), ms per call:",
                    options.dtype, options.batch_size, options.block_size
                );
                for (label, ms) in tinygpt::bench::train_profile(&options)? {
                    println!("{ms:>10.2}  {label}");
                }
            }
            let r = tinygpt::bench::train_throughput(&options)?;
            println!(
                "train {preset} on {} ({}): batch {} x {}, {} params: {:.1} ms/step, {:.0} tokens/s, MFU {:.1}% of {:.1} TFLOP/s (loss {:.3} -> {:.3})",
                r.device, r.dtype, r.batch_size, r.block_size, r.params, r.step_ms, r.tokens_per_s, 100.0 * r.mfu, r.peak_flops / 1e12, r.first_loss, r.last_loss
            );
            if json {
                println!("{}", serde_json::to_string(&r)?);
            }
        }
        Command::Bench {
            what:
                Bench::Decode {
                    preset,
                    checkpoint,
                    tokens,
                    device,
                },
        } => {
            let device = tinygpt::device::parse_device(&device)?;
            let (model, start, what) = model_from(preset, checkpoint, &device)?;
            let tps = tinygpt::bench::decode_tokens_per_s(
                &model,
                tokens.min(model.config().block_size - 1),
                start,
            )?;
            println!(
                "decode {what} on {:?}: {tps:.0} tokens/s (batch 1, greedy, KV cache)",
                device.location()
            );
        }
        Command::Bench {
            what:
                Bench::Tokenizer {
                    input,
                    source,
                    vocab_size,
                    json,
                },
        } => {
            let stories = match input {
                Some(path) => tinygpt::data::source::read_stories(&path)?,
                None => Source::parse(&source)?.stories(Split::Train)?,
            };
            let r = tinygpt::bench::tokenizer_throughput(&stories, vocab_size)?;
            println!(
                "{} stories, {:.2} MB, vocab {}",
                r.stories,
                r.text_bytes as f64 / 1e6,
                r.vocab_size
            );
            println!(
                "train:            ours {:>7.2} s    tokenizers {:>7.2} s  ({:.2}x)",
                r.train_s_ours,
                r.train_s_tokenizers,
                r.train_s_ours / r.train_s_tokenizers
            );
            println!(
                "encode, 1 thread: ours {:>7.2} MB/s tokenizers {:>7.2} MB/s ({:.2}x)",
                r.encode_mb_s_ours,
                r.encode_mb_s_tokenizers,
                r.encode_mb_s_ours / r.encode_mb_s_tokenizers
            );
            println!(
                "encode, parallel: ours {:>7.2} MB/s tokenizers {:>7.2} MB/s ({:.2}x)",
                r.encode_all_mb_s_ours,
                r.encode_all_mb_s_tokenizers,
                r.encode_all_mb_s_ours / r.encode_all_mb_s_tokenizers
            );
            println!("same ids from both encoders: {}", r.same_ids);
            if json {
                println!("{}", serde_json::to_string(&r)?);
            }
        }
        Command::Bench {
            what: Bench::Matmul { size, repeats },
        } => {
            let gflops = tinygpt::bench::matmul_gflops(size, repeats)?;
            println!(
                "matmul {size}x{size}x{size} f32 on CPU: {gflops:.1} GFLOP/s (best of {repeats})"
            );
        }
    }
    Ok(())
}

/// `tinygpt quickstart`: every stage reuses what an earlier run already prepared.
fn quickstart(
    source: &str,
    time_budget: f64,
    out: &std::path::Path,
    preset: &str,
) -> anyhow::Result<()> {
    let source = Source::parse(source)?;
    let data = out.join("data");
    let (tokenizer, reused) = tinygpt::tokenizer::train_or_reuse(&source, 4096, &data, false)?;
    println!(
        "1/4 tokenizer: our BPE, {} tokens ({})",
        tokenizer.vocab_size(),
        if reused {
            "reused"
        } else {
            "trained on the train split"
        }
    );
    let report = data::prepare(
        &source,
        &tokenizer,
        &data,
        &PrepareOptions {
            shard_tokens: data::shards::DEFAULT_SHARD_TOKENS,
            force: false,
            progress: true,
        },
    )?;
    print_prepare(&report, &data);
    println!("2/4 shards in {}", data.display());
    // Training from scratch each time: the budget is the run. (`tinygpt train --resume` continues one.)
    let run = out.join("run");
    let _ = std::fs::remove_file(run.join("metrics.jsonl"));
    let config = tinygpt::train::TrainConfig {
        // A small model on a short budget: more, smaller steps and a higher learning rate than
        // the original's (1e-3 for 61M parameters) reach a lower loss in the same time.
        max_lr: 3e-3,
        min_lr: 3e-4,
        eval_batches: Some(64),
        ..tinygpt::train::TrainConfig::recipe(GptConfig::preset(preset)?, 4, 1, 100_000)
    };
    // The cosine schedule needs a length: estimate how many steps fit in the budget, leaving
    // time for the four evaluations (at each quarter of the run).
    let steps = {
        let mut probe = tinygpt::train::Trainer::new(config.clone(), &data, &Device::Cpu)?;
        probe.step()?; // the first step also pays for allocations: time the second
        let t0 = std::time::Instant::now();
        probe.step()?;
        let step_s = t0.elapsed().as_secs_f64().max(1e-3);
        let t0 = std::time::Instant::now();
        probe.evaluate()?;
        let eval_s = t0.elapsed().as_secs_f64();
        (((time_budget - 4.0 * eval_s) / step_s).max(1.0) as u64).min(100_000)
    };
    let config = tinygpt::train::TrainConfig {
        warmup_steps: (steps / 100).max(1),
        max_steps: steps,
        ..config
    };
    println!(
        "3/4 training {preset} for about {time_budget:.0} s (~{steps} steps of {} tokens)",
        config.batch_size * config.model.block_size
    );
    train_command(
        config,
        &data,
        &run,
        Some(time_budget),
        (steps / 4).max(1),
        false,
        &Device::Cpu,
    )?;
    // The loss curves, from metrics.jsonl.
    let (mut train_curve, mut val_curve) = (vec![], vec![]);
    for line in std::fs::read_to_string(run.join("metrics.jsonl"))?.lines() {
        let m: serde_json::Value = serde_json::from_str(line)?;
        let tokens = m["tokens"].as_f64().unwrap_or(0.0);
        train_curve.push((tokens, m["loss"].as_f64().unwrap_or(f64::NAN)));
        if let Some(v) = m.get("val_loss").and_then(|v| v.as_f64()) {
            val_curve.push((tokens, v));
        }
    }
    let png = out.join("loss.png");
    tinygpt::plot::Figure::lines(
        &format!("quickstart: {preset} on TinyStories"),
        "tokens seen",
        "cross-entropy (nats per token)",
        vec![
            tinygpt::plot::Series::new("train", &train_curve),
            tinygpt::plot::Series::new("validation", &val_curve),
        ],
        false,
        false,
    )
    .save_png(&png)?;
    let ckpt = run.join("checkpoint");
    let loaded = checkpoint::load(&ckpt, &Device::Cpu)?;
    // On the same validation batches as during training (all of them for a small split).
    let (loss, bpb) =
        tinygpt::train::evaluate(&loaded.model, &data, 4, loaded.tokenizer.as_ref(), Some(64))?;
    let unigram = unigram_entropy(&data)?;
    println!("4/4 validation loss {loss:.3} nats/token ({bpb:.3} bits/byte); a model that only knew token frequencies would score {unigram:.3}");
    println!(
        "loss curve: {}; checkpoint: {}\nA story:\n",
        png.display(),
        ckpt.display()
    );
    generate(
        &ckpt,
        Some("Once upon a time".into()),
        200,
        0.8,
        50,
        None,
        1337,
        "text",
        None,
        "cpu",
    )?;
    Ok(())
}

/// The entropy (nats) of the train split's token frequencies: the loss of the best model that
/// ignores context, the bar any trained model must clear.
fn unigram_entropy(data_dir: &std::path::Path) -> anyhow::Result<f64> {
    let manifest = data::Manifest::load(data_dir)?;
    let mut counts = vec![0u64; manifest.tokenizer.vocab_size];
    for path in manifest.shard_paths(data_dir, Split::Train) {
        for t in data::shards::read_shard(&path)? {
            counts[t as usize] += 1;
        }
    }
    let total: u64 = counts.iter().sum();
    Ok(-counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| c as f64 / total as f64)
        .map(|p| p * p.ln())
        .sum::<f64>())
}

/// `tinygpt train`: steps with a progress bar, metrics.jsonl, evaluation and checkpoints; stops
/// at `max_steps`, at the time budget, or when a file `STOP` appears in the run folder.
fn train_command(
    config: tinygpt::train::TrainConfig,
    data: &std::path::Path,
    out: &std::path::Path,
    time_budget: Option<f64>,
    eval_interval: u64,
    resume: bool,
    device: &Device,
) -> anyhow::Result<()> {
    use std::io::Write;
    use tinygpt::train::Trainer;
    let ckpt = out.join("checkpoint");
    let mut trainer = if resume {
        Trainer::resume(&ckpt, data, device)?
    } else {
        Trainer::new(config, data, device)?
    };
    std::fs::create_dir_all(out)?;
    let metrics_path = out.join("metrics.jsonl");
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)?;
    let max_steps = trainer.config().max_steps;
    let bar = indicatif::ProgressBar::new(max_steps).with_position(trainer.steps_done());
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps {msg} [{elapsed} < {eta}]",
        )
        .unwrap(),
    );
    // Messages go through the bar on a terminal, straight to stdout otherwise (logs, CI).
    let say = |msg: String| {
        if bar.is_hidden() {
            println!("{msg}")
        } else {
            bar.println(msg)
        }
    };
    let start = std::time::Instant::now();
    let stop_file = out.join("STOP");
    let mut last = None;
    while trainer.steps_done() < max_steps {
        let m = trainer.step()?;
        let mut record = serde_json::to_value(&m)?;
        record["elapsed_s"] = serde_json::json!(start.elapsed().as_secs_f64());
        if m.skipped {
            say(format!(
                "step {}: loss {} / gradient norm {} is not finite; update skipped",
                m.step, m.loss, m.grad_norm
            ));
        }
        let out_of_time =
            time_budget.is_some_and(|t| start.elapsed().as_secs_f64() >= t) || stop_file.exists();
        if m.step % eval_interval == 0 || m.step == max_steps || out_of_time {
            let (val_loss, bpb) = trainer.evaluate()?;
            record["val_loss"] = serde_json::json!(val_loss);
            record["val_bits_per_byte"] = serde_json::json!(bpb);
            trainer.save(&ckpt)?;
            say(format!("step {}: train loss {:.3}, val loss {val_loss:.3}, {bpb:.3} bits/byte; checkpoint saved", m.step, m.loss));
        }
        writeln!(metrics, "{record}")?;
        bar.set_position(m.step);
        bar.set_message(format!("loss {:.3}, {:.0} tok/s", m.loss, m.tokens_per_s));
        last = Some(m);
        if out_of_time {
            say("stopping: time budget reached or STOP file found".into());
            break;
        }
    }
    bar.finish();
    if let Some(m) = last {
        println!(
            "{} steps, {} tokens; last train loss {:.3}; checkpoint in {}; metrics in {}",
            m.step,
            m.tokens,
            m.loss,
            ckpt.display(),
            metrics_path.display()
        );
    } else {
        println!(
            "nothing to do: the run in {} has done its {max_steps} steps",
            out.display()
        );
    }
    Ok(())
}

fn tokenizer_command(what: TokenizerCommand) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    use tinygpt::tokenizer::{read_text, Bpe};
    match what {
        TokenizerCommand::Train {
            input,
            vocab_size,
            specials,
            out,
        } => {
            let start = std::time::Instant::now();
            let texts = input
                .iter()
                .map(|p| read_text(p))
                .collect::<Result<Vec<_>, _>>()?;
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let bpe = Bpe::train(&refs, vocab_size, &specials)?;
            let json = serde_json::to_string(&bpe.to_tokenizer_json())?;
            tinygpt::atomic::write_bytes(&out, json.as_bytes())?;
            let bytes: usize = texts.iter().map(String::len).sum();
            let tokens: usize = refs.iter().map(|t| bpe.encode(t).len()).sum();
            println!(
                "trained {} tokens ({} merges) on {:.2} MB in {:.1} s: {:.2} bytes per token; wrote {}",
                bpe.vocab_size(),
                bpe.merges().len(),
                bytes as f64 / 1e6,
                start.elapsed().as_secs_f64(),
                bytes as f64 / tokens.max(1) as f64,
                out.display()
            );
        }
        TokenizerCommand::Encode { tokenizer } => {
            let tok = Tokenizer::load(&tokenizer)?;
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| anyhow::anyhow!("stdin is not UTF-8 text ({e})"))?;
            let ids: Vec<String> = tok.encode(&text)?.iter().map(u32::to_string).collect();
            writeln!(std::io::stdout().lock(), "{}", ids.join(" "))?;
        }
        TokenizerCommand::Decode { tokenizer } => {
            let tok = Tokenizer::load(&tokenizer)?;
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text)?;
            let ids = text
                .split_whitespace()
                .map(|s| s.parse::<u32>().map_err(|_| anyhow::anyhow!("stdin: `{s}` is not a token id (expected whole numbers separated by spaces)")))
                .collect::<anyhow::Result<Vec<u32>>>()?;
            if let Some(&bad) = ids.iter().find(|&&id| id as usize >= tok.vocab_size()) {
                anyhow::bail!(
                    "stdin: token id {bad} is outside the vocabulary of {} ({})",
                    tok.vocab_size(),
                    tok.name()
                );
            }
            write!(std::io::stdout().lock(), "{}", tok.decode(&ids)?)?;
        }
    }
    Ok(())
}

/// The model of `--preset` (fresh weights) or `--checkpoint`, with the token stories start from
/// and a name for messages.
fn model_from(
    preset: Option<String>,
    checkpoint: Option<PathBuf>,
    device: &Device,
) -> anyhow::Result<(Gpt, u32, String)> {
    Ok(match (preset, checkpoint) {
        (Some(p), _) => (Gpt::new(&GptConfig::preset(&p)?, 0, device)?, 0, p),
        (None, Some(c)) => {
            let loaded = checkpoint::load(&c, device)?;
            let start = loaded.start_token();
            (loaded.model, start, c.display().to_string())
        }
        (None, None) => anyhow::bail!("pass --preset or --checkpoint"),
    })
}

/// `tinygpt generate`: streams tokens to stdout as they come.
#[allow(clippy::too_many_arguments)]
fn generate(
    path: &std::path::Path,
    prompt: Option<String>,
    max_new_tokens: usize,
    temperature: f32,
    top_k: usize,
    top_p: Option<f32>,
    seed: u64,
    format: &str,
    bos: Option<u32>,
    device: &str,
) -> anyhow::Result<()> {
    use std::io::Write;
    let device = tinygpt::device::parse_device(device)?;
    let loaded = checkpoint::load(path, &device)?;
    let tok = loaded.tokenizer.as_ref();
    if tok.is_none() && format == "text" {
        anyhow::bail!(
            "{} has no tokenizer: pass --format ids (and a prompt as ids is not supported)",
            path.display()
        );
    }
    let start = bos.unwrap_or(loaded.start_token());
    let mut ids = vec![start];
    if let Some(p) = &prompt {
        let Some(t) = tok else {
            anyhow::bail!(
                "--prompt needs a checkpoint with a tokenizer; {} has none",
                path.display()
            )
        };
        ids.extend(t.encode(p)?);
    }
    let options = GenerateOptions {
        max_new_tokens,
        temperature,
        top_k: (top_k > 0).then_some(top_k),
        top_p,
        seed,
        stop_token: tok.map(|t| t.eos_id()),
        vocab_limit: tok.map(|t| t.vocab_size()),
    };
    let mut out = std::io::stdout().lock();
    if let (Some(p), "text") = (&prompt, format) {
        write!(out, "{p}")?;
    }
    // Decode the whole text so far each time and print what is new: a token can end in the
    // middle of a UTF-8 character, which only the next token completes.
    let mut generated: Vec<u32> = vec![];
    let mut printed = 0;
    let mut failure: Option<anyhow::Error> = None;
    tinygpt::model::generate(&loaded.model, &ids, &options, |id| {
        let result = (|| -> anyhow::Result<()> {
            if format == "ids" {
                write!(out, "{id} ")?;
            } else if Some(id) != options.stop_token {
                generated.push(id);
                let text = tok.unwrap().decode(&generated)?;
                if !text.ends_with('\u{FFFD}') {
                    write!(out, "{}", &text[printed..])?;
                    printed = text.len();
                }
            }
            out.flush()?;
            Ok(())
        })();
        match result {
            Ok(()) => true,
            Err(e) => {
                failure = Some(e);
                false
            }
        }
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    writeln!(out)?;
    Ok(())
}

fn print_prepare(report: &data::PrepareReport, out: &std::path::Path) {
    let m = &report.manifest;
    if report.reused {
        println!(
            "{} already holds these shards (same inputs); nothing to do (use --force to redo)",
            out.display()
        );
    }
    println!(
        "tokenizer {} (vocab {}, EOS id {}, fingerprint {})",
        m.tokenizer.name, m.tokenizer.vocab_size, m.tokenizer.eos_id, m.tokenizer.fingerprint
    );
    for split in Split::ALL {
        if let Some(info) = m.splits.get(&split) {
            println!(
                "{:>5}: {} stories, {} tokens, {:.1} MB of text, {} shard(s)",
                split.name(),
                info.stories,
                info.tokens,
                info.text_bytes as f64 / 1e6,
                info.shards.len()
            );
        }
    }
    if !report.reused {
        println!(
            "wrote {} in {:.1} s ({:.2} MB/s of text)",
            out.display(),
            report.seconds,
            report.megabytes_per_second()
        );
    }
}
