//! What a key store hands out: algorithms, key names and public keys. No private or secret key
//! material.

use std::fmt;
use std::str::FromStr;

use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1, ED25519, UnparsedPublicKey};

use crate::KeyStoreError;

/// The algorithm of a stored key: one of two signature algorithms, or a symmetric cipher.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyAlgorithm {
    /// ECDSA on P-256 with SHA-256; signatures are ASN.1 DER. Used for X.509 (the CA keys).
    EcdsaP256Sha256,
    /// Ed25519; signatures are 64 raw bytes. Used for key bundles and audit checkpoints.
    Ed25519,
    /// AES-256-GCM with a 32-byte key, 96-bit nonces and 128-bit tags: a key-encryption key
    /// (KEK) that wraps data keys with [`KeyStore::encrypt`](crate::KeyStore::encrypt). A
    /// symmetric key has no public part and can't sign.
    Aes256Gcm,
}

impl KeyAlgorithm {
    /// Every algorithm, in a fixed order.
    pub const ALL: [KeyAlgorithm; 3] = [
        KeyAlgorithm::EcdsaP256Sha256,
        KeyAlgorithm::Ed25519,
        KeyAlgorithm::Aes256Gcm,
    ];

    /// The stable name used in files and messages: `ecdsa-p256-sha256`, `ed25519` or
    /// `aes256-gcm`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EcdsaP256Sha256 => "ecdsa-p256-sha256",
            Self::Ed25519 => "ed25519",
            Self::Aes256Gcm => "aes256-gcm",
        }
    }

    /// Whether keys of this algorithm sign (and have a public key): true for
    /// [`EcdsaP256Sha256`](Self::EcdsaP256Sha256) and [`Ed25519`](Self::Ed25519).
    pub fn is_signing(self) -> bool {
        match self {
            Self::EcdsaP256Sha256 | Self::Ed25519 => true,
            Self::Aes256Gcm => false,
        }
    }

    /// The inverse of [`as_str`](Self::as_str).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|alg| alg.as_str() == name)
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name of a key in a store: 1 to 64 bytes of `[a-z0-9._-]`, not starting with `.`.
///
/// The rules keep names safe as file names and as PKCS#11 labels.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyName(String);

impl KeyName {
    /// The longest name, in bytes.
    pub const MAX_LEN: usize = 64;

    /// Checks `name` against the naming rules.
    pub fn new(name: &str) -> Result<Self, KeyStoreError> {
        let reject = |reason| KeyStoreError::InvalidKeyName {
            name: name.chars().take(Self::MAX_LEN + 16).collect(),
            reason,
        };
        if name.is_empty() {
            return Err(reject("must not be empty"));
        }
        if name.len() > Self::MAX_LEN {
            return Err(reject("must be at most 64 bytes"));
        }
        if name.starts_with('.') {
            return Err(reject("must not start with `.`"));
        }
        let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b);
        if !name.bytes().all(allowed) {
            return Err(reject("may contain only `a-z`, `0-9`, `.`, `_` and `-`"));
        }
        Ok(Self(name.to_owned()))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for KeyName {
    type Err = KeyStoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// The public half of a stored key.
///
/// `bytes` is the uncompressed SEC1 point (65 bytes, `0x04 || X || Y`) for ECDSA P-256 and the 32
/// raw bytes for Ed25519. For AES-256-GCM it is empty: a symmetric key has no public part, and
/// this value only names the algorithm.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PublicKey {
    /// Which algorithm the key is for.
    pub algorithm: KeyAlgorithm,
    /// The encoded public key.
    pub bytes: Vec<u8>,
}

impl PublicKey {
    /// Verifies `sig` over `msg`: an ASN.1 DER signature for ECDSA, 64 bytes for Ed25519.
    ///
    /// Fails with [`KeyStoreError::BadSignature`] for a wrong signature or a malformed key, and
    /// with [`KeyStoreError::NoPublicKey`] for a symmetric (AES-256-GCM) key.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> Result<(), KeyStoreError> {
        let result = match self.algorithm {
            KeyAlgorithm::EcdsaP256Sha256 => {
                UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &self.bytes).verify(msg, sig)
            }
            KeyAlgorithm::Ed25519 => UnparsedPublicKey::new(&ED25519, &self.bytes).verify(msg, sig),
            KeyAlgorithm::Aes256Gcm => {
                return Err(KeyStoreError::NoPublicKey {
                    algorithm: self.algorithm,
                });
            }
        };
        result.map_err(|_| KeyStoreError::BadSignature)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey")
            .field("algorithm", &self.algorithm)
            .field("bytes", &hex::encode(&self.bytes))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )]

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn algorithm_names_round_trip() {
        for alg in KeyAlgorithm::ALL {
            assert_eq!(KeyAlgorithm::from_name(alg.as_str()), Some(alg));
            assert_eq!(alg.to_string(), alg.as_str());
        }
        assert_eq!(KeyAlgorithm::EcdsaP256Sha256.as_str(), "ecdsa-p256-sha256");
        assert_eq!(KeyAlgorithm::Ed25519.as_str(), "ed25519");
        assert_eq!(KeyAlgorithm::Aes256Gcm.as_str(), "aes256-gcm");
        assert_eq!(KeyAlgorithm::from_name("ED25519"), None);
        assert_eq!(KeyAlgorithm::from_name("aes-256-gcm"), None);
    }

    #[test]
    fn only_the_signature_algorithms_sign() {
        assert!(KeyAlgorithm::EcdsaP256Sha256.is_signing());
        assert!(KeyAlgorithm::Ed25519.is_signing());
        assert!(!KeyAlgorithm::Aes256Gcm.is_signing());
    }

    #[test]
    fn a_symmetric_key_verifies_nothing() {
        let public = PublicKey {
            algorithm: KeyAlgorithm::Aes256Gcm,
            bytes: Vec::new(),
        };
        let err = public.verify(b"msg", &[0; 64]).unwrap_err();
        assert!(matches!(err, KeyStoreError::NoPublicKey { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "`aes256-gcm` keys are symmetric: there is no public key to verify a signature with"
        );
    }

    #[test]
    fn invalid_name_message_escapes_input() {
        let err = KeyName::new("a\nb").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid key name `a\\nb`: may contain only `a-z`, `0-9`, `.`, `_` and `-`"
        );
    }

    fn is_valid_name(s: &str) -> bool {
        (1..=64).contains(&s.len())
            && !s.starts_with('.')
            && s.bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'))
    }

    proptest! {
        #[test]
        fn names_accepted_exactly_by_the_rules(s in "[a-z0-9._A-Z/ \\-]{0,70}") {
            let parsed = KeyName::new(&s);
            prop_assert_eq!(parsed.is_ok(), is_valid_name(&s));
            if let Ok(name) = parsed {
                prop_assert_eq!(name.as_str(), s.as_str());
            }
        }

        #[test]
        fn valid_names_accepted(s in "[a-z0-9_-][a-z0-9._-]{0,63}") {
            prop_assert!(KeyName::new(&s).is_ok());
        }
    }
}
