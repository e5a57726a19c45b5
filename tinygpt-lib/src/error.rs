//! One error type for the library. Every variant names the file or flag at fault and says how to
//! fix it, because the person reading it is usually a learner in the middle of a notebook.

use std::path::{Path, PathBuf};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("{} is not a valid uint16 .npy shard: {why}. Re-create it with `tinygpt prepare`.", path.display())]
    BadNpy { path: PathBuf, why: String },

    #[error("{}: {why}", path.display())]
    BadData { path: PathBuf, why: String },

    #[error("{}: {why}", path.display())]
    Tokenizer { path: PathBuf, why: String },

    #[error("the Hugging Face hub could not provide `{file}` of `{repo}`: {why}. Without network access, \
             pass local files instead (--source DIR or TINYGPT_DATA=DIR; a tokenizer.json path for --tokenizer).")]
    Hub {
        repo: String,
        file: String,
        why: String,
    },

    #[error("{0}")]
    Invalid(String),

    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

impl Error {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_owned(),
            source,
        }
    }

    pub fn data(path: &Path, why: impl Into<String>) -> Self {
        Error::BadData {
            path: path.to_owned(),
            why: why.into(),
        }
    }
}
