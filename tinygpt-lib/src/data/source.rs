//! Where the stories come from: the Hugging Face hub (`roneneldan/TinyStories`) or a local folder.
//!
//! Both paths end the same way, as a list of files on disk that hold one split each:
//! - **parquet** files with a `text` column (what the `datasets` library downloads by default),
//! - **text** files in which every story is followed by a line `<|endoftext|>`.
//!
//! A story is the text between two separator lines with its surrounding whitespace removed.

use std::path::{Path, PathBuf};

use polars::prelude::*;

use crate::error::{Error, Result};

/// The separator line between stories in the TinyStories text files.
pub const SEPARATOR: &str = "<|endoftext|>";

/// The dataset on the hub, and the commit we pin so that every run sees the same bytes.
pub const HUB_DATASET: &str = "roneneldan/TinyStories";
pub const HUB_REVISION: &str = "f54c09fd23315a6f9c86f9dc80f725de7d8f9c64";

/// The environment variable that points at a local copy of the data (offline use).
pub const DATA_ENV: &str = "TINYGPT_DATA";

/// Training or validation stories.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
}

impl Split {
    pub const ALL: [Split; 2] = [Split::Train, Split::Val];

    /// The short name used in shard file names (`tinystories_val_000000.npy`).
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
        }
    }

    /// Does a data file's name say it belongs to this split? `train-00000-of-00004.parquet`,
    /// `TinyStories-train.txt` → train; `validation-….parquet`, `TinyStories-valid.txt`, `val.txt` → val.
    fn matches(self, file_name: &str) -> bool {
        let name = file_name.to_lowercase();
        match self {
            Split::Train => name.contains("train"),
            Split::Val => {
                name.contains("valid")
                    || name.starts_with("val")
                    || name.contains("_val")
                    || name.contains("-val")
            }
        }
    }
}

/// Which files of the hub dataset to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HubFiles {
    /// The parquet files the `datasets` library loads (2.1M train, 22k validation stories).
    Parquet,
    /// `TinyStories-{train,valid}.txt`: the original V1 text files.
    TextV1,
    /// `TinyStoriesV2-GPT4-{train,valid}.txt`: stories regenerated with GPT-4 only.
    TextV2,
}

impl HubFiles {
    fn files(self, split: Split) -> &'static [&'static str] {
        match (self, split) {
            (HubFiles::Parquet, Split::Train) => &[
                "data/train-00000-of-00004-2d5a1467fff1081b.parquet",
                "data/train-00001-of-00004-5852b56a2bd28fd9.parquet",
                "data/train-00002-of-00004-a26307300439e943.parquet",
                "data/train-00003-of-00004-d243063613e5a057.parquet",
            ],
            (HubFiles::Parquet, Split::Val) => {
                &["data/validation-00000-of-00001-869c898b519ad725.parquet"]
            }
            (HubFiles::TextV1, Split::Train) => &["TinyStories-train.txt"],
            (HubFiles::TextV1, Split::Val) => &["TinyStories-valid.txt"],
            (HubFiles::TextV2, Split::Train) => &["TinyStoriesV2-GPT4-train.txt"],
            (HubFiles::TextV2, Split::Val) => &["TinyStoriesV2-GPT4-valid.txt"],
        }
    }
}

/// Where to read TinyStories from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Hub(HubFiles),
    Dir(PathBuf),
}

impl Source {
    /// Parses the `--source` flag: `hub` (parquet), `hub:text`, `hub:v2`, or a directory.
    pub fn parse(spec: &str) -> Result<Self> {
        Ok(match spec {
            "hub" | "hub:parquet" => Source::Hub(HubFiles::Parquet),
            "hub:text" | "hub:v1" => Source::Hub(HubFiles::TextV1),
            "hub:v2" => Source::Hub(HubFiles::TextV2),
            s if s.starts_with("hub:") => {
                return Err(Error::Invalid(format!(
                    "--source {s}: unknown hub variant; use hub, hub:text or hub:v2"
                )))
            }
            dir => Source::Dir(PathBuf::from(dir)),
        })
    }

    /// The local folder named by `TINYGPT_DATA` if it is set, else the hub's parquet files.
    pub fn from_env() -> Self {
        match std::env::var_os(DATA_ENV) {
            Some(dir) if !dir.is_empty() => Source::Dir(PathBuf::from(dir)),
            _ => Source::Hub(HubFiles::Parquet),
        }
    }

    /// The data files of one split, downloading them first when the source is the hub (hf-hub
    /// keeps them in its cache, `$HF_HOME/hub`, and a second call finds them there).
    pub fn files(&self, split: Split) -> Result<Vec<PathBuf>> {
        match self {
            Source::Hub(which) => which
                .files(split)
                .iter()
                .map(|f| hub_file(HUB_DATASET, "dataset", f))
                .collect(),
            Source::Dir(dir) => local_files(dir, split),
        }
    }

    /// All stories of one split, in file order.
    pub fn stories(&self, split: Split) -> Result<Vec<String>> {
        let mut stories = Vec::new();
        for file in self.files(split)? {
            stories.extend(read_stories(&file)?);
        }
        Ok(stories)
    }

    /// The stories of both splits, as plain Rust data.
    pub fn load(&self) -> Result<Stories> {
        Ok(Stories {
            train: self.stories(Split::Train)?,
            val: self.stories(Split::Val)?,
        })
    }

    /// Both splits as one polars DataFrame (see [`Stories::frame`]).
    pub fn frame(&self) -> Result<DataFrame> {
        self.load()?.frame()
    }

    /// A short human description, recorded in shard manifests.
    pub fn describe(&self) -> String {
        match self {
            Source::Hub(which) => format!("hub:{HUB_DATASET}@{HUB_REVISION} ({which:?})"),
            Source::Dir(dir) => dir.display().to_string(),
        }
    }
}

/// The stories of both splits.
///
/// Plain vectors rather than a DataFrame, because a notebook keeps them from cell to cell: evcxr
/// links a separate copy of polars into every cell, each with its own hashing seed, so a DataFrame
/// made in one cell cannot be queried by column name in the next. Cells call [`Stories::frame`]
/// and query the fresh DataFrame within the cell.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stories {
    pub train: Vec<String>,
    pub val: Vec<String>,
}

impl Stories {
    /// One row per story: `text`, `split` (`train`/`val`), `characters` (Unicode scalar values)
    /// and `words` (whitespace-separated pieces).
    pub fn frame(&self) -> Result<DataFrame> {
        let splits = [(Split::Train, &self.train), (Split::Val, &self.val)];
        let all = || splits.iter().flat_map(|(_, stories)| stories.iter());
        let split: Vec<&str> = splits
            .iter()
            .flat_map(|(s, stories)| std::iter::repeat_n(s.name(), stories.len()))
            .collect();
        DataFrame::new_infer_height(vec![
            Column::new("text".into(), all().map(String::as_str).collect::<Vec<_>>()),
            Column::new("split".into(), split),
            Column::new(
                "characters".into(),
                all().map(|s| s.chars().count() as u32).collect::<Vec<_>>(),
            ),
            Column::new(
                "words".into(),
                all()
                    .map(|s| s.split_whitespace().count() as u32)
                    .collect::<Vec<_>>(),
            ),
        ])
        .map_err(|e| Error::Invalid(format!("building the stories DataFrame: {e}")))
    }
}

/// The files of `split` in a local folder (or its `data/` subfolder), sorted by name.
fn local_files(dir: &Path, split: Split) -> Result<Vec<PathBuf>> {
    let fix = "pass --source DIR (or set TINYGPT_DATA) to a folder holding TinyStories as \
               train*/valid* text files with `<|endoftext|>` separator lines, or as \
               train-*/validation-* parquet files with a `text` column";
    if !dir.is_dir() {
        return Err(Error::data(
            dir,
            format!("the data folder does not exist; {fix}"),
        ));
    }
    let mut files = Vec::new();
    for folder in [dir.to_owned(), dir.join("data")] {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries {
            let path = entry.map_err(|e| Error::io(&folder, e))?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            let is_data = name.ends_with(".txt") || name.ends_with(".parquet");
            if is_data && path.is_file() && split.matches(name) {
                files.push(path);
            }
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(Error::data(
            dir,
            format!("no {} files found; {fix}", split.name()),
        ));
    }
    Ok(files)
}

/// The stories of one file, by its extension.
pub fn read_stories(path: &Path) -> Result<Vec<String>> {
    let stories = if path.extension().is_some_and(|e| e == "parquet") {
        read_parquet_stories(path)?
    } else {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let text = std::str::from_utf8(&bytes).map_err(|e| {
            Error::data(
                path,
                format!(
                    "is not UTF-8 text (invalid byte at offset {})",
                    e.valid_up_to()
                ),
            )
        })?;
        split_stories(text).map_err(|why| Error::data(path, why))?
    };
    if stories.is_empty() {
        return Err(Error::data(path, "holds no stories (the file is empty)"));
    }
    Ok(stories)
}

/// Splits a TinyStories text file into stories: separator lines are lines holding only
/// `<|endoftext|>`; each story is trimmed; empty pieces are dropped. The last story may lack its
/// separator (the original V1 files end that way).
pub fn split_stories(text: &str) -> std::result::Result<Vec<String>, String> {
    let mut stories = Vec::new();
    let mut current = String::new();
    let mut separators = 0;
    let mut push = |story: &mut String| {
        let trimmed = story.trim();
        if !trimmed.is_empty() {
            stories.push(trimmed.to_owned());
        }
        story.clear();
    };
    for line in text.split_inclusive('\n') {
        if line.trim() == SEPARATOR {
            separators += 1;
            push(&mut current);
        } else {
            current.push_str(line);
        }
    }
    push(&mut current);
    if separators == 0 && !stories.is_empty() {
        return Err(format!(
            "has no `{SEPARATOR}` separator lines, so its stories cannot be told apart: \
             put a line holding only `{SEPARATOR}` after every story"
        ));
    }
    Ok(stories)
}

/// The `text` column of a parquet file.
fn read_parquet_stories(path: &Path) -> Result<Vec<String>> {
    let corrupt = |e: PolarsError| {
        Error::data(
            path,
            format!("is not a readable parquet file ({e}); delete it and download it again"),
        )
    };
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let frame = ParquetReader::new(file)
        .with_columns(Some(vec!["text".into()]))
        .finish()
        .map_err(corrupt)?;
    let column = frame.column("text").map_err(|_| {
        Error::data(
            path,
            "has no `text` column; TinyStories parquet files keep each story in `text`",
        )
    })?;
    let text = column
        .str()
        .map_err(|_| Error::data(path, "its `text` column is not a string column"))?;
    Ok(text
        .iter()
        .flatten()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect())
}

/// Downloads one file of a hub repository (or finds it in the hf-hub cache) and returns its path.
/// `kind` is "dataset" or "model". Progress bars show the download.
pub(crate) fn hub_file(repo: &str, kind: &str, file: &str) -> Result<PathBuf> {
    use hf_hub::{api::sync::ApiBuilder, Repo, RepoType};
    let hub_err = |why: String| Error::Hub {
        repo: repo.to_owned(),
        file: file.to_owned(),
        why,
    };
    let api = ApiBuilder::from_env()
        .with_progress(true)
        .build()
        .map_err(|e| hub_err(e.to_string()))?;
    let repo_ref = match kind {
        "dataset" => {
            Repo::with_revision(repo.to_owned(), RepoType::Dataset, HUB_REVISION.to_owned())
        }
        _ => Repo::new(repo.to_owned(), RepoType::Model),
    };
    api.repo(repo_ref)
        .get(file)
        .map_err(|e| hub_err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_on_separator_lines_and_trims() {
        let text =
            "Once upon a time.\n\nThe end.\n<|endoftext|>\n  Second story.  \n<|endoftext|>\n";
        assert_eq!(
            split_stories(text).unwrap(),
            ["Once upon a time.\n\nThe end.", "Second story."]
        );
        // A last story without its separator still counts; empty pieces do not.
        let text = "<|endoftext|>\nA\n<|endoftext|>\n<|endoftext|>\nB";
        assert_eq!(split_stories(text).unwrap(), ["A", "B"]);
        // The separator inside a line is text, not a boundary.
        assert_eq!(
            split_stories("a <|endoftext|> b\n<|endoftext|>\n").unwrap(),
            ["a <|endoftext|> b"]
        );
    }

    #[test]
    fn text_without_separators_is_refused() {
        assert!(split_stories("just one long text\nwith lines\n")
            .unwrap_err()
            .contains("separator"));
        assert!(split_stories("").unwrap().is_empty());
    }

    #[test]
    fn split_names() {
        assert!(Split::Train.matches("train-00000-of-00004-2d5a1467fff1081b.parquet"));
        assert!(Split::Val.matches("validation-00000-of-00001-869c898b519ad725.parquet"));
        assert!(Split::Val.matches("TinyStories-valid.txt"));
        assert!(Split::Val.matches("valid.txt"));
        assert!(!Split::Val.matches("train.txt"));
        assert!(!Split::Train.matches("TinyStoriesV2-GPT4-valid.txt"));
    }
}
