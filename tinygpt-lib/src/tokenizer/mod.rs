//! The tokenizer used by the rest of the project: text ⇄ token ids, plus the facts that shards
//! and checkpoints must agree on (vocabulary size, end-of-text id, a fingerprint).
//!
//! Two implementations sit behind it:
//! - [`bpe::Bpe`], our byte-level BPE written from scratch, which reads and writes Hugging Face
//!   `tokenizer.json` files. Every byte-level BPE in GPT-2's style uses it, including
//!   GPT-Neo-125M's (the original project's tokenizer: GPT-2's 50,257 tokens) and the ones
//!   `tinygpt tokenizer train` makes;
//! - the `tokenizers` crate, for any other `tokenizer.json` (WordPiece, Unigram, …).

use std::path::{Path, PathBuf};

use std::str::FromStr;

use sha2::{Digest, Sha256};

use crate::data::source::hub_file;
use crate::error::{Error, Result};

/// The end-of-text token that separates (here: opens) every story.
pub const EOS_TOKEN: &str = "<|endoftext|>";

/// The hub model whose tokenizer the original project used.
pub const GPT_NEO_REPO: &str = "EleutherAI/gpt-neo-125M";

pub mod bpe;

pub use bpe::Bpe;

pub struct Tokenizer {
    inner: Inner,
    name: String,
    eos_id: u32,
    fingerprint: String,
}

// One of each exists per tokenizer, so the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Inner {
    Ours(Bpe),
    Hf(Box<tokenizers::Tokenizer>),
}

impl Tokenizer {
    /// Resolves the `--tokenizer` flag: `gpt-neo` (downloaded from the hub, or found in the
    /// hf-hub cache) or the path of a `tokenizer.json`.
    pub fn load(spec: &str) -> Result<Self> {
        match spec {
            "gpt-neo" | "gpt2" => {
                let path = hub_file(GPT_NEO_REPO, "model", "tokenizer.json")?;
                Self::from_file_named(&path, "gpt-neo")
            }
            path => Self::from_file(Path::new(path)),
        }
    }

    /// Loads a Hugging Face `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::from_file_named(path, &path.display().to_string())
    }

    fn from_file_named(path: &Path, name: &str) -> Result<Self> {
        let bad = |why: String| Error::Tokenizer {
            path: path.to_owned(),
            why,
        };
        if !path.is_file() {
            return Err(bad(
                "no such tokenizer file; pass --tokenizer gpt-neo or the path of a tokenizer.json"
                    .into(),
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("is not valid JSON ({e})")))?;
        let inner = match Bpe::from_tokenizer_json(&json) {
            Ok(bpe) => Inner::Ours(bpe),
            Err(bpe::LoadError::Invalid(why)) => {
                return Err(bad(format!(
                    "is a broken byte-level BPE tokenizer.json: {why}"
                )))
            }
            Err(bpe::LoadError::Unsupported(_)) => {
                Inner::Hf(Box::new(tokenizers::Tokenizer::from_str(&text).map_err(
                    |e| bad(format!("is not a valid Hugging Face tokenizer.json ({e})")),
                )?))
            }
        };
        Self::from_inner(inner, name).map_err(|e| bad(e.to_string()))
    }

    /// Our BPE as a `Tokenizer`; it must have the `<|endoftext|>` special token.
    pub fn from_bpe(bpe: Bpe, name: &str) -> Result<Self> {
        Self::from_inner(Inner::Ours(bpe), name)
    }

    fn from_inner(inner: Inner, name: &str) -> Result<Self> {
        let eos_id = match &inner {
            Inner::Ours(b) => b.special_id(EOS_TOKEN),
            Inner::Hf(t) => t.token_to_id(EOS_TOKEN),
        }
        .ok_or_else(|| {
            Error::Invalid(format!(
                "the tokenizer has no `{EOS_TOKEN}` token, which marks where every story starts"
            ))
        })?;
        let canonical = match &inner {
            Inner::Ours(b) => b.to_tokenizer_json().to_string(),
            Inner::Hf(t) => t
                .to_string(false)
                .map_err(|e| Error::Invalid(e.to_string()))?,
        };
        let fingerprint = hex(&Sha256::digest(canonical.as_bytes())[..8]);
        Ok(Self {
            inner,
            name: name.to_owned(),
            eos_id,
            fingerprint,
        })
    }

    /// The ids of `text`, with no special tokens added around it (those inside it are kept).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match &self.inner {
            Inner::Ours(b) => Ok(b.encode(text)),
            Inner::Hf(t) => Ok(t
                .encode_fast(text, false)
                .map_err(|e| {
                    Error::Invalid(format!("tokenizer {}: encoding failed: {e}", self.name))
                })?
                .get_ids()
                .to_vec()),
        }
    }

    /// The ids of many texts, encoded in parallel on all cores (rayon).
    pub fn encode_all(&self, texts: &[String]) -> Result<Vec<Vec<u32>>> {
        use rayon::prelude::*;
        match &self.inner {
            // Contiguous chunks, each with its own cache of word → ids.
            Inner::Ours(b) => {
                let chunk = texts.len().div_ceil(rayon::current_num_threads()).max(1);
                Ok(texts
                    .par_chunks(chunk)
                    .flat_map_iter(|part| {
                        let mut cache = std::collections::HashMap::new();
                        part.iter()
                            .map(move |t| b.encode_with_cache(t, &mut cache))
                            .collect::<Vec<_>>()
                    })
                    .collect())
            }
            Inner::Hf(_) => texts.par_iter().map(|text| self.encode(text)).collect(),
        }
    }

    /// The text of `ids`; special tokens such as `<|endoftext|>` are kept so that decoding is exact.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        match &self.inner {
            Inner::Ours(b) => b.decode(ids),
            Inner::Hf(t) => t.decode(ids, false).map_err(|e| {
                Error::Invalid(format!("tokenizer {}: decoding failed: {e}", self.name))
            }),
        }
    }

    /// Our BPE, when this tokenizer is one (for the notebooks' look inside).
    pub fn bpe(&self) -> Option<&Bpe> {
        match &self.inner {
            Inner::Ours(b) => Some(b),
            Inner::Hf(_) => None,
        }
    }

    /// The text of a single id (for showing tokens one by one).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        match &self.inner {
            Inner::Ours(b) => b.token_string(id),
            Inner::Hf(t) => t.id_to_token(id),
        }
    }

    /// Number of ids, special tokens included (50,257 for GPT-2/GPT-Neo).
    pub fn vocab_size(&self) -> usize {
        match &self.inner {
            Inner::Ours(b) => b.vocab_size(),
            Inner::Hf(t) => t.get_vocab_size(true),
        }
    }

    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// `gpt-neo`, or the file the tokenizer came from.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// 16 hex digits of the SHA-256 of the tokenizer's canonical JSON: equal fingerprints mean the
    /// same vocabulary, merges and special tokens, whatever the file was called.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Saves the tokenizer as `tokenizer.json` (checkpoints carry their tokenizer).
    pub fn save(&self, path: &Path) -> Result<PathBuf> {
        match &self.inner {
            Inner::Ours(b) => {
                let text = serde_json::to_string(&b.to_tokenizer_json())
                    .map_err(|e| Error::Invalid(e.to_string()))?;
                std::fs::write(path, text).map_err(|e| Error::io(path, e))?;
            }
            Inner::Hf(t) => t.save(path, false).map_err(|e| Error::Tokenizer {
                path: path.to_owned(),
                why: e.to_string(),
            })?,
        }
        Ok(path.to_owned())
    }
}

/// Reads a text file for training, refusing bytes that are not UTF-8 with the offset of the
/// first bad one (a binary file or another encoding would otherwise train garbage).
pub fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    String::from_utf8(bytes).map_err(|e| {
        Error::data(path, format!("is not UTF-8 text: the byte at offset {} is invalid; convert the file to UTF-8 first", e.utf8_error().valid_up_to()))
    })
}

/// The spec `bpe:N` of `--tokenizer`: our BPE with `N` tokens, trained on the train split.
pub fn parse_bpe_spec(spec: &str) -> Result<Option<usize>> {
    match spec.strip_prefix("bpe:") {
        None => Ok(None),
        Some(n) => n.parse::<usize>().map(Some).map_err(|_| {
            Error::Invalid(format!(
                "--tokenizer {spec}: expected bpe:N with N the vocabulary size, e.g. bpe:4096"
            ))
        }),
    }
}

/// Trains our BPE with `vocab_size` tokens on the train split of `source` into `dir/tokenizer.json`,
/// or reuses the one already there when it was trained on the same files with the same size
/// (`dir/tokenizer-inputs.txt` records them). Returns the tokenizer and whether it was reused.
pub fn train_or_reuse(
    source: &crate::data::Source,
    vocab_size: usize,
    dir: &Path,
    force: bool,
) -> Result<(Tokenizer, bool)> {
    use crate::data::Split;
    let files = source.files(Split::Train)?;
    let signature = format!(
        "bpe {vocab_size} {EOS_TOKEN}\n{}",
        crate::data::shards::files_signature(&files)?
    );
    let (json_path, record) = (dir.join("tokenizer.json"), dir.join("tokenizer-inputs.txt"));
    if !force
        && json_path.is_file()
        && std::fs::read_to_string(&record).ok().as_deref() == Some(signature.as_str())
    {
        return Ok((
            Tokenizer::from_file_named(&json_path, &format!("bpe:{vocab_size}"))?,
            true,
        ));
    }
    let stories = source.stories(Split::Train)?;
    let texts: Vec<&str> = stories.iter().map(String::as_str).collect();
    let bpe = Bpe::train(&texts, vocab_size, &[EOS_TOKEN.to_string()])?;
    let tokenizer = Tokenizer::from_bpe(bpe, &format!("bpe:{vocab_size}"))?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    crate::atomic::write_with(&json_path, |tmp| tokenizer.save(tmp).map(|_| ()))?;
    crate::atomic::write_bytes(&record, signature.as_bytes())?;
    Ok((tokenizer, false))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
