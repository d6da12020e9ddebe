//! Where Entente's own secret keys live: the CA keys, the audit signing key and the
//! key-encryption keys (KEKs) that wrap data keys for data at rest and the audit log's HMAC key.
//!
//! A [`KeyStore`] generates keys inside itself and uses them inside itself: it signs with the
//! signature keys and encrypts and decrypts with the AES-256-GCM KEKs. It hands out only public
//! keys. No method returns private or secret key bytes, so a PKCS#11 HSM can sit behind the same
//! trait with keys that never leave it.
//!
//! Backends:
//! - [`local`]: key files encrypted under a key derived with Argon2id from a passphrase, or given
//!   directly by the environment.
//! - [`pkcs11`]: keys generated and used inside a PKCS#11 token (an HSM; SoftHSM2 in tests),
//!   non-extractable, through a module, a token label and a user PIN.
//!
//! Every backend must pass the same suite, the `conformance` module (feature `conformance`).
//!
//! ```
//! use entente_keystore::local::{Argon2Params, LocalKeyStore, Unlock};
//! use entente_keystore::{KeyAlgorithm, KeyName, KeyStore, KeyStoreError};
//!
//! # fn main() -> Result<(), KeyStoreError> {
//! # let tmp = tempfile::tempdir().unwrap();
//! # let dir = tmp.path().join("keystore");
//! let unlock = Unlock::passphrase("correct horse battery staple");
//! let store = LocalKeyStore::create(&dir, &unlock, Argon2Params::danger_fast_for_tests())?;
//!
//! // A signing key: only its public key comes out.
//! let name = KeyName::new("ca-root")?;
//! let public = store.generate(&name, KeyAlgorithm::EcdsaP256Sha256)?;
//! let sig = store.sign(&name, b"to be signed")?;
//! public.verify(b"to be signed", &sig)?;
//!
//! // A key-encryption key: it wraps a data key, bound to a context.
//! let kek = KeyName::new("data-kek")?;
//! store.generate(&kek, KeyAlgorithm::Aes256Gcm)?;
//! let data_key = [0x42u8; 32];
//! let wrapped = store.encrypt(&kek, &data_key, b"tenant-a/blob-7")?;
//! assert_eq!(*store.decrypt(&kek, &wrapped, b"tenant-a/blob-7")?, data_key);
//! assert!(matches!(
//!     store.decrypt(&kek, &wrapped, b"tenant-b/blob-7"),
//!     Err(KeyStoreError::Decrypt)
//! ));
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

mod error;
mod key;
pub mod local;
pub mod pkcs11;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

pub use error::KeyStoreError;
pub use key::{KeyAlgorithm, KeyName, PublicKey};

/// The longest plaintext, and the longest associated data, that [`KeyStore::encrypt`] and
/// [`KeyStore::decrypt`] accept, in bytes. KEKs wrap keys and other small secrets, not bulk data.
pub const MAX_ENCRYPT_LEN: usize = 65_536;

/// A place that holds private and secret keys and uses them without handing them out.
///
/// Implementations are shared between threads; every method takes `&self`.
pub trait KeyStore: Send + Sync + std::fmt::Debug {
    /// A short name for the backend, e.g. `"local"` or `"pkcs11"`.
    fn backend(&self) -> &'static str;

    /// Generates a new key named `name` inside the store and returns its public key.
    ///
    /// For [`KeyAlgorithm::Aes256Gcm`] the store makes a random 32-byte key, and the returned
    /// [`PublicKey`] has empty `bytes`: a symmetric key has no public part.
    ///
    /// Fails with [`KeyStoreError::KeyExists`] if the name is taken; keys are never overwritten.
    fn generate(&self, name: &KeyName, alg: KeyAlgorithm) -> Result<PublicKey, KeyStoreError>;

    /// The public key of `name`, or [`KeyStoreError::KeyNotFound`]; for an AES-256-GCM key, just
    /// its algorithm with empty `bytes`.
    fn public_key(&self, name: &KeyName) -> Result<PublicKey, KeyStoreError>;

    /// Signs `msg` with `name`: an ASN.1 DER signature for ECDSA P-256 (SHA-256 of `msg`), 64 bytes
    /// for Ed25519. Fails with [`KeyStoreError::KeyNotFound`] for an unknown name and
    /// [`KeyStoreError::WrongAlgorithm`] for a key that does not sign (AES-256-GCM).
    fn sign(&self, name: &KeyName, msg: &[u8]) -> Result<Vec<u8>, KeyStoreError>;

    /// Encrypts `plaintext` under the AES-256-GCM key `name` with `aad` bound to it, under a
    /// fresh random 96-bit nonce; returns nonce (12 bytes) ‖ ciphertext ‖ tag (16 bytes).
    ///
    /// Fails with [`KeyStoreError::KeyNotFound`] for an unknown name,
    /// [`KeyStoreError::WrongAlgorithm`] for a signing key, and [`KeyStoreError::TooLong`] if
    /// `plaintext` or `aad` is longer than [`MAX_ENCRYPT_LEN`].
    ///
    /// Random nonces keep a key safe for about 2³² encryptions (NIST SP 800-38D): plenty for
    /// wrapping data keys, which is what this is for.
    fn encrypt(
        &self,
        name: &KeyName,
        plaintext: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, KeyStoreError>;

    /// The inverse of [`encrypt`](Self::encrypt); fails with [`KeyStoreError::Decrypt`] when the
    /// input was altered, the aad differs, or it was made under another key.
    ///
    /// `sealed` shorter than 28 bytes (nonce and tag) is [`KeyStoreError::Decrypt`] too. Fails
    /// with [`KeyStoreError::KeyNotFound`] for an unknown name, [`KeyStoreError::WrongAlgorithm`]
    /// for a signing key, and [`KeyStoreError::TooLong`] if `aad` is longer than
    /// [`MAX_ENCRYPT_LEN`] or `sealed` longer than [`MAX_ENCRYPT_LEN`] + 28.
    fn decrypt(
        &self,
        name: &KeyName,
        sealed: &[u8],
        aad: &[u8],
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, KeyStoreError>;

    /// Whether a key named `name` exists.
    fn contains(&self, name: &KeyName) -> Result<bool, KeyStoreError>;

    /// Every key with its algorithm, sorted by name.
    fn list(&self) -> Result<Vec<(KeyName, KeyAlgorithm)>, KeyStoreError>;

    /// Destroys the key `name`, or fails with [`KeyStoreError::KeyNotFound`].
    fn delete(&self, name: &KeyName) -> Result<(), KeyStoreError>;
}

// === helpers for backends ===

/// The length of the nonce that starts the output of [`KeyStore::encrypt`].
pub(crate) const NONCE_LEN: usize = 12;
/// The length of the tag that ends the output of [`KeyStore::encrypt`].
pub(crate) const TAG_LEN: usize = 16;
/// What [`KeyStore::encrypt`] adds to the plaintext: the nonce and the tag.
pub(crate) const SEALED_OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// Checks the bounds of [`KeyStore::encrypt`]'s inputs.
pub(crate) fn check_encrypt_input(plaintext: &[u8], aad: &[u8]) -> Result<(), KeyStoreError> {
    check_len("plaintext", plaintext.len(), MAX_ENCRYPT_LEN)?;
    check_len("aad", aad.len(), MAX_ENCRYPT_LEN)
}

/// Checks the bounds of [`KeyStore::decrypt`]'s inputs: too short to hold a nonce and a tag is
/// [`KeyStoreError::Decrypt`], like any other input that is not the output of `encrypt`.
pub(crate) fn check_decrypt_input(sealed: &[u8], aad: &[u8]) -> Result<(), KeyStoreError> {
    check_len("aad", aad.len(), MAX_ENCRYPT_LEN)?;
    check_len(
        "sealed data",
        sealed.len(),
        MAX_ENCRYPT_LEN + SEALED_OVERHEAD,
    )?;
    if sealed.len() < SEALED_OVERHEAD {
        return Err(KeyStoreError::Decrypt);
    }
    Ok(())
}

fn check_len(what: &'static str, len: usize, max: usize) -> Result<(), KeyStoreError> {
    if len > max {
        return Err(KeyStoreError::TooLong { what, len, max });
    }
    Ok(())
}
