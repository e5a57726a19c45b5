//! Our BPE against outside references: the CS336 training fixture (exact merges), the
//! `tokenizers` crate with GPT-2's vocabulary (exact ids), and round trips on arbitrary text.

use std::collections::HashSet;
use std::path::PathBuf;

use proptest::prelude::*;
use tinygpt::tokenizer::bpe::{string_to_bytes, Bpe, LoadError};
use tinygpt::Tokenizer;
use tinygpt_tests::{gpt2_tokenizer, shared, tinystories_dir};

const EOT: &str = "<|endoftext|>";

fn fixtures() -> PathBuf {
    shared().join("data/bpe-fixtures")
}

fn gpt2_dir() -> PathBuf {
    shared().join("data/tokenizers/gpt2")
}

fn valid_stories() -> Vec<String> {
    tinygpt::data::source::read_stories(&tinystories_dir().join("valid.txt")).unwrap()
}

#[test]
fn training_on_the_cs336_corpus_reproduces_the_reference_merges_and_vocabulary() {
    let corpus = std::fs::read_to_string(fixtures().join("corpus.en")).unwrap();
    let bpe = Bpe::train(&[&corpus], 500, &[EOT.to_string()]).unwrap();
    assert_eq!(bpe.vocab_size(), 500);
    // Merges, in order.
    let reference: Vec<(Vec<u8>, Vec<u8>)> =
        std::fs::read_to_string(fixtures().join("train-bpe-reference-merges.txt"))
            .unwrap()
            .lines()
            .filter_map(|l| {
                let parts: Vec<&str> = l.split(' ').collect();
                (parts.len() == 2).then(|| {
                    (
                        string_to_bytes(parts[0]).unwrap(),
                        string_to_bytes(parts[1]).unwrap(),
                    )
                })
            })
            .collect();
    let ours: Vec<(Vec<u8>, Vec<u8>)> = bpe
        .merges()
        .iter()
        .map(|&(a, b)| {
            (
                bpe.token_bytes(a).unwrap().to_vec(),
                bpe.token_bytes(b).unwrap().to_vec(),
            )
        })
        .collect();
    assert_eq!(reference.len(), 243);
    for (i, (r, o)) in reference.iter().zip(&ours).enumerate() {
        assert_eq!(r, o, "merge {i} differs");
    }
    assert_eq!(ours.len(), reference.len());
    // The vocabulary, as a set of byte strings.
    let vocab: serde_json::Map<String, serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("train-bpe-reference-vocab.json")).unwrap(),
    )
    .unwrap();
    let reference: HashSet<Vec<u8>> = vocab
        .keys()
        .map(|k| {
            if k == EOT {
                k.as_bytes().to_vec()
            } else {
                string_to_bytes(k).unwrap()
            }
        })
        .collect();
    let ours: HashSet<Vec<u8>> = (0..500)
        .map(|id| bpe.token_bytes(id).unwrap().to_vec())
        .collect();
    assert_eq!(ours, reference);
}

/// The texts every encoder check runs on.
fn check_texts() -> Vec<String> {
    let mut texts: Vec<String> = [
        "address.txt",
        "german.txt",
        "tinystories_sample.txt",
        "corpus.en",
    ]
    .iter()
    .map(|f| std::fs::read_to_string(fixtures().join(f)).unwrap())
    .collect();
    texts.extend(
        [
            "",
            "s",
            "🙃",
            "Hello, how are you?",
            "Héllò hôw are ü? 🙃",
            "Hello, how <|endoftext|><|endoftext|> are you?<|endoftext|>",
            "  leading spaces and trailing   ",
            "tabs\tand\r\nnewlines\n\n\nend",
            "numbers 12345 and 3.14, symbols @#$%^&*() ...",
            "it's I'm we're they've she'll he'd 'quoted'",
        ]
        .map(String::from),
    );
    texts
}

#[test]
fn gpt2_encoding_matches_the_tokenizers_crate_exactly() {
    let reference = tokenizers::Tokenizer::from_file(gpt2_tokenizer()).unwrap();
    let from_files = Bpe::from_vocab_merges(
        &gpt2_dir().join("vocab.json"),
        &gpt2_dir().join("merges.txt"),
        &[EOT.to_string()],
    )
    .unwrap();
    let from_json = Tokenizer::from_file(&gpt2_tokenizer()).unwrap();
    assert!(
        from_json.bpe().is_some(),
        "GPT-2's tokenizer.json is read by our BPE"
    );
    assert_eq!(from_json.vocab_size(), 50257);
    assert_eq!(from_json.eos_id(), 50256);
    let mut texts = check_texts();
    texts.extend(valid_stories());
    let mut tokens = 0;
    for text in &texts {
        let expected = reference
            .encode_fast(text.as_str(), false)
            .unwrap()
            .get_ids()
            .to_vec();
        assert_eq!(
            from_files.encode(text),
            expected,
            "vocab.json + merges.txt on {:?}",
            &text[..text.len().min(60)]
        );
        assert_eq!(
            from_json.encode(text).unwrap(),
            expected,
            "tokenizer.json on {:?}",
            &text[..text.len().min(60)]
        );
        assert_eq!(from_json.decode(&expected).unwrap(), *text);
        tokens += expected.len();
    }
    assert!(tokens > 50_000, "the check covered {tokens} tokens");
    // Known ids: GPT-2 encodes "Hello, how are you?" as these pieces, and EOT as 50256.
    let ids = from_json
        .encode("Hello, how are you?<|endoftext|>")
        .unwrap();
    let pieces: Vec<String> = ids
        .iter()
        .map(|&id| from_json.decode(&[id]).unwrap())
        .collect();
    assert_eq!(pieces, ["Hello", ",", " how", " are", " you", "?", EOT]);
    assert_eq!(*ids.last().unwrap(), 50256);
}

#[test]
fn overlapping_special_tokens_prefer_the_longest() {
    let double = format!("{EOT}{EOT}");
    let bpe = Bpe::from_vocab_merges(
        &gpt2_dir().join("vocab.json"),
        &gpt2_dir().join("merges.txt"),
        &[EOT.to_string(), double.clone()],
    )
    .unwrap();
    let ids = bpe.encode(&format!("a{double}b{EOT}"));
    let double_id = bpe.special_id(&double).unwrap();
    assert_eq!(
        double_id, 50257,
        "a new special token takes the next free id"
    );
    assert_eq!(ids, vec![64, double_id, 65, 50256]);
    assert_eq!(bpe.decode(&ids).unwrap(), format!("a{double}b{EOT}"));
}

#[test]
fn a_saved_tokenizer_json_is_read_identically_by_the_tokenizers_crate() {
    let stories = valid_stories();
    let texts: Vec<&str> = stories.iter().map(String::as_str).collect();
    let bpe = Bpe::train(&texts, 600, &[EOT.to_string()]).unwrap();
    let ours = Tokenizer::from_bpe(bpe, "test").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    ours.save(&path).unwrap();
    let theirs = tokenizers::Tokenizer::from_file(&path).unwrap();
    let reloaded = Tokenizer::from_file(&path).unwrap();
    assert_eq!(reloaded.fingerprint(), ours.fingerprint());
    for text in stories.iter().chain(&check_texts()) {
        let ids = ours.encode(text).unwrap();
        assert_eq!(
            theirs.encode_fast(text.as_str(), false).unwrap().get_ids(),
            ids.as_slice()
        );
        assert_eq!(reloaded.encode(text).unwrap(), ids);
        assert_eq!(theirs.decode(&ids, false).unwrap(), *text);
    }
}

#[test]
fn bad_inputs_are_clear_errors() {
    let err = Bpe::train(&["some text"], 256, &[EOT.to_string()])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--vocab-size 256") && err.contains("256 single bytes plus 1 special"),
        "{err}"
    );
    let err = Bpe::train(&["", EOT], 300, &[EOT.to_string()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("empty"), "{err}");
    // Another model type: our loader says so; the project's Tokenizer reports a broken file clearly.
    let wordpiece = serde_json::json!({"model": {"type": "WordPiece", "vocab": {"a": 0}}, "pre_tokenizer": null});
    assert!(
        matches!(Bpe::from_tokenizer_json(&wordpiece), Err(LoadError::Unsupported(m)) if m.contains("WordPiece"))
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("odd.json");
    std::fs::write(
        &path,
        r#"{"model": {"type": "Sentencepiece-ish", "vocab": {}}}"#,
    )
    .unwrap();
    let err = Tokenizer::from_file(&path).err().unwrap().to_string();
    assert!(
        err.contains("odd.json") && err.contains("tokenizer.json"),
        "{err}"
    );
    // A byte-level BPE whose merge makes a token missing from the vocabulary.
    let broken = serde_json::json!({
        "model": {"type": "BPE", "vocab": {}, "merges": ["a b"]},
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true}
    });
    assert!(matches!(
        Bpe::from_tokenizer_json(&broken),
        Err(LoadError::Invalid(_))
    ));
}

fn small_trained() -> &'static Bpe {
    static BPE: std::sync::OnceLock<Bpe> = std::sync::OnceLock::new();
    BPE.get_or_init(|| {
        let sample = std::fs::read_to_string(fixtures().join("tinystories_sample.txt")).unwrap();
        Bpe::train(&[&sample], 400, &[EOT.to_string()]).unwrap()
    })
}

fn gpt2() -> &'static Bpe {
    static BPE: std::sync::OnceLock<Bpe> = std::sync::OnceLock::new();
    BPE.get_or_init(|| {
        Bpe::from_vocab_merges(
            &gpt2_dir().join("vocab.json"),
            &gpt2_dir().join("merges.txt"),
            &[EOT.to_string()],
        )
        .unwrap()
    })
}

/// Text made of the pieces tokenizers trip on: spaces, control characters, specials, any Unicode.
fn tricky_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        any::<String>(),
        " {1,12}",
        "[\t\n\r\u{0}-\u{1f}\u{7f}\u{85}\u{a0}\u{2028}]{1,6}",
        Just(EOT.to_string()),
        Just(format!("{EOT}{EOT}")),
        "[a-zA-Z']{1,8}",
        "\\PC{1,4}",
    ];
    prop::collection::vec(piece, 0..8).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn decode_encode_is_exact_for_any_text(text in tricky_text()) {
        for bpe in [small_trained(), gpt2()] {
            let ids = bpe.encode(&text);
            prop_assert_eq!(bpe.decode(&ids).unwrap(), text.clone());
        }
    }

    #[test]
    fn gpt2_ids_equal_the_tokenizers_crate_on_any_text(text in tricky_text()) {
        static REFERENCE: std::sync::OnceLock<tokenizers::Tokenizer> = std::sync::OnceLock::new();
        let reference = REFERENCE.get_or_init(|| tokenizers::Tokenizer::from_file(gpt2_tokenizer()).unwrap());
        let expected = reference.encode_fast(text.as_str(), false).unwrap().get_ids().to_vec();
        prop_assert_eq!(gpt2().encode(&text), expected);
    }
}
