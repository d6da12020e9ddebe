//! The one error type of this crate.
//!
//! Messages are lowercase, put names and paths in backticks, and never carry secret material:
//! no passphrase, key, plaintext or environment value appears in a message or in `Debug` output.

use std::path::PathBuf;

/// Everything that can go wrong in a [`KeyStore`](crate::KeyStore) or while unlocking one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyStoreError {
    /// The passphrase or key does not open this store (its check value failed to decrypt).
    #[error("wrong passphrase or key for the keystore")]
    WrongPassphrase,

    /// No key with this name is in the store.
    #[error("no key named `{name}` in the keystore")]
    KeyNotFound {
        /// The name that was asked for.
        name: String,
    },

    /// A key with this name is already in the store; keys are never overwritten.
    #[error("a key named `{name}` already exists in the keystore")]
    KeyExists {
        /// The name that is taken.
        name: String,
    },

    /// A key name broke the naming rules of [`KeyName`](crate::KeyName).
    #[error("invalid key name `{}`: {reason}", name.escape_debug())]
    InvalidKeyName {
        /// The rejected name, possibly shortened.
        name: String,
        /// Which rule it broke.
        reason: &'static str,
    },

    /// A store file exists but can't be understood or fails its integrity check.
    #[error("keystore file `{}` is corrupt: {reason}", path.display())]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A store file was written by a format version this build does not know.
    #[error("keystore file `{}` has unsupported format version {version}", path.display())]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version it declares.
        version: u64,
    },

    /// Reading or writing a store file failed.
    #[error("i/o error on `{}`", path.display())]
    Io {
        /// The file or directory being accessed.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },

    /// There is already a keystore in the directory given to `create`.
    #[error("a keystore already exists in `{}`", path.display())]
    StoreExists {
        /// The store directory.
        path: PathBuf,
    },

    /// There is no keystore in the directory given to `open`.
    #[error("no keystore in `{}`", path.display())]
    StoreNotFound {
        /// The store directory.
        path: PathBuf,
    },

    /// The unlock secret is unusable: malformed, empty, or of the wrong kind for this store.
    #[error("cannot unlock the keystore: {0}")]
    Unlock(String),

    /// Argon2id parameters out of range.
    #[error("invalid argon2id parameters: {0}")]
    InvalidParams(String),

    /// A store file or directory is accessible to group or others.
    #[error(
        "`{}` has mode {mode:04o}; it must not be accessible to group or others \
         (files 0600, directories 0700)",
        path.display()
    )]
    InsecurePermissions {
        /// The file or directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },

    /// A signature did not verify under the public key.
    #[error("signature verification failed")]
    BadSignature,

    /// The cryptographic library refused an operation.
    #[error("cryptographic operation failed: {0}")]
    Crypto(&'static str),

    /// A bug or broken invariant in this crate, e.g. a poisoned lock.
    #[error("internal keystore error: {0}")]
    Internal(&'static str),
}

impl KeyStoreError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::Corrupt {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
