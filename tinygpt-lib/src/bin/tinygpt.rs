//! The `tinygpt` command-line tool. Each subcommand is a thin layer over the library, so that a
//! notebook cell and the CLI run the same code.

use std::path::{Path, PathBuf};
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
        #[arg(long, default_value_t = data::shards::DEFAULT_SHARD_TOKENS, value_parser = at_least_one)]
        shard_tokens: usize,
        /// Tokenize again even if `--out` already holds shards of the same inputs.
        #[arg(long)]
        force: bool,
        /// No progress bars.
        #[arg(long)]
        quiet: bool,
    },
    /// Train a model on prepared shards, on the CPU or data-parallel on GPUs; checkpoints
    /// resume exactly. Ctrl-C (or a file STOP in --out) stops after a checkpoint.
    Train {
        #[arg(long, conflicts_with = "config", help = train_preset_help())]
        preset: Option<String>,
        /// A run config in TOML (`--print-config` writes one to start from).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print the run's config (preset or --config, with the flags applied) as TOML and exit.
        #[arg(long)]
        print_config: bool,
        /// Shards written by `tinygpt prepare` (its --out folder).
        #[arg(long, required_unless_present = "print_config")]
        data: Option<PathBuf>,
        /// Run folder: checkpoint/, best/, history/ and metrics.jsonl.
        #[arg(long, default_value = "runs/train")]
        out: PathBuf,
        /// Rows per micro-batch, per device (default: the preset's).
        #[arg(long, value_parser = at_least_one)]
        batch_size: Option<usize>,
        /// Micro-batches per optimizer step (default: the preset's).
        #[arg(long, value_parser = at_least_one)]
        grad_accum: Option<usize>,
        /// Length of the schedule, in optimizer steps (default: the preset's).
        #[arg(long)]
        max_steps: Option<u64>,
        /// Stop (after a checkpoint) after this long: 90s, 10m, 2h or seconds.
        #[arg(long, value_parser = parse_duration)]
        time_budget: Option<f64>,
        /// Evaluate (validation loss and bits per byte) and checkpoint every N steps.
        #[arg(long, default_value_t = 100)]
        eval_interval: u64,
        /// Also checkpoint when this many minutes have passed since the last checkpoint.
        #[arg(long, default_value_t = 10.0)]
        checkpoint_minutes: f64,
        /// Past checkpoints kept in --out/history (hard links, no extra disk).
        #[arg(long, default_value_t = 3)]
        keep_last: usize,
        /// Continue the run in `--out` from its checkpoint (its config is the checkpoint's).
        #[arg(long)]
        resume: bool,
        /// Seed of the initial weights and the data order (default: the preset's, 1337).
        #[arg(long)]
        seed: Option<u64>,
        /// Workers, one per device: cpu, cuda:0, cuda:0,1 (default: the preset's).
        #[arg(long, alias = "device")]
        devices: Option<String>,
        /// The peak TFLOP/s of one device, for MFU (default: a measured matmul on the CPU; on a
        /// GPU give it, e.g. 989 for an H100 SXM in bf16, 165 for an RTX 4090).
        #[arg(long, value_parser = above_zero)]
        peak_tflops: Option<f64>,
    },
    /// The whole pipeline on a fresh machine: TinyStories → our BPE (4096) → shards → a CPU-sized
    /// model trained within a time budget → validation loss, a loss-curve PNG and a story.
    Quickstart {
        #[arg(long, env = "TINYGPT_DATA", default_value = "hub")]
        source: String,
        /// Training time: 90s, 10m, 1h or seconds.
        #[arg(long, default_value = "10m", value_parser = parse_duration)]
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
        #[arg(long, default_value_t = 8, value_parser = at_least_one)]
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
        /// A new or empty folder.
        #[arg(long)]
        out: PathBuf,
        /// Write into --out even if it holds files (a checkpoint there is replaced).
        #[arg(long)]
        force: bool,
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
        /// A new or empty folder.
        #[arg(long)]
        out: PathBuf,
        /// Write into --out even if it holds files (a checkpoint there is replaced).
        #[arg(long)]
        force: bool,
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
        #[arg(long, default_value_t = 1024, value_parser = at_least_one)]
        size: usize,
        #[arg(long, default_value_t = 10, value_parser = at_least_one)]
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
        #[arg(long, value_parser = at_least_one)]
        batch_size: Option<usize>,
        /// Tokens per row (default: the preset's context).
        #[arg(long, value_parser = at_least_one)]
        block_size: Option<usize>,
        #[arg(long, default_value_t = 10, value_parser = at_least_one)]
        steps: usize,
        #[arg(long, default_value_t = 2)]
        warmup_steps: usize,
        /// The device's peak TFLOP/s for MFU (default on the CPU: a measured 1024³ matmul;
        /// required on a GPU, e.g. 989 for an H100/H200 SXM in bf16).
        #[arg(long, value_parser = above_zero)]
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
        #[arg(long, default_value_t = 256, value_parser = at_least_one)]
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

fn train_preset_help() -> String {
    let lines: Vec<String> = tinygpt::train::TRAIN_PRESETS
        .iter()
        .map(|(n, d)| format!("{n}: {d}"))
        .collect();
    format!(
        "A run preset ({}) or a model preset (see `tinygpt summary --help`) trained on the CPU [default: small]",
        lines.join("; ")
    )
}

/// The `--out` of a command that writes a folder of its own (`init`, `export`): refused where
/// files are already there, unless `--force`, so that a training run's checkpoint is never
/// overwritten by mistake.
fn new_folder(out: &Path, force: bool) -> anyhow::Result<()> {
    if out.exists() && !out.is_dir() {
        anyhow::bail!(
            "--out {}: is a file, not a folder; pick another --out",
            out.display()
        );
    }
    let holds_files = out.is_dir()
        && std::fs::read_dir(out)
            .map_err(|e| anyhow::anyhow!("--out {}: {e}", out.display()))?
            .next()
            .is_some();
    if holds_files && !force {
        anyhow::bail!(
            "--out {}: already holds files; pick a new or empty folder, or pass --force to write over them",
            out.display()
        );
    }
    Ok(())
}

/// A count that must be at least 1 (rows, tokens, steps, repeats).
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("`{text}` is not a whole number")),
    }
}

/// A number above zero (a device's peak TFLOP/s).
fn above_zero(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(x) if x > 0.0 && x.is_finite() => Ok(x),
        _ => Err(format!("`{text}` is not a number above zero")),
    }
}

/// `90s`, `10m`, `2h` or a number of seconds, in seconds.
fn parse_duration(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let (number, unit) = match t.char_indices().last() {
        Some((i, 's')) => (&t[..i], 1.0),
        Some((i, 'm')) => (&t[..i], 60.0),
        Some((i, 'h')) => (&t[..i], 3600.0),
        _ => (t, 1.0),
    };
    match number.trim().parse::<f64>() {
        Ok(n) if n >= 0.0 && n.is_finite() => Ok(n * unit),
        _ => Err(format!(
            "`{text}` is not a duration; write e.g. 90s, 10m, 1.5h or a number of seconds"
        )),
    }
}

/// The `[train]` table and the devices of a run, as `--config` reads and `--print-config`
/// writes them.
#[derive(serde::Serialize, serde::Deserialize)]
struct RunFile {
    devices: String,
    train: tinygpt::train::TrainConfig,
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
            config,
            print_config,
            data,
            out,
            batch_size,
            grad_accum,
            max_steps,
            time_budget,
            eval_interval,
            checkpoint_minutes,
            keep_last,
            resume,
            seed,
            devices,
            peak_tflops,
        } => {
            let mut run_file = match &config {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .map_err(|e| anyhow::anyhow!("--config {}: {e}", path.display()))?;
                    toml::from_str::<RunFile>(&text).map_err(|e| {
                        anyhow::anyhow!("--config {}: not a run config: {e}(`tinygpt train --print-config` writes a valid one)", path.display())
                    })?
                }
                None => {
                    let (train, devices) =
                        tinygpt::train::train_preset(preset.as_deref().unwrap_or("small"))?;
                    RunFile {
                        devices: devices.into(),
                        train,
                    }
                }
            };
            let t = &mut run_file.train;
            t.batch_size = batch_size.unwrap_or(t.batch_size);
            t.grad_accum = grad_accum.unwrap_or(t.grad_accum);
            if let Some(n) = max_steps {
                t.max_steps = n;
                t.warmup_steps = (n / 100).max(1);
            }
            t.seed = seed.unwrap_or(t.seed);
            if let Some(d) = devices {
                run_file.devices = d;
            }
            if print_config {
                print!("{}", toml::to_string(&run_file)?);
                return Ok(());
            }
            let data = data.expect("clap requires --data");
            let devices = tinygpt::device::parse_devices(&run_file.devices)?;
            let options = tinygpt::train::RunOptions {
                time_budget: time_budget.map(std::time::Duration::from_secs_f64),
                eval_interval: eval_interval.max(1),
                checkpoint_every: Some(std::time::Duration::from_secs_f64(
                    checkpoint_minutes.max(0.0) * 60.0,
                )),
                keep_last,
                peak_flops: peak_flops(peak_tflops, &devices)?,
                ..tinygpt::train::RunOptions::new(&out)
            };
            // With --resume the run continues as it was started: what this command line chose
            // must agree with it (a preset or a config file chooses everything).
            let resume = resume.then(|| {
                if preset.is_some() || config.is_some() {
                    Chosen::All
                } else {
                    let flags = [
                        ("batch_size", batch_size.is_some()),
                        ("grad_accum", grad_accum.is_some()),
                        ("max_steps", max_steps.is_some()),
                        ("warmup_steps", max_steps.is_some()),
                        ("seed", seed.is_some()),
                    ];
                    Chosen::Fields(flags.iter().filter(|f| f.1).map(|f| f.0).collect())
                }
            });
            train_command(run_file.train, &data, &options, resume, &devices)?;
        }
        Command::Init {
            preset,
            seed,
            tokenizer,
            out,
            force,
        } => {
            new_folder(&out, force)?;
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
            force,
        } => {
            new_folder(&out, force)?;
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
                "train {preset} on {} ({}, matmul: {}): batch {} x {}, {} params: {:.1} ms/step, {:.0} tokens/s, MFU {:.1}% of {:.1} TFLOP/s (loss {:.3} -> {:.3})",
                r.device, r.dtype, r.matmul, r.batch_size, r.block_size, r.params, r.step_ms, r.tokens_per_s, 100.0 * r.mfu, r.peak_flops / 1e12, r.first_loss, r.last_loss
            );
            if let Some(bytes) = r.peak_memory {
                println!("peak GPU memory of tensors: {:.2} GiB", gib(bytes));
            }
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
                "matmul {size}x{size}x{size} f32 on CPU ({}): {gflops:.1} GFLOP/s (best of {repeats})",
                tinygpt::device::cpu_matmul_library()
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
    let _ = std::fs::remove_dir_all(&run);
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
        let mut probe = tinygpt::train::Trainer::new(config.clone(), &data, &[Device::Cpu])?;
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
    let options = tinygpt::train::RunOptions {
        time_budget: Some(std::time::Duration::from_secs_f64(time_budget)),
        eval_interval: (steps / 4).max(1),
        keep_last: 0,
        peak_flops: peak_flops(None, &[Device::Cpu])?,
        ..tinygpt::train::RunOptions::new(&run)
    };
    train_command(config, &data, &options, None, &[Device::Cpu])?;
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

/// The peak FLOP/s of all `devices` together, for MFU: `--peak-tflops` per device, or on the
/// CPU a measured 1024³ matmul (CPU workers share the same cores).
fn peak_flops(peak_tflops: Option<f64>, devices: &[Device]) -> anyhow::Result<Option<f64>> {
    Ok(match peak_tflops {
        Some(t) => Some(t * 1e12 * devices.len() as f64),
        None if devices.iter().all(Device::is_cpu) => {
            Some(tinygpt::bench::matmul_gflops(1024, 3)? * 1e9)
        }
        None => None,
    })
}

/// Bytes in GiB (2³⁰ bytes), for printing memory.
fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// Which settings of a run a `train` command line chose: all of them (a preset or a config
/// file), or those of these `TrainConfig` fields (flags such as `--batch-size`).
enum Chosen {
    All,
    Fields(Vec<&'static str>),
}

/// `--resume` continues the run in `out` as it was started, whatever the command line says; a
/// setting it chose that differs from the run's is refused by name rather than ignored.
fn check_resume_settings(
    chosen: &Chosen,
    given: &tinygpt::train::TrainConfig,
    run: &tinygpt::train::TrainConfig,
    out: &Path,
) -> anyhow::Result<()> {
    let mut differences = vec![];
    differing_fields(
        "",
        &serde_json::to_value(given)?,
        &serde_json::to_value(run)?,
        &mut differences,
    );
    if let Chosen::Fields(fields) = chosen {
        differences.retain(|(path, _, _)| fields.iter().any(|f| path.split('.').next() == Some(f)));
    }
    if differences.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = differences
        .iter()
        .map(|(path, given, run)| format!("{path} {given} (the run's: {run})"))
        .collect();
    anyhow::bail!(
        "--resume: the run in {} continues as it was started, but this command asks for {}. Leave \
         those settings out (or give the run's) to resume it, or train in a new --out",
        out.display(),
        list.join(", ")
    )
}

/// The leaves where two JSON values differ, as (`a.b` path, value in `a`, value in `b`).
fn differing_fields(
    path: &str,
    a: &serde_json::Value,
    b: &serde_json::Value,
    out: &mut Vec<(String, String, String)>,
) {
    match (a, b) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (key, value) in a {
                let path = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                differing_fields(
                    &path,
                    value,
                    b.get(key).unwrap_or(&serde_json::Value::Null),
                    out,
                );
            }
        }
        _ if a != b => out.push((path.to_string(), a.to_string(), b.to_string())),
        _ => {}
    }
}

/// `tinygpt train`: [`tinygpt::train::run`] with a progress bar, a Ctrl-C handler and a summary.
/// `resume`: continue the run in `options.out`, given what the command line chose.
fn train_command(
    config: tinygpt::train::TrainConfig,
    data: &std::path::Path,
    options: &tinygpt::train::RunOptions,
    resume: Option<Chosen>,
    devices: &[Device],
) -> anyhow::Result<()> {
    use std::sync::{atomic::AtomicBool, Arc};
    use tinygpt::train::{Event, Trainer};
    if options.out.exists() && !options.out.is_dir() {
        anyhow::bail!(
            "--out {}: is a file, not a folder; pick another --out",
            options.out.display()
        );
    }
    let ckpt = options.out.join("checkpoint");
    let mut trainer = if let Some(chosen) = resume {
        let trainer = Trainer::resume(&ckpt, data, devices)?;
        check_resume_settings(&chosen, &config, trainer.config(), &options.out)?;
        trainer
    } else {
        if ckpt.exists() {
            anyhow::bail!(
                "--out {}: already holds a run (checkpoint/); continue it with --resume, or pick another --out",
                options.out.display()
            );
        }
        Trainer::new(config, data, devices)?
    };
    // Ctrl-C: the first one lets the run finish its step and checkpoint; a second one quits now.
    let interrupt = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register_conditional_shutdown(
        signal_hook::consts::SIGINT,
        130,
        interrupt.clone(),
    )?;
    signal_hook::flag::register(signal_hook::consts::SIGINT, interrupt.clone())?;
    let options = tinygpt::train::RunOptions {
        interrupt: Some(interrupt),
        ..options.clone()
    };
    let max_steps = trainer.config().max_steps;
    println!(
        "training {} parameters on {} worker(s): {} tokens per step, steps {}..{max_steps}; Ctrl-C stops after a checkpoint",
        ParamSummary::of(trainer.model()).total,
        trainer.world_size(),
        trainer.tokens_per_step(),
        trainer.steps_done() + 1,
    );
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
    let summary = tinygpt::train::run(&mut trainer, &options, |event| match event {
        Event::Step(r) => {
            if let (Some(v), Some(bpb)) = (r.val_loss, r.val_bits_per_byte) {
                let memory = r
                    .gpu_peak_memory
                    .map(|bytes| format!(", GPU memory peak {:.2} GiB", gib(bytes)));
                say(format!(
                    "step {}: train loss {:.3}, val loss {v:.3}, {bpb:.3} bits/byte{}",
                    r.step,
                    r.loss,
                    memory.unwrap_or_default()
                ));
            }
            bar.set_position(r.step);
            let mfu = r.mfu.map(|m| format!(", MFU {:.0}%", m * 100.0));
            bar.set_message(format!(
                "loss {:.3}, {:.0} tok/s{}",
                r.loss,
                r.tokens_per_s,
                mfu.unwrap_or_default()
            ));
        }
        Event::Message(m) => say(m),
    })?;
    bar.finish();
    let metrics_path = options.out.join("metrics.jsonl");
    match summary.last {
        Some(m) => println!(
            "{} steps, {} tokens; last train loss {:.3}; checkpoint in {}; metrics in {}",
            m.step,
            m.tokens,
            m.loss,
            ckpt.display(),
            metrics_path.display()
        ),
        None => println!(
            "nothing to do: the run in {} has done its {max_steps} steps",
            options.out.display()
        ),
    }
    if let Some((step, loss)) = summary.best {
        println!(
            "best validation loss {loss:.4} at step {step}: {}",
            options.out.join("best").display()
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
