//! The data pipeline against independent references: the `tokenizers` crate's own encoding of the
//! shared TinyStories sample, story counts from the sample's SOURCES.md, hand-built token rows.

use std::collections::BTreeMap;
use std::path::Path;

use tinygpt::data::loader::shard_order;
use tinygpt::data::npy;
use tinygpt::data::shards::{read_shard, shard_name, ShardInfo, SplitInfo, TokenizerInfo};
use tinygpt::data::source::read_stories;
use tinygpt::data::{
    document_ids, prepare, DataLoader, LoaderConfig, Manifest, PrepareOptions, Source, Split,
    ValLoader, IGNORE_INDEX,
};
use tinygpt::Tokenizer;
use tinygpt_tests::*;

const EOS: u32 = 50256;

fn quiet(shard_tokens: usize) -> PrepareOptions {
    PrepareOptions {
        shard_tokens,
        force: false,
        progress: false,
    }
}

// ---------------------------------------------------------------------------------------------
// Document and position ids

#[test]
fn document_ids_on_hand_built_rows() {
    const E: u32 = 9;
    // EOS at the row start: it opens document 0.
    assert_eq!(
        document_ids(&[E, 1, 2, E, 3], E),
        (vec![0, 0, 0, 1, 1], vec![0, 1, 2, 0, 1])
    );
    // EOS at the row end: the row starts inside a story (document 0), the EOS opens document 1.
    assert_eq!(
        document_ids(&[4, 5, 6, E], E),
        (vec![0, 0, 0, 1], vec![0, 1, 2, 0])
    );
    // Two EOS in a row: an empty story is a document of its own.
    assert_eq!(
        document_ids(&[1, E, E, 2, 3], E),
        (vec![0, 1, 2, 2, 2], vec![0, 0, 0, 1, 2])
    );
    // A row inside one long story: one document, positions 0..T.
    assert_eq!(
        document_ids(&[7, 7, 7, 7], E),
        (vec![0; 4], vec![0, 1, 2, 3])
    );
    // The id that ends a story is the manifest's, not a constant: id 0 ("!" in GPT-2) is text.
    assert_eq!(
        document_ids(&[0, 1, 0, 1], 1),
        (vec![0, 1, 1, 2], vec![0, 0, 1, 0])
    );
}

/// Writes `shards` (token lists) of the train and val splits with a manifest, as `prepare` would.
fn write_shards(dir: &Path, train: &[Vec<u16>], val: &[Vec<u16>], eos: u32) {
    let mut splits = BTreeMap::new();
    for (split, shards) in [(Split::Train, train), (Split::Val, val)] {
        let mut info = SplitInfo::default();
        for (i, tokens) in shards.iter().enumerate() {
            let file = shard_name(split, i);
            npy::write_u16(&dir.join(&file), tokens).unwrap();
            let stories = tokens.iter().filter(|&&t| t as u32 == eos).count() as u64;
            info.shards.push(ShardInfo {
                file,
                tokens: tokens.len() as u64,
                stories,
            });
            info.tokens += tokens.len() as u64;
            info.stories += stories;
        }
        splits.insert(split, info);
    }
    let tokenizer = TokenizerInfo {
        name: "hand-built".into(),
        fingerprint: "none".into(),
        vocab_size: 65536,
        eos_id: eos,
    };
    let manifest = Manifest {
        format: 1,
        tokenizer,
        source: "test".into(),
        shard_tokens: 0,
        inputs: String::new(),
        splits,
    };
    manifest.save(dir).unwrap();
}

#[test]
fn loader_batches_carry_targets_documents_and_positions() {
    let dir = tempfile::tempdir().unwrap();
    // EOS = 100; stories: [1 2 3], [4 5], [6 7 8 9 10 11], …
    let tokens: Vec<u16> = vec![
        100, 1, 2, 3, 100, 4, 5, 100, 6, 7, 8, 9, 10, 11, 100, 12, 13,
    ];
    write_shards(
        dir.path(),
        std::slice::from_ref(&tokens),
        std::slice::from_ref(&tokens),
        100,
    );
    let config = LoaderConfig {
        batch_size: 2,
        block_size: 4,
        rank: 0,
        world_size: 1,
        seed: 0,
    };
    let mut loader = DataLoader::open(dir.path(), Split::Train, config, None).unwrap();
    let batch = loader.next_batch();
    assert_eq!((batch.b, batch.t), (2, 4));
    assert_eq!(batch.x, [100, 1, 2, 3, 100, 4, 5, 100]);
    assert_eq!(batch.y, [1, 2, 3, 100, 4, 5, 100, 6]);
    assert_eq!(batch.doc, [0, 0, 0, 0, 0, 0, 0, 1]);
    assert_eq!(batch.pos, [0, 1, 2, 3, 0, 1, 2, 0]);
    let batch = loader.next_batch();
    assert_eq!(batch.x, [6, 7, 8, 9, 10, 11, 100, 12]);
    assert_eq!(batch.doc, [0, 0, 0, 0, 0, 0, 1, 1]);
    assert_eq!(batch.pos, [0, 1, 2, 3, 0, 1, 0, 1]);
    // 17 tokens hold two batches of 8 (+1 target); the third read starts the next epoch.
    assert_eq!(loader.batches_per_epoch(), 2);
    assert_eq!(loader.next_batch().x[..4], [100, 1, 2, 3]);
    assert_eq!(loader.cursor().epoch, 1);

    let tensors = batch
        .to_tensors(&tinygpt::candle_core::Device::Cpu)
        .unwrap();
    assert_eq!(tensors.x.dims(), [2, 4]);
    assert_eq!(
        tensors.pos.to_vec2::<u32>().unwrap(),
        [[0, 1, 2, 3], [0, 1, 0, 1]]
    );
}

// ---------------------------------------------------------------------------------------------
// Data-parallel striding and resumable cursors

/// Three shards of distinct token values, so every token identifies where it came from.
fn numbered_shards(dir: &Path) -> Vec<Vec<u16>> {
    let shards: Vec<Vec<u16>> = vec![
        (0..1000).collect(),
        (1000..1700).collect(),
        (2000..3300).collect(),
    ];
    write_shards(dir, &shards, &shards[..1], 65535);
    shards
}

fn loader(dir: &Path, rank: usize, world_size: usize, seed: u64) -> DataLoader {
    let config = LoaderConfig {
        batch_size: 4,
        block_size: 8,
        rank,
        world_size,
        seed,
    };
    DataLoader::open(dir, Split::Train, config, None).unwrap()
}

#[test]
fn ranks_read_disjoint_slices_that_cover_the_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let shards = numbered_shards(dir.path());
    for world in [1usize, 2, 3] {
        let mut seen: Vec<u32> = Vec::new();
        let mut per_rank = Vec::new();
        for rank in 0..world {
            let mut l = loader(dir.path(), rank, world, 7);
            let n = l.batches_per_epoch();
            per_rank.push(n);
            for _ in 0..n {
                seen.extend(l.next_batch().x);
            }
            assert_eq!(
                l.cursor().epoch,
                0,
                "rank {rank} must not have wrapped into epoch 1"
            );
        }
        // Every worker takes the same number of steps (data parallel needs it).
        assert!(
            per_rank.windows(2).all(|w| w[0] == w[1]),
            "world {world}: {per_rank:?}"
        );
        // No token is read twice …
        let mut sorted = seen.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), seen.len(), "world {world}: ranks overlap");
        // … and together the ranks read every full round of 32-token chunks of every shard.
        let expected: usize = shards
            .iter()
            .map(|s| ((s.len() - 1) / 32 / world) * world * 32)
            .sum();
        assert_eq!(seen.len(), expected, "world {world}");
    }
}

#[test]
fn shard_order_depends_on_seed_and_epoch_only() {
    assert_eq!(shard_order(10, 42, 3), shard_order(10, 42, 3));
    let mut sorted = shard_order(10, 42, 3);
    sorted.sort_unstable();
    assert_eq!(sorted, (0..10).collect::<Vec<_>>());
    assert_ne!(
        shard_order(10, 42, 0),
        shard_order(10, 42, 1),
        "each epoch gets a new order"
    );
    assert_ne!(
        shard_order(10, 1, 0),
        shard_order(10, 2, 0),
        "the seed matters"
    );

    // Every rank starts each epoch with the same shard (same seed).
    let dir = tempfile::tempdir().unwrap();
    let shards = numbered_shards(dir.path());
    let shard_of = |token: u32| {
        shards
            .iter()
            .position(|s| s.contains(&(token as u16)))
            .unwrap()
    };
    let first: Vec<usize> = (0..3)
        .map(|r| shard_of(loader(dir.path(), r, 3, 5).next_batch().x[0]))
        .collect();
    assert!(first.iter().all(|&s| s == first[0]), "{first:?}");
}

#[test]
fn cursor_restores_exactly() {
    let dir = tempfile::tempdir().unwrap();
    numbered_shards(dir.path());
    for rank in 0..2 {
        let mut straight = loader(dir.path(), rank, 2, 11);
        let mut resumed = loader(dir.path(), rank, 2, 11);
        // Stop after 37 batches (past an epoch boundary), serialise the cursor as a checkpoint would.
        for _ in 0..37 {
            straight.next_batch();
            resumed.next_batch();
        }
        let saved = serde_json::to_string(&resumed.cursor()).unwrap();
        let mut fresh = loader(dir.path(), rank, 2, 11);
        fresh
            .set_cursor(serde_json::from_str(&saved).unwrap())
            .unwrap();
        for _ in 0..40 {
            assert_eq!(straight.next_batch(), fresh.next_batch());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// prepare on the shared TinyStories sample

#[test]
fn known_gpt2_ids() {
    let tokenizer = Tokenizer::from_file(&gpt2_tokenizer()).unwrap();
    assert_eq!(
        tokenizer
            .encode("Hello, how are you?<|endoftext|> Once upon a time")
            .unwrap(),
        [15496, 11, 703, 389, 345, 30, 50256, 4874, 2402, 257, 640]
    );
    assert_eq!(
        tokenizer.encode("!").unwrap(),
        [0],
        "id 0 is '!', not a story boundary"
    );
    assert_eq!(tokenizer.encode(" Lily").unwrap(), [20037]);
    assert_eq!(tokenizer.eos_id(), EOS);
    assert_eq!(tokenizer.vocab_size(), 50257);
}

#[test]
fn prepare_tinystories_matches_a_direct_encoding() {
    let out = tempfile::tempdir().unwrap();
    let tokenizer = Tokenizer::from_file(&gpt2_tokenizer()).unwrap();
    let source = Source::Dir(tinystories_dir());
    // Small shards, so that stories straddle shard boundaries.
    let report = prepare(&source, &tokenizer, out.path(), &quiet(400_000)).unwrap();
    let m = &report.manifest;
    assert!(!report.reused);
    assert_eq!(
        m.splits[&Split::Train].stories,
        8_650,
        "train.txt holds 8,650 stories (SOURCES.md)"
    );
    assert_eq!(
        m.splits[&Split::Val].stories,
        194,
        "valid.txt holds 194 stories (SOURCES.md)"
    );
    assert_eq!(m.tokenizer.eos_id, EOS);
    assert!(m.splits[&Split::Train].shards.len() > 1);

    // Independent reference: the `tokenizers` crate itself, story by story.
    let reference = tokenizers::Tokenizer::from_file(gpt2_tokenizer()).unwrap();
    for (split, file) in [(Split::Val, "valid.txt"), (Split::Train, "train.txt")] {
        let mut expected: Vec<u16> = Vec::new();
        let stories = read_stories(&tinystories_dir().join(file)).unwrap();
        for story in &stories {
            expected.push(EOS as u16);
            let ids = reference.encode(story.as_str(), false).unwrap();
            expected.extend(ids.get_ids().iter().map(|&id| id as u16));
        }
        let written: Vec<u16> = m
            .shard_paths(out.path(), split)
            .iter()
            .flat_map(|p| read_shard(p).unwrap())
            .collect();
        assert_eq!(written.len(), expected.len(), "{file}");
        assert!(
            written == expected,
            "{file}: shards differ from a direct encoding"
        );
        let eos_count = written.iter().filter(|&&t| t == EOS as u16).count();
        assert_eq!(eos_count, stories.len(), "{file}: one EOS per story");
        let bytes: usize = stories.iter().map(String::len).sum();
        assert_eq!(m.splits[&split].text_bytes, bytes as u64);
        assert_eq!(
            m.splits[&split]
                .shards
                .iter()
                .map(|s| s.stories)
                .sum::<u64>(),
            stories.len() as u64
        );
    }
    // The val shard: 194 EOS + the tokens of the 194 stories, nothing else.
    let val = &m.splits[&Split::Val];
    assert_eq!(val.shards.len(), 1);
    assert_eq!(val.shards[0].stories, 194);

    // Same inputs: reused, untouched. --force: redone, identical.
    let again = prepare(&source, &tokenizer, out.path(), &quiet(400_000)).unwrap();
    assert!(again.reused);
    assert_eq!(&again.manifest, m);
    let forced = prepare(
        &source,
        &tokenizer,
        out.path(),
        &PrepareOptions {
            force: true,
            ..quiet(400_000)
        },
    )
    .unwrap();
    assert!(!forced.reused);
    assert_eq!(forced.manifest.splits, m.splits);

    // The validation reader covers every token of the split once, in order.
    let val_tokens = read_shard(&out.path().join("tinystories_val_000000.npy")).unwrap();
    let mut targets = Vec::new();
    for batch in ValLoader::open(out.path(), 3, 128, 0, 1, Some(&tokenizer)).unwrap() {
        targets.extend(batch.y.iter().copied().filter(|&y| y != IGNORE_INDEX));
        assert!(batch.b <= 3);
    }
    let expected: Vec<u32> = val_tokens[1..].iter().map(|&t| t as u32).collect();
    assert_eq!(targets, expected);
    // Split across two workers, the validation batches are disjoint and complete.
    let count = |rank| {
        ValLoader::open(out.path(), 3, 128, rank, 2, None)
            .unwrap()
            .map(|b| b.n_targets())
            .sum::<usize>()
    };
    assert_eq!(count(0) + count(1), expected.len());
}

#[test]
fn stories_frame_has_both_splits() {
    let frame = Source::Dir(tinystories_dir()).frame().unwrap();
    assert_eq!(frame.height(), 8_650 + 194);
    let names: Vec<&str> = frame
        .get_column_names()
        .iter()
        .map(|n| n.as_str())
        .collect();
    assert_eq!(names, ["text", "split", "characters", "words"]);
    // SOURCES.md: train.txt has 1,413,552 whitespace-separated words, valid.txt 27,961.
    let words = frame
        .column("words")
        .unwrap()
        .as_materialized_series()
        .sum::<u64>()
        .unwrap();
    assert_eq!(words, 1_413_552 + 27_961);
}

#[test]
fn parquet_and_text_sources_give_the_same_stories() {
    let dir = tempfile::tempdir().unwrap();
    let stories = read_stories(&tinystories_dir().join("valid.txt")).unwrap();
    write_parquet(
        &dir.path().join("data/validation-00000-of-00001.parquet"),
        &stories,
    );
    write_parquet(
        &dir.path().join("data/train-00000-of-00001.parquet"),
        &stories[..10],
    );
    let source = Source::Dir(dir.path().to_owned());
    assert_eq!(source.stories(Split::Val).unwrap(), stories);
    assert_eq!(source.stories(Split::Train).unwrap(), &stories[..10]);
}
