//! Reading an uploaded pack tarball (`.tgz`) without trusting it.
//!
//! The archive is bounded before anything is decompressed past the limit:
//! total unpacked bytes, entry count and per-path shape are all checked while
//! streaming, so a gzip bomb or a path-traversal entry is refused, never
//! written anywhere. Nothing is extracted to disk; the host keeps only the
//! manifest and the entry artifact.

use std::collections::BTreeMap;
use std::io::Read;

use super::error::PackError;
use super::manifest::normalise_pack_path;

/// Bounds on what a pack archive may unpack to.
#[derive(Debug, Clone, Copy)]
pub struct ArchiveLimits {
    pub max_unpacked_bytes: u64,
    pub max_entries: usize,
}

impl Default for ArchiveLimits {
    fn default() -> Self {
        ArchiveLimits {
            max_unpacked_bytes: 64 * 1024 * 1024,
            max_entries: 1024,
        }
    }
}

/// The regular files of an archive, keyed by normalised relative path.
#[derive(Debug, Default)]
pub struct PackFiles {
    pub files: BTreeMap<String, Vec<u8>>,
}

impl PackFiles {
    /// Looks a file up, also under the single top-level folder npm-style
    /// tarballs wrap everything in (`package/pack.json`).
    pub fn get(&self, path: &str) -> Option<&[u8]> {
        if let Some(b) = self.files.get(path) {
            return Some(b);
        }
        let root = self.single_root()?;
        self.files
            .get(&format!("{root}/{path}"))
            .map(|v| v.as_slice())
    }

    fn single_root(&self) -> Option<&str> {
        let mut roots = self.files.keys().map(|k| k.split('/').next().unwrap_or(""));
        let first = roots.next()?;
        if self.files.contains_key(first) || roots.any(|r| r != first) {
            return None;
        }
        Some(first)
    }
}

/// Unpacks a gzipped tar into memory within `limits`.
pub fn read_tgz(bytes: &[u8], limits: ArchiveLimits) -> Result<PackFiles, PackError> {
    let gz = flate2::read::GzDecoder::new(bytes);
    // `take` bounds decompression itself (a gzip bomb stops here): file bytes
    // plus room for every allowed entry's header and padding.
    let budget = limits.max_unpacked_bytes + (limits.max_entries as u64 * 2 + 4) * 1024;
    let mut archive = tar::Archive::new(gz.take(budget));
    let mut out = PackFiles::default();
    let mut total: u64 = 0;
    let entries = archive
        .entries()
        .map_err(|e| PackError::InvalidArchive(format!("not a gzipped tar: {e}")))?;
    for (i, entry) in entries.enumerate() {
        if i >= limits.max_entries {
            return Err(PackError::TooLarge(format!(
                "more than {} archive entries",
                limits.max_entries
            )));
        }
        let mut entry =
            entry.map_err(|e| PackError::InvalidArchive(format!("corrupt archive entry: {e}")))?;
        let kind = entry.header().entry_type();
        let raw_path = entry
            .path()
            .map_err(|e| PackError::InvalidArchive(format!("bad entry path: {e}")))?
            .to_string_lossy()
            .into_owned();
        if kind.is_dir()
            || kind.is_pax_global_extensions()
            || kind.is_pax_local_extensions()
            || kind.is_gnu_longname()
        {
            continue;
        }
        if !kind.is_file() {
            // Links could point outside the pack; devices and fifos have no business here.
            return Err(PackError::InvalidArchive(format!(
                "entry `{raw_path}` is not a regular file"
            )));
        }
        let path = normalise_pack_path(&raw_path).ok_or_else(|| {
            PackError::InvalidArchive(format!("entry path `{raw_path}` escapes the pack"))
        })?;
        let size = entry.header().size().unwrap_or(u64::MAX);
        total = total.saturating_add(size);
        if total > limits.max_unpacked_bytes {
            return Err(PackError::TooLarge(format!(
                "archive unpacks to more than {} bytes",
                limits.max_unpacked_bytes
            )));
        }
        let mut buf = Vec::with_capacity(size.min(1 << 20) as usize);
        entry
            .read_to_end(&mut buf)
            .map_err(|e| PackError::InvalidArchive(format!("reading `{path}`: {e}")))?;
        if out.files.insert(path.clone(), buf).is_some() {
            return Err(PackError::InvalidArchive(format!(
                "duplicate entry `{path}`"
            )));
        }
    }
    if out.files.is_empty() {
        return Err(PackError::InvalidArchive("archive is empty".into()));
    }
    Ok(out)
}

/// Builds a `.tgz` from (path, bytes) pairs — used by `wopbox pack push`.
pub fn write_tgz<'a>(
    files: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> std::io::Result<Vec<u8>> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut builder = tar::Builder::new(gz);
    for (path, bytes) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        builder.append_data(&mut header, path, bytes)?;
    }
    builder.into_inner()?.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_npm_style_root() {
        let tgz = write_tgz([
            ("package/pack.json", &b"{}"[..]),
            ("package/m.wasm", &b"\0asm"[..]),
        ])
        .unwrap();
        let files = read_tgz(&tgz, ArchiveLimits::default()).unwrap();
        assert_eq!(files.get("pack.json"), Some(&b"{}"[..]));
        assert_eq!(files.get("m.wasm"), Some(&b"\0asm"[..]));
        assert_eq!(files.get("other"), None);
    }

    #[test]
    fn refuses_garbage_and_bombs() {
        assert!(matches!(
            read_tgz(b"not gzip at all", ArchiveLimits::default()),
            Err(PackError::InvalidArchive(_))
        ));
        let big = vec![0u8; 4096];
        let tgz = write_tgz([("pack.json", &big[..])]).unwrap();
        let small = ArchiveLimits {
            max_unpacked_bytes: 1000,
            max_entries: 10,
        };
        assert!(matches!(read_tgz(&tgz, small), Err(PackError::TooLarge(_))));
        let many: Vec<(String, Vec<u8>)> = (0..20).map(|i| (format!("f{i}"), vec![1])).collect();
        let tgz = write_tgz(many.iter().map(|(p, b)| (p.as_str(), b.as_slice()))).unwrap();
        assert!(matches!(read_tgz(&tgz, small), Err(PackError::TooLarge(_))));
    }

    #[test]
    fn refuses_traversal_and_links() {
        // tar::Builder refuses `..` itself, so write the raw header by hand.
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let mut b = tar::Builder::new(gz);
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..12].copy_from_slice(b"../evil.wasm");
        h.set_size(1);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
        let tgz = b.into_inner().unwrap().finish().unwrap();
        assert!(matches!(
            read_tgz(&tgz, ArchiveLimits::default()),
            Err(PackError::InvalidArchive(_))
        ));

        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let mut b = tar::Builder::new(gz);
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "link", "/etc/passwd").unwrap();
        let tgz = b.into_inner().unwrap().finish().unwrap();
        assert!(matches!(
            read_tgz(&tgz, ArchiveLimits::default()),
            Err(PackError::InvalidArchive(_))
        ));
    }
}
