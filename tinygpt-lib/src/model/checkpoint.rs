//! Our checkpoint: a folder with `config.json` (the model config and which tokenizer it was
//! trained with), `model.safetensors` (the weights, f32) and `tokenizer.json`.
//!
//! Every file is written to a temporary name and renamed, the config last: a crash mid-save
//! leaves the previous checkpoint readable. Loading checks that the three files agree.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::config::GptConfig;
use super::gpt::Gpt;
use crate::atomic;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
const FORMAT: &str = "tinygpt-model/1";

/// The contents of a checkpoint's `config.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckpointConfig {
    pub format: String,
    pub model: GptConfig,
    /// The tokenizer the model was trained with (`None`: token ids only, e.g. an import).
    pub tokenizer: Option<TokenizerRecord>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenizerRecord {
    pub fingerprint: String,
    pub vocab_size: usize,
    pub eos_id: u32,
}

impl TokenizerRecord {
    pub fn of(tokenizer: &Tokenizer) -> Self {
        TokenizerRecord {
            fingerprint: tokenizer.fingerprint().to_string(),
            vocab_size: tokenizer.vocab_size(),
            eos_id: tokenizer.eos_id(),
        }
    }
}

/// A model, and its tokenizer when the checkpoint has one.
pub struct Loaded {
    pub model: Gpt,
    pub tokenizer: Option<Tokenizer>,
}

impl Loaded {
    /// The token a story starts from: the tokenizer's end-of-text (every story is stored as
    /// `EOS story`), or llama2.c's BOS (id 1) for a checkpoint without a tokenizer.
    pub fn start_token(&self) -> u32 {
        self.tokenizer.as_ref().map_or(1, |t| t.eos_id())
    }
}

/// Saves `model` (and `tokenizer`) into the folder `dir`, creating it if needed.
pub fn save(dir: &Path, model: &Gpt, tokenizer: Option<&Tokenizer>) -> Result<()> {
    if let Some(tok) = tokenizer {
        check_vocab(tok, model.config(), dir)?;
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    save_weights(&dir.join(WEIGHTS_FILE), &model.params().tensors())?;
    if let Some(tok) = tokenizer {
        let path = dir.join(TOKENIZER_FILE);
        atomic::write_with(&path, |tmp| tok.save(tmp).map(|_| ()))?;
    } else {
        let _ = std::fs::remove_file(dir.join(TOKENIZER_FILE));
    }
    let config = CheckpointConfig {
        format: FORMAT.into(),
        model: model.config().clone(),
        tokenizer: tokenizer.map(TokenizerRecord::of),
    };
    let json = serde_json::to_string_pretty(&config).map_err(|e| Error::Invalid(e.to_string()))?;
    atomic::write_bytes(&dir.join(CONFIG_FILE), json.as_bytes())
}

/// Loads a checkpoint for the CLI and notebooks: one of our folders, a Hugging Face folder
/// (GPT-2 or Llama `config.json`, see [`super::hf`]), a llama2.c `.bin` file, or the name of
/// one of karpathy's `tinyllamas` (`stories260K`, `stories15M`, …; from the hub).
pub fn load(path: &Path, device: &Device) -> Result<Loaded> {
    if !path.exists() {
        if let Some(file) = path
            .to_str()
            .map(super::llama2c::tinyllamas)
            .transpose()?
            .flatten()
        {
            return Ok(Loaded {
                model: super::llama2c::load(&file, device)?,
                tokenizer: None,
            });
        }
        return Err(Error::data(path, "does not exist: pass a checkpoint folder, a llama2.c .bin file or a tinyllamas name (stories260K, stories15M, stories42M, stories110M)"));
    }
    if path.is_file() {
        return Ok(Loaded {
            model: super::llama2c::load(path, device)?,
            tokenizer: None,
        });
    }
    let config_path = path.join(CONFIG_FILE);
    if !config_path.is_file() {
        return Err(Error::data(
            path,
            format!("is not a checkpoint: no {CONFIG_FILE} inside. Pass a folder written by `tinygpt init`/`train`/`export`, or a llama2.c .bin file"),
        ));
    }
    let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::data(&config_path, format!("is not valid JSON ({e})")))?;
    if json.get("model_type").is_some() {
        return super::hf::import(path, device);
    }
    let config: CheckpointConfig = serde_json::from_value(json)
        .map_err(|e| Error::data(&config_path, format!("is not a tinygpt model config ({e})")))?;
    config
        .model
        .validate()
        .map_err(|e| Error::data(&config_path, e.to_string()))?;
    let weights_path = path.join(WEIGHTS_FILE);
    let weights = load_weights(&weights_path, device)?;
    let model = Gpt::from_tensors(&config.model, weights, device)
        .map_err(|e| Error::data(&weights_path, format!("does not match {CONFIG_FILE}: {e}")))?;
    let tokenizer = load_tokenizer(path, &config)?;
    Ok(Loaded { model, tokenizer })
}

fn load_tokenizer(dir: &Path, config: &CheckpointConfig) -> Result<Option<Tokenizer>> {
    let path = dir.join(TOKENIZER_FILE);
    let Some(record) = &config.tokenizer else {
        return Ok(None);
    };
    if !path.is_file() {
        return Err(Error::data(
            dir,
            format!(
                "{CONFIG_FILE} names a tokenizer (fingerprint {}) but {TOKENIZER_FILE} is missing",
                record.fingerprint
            ),
        ));
    }
    let tok = Tokenizer::from_file(&path)?;
    if tok.fingerprint() != record.fingerprint {
        return Err(Error::data(
            &path,
            format!("is not the tokenizer the model was trained with: fingerprint {} here, {} in {CONFIG_FILE}", tok.fingerprint(), record.fingerprint),
        ));
    }
    check_vocab(&tok, &config.model, dir)?;
    Ok(Some(tok))
}

fn check_vocab(tok: &Tokenizer, config: &GptConfig, dir: &Path) -> Result<()> {
    if tok.vocab_size() > config.vocab_size {
        return Err(Error::data(
            dir,
            format!("the tokenizer has {} ids but the model only {} (vocab_size): they were not made for each other", tok.vocab_size(), config.vocab_size),
        ));
    }
    Ok(())
}

/// Writes tensors to a `.safetensors` file (atomically), with the `format: pt` metadata that
/// Hugging Face `transformers` expects.
pub fn save_weights(path: &Path, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    atomic::write_with(path, |tmp| {
        safetensors::serialize_to_file(
            tensors.iter().map(|(k, v)| (k.as_str(), v)),
            Some(metadata),
            tmp,
        )
        .map_err(|e| Error::data(tmp, format!("could not be written: {e}")))
    })
}

/// Reads every tensor of a `.safetensors` file.
pub fn load_weights(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    candle_core::safetensors::load_buffer(&bytes, device).map_err(|e| {
        Error::data(path, format!("is not a complete safetensors file ({e}); it may be truncated: save or download it again"))
    })
}
