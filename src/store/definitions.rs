//! Durable definitions file: whole-file atomic replace, nothing more.
//!
//! Owns: the write-temp / fsync / rename / fsync-directory sequence. The broker serializes its
//! own definitions (JSON/TOML) and decides the path. These are blocking calls: from async code
//! run them in `tokio::task::spawn_blocking`.
//!
//! Invariant: after a crash, `load` returns either the previous or the new contents, never a mix.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The temporary file `save_atomic` writes before renaming over `path`.
fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Atomically replaces the file at `path` with `bytes` (durable when this returns `Ok`).
pub fn save_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = tmp_path(path);
    let res = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = res {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

/// Reads the file at `path`; `Ok(None)` if it does not exist. Removes a stale temp file left by
/// a `save_atomic` that crashed before its rename.
pub fn load(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let _ = fs::remove_file(tmp_path(path));
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_replace_and_missing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("definitions.json");
        assert_eq!(load(&path).unwrap(), None);
        save_atomic(&path, b"{\"v\":1}").unwrap();
        assert_eq!(load(&path).unwrap().as_deref(), Some(&b"{\"v\":1}"[..]));
        save_atomic(&path, b"{\"v\":2}").unwrap();
        assert_eq!(load(&path).unwrap().as_deref(), Some(&b"{\"v\":2}"[..]));
        // A crash between write and rename leaves a temp file; the old contents win.
        fs::write(tmp_path(&path), b"partial").unwrap();
        assert_eq!(load(&path).unwrap().as_deref(), Some(&b"{\"v\":2}"[..]));
        assert!(!tmp_path(&path).exists());
    }
}
