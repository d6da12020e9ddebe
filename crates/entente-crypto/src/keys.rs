//! An agent's message keys: Ed25519 for signing, X25519 for receiving sender keys (HPKE).
//! They are separate from the TLS key, and the hub never holds them.

use aws_lc_rs::{
    encoding::AsBigEndian,
    signature::{Ed25519KeyPair, KeyPair},
};
use hpke::{Deserializable, Kem as _, Serializable, kem::X25519HkdfSha256};
use zeroize::{Zeroize, Zeroizing};

/// Length of each public key and of each secret in [`MessageKeys::to_secret_bytes`].
pub const KEY_LEN: usize = 32;

/// Why message keys could not be made or loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The secret bytes are not 64 bytes of valid keys.
    #[error("message key bytes are malformed")]
    Malformed,
    /// The system random source or the crypto library failed.
    #[error("key generation failed")]
    Generation,
}

/// The private half of an agent's message keys.
pub struct MessageKeys {
    signing: Ed25519KeyPair,
    ed25519_public: [u8; KEY_LEN],
    x25519_secret: <X25519HkdfSha256 as hpke::Kem>::PrivateKey,
    x25519_public: [u8; KEY_LEN],
}

impl MessageKeys {
    /// Generates fresh keys from the system random source.
    pub fn generate() -> Result<Self, KeyError> {
        let signing = Ed25519KeyPair::generate().map_err(|_| KeyError::Generation)?;
        let (secret, _) =
            X25519HkdfSha256::gen_keypair(&mut rand_core::UnwrapErr(rand_core::OsRng));
        Self::from_parts(signing, secret)
    }

    /// Loads keys saved with [`MessageKeys::to_secret_bytes`].
    pub fn from_secret_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let (seed, x25519) = bytes.split_at_checked(KEY_LEN).ok_or(KeyError::Malformed)?;
        if x25519.len() != KEY_LEN {
            return Err(KeyError::Malformed);
        }
        let signing = Ed25519KeyPair::from_seed_unchecked(seed).map_err(|_| KeyError::Malformed)?;
        let secret = <X25519HkdfSha256 as hpke::Kem>::PrivateKey::from_bytes(x25519)
            .map_err(|_| KeyError::Malformed)?;
        Self::from_parts(signing, secret)
    }

    /// The Ed25519 seed followed by the X25519 secret: 64 bytes to store encrypted.
    pub fn to_secret_bytes(&self) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let seed = self
            .signing
            .seed()
            .and_then(|s| s.as_be_bytes())
            .map_err(|_| KeyError::Malformed)?;
        let mut out = Zeroizing::new(Vec::with_capacity(2 * KEY_LEN));
        out.extend_from_slice(seed.as_ref());
        let mut x25519 = self.x25519_secret.to_bytes();
        out.extend_from_slice(&x25519);
        x25519.as_mut_slice().zeroize();
        Ok(out)
    }

    /// The Ed25519 public key.
    pub fn ed25519_public(&self) -> [u8; KEY_LEN] {
        self.ed25519_public
    }

    /// The X25519 public key.
    pub fn x25519_public(&self) -> [u8; KEY_LEN] {
        self.x25519_public
    }

    pub(crate) fn sign(&self, message: &[u8]) -> [u8; 64] {
        let mut out = [0u8; 64];
        out.copy_from_slice(self.signing.sign(message).as_ref());
        out
    }

    pub(crate) fn x25519_secret(&self) -> &<X25519HkdfSha256 as hpke::Kem>::PrivateKey {
        &self.x25519_secret
    }

    fn from_parts(
        signing: Ed25519KeyPair,
        x25519_secret: <X25519HkdfSha256 as hpke::Kem>::PrivateKey,
    ) -> Result<Self, KeyError> {
        let ed25519_public = signing
            .public_key()
            .as_ref()
            .try_into()
            .map_err(|_| KeyError::Malformed)?;
        let x25519_public = X25519HkdfSha256::sk_to_pk(&x25519_secret)
            .to_bytes()
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::Malformed)?;
        Ok(Self {
            signing,
            ed25519_public,
            x25519_secret,
            x25519_public,
        })
    }
}

impl std::fmt::Debug for MessageKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageKeys")
            .field("ed25519_public", &hex(&self.ed25519_public))
            .field("x25519_public", &hex(&self.x25519_public))
            .finish_non_exhaustive()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    /// The X25519 secrets (each agent's long-term one inside [`MessageKeys`], and HPKE's
    /// ephemeral ones) are wiped when dropped: with `x25519-dalek`'s `zeroize` feature,
    /// which hpke leaves off, they are `Zeroize` and have a drop that wipes them (without
    /// it, they are plain bytes with no drop at all).
    #[test]
    fn x25519_secrets_are_wiped_when_dropped() {
        fn wiped<T: zeroize::Zeroize>() -> bool {
            std::mem::needs_drop::<T>()
        }
        assert!(wiped::<x25519_dalek::StaticSecret>());
        assert!(wiped::<x25519_dalek::EphemeralSecret>());
    }

    #[test]
    fn secret_bytes_round_trip() {
        let keys = MessageKeys::generate().unwrap();
        let bytes = keys.to_secret_bytes().unwrap();
        assert_eq!(bytes.len(), 64);
        let again = MessageKeys::from_secret_bytes(&bytes).unwrap();
        assert_eq!(again.ed25519_public(), keys.ed25519_public());
        assert_eq!(again.x25519_public(), keys.x25519_public());
        assert_eq!(again.sign(b"m"), keys.sign(b"m"));
    }

    #[test]
    fn malformed_secret_bytes_are_refused() {
        assert_eq!(
            MessageKeys::from_secret_bytes(&[0; 63]).unwrap_err(),
            KeyError::Malformed
        );
        assert_eq!(
            MessageKeys::from_secret_bytes(&[0; 65]).unwrap_err(),
            KeyError::Malformed
        );
    }

    #[test]
    fn debug_shows_no_secret() {
        let keys = MessageKeys::generate().unwrap();
        let secret = keys.to_secret_bytes().unwrap();
        let debug = format!("{keys:?}");
        assert!(!debug.contains(&hex(&secret[..KEY_LEN])));
        assert!(!debug.contains(&hex(&secret[KEY_LEN..])));
    }
}
