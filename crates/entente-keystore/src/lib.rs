//! Where Entente's own private keys live: the CA keys, the audit signing key and, later, the
//! key-encryption keys for data at rest.
//!
//! A [`KeyStore`] generates keys inside itself, signs inside itself and hands out only public
//! keys. No method returns private key bytes, so a PKCS#11 HSM can sit behind the same trait
//! with keys that never leave it.
//!
//! Backends:
//! - [`local`]: key files encrypted under a key derived with Argon2id from a passphrase, or given
//!   directly by the environment.
//!
//! Every backend must pass the same suite, the `conformance` module (feature `conformance`).
//!
//! ```
//! use entente_keystore::local::{Argon2Params, LocalKeyStore, Unlock};
//! use entente_keystore::{KeyAlgorithm, KeyName, KeyStore};
//!
//! # fn main() -> Result<(), entente_keystore::KeyStoreError> {
//! # let tmp = tempfile::tempdir().unwrap();
//! # let dir = tmp.path().join("keystore");
//! let unlock = Unlock::passphrase("correct horse battery staple");
//! let store = LocalKeyStore::create(&dir, &unlock, Argon2Params::danger_fast_for_tests())?;
//!
//! let name = KeyName::new("ca-root")?;
//! let public = store.generate(&name, KeyAlgorithm::EcdsaP256Sha256)?;
//! let sig = store.sign(&name, b"to be signed")?;
//! public.verify(b"to be signed", &sig)?;
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

mod error;
mod key;
pub mod local;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

pub use error::KeyStoreError;
pub use key::{KeyAlgorithm, KeyName, PublicKey};

/// A place that holds private keys and uses them without handing them out.
///
/// Implementations are shared between threads; every method takes `&self`.
pub trait KeyStore: Send + Sync + std::fmt::Debug {
    /// A short name for the backend, e.g. `"local"` or `"pkcs11"`.
    fn backend(&self) -> &'static str;

    /// Generates a new key named `name` inside the store and returns its public key.
    ///
    /// Fails with [`KeyStoreError::KeyExists`] if the name is taken; keys are never overwritten.
    fn generate(&self, name: &KeyName, alg: KeyAlgorithm) -> Result<PublicKey, KeyStoreError>;

    /// The public key of `name`, or [`KeyStoreError::KeyNotFound`].
    fn public_key(&self, name: &KeyName) -> Result<PublicKey, KeyStoreError>;

    /// Signs `msg` with `name`: an ASN.1 DER signature for ECDSA P-256 (SHA-256 of `msg`), 64 bytes
    /// for Ed25519. Fails with [`KeyStoreError::KeyNotFound`] for an unknown name.
    fn sign(&self, name: &KeyName, msg: &[u8]) -> Result<Vec<u8>, KeyStoreError>;

    /// Whether a key named `name` exists.
    fn contains(&self, name: &KeyName) -> Result<bool, KeyStoreError>;

    /// Every key with its algorithm, sorted by name.
    fn list(&self) -> Result<Vec<(KeyName, KeyAlgorithm)>, KeyStoreError>;

    /// Destroys the key `name`, or fails with [`KeyStoreError::KeyNotFound`].
    fn delete(&self, name: &KeyName) -> Result<(), KeyStoreError>;
}
