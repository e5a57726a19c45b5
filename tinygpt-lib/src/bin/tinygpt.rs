//! The `tinygpt` command-line tool. Each subcommand is a thin layer over the library, so that a
//! notebook cell and the CLI run the same code.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use tinygpt::data::{self, PrepareOptions, Source, Split};
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
        /// `gpt-neo` (EleutherAI/gpt-neo-125M from the hub) or the path of a tokenizer.json.
        #[arg(long, default_value = "gpt-neo")]
        tokenizer: String,
        /// Output folder for the shards and the manifest.
        #[arg(long, default_value = "data/gpt-neo")]
        out: PathBuf,
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
    /// Measurements (results go to docs/BENCHMARKS.md).
    Bench {
        #[command(subcommand)]
        what: Bench,
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
            let tokenizer = Tokenizer::load(&tokenizer)?;
            let options = PrepareOptions {
                shard_tokens,
                force,
                progress: !quiet,
            };
            let report = data::prepare(&source, &tokenizer, &out, &options)?;
            print_prepare(&report, &out);
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
