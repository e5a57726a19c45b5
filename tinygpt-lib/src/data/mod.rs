//! The data path, in the order the data flows:
//! [`source`] (hub or local files → stories) → [`shards`] (stories → token shards on disk, via
//! [`npy`]) → [`loader`] (shards → training and validation batches).

pub mod loader;
pub mod npy;
pub mod shards;
pub mod source;

pub use loader::{document_ids, Batch, Cursor, DataLoader, LoaderConfig, ValLoader, IGNORE_INDEX};
pub use shards::{prepare, Manifest, PrepareOptions, PrepareReport};
pub use source::{HubFiles, Source, Split, Stories};
