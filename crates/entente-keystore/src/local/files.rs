//! Private files: permission-checked reads, 0700 directories, and atomic 0600 writes (no-clobber
//! creation for keys, replacement for renewable credentials). Used by the local key store and by
//! identity directories.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};

use crate::KeyStoreError;

/// Store files are small; anything larger is not ours.
const MAX_FILE_LEN: u64 = 64 * 1024;
/// A store file with any of these bits set is refused.
const FILE_FORBIDDEN_MODE: u32 = 0o077;
/// A store directory with any of these bits set is refused: others could add or replace files.
const DIR_FORBIDDEN_MODE: u32 = 0o022;

/// What [`write_new`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Written {
    /// The file was created.
    Created,
    /// A file of that name already existed; it was left alone.
    AlreadyExists,
}

/// Fails unless the file or directory of `meta` is owned by the user running this process or
/// by root: whoever owns it may change its mode, or, for a directory, replace what is in it.
pub fn check_owner(path: &Path, meta: &fs::Metadata) -> Result<(), KeyStoreError> {
    let owner = meta.uid();
    let us = rustix::process::geteuid().as_raw();
    if owner != us && owner != 0 {
        return Err(KeyStoreError::ForeignOwner {
            path: path.to_owned(),
            owner,
        });
    }
    Ok(())
}

/// Reads a regular file that must not be accessible to group or others, owned by this
/// process's user (or root).
pub fn read_private(path: &Path) -> Result<Vec<u8>, KeyStoreError> {
    let link_meta = fs::symlink_metadata(path).map_err(|err| KeyStoreError::io(path, err))?;
    if !link_meta.file_type().is_file() {
        return Err(KeyStoreError::corrupt(path, "not a regular file"));
    }
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|err| KeyStoreError::io(path, err))?;
    // Check the opened file itself, not the path, so it can't be swapped in between.
    let meta = file
        .metadata()
        .map_err(|err| KeyStoreError::io(path, err))?;
    if !meta.file_type().is_file() {
        return Err(KeyStoreError::corrupt(path, "not a regular file"));
    }
    let mode = meta.mode() & 0o7777;
    if mode & FILE_FORBIDDEN_MODE != 0 {
        return Err(KeyStoreError::InsecurePermissions {
            path: path.to_owned(),
            mode,
        });
    }
    check_owner(path, &meta)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(|err| KeyStoreError::io(path, err))?;
    if bytes.len() as u64 > MAX_FILE_LEN {
        return Err(KeyStoreError::corrupt(path, "file is too large"));
    }
    Ok(bytes)
}

/// Fails unless `path` is a directory that group and others can't write to, owned by this
/// process's user (or root).
pub fn check_dir(path: &Path) -> Result<(), KeyStoreError> {
    let meta = fs::metadata(path).map_err(|err| KeyStoreError::io(path, err))?;
    if !meta.is_dir() {
        return Err(KeyStoreError::corrupt(path, "not a directory"));
    }
    let mode = meta.mode() & 0o7777;
    if mode & DIR_FORBIDDEN_MODE != 0 {
        return Err(KeyStoreError::InsecurePermissions {
            path: path.to_owned(),
            mode,
        });
    }
    check_owner(path, &meta)
}

/// Creates `path` and any missing parents with mode 0700; an existing directory is kept as is.
pub fn create_private_dir_all(path: &Path) -> Result<(), KeyStoreError> {
    if path.is_dir() {
        return Ok(());
    }
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|err| KeyStoreError::io(path, err))?;
    sync_parent(path)
}

/// Creates the directory `path` with mode 0700; [`Written::AlreadyExists`] if it exists.
pub fn create_private_dir(path: &Path) -> Result<Written, KeyStoreError> {
    match DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => {
            sync_parent(path)?;
            Ok(Written::Created)
        }
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => Ok(Written::AlreadyExists),
        Err(err) => Err(KeyStoreError::io(path, err)),
    }
}

/// Atomically creates `dir/name` holding `bytes`, with mode 0600, never replacing a file.
///
/// The bytes go to a temporary file in `dir` (created 0600, fsynced), which is then hard-linked
/// to its final name (this fails if the name exists, unlike a rename) and unlinked; finally the
/// directory is fsynced. Readers see either no file or the complete file.
pub fn write_new(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    rng: &SystemRandom,
) -> Result<Written, KeyStoreError> {
    let mut suffix = [0u8; 8];
    rng.fill(&mut suffix)
        .map_err(|_| KeyStoreError::Crypto("random number generation failed"))?;
    let tmp = dir.join(format!(".{name}.{}.tmp", hex::encode(suffix)));
    let path = dir.join(name);

    let result = write_synced(&tmp, bytes).and_then(|()| match fs::hard_link(&tmp, &path) {
        Ok(()) => Ok(Written::Created),
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => Ok(Written::AlreadyExists),
        Err(err) => Err(KeyStoreError::io(&path, err)),
    });
    // The temporary file goes in every case; a failure to remove it is harmless but reported.
    let removed = match fs::remove_file(&tmp) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(KeyStoreError::io(&tmp, err)),
        _ => Ok(()),
    };
    let written = result?;
    removed?;
    sync_dir(dir)?;
    Ok(written)
}

/// Atomically writes `dir/name` with mode 0600, replacing any previous file of that name:
/// a temporary file (0600, fsynced) is renamed over it and the directory fsynced. Readers see
/// the old file or the new one, never a mix.
pub fn replace(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    rng: &SystemRandom,
) -> Result<(), KeyStoreError> {
    let mut suffix = [0u8; 8];
    rng.fill(&mut suffix)
        .map_err(|_| KeyStoreError::Crypto("random number generation failed"))?;
    let tmp = dir.join(format!(".{name}.{}.tmp", hex::encode(suffix)));
    let path = dir.join(name);
    let result = write_synced(&tmp, bytes)
        .and_then(|()| fs::rename(&tmp, &path).map_err(|err| KeyStoreError::io(&path, err)));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    sync_dir(dir)
}

/// Removes `path` (a missing file is fine) and fsyncs its directory.
pub fn remove(path: &Path) -> Result<(), KeyStoreError> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(KeyStoreError::io(path, err)),
    }
    sync_parent(path)
}

/// Whether `err` says a file does not exist.
pub fn is_not_found(err: &KeyStoreError) -> bool {
    matches!(err, KeyStoreError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), KeyStoreError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|err| KeyStoreError::io(path, err))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|err| KeyStoreError::io(path, err))
}

fn sync_parent(path: &Path) -> Result<(), KeyStoreError> {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        _ => sync_dir(Path::new(".")),
    }
}

fn sync_dir(dir: &Path) -> Result<(), KeyStoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|err| KeyStoreError::io(dir, err))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::os::unix::fs::{PermissionsExt, symlink};

    use super::*;

    #[test]
    fn replace_overwrites_atomically_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let rng = SystemRandom::new();
        replace(dir.path(), "cert.pem", b"one", &rng).unwrap();
        replace(dir.path(), "cert.pem", b"two", &rng).unwrap();
        let path = dir.path().join("cert.pem");
        assert_eq!(read_private(&path).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left"
        );
    }

    #[test]
    fn a_symlink_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        fs::write(&target, b"x").unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.path().join("link");
        symlink(&target, &link).unwrap();
        assert!(read_private(&link).is_err());
    }
}
