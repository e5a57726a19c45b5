//! Writes that never leave a half-written file behind: write a temporary file beside the
//! target, then rename it over the target (a rename within one folder is atomic on POSIX).

use std::path::Path;

use crate::data::npy::tmp_path;
use crate::{Error, Result};

/// Calls `write` with a temporary path beside `path`, then renames the result to `path`. If
/// `write` fails, the temporary file is removed and whatever was at `path` stays untouched.
pub fn write_with(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = tmp_path(path);
    match write(&tmp) {
        Ok(()) => std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e)),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Writes `bytes` to `path` atomically.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    write_with(path, |tmp| {
        std::fs::write(tmp, bytes).map_err(|e| Error::io(tmp, e))
    })
}
