//! Hugging Face `transformers` format: export to, and import from, a folder holding
//! `config.json` + `model.safetensors` (+ `tokenizer.json`).
//!
//! A GPT-2 style model becomes a `GPT2LMHeadModel` and a Llama style model a `LlamaForCausalLM`;
//! `AutoModelForCausalLM.from_pretrained(dir)` then computes the same logits as tinygpt for
//! a single story. The renaming is mechanical, with two real differences:
//! - GPT-2's `Conv1D` layers store their weight as `(in, out)`, the transpose of ours;
//! - Llama keeps `q_proj`/`k_proj`/`v_proj` and `gate_proj`/`up_proj` apart, we stack them.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};

use super::checkpoint::{
    load_weights, save_weights, Loaded, CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE,
};
use super::config::{GptConfig, Mlp, Norm, Positions};
use super::gpt::Gpt;
use crate::atomic;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

/// The `transformers` class a config maps to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HfArch {
    Gpt2,
    Llama,
}

impl HfArch {
    /// Which class can hold this model, or why none can.
    pub fn of(cfg: &GptConfig) -> Result<Self> {
        match (cfg.positions, cfg.norm, cfg.mlp) {
            (Positions::Learned, Norm::LayerNorm, Mlp::Gelu) if cfg.n_kv_head == cfg.n_head => Ok(HfArch::Gpt2),
            (Positions::Learned, Norm::LayerNorm, Mlp::Gelu) => Err(Error::Invalid(format!(
                "GPT-2 in transformers has no grouped-query attention (n_kv_head {} < n_head {}): this model cannot be exported as GPT2LMHeadModel",
                cfg.n_kv_head, cfg.n_head
            ))),
            (Positions::Rope { .. }, Norm::RmsNorm, Mlp::SwiGlu { .. }) => Ok(HfArch::Llama),
            _ => Err(Error::Invalid(format!(
                "no transformers architecture matches positions {:?} + {:?} + {:?}: export supports GPT-2 style (learned, layernorm, gelu) and Llama style (rope, rmsnorm, swiglu)",
                cfg.positions, cfg.norm, cfg.mlp
            ))),
        }
    }
}

/// Writes `model` (and `tokenizer`) to `dir` in Hugging Face format.
pub fn export(model: &Gpt, tokenizer: Option<&Tokenizer>, dir: &Path) -> Result<()> {
    let cfg = model.config();
    let arch = HfArch::of(cfg)?;
    let ours: BTreeMap<String, Tensor> = model
        .params()
        .tensors()
        .into_iter()
        .map(|(k, v)| Ok((k, v.to_device(&Device::Cpu)?)))
        .collect::<Result<_>>()?;
    let eos = tokenizer.map(|t| t.eos_id());
    let (tensors, config) = match arch {
        HfArch::Gpt2 => (to_gpt2(cfg, &ours)?, gpt2_config(cfg, eos)),
        HfArch::Llama => (to_llama(cfg, &ours)?, llama_config(cfg, eos)),
    };
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    save_weights(&dir.join(WEIGHTS_FILE), &tensors)?;
    if let Some(tok) = tokenizer {
        atomic::write_with(&dir.join(TOKENIZER_FILE), |tmp| tok.save(tmp).map(|_| ()))?;
    }
    let text = serde_json::to_string_pretty(&config).map_err(|e| Error::Invalid(e.to_string()))?;
    atomic::write_bytes(&dir.join(CONFIG_FILE), text.as_bytes())
}

fn gpt2_config(cfg: &GptConfig, eos: Option<u32>) -> Value {
    json!({
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.block_size,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": null,
        "activation_function": "gelu",
        "layer_norm_epsilon": cfg.norm_eps,
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
        "scale_attn_weights": true,
        "tie_word_embeddings": cfg.tied_embeddings,
        "bos_token_id": eos, "eos_token_id": eos,
        "torch_dtype": "float32",
    })
}

fn llama_config(cfg: &GptConfig, eos: Option<u32>) -> Value {
    let Positions::Rope { theta } = cfg.positions else {
        unreachable!("checked by HfArch::of")
    };
    json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.n_embd,
        "intermediate_size": cfg.mlp_hidden(),
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_kv_head,
        "head_dim": cfg.head_dim(),
        "max_position_embeddings": cfg.block_size,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": theta,
        "hidden_act": "silu",
        "attention_bias": cfg.bias,
        "mlp_bias": cfg.bias,
        "tie_word_embeddings": cfg.tied_embeddings,
        "bos_token_id": eos, "eos_token_id": eos,
        "torch_dtype": "float32",
    })
}

fn get<'a>(t: &'a BTreeMap<String, Tensor>, name: &str) -> Result<&'a Tensor> {
    t.get(name)
        .ok_or_else(|| Error::Invalid(format!("missing weight `{name}`")))
}

fn transpose(t: &Tensor) -> Result<Tensor> {
    Ok(t.t()?.contiguous()?)
}

/// Whether a weight is one of GPT-2's `Conv1D` layers, stored as `(in, out)`: the transpose of ours.
fn is_conv1d(name: &str) -> bool {
    [
        ".attn.c_attn.weight",
        ".attn.c_proj.weight",
        ".mlp.c_fc.weight",
        ".mlp.c_proj.weight",
    ]
    .iter()
    .any(|s| name.ends_with(s))
}

/// Our names → GPT-2's (`transformer.` prefix; Conv1D weights transposed; biases always present).
fn to_gpt2(cfg: &GptConfig, ours: &BTreeMap<String, Tensor>) -> Result<BTreeMap<String, Tensor>> {
    let mut out = BTreeMap::new();
    for (name, t) in ours {
        let t = if is_conv1d(name) {
            transpose(t)?
        } else {
            t.clone()
        };
        let hf_name = if name == "lm_head.weight" {
            name.clone()
        } else {
            format!("transformer.{name}")
        };
        out.insert(hf_name, t);
    }
    if !cfg.bias {
        // GPT-2 always has biases: a bias-free model exports zeros, which change nothing.
        for (name, t) in ours {
            if let Some(base) = name.strip_suffix(".weight") {
                let is_ln = base.ends_with("ln_1") || base.ends_with("ln_2") || base == "ln_f";
                let is_linear = base.contains(".attn.") || base.contains(".mlp.");
                if is_ln || is_linear {
                    out.insert(
                        format!("transformer.{base}.bias"),
                        Tensor::zeros(t.dim(0)?, DType::F32, &Device::Cpu)?,
                    );
                }
            }
        }
    }
    Ok(out)
}

/// Our names → Llama's (`model.` prefix; stacked projections split).
fn to_llama(cfg: &GptConfig, ours: &BTreeMap<String, Tensor>) -> Result<BTreeMap<String, Tensor>> {
    let (hd, nh, nkv, hidden) = (cfg.head_dim(), cfg.n_head, cfg.n_kv_head, cfg.mlp_hidden());
    let mut out = BTreeMap::new();
    out.insert(
        "model.embed_tokens.weight".into(),
        get(ours, "wte.weight")?.clone(),
    );
    out.insert(
        "model.norm.weight".into(),
        get(ours, "ln_f.weight")?.clone(),
    );
    if !cfg.tied_embeddings {
        out.insert(
            "lm_head.weight".into(),
            get(ours, "lm_head.weight")?.clone(),
        );
    }
    let suffixes: &[&str] = if cfg.bias {
        &["weight", "bias"]
    } else {
        &["weight"]
    };
    for i in 0..cfg.n_layer {
        let (p, q) = (format!("h.{i}"), format!("model.layers.{i}"));
        out.insert(
            format!("{q}.input_layernorm.weight"),
            get(ours, &format!("{p}.ln_1.weight"))?.clone(),
        );
        out.insert(
            format!("{q}.post_attention_layernorm.weight"),
            get(ours, &format!("{p}.ln_2.weight"))?.clone(),
        );
        for s in suffixes {
            let qkv = get(ours, &format!("{p}.attn.c_attn.{s}"))?;
            out.insert(
                format!("{q}.self_attn.q_proj.{s}"),
                qkv.narrow(0, 0, nh * hd)?.contiguous()?,
            );
            out.insert(
                format!("{q}.self_attn.k_proj.{s}"),
                qkv.narrow(0, nh * hd, nkv * hd)?.contiguous()?,
            );
            out.insert(
                format!("{q}.self_attn.v_proj.{s}"),
                qkv.narrow(0, (nh + nkv) * hd, nkv * hd)?.contiguous()?,
            );
            out.insert(
                format!("{q}.self_attn.o_proj.{s}"),
                get(ours, &format!("{p}.attn.c_proj.{s}"))?.clone(),
            );
            let fc = get(ours, &format!("{p}.mlp.c_fc.{s}"))?;
            out.insert(
                format!("{q}.mlp.gate_proj.{s}"),
                fc.narrow(0, 0, hidden)?.contiguous()?,
            );
            out.insert(
                format!("{q}.mlp.up_proj.{s}"),
                fc.narrow(0, hidden, hidden)?.contiguous()?,
            );
            out.insert(
                format!("{q}.mlp.down_proj.{s}"),
                get(ours, &format!("{p}.mlp.c_proj.{s}"))?.clone(),
            );
        }
    }
    Ok(out)
}

/// Reads a Hugging Face GPT-2 or Llama folder (one `model.safetensors`) as a tinygpt model.
pub fn import(dir: &Path, device: &Device) -> Result<Loaded> {
    let config_path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
    let hf: Value = serde_json::from_str(&text)
        .map_err(|e| Error::data(&config_path, format!("is not valid JSON ({e})")))?;
    let bad = |why: String| Error::data(&config_path, why);
    let num = |key: &str| {
        hf.get(key)
            .and_then(Value::as_u64)
            .map(|v| v as usize)
            .ok_or_else(|| bad(format!("has no number `{key}`")))
    };
    let float = |key: &str, default: f64| hf.get(key).and_then(Value::as_f64).unwrap_or(default);
    let flag = |key: &str, default: bool| hf.get(key).and_then(Value::as_bool).unwrap_or(default);
    let weights_path = dir.join(WEIGHTS_FILE);
    let hf_tensors = load_weights(&weights_path, &Device::Cpu)?;
    let (cfg, tensors) = match hf.get("model_type").and_then(Value::as_str) {
        Some("gpt2") => {
            if hf
                .get("activation_function")
                .and_then(Value::as_str)
                .unwrap_or("gelu_new")
                != "gelu"
            {
                return Err(bad("uses the tanh approximation of GELU (`gelu_new`); tinygpt's GPT-2 blocks use the exact `gelu`".into()));
            }
            let n_embd = num("n_embd")?;
            if hf
                .get("n_inner")
                .is_some_and(|v| !v.is_null() && v.as_u64() != Some(4 * n_embd as u64))
            {
                return Err(bad(
                    "has an MLP width (n_inner) other than 4 × n_embd".into()
                ));
            }
            let cfg = GptConfig {
                norm_eps: float("layer_norm_epsilon", 1e-5),
                tied_embeddings: flag("tie_word_embeddings", true),
                ..GptConfig::gpt2(
                    num("n_layer")?,
                    num("n_head")?,
                    n_embd,
                    num("n_positions")?,
                    num("vocab_size")?,
                )
            };
            (cfg.clone(), from_gpt2(&cfg, hf_tensors)?)
        }
        Some("llama") => {
            let n_head = num("num_attention_heads")?;
            let cfg = GptConfig {
                positions: Positions::Rope {
                    theta: float("rope_theta", 10_000.0) as f32,
                },
                norm_eps: float("rms_norm_eps", 1e-6),
                bias: flag("attention_bias", false),
                tied_embeddings: flag("tie_word_embeddings", false),
                ..GptConfig::llama(
                    num("num_hidden_layers")?,
                    n_head,
                    hf.get("num_key_value_heads")
                        .and_then(Value::as_u64)
                        .map_or(n_head, |v| v as usize),
                    num("hidden_size")?,
                    num("intermediate_size")?,
                    num("max_position_embeddings")?,
                    num("vocab_size")?,
                )
            };
            if cfg.head_dim()
                != hf
                    .get("head_dim")
                    .and_then(Value::as_u64)
                    .map_or(cfg.head_dim(), |v| v as usize)
            {
                return Err(bad(
                    "has a head_dim other than hidden_size / num_attention_heads".into(),
                ));
            }
            (cfg.clone(), from_llama(&cfg, hf_tensors)?)
        }
        other => {
            return Err(bad(format!(
                "model_type {other:?} cannot be imported; tinygpt reads \"gpt2\" and \"llama\""
            )))
        }
    };
    let model = Gpt::from_tensors(&cfg, tensors, device)
        .map_err(|e| Error::data(&weights_path, format!("does not match {CONFIG_FILE}: {e}")))?;
    let tok_path = dir.join(TOKENIZER_FILE);
    let tokenizer = if tok_path.is_file() {
        Some(Tokenizer::from_file(&tok_path)?)
    } else {
        None
    };
    Ok(Loaded { model, tokenizer })
}

fn from_gpt2(cfg: &GptConfig, hf: HashMap<String, Tensor>) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    for (name, t) in hf {
        let name = name
            .strip_prefix("transformer.")
            .unwrap_or(&name)
            .to_string();
        if name.ends_with(".attn.bias")
            || name.ends_with(".attn.masked_bias")
            || (cfg.tied_embeddings && name == "lm_head.weight")
        {
            continue; // old causal-mask buffers; the tied head is wte
        }
        let t = if is_conv1d(&name) { transpose(&t)? } else { t };
        out.insert(name, t);
    }
    Ok(out)
}

fn from_llama(cfg: &GptConfig, mut hf: HashMap<String, Tensor>) -> Result<HashMap<String, Tensor>> {
    let mut take = |name: &str| {
        hf.remove(name)
            .ok_or_else(|| Error::Invalid(format!("missing weight `{name}`")))
    };
    let mut out = HashMap::new();
    out.insert("wte.weight".to_string(), take("model.embed_tokens.weight")?);
    out.insert("ln_f.weight".to_string(), take("model.norm.weight")?);
    if !cfg.tied_embeddings {
        out.insert("lm_head.weight".to_string(), take("lm_head.weight")?);
    }
    let suffixes: &[&str] = if cfg.bias {
        &["weight", "bias"]
    } else {
        &["weight"]
    };
    for i in 0..cfg.n_layer {
        let (p, q) = (format!("h.{i}"), format!("model.layers.{i}"));
        out.insert(
            format!("{p}.ln_1.weight"),
            take(&format!("{q}.input_layernorm.weight"))?,
        );
        out.insert(
            format!("{p}.ln_2.weight"),
            take(&format!("{q}.post_attention_layernorm.weight"))?,
        );
        for s in suffixes {
            let parts =
                ["q_proj", "k_proj", "v_proj"].map(|n| take(&format!("{q}.self_attn.{n}.{s}")));
            let [a, b, c] = parts;
            out.insert(
                format!("{p}.attn.c_attn.{s}"),
                Tensor::cat(&[a?, b?, c?], 0)?,
            );
            out.insert(
                format!("{p}.attn.c_proj.{s}"),
                take(&format!("{q}.self_attn.o_proj.{s}"))?,
            );
            let gate = take(&format!("{q}.mlp.gate_proj.{s}"))?;
            let up = take(&format!("{q}.mlp.up_proj.{s}"))?;
            out.insert(format!("{p}.mlp.c_fc.{s}"), Tensor::cat(&[gate, up], 0)?);
            out.insert(
                format!("{p}.mlp.c_proj.{s}"),
                take(&format!("{q}.mlp.down_proj.{s}"))?,
            );
        }
    }
    Ok(out)
}
