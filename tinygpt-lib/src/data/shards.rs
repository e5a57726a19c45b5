//! `tinygpt prepare`: tokenize every story and store the ids as `uint16` `.npy` shards.
//!
//! ```text
//! out/
//!   tinystories_train_000000.npy   100M tokens each (the last one shorter)
//!   tinystories_train_000001.npy
//!   …
//!   tinystories_val_000000.npy
//!   manifest.json                  tokenizer, EOS id, stories/tokens/bytes per shard
//! ```
//!
//! Every story is stored as `EOS story…`: the end-of-text id is *prepended*, as in the original
//! project, so it also plays the part of a beginning-of-story token. A story may continue from one
//! shard into the next; a shard's `stories` counts the stories that *start* in it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::npy;
use super::source::{read_stories, Source, Split};
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// Tokens per shard in the original project (100M `uint16` = 200 MB).
pub const DEFAULT_SHARD_TOKENS: usize = 100_000_000;
pub const MANIFEST: &str = "manifest.json";
const FORMAT: u32 = 1;

/// What `manifest.json` records about a set of shards.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub tokenizer: TokenizerInfo,
    /// Where the stories came from (hub dataset and revision, or a folder).
    pub source: String,
    pub shard_tokens: usize,
    /// A hash of everything the shards depend on; equal hashes let `prepare` reuse the shards.
    pub inputs: String,
    pub splits: BTreeMap<Split, SplitInfo>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenizerInfo {
    pub name: String,
    pub fingerprint: String,
    pub vocab_size: usize,
    pub eos_id: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitInfo {
    pub stories: u64,
    /// All tokens, one EOS per story included.
    pub tokens: u64,
    /// UTF-8 bytes of the stories' text (separators excluded): the denominator of bits per byte.
    pub text_bytes: u64,
    pub shards: Vec<ShardInfo>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    pub file: String,
    pub tokens: u64,
    pub stories: u64,
}

impl TokenizerInfo {
    pub fn of(tokenizer: &Tokenizer) -> Self {
        Self {
            name: tokenizer.name().to_owned(),
            fingerprint: tokenizer.fingerprint().to_owned(),
            vocab_size: tokenizer.vocab_size(),
            eos_id: tokenizer.eos_id(),
        }
    }
}

impl Manifest {
    /// Reads `dir/manifest.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            Error::data(
                &path,
                format!(
                    "cannot read the shard manifest ({e}); run `tinygpt prepare --out {}` first",
                    dir.display()
                ),
            )
        })?;
        serde_json::from_str(&text).map_err(|e| {
            Error::data(
                &path,
                format!("is not a valid shard manifest ({e}); re-create it with `tinygpt prepare`"),
            )
        })
    }

    /// Fails unless the shards were made by this tokenizer: token ids from one vocabulary mean
    /// nothing in another, and a wrong EOS id would break every document boundary.
    pub fn check_tokenizer(&self, dir: &Path, tokenizer: &Tokenizer) -> Result<()> {
        let ours = &self.tokenizer;
        let theirs = TokenizerInfo::of(tokenizer);
        let mut diffs = Vec::new();
        if ours.vocab_size != theirs.vocab_size {
            diffs.push(format!(
                "vocab size {} vs {}",
                ours.vocab_size, theirs.vocab_size
            ));
        }
        if ours.eos_id != theirs.eos_id {
            diffs.push(format!("EOS id {} vs {}", ours.eos_id, theirs.eos_id));
        }
        if ours.fingerprint != theirs.fingerprint {
            diffs.push(format!(
                "fingerprint {} vs {}",
                ours.fingerprint, theirs.fingerprint
            ));
        }
        if diffs.is_empty() {
            return Ok(());
        }
        Err(Error::data(
            &dir.join(MANIFEST),
            format!(
                "these shards were made with tokenizer `{}`, not with `{}` ({}); use the same \
                 tokenizer, or re-run `tinygpt prepare --tokenizer {} --out {}`",
                ours.name,
                theirs.name,
                diffs.join(", "),
                theirs.name,
                dir.display()
            ),
        ))
    }

    /// The shard files of one split, as full paths.
    pub fn shard_paths(&self, dir: &Path, split: Split) -> Vec<PathBuf> {
        self.splits
            .get(&split)
            .map(|s| s.shards.iter().map(|f| dir.join(&f.file)).collect())
            .unwrap_or_default()
    }

    /// Writes `dir/manifest.json` atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join(MANIFEST);
        let tmp = npy::tmp_path(&path);
        let json = serde_json::to_string_pretty(self).expect("a manifest always serialises");
        std::fs::write(&tmp, json + "\n").map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))
    }

    /// True when every shard the manifest lists is on disk with the size it promises.
    fn shards_present(&self, dir: &Path) -> bool {
        self.splits.values().flat_map(|s| &s.shards).all(|shard| {
            std::fs::metadata(dir.join(&shard.file)).is_ok_and(|m| m.len() > 2 * shard.tokens)
        })
    }
}

/// Shard file name: `tinystories_train_000003.npy`.
pub fn shard_name(split: Split, index: usize) -> String {
    format!("tinystories_{}_{index:06}.npy", split.name())
}

/// Options of `tinygpt prepare`.
pub struct PrepareOptions {
    pub shard_tokens: usize,
    /// Redo the work even when `out` already holds shards of the same inputs.
    pub force: bool,
    /// Draw progress bars on stderr.
    pub progress: bool,
}

impl Default for PrepareOptions {
    fn default() -> Self {
        Self {
            shard_tokens: DEFAULT_SHARD_TOKENS,
            force: false,
            progress: true,
        }
    }
}

/// What `prepare` did.
pub struct PrepareReport {
    pub manifest: Manifest,
    /// True when the existing shards matched the inputs and nothing was redone.
    pub reused: bool,
    pub seconds: f64,
}

impl PrepareReport {
    /// Throughput over the text that was tokenized (both splits).
    pub fn megabytes_per_second(&self) -> f64 {
        let bytes: u64 = self.manifest.splits.values().map(|s| s.text_bytes).sum();
        bytes as f64 / 1e6 / self.seconds.max(1e-9)
    }
}

/// Tokenizes both splits of `source` with `tokenizer` into shards in `out`.
///
/// Nothing in `out` is touched until every shard has been written to a staging folder inside it:
/// bad input fails early and leaves earlier shards as they were.
pub fn prepare(
    source: &Source,
    tokenizer: &Tokenizer,
    out: &Path,
    options: &PrepareOptions,
) -> Result<PrepareReport> {
    let start = Instant::now();
    if tokenizer.vocab_size() > 1 << 16 {
        return Err(Error::Invalid(format!(
            "tokenizer {} has {} ids, but shards store uint16 (at most 65,536 ids); choose a smaller vocabulary",
            tokenizer.name(),
            tokenizer.vocab_size()
        )));
    }
    if options.shard_tokens == 0 {
        return Err(Error::Invalid("--shard-tokens must be at least 1".into()));
    }
    let files: Vec<(Split, Vec<PathBuf>)> = Split::ALL
        .iter()
        .map(|&split| Ok((split, source.files(split)?)))
        .collect::<Result<_>>()?;
    let inputs = inputs_hash(tokenizer, options.shard_tokens, &files)?;

    if !options.force {
        if let Ok(existing) = Manifest::load(out) {
            if existing.inputs == inputs && existing.shards_present(out) {
                return Ok(PrepareReport {
                    manifest: existing,
                    reused: true,
                    seconds: start.elapsed().as_secs_f64(),
                });
            }
        }
    }

    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let staging = out.join(".prepare-staging");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;

    let mut manifest = Manifest {
        format: FORMAT,
        tokenizer: TokenizerInfo::of(tokenizer),
        source: source.describe(),
        shard_tokens: options.shard_tokens,
        inputs,
        splits: BTreeMap::new(),
    };
    for (split, paths) in &files {
        match tokenize_split(*split, paths, tokenizer, &staging, options) {
            Ok(info) => manifest.splits.insert(*split, info),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staging);
                return Err(e);
            }
        };
    }
    publish(&manifest, &staging, out)?;
    Ok(PrepareReport {
        manifest,
        reused: false,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Moves the staged shards into `out`, removes shards of an older run that are no longer listed,
/// and writes the manifest last (so a manifest never describes shards that are not there).
fn publish(manifest: &Manifest, staging: &Path, out: &Path) -> Result<()> {
    let old = Manifest::load(out).ok();
    let manifest_path = out.join(MANIFEST);
    if manifest_path.exists() {
        std::fs::remove_file(&manifest_path).map_err(|e| Error::io(&manifest_path, e))?;
    }
    let new_files: Vec<&str> = manifest
        .splits
        .values()
        .flat_map(|s| &s.shards)
        .map(|s| s.file.as_str())
        .collect();
    for file in &new_files {
        std::fs::rename(staging.join(file), out.join(file))
            .map_err(|e| Error::io(&out.join(file), e))?;
    }
    if let Some(old) = old {
        for shard in old.splits.values().flat_map(|s| &s.shards) {
            if !new_files.contains(&shard.file.as_str()) {
                let _ = std::fs::remove_file(out.join(&shard.file));
            }
        }
    }
    let _ = std::fs::remove_dir_all(staging);
    manifest.save(out)
}

/// Tokenizes one split, file by file and story chunk by story chunk (in parallel inside a
/// chunk), filling shards of `shard_tokens` tokens in `staging`.
fn tokenize_split(
    split: Split,
    paths: &[PathBuf],
    tokenizer: &Tokenizer,
    staging: &Path,
    options: &PrepareOptions,
) -> Result<SplitInfo> {
    const CHUNK: usize = 2048;
    let mut writer = ShardWriter::new(split, staging, options.shard_tokens);
    let bar = progress_bar(options.progress, split);
    let start = Instant::now();
    let mut info = SplitInfo::default();
    for path in paths {
        let stories = read_stories(path)?;
        bar.inc_length(stories.len() as u64);
        for chunk in stories.chunks(CHUNK) {
            let encoded = tokenizer.encode_all(chunk)?;
            for (story, ids) in chunk.iter().zip(&encoded) {
                writer.push_story(tokenizer.eos_id(), ids)?;
                info.text_bytes += story.len() as u64;
            }
            bar.inc(chunk.len() as u64);
            let tokens_per_s =
                writer.total_tokens() as f64 / start.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!(
                "{:.2}M tokens, {:.0}k tokens/s",
                writer.total_tokens() as f64 / 1e6,
                tokens_per_s / 1e3
            ));
        }
    }
    bar.finish();
    info.shards = writer.finish()?;
    info.stories = info.shards.iter().map(|s| s.stories).sum();
    info.tokens = info.shards.iter().map(|s| s.tokens).sum();
    if info.stories == 0 {
        return Err(Error::Invalid(format!(
            "the {} split has no stories",
            split.name()
        )));
    }
    Ok(info)
}

fn progress_bar(visible: bool, split: Split) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        Some(0),
        if visible {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>5} [{bar:30}] {pos}/{len} stories, {msg} ({elapsed})",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(split.name());
    bar
}

/// Accumulates `EOS story` token runs and writes a shard each time `shard_tokens` are collected.
struct ShardWriter<'a> {
    split: Split,
    dir: &'a Path,
    shard_tokens: usize,
    buffer: Vec<u16>,
    stories_in_buffer: u64,
    written: Vec<ShardInfo>,
}

impl<'a> ShardWriter<'a> {
    fn new(split: Split, dir: &'a Path, shard_tokens: usize) -> Self {
        Self {
            split,
            dir,
            shard_tokens,
            buffer: Vec::new(),
            stories_in_buffer: 0,
            written: Vec::new(),
        }
    }

    fn push_story(&mut self, eos: u32, ids: &[u32]) -> Result<()> {
        self.stories_in_buffer += 1;
        for &id in std::iter::once(&eos).chain(ids) {
            let id = u16::try_from(id)
                .map_err(|_| Error::Invalid(format!("token id {id} does not fit in uint16")))?;
            self.buffer.push(id);
            if self.buffer.len() == self.shard_tokens {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        let file = shard_name(self.split, self.written.len());
        npy::write_u16(&self.dir.join(&file), &self.buffer)?;
        self.written.push(ShardInfo {
            file,
            tokens: self.buffer.len() as u64,
            stories: self.stories_in_buffer,
        });
        self.buffer.clear();
        self.stories_in_buffer = 0;
        Ok(())
    }

    fn total_tokens(&self) -> u64 {
        self.written.iter().map(|s| s.tokens).sum::<u64>() + self.buffer.len() as u64
    }

    fn finish(mut self) -> Result<Vec<ShardInfo>> {
        if !self.buffer.is_empty() {
            self.flush()?;
        }
        Ok(self.written)
    }
}

/// Hash of what the shards depend on: format, tokenizer, shard size and the input files.
fn inputs_hash(
    tokenizer: &Tokenizer,
    shard_tokens: usize,
    files: &[(Split, Vec<PathBuf>)],
) -> Result<String> {
    let mut hash = Sha256::new();
    hash.update(format!(
        "format {FORMAT}\ntokenizer {}\nshard_tokens {shard_tokens}\n",
        tokenizer.fingerprint()
    ));
    for (split, paths) in files {
        hash.update(format!("{}\n{}", split.name(), files_signature(paths)?));
    }
    Ok(hash
        .finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Each file's name, size and modification time, a line each: what decides whether work done
/// on these files can be reused (hashing gigabytes of text would cost as much as the work).
pub fn files_signature(paths: &[PathBuf]) -> Result<String> {
    let mut out = String::new();
    for path in paths {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        let modified = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
        out.push_str(&format!(
            "{} {} {:?}\n",
            path.display(),
            meta.len(),
            modified
        ));
    }
    Ok(out)
}

/// Reads a whole shard into memory (tests and small tools; training memory-maps instead).
pub fn read_shard(path: &Path) -> Result<Vec<u16>> {
    Ok(npy::NpyU16::open(path)?.tokens().to_vec())
}
