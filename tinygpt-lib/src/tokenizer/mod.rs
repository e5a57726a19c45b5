//! The tokenizer used by the rest of the project: text ⇄ token ids, plus the facts that shards
//! and checkpoints must agree on (vocabulary size, end-of-text id, a fingerprint).
//!
//! Today it wraps any Hugging Face `tokenizer.json` through the `tokenizers` crate, such as
//! GPT-Neo-125M's (the original project's tokenizer: GPT-2's 50,257-token byte-level BPE).

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::data::source::hub_file;
use crate::error::{Error, Result};

/// The end-of-text token that separates (here: opens) every story.
pub const EOS_TOKEN: &str = "<|endoftext|>";

/// The hub model whose tokenizer the original project used.
pub const GPT_NEO_REPO: &str = "EleutherAI/gpt-neo-125M";

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    name: String,
    eos_id: u32,
    fingerprint: String,
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
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| bad(format!("is not a valid Hugging Face tokenizer.json ({e})")))?;
        let eos_id = inner.token_to_id(EOS_TOKEN).ok_or_else(|| {
            bad(format!(
                "has no `{EOS_TOKEN}` token, which marks where every story starts"
            ))
        })?;
        let canonical = inner.to_string(false).map_err(|e| bad(e.to_string()))?;
        let fingerprint = hex(&Sha256::digest(canonical.as_bytes())[..8]);
        Ok(Self {
            inner,
            name: name.to_owned(),
            eos_id,
            fingerprint,
        })
    }

    /// The ids of `text`, with no special tokens added around it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self.inner.encode_fast(text, false).map_err(|e| {
            Error::Invalid(format!("tokenizer {}: encoding failed: {e}", self.name))
        })?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The ids of many texts, encoded in parallel on all cores (rayon).
    pub fn encode_all(&self, texts: &[String]) -> Result<Vec<Vec<u32>>> {
        use rayon::prelude::*;
        texts.par_iter().map(|text| self.encode(text)).collect()
    }

    /// The text of `ids`; special tokens such as `<|endoftext|>` are kept so that decoding is exact.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| Error::Invalid(format!("tokenizer {}: decoding failed: {e}", self.name)))
    }

    /// The text of a single id (for showing tokens one by one).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Number of ids, special tokens included (50,257 for GPT-2/GPT-Neo).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
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
        self.inner.save(path, false).map_err(|e| Error::Tokenizer {
            path: path.to_owned(),
            why: e.to_string(),
        })?;
        Ok(path.to_owned())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
