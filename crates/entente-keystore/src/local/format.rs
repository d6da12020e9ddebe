//! The on-disk format of the local backend (described in the [`local`](super) module docs):
//! JSON encoding, the key-encryption key and the AES-256-GCM envelope around each secret.

use std::path::Path;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{Argon2Params, Unlock};
use crate::{KeyAlgorithm, KeyName, KeyStoreError};

/// The format version written in every file.
pub(super) const VERSION: u64 = 1;
/// The domain-separation prefix of every AAD.
pub(super) const AAD_PREFIX: &[u8] = b"entente-keystore/v1";
/// What the check value in `keystore.json` decrypts to.
pub(super) const CHECK_PLAINTEXT: &[u8] = b"entente-keystore check v1";
/// The length of the Argon2id salt.
pub(super) const SALT_LEN: usize = 16;
/// The length of the key-encryption key.
pub(super) const KEK_LEN: usize = 32;

/// How the key-encryption key is obtained, as recorded in `keystore.json`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Kdf {
    /// Argon2id over a passphrase.
    Argon2id {
        params: Argon2Params,
        salt: [u8; SALT_LEN],
    },
    /// The 32-byte key is given directly (`ENTENTE_KEYSTORE_KEY`).
    Raw,
}

impl Kdf {
    /// The `alg` string recorded in the file.
    pub(super) fn alg(&self) -> &'static str {
        match self {
            Self::Argon2id { .. } => "argon2id",
            Self::Raw => "raw",
        }
    }
}

/// A parsed, well-formed `keystore.json`.
#[derive(Debug)]
pub(super) struct Metadata {
    pub(super) kdf: Kdf,
    check: Sealed,
}

/// The key-encryption key: AES-256-GCM, held only inside aws-lc-rs.
pub(super) struct Kek(LessSafeKey);

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(<redacted>)")
    }
}

/// Derives the key-encryption key from the unlock secret as `kdf` says.
///
/// A passphrase can't open a `raw` store and a raw key can't open an `argon2id` store.
pub(super) fn derive_kek(unlock: &Unlock, kdf: &Kdf) -> Result<Kek, KeyStoreError> {
    match (kdf, unlock) {
        (Kdf::Argon2id { params, salt }, Unlock::Passphrase(passphrase)) => {
            let argon2 = argon2::Argon2::new(
                argon2::Algorithm::Argon2id,
                argon2::Version::V0x13,
                params.to_argon2()?,
            );
            let mut kek = Zeroizing::new([0u8; KEK_LEN]);
            argon2
                .hash_password_into(passphrase.as_bytes(), salt, kek.as_mut_slice())
                .map_err(|_| KeyStoreError::Crypto("argon2id key derivation failed"))?;
            Kek::new(&kek)
        }
        (Kdf::Raw, Unlock::Key(key)) => Kek::new(key),
        (Kdf::Raw, Unlock::Passphrase(_)) => Err(KeyStoreError::Unlock(format!(
            "this keystore was created with a raw 32-byte key (`{}`), not a passphrase",
            super::KEY_ENV
        ))),
        (Kdf::Argon2id { .. }, Unlock::Key(_)) => Err(KeyStoreError::Unlock(format!(
            "this keystore was created with a passphrase (`{}`), not a raw key",
            super::PASSPHRASE_ENV
        ))),
    }
}

/// Encodes `keystore.json` with a fresh check value under `kek`.
pub(super) fn encode_metadata(
    kdf: &Kdf,
    kek: &Kek,
    rng: &SystemRandom,
) -> Result<Vec<u8>, KeyStoreError> {
    let check = kek.seal(rng, &check_aad(), CHECK_PLAINTEXT)?;
    let kdf = match kdf {
        Kdf::Argon2id { params, salt } => KdfJson::Argon2id {
            m_cost_kib: params.m_cost_kib,
            t_cost: params.t_cost,
            p_cost: params.p_cost,
            salt: hex::encode(salt),
        },
        Kdf::Raw => KdfJson::Raw,
    };
    to_json(&MetadataJson {
        version: VERSION,
        kdf,
        check: SealedJson::from(&check),
    })
}

/// Parses `keystore.json`; the check value is verified separately by [`verify_check`].
pub(super) fn decode_metadata(path: &Path, bytes: &[u8]) -> Result<Metadata, KeyStoreError> {
    let json: MetadataJson = from_json(path, bytes)?;
    let kdf = match json.kdf {
        KdfJson::Argon2id {
            m_cost_kib,
            t_cost,
            p_cost,
            salt,
        } => {
            let params = Argon2Params {
                m_cost_kib,
                t_cost,
                p_cost,
            };
            params
                .to_argon2()
                .map_err(|err| KeyStoreError::corrupt(path, err.to_string()))?;
            Kdf::Argon2id {
                params,
                salt: decode_hex_array(path, "salt", &salt)?,
            }
        }
        KdfJson::Raw => Kdf::Raw,
    };
    Ok(Metadata {
        kdf,
        check: Sealed::decode(path, &json.check)?,
    })
}

/// Decrypts the check value of `metadata`: [`KeyStoreError::WrongPassphrase`] if `kek` is wrong.
pub(super) fn verify_check(
    kek: &Kek,
    path: &Path,
    metadata: &Metadata,
) -> Result<(), KeyStoreError> {
    let plaintext = kek
        .open(&check_aad(), &metadata.check)
        .ok_or(KeyStoreError::WrongPassphrase)?;
    if plaintext.as_slice() != CHECK_PLAINTEXT {
        return Err(KeyStoreError::corrupt(path, "unexpected check value"));
    }
    Ok(())
}

/// Encodes a key file holding `secret` (a PKCS#8 document, or the raw bytes of an AES-256-GCM
/// key) encrypted under `kek`, bound to `name` and `alg`.
pub(super) fn encode_key_file(
    kek: &Kek,
    rng: &SystemRandom,
    name: &KeyName,
    alg: KeyAlgorithm,
    secret: &[u8],
) -> Result<Vec<u8>, KeyStoreError> {
    let sealed = kek.seal(rng, &key_aad(name, alg), secret)?;
    let sealed = SealedJson::from(&sealed);
    to_json(&KeyFileJson {
        version: VERSION,
        algorithm: alg.as_str().to_owned(),
        nonce: sealed.nonce,
        ciphertext: sealed.ciphertext,
    })
}

/// Decodes and decrypts the key file of `name`, returning its algorithm and secret (a PKCS#8
/// document, or the raw bytes of an AES-256-GCM key), which the caller parses.
///
/// Any failure, including a failed decryption (the file was altered, renamed, or its algorithm
/// changed), is [`KeyStoreError::Corrupt`]: the key-encryption key was already checked.
pub(super) fn decode_key_file(
    kek: &Kek,
    path: &Path,
    name: &KeyName,
    bytes: &[u8],
) -> Result<(KeyAlgorithm, Zeroizing<Vec<u8>>), KeyStoreError> {
    let json: KeyFileJson = from_json(path, bytes)?;
    let alg = KeyAlgorithm::from_name(&json.algorithm)
        .ok_or_else(|| KeyStoreError::corrupt(path, "unknown key algorithm"))?;
    let sealed = Sealed::decode(
        path,
        &SealedJson {
            nonce: json.nonce,
            ciphertext: json.ciphertext,
        },
    )?;
    let secret = kek.open(&key_aad(name, alg), &sealed).ok_or_else(|| {
        KeyStoreError::corrupt(
            path,
            "key failed to decrypt (the file was altered, renamed or copied from another keystore)",
        )
    })?;
    Ok((alg, secret))
}

/// `"entente-keystore/v1" || 0x00 || name || 0x00 || algorithm`.
pub(super) fn key_aad(name: &KeyName, alg: KeyAlgorithm) -> Vec<u8> {
    [
        AAD_PREFIX,
        b"\0",
        name.as_str().as_bytes(),
        b"\0",
        alg.as_str().as_bytes(),
    ]
    .concat()
}

/// `"entente-keystore/v1" || 0x00 || "check"`.
pub(super) fn check_aad() -> Vec<u8> {
    [AAD_PREFIX, b"\0check"].concat()
}

// === impl Kek ===

impl Kek {
    pub(super) fn new(bytes: &[u8; KEK_LEN]) -> Result<Self, KeyStoreError> {
        let key = UnboundKey::new(&AES_256_GCM, bytes)
            .map_err(|_| KeyStoreError::Crypto("aes-256-gcm key setup failed"))?;
        Ok(Self(LessSafeKey::new(key)))
    }

    /// Encrypts `plaintext` under a random nonce.
    fn seal(
        &self,
        rng: &SystemRandom,
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Sealed, KeyStoreError> {
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill(&mut nonce)
            .map_err(|_| KeyStoreError::Crypto("random number generation failed"))?;
        // Room for the tag up front, so appending it never leaves a plaintext copy behind.
        let mut buf = Zeroizing::new(Vec::with_capacity(plaintext.len() + AES_256_GCM.tag_len()));
        buf.extend_from_slice(plaintext);
        self.0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut *buf,
            )
            .map_err(|_| KeyStoreError::Crypto("aes-256-gcm encryption failed"))?;
        Ok(Sealed {
            nonce,
            ciphertext: buf.to_vec(),
        })
    }

    /// Decrypts `sealed`, or `None` if it fails authentication.
    fn open(&self, aad: &[u8], sealed: &Sealed) -> Option<Zeroizing<Vec<u8>>> {
        let mut buf = Zeroizing::new(sealed.ciphertext.clone());
        let len = self
            .0
            .open_in_place(
                Nonce::assume_unique_for_key(sealed.nonce),
                Aad::from(aad),
                buf.as_mut_slice(),
            )
            .ok()?
            .len();
        buf.truncate(len);
        Some(buf)
    }
}

// === JSON ===

/// A nonce and an AES-256-GCM ciphertext with its 16-byte tag appended.
#[derive(Debug)]
struct Sealed {
    nonce: [u8; NONCE_LEN],
    ciphertext: Vec<u8>,
}

impl Sealed {
    fn decode(path: &Path, json: &SealedJson) -> Result<Self, KeyStoreError> {
        let ciphertext = hex::decode(&json.ciphertext)
            .map_err(|_| KeyStoreError::corrupt(path, "`ciphertext` is not hex"))?;
        if ciphertext.len() < AES_256_GCM.tag_len() {
            return Err(KeyStoreError::corrupt(path, "`ciphertext` is too short"));
        }
        Ok(Self {
            nonce: decode_hex_array(path, "nonce", &json.nonce)?,
            ciphertext,
        })
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetadataJson {
    version: u64,
    kdf: KdfJson,
    check: SealedJson,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "alg")]
enum KdfJson {
    #[serde(rename = "argon2id")]
    Argon2id {
        m_cost_kib: u32,
        t_cost: u32,
        p_cost: u32,
        salt: String,
    },
    #[serde(rename = "raw")]
    Raw,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SealedJson {
    nonce: String,
    ciphertext: String,
}

impl From<&Sealed> for SealedJson {
    fn from(sealed: &Sealed) -> Self {
        Self {
            nonce: hex::encode(sealed.nonce),
            ciphertext: hex::encode(&sealed.ciphertext),
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFileJson {
    version: u64,
    algorithm: String,
    nonce: String,
    ciphertext: String,
}

/// Just the version, read first so a newer format is reported as such, not as corrupt.
#[derive(Deserialize)]
struct VersionJson {
    version: u64,
}

fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>, KeyStoreError> {
    let mut bytes = serde_json::to_vec_pretty(value)
        .map_err(|_| KeyStoreError::Internal("json encoding failed"))?;
    bytes.push(b'\n');
    Ok(bytes)
}

fn from_json<T: for<'de> Deserialize<'de>>(path: &Path, bytes: &[u8]) -> Result<T, KeyStoreError> {
    let version: VersionJson = serde_json::from_slice(bytes)
        .map_err(|err| KeyStoreError::corrupt(path, format!("invalid json: {err}")))?;
    if version.version != VERSION {
        return Err(KeyStoreError::UnsupportedVersion {
            path: path.to_owned(),
            version: version.version,
        });
    }
    serde_json::from_slice(bytes)
        .map_err(|err| KeyStoreError::corrupt(path, format!("invalid json: {err}")))
}

fn decode_hex_array<const N: usize>(
    path: &Path,
    field: &str,
    hex_str: &str,
) -> Result<[u8; N], KeyStoreError> {
    let mut out = [0u8; N];
    hex::decode_to_slice(hex_str, &mut out).map_err(|_| {
        KeyStoreError::corrupt(path, format!("`{field}` is not {N} hex-encoded bytes"))
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )]

    use super::*;

    #[test]
    fn aads_are_exact() {
        let name = KeyName::new("ca-root").unwrap();
        assert_eq!(
            key_aad(&name, KeyAlgorithm::EcdsaP256Sha256),
            b"entente-keystore/v1\0ca-root\0ecdsa-p256-sha256"
        );
        assert_eq!(
            key_aad(&name, KeyAlgorithm::Aes256Gcm),
            b"entente-keystore/v1\0ca-root\0aes256-gcm"
        );
        assert_eq!(check_aad(), b"entente-keystore/v1\0check");
    }

    #[test]
    fn seal_open_round_trip_and_aad_binding() {
        let kek = Kek::new(&[7u8; KEK_LEN]).unwrap();
        let rng = SystemRandom::new();
        let sealed = kek.seal(&rng, b"aad", b"secret").unwrap();
        assert_eq!(sealed.ciphertext.len(), 6 + 16);
        assert_eq!(kek.open(b"aad", &sealed).unwrap().as_slice(), b"secret");
        assert!(kek.open(b"other", &sealed).is_none());
        let other = Kek::new(&[8u8; KEK_LEN]).unwrap();
        assert!(other.open(b"aad", &sealed).is_none());
    }

    #[test]
    fn newer_version_is_reported_as_such() {
        let err =
            decode_metadata(Path::new("k.json"), br#"{"version": 2, "future": true}"#).unwrap_err();
        assert!(matches!(
            err,
            KeyStoreError::UnsupportedVersion { version: 2, .. }
        ));
    }

    #[test]
    fn out_of_range_kdf_params_are_corrupt() {
        let json = br#"{"version":1,"kdf":{"alg":"argon2id","m_cost_kib":4294967295,
            "t_cost":1,"p_cost":1,"salt":"00000000000000000000000000000000"},
            "check":{"nonce":"000000000000000000000000","ciphertext":"00000000000000000000000000000000"}}"#;
        let err = decode_metadata(Path::new("keystore.json"), json).unwrap_err();
        assert!(matches!(err, KeyStoreError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn kek_debug_is_redacted() {
        let kek = Kek::new(&[0xAB; KEK_LEN]).unwrap();
        assert_eq!(format!("{kek:?}"), "Kek(<redacted>)");
    }
}
