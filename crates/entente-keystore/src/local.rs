//! The `local` backend: private and secret keys in files, encrypted under the store's
//! key-encryption key (the store KEK) that comes from a passphrase (through Argon2id) or directly
//! from the environment.
//!
//! Keys are decrypted once, when the store is opened, and kept in memory as parsed aws-lc-rs key
//! pairs and AES-256-GCM keys, so [`KeyStore::sign`], [`KeyStore::encrypt`] and
//! [`KeyStore::decrypt`] read no files; the decrypted key bytes are zeroized once loaded. A
//! store directory belongs to one process at a time: keys another process adds after
//! [`LocalKeyStore::open`] are not seen until reopening.
//!
//! AES-256-GCM keys ([`KeyAlgorithm::Aes256Gcm`]) are key-encryption keys held for callers:
//! [`KeyStore::encrypt`] seals with aws-lc-rs under a nonce of 12 random bytes from the system
//! generator, with the caller's associated data as the AAD, and returns
//! `nonce || ciphertext || 16-byte tag`.
//!
//! # Unlocking
//!
//! [`Unlock::from_env`] reads [`KEY_ENV`] (`ENTENTE_KEYSTORE_KEY`, 64 hex characters: the KEK
//! itself) or else [`PASSPHRASE_ENV`] (`ENTENTE_KEYSTORE_PASSPHRASE`). A store remembers which
//! kind created it and refuses the other kind with [`KeyStoreError::Unlock`].
//!
//! # Format, version 1
//!
//! ```text
//! <dir>/                 mode 0700
//!   keystore.json        mode 0600, metadata
//!   keys/                mode 0700
//!     <name>.key         mode 0600, one file per key
//! ```
//!
//! `keystore.json`, with every binary value lowercase hex:
//!
//! ```json
//! {
//!   "version": 1,
//!   "kdf": { "alg": "argon2id", "m_cost_kib": 65536, "t_cost": 3, "p_cost": 1,
//!            "salt": "<16 random bytes>" },
//!   "check": { "nonce": "<12 bytes>", "ciphertext": "<ciphertext || 16-byte tag>" }
//! }
//! ```
//!
//! - `kdf` is `{"alg": "argon2id", ...}` for a passphrase: KEK = Argon2id (version 0x13) of the
//!   UTF-8 passphrase with `salt` and the given memory (KiB), time and lanes, 32 bytes of output.
//!   It is `{"alg": "raw"}` for a key from [`KEY_ENV`]: the 32-byte key is the KEK.
//! - `check` is AES-256-GCM under the KEK of the ASCII string `entente-keystore check v1`, with
//!   AAD `entente-keystore/v1 || 0x00 || check`. Opening decrypts it before touching any key;
//!   failure means [`KeyStoreError::WrongPassphrase`].
//!
//! `keys/<name>.key`:
//!
//! ```json
//! { "version": 1, "algorithm": "ed25519", "nonce": "<12 bytes>",
//!   "ciphertext": "<ciphertext || 16-byte tag>" }
//! ```
//!
//! - `algorithm` is `ecdsa-p256-sha256`, `ed25519` or `aes256-gcm` ([`KeyAlgorithm::as_str`]).
//! - The plaintext is, for a signing key, its PKCS#8 document as aws-lc-rs writes it (v1 for
//!   ECDSA P-256, v2 with the public key for Ed25519), and for an `aes256-gcm` key the 32 raw key
//!   bytes. It is encrypted with AES-256-GCM under the store KEK with a random nonce and AAD
//!   `entente-keystore/v1 || 0x00 || <name> || 0x00 || <algorithm>`. A file that is altered,
//!   renamed, copied from a store of another KEK, or whose `algorithm` is changed fails to
//!   decrypt and the store refuses to open ([`KeyStoreError::Corrupt`]), as does a decrypted key
//!   that is not a valid PKCS#8 key or not 32 bytes. Nothing binds a file to one store: stores
//!   unlocked by the same raw key (`Unlock::Key`) open each other's files, and a deleted file
//!   put back under its name is a key again (writing to `keys/` takes the store's user).
//! - Key names can't start with `.`, so entries of `keys/` starting with `.` are ignored (they
//!   are temporary files left by an interrupted write); any other entry must be a valid key file.
//!
//! Every file is written atomically and never replaces an existing one: a temporary file in the
//! same directory, created with mode 0600, is written and fsynced, hard-linked to its final name
//! (which fails if that name exists) and unlinked, and the directory is fsynced. Keys are never
//! rewritten; [`KeyStore::delete`] unlinks the file.
//!
//! Opening refuses ([`KeyStoreError::InsecurePermissions`]) `keystore.json` or a key file that
//! group or others can access in any way, and the two directories if group or others can write
//! to them; and ([`KeyStoreError::ForeignOwner`]) any of them owned by another user than the
//! one running the process, unless by root (run as root in a directory another user made, that
//! user could replace what is in it). Symbolic links to key or metadata files are refused as
//! corrupt.

pub mod files;
mod format;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _,
};
use zeroize::Zeroizing;

use self::files::Written;
use self::format::{Kdf, Kek};
use crate::{KeyAlgorithm, KeyName, KeyStore, KeyStoreError, PublicKey, SEALED_OVERHEAD};

/// The environment variable holding a 32-byte KEK as 64 hex characters; wins over
/// [`PASSPHRASE_ENV`].
pub const KEY_ENV: &str = "ENTENTE_KEYSTORE_KEY";
/// The environment variable holding the passphrase.
pub const PASSPHRASE_ENV: &str = "ENTENTE_KEYSTORE_PASSPHRASE";

/// The name of the metadata file in a store directory.
pub const METADATA_FILE: &str = "keystore.json";
/// The name of the key directory in a store directory.
pub const KEYS_DIR: &str = "keys";
/// The extension of key files: `keys/<name>.key`.
pub const KEY_FILE_EXTENSION: &str = "key";

/// The secret that unlocks a [`LocalKeyStore`]. Its `Debug` output shows only the kind.
#[derive(Clone)]
pub enum Unlock {
    /// A passphrase, stretched into the KEK with Argon2id.
    Passphrase(Zeroizing<String>),
    /// The 32-byte KEK itself.
    Key(Zeroizing<[u8; 32]>),
}

/// Argon2id cost parameters for a passphrase-protected store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Argon2Params {
    /// Memory in KiB.
    pub m_cost_kib: u32,
    /// Number of passes.
    pub t_cost: u32,
    /// Degree of parallelism (lanes).
    pub p_cost: u32,
}

/// A key store in a local directory; see the [module docs](self) for the format.
pub struct LocalKeyStore {
    dir: PathBuf,
    kdf_alg: &'static str,
    kek: Kek,
    rng: SystemRandom,
    keys: RwLock<BTreeMap<KeyName, LoadedKey>>,
}

// === impl Unlock ===

impl Unlock {
    /// A passphrase unlock.
    pub fn passphrase(passphrase: impl Into<String>) -> Self {
        Self::Passphrase(Zeroizing::new(passphrase.into()))
    }

    /// Reads the unlock secret from the environment.
    ///
    /// [`KEY_ENV`] (64 hex characters, surrounding whitespace ignored) takes precedence over
    /// [`PASSPHRASE_ENV`]; one set but empty (or blank, for the key) gives way to the other.
    /// Returns `Ok(None)` if neither is set, and [`KeyStoreError::Unlock`] for a malformed key,
    /// a value that is not UTF-8, or variables set with nothing in them (a script that meant
    /// to give a secret and gave none must not start with keys kept beside the store); the
    /// message never contains the value.
    pub fn from_env() -> Result<Option<Self>, KeyStoreError> {
        Self::from_values(std::env::var_os(KEY_ENV), std::env::var_os(PASSPHRASE_ENV))
    }

    fn from_values(
        key: Option<OsString>,
        passphrase: Option<OsString>,
    ) -> Result<Option<Self>, KeyStoreError> {
        let set: Vec<&str> = [
            (KEY_ENV, key.is_some()),
            (PASSPHRASE_ENV, passphrase.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect();
        if let Some(key) = key {
            let key = Zeroizing::new(key.into_encoded_bytes());
            let hex_key = key.trim_ascii();
            if !hex_key.is_empty() {
                let mut bytes = Zeroizing::new([0u8; 32]);
                if hex::decode_to_slice(hex_key, bytes.as_mut_slice()).is_err() {
                    return Err(KeyStoreError::Unlock(format!(
                        "`{KEY_ENV}` must be 64 hex characters (a 32-byte key)"
                    )));
                }
                return Ok(Some(Self::Key(bytes)));
            }
        }
        if let Some(passphrase) = passphrase {
            let passphrase = Zeroizing::new(passphrase.into_encoded_bytes());
            if !passphrase.is_empty() {
                let passphrase = std::str::from_utf8(&passphrase).map_err(|_| {
                    KeyStoreError::Unlock(format!("`{PASSPHRASE_ENV}` is not valid UTF-8"))
                })?;
                return Ok(Some(Self::passphrase(passphrase)));
            }
        }
        if set.is_empty() {
            return Ok(None);
        }
        Err(KeyStoreError::Unlock(format!(
            "`{}` {} set but empty: give the key store's key or passphrase, or unset it",
            set.join("` and `"),
            if set.len() == 1 { "is" } else { "are" }
        )))
    }

    /// The fewest characters (Unicode scalar values) of a passphrase a new store is created
    /// with. A store made before this bound opens with the passphrase it was made with.
    pub const MIN_NEW_PASSPHRASE_CHARS: usize = 12;

    /// Rejects a passphrase too short to protect a new store: Argon2id slows a guess down, it
    /// does not make a short passphrase a strong one.
    fn check_new(&self) -> Result<(), KeyStoreError> {
        self.check()?;
        match self {
            Self::Passphrase(passphrase)
                if passphrase.chars().count() < Self::MIN_NEW_PASSPHRASE_CHARS =>
            {
                Err(KeyStoreError::Unlock(format!(
                    "a new key store's passphrase needs at least {} characters: choose a longer \
                     one, or give a random key",
                    Self::MIN_NEW_PASSPHRASE_CHARS
                )))
            }
            _ => Ok(()),
        }
    }

    /// Rejects an empty passphrase.
    fn check(&self) -> Result<(), KeyStoreError> {
        match self {
            Self::Passphrase(passphrase) if passphrase.is_empty() => {
                Err(KeyStoreError::Unlock("the passphrase is empty".to_owned()))
            }
            _ => Ok(()),
        }
    }
}

impl fmt::Debug for Unlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Passphrase(_) => f.write_str("Unlock::Passphrase(<redacted>)"),
            Self::Key(_) => f.write_str("Unlock::Key(<redacted>)"),
        }
    }
}

// === impl Argon2Params ===

impl Argon2Params {
    /// The most memory accepted, 4 GiB, so a damaged metadata file can't exhaust memory.
    pub const MAX_M_COST_KIB: u32 = 4 * 1024 * 1024;
    /// The most passes accepted.
    pub const MAX_T_COST: u32 = 64;
    /// The most lanes accepted.
    pub const MAX_P_COST: u32 = 64;

    /// Tiny parameters (8 KiB, one pass) that make tests fast.
    ///
    /// **This weakens security**: a passphrase protected this way falls to brute force cheaply.
    /// Never use it outside tests.
    pub fn danger_fast_for_tests() -> Self {
        Self {
            m_cost_kib: 8,
            t_cost: 1,
            p_cost: 1,
        }
    }

    /// Converts to `argon2` parameters with a 32-byte output, checking the ranges.
    fn to_argon2(self) -> Result<argon2::Params, KeyStoreError> {
        if self.m_cost_kib > Self::MAX_M_COST_KIB
            || self.t_cost > Self::MAX_T_COST
            || self.p_cost > Self::MAX_P_COST
        {
            return Err(KeyStoreError::InvalidParams(format!(
                "at most {} KiB, {} passes and {} lanes are allowed",
                Self::MAX_M_COST_KIB,
                Self::MAX_T_COST,
                Self::MAX_P_COST
            )));
        }
        argon2::Params::new(
            self.m_cost_kib,
            self.t_cost,
            self.p_cost,
            Some(format::KEK_LEN),
        )
        .map_err(|err| KeyStoreError::InvalidParams(err.to_string()))
    }
}

impl Default for Argon2Params {
    /// 64 MiB, three passes, one lane.
    fn default() -> Self {
        Self {
            m_cost_kib: 64 * 1024,
            t_cost: 3,
            p_cost: 1,
        }
    }
}

// === impl LocalKeyStore ===

impl LocalKeyStore {
    /// Creates an empty store in `dir`, creating `dir` (mode 0700) if it is missing.
    ///
    /// `params` is used only with a passphrase, which must have at least
    /// [`Unlock::MIN_NEW_PASSPHRASE_CHARS`] characters ([`KeyStoreError::Unlock`] otherwise).
    /// Fails with [`KeyStoreError::StoreExists`] if `dir` already holds a store (or orphaned key
    /// files).
    pub fn create(
        dir: &Path,
        unlock: &Unlock,
        params: Argon2Params,
    ) -> Result<Self, KeyStoreError> {
        unlock.check_new()?;
        let rng = SystemRandom::new();
        let kdf = match unlock {
            Unlock::Passphrase(_) => {
                params.to_argon2()?;
                let mut salt = [0u8; format::SALT_LEN];
                rng.fill(&mut salt)
                    .map_err(|_| KeyStoreError::Crypto("random number generation failed"))?;
                Kdf::Argon2id { params, salt }
            }
            Unlock::Key(_) => Kdf::Raw,
        };

        files::create_private_dir_all(dir)?;
        files::check_dir(dir)?;
        let exists = || KeyStoreError::StoreExists {
            path: dir.to_owned(),
        };
        if dir.join(METADATA_FILE).exists() {
            return Err(exists());
        }
        let keys_dir = dir.join(KEYS_DIR);
        if files::create_private_dir(&keys_dir)? == Written::AlreadyExists {
            files::check_dir(&keys_dir)?;
            if !key_entries(&keys_dir)?.is_empty() {
                return Err(exists());
            }
        }

        let kek = format::derive_kek(unlock, &kdf)?;
        let metadata = format::encode_metadata(&kdf, &kek, &rng)?;
        if files::write_new(dir, METADATA_FILE, &metadata, &rng)? == Written::AlreadyExists {
            return Err(exists());
        }
        Ok(Self {
            dir: dir.to_owned(),
            kdf_alg: kdf.alg(),
            kek,
            rng,
            keys: RwLock::new(BTreeMap::new()),
        })
    }

    /// Opens the store in `dir`, decrypting every key into memory.
    ///
    /// Fails with [`KeyStoreError::StoreNotFound`] if there is none,
    /// [`KeyStoreError::WrongPassphrase`] if `unlock` is wrong (checked before any key is read),
    /// [`KeyStoreError::Unlock`] if it is of the wrong kind, and
    /// [`KeyStoreError::InsecurePermissions`] or [`KeyStoreError::Corrupt`] for a bad file.
    pub fn open(dir: &Path, unlock: &Unlock) -> Result<Self, KeyStoreError> {
        unlock.check()?;
        let metadata_path = dir.join(METADATA_FILE);
        let bytes = files::read_private(&metadata_path).map_err(|err| {
            if files::is_not_found(&err) {
                KeyStoreError::StoreNotFound {
                    path: dir.to_owned(),
                }
            } else {
                err
            }
        })?;
        let metadata = format::decode_metadata(&metadata_path, &bytes)?;
        let kek = format::derive_kek(unlock, &metadata.kdf)?;
        format::verify_check(&kek, &metadata_path, &metadata)?;

        files::check_dir(dir)?;
        let keys_dir = dir.join(KEYS_DIR);
        files::check_dir(&keys_dir).map_err(|err| {
            if files::is_not_found(&err) {
                KeyStoreError::corrupt(&keys_dir, "the key directory is missing")
            } else {
                err
            }
        })?;
        let mut keys = BTreeMap::new();
        for (name, path) in key_entries(&keys_dir)? {
            let bytes = files::read_private(&path)?;
            let (alg, secret) = format::decode_key_file(&kek, &path, &name, &bytes)?;
            // `secret` is zeroized when dropped, at the end of this iteration.
            let key = SecretKey::from_stored(alg, &secret).ok_or_else(|| {
                KeyStoreError::corrupt(
                    &path,
                    format!("the decrypted key is not a valid `{alg}` key"),
                )
            })?;
            keys.insert(name, LoadedKey::new(key));
        }
        Ok(Self {
            dir: dir.to_owned(),
            kdf_alg: metadata.kdf.alg(),
            kek,
            rng: SystemRandom::new(),
            keys: RwLock::new(keys),
        })
    }

    /// Opens the store in `dir`, or creates it if there is none; `true` means it was created.
    pub fn open_or_create(
        dir: &Path,
        unlock: &Unlock,
        params: Argon2Params,
    ) -> Result<(Self, bool), KeyStoreError> {
        match Self::open(dir, unlock) {
            Err(KeyStoreError::StoreNotFound { .. }) => {}
            opened => return opened.map(|store| (store, false)),
        }
        match Self::create(dir, unlock, params) {
            // Someone else created it in between.
            Err(KeyStoreError::StoreExists { .. }) => Self::open(dir, unlock).map(|s| (s, false)),
            created => created.map(|store| (store, true)),
        }
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of the file holding `name`: `<dir>/keys/<name>.key`.
    pub fn key_path(&self, name: &KeyName) -> PathBuf {
        key_path(&self.dir.join(KEYS_DIR), name)
    }

    fn read_keys(
        &self,
    ) -> Result<RwLockReadGuard<'_, BTreeMap<KeyName, LoadedKey>>, KeyStoreError> {
        self.keys
            .read()
            .map_err(|_| KeyStoreError::Internal("key cache lock poisoned"))
    }

    fn write_keys(
        &self,
    ) -> Result<RwLockWriteGuard<'_, BTreeMap<KeyName, LoadedKey>>, KeyStoreError> {
        self.keys
            .write()
            .map_err(|_| KeyStoreError::Internal("key cache lock poisoned"))
    }

    fn not_found(name: &KeyName) -> KeyStoreError {
        KeyStoreError::KeyNotFound {
            name: name.to_string(),
        }
    }
}

impl KeyStore for LocalKeyStore {
    fn backend(&self) -> &'static str {
        "local"
    }

    fn generate(&self, name: &KeyName, alg: KeyAlgorithm) -> Result<PublicKey, KeyStoreError> {
        let exists = || KeyStoreError::KeyExists {
            name: name.to_string(),
        };
        if self.read_keys()?.contains_key(name) {
            return Err(exists());
        }
        let secret = SecretKey::generate(alg, &self.rng)?;
        let key = SecretKey::from_stored(alg, &secret)
            .ok_or(KeyStoreError::Crypto("a generated key failed to parse"))?;
        let file = format::encode_key_file(&self.kek, &self.rng, name, alg, &secret)?;
        drop(secret);
        let keys_dir = self.dir.join(KEYS_DIR);
        let file_name = format!("{name}.{KEY_FILE_EXTENSION}");
        // The no-clobber write settles races between threads and processes alike.
        if files::write_new(&keys_dir, &file_name, &file, &self.rng)? == Written::AlreadyExists {
            return Err(exists());
        }
        let key = LoadedKey::new(key);
        let public = key.public.clone();
        self.write_keys()?.insert(name.clone(), key);
        Ok(public)
    }

    fn public_key(&self, name: &KeyName) -> Result<PublicKey, KeyStoreError> {
        self.read_keys()?
            .get(name)
            .map(|key| key.public.clone())
            .ok_or_else(|| Self::not_found(name))
    }

    fn sign(&self, name: &KeyName, msg: &[u8]) -> Result<Vec<u8>, KeyStoreError> {
        let keys = self.read_keys()?;
        let key = keys.get(name).ok_or_else(|| Self::not_found(name))?;
        key.secret.sign(name, &self.rng, msg)
    }

    fn encrypt(
        &self,
        name: &KeyName,
        plaintext: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, KeyStoreError> {
        let keys = self.read_keys()?;
        let key = keys.get(name).ok_or_else(|| Self::not_found(name))?;
        let aes = key.secret.aes(name)?;
        crate::check_encrypt_input(plaintext, aad)?;
        seal(aes, &self.rng, plaintext, aad)
    }

    fn decrypt(
        &self,
        name: &KeyName,
        sealed: &[u8],
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeyStoreError> {
        let keys = self.read_keys()?;
        let key = keys.get(name).ok_or_else(|| Self::not_found(name))?;
        let aes = key.secret.aes(name)?;
        crate::check_decrypt_input(sealed, aad)?;
        open(aes, sealed, aad)
    }

    fn contains(&self, name: &KeyName) -> Result<bool, KeyStoreError> {
        Ok(self.read_keys()?.contains_key(name))
    }

    fn list(&self) -> Result<Vec<(KeyName, KeyAlgorithm)>, KeyStoreError> {
        Ok(self
            .read_keys()?
            .iter()
            .map(|(name, key)| (name.clone(), key.public.algorithm))
            .collect())
    }

    fn delete(&self, name: &KeyName) -> Result<(), KeyStoreError> {
        let mut keys = self.write_keys()?;
        if !keys.contains_key(name) {
            return Err(Self::not_found(name));
        }
        files::remove(&self.key_path(name))?;
        keys.remove(name);
        Ok(())
    }
}

impl fmt::Debug for LocalKeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("LocalKeyStore");
        debug.field("dir", &self.dir).field("kdf", &self.kdf_alg);
        match self.keys.try_read() {
            Ok(keys) => debug.field(
                "keys",
                &keys.keys().map(KeyName::as_str).collect::<Vec<_>>(),
            ),
            Err(_) => debug.field("keys", &"<locked>"),
        };
        debug.finish_non_exhaustive()
    }
}

// === helpers ===

/// A decrypted key, ready to use.
struct LoadedKey {
    secret: SecretKey,
    public: PublicKey,
}

impl LoadedKey {
    fn new(secret: SecretKey) -> Self {
        let public = secret.public_key();
        Self { secret, public }
    }
}

/// A parsed aws-lc-rs key of any algorithm.
enum SecretKey {
    Ecdsa(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
    Aes256Gcm(LessSafeKey),
}

/// The length of an AES-256-GCM key.
const AES_KEY_LEN: usize = 32;

// The output format of `KeyStore::encrypt` is aws-lc-rs's nonce and tag, unchanged.
const _: () = assert!(aws_lc_rs::aead::NONCE_LEN == crate::NONCE_LEN);
const _: () = assert!(aws_lc_rs::aead::MAX_TAG_LEN == crate::TAG_LEN);

impl SecretKey {
    /// A fresh key, as its key file holds it: a PKCS#8 document for a signing key, 32 random
    /// bytes for AES-256-GCM.
    fn generate(
        alg: KeyAlgorithm,
        rng: &SystemRandom,
    ) -> Result<Zeroizing<Vec<u8>>, KeyStoreError> {
        let failed = |_| KeyStoreError::Crypto("key generation failed");
        // The PKCS#8 documents zeroize themselves on drop.
        match alg {
            KeyAlgorithm::EcdsaP256Sha256 => {
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, rng)
                    .map(|pkcs8| Zeroizing::new(pkcs8.as_ref().to_vec()))
                    .map_err(failed)
            }
            KeyAlgorithm::Ed25519 => Ed25519KeyPair::generate_pkcs8(rng)
                .map(|pkcs8| Zeroizing::new(pkcs8.as_ref().to_vec()))
                .map_err(failed),
            KeyAlgorithm::Aes256Gcm => {
                let mut key = Zeroizing::new(vec![0u8; AES_KEY_LEN]);
                rng.fill(&mut key).map_err(failed)?;
                Ok(key)
            }
        }
    }

    /// Parses a key as its key file holds it (see [`generate`](Self::generate)).
    fn from_stored(alg: KeyAlgorithm, secret: &[u8]) -> Option<Self> {
        match alg {
            KeyAlgorithm::EcdsaP256Sha256 => {
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, secret)
                    .ok()
                    .map(Self::Ecdsa)
            }
            KeyAlgorithm::Ed25519 => Ed25519KeyPair::from_pkcs8(secret).ok().map(Self::Ed25519),
            KeyAlgorithm::Aes256Gcm => {
                if secret.len() != AES_KEY_LEN {
                    return None;
                }
                let key = UnboundKey::new(&AES_256_GCM, secret).ok()?;
                Some(Self::Aes256Gcm(LessSafeKey::new(key)))
            }
        }
    }

    fn algorithm(&self) -> KeyAlgorithm {
        match self {
            Self::Ecdsa(_) => KeyAlgorithm::EcdsaP256Sha256,
            Self::Ed25519(_) => KeyAlgorithm::Ed25519,
            Self::Aes256Gcm(_) => KeyAlgorithm::Aes256Gcm,
        }
    }

    /// The public key; empty for AES-256-GCM.
    fn public_key(&self) -> PublicKey {
        let bytes = match self {
            Self::Ecdsa(pair) => pair.public_key().as_ref().to_vec(),
            Self::Ed25519(pair) => pair.public_key().as_ref().to_vec(),
            Self::Aes256Gcm(_) => Vec::new(),
        };
        PublicKey {
            algorithm: self.algorithm(),
            bytes,
        }
    }

    /// Signs with the key `name`, which this is.
    fn sign(
        &self,
        name: &KeyName,
        rng: &SystemRandom,
        msg: &[u8],
    ) -> Result<Vec<u8>, KeyStoreError> {
        match self {
            Self::Ecdsa(pair) => pair
                .sign(rng, msg)
                .map(|sig| sig.as_ref().to_vec())
                .map_err(|_| KeyStoreError::Crypto("ecdsa signing failed")),
            Self::Ed25519(pair) => pair
                .try_sign(msg)
                .map(|sig| sig.as_ref().to_vec())
                .map_err(|_| KeyStoreError::Crypto("ed25519 signing failed")),
            Self::Aes256Gcm(_) => Err(KeyStoreError::not_signing(name, self.algorithm())),
        }
    }

    /// The AES-256-GCM key, or [`KeyStoreError::WrongAlgorithm`] naming `name`, which this is.
    fn aes(&self, name: &KeyName) -> Result<&LessSafeKey, KeyStoreError> {
        match self {
            Self::Aes256Gcm(key) => Ok(key),
            Self::Ecdsa(_) | Self::Ed25519(_) => {
                Err(KeyStoreError::not_aes(name, self.algorithm()))
            }
        }
    }
}

/// AES-256-GCM under a random nonce: `nonce || ciphertext || tag`, as [`KeyStore::encrypt`]
/// promises. The caller has checked the lengths.
fn seal(
    key: &LessSafeKey,
    rng: &SystemRandom,
    plaintext: &[u8],
    aad: &[u8],
) -> Result<Vec<u8>, KeyStoreError> {
    let mut nonce = [0u8; crate::NONCE_LEN];
    rng.fill(&mut nonce)
        .map_err(|_| KeyStoreError::Crypto("random number generation failed"))?;
    // Sized for the tag up front so nothing is reallocated, and zeroized if sealing fails
    // halfway with plaintext in it.
    let mut out = Zeroizing::new(Vec::with_capacity(plaintext.len() + SEALED_OVERHEAD));
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let in_out = out
        .split_first_chunk_mut::<{ crate::NONCE_LEN }>()
        .map(|(_, in_out)| in_out)
        .ok_or(KeyStoreError::Internal(
            "sealing buffer shorter than a nonce",
        ))?;
    let tag = key
        .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), in_out)
        .map_err(|_| KeyStoreError::Crypto("aes-256-gcm encryption failed"))?;
    out.extend_from_slice(tag.as_ref());
    Ok(std::mem::take(&mut *out))
}

/// The inverse of [`seal`]: [`KeyStoreError::Decrypt`] for anything that fails authentication.
fn open(key: &LessSafeKey, sealed: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyStoreError> {
    let (nonce, _) = sealed
        .split_first_chunk::<{ crate::NONCE_LEN }>()
        .ok_or(KeyStoreError::Decrypt)?;
    // Whatever aws-lc-rs writes here, including output of a failed open, is zeroized on drop.
    let mut buf = Zeroizing::new(sealed.to_vec());
    let len = key
        .open_within(
            Nonce::assume_unique_for_key(*nonce),
            Aad::from(aad),
            &mut buf,
            crate::NONCE_LEN..,
        )
        .map_err(|_| KeyStoreError::Decrypt)?
        .len();
    buf.truncate(len);
    Ok(buf)
}

fn key_path(keys_dir: &Path, name: &KeyName) -> PathBuf {
    keys_dir.join(format!("{name}.{KEY_FILE_EXTENSION}"))
}

/// The key files in `keys_dir` with their names, skipping entries that start with `.`.
///
/// Anything else that is not `<valid name>.key` makes the store corrupt.
fn key_entries(keys_dir: &Path) -> Result<Vec<(KeyName, PathBuf)>, KeyStoreError> {
    let entries = std::fs::read_dir(keys_dir).map_err(|err| KeyStoreError::io(keys_dir, err))?;
    let mut keys = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|err| KeyStoreError::io(keys_dir, err))?;
        let path = entry.path();
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            return Err(KeyStoreError::corrupt(
                &path,
                "unexpected file in the key directory",
            ));
        };
        if file_name.starts_with('.') {
            continue;
        }
        let name = file_name
            .strip_suffix(KEY_FILE_EXTENSION)
            .and_then(|stem| stem.strip_suffix('.'))
            .and_then(|stem| KeyName::new(stem).ok())
            .ok_or_else(|| KeyStoreError::corrupt(&path, "unexpected file in the key directory"))?;
        keys.push((name, path));
    }
    Ok(keys)
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

    fn os(s: &str) -> Option<OsString> {
        Some(OsString::from(s))
    }

    const HEX_KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn env_key_wins_over_passphrase() {
        let unlock = Unlock::from_values(os(HEX_KEY), os("pass"))
            .unwrap()
            .unwrap();
        let Unlock::Key(key) = unlock else {
            panic!("expected a key")
        };
        assert_eq!(key[31], 0x1f);
    }

    #[test]
    fn env_key_whitespace_trimmed_and_uppercase_accepted() {
        let upper = format!("  {}\n", HEX_KEY.to_uppercase());
        let unlock = Unlock::from_values(os(&upper), None).unwrap().unwrap();
        assert!(matches!(unlock, Unlock::Key(_)));
    }

    #[test]
    fn env_passphrase_used_without_key() {
        let unlock = Unlock::from_values(os(""), os("p a s s")).unwrap().unwrap();
        let Unlock::Passphrase(passphrase) = unlock else {
            panic!("expected a passphrase")
        };
        assert_eq!(passphrase.as_str(), "p a s s");
    }

    #[test]
    fn env_nothing_set_is_none() {
        assert!(Unlock::from_values(None, None).unwrap().is_none());
    }

    #[test]
    fn env_set_but_empty_is_an_error() {
        for (key, passphrase, named) in [
            (
                os(" "),
                os(""),
                "`ENTENTE_KEYSTORE_KEY` and `ENTENTE_KEYSTORE_PASSPHRASE` are",
            ),
            (os(""), None, "`ENTENTE_KEYSTORE_KEY` is"),
            (None, os(""), "`ENTENTE_KEYSTORE_PASSPHRASE` is"),
        ] {
            let err = Unlock::from_values(key, passphrase).unwrap_err();
            assert!(matches!(err, KeyStoreError::Unlock(_)), "{err:?}");
            assert!(err.to_string().contains(named), "{err}");
        }
    }

    #[test]
    fn env_malformed_key_is_a_clear_error_without_the_value() {
        for bad in [
            "abc",
            &HEX_KEY[..62],
            &format!("{HEX_KEY}00"),
            &HEX_KEY.replace('a', "g"),
        ] {
            let err = Unlock::from_values(os(bad), os("pass")).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, KeyStoreError::Unlock(_)));
            assert!(msg.contains("ENTENTE_KEYSTORE_KEY"), "{msg}");
            assert!(msg.contains("64 hex characters"), "{msg}");
            assert!(!msg.contains(bad.trim()), "{msg}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn env_non_utf8_passphrase_is_an_error() {
        use std::os::unix::ffi::OsStringExt;
        let bad = OsString::from_vec(vec![0xff, 0xfe]);
        let err = Unlock::from_values(None, Some(bad)).unwrap_err();
        assert!(matches!(err, KeyStoreError::Unlock(_)));
    }

    #[test]
    fn params_out_of_range_are_rejected() {
        let too_big = Argon2Params {
            m_cost_kib: Argon2Params::MAX_M_COST_KIB + 1,
            ..Argon2Params::default()
        };
        assert!(matches!(
            too_big.to_argon2(),
            Err(KeyStoreError::InvalidParams(_))
        ));
        let too_small = Argon2Params {
            m_cost_kib: 1,
            t_cost: 1,
            p_cost: 1,
        };
        assert!(matches!(
            too_small.to_argon2(),
            Err(KeyStoreError::InvalidParams(_))
        ));
        Argon2Params::default().to_argon2().unwrap();
        Argon2Params::danger_fast_for_tests().to_argon2().unwrap();
    }

    #[test]
    fn stored_aes_keys_must_be_32_bytes() {
        for len in [0, 16, 24, 31, 33, 64] {
            assert!(SecretKey::from_stored(KeyAlgorithm::Aes256Gcm, &vec![1; len]).is_none());
        }
        let key = SecretKey::from_stored(KeyAlgorithm::Aes256Gcm, &[1; 32]).unwrap();
        assert_eq!(key.algorithm(), KeyAlgorithm::Aes256Gcm);
        assert!(key.public_key().bytes.is_empty());
        // 32 random bytes are no PKCS#8 document.
        assert!(SecretKey::from_stored(KeyAlgorithm::Ed25519, &[1; 32]).is_none());
    }

    #[test]
    fn generated_secrets_have_the_stored_shape() {
        let rng = SystemRandom::new();
        for alg in KeyAlgorithm::ALL {
            let secret = SecretKey::generate(alg, &rng).unwrap();
            let key = SecretKey::from_stored(alg, &secret).unwrap();
            assert_eq!(key.algorithm(), alg);
        }
        let a = SecretKey::generate(KeyAlgorithm::Aes256Gcm, &rng).unwrap();
        let b = SecretKey::generate(KeyAlgorithm::Aes256Gcm, &rng).unwrap();
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }

    #[test]
    fn seal_is_aes_256_gcm_with_the_nonce_in_front() {
        // Opened with aws-lc-rs directly: the output is plain AES-256-GCM, nonce || ct || tag.
        let raw = [3u8; 32];
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &raw).unwrap());
        let sealed = seal(&key, &SystemRandom::new(), b"plaintext", b"aad").unwrap();
        assert_eq!(sealed.len(), 12 + 9 + 16);
        let check = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &raw).unwrap());
        let nonce = Nonce::try_assume_unique_for_key(&sealed[..12]).unwrap();
        let mut in_out = sealed[12..].to_vec();
        let opened = check
            .open_in_place(nonce, Aad::from(b"aad"), &mut in_out)
            .unwrap();
        assert_eq!(opened, b"plaintext");
        assert_eq!(
            open(&key, &sealed, b"aad").unwrap().as_slice(),
            b"plaintext"
        );
        assert!(matches!(
            open(&key, &sealed[..11], b"aad"),
            Err(KeyStoreError::Decrypt)
        ));
    }

    #[test]
    fn default_params_are_64_mib_three_passes_one_lane() {
        assert_eq!(
            Argon2Params::default(),
            Argon2Params {
                m_cost_kib: 65536,
                t_cost: 3,
                p_cost: 1
            }
        );
    }
}
