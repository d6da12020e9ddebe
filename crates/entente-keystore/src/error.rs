//! The one error type of this crate.
//!
//! Messages are lowercase, put names and paths in backticks, and never carry secret material:
//! no passphrase, key, plaintext or environment value appears in a message or in `Debug` output.

use std::path::PathBuf;

use crate::{KeyAlgorithm, KeyName};

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

    /// A store file or directory is owned by another user than the one running this process
    /// (and not by root): its owner could change its mode, or replace what a directory holds.
    #[error(
        "`{}` is owned by user {owner}, not by the user running this (nor by root)",
        path.display()
    )]
    ForeignOwner {
        /// The file or directory.
        path: PathBuf,
        /// Its owner's user ID.
        owner: u32,
    },

    /// The key exists but is of the wrong algorithm for the operation: signing with an
    /// AES-256-GCM key, or encrypting or decrypting with a signing key. Misuse by the caller.
    #[error("key `{name}` has algorithm `{algorithm}`; this operation needs {wanted}")]
    WrongAlgorithm {
        /// The key's name.
        name: String,
        /// The key's algorithm.
        algorithm: KeyAlgorithm,
        /// What the operation needs, e.g. "a signing key".
        wanted: &'static str,
    },

    /// A signature was to be verified with a symmetric key, which has no public key.
    #[error("`{algorithm}` keys are symmetric: there is no public key to verify a signature with")]
    NoPublicKey {
        /// The key's algorithm.
        algorithm: KeyAlgorithm,
    },

    /// An input to [`KeyStore::encrypt`](crate::KeyStore::encrypt) or
    /// [`KeyStore::decrypt`](crate::KeyStore::decrypt) is longer than allowed.
    #[error("the {what} is {len} bytes, more than the {max} allowed")]
    TooLong {
        /// Which input: "plaintext", "aad" or "sealed data".
        what: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The most allowed.
        max: usize,
    },

    /// Sealed data did not decrypt: it was altered or truncated, or it was made under another
    /// key or with different associated data.
    #[error("decryption failed: the data was altered, or made under another key or context")]
    Decrypt,

    /// A signature did not verify under the public key.
    #[error("signature verification failed")]
    BadSignature,

    /// A configuration value is missing or malformed, e.g. in the environment read by
    /// [`Pkcs11Config::from_env`](crate::pkcs11::Pkcs11Config::from_env). The message names the
    /// setting, never its value.
    #[error("invalid keystore configuration: {0}")]
    Config(String),

    /// The PKCS#11 module can't be used: the file is missing, is not a shared library, or is
    /// not a PKCS#11 module.
    #[error("cannot load the pkcs#11 module `{}`: {detail}", path.display())]
    Pkcs11Module {
        /// The module path as configured.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },

    /// No initialized token of the PKCS#11 module has the configured label.
    #[error(
        "no pkcs#11 token labelled `{}`; {}",
        label.escape_debug(),
        found_tokens(found)
    )]
    TokenNotFound {
        /// The label that was asked for.
        label: String,
        /// The labels of the initialized tokens that were found, in slot order.
        found: Vec<String>,
    },

    /// The token refused the user PIN (`CKR_PIN_INCORRECT`). The PIN itself is never kept in
    /// the error.
    #[error("wrong pin for pkcs#11 token `{}`", token.escape_debug())]
    WrongPin {
        /// The token's label.
        token: String,
    },

    /// The token's user PIN is locked (`CKR_PIN_LOCKED`, or the token reports
    /// `CKF_USER_PIN_LOCKED`), usually after too many wrong PINs.
    #[error(
        "the user pin of pkcs#11 token `{}` is locked; the token's security officer must reset it",
        token.escape_debug()
    )]
    PinLocked {
        /// The token's label.
        token: String,
    },

    /// Any other failure of a PKCS#11 module or token: a return code other than success, or
    /// objects on the token that are not what this crate made.
    #[error("pkcs#11 {op} failed: {detail}")]
    Pkcs11 {
        /// The operation: `open`, `login`, `generate`, `sign`, ...
        op: &'static str,
        /// What went wrong, e.g. the PKCS#11 function and its return code.
        detail: String,
    },

    /// The cryptographic library refused an operation.
    #[error("cryptographic operation failed: {0}")]
    Crypto(&'static str),

    /// A bug or broken invariant in this crate, e.g. a poisoned lock.
    #[error("internal keystore error: {0}")]
    Internal(&'static str),
}

/// The tail of [`KeyStoreError::TokenNotFound`]'s message: the labels that were found.
fn found_tokens(found: &[String]) -> String {
    if found.is_empty() {
        return "the module has no initialized token".to_owned();
    }
    let labels: Vec<String> = found
        .iter()
        .map(|label| format!("`{}`", label.escape_debug()))
        .collect();
    format!("tokens found: {}", labels.join(", "))
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

    /// [`WrongAlgorithm`](Self::WrongAlgorithm) for signing with a key that can't sign.
    pub(crate) fn not_signing(name: &KeyName, algorithm: KeyAlgorithm) -> Self {
        Self::WrongAlgorithm {
            name: name.to_string(),
            algorithm,
            wanted: "a signing key",
        }
    }

    /// [`WrongAlgorithm`](Self::WrongAlgorithm) for encrypting or decrypting with a key that is
    /// not AES-256-GCM.
    pub(crate) fn not_aes(name: &KeyName, algorithm: KeyAlgorithm) -> Self {
        Self::WrongAlgorithm {
            name: name.to_string(),
            algorithm,
            wanted: "an `aes256-gcm` key",
        }
    }
}
