//! Reading and writing 1-D `uint16` NumPy `.npy` files: the shard format of the original project,
//! so shards written here load with `np.load` and the original's shards load here.
//!
//! The format (NumPy's `format.py`, version 1.0) is:
//!
//! ```text
//! \x93NUMPY  1 0  <u16 LE header length>  {'descr': '<u2', 'fortran_order': False, 'shape': (N,), }  ␣␣…\n  <N little-endian u16>
//! ```
//!
//! The header is padded with spaces so that the data starts at a multiple of 64 bytes. Version 2.0
//! only widens the header length to a `u32`; we read both and write 1.0.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{Error, Result};

const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// Writes `tokens` to `path` as a `uint16` `.npy` file, atomically: the bytes go to a temporary
/// file beside it that is renamed into place only once complete, so a crash never leaves a
/// half-written shard under the real name.
pub fn write_u16(path: &Path, tokens: &[u16]) -> Result<()> {
    let tmp = tmp_path(path);
    let write = || -> std::io::Result<()> {
        let mut out = BufWriter::new(File::create(&tmp)?);
        out.write_all(&header(tokens.len()))?;
        out.write_all(bytemuck::cast_slice(&to_le(tokens)))?;
        out.into_inner()?.sync_all()
    };
    write().map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// The bytes before the data: magic, version, header length, and the padded header dict, laid
/// out exactly as NumPy 2.x's `np.save` does (so our shards are byte-identical to NumPy's).
fn header(len: usize) -> Vec<u8> {
    let mut dict = format!("{{'descr': '<u2', 'fortran_order': False, 'shape': ({len},), }}");
    // NumPy leaves room for the length to grow to 21 digits, so a header can be rewritten in place.
    let growth = 21usize.saturating_sub(len.to_string().len());
    dict.extend(std::iter::repeat_n(' ', growth));
    // Then spaces and a final '\n' so the data starts at a multiple of 64 bytes (NumPy's formula:
    // a header that is already aligned still gets 64 spaces).
    let padding = 64 - (MAGIC.len() + 2 + 2 + dict.len() + 1) % 64;
    let header_len = dict.len() + padding + 1;
    let mut bytes = Vec::with_capacity(10 + header_len);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&[1, 0]);
    bytes.extend_from_slice(&(header_len as u16).to_le_bytes());
    bytes.extend_from_slice(dict.as_bytes());
    bytes.extend(std::iter::repeat_n(b' ', padding));
    bytes.push(b'\n');
    bytes
}

/// `.npy` data is little-endian; on a big-endian machine the values are byte-swapped.
fn to_le(tokens: &[u16]) -> std::borrow::Cow<'_, [u16]> {
    if cfg!(target_endian = "little") {
        std::borrow::Cow::Borrowed(tokens)
    } else {
        std::borrow::Cow::Owned(tokens.iter().map(|t| t.to_le()).collect())
    }
}

/// `shard.npy` → `shard.npy.tmp`.
pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// A memory-mapped `uint16` `.npy` file: the OS pages tokens in on demand, so a 200 MB shard
/// costs no RAM until it is read, and every data-parallel worker shares the same pages.
pub struct NpyU16 {
    mmap: Mmap,
    data_offset: usize,
    len: usize,
}

impl NpyU16 {
    /// Opens and validates `path`: the magic string, a little-endian `uint16` dtype (`'<u2'`, or
    /// `'=u2'` on a little-endian machine), C order, a 1-D shape, and a file size that matches.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only; shards are written under a temporary name and renamed, so
        // a file is never modified in place while mapped.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let bad = |why: String| Error::BadNpy {
            path: path.to_owned(),
            why,
        };
        if mmap.len() < 10 || &mmap[..6] != MAGIC {
            return Err(bad(
                "it does not start with the NumPy magic string \\x93NUMPY".into(),
            ));
        }
        let (header_start, header_len) = match mmap[6] {
            1 => (10, u16::from_le_bytes([mmap[8], mmap[9]]) as usize),
            2 | 3 if mmap.len() >= 12 => (
                12,
                u32::from_le_bytes([mmap[8], mmap[9], mmap[10], mmap[11]]) as usize,
            ),
            v => return Err(bad(format!("unsupported .npy format version {v}"))),
        };
        let data_offset = header_start + header_len;
        let dict = mmap
            .get(header_start..data_offset)
            .and_then(|h| std::str::from_utf8(h).ok())
            .ok_or_else(|| bad("its header is truncated or not text".into()))?;
        let len = parse_header(dict).map_err(bad)?;
        let expected = data_offset + 2 * len;
        if mmap.len() != expected {
            return Err(bad(format!(
                "its header promises {len} tokens ({expected} bytes) but the file has {} bytes: \
                 it is truncated or was not fully written",
                mmap.len()
            )));
        }
        Ok(Self {
            mmap,
            data_offset,
            len,
        })
    }

    /// The tokens, borrowed straight from the mapped file (no copy).
    pub fn tokens(&self) -> &[u16] {
        // The data offset is a multiple of 16 bytes in every NumPy-written file and the map is
        // page-aligned, so the cast cannot fail on alignment (checked in `parse_header` too).
        bytemuck::cast_slice(&self.mmap[self.data_offset..self.data_offset + 2 * self.len])
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Extracts the length from a header dict such as
/// `{'descr': '<u2', 'fortran_order': False, 'shape': (1234,), }`, refusing anything that is not
/// a 1-D little-endian `uint16` array in C order.
fn parse_header(dict: &str) -> std::result::Result<usize, String> {
    let value = |key: &str| -> std::result::Result<&str, String> {
        let at = dict
            .find(&format!("'{key}':"))
            .ok_or(format!("its header has no '{key}'"))?;
        Ok(dict[at + key.len() + 3..].trim_start())
    };
    let descr = value("descr")?;
    if !(descr.starts_with("'<u2'")
        || (cfg!(target_endian = "little") && descr.starts_with("'=u2'")))
    {
        let shown: String = descr.chars().take_while(|c| *c != ',').collect();
        return Err(format!(
            "its dtype is {shown}, not uint16 ('<u2'): shards must be written as np.uint16"
        ));
    }
    if !value("fortran_order")?.starts_with("False") {
        return Err("it is stored in Fortran order; only C order is supported".into());
    }
    let shape = value("shape")?;
    let inner = shape
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or("its shape is not a tuple")?;
    let dims: Vec<&str> = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    match dims.as_slice() {
        [n] => n
            .parse()
            .map_err(|_| format!("its shape ({inner}) is not a number")),
        _ => Err(format!("its shape is ({inner}); a shard must be 1-D")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_64_byte_aligned_and_parses_back() {
        for n in [0usize, 1, 7, 100_000_000] {
            let h = header(n);
            assert_eq!(h.len() % 64, 0);
            let dict = std::str::from_utf8(&h[10..]).unwrap();
            assert_eq!(parse_header(dict).unwrap(), n);
        }
    }

    #[test]
    fn header_matches_numpy_byte_for_byte() {
        // What NumPy 2.4's np.save(f, np.arange(3, dtype=np.uint16)) writes before the data.
        let mut expected =
            b"\x93NUMPY\x01\x00v\x00{'descr': '<u2', 'fortran_order': False, 'shape': (3,), }"
                .to_vec();
        expected.resize(127, b' ');
        expected.push(b'\n');
        assert_eq!(header(3), expected);
    }

    #[test]
    fn rejects_other_dtypes_and_shapes() {
        let f = |d: &str| parse_header(d).unwrap_err();
        assert!(f("{'descr': '<u4', 'fortran_order': False, 'shape': (3,), }").contains("uint16"));
        assert!(f("{'descr': '<u2', 'fortran_order': True, 'shape': (3,), }").contains("Fortran"));
        assert!(f("{'descr': '<u2', 'fortran_order': False, 'shape': (3, 2), }").contains("1-D"));
    }
}
