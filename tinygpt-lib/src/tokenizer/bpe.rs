//! Byte-level BPE (byte-pair encoding; Sennrich et al. 2016, as GPT-2 uses it), from scratch:
//! training, encoding, decoding, and the files a tokenizer lives in.
//!
//! The idea: start from the 256 possible bytes as tokens, so that any text can be written.
//! Count, over a corpus, how often each pair of neighbouring tokens occurs; the most frequent
//! pair becomes a new token (a *merge*); repeat until the vocabulary has the size we want.
//! Encoding replays the merges in the order they were learned.
//!
//! GPT-2's conventions, which we follow exactly (tests compare with the `tokenizers` crate):
//! - **Pre-tokenization**: the text is first cut into words by GPT-2's pattern — English
//!   contractions, runs of letters, runs of digits, runs of other symbols, each with at most one
//!   leading space, and whitespace. Merges never cross these boundaries, so " dog" is learned
//!   once instead of once per preceding word.
//! - **Special tokens** such as `<|endoftext|>` are matched before that (longest first), never
//!   split and never merged; training removes them from the text.
//! - **Files** store bytes as printable characters ([`byte_to_char`]): a space is `Ġ`.

use std::collections::{BinaryHeap, HashMap, HashSet};
use std::path::Path;

use rayon::prelude::*;
use regex::Regex;
use serde_json::{json, Value};

use crate::{Error, Result};

/// GPT-2's pre-tokenization pattern, without its `\s+(?!\S)` look-ahead (see [`pre_tokens`]).
const PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+";

/// A trained byte-level BPE tokenizer.
#[derive(Clone, Debug)]
pub struct Bpe {
    /// Token id → its bytes (special tokens: their UTF-8 text).
    vocab: Vec<Vec<u8>>,
    /// The merges in the order they were learned (a merge's index is its *rank*).
    merges: Vec<(u32, u32)>,
    /// `(left, right)` → `(rank, id of the merged token)`.
    merge_rank: HashMap<(u32, u32), (u32, u32)>,
    /// Special tokens and their ids, longest first.
    specials: Vec<(String, u32)>,
    special_re: Option<Regex>,
    /// Byte value → id of its single-byte token.
    byte_ids: [u32; 256],
    pre_re: Regex,
}

/// Why a tokenizer file cannot be read by [`Bpe`] (the caller may use another implementation).
#[derive(Debug)]
pub enum LoadError {
    /// Not a byte-level BPE in GPT-2's style (e.g. WordPiece, or another pre-tokenizer).
    Unsupported(String),
    /// A byte-level BPE file that is broken.
    Invalid(String),
}

impl Bpe {
    // ------------------------------------------------------------------------------------------
    // Building

    /// Assembles a tokenizer from its vocabulary (id → bytes), merges and special tokens.
    fn new(
        vocab: Vec<Vec<u8>>,
        merges: Vec<(u32, u32)>,
        specials: Vec<(String, u32)>,
    ) -> Result<Self> {
        let ids: HashMap<&[u8], u32> = vocab
            .iter()
            .enumerate()
            .map(|(i, b)| (b.as_slice(), i as u32))
            .collect();
        let mut byte_ids = [0u32; 256];
        for b in 0..=255u8 {
            byte_ids[b as usize] = *ids.get([b].as_slice()).ok_or_else(|| {
                Error::Invalid(format!("the vocabulary lacks the single byte {b:#04x}"))
            })?;
        }
        let mut merge_rank = HashMap::with_capacity(merges.len());
        for (rank, &(a, b)) in merges.iter().enumerate() {
            let bytes = [vocab[a as usize].as_slice(), vocab[b as usize].as_slice()].concat();
            let merged = *ids.get(bytes.as_slice()).ok_or_else(|| {
                Error::Invalid(format!(
                    "merge {rank} ({:?} + {:?}) makes a token that is not in the vocabulary",
                    show(&vocab[a as usize]),
                    show(&vocab[b as usize])
                ))
            })?;
            merge_rank.entry((a, b)).or_insert((rank as u32, merged));
        }
        let mut specials = specials;
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
        let special_re = if specials.is_empty() {
            None
        } else {
            let alternation: Vec<String> = specials.iter().map(|(s, _)| regex::escape(s)).collect();
            Some(Regex::new(&alternation.join("|")).map_err(|e| Error::Invalid(e.to_string()))?)
        };
        Ok(Bpe {
            vocab,
            merges,
            merge_rank,
            specials,
            special_re,
            byte_ids,
            pre_re: Regex::new(PATTERN).expect("valid pattern"),
        })
    }

    /// Number of tokens, special tokens included.
    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    /// The merges in order, as pairs of token ids.
    pub fn merges(&self) -> &[(u32, u32)] {
        &self.merges
    }

    /// The bytes of token `id`.
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.vocab.get(id as usize).map(|v| v.as_slice())
    }

    /// The id of a special token.
    pub fn special_id(&self, token: &str) -> Option<u32> {
        self.specials
            .iter()
            .find(|(s, _)| s == token)
            .map(|&(_, id)| id)
    }

    // ------------------------------------------------------------------------------------------
    // Training

    /// Learns a vocabulary of `vocab_size` tokens from `texts`: the special tokens first (ids
    /// 0, 1, …), then the 256 bytes, then one token per merge.
    ///
    /// Ties (several pairs with the highest count) go to the lexicographically greatest pair of
    /// byte strings, as in the reference implementation our tests compare with.
    pub fn train(texts: &[&str], vocab_size: usize, specials: &[String]) -> Result<Self> {
        if vocab_size < 256 + specials.len() {
            return Err(Error::Invalid(format!(
                "--vocab-size {vocab_size} is too small: it must hold the 256 single bytes plus {} special token(s)",
                specials.len()
            )));
        }
        let mut vocab: Vec<Vec<u8>> = specials.iter().map(|s| s.as_bytes().to_vec()).collect();
        let special_ids: Vec<(String, u32)> = specials
            .iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), i as u32))
            .collect();
        vocab.extend((0..=255u8).map(|b| vec![b]));
        let skeleton = Bpe::new(vocab.clone(), vec![], special_ids.clone())?;

        // 1. How often each pre-token occurs, counted in parallel.
        let counts = skeleton.count_pre_tokens(texts);
        if counts.is_empty() {
            return Err(Error::Invalid(
                "the training text is empty (after removing special tokens)".into(),
            ));
        }
        let mut sorted: Vec<(&str, u64)> = counts.into_iter().collect();
        sorted.sort_unstable();
        let mut words: Vec<Vec<u32>> = sorted
            .iter()
            .map(|(w, _)| w.bytes().map(|b| skeleton.byte_ids[b as usize]).collect())
            .collect();
        let freq: Vec<i64> = sorted.iter().map(|&(_, c)| c as i64).collect();

        // 2. Pair counts, and which words hold each pair.
        let mut pair_count: HashMap<(u32, u32), i64> = HashMap::new();
        let mut pair_words: HashMap<(u32, u32), HashSet<u32>> = HashMap::new();
        for (w, symbols) in words.iter().enumerate() {
            for p in symbols.windows(2) {
                *pair_count.entry((p[0], p[1])).or_default() += freq[w];
                pair_words.entry((p[0], p[1])).or_default().insert(w as u32);
            }
        }
        // 3. A max-heap of (count, left bytes, right bytes). Counts change as merges happen; an
        //    entry whose count is out of date is skipped when it comes up (a fresh one was pushed).
        let mut heap: BinaryHeap<HeapEntry> = pair_count
            .iter()
            .map(|(&(a, b), &c)| {
                (
                    c,
                    vocab[a as usize].clone(),
                    vocab[b as usize].clone(),
                    a,
                    b,
                )
            })
            .collect();

        let mut merges = Vec::new();
        while vocab.len() < vocab_size {
            let Some((count, _, _, a, b)) = heap.pop() else {
                break;
            };
            if pair_count.get(&(a, b)) != Some(&count) {
                continue; // stale
            }
            if count <= 0 {
                break;
            }
            let new_id = vocab.len() as u32;
            vocab.push([vocab[a as usize].as_slice(), vocab[b as usize].as_slice()].concat());
            merges.push((a, b));
            pair_count.remove(&(a, b));
            // 4. Rewrite only the words that contain the pair, updating the counts they change.
            let mut changed: HashSet<(u32, u32)> = HashSet::new();
            for w in pair_words.remove(&(a, b)).unwrap_or_default() {
                let old = &words[w as usize];
                let new = merge_pair(old, a, b, new_id);
                if new.len() == old.len() {
                    continue; // the pair left this word in an earlier merge
                }
                let f = freq[w as usize];
                for p in old.windows(2) {
                    if (p[0], p[1]) != (a, b) {
                        *pair_count.get_mut(&(p[0], p[1])).expect("counted") -= f;
                        changed.insert((p[0], p[1]));
                    }
                }
                for p in new.windows(2) {
                    *pair_count.entry((p[0], p[1])).or_default() += f;
                    pair_words.entry((p[0], p[1])).or_default().insert(w);
                    changed.insert((p[0], p[1]));
                }
                words[w as usize] = new;
            }
            for (x, y) in changed {
                if let Some(&c) = pair_count.get(&(x, y)) {
                    if c > 0 {
                        heap.push((
                            c,
                            vocab[x as usize].clone(),
                            vocab[y as usize].clone(),
                            x,
                            y,
                        ));
                    }
                }
            }
        }
        Bpe::new(vocab, merges, special_ids)
    }

    /// Pre-token → occurrences over all texts (special tokens removed), in parallel.
    fn count_pre_tokens<'t>(&self, texts: &[&'t str]) -> HashMap<&'t str, u64> {
        let pieces: Vec<&'t str> = texts
            .iter()
            .flat_map(|t| self.split_specials(t).into_iter().filter_map(|p| p.err()))
            .collect();
        pieces
            .par_iter()
            .fold(HashMap::new, |mut counts: HashMap<&'t str, u64>, piece| {
                for w in pre_tokens(&self.pre_re, piece) {
                    *counts.entry(w).or_default() += 1;
                }
                counts
            })
            .reduce(HashMap::new, |mut a, b| {
                if a.len() < b.len() {
                    return merge_counts(b, a);
                }
                for (k, v) in b {
                    *a.entry(k).or_default() += v;
                }
                a
            })
    }

    // ------------------------------------------------------------------------------------------
    // Encoding and decoding

    /// The ids of `text`. Special tokens in the text become their ids.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.encode_with_cache(text, &mut HashMap::new())
    }

    /// [`Bpe::encode`], remembering the ids of every pre-token in `cache` (stories repeat their
    /// words: each distinct word is merged once).
    pub fn encode_with_cache(&self, text: &str, cache: &mut HashMap<String, Vec<u32>>) -> Vec<u32> {
        let mut ids = Vec::with_capacity(text.len() / 3);
        for piece in self.split_specials(text) {
            match piece {
                Ok(id) => ids.push(id),
                Err(plain) => {
                    for word in pre_tokens(&self.pre_re, plain) {
                        match cache.get(word) {
                            Some(cached) => ids.extend_from_slice(cached),
                            None => {
                                let start = ids.len();
                                self.encode_word(word.as_bytes(), &mut ids);
                                if cache.len() < 1 << 20 {
                                    cache.insert(word.to_string(), ids[start..].to_vec());
                                }
                            }
                        }
                    }
                }
            }
        }
        ids
    }

    /// Applies the merges to one pre-token, as GPT-2 does: repeatedly take the adjacent pair
    /// learned earliest (lowest rank) and merge all its occurrences, left to right.
    fn encode_word(&self, bytes: &[u8], out: &mut Vec<u32>) {
        let mut symbols: Vec<u32> = bytes.iter().map(|&b| self.byte_ids[b as usize]).collect();
        while symbols.len() > 1 {
            let best = symbols
                .windows(2)
                .filter_map(|p| {
                    self.merge_rank
                        .get(&(p[0], p[1]))
                        .map(|&(rank, id)| (rank, p[0], p[1], id))
                })
                .min();
            let Some((_, a, b, id)) = best else { break };
            symbols = merge_pair(&symbols, a, b, id);
        }
        out.extend_from_slice(&symbols);
    }

    /// Cuts `text` into special tokens (`Ok(id)`) and the plain text between them (`Err(text)`).
    fn split_specials<'t>(&self, text: &'t str) -> Vec<std::result::Result<u32, &'t str>> {
        let mut pieces = Vec::new();
        let mut last = 0;
        if let Some(re) = &self.special_re {
            for m in re.find_iter(text) {
                if m.start() > last {
                    pieces.push(Err(&text[last..m.start()]));
                }
                pieces.push(Ok(self.special_id(m.as_str()).expect("matched a special")));
                last = m.end();
            }
        }
        if last < text.len() {
            pieces.push(Err(&text[last..]));
        }
        pieces
    }

    /// The text of `ids`. Exact for the ids of any text; byte sequences that are not valid UTF-8
    /// (possible with arbitrary ids) become U+FFFD. Unknown ids are an error.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            let token = self.vocab.get(id as usize).ok_or_else(|| {
                Error::Invalid(format!(
                    "token id {id} is outside the vocabulary of {}",
                    self.vocab.len()
                ))
            })?;
            bytes.extend_from_slice(token);
        }
        Ok(match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    /// A token as the files write it (bytes in GPT-2's printable alphabet).
    pub fn token_string(&self, id: u32) -> Option<String> {
        let bytes = self.vocab.get(id as usize)?;
        if let Some((s, _)) = self.specials.iter().find(|(_, i)| *i == id) {
            return Some(s.clone());
        }
        Some(bytes.iter().map(|&b| byte_to_char(b)).collect())
    }

    // ------------------------------------------------------------------------------------------
    // Files

    /// The Hugging Face `tokenizer.json` of this tokenizer: a byte-level BPE model with GPT-2's
    /// pre-tokenizer and decoder, the special tokens as added tokens. The `tokenizers` crate and
    /// `transformers` load it and encode exactly as we do.
    pub fn to_tokenizer_json(&self) -> Value {
        let mut vocab = serde_json::Map::new();
        for id in 0..self.vocab.len() as u32 {
            vocab.insert(self.token_string(id).unwrap(), json!(id));
        }
        let merges: Vec<Value> = self
            .merges
            .iter()
            .map(|&(a, b)| json!([self.token_string(a).unwrap(), self.token_string(b).unwrap()]))
            .collect();
        let added: Vec<Value> = {
            let mut s = self.specials.clone();
            s.sort_by_key(|&(_, id)| id);
            s.iter()
                .map(|(content, id)| {
                    json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true})
                })
                .collect()
        };
        let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
        json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": byte_level,
            "post_processor": null,
            "decoder": byte_level,
            "model": {
                "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": vocab, "merges": merges,
            },
        })
    }

    /// Reads a Hugging Face `tokenizer.json` holding a byte-level BPE in GPT-2's style.
    pub fn from_tokenizer_json(json: &Value) -> std::result::Result<Self, LoadError> {
        use LoadError::{Invalid, Unsupported};
        let model = json
            .get("model")
            .ok_or_else(|| Unsupported("it has no \"model\"".into()))?;
        let kind = model.get("type").and_then(Value::as_str).unwrap_or("BPE");
        if kind != "BPE" || model.get("vocab").is_none_or(|v| !v.is_object()) {
            return Err(Unsupported(format!(
                "its model is {kind}, not a byte-level BPE"
            )));
        }
        let pre = json.get("pre_tokenizer").unwrap_or(&Value::Null);
        let byte_level = pre.get("type").and_then(Value::as_str) == Some("ByteLevel")
            && pre.get("add_prefix_space").and_then(Value::as_bool) != Some(true)
            && pre.get("use_regex").and_then(Value::as_bool) != Some(false);
        let plain = json.get("normalizer").is_none_or(Value::is_null)
            && model
                .get("continuing_subword_prefix")
                .and_then(Value::as_str)
                .unwrap_or("")
                .is_empty()
            && model
                .get("end_of_word_suffix")
                .and_then(Value::as_str)
                .unwrap_or("")
                .is_empty()
            && model.get("byte_fallback").and_then(Value::as_bool) != Some(true);
        if !byte_level || !plain {
            return Err(Unsupported(
                "it is not a plain byte-level BPE with GPT-2's pre-tokenizer".into(),
            ));
        }
        // Added tokens (special or not) are matched whole before pre-tokenization; the options
        // that change how they match (lstrip, rstrip, single_word) are left to `tokenizers`.
        let added = json
            .get("added_tokens")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut specials: Vec<(String, u32)> = Vec::new();
        for t in &added {
            let flag = |k: &str| t.get(k).and_then(Value::as_bool).unwrap_or(false);
            if flag("lstrip") || flag("rstrip") || flag("single_word") {
                return Err(Unsupported(
                    "an added token strips spaces or matches single words only".into(),
                ));
            }
            let content = t
                .get("content")
                .and_then(Value::as_str)
                .ok_or_else(|| Invalid("an added token has no content".into()))?;
            let id = t
                .get("id")
                .and_then(Value::as_u64)
                .ok_or_else(|| Invalid(format!("added token {content:?} has no id")))?;
            specials.push((content.to_string(), id as u32));
        }
        let mut vocab_map: HashMap<String, u32> = serde_json::from_value(model["vocab"].clone())
            .map_err(|e| Invalid(format!("bad vocab: {e}")))?;
        for (content, id) in &specials {
            vocab_map.insert(content.clone(), *id);
        }
        let merges: Vec<(String, String)> = match model.get("merges").and_then(Value::as_array) {
            None => vec![],
            Some(list) => list
                .iter()
                .map(|m| match m {
                    Value::String(s) => s
                        .split_once(' ')
                        .map(|(a, b)| (a.to_string(), b.to_string())),
                    Value::Array(pair) if pair.len() == 2 => {
                        Some((pair[0].as_str()?.to_string(), pair[1].as_str()?.to_string()))
                    }
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| Invalid("a merge is neither \"a b\" nor [a, b]".into()))?,
        };
        Self::from_parts(vocab_map, &merges, specials).map_err(|e| Invalid(e.to_string()))
    }

    /// Reads GPT-2's `vocab.json` + `merges.txt` (optionally adding special tokens that the
    /// vocabulary lacks, with the next free ids).
    pub fn from_vocab_merges(
        vocab_path: &Path,
        merges_path: &Path,
        specials: &[String],
    ) -> Result<Self> {
        let text = std::fs::read_to_string(vocab_path).map_err(|e| Error::io(vocab_path, e))?;
        let vocab: HashMap<String, u32> = serde_json::from_str(&text).map_err(|e| {
            Error::data(
                vocab_path,
                format!("is not a JSON object of token → id ({e})"),
            )
        })?;
        let text = std::fs::read_to_string(merges_path).map_err(|e| Error::io(merges_path, e))?;
        let merges: Vec<(String, String)> = text
            .lines()
            .filter(|l| !l.starts_with("#version"))
            .filter_map(|l| {
                let parts: Vec<&str> = l.split(' ').collect();
                (parts.len() == 2).then(|| (parts[0].to_string(), parts[1].to_string()))
            })
            .collect();
        let mut special_ids = vec![];
        let mut next = vocab.values().max().map_or(0, |&m| m + 1);
        for s in specials {
            let id = match vocab.get(s) {
                Some(&id) => id,
                None => {
                    next += 1;
                    next - 1
                }
            };
            special_ids.push((s.clone(), id));
        }
        let mut vocab = vocab;
        for (s, id) in &special_ids {
            vocab.insert(s.clone(), *id);
        }
        Self::from_parts(vocab, &merges, special_ids)
            .map_err(|e| Error::data(merges_path, e.to_string()))
    }

    fn from_parts(
        vocab: HashMap<String, u32>,
        merges: &[(String, String)],
        specials: Vec<(String, u32)>,
    ) -> Result<Self> {
        let n = vocab.values().max().map_or(0, |&m| m as usize + 1);
        let mut by_id: Vec<Option<Vec<u8>>> = vec![None; n];
        let special_ids: HashSet<u32> = specials.iter().map(|&(_, id)| id).collect();
        for (token, &id) in &vocab {
            let bytes = if special_ids.contains(&id) {
                token.as_bytes().to_vec()
            } else {
                string_to_bytes(token)?
            };
            by_id[id as usize] = Some(bytes);
        }
        let by_id: Vec<Vec<u8>> = by_id
            .into_iter()
            .enumerate()
            .map(|(i, b)| {
                b.ok_or_else(|| {
                    Error::Invalid(format!(
                        "the vocabulary has no token with id {i} (ids must be 0..{n})"
                    ))
                })
            })
            .collect::<Result<_>>()?;
        let merge_ids = merges
            .iter()
            .map(|(a, b)| match (vocab.get(a), vocab.get(b)) {
                (Some(&x), Some(&y)) => Ok((x, y)),
                _ => Err(Error::Invalid(format!(
                    "merge \"{a} {b}\" uses a token that is not in the vocabulary"
                ))),
            })
            .collect::<Result<Vec<_>>>()?;
        Bpe::new(by_id, merge_ids, specials)
    }
}

/// A candidate merge in the training heap: `(count, left bytes, right bytes, left id, right id)`.
/// The heap pops the greatest: the highest count, ties going to the greatest byte strings.
type HeapEntry = (i64, Vec<u8>, Vec<u8>, u32, u32);

/// Replaces every non-overlapping occurrence of the pair `(a, b)`, left to right, by `id`.
fn merge_pair(symbols: &[u32], a: u32, b: u32, id: u32) -> Vec<u32> {
    let mut out = Vec::with_capacity(symbols.len());
    let mut i = 0;
    while i < symbols.len() {
        if i + 1 < symbols.len() && symbols[i] == a && symbols[i + 1] == b {
            out.push(id);
            i += 2;
        } else {
            out.push(symbols[i]);
            i += 1;
        }
    }
    out
}

fn merge_counts<'t>(
    mut big: HashMap<&'t str, u64>,
    small: HashMap<&'t str, u64>,
) -> HashMap<&'t str, u64> {
    for (k, v) in small {
        *big.entry(k).or_default() += v;
    }
    big
}

/// GPT-2's pre-tokenization of `text` (special tokens are not treated specially here): the
/// words merges stay within. For looking at; the tokenizer uses [`pre_tokens`].
pub fn pre_tokenize(text: &str) -> Vec<&str> {
    static RE: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    pre_tokens(
        RE.get_or_init(|| Regex::new(PATTERN).expect("valid pattern")),
        text,
    )
    .collect()
}

/// GPT-2's pre-tokenization of `text` (which holds no special tokens).
///
/// GPT-2's pattern ends in `\s+(?!\S)|\s+`: a run of whitespace followed by a word gives its last
/// space to that word (" dog"), unless it is the end of the text. The `regex` crate has no
/// look-ahead, so we match `\s+` and give the last character back ourselves.
pub fn pre_tokens<'r, 't>(
    re: &'r Regex,
    text: &'t str,
) -> impl Iterator<Item = &'t str> + use<'r, 't> {
    let mut pos = 0;
    std::iter::from_fn(move || {
        if pos >= text.len() {
            return None;
        }
        let m = re.find_at(text, pos)?;
        debug_assert_eq!(m.start(), pos, "every character matches some alternative");
        let mut end = m.end();
        let piece = m.as_str();
        if end < text.len() && piece.chars().all(char::is_whitespace) {
            let last = piece.chars().next_back().map_or(0, char::len_utf8);
            if piece.len() > last {
                end -= last;
            }
        }
        let word = &text[pos..end];
        pos = end;
        Some(word)
    })
}

/// GPT-2's printable alphabet for bytes: `!`..`~`, `¡`..`¬` and `®`..`ÿ` stand for themselves;
/// the other 68 bytes (control characters, space, …) map to U+0100 onwards, in byte order.
pub fn byte_to_char(b: u8) -> char {
    if is_printable_byte(b) {
        return b as char;
    }
    let rank = (0..b).filter(|&x| !is_printable_byte(x)).count() as u32;
    char::from_u32(256 + rank).unwrap()
}

fn is_printable_byte(b: u8) -> bool {
    matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF)
}

/// The inverse of [`byte_to_char`] over a whole token string.
pub fn string_to_bytes(token: &str) -> Result<Vec<u8>> {
    token
        .chars()
        .map(|c| {
            let cp = c as u32;
            if cp < 256 && is_printable_byte(cp as u8) {
                return Ok(cp as u8);
            }
            if (256..256 + 68).contains(&cp) {
                let rank = cp - 256;
                return Ok((0..=255u8)
                    .filter(|&x| !is_printable_byte(x))
                    .nth(rank as usize)
                    .unwrap());
            }
            Err(Error::Invalid(format!(
                "token {token:?} has the character {c:?}, which is not in the byte alphabet"
            )))
        })
        .collect()
}

/// Bytes for messages: text when it is UTF-8.
fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_alphabet_round_trips_and_matches_gpt2() {
        assert_eq!(byte_to_char(b' '), 'Ġ');
        assert_eq!(byte_to_char(b'\n'), 'Ċ');
        assert_eq!(byte_to_char(b'a'), 'a');
        for b in 0..=255u8 {
            assert_eq!(
                string_to_bytes(&byte_to_char(b).to_string()).unwrap(),
                vec![b]
            );
        }
    }

    #[test]
    fn pre_tokens_follow_gpt2s_pattern() {
        let re = Regex::new(PATTERN).unwrap();
        let cut = |s: &'static str| pre_tokens(&re, s).collect::<Vec<_>>();
        assert_eq!(
            cut("Hello, how are you?"),
            ["Hello", ",", " how", " are", " you", "?"]
        );
        assert_eq!(
            cut("I'm   here\n\nnow  "),
            ["I", "'m", "  ", " here", "\n", "\n", "now", "  "]
        );
        assert_eq!(cut("it's 2024!! ok"), ["it", "'s", " 2024", "!!", " ok"]);
        assert!(cut("").is_empty());
    }

    #[test]
    fn training_merges_the_most_frequent_pair_first() {
        // "low" ×5 and "lower" ×2: (l, o) and (o, w) both occur 7 times; the tie goes to the
        // greater pair of byte strings, ("o", "w").
        let text = "low low low low low lower lower";
        let bpe = Bpe::train(&[text], 256 + 2, &[]).unwrap();
        let pairs: Vec<(String, String)> = bpe
            .merges()
            .iter()
            .map(|&(a, b)| {
                (
                    show(bpe.token_bytes(a).unwrap()),
                    show(bpe.token_bytes(b).unwrap()),
                )
            })
            .collect();
        assert_eq!(pairs[0], ("o".to_string(), "w".to_string()));
        // Then (l, ow): still 7 occurrences, more than (" ", l) with 6.
        assert_eq!(pairs[1], ("l".to_string(), "ow".to_string()));
    }
}
