//! Import of llama2.c checkpoints (karpathy's `tinyllamas`: stories260K, 15M, 42M, 110M).
//!
//! The legacy ("version 0") `.bin` format: seven little-endian `i32`s — dim, hidden_dim,
//! n_layers, n_heads, n_kv_heads, vocab_size, seq_len — then `f32` weights in this order:
//! token embedding, attention RMSNorm gains, wq, wk, wv, wo, FFN RMSNorm gains, w1, w2, w3,
//! final RMSNorm gain, two RoPE tables (ignored: we compute ours), and the classifier only when
//! vocab_size is negative (positive: the classifier shares the token embedding).
//!
//! Two conventions differ from ours. llama2.c's RoPE rotates neighbouring pairs `(2j, 2j+1)`; we
//! rotate `(j, j + hd/2)`: permuting the rows of wq and wk inside each head makes them agree.
//! Its `w1` (gate) and `w3` (up) become our stacked `c_fc`, its `w2` our `c_proj`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use super::config::GptConfig;
use super::gpt::Gpt;
use crate::{Error, Result};

/// The seven numbers of the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub dim: usize,
    pub hidden_dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub vocab_size: usize,
    pub shared_classifier: bool,
    pub seq_len: usize,
}

const HEADER_BYTES: usize = 7 * 4;

impl Header {
    /// Reads and checks the header against the file size (which it fully determines).
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self> {
        let bad = |why: String| Error::data(path, format!("is not a llama2.c checkpoint: {why}"));
        if bytes.len() < HEADER_BYTES {
            return Err(bad(format!(
                "{} bytes is shorter than the 28-byte header",
                bytes.len()
            )));
        }
        if &bytes[..4] == b"ak42" {
            return Err(bad("it is in llama2.c's newer versioned format (magic \"ak42\"); export it with `export.py --version 0` (legacy)".into()));
        }
        let field = |i: usize| i32::from_le_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap());
        let [dim, hidden, layers, heads, kv_heads, vocab, seq] = std::array::from_fn(field);
        for (name, v) in [
            ("dim", dim),
            ("hidden_dim", hidden),
            ("n_layers", layers),
            ("n_heads", heads),
            ("n_kv_heads", kv_heads),
            ("seq_len", seq),
        ] {
            if !(1..=1 << 20).contains(&v) {
                return Err(bad(format!(
                    "header field {name} = {v} is not a plausible size"
                )));
            }
        }
        if vocab == 0 || vocab.unsigned_abs() > 1 << 20 {
            return Err(bad(format!(
                "header field vocab_size = {vocab} is not a plausible size"
            )));
        }
        let h = Header {
            dim: dim as usize,
            hidden_dim: hidden as usize,
            n_layers: layers as usize,
            n_heads: heads as usize,
            n_kv_heads: kv_heads as usize,
            vocab_size: vocab.unsigned_abs() as usize,
            shared_classifier: vocab > 0,
            seq_len: seq as usize,
        };
        if !h.dim.is_multiple_of(h.n_heads) || !h.n_heads.is_multiple_of(h.n_kv_heads) {
            return Err(bad(format!(
                "dim {} / n_heads {} / n_kv_heads {} do not divide evenly",
                h.dim, h.n_heads, h.n_kv_heads
            )));
        }
        let expected = HEADER_BYTES as u128 + 4 * h.n_floats();
        if bytes.len() as u128 != expected {
            return Err(bad(format!(
                "the header {h:?} implies {expected} bytes but the file has {}",
                bytes.len()
            )));
        }
        Ok(h)
    }

    /// How many f32 values follow the header (u128: a corrupt header must not overflow).
    fn n_floats(&self) -> u128 {
        let [d, hd, l, kv, hidden, vocab, seq] = [
            self.dim,
            self.dim / self.n_heads,
            self.n_layers,
            self.n_kv_heads * (self.dim / self.n_heads),
            self.hidden_dim,
            self.vocab_size,
            self.seq_len,
        ]
        .map(|v| v as u128);
        let per_layer = 2 * d + d * d + 2 * d * kv + d * d + 3 * d * hidden;
        let rope_tables = seq * hd; // real and imaginary halves
        vocab * d
            + l * per_layer
            + d
            + rope_tables
            + if self.shared_classifier { 0 } else { vocab * d }
    }

    /// The equivalent tinygpt config: Llama style, RoPE θ = 10,000, RMSNorm ε = 1e-5.
    pub fn config(&self) -> GptConfig {
        GptConfig {
            tied_embeddings: self.shared_classifier,
            ..GptConfig::llama(
                self.n_layers,
                self.n_heads,
                self.n_kv_heads,
                self.dim,
                self.hidden_dim,
                self.seq_len,
                self.vocab_size,
            )
        }
    }
}

/// karpathy's TinyStories Llama checkpoints on the hub (repository `karpathy/tinyllamas`),
/// by the name `--checkpoint` accepts, with their file inside the repository.
pub const TINYLLAMAS: &[(&str, &str)] = &[
    ("stories260K", "stories260K/stories260K.bin"),
    ("stories15M", "stories15M.bin"),
    ("stories42M", "stories42M.bin"),
    ("stories110M", "stories110M.bin"),
];

/// The local path of a `tinyllamas` checkpoint by name (downloaded once into the hf-hub cache),
/// or `None` if `name` is not one of [`TINYLLAMAS`].
pub fn tinyllamas(name: &str) -> Result<Option<std::path::PathBuf>> {
    match TINYLLAMAS.iter().find(|(n, _)| *n == name) {
        Some((_, file)) => Ok(Some(crate::data::source::hub_file(
            "karpathy/tinyllamas",
            "model",
            file,
        )?)),
        None => Ok(None),
    }
}

/// Loads a llama2.c `.bin` file as a [`Gpt`].
pub fn load(path: &Path, device: &Device) -> Result<Gpt> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let h = Header::parse(&bytes, path)?;
    let floats: Vec<f32> = bytes[HEADER_BYTES..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let mut reader = Reader {
        floats: &floats,
        at: 0,
    };
    let (d, l, hd) = (h.dim, h.n_layers, h.dim / h.n_heads);
    let kv = h.n_kv_heads * hd;

    let embedding = reader.take(h.vocab_size * d);
    let rms_att = reader.take(l * d);
    let wq = reader.take(l * d * d);
    let wk = reader.take(l * kv * d);
    let wv = reader.take(l * kv * d);
    let wo = reader.take(l * d * d);
    let rms_ffn = reader.take(l * d);
    let w1 = reader.take(l * h.hidden_dim * d);
    let w2 = reader.take(l * d * h.hidden_dim);
    let w3 = reader.take(l * h.hidden_dim * d);
    let rms_final = reader.take(d);
    reader.take(h.seq_len * hd); // RoPE tables: recomputed by the model
    let wcls = if h.shared_classifier {
        None
    } else {
        Some(reader.take(h.vocab_size * d))
    };

    let layer = |all: &[f32], i: usize, n: usize| all[i * n..(i + 1) * n].to_vec();
    let mut t: HashMap<String, Tensor> = HashMap::new();
    let mut put = |name: String, values: Vec<f32>, shape: &[usize]| -> Result<()> {
        t.insert(name, Tensor::from_vec(values, shape, &Device::Cpu)?);
        Ok(())
    };
    put("wte.weight".into(), embedding.to_vec(), &[h.vocab_size, d])?;
    for i in 0..l {
        let p = format!("h.{i}");
        put(format!("{p}.ln_1.weight"), layer(rms_att, i, d), &[d])?;
        let mut qkv = rope_pairs_to_halves(&layer(wq, i, d * d), d, hd);
        qkv.extend(rope_pairs_to_halves(&layer(wk, i, kv * d), d, hd));
        qkv.extend(layer(wv, i, kv * d));
        put(format!("{p}.attn.c_attn.weight"), qkv, &[d + 2 * kv, d])?;
        put(
            format!("{p}.attn.c_proj.weight"),
            layer(wo, i, d * d),
            &[d, d],
        )?;
        put(format!("{p}.ln_2.weight"), layer(rms_ffn, i, d), &[d])?;
        let mut fc = layer(w1, i, h.hidden_dim * d);
        fc.extend(layer(w3, i, h.hidden_dim * d));
        put(format!("{p}.mlp.c_fc.weight"), fc, &[2 * h.hidden_dim, d])?;
        put(
            format!("{p}.mlp.c_proj.weight"),
            layer(w2, i, d * h.hidden_dim),
            &[d, h.hidden_dim],
        )?;
    }
    put("ln_f.weight".into(), rms_final.to_vec(), &[d])?;
    if let Some(wcls) = wcls {
        put("lm_head.weight".into(), wcls.to_vec(), &[h.vocab_size, d])?;
    }
    Gpt::from_tensors(&h.config(), t, device)
}

struct Reader<'a> {
    floats: &'a [f32],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> &'a [f32] {
        let out = &self.floats[self.at..self.at + n];
        self.at += n;
        out
    }
}

/// Reorders the output rows of a query/key matrix `(heads·hd, d)` inside each head from
/// llama2.c's pair layout `(0,1), (2,3), …` to the half layout `(0, hd/2), (1, hd/2+1), …`:
/// new row `j` = old row `2j`, new row `hd/2 + j` = old row `2j + 1`.
pub fn rope_pairs_to_halves(w: &[f32], d: usize, hd: usize) -> Vec<f32> {
    let heads = w.len() / (hd * d);
    let mut out = Vec::with_capacity(w.len());
    for h in 0..heads {
        for parity in 0..2 {
            for j in 0..hd / 2 {
                let row = h * hd + 2 * j + parity;
                out.extend_from_slice(&w[row * d..(row + 1) * d]);
            }
        }
    }
    out
}
