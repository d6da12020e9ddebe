//! The `pkcs11` backend: keys generated and used inside a PKCS#11 token (an HSM, a smart card,
//! or SoftHSM2 for tests), through the [`cryptoki`] crate.
//!
//! # Keys and token objects
//!
//! Every key is one or two token objects (`CKA_TOKEN` true, so they outlive the session) whose
//! `CKA_LABEL` (and `CKA_ID`) is the [`KeyName`]:
//!
//! | algorithm | objects | `CKA_KEY_TYPE` | `CKA_EC_PARAMS` |
//! |---|---|---|---|
//! | [`EcdsaP256Sha256`](KeyAlgorithm::EcdsaP256Sha256) | private and public key | `CKK_EC` | OID 1.2.840.10045.3.1.7 (P-256) |
//! | [`Ed25519`](KeyAlgorithm::Ed25519) | private and public key | `CKK_EC_EDWARDS` | OID 1.3.101.112 (Ed25519) |
//! | [`Aes256Gcm`](KeyAlgorithm::Aes256Gcm) | secret key, `CKA_VALUE_LEN` 32 | `CKK_AES` | — |
//!
//! [`KeyStore::list`] reads the algorithm back from the key type and the curve, so the token is
//! the only record: there is no index file beside it. Private and secret keys are made with
//! `CKA_PRIVATE`, `CKA_SENSITIVE` true and `CKA_EXTRACTABLE` false, so the token never reveals
//! them, in the clear or wrapped; a token refuses to turn either attribute back. Public keys are
//! made `CKA_PRIVATE` (seen only once logged in; SoftHSM2 stores them encrypted) and not
//! `CKA_MODIFIABLE`, so that what verifiers are handed can't be swapped without the PIN (keys a
//! token holds from before keep the attributes they were made with). Each key may do only its
//! job: signing keys `CKA_SIGN` (and no `CKA_DERIVE`),
//! AES keys `CKA_ENCRYPT` and `CKA_DECRYPT` (and no wrapping, signing or deriving).
//!
//! # Mechanisms
//!
//! - ECDSA P-256: `CKM_EC_KEY_PAIR_GEN`; signing is `CKM_ECDSA` over the SHA-256 digest computed
//!   here, and the token's raw `r || s` is re-encoded as the ASN.1 DER signature that
//!   [`KeyStore::sign`] returns. The public key is `CKA_EC_POINT` (a DER OCTET STRING around the
//!   point) unwrapped to the 65-byte uncompressed point, as the `local` backend returns it.
//! - Ed25519: `CKM_EC_EDWARDS_KEY_PAIR_GEN` and `CKM_EDDSA` (pure Ed25519, no parameters); the
//!   public key is the 32 raw bytes of `CKA_EC_POINT`.
//! - AES-256-GCM: `CKM_AES_KEY_GEN` and `CKM_AES_GCM` with a 96-bit IV drawn here from the system
//!   generator, a 128-bit tag and the caller's associated data. [`KeyStore::encrypt`] returns
//!   `nonce || ciphertext || tag`, the same format as the `local` backend (the formats match; the
//!   keys, of course, do not). A failed tag check is [`KeyStoreError::Decrypt`]; SoftHSM2 2.6
//!   reports it as `CKR_GENERAL_ERROR` from `C_Decrypt` rather than `CKR_ENCRYPTED_DATA_INVALID`,
//!   and both are read that way.
//!
//! Objects under a key's label that this backend did not make (another key type or curve, two
//! keys under one label, a public key without its private key) are left alone: `list` skips
//! them, `contains` reports the name as taken, `generate` refuses it and the other operations
//! fail with [`KeyStoreError::Pkcs11`]. Certificates and data objects sharing a label are
//! ignored.
//!
//! # Configuration
//!
//! [`Pkcs11Config`] names the module (the PKCS#11 shared library), the label of the token and
//! the user PIN; [`Pkcs11Config::from_env`] reads them from [`MODULE_ENV`]
//! (`ENTENTE_PKCS11_MODULE`), [`TOKEN_ENV`] (`ENTENTE_PKCS11_TOKEN`) and [`PIN_ENV`]
//! (`ENTENTE_PKCS11_PIN`). [`Pkcs11KeyStore::open`] loads the module, finds the one initialized
//! token with that label and logs in as the user. The PIN is used for that login and then
//! dropped (zeroized); no error message or `Debug` output contains it. Every failed login uses
//! up one of the token's tries, so none is made that could only fail or would lock the token:
//! an empty PIN is refused before the module is loaded, and a token whose user PIN is locked,
//! not initialized or at its final try (`CKF_USER_PIN_FINAL_TRY`) is refused without a login.
//!
//! ```no_run
//! use entente_keystore::pkcs11::{Pkcs11Config, Pkcs11KeyStore};
//! use entente_keystore::{KeyAlgorithm, KeyName, KeyStore, KeyStoreError};
//! use zeroize::Zeroizing;
//!
//! # fn main() -> Result<(), KeyStoreError> {
//! let config = match Pkcs11Config::from_env()? {
//!     Some(config) => config,
//!     None => Pkcs11Config {
//!         module: "/usr/lib/softhsm/libsofthsm2.so".into(),
//!         token_label: "entente".to_owned(),
//!         pin: Zeroizing::new("1234".to_owned()),
//!     },
//! };
//! let store = Pkcs11KeyStore::open(config)?;
//! let name = KeyName::new("ca-root")?;
//! let public = store.generate(&name, KeyAlgorithm::EcdsaP256Sha256)?;
//! public.verify(b"tbs", &store.sign(&name, b"tbs")?)?;
//! # Ok(())
//! # }
//! ```
//!
//! # Sessions, threads and processes
//!
//! A store keeps a small pool of sessions, each behind a mutex, so threads sign, encrypt and
//! decrypt in parallel. `generate` and `delete` have the store to themselves while they run: a
//! name is checked and taken in one step, and SoftHSM2 2.6 fails to create objects
//! (`CKR_GENERAL_ERROR`) while other sessions search the token.
//!
//! PKCS#11 allows one `C_Initialize` per module per process, and a login holds for every
//! session of the process on that token. So a module is loaded and initialized once per process
//! and stays loaded, and one token can be open in only one store at a time per process: a
//! second [`Pkcs11KeyStore::open`] of the same token fails until the first store is dropped
//! (share the store instead). Dropping the store closes its sessions, which logs out.
//!
//! Within one process, `generate` checks and takes a name in one step. Two processes generating
//! the same name on one token at the same moment could both create a key under it, which makes
//! the name unusable until one is removed with the token's tools: give each token one writer.
//! A store does not reconnect: if the token goes away, operations fail with
//! [`KeyStoreError::Pkcs11`] and the store must be opened again.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{
    Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError,
};

use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Function, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::{AuthPin, Ulong};
use zeroize::Zeroizing;

use crate::{KeyAlgorithm, KeyName, KeyStore, KeyStoreError, NONCE_LEN, PublicKey, TAG_LEN};

/// The environment variable holding the path of the PKCS#11 module.
pub const MODULE_ENV: &str = "ENTENTE_PKCS11_MODULE";
/// The environment variable holding the label of the token.
pub const TOKEN_ENV: &str = "ENTENTE_PKCS11_TOKEN";
/// The environment variable holding the token's user PIN.
pub const PIN_ENV: &str = "ENTENTE_PKCS11_PIN";

/// Which token to open and how to log in. Its `Debug` output hides the PIN.
#[derive(Clone)]
pub struct Pkcs11Config {
    /// The PKCS#11 module: the path of its shared library, e.g.
    /// `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: PathBuf,
    /// The label of the token (`CKA_LABEL` of the token, up to 32 bytes).
    pub token_label: String,
    /// The user PIN.
    pub pin: Zeroizing<String>,
}

/// A key store on a PKCS#11 token; see the [module docs](self).
pub struct Pkcs11KeyStore {
    // Dropped first: closing the last session logs out, before `_open` lets the token be opened
    // again.
    sessions: Sessions,
    module: PathBuf,
    token_label: String,
    slot: Slot,
    rng: SystemRandom,
    _open: OpenToken,
}

// === impl Pkcs11Config ===

impl Pkcs11Config {
    /// Reads the configuration from [`MODULE_ENV`], [`TOKEN_ENV`] and [`PIN_ENV`].
    ///
    /// Returns `Ok(None)` if none of them is set, and [`KeyStoreError::Config`] if only some
    /// are (a variable set but empty counts as not set, so all three set but empty is an
    /// error too: the hub would keep its keys elsewhere than meant), or the label or PIN is
    /// not UTF-8. Messages name the variables, never their values.
    pub fn from_env() -> Result<Option<Self>, KeyStoreError> {
        Self::from_values(
            std::env::var_os(MODULE_ENV),
            std::env::var_os(TOKEN_ENV),
            std::env::var_os(PIN_ENV),
        )
    }

    fn from_values(
        module: Option<OsString>,
        token: Option<OsString>,
        pin: Option<OsString>,
    ) -> Result<Option<Self>, KeyStoreError> {
        let any_set = module.is_some() || token.is_some() || pin.is_some();
        let module = module.filter(|value| !value.is_empty());
        let token = token.filter(|value| !value.is_empty());
        let pin = pin
            .filter(|value| !value.is_empty())
            .map(|value| Zeroizing::new(value.into_encoded_bytes()));
        let missing: Vec<String> = [
            (MODULE_ENV, module.is_some()),
            (TOKEN_ENV, token.is_some()),
            (PIN_ENV, pin.is_some()),
        ]
        .into_iter()
        .filter(|(_, set)| !set)
        .map(|(name, _)| format!("`{name}`"))
        .collect();
        let (Some(module), Some(token), Some(pin)) = (module, token, pin) else {
            if missing.len() == 3 && !any_set {
                return Ok(None);
            }
            return Err(KeyStoreError::Config(format!(
                "a pkcs#11 keystore needs `{MODULE_ENV}`, `{TOKEN_ENV}` and `{PIN_ENV}`; \
                 {} not set (or empty)",
                match missing.as_slice() {
                    [one] => format!("{one} is"),
                    _ => format!("{} are", missing.join(" and ")),
                }
            )));
        };
        let token_label = token
            .into_string()
            .map_err(|_| KeyStoreError::Config(format!("`{TOKEN_ENV}` is not valid UTF-8")))?;
        let pin = std::str::from_utf8(&pin)
            .map_err(|_| KeyStoreError::Config(format!("`{PIN_ENV}` is not valid UTF-8")))?;
        Ok(Some(Self {
            module: PathBuf::from(module),
            token_label,
            pin: Zeroizing::new(pin.to_owned()),
        }))
    }
}

impl fmt::Debug for Pkcs11Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Config")
            .field("module", &self.module)
            .field("token_label", &self.token_label)
            .field("pin", &"<redacted>")
            .finish()
    }
}

// === impl Pkcs11KeyStore ===

impl Pkcs11KeyStore {
    /// How many sessions a store keeps open.
    pub const SESSIONS: usize = 4;

    /// Loads the module, finds the token labelled `config.token_label` and logs in as the user.
    ///
    /// Fails with [`KeyStoreError::Config`] if the PIN is empty (no login is tried),
    /// [`KeyStoreError::Pkcs11Module`] if the module is missing or is not a PKCS#11
    /// library, [`KeyStoreError::TokenNotFound`] (listing the labels found) if no initialized
    /// token has the label, [`KeyStoreError::WrongPin`] or [`KeyStoreError::PinLocked`] if the
    /// login is refused, and [`KeyStoreError::Pkcs11`] for anything else, including a token that
    /// is already open in another store of this process and a user PIN at its final try (no
    /// login is tried: a wrong PIN would lock the token).
    pub fn open(config: Pkcs11Config) -> Result<Self, KeyStoreError> {
        let label = config.token_label.as_str();
        // Refused before the module is even loaded: a failed login uses up one of the token's
        // tries, and `ENTENTE_PKCS11_PIN=$PIN` with `PIN` unset, under a service that restarts
        // the hub, would try once per start until the token locks.
        if config.pin.is_empty() {
            return Err(KeyStoreError::Config(format!(
                "the user pin for pkcs#11 token `{}` is empty (is `{PIN_ENV}` set but empty?); \
                 no login is tried with an empty pin",
                label.escape_debug()
            )));
        }
        let (module, context) = load_module(&config.module)?;
        let slot = find_token(&context, &module, label)?;
        let open = OpenToken::claim(&module, slot).ok_or_else(|| KeyStoreError::Pkcs11 {
            op: "open",
            detail: format!(
                "token `{}` is already open in this process; share that store",
                label.escape_debug()
            ),
        })?;

        let first = context
            .open_rw_session(slot)
            .map_err(|err| pkcs11_error("open", &err))?;
        let pin = AuthPin::from(config.pin.as_str());
        first
            .login(UserType::User, Some(&pin))
            .map_err(|err| login_error(&err, label))?;
        drop(pin);
        drop(config.pin);
        // The login holds for every session of this process on the token.
        let mut pool = vec![Mutex::new(first)];
        for _ in 1..Self::SESSIONS {
            let session = context
                .open_rw_session(slot)
                .map_err(|err| pkcs11_error("open", &err))?;
            pool.push(Mutex::new(session));
        }
        Ok(Self {
            sessions: Sessions {
                pool,
                next: AtomicUsize::new(0),
                objects: RwLock::new(()),
            },
            module,
            token_label: config.token_label,
            slot,
            rng: SystemRandom::new(),
            _open: open,
        })
    }

    /// The module's path, made absolute.
    pub fn module(&self) -> &Path {
        &self.module
    }

    /// The token's label.
    pub fn token_label(&self) -> &str {
        &self.token_label
    }

    /// Generates the key `name` of `alg`, which is not on the token, and returns its public key.
    fn create(
        &self,
        session: &Session,
        name: &KeyName,
        alg: KeyAlgorithm,
    ) -> Result<PublicKey, KeyStoreError> {
        let failed = |err: CkError| pkcs11_error("generate", &err);
        let label = name.as_str().as_bytes().to_vec();
        let Some((mechanism, key_type, params)) = curve(alg) else {
            let template = [
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::ValueLen(Ulong::new(AES_KEY_LEN)),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Label(label.clone()),
                Attribute::Id(label),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
                Attribute::Wrap(false),
                Attribute::Unwrap(false),
                Attribute::Sign(false),
                Attribute::Verify(false),
                Attribute::Derive(false),
            ];
            session
                .generate_key(&Mechanism::AesKeyGen, &template)
                .map_err(failed)?;
            return Ok(PublicKey {
                algorithm: alg,
                bytes: Vec::new(),
            });
        };
        // The public half is what verifiers are handed (the audit checkpoint key's, exported):
        // private (stored encrypted by tokens such as SoftHSM2, seen only once logged in) and
        // not modifiable, so that it can't be swapped for another without the PIN.
        let public_template = [
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::KeyType(key_type),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Modifiable(false),
            Attribute::Label(label.clone()),
            Attribute::Id(label.clone()),
            Attribute::EcParams(params.to_vec()),
            Attribute::Verify(true),
        ];
        let private_template = [
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::KeyType(key_type),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Label(label.clone()),
            Attribute::Id(label),
            Attribute::Sign(true),
            Attribute::Derive(false),
        ];
        let (public, private) = session
            .generate_key_pair(&mechanism, &public_template, &private_template)
            .map_err(failed)?;
        match read_public_key(session, name, alg, Some(public), "generate") {
            Ok(key) => Ok(key),
            Err(err) => {
                // Leave no key behind whose public key can't be read.
                let _ = session.destroy_object(public);
                let _ = session.destroy_object(private);
                Err(err)
            }
        }
    }
}

impl KeyStore for Pkcs11KeyStore {
    fn backend(&self) -> &'static str {
        "pkcs11"
    }

    fn generate(&self, name: &KeyName, alg: KeyAlgorithm) -> Result<PublicKey, KeyStoreError> {
        let session = self.sessions.exclusive()?;
        match lookup(&session, name, "generate")? {
            Lookup::Missing => {}
            // A deletion stopped midway is finished first: the name is free.
            Lookup::PublicOnly(publics) => destroy(&session, publics, "generate")?,
            Lookup::Key(_) | Lookup::Unusable(_) => {
                return Err(KeyStoreError::KeyExists {
                    name: name.to_string(),
                });
            }
        }
        self.create(&session, name, alg)
    }

    fn public_key(&self, name: &KeyName) -> Result<PublicKey, KeyStoreError> {
        let session = self.sessions.shared()?;
        let key = stored(&session, name, "public key")?;
        read_public_key(&session, name, key.algorithm, key.public, "public key")
    }

    fn sign(&self, name: &KeyName, msg: &[u8]) -> Result<Vec<u8>, KeyStoreError> {
        let session = self.sessions.shared()?;
        let key = stored(&session, name, "sign")?;
        let failed = |err: CkError| pkcs11_error("sign", &err);
        match key.algorithm {
            KeyAlgorithm::EcdsaP256Sha256 => {
                let hash = digest(&SHA256, msg);
                let raw = session
                    .sign(&Mechanism::Ecdsa, key.key, hash.as_ref())
                    .map_err(failed)?;
                ecdsa_raw_to_der(&raw).ok_or_else(|| KeyStoreError::Pkcs11 {
                    op: "sign",
                    detail: format!(
                        "the token returned a {}-byte ecdsa signature; p-256 signatures are 64",
                        raw.len()
                    ),
                })
            }
            KeyAlgorithm::Ed25519 => {
                let mechanism = Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure));
                let sig = session.sign(&mechanism, key.key, msg).map_err(failed)?;
                if sig.len() != ED25519_SIGNATURE_LEN {
                    return Err(KeyStoreError::Pkcs11 {
                        op: "sign",
                        detail: format!(
                            "the token returned a {}-byte ed25519 signature, not 64",
                            sig.len()
                        ),
                    });
                }
                Ok(sig)
            }
            KeyAlgorithm::Aes256Gcm => Err(KeyStoreError::not_signing(name, key.algorithm)),
        }
    }

    fn encrypt(
        &self,
        name: &KeyName,
        plaintext: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, KeyStoreError> {
        let session = self.sessions.shared()?;
        let key = stored(&session, name, "encrypt")?;
        if key.algorithm != KeyAlgorithm::Aes256Gcm {
            return Err(KeyStoreError::not_aes(name, key.algorithm));
        }
        crate::check_encrypt_input(plaintext, aad)?;
        let failed = |err: CkError| pkcs11_error("encrypt", &err);

        let mut iv = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut iv)
            .map_err(|_| KeyStoreError::Crypto("random number generation failed"))?;
        let sealed = {
            let params = GcmParams::new(&mut iv, aad, Ulong::new(TAG_BITS)).map_err(failed)?;
            session
                .encrypt(&Mechanism::AesGcm(params), key.key, plaintext)
                .map_err(failed)?
        };
        if sealed.len() != plaintext.len() + TAG_LEN {
            return Err(KeyStoreError::Pkcs11 {
                op: "encrypt",
                detail: format!(
                    "the token returned {} bytes for {} bytes of plaintext and a {TAG_LEN}-byte tag",
                    sealed.len(),
                    plaintext.len()
                ),
            });
        }
        // The IV as the token used it: a module may write back the IV it chose.
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&iv);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    fn decrypt(
        &self,
        name: &KeyName,
        sealed: &[u8],
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeyStoreError> {
        let session = self.sessions.shared()?;
        let key = stored(&session, name, "decrypt")?;
        if key.algorithm != KeyAlgorithm::Aes256Gcm {
            return Err(KeyStoreError::not_aes(name, key.algorithm));
        }
        crate::check_decrypt_input(sealed, aad)?;
        let (nonce, ciphertext) = sealed
            .split_first_chunk::<NONCE_LEN>()
            .ok_or(KeyStoreError::Decrypt)?;

        let mut iv = *nonce;
        let params = GcmParams::new(&mut iv, aad, Ulong::new(TAG_BITS))
            .map_err(|err| pkcs11_error("decrypt", &err))?;
        match session.decrypt(&Mechanism::AesGcm(params), key.key, ciphertext) {
            Ok(plaintext) => Ok(Zeroizing::new(plaintext)),
            Err(CkError::Pkcs11(
                RvError::EncryptedDataInvalid | RvError::EncryptedDataLenRange,
                _,
            )) => Err(KeyStoreError::Decrypt),
            // SoftHSM2 before 2.7 reports a failed tag check as CKR_GENERAL_ERROR from C_Decrypt
            // itself (not from C_DecryptInit); with a key and parameters that C_DecryptInit
            // accepted, that is the only way this C_Decrypt fails.
            Err(CkError::Pkcs11(RvError::GeneralError, Function::Decrypt)) => {
                Err(KeyStoreError::Decrypt)
            }
            Err(err) => Err(pkcs11_error("decrypt", &err)),
        }
    }

    fn contains(&self, name: &KeyName) -> Result<bool, KeyStoreError> {
        let session = self.sessions.shared()?;
        // A key whose deletion stopped midway is deleted.
        Ok(!matches!(
            lookup(&session, name, "contains")?,
            Lookup::Missing | Lookup::PublicOnly(_)
        ))
    }

    fn list(&self) -> Result<Vec<(KeyName, KeyAlgorithm)>, KeyStoreError> {
        let session = self.sessions.shared()?;
        let failed = |err: CkError| pkcs11_error("list", &err);
        let mut keys = BTreeMap::new();
        for class in [ObjectClass::PRIVATE_KEY, ObjectClass::SECRET_KEY] {
            let handles = session
                .find_objects(&[Attribute::Token(true), Attribute::Class(class)])
                .map_err(failed)?;
            for handle in handles {
                let object = KeyObject::read(&session, handle, "list")?;
                let name = object
                    .label
                    .as_deref()
                    .and_then(|label| std::str::from_utf8(label).ok())
                    .and_then(|label| KeyName::new(label).ok());
                if let (Some(name), Some(alg), None) =
                    (name, object.algorithm(), object.not_made_here())
                {
                    keys.entry(name).or_insert(alg);
                }
            }
        }
        Ok(keys.into_iter().collect())
    }

    fn delete(&self, name: &KeyName) -> Result<(), KeyStoreError> {
        let session = self.sessions.exclusive()?;
        let failed = |err: CkError| pkcs11_error("delete", &err);
        // The private key first: deleting is for destroying it. A public key left alone by a
        // failure is no key (not listed, not usable), and deleting again finishes the job.
        let key = match lookup(&session, name, "delete")? {
            Lookup::PublicOnly(publics) => return destroy(&session, publics, "delete"),
            found => key_of(found, name, "delete")?,
        };
        session.destroy_object(key.key).map_err(failed)?;
        destroy(&session, key.public, "delete")
    }
}

impl fmt::Debug for Pkcs11KeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11KeyStore")
            .field("module", &self.module)
            .field("token_label", &self.token_label)
            .field("slot", &self.slot.id())
            .field("sessions", &self.sessions.pool.len())
            .finish_non_exhaustive()
    }
}

// === helpers: modules, tokens and sessions ===

/// Modules loaded by this process, by canonical path, each initialized once and kept loaded.
static MODULES: Mutex<BTreeMap<PathBuf, Pkcs11>> = Mutex::new(BTreeMap::new());

/// Tokens open in a store of this process, by module and slot.
static OPEN_TOKENS: Mutex<BTreeSet<(PathBuf, u64)>> = Mutex::new(BTreeSet::new());

/// Loads and initializes the module at `path`, or returns the one already loaded, with its
/// canonical path.
fn load_module(path: &Path) -> Result<(PathBuf, Pkcs11), KeyStoreError> {
    let unusable = |detail: String| KeyStoreError::Pkcs11Module {
        path: path.to_owned(),
        detail,
    };
    let canonical = std::fs::canonicalize(path).map_err(|err| match err.kind() {
        std::io::ErrorKind::NotFound => unusable("no such file".to_owned()),
        _ => unusable(err.to_string()),
    })?;
    if !canonical.is_file() {
        return Err(unusable("not a file".to_owned()));
    }
    // The map stays consistent even if a thread panicked holding the lock.
    let mut modules = MODULES.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(context) = modules.get(&canonical) {
        return Ok((canonical, context.clone()));
    }
    let context = Pkcs11::new(&canonical).map_err(|err| match err {
        CkError::LibraryLoading(err) => unusable(format!("not a loadable shared library ({err})")),
        CkError::MissingSymbol(symbol) => {
            unusable(format!("not a pkcs#11 module: it has no `{symbol}`"))
        }
        err => unusable(describe(&err)),
    })?;
    match context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        // Something else in this process initialized it already; that is as good.
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(err) => return Err(unusable(describe(&err))),
    }
    modules.insert(canonical.clone(), context.clone());
    Ok((canonical, context))
}

/// The slot of the one initialized token labelled `label`, if logging in to it may be tried
/// ([`may_log_in`]); `module` is for messages.
fn find_token(context: &Pkcs11, module: &Path, label: &str) -> Result<Slot, KeyStoreError> {
    let failed = |err: CkError| pkcs11_error("open", &err);
    let mut found = Vec::new();
    let mut matching = Vec::new();
    for slot in context.get_slots_with_token().map_err(failed)? {
        let info = context.get_token_info(slot).map_err(failed)?;
        if !info.token_initialized() {
            continue;
        }
        found.push(info.label().to_owned());
        if info.label() == label {
            matching.push((slot, info));
        }
    }
    let mut matching = matching.into_iter();
    match (matching.next(), matching.next()) {
        (Some((slot, info)), None) => {
            let pin = UserPin {
                initialized: info.user_pin_initialized(),
                locked: info.user_pin_locked(),
                final_try: info.user_pin_final_try(),
            };
            may_log_in(pin, module, label)?;
            Ok(slot)
        }
        (None, _) => Err(KeyStoreError::TokenNotFound {
            label: label.to_owned(),
            found,
        }),
        (Some(_), Some(_)) => Err(KeyStoreError::Pkcs11 {
            op: "open",
            detail: format!(
                "more than one token is labelled `{}`; give each its own label",
                label.escape_debug()
            ),
        }),
    }
}

/// The state of a token's user PIN, from its token flags.
#[derive(Debug, Clone, Copy, Default)]
struct UserPin {
    /// `CKF_USER_PIN_INITIALIZED`.
    initialized: bool,
    /// `CKF_USER_PIN_LOCKED`.
    locked: bool,
    /// `CKF_USER_PIN_FINAL_TRY`: one more wrong PIN locks it.
    final_try: bool,
}

/// Whether a login to the token `label` of `module` may be tried, given its user PIN: not if
/// the PIN is locked or not initialized, nor if it is at its final try. A wrong PIN then would
/// lock the token, and a hub restarted in a loop with a stale PIN would do just that; a person
/// who knows the PIN logs in once by hand, which resets the count.
fn may_log_in(pin: UserPin, module: &Path, label: &str) -> Result<(), KeyStoreError> {
    if pin.locked {
        return Err(KeyStoreError::PinLocked {
            token: label.to_owned(),
        });
    }
    if !pin.initialized {
        return Err(KeyStoreError::Pkcs11 {
            op: "login",
            detail: format!(
                "the user pin of token `{}` is not initialized",
                label.escape_debug()
            ),
        });
    }
    if pin.final_try {
        return Err(KeyStoreError::Pkcs11 {
            op: "login",
            detail: format!(
                "not tried: the user pin of token `{label}` is at its final try, and a wrong \
                 pin would lock the token; log in once by hand with the right pin (e.g. \
                 `pkcs11-tool --module {} --token-label '{label}' --login --list-objects`), \
                 which resets the count, or have the token's security officer reset the pin",
                module.display(),
                label = label.escape_debug(),
            ),
        });
    }
    Ok(())
}

/// Marks a token as open in this process until dropped.
struct OpenToken {
    key: (PathBuf, u64),
}

impl OpenToken {
    /// `None` if the token is open already.
    fn claim(module: &Path, slot: Slot) -> Option<Self> {
        let key = (module.to_owned(), slot.id());
        let claimed = OPEN_TOKENS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.clone());
        // Built only once the lock is released: dropping one takes the lock.
        claimed.then(|| Self { key })
    }
}

impl Drop for OpenToken {
    fn drop(&mut self) {
        OPEN_TOKENS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
    }
}

/// A pool of logged-in sessions; a `Session` may be used by one thread at a time.
struct Sessions {
    pool: Vec<Mutex<Session>>,
    next: AtomicUsize,
    /// Shared by operations that only read the token's objects, exclusive for those that create
    /// or destroy objects: `generate` checks and takes a name in one step, and SoftHSM2 2.6
    /// fails object creation (`CKR_GENERAL_ERROR`) while other sessions search the token.
    objects: RwLock<()>,
}

/// A session held for one operation, with shared or exclusive use of the token's objects.
struct SessionGuard<'a> {
    // Dropped first: the session goes back to the pool before the objects lock is released.
    session: MutexGuard<'a, Session>,
    _objects: ObjectsGuard<'a>,
}

/// Held, never read: the shared or exclusive hold on the token's objects.
enum ObjectsGuard<'a> {
    Shared(#[expect(dead_code, reason = "held, not read")] RwLockReadGuard<'a, ()>),
    Exclusive(#[expect(dead_code, reason = "held, not read")] RwLockWriteGuard<'a, ()>),
}

impl std::ops::Deref for SessionGuard<'_> {
    type Target = Session;

    fn deref(&self) -> &Session {
        &self.session
    }
}

impl Sessions {
    /// A session for an operation that creates no object and destroys none.
    fn shared(&self) -> Result<SessionGuard<'_>, KeyStoreError> {
        let objects = self
            .objects
            .read()
            .map_err(|_| KeyStoreError::Internal("pkcs#11 object lock poisoned"))?;
        Ok(SessionGuard {
            session: self.session()?,
            _objects: ObjectsGuard::Shared(objects),
        })
    }

    /// A session for an operation that creates or destroys objects, alone on this store.
    fn exclusive(&self) -> Result<SessionGuard<'_>, KeyStoreError> {
        let objects = self
            .objects
            .write()
            .map_err(|_| KeyStoreError::Internal("pkcs#11 object lock poisoned"))?;
        Ok(SessionGuard {
            session: self.session()?,
            _objects: ObjectsGuard::Exclusive(objects),
        })
    }

    /// A free session if there is one, else waits for one, taking them in turn.
    fn session(&self) -> Result<MutexGuard<'_, Session>, KeyStoreError> {
        let poisoned = || KeyStoreError::Internal("pkcs#11 session lock poisoned");
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let (front, back) = self
            .pool
            .split_at_checked(start % self.pool.len().max(1))
            .ok_or(KeyStoreError::Internal("pkcs#11 session pool index"))?;
        for session in back.iter().chain(front) {
            match session.try_lock() {
                Ok(guard) => return Ok(guard),
                Err(TryLockError::WouldBlock) => {}
                Err(TryLockError::Poisoned(_)) => return Err(poisoned()),
            }
        }
        back.iter()
            .chain(front)
            .next()
            .ok_or(KeyStoreError::Internal("pkcs#11 session pool is empty"))?
            .lock()
            .map_err(|_| poisoned())
    }
}

// === helpers: keys as token objects ===

/// `CKA_EC_PARAMS` of P-256: the DER OID 1.2.840.10045.3.1.7 (prime256v1).
const P256_PARAMS: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// `CKA_EC_PARAMS` of Ed25519: the DER OID 1.3.101.112 (RFC 8410), which SoftHSM2 requires.
const ED25519_PARAMS: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
/// `CKA_EC_PARAMS` of Ed25519 as PKCS#11 3.0 also allows: the PrintableString `edwards25519`.
const ED25519_PARAMS_NAME: &[u8] = b"\x13\x0cedwards25519";

/// The length of an AES-256 key, as `CKA_VALUE_LEN` holds it.
const AES_KEY_LEN: u64 = 32;
/// The GCM tag length, in bits.
const TAG_BITS: u64 = (TAG_LEN * 8) as u64;
/// The length of an uncompressed P-256 point.
const P256_POINT_LEN: usize = 65;
/// The length of an Ed25519 public key.
const ED25519_PUBLIC_LEN: usize = 32;
/// The length of an Ed25519 signature.
const ED25519_SIGNATURE_LEN: usize = 64;

/// For a signature algorithm: its key-pair mechanism, key type and `CKA_EC_PARAMS`.
fn curve(alg: KeyAlgorithm) -> Option<(Mechanism<'static>, KeyType, &'static [u8])> {
    match alg {
        KeyAlgorithm::EcdsaP256Sha256 => Some((Mechanism::EccKeyPairGen, KeyType::EC, P256_PARAMS)),
        KeyAlgorithm::Ed25519 => Some((
            Mechanism::EccEdwardsKeyPairGen,
            KeyType::EC_EDWARDS,
            ED25519_PARAMS,
        )),
        KeyAlgorithm::Aes256Gcm => None,
    }
}

/// The attributes of a key object that say what it is, and how it was made.
struct KeyObject {
    handle: ObjectHandle,
    class: Option<ObjectClass>,
    key_type: Option<KeyType>,
    ec_params: Option<Vec<u8>>,
    value_len: Option<u64>,
    label: Option<Vec<u8>>,
    private: Option<bool>,
    sensitive: Option<bool>,
    extractable: Option<bool>,
    never_extractable: Option<bool>,
    local: Option<bool>,
}

impl KeyObject {
    const ATTRIBUTES: [AttributeType; 10] = [
        AttributeType::Class,
        AttributeType::KeyType,
        AttributeType::EcParams,
        AttributeType::ValueLen,
        AttributeType::Label,
        AttributeType::Private,
        AttributeType::Sensitive,
        AttributeType::Extractable,
        AttributeType::NeverExtractable,
        AttributeType::Local,
    ];

    /// Reads the attributes that apply; the others (e.g. `CKA_EC_PARAMS` of an AES key) are
    /// left `None`.
    fn read(
        session: &Session,
        handle: ObjectHandle,
        op: &'static str,
    ) -> Result<Self, KeyStoreError> {
        let attributes = session
            .get_attributes(handle, &Self::ATTRIBUTES)
            .map_err(|err| pkcs11_error(op, &err))?;
        let mut object = Self {
            handle,
            class: None,
            key_type: None,
            ec_params: None,
            value_len: None,
            label: None,
            private: None,
            sensitive: None,
            extractable: None,
            never_extractable: None,
            local: None,
        };
        for attribute in attributes {
            match attribute {
                Attribute::Class(class) => object.class = Some(class),
                Attribute::KeyType(key_type) => object.key_type = Some(key_type),
                Attribute::EcParams(params) => object.ec_params = Some(params),
                Attribute::ValueLen(len) => object.value_len = Some(*len),
                Attribute::Label(label) => object.label = Some(label),
                Attribute::Private(on) => object.private = Some(on),
                Attribute::Sensitive(on) => object.sensitive = Some(on),
                Attribute::Extractable(on) => object.extractable = Some(on),
                Attribute::NeverExtractable(on) => object.never_extractable = Some(on),
                Attribute::Local(on) => object.local = Some(on),
                _ => {}
            }
        }
        Ok(object)
    }

    /// Why a private or secret key is not as this backend makes them, if it is not: private
    /// (usable and made only after login: one that anyone with the token but not the PIN may
    /// plant is not), sensitive, never extractable and generated on the token (its value
    /// never known outside it, e.g. not imported). A public key is not judged (keys made
    /// before public halves were private have public ones): what it could change is caught
    /// where it is used, every signature being verified under the certificate's key.
    fn not_made_here(&self) -> Option<&'static str> {
        if self.class == Some(ObjectClass::PUBLIC_KEY) {
            return None;
        }
        if self.private != Some(true) {
            Some("it is not private (usable without logging in)")
        } else if self.sensitive != Some(true) {
            Some("it is not sensitive")
        } else if self.local != Some(true) {
            Some("it was not generated on the token (imported or derived)")
        } else if self.extractable != Some(false) || self.never_extractable != Some(true) {
            Some("it is or was extractable")
        } else {
            None
        }
    }

    /// The algorithm of a key this backend makes, or `None` for any other object.
    fn algorithm(&self) -> Option<KeyAlgorithm> {
        let key_type = self.key_type?;
        let params = self.ec_params.as_deref();
        if self.class == Some(ObjectClass::SECRET_KEY) {
            return (key_type == KeyType::AES && self.value_len == Some(AES_KEY_LEN))
                .then_some(KeyAlgorithm::Aes256Gcm);
        }
        if key_type == KeyType::EC && params == Some(P256_PARAMS) {
            Some(KeyAlgorithm::EcdsaP256Sha256)
        } else if key_type == KeyType::EC_EDWARDS
            && matches!(params, Some(ED25519_PARAMS | ED25519_PARAMS_NAME))
        {
            Some(KeyAlgorithm::Ed25519)
        } else {
            None
        }
    }

    /// What the object is, for messages.
    fn describe(&self) -> String {
        let class = self
            .class
            .map_or_else(|| "object of unknown class".to_owned(), |c| c.to_string());
        match self.key_type {
            Some(key_type) => format!("{class} of type {key_type}"),
            None => class,
        }
    }
}

/// A key as this backend made it.
struct StoredKey {
    algorithm: KeyAlgorithm,
    /// The private or secret key.
    key: ObjectHandle,
    /// The public key of a signature key, if the token has it.
    public: Option<ObjectHandle>,
}

/// What the token holds under a key's label.
enum Lookup {
    /// No key object.
    Missing,
    /// A key this backend made.
    Key(StoredKey),
    /// Only public key objects this backend made: what a deletion stopped midway left. The
    /// key is deleted; the objects go when it is deleted again or the name made anew.
    PublicOnly(Vec<ObjectHandle>),
    /// Key objects that are not one key this backend made; why not.
    Unusable(String),
}

/// Finds the key objects labelled `name` (certificates and data objects don't count).
fn lookup(session: &Session, name: &KeyName, op: &'static str) -> Result<Lookup, KeyStoreError> {
    let label = name.as_str().as_bytes().to_vec();
    let handles = session
        .find_objects(&[Attribute::Token(true), Attribute::Label(label)])
        .map_err(|err| pkcs11_error(op, &err))?;
    let mut keys = Vec::new();
    let mut publics = Vec::new();
    for handle in handles {
        let object = KeyObject::read(session, handle, op)?;
        match object.class {
            Some(ObjectClass::PRIVATE_KEY | ObjectClass::SECRET_KEY) => keys.push(object),
            Some(ObjectClass::PUBLIC_KEY) => publics.push(object),
            _ => {}
        }
    }
    let planted = keys
        .iter()
        .chain(&publics)
        .find_map(|object| Some((object, object.not_made_here()?)));
    if let Some((object, why)) = planted {
        return Ok(Lookup::Unusable(format!(
            "there is a {} that this keystore did not make: {why}",
            object.describe()
        )));
    }
    Ok(match (keys.as_slice(), publics.as_slice()) {
        ([], []) => Lookup::Missing,
        ([], publics) if publics.iter().all(|p| p.algorithm().is_some()) => {
            Lookup::PublicOnly(publics.iter().map(|p| p.handle).collect())
        }
        ([], _) => Lookup::Unusable("there is a public key but no private key".to_owned()),
        ([key], publics) => match (key.algorithm(), publics) {
            (None, _) => Lookup::Unusable(format!("it is a {}", key.describe())),
            (Some(algorithm), []) => Lookup::Key(StoredKey {
                algorithm,
                key: key.handle,
                public: None,
            }),
            (Some(algorithm), [public]) if public.algorithm() == Some(algorithm) => {
                Lookup::Key(StoredKey {
                    algorithm,
                    key: key.handle,
                    public: Some(public.handle),
                })
            }
            (Some(_), _) => Lookup::Unusable(
                "the public key objects under the label don't match the private key".to_owned(),
            ),
        },
        (keys, _) => Lookup::Unusable(format!(
            "{} private or secret keys share the label",
            keys.len()
        )),
    })
}

/// The key `name`: [`KeyStoreError::KeyNotFound`] if there is none, [`KeyStoreError::Pkcs11`]
/// if the label holds something else.
fn stored(session: &Session, name: &KeyName, op: &'static str) -> Result<StoredKey, KeyStoreError> {
    key_of(lookup(session, name, op)?, name, op)
}

/// The key `found` under `name`, as [`stored`] answers.
fn key_of(found: Lookup, name: &KeyName, op: &'static str) -> Result<StoredKey, KeyStoreError> {
    match found {
        Lookup::Key(key) => Ok(key),
        Lookup::Missing | Lookup::PublicOnly(_) => Err(KeyStoreError::KeyNotFound {
            name: name.to_string(),
        }),
        Lookup::Unusable(why) => Err(KeyStoreError::Pkcs11 {
            op,
            detail: format!(
                "the objects labelled `{name}` are not a key this keystore made: {why}"
            ),
        }),
    }
}

/// Destroys `objects` (what a deletion stopped midway left, a key's public half).
fn destroy(
    session: &Session,
    objects: impl IntoIterator<Item = ObjectHandle>,
    op: &'static str,
) -> Result<(), KeyStoreError> {
    for object in objects {
        session
            .destroy_object(object)
            .map_err(|err| pkcs11_error(op, &err))?;
    }
    Ok(())
}

/// The public key of a key of `alg`: empty for AES-256-GCM, else read from `public`.
fn read_public_key(
    session: &Session,
    name: &KeyName,
    alg: KeyAlgorithm,
    public: Option<ObjectHandle>,
    op: &'static str,
) -> Result<PublicKey, KeyStoreError> {
    let expected_len = match alg {
        KeyAlgorithm::EcdsaP256Sha256 => P256_POINT_LEN,
        KeyAlgorithm::Ed25519 => ED25519_PUBLIC_LEN,
        KeyAlgorithm::Aes256Gcm => {
            return Ok(PublicKey {
                algorithm: alg,
                bytes: Vec::new(),
            });
        }
    };
    let public = public.ok_or_else(|| KeyStoreError::Pkcs11 {
        op,
        detail: format!("key `{name}` has no public key object on the token"),
    })?;
    let attributes = session
        .get_attributes(public, &[AttributeType::EcPoint])
        .map_err(|err| pkcs11_error(op, &err))?;
    let point = attributes
        .into_iter()
        .find_map(|attribute| match attribute {
            Attribute::EcPoint(point) => Some(point),
            _ => None,
        });
    let bytes = point
        .and_then(|point| decode_ec_point(&point, expected_len))
        .filter(|bytes| alg != KeyAlgorithm::EcdsaP256Sha256 || bytes.first() == Some(&0x04))
        .ok_or_else(|| KeyStoreError::Pkcs11 {
            op,
            detail: format!("the public key of `{name}` has a missing or malformed CKA_EC_POINT"),
        })?;
    Ok(PublicKey {
        algorithm: alg,
        bytes,
    })
}

/// `CKA_EC_POINT` to the bare point of `len` bytes: PKCS#11 says a DER OCTET STRING holds it,
/// and some modules give the bare point instead.
fn decode_ec_point(value: &[u8], len: usize) -> Option<Vec<u8>> {
    // A bare point may also read as an OCTET STRING of another length (a P-256 point whose X
    // begins with 0x3f): then it is taken as it is.
    if let Ok(point) = yasna::parse_der(value, |reader| reader.read_bytes())
        && point.len() == len
    {
        return Some(point);
    }
    (value.len() == len).then(|| value.to_vec())
}

/// An ECDSA P-256 signature as PKCS#11 returns it, `r || s` with 32 bytes each, as the ASN.1
/// DER `SEQUENCE { r INTEGER, s INTEGER }` of RFC 3279 that X.509 and [`KeyStore::sign`] use.
fn ecdsa_raw_to_der(raw: &[u8]) -> Option<Vec<u8>> {
    let (r, s) = raw.split_at_checked(32)?;
    if s.len() != 32 {
        return None;
    }
    Some(yasna::construct_der(|writer| {
        writer.write_sequence(|writer| {
            writer.next().write_bigint_bytes(r, true);
            writer.next().write_bigint_bytes(s, true);
        });
    }))
}

// === helpers: errors ===

/// A failed PKCS#11 call as [`KeyStoreError::Pkcs11`].
fn pkcs11_error(op: &'static str, err: &CkError) -> KeyStoreError {
    KeyStoreError::Pkcs11 {
        op,
        detail: describe(err),
    }
}

/// A refused login: the PIN is never part of the error.
fn login_error(err: &CkError, token: &str) -> KeyStoreError {
    let token = token.to_owned();
    match err {
        CkError::Pkcs11(RvError::PinIncorrect | RvError::PinLenRange | RvError::PinInvalid, _) => {
            KeyStoreError::WrongPin { token }
        }
        CkError::Pkcs11(RvError::PinLocked, _) => KeyStoreError::PinLocked { token },
        CkError::Pkcs11(RvError::PinExpired, _) => KeyStoreError::Pkcs11 {
            op: "login",
            detail: format!(
                "the user pin of token `{}` has expired; set a new one with the token's tools",
                token.escape_debug()
            ),
        },
        CkError::Pkcs11(RvError::UserPinNotInitialized, _) => KeyStoreError::Pkcs11 {
            op: "login",
            detail: format!(
                "the user pin of token `{}` is not initialized",
                token.escape_debug()
            ),
        },
        CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _) => KeyStoreError::Pkcs11 {
            op: "login",
            detail: format!(
                "something else in this process is logged in to token `{}` already",
                token.escape_debug()
            ),
        },
        err => pkcs11_error("login", err),
    }
}

/// A cryptoki error for messages: `C_Sign returned CKR_KEY_HANDLE_INVALID` for a return code.
fn describe(err: &CkError) -> String {
    match err {
        CkError::Pkcs11(rv, function) => format!("C_{function:?} returned {}", rv_name(*rv)),
        err => err.to_string(),
    }
}

/// The `CKR_` name of a return code, from cryptoki's variant name: `PinIncorrect` becomes
/// `CKR_PIN_INCORRECT`.
fn rv_name(rv: RvError) -> String {
    let variant = format!("{rv:?}");
    let mut name = String::from("CKR");
    for c in variant.chars() {
        if c.is_ascii_uppercase() {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )]

    use aws_lc_rs::signature::{
        ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _,
        UnparsedPublicKey,
    };
    use proptest::prelude::*;

    use super::*;

    fn os(s: &str) -> Option<OsString> {
        Some(OsString::from(s))
    }

    #[test]
    fn der_of_raw_signatures() {
        // High bits set: each INTEGER gets a leading zero byte.
        let raw = [[0x80; 32], [0xff; 32]].concat();
        let der = ecdsa_raw_to_der(&raw).unwrap();
        let expected = [
            &[0x30, 0x46, 0x02, 0x21, 0x00][..],
            &[0x80; 32],
            &[0x02, 0x21, 0x00],
            &[0xff; 32],
        ]
        .concat();
        assert_eq!(der, expected);

        // Leading zero bytes are dropped; a zero stays one byte.
        let mut raw = [0u8; 64];
        raw[31] = 0x01;
        raw[34] = 0x7f;
        let der = ecdsa_raw_to_der(&raw).unwrap();
        let mut expected = vec![0x30, 0x23, 0x02, 0x01, 0x01, 0x02, 0x1e, 0x7f];
        expected.extend_from_slice(&[0; 29]);
        assert_eq!(der, expected);
        let der = ecdsa_raw_to_der(&[0; 64]).unwrap();
        assert_eq!(der, [0x30, 0x06, 0x02, 0x01, 0x00, 0x02, 0x01, 0x00]);

        for len in [0, 1, 32, 63, 65, 96, 128] {
            assert!(ecdsa_raw_to_der(&vec![1; len]).is_none(), "{len}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// A fixed-size signature from aws-lc-rs, re-encoded, verifies as ASN.1 DER.
        #[test]
        fn der_signatures_verify(msg in proptest::collection::vec(any::<u8>(), 0..256)) {
            let rng = SystemRandom::new();
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .unwrap();
            let pair =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
            let fixed = pair.sign(&rng, &msg).unwrap();
            let der = ecdsa_raw_to_der(fixed.as_ref()).unwrap();
            prop_assert!((8..=72).contains(&der.len()));
            let public = UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, pair.public_key().as_ref());
            prop_assert!(public.verify(&msg, &der).is_ok());
        }

        /// Any 64 bytes encode to DER that reads back as the same two integers.
        #[test]
        fn der_reads_back(r in any::<[u8; 32]>(), s in any::<[u8; 32]>()) {
            let der = ecdsa_raw_to_der(&[r, s].concat()).unwrap();
            let ((r2, r_positive), (s2, s_positive)) = yasna::parse_der(&der, |reader| {
                reader.read_sequence(|reader| {
                    let r = reader.next().read_bigint_bytes()?;
                    let s = reader.next().read_bigint_bytes()?;
                    Ok((r, s))
                })
            })
            .unwrap();
            prop_assert!(r_positive && s_positive);
            let strip = |b: &[u8]| {
                let start = b.iter().position(|&x| x != 0).unwrap_or(b.len().saturating_sub(1));
                b[start..].to_vec()
            };
            prop_assert_eq!(strip(&r2), strip(&r));
            prop_assert_eq!(strip(&s2), strip(&s));
        }
    }

    #[test]
    fn ec_points_are_unwrapped() {
        let point: Vec<u8> = [&[0x04][..], &[7; 64]].concat();
        let wrapped = [&[0x04, 0x41][..], &point].concat();
        assert_eq!(decode_ec_point(&wrapped, 65).unwrap(), point);
        assert_eq!(decode_ec_point(&point, 65).unwrap(), point);
        let ed = [9u8; 32];
        let wrapped = [&[0x04, 0x20][..], &ed].concat();
        assert_eq!(decode_ec_point(&wrapped, 32).unwrap(), ed);
        assert_eq!(decode_ec_point(&ed, 32).unwrap(), ed);
        // A bare point that also reads as an OCTET STRING of another length is a bare point.
        let bare: Vec<u8> = [&[0x04, 0x3f][..], &[7; 63]].concat();
        assert_eq!(decode_ec_point(&bare, 65).unwrap(), bare);
        let bare: Vec<u8> = [&[0x04, 0x1e][..], &[5; 30]].concat();
        assert_eq!(decode_ec_point(&bare, 32).unwrap(), bare);
        // Wrong lengths, inside or outside the OCTET STRING.
        assert!(decode_ec_point(&wrapped, 65).is_none());
        assert!(decode_ec_point(&[0x04, 0x02, 1, 2], 32).is_none());
        assert!(decode_ec_point(&[], 32).is_none());
    }

    #[test]
    fn curve_parameters_are_the_der_oids() {
        let oid = |der: &[u8]| yasna::parse_der(der, |r| r.read_oid()).unwrap().to_string();
        assert_eq!(oid(P256_PARAMS), "1.2.840.10045.3.1.7");
        assert_eq!(oid(ED25519_PARAMS), "1.3.101.112");
        let name = yasna::parse_der(ED25519_PARAMS_NAME, |r| r.read_printable_string()).unwrap();
        assert_eq!(name, "edwards25519");
    }

    #[test]
    fn login_errors_name_the_token_and_never_the_pin() {
        let login = |rv| login_error(&CkError::Pkcs11(rv, Function::Login), "hub");
        for rv in [
            RvError::PinIncorrect,
            RvError::PinLenRange,
            RvError::PinInvalid,
        ] {
            let err = login(rv);
            assert!(matches!(&err, KeyStoreError::WrongPin { token } if token == "hub"));
            assert_eq!(err.to_string(), "wrong pin for pkcs#11 token `hub`");
        }
        let err = login(RvError::PinLocked);
        assert!(matches!(&err, KeyStoreError::PinLocked { token } if token == "hub"));
        assert_eq!(
            err.to_string(),
            "the user pin of pkcs#11 token `hub` is locked; the token's security officer must \
             reset it"
        );
        let err = login(RvError::UserPinNotInitialized);
        assert_eq!(
            err.to_string(),
            "pkcs#11 login failed: the user pin of token `hub` is not initialized"
        );
        assert!(login(RvError::PinExpired).to_string().contains("expired"));
        let err = login(RvError::GeneralError);
        assert_eq!(
            err.to_string(),
            "pkcs#11 login failed: C_Login returned CKR_GENERAL_ERROR"
        );
    }

    #[test]
    fn a_login_is_not_tried_at_the_final_try_or_when_locked() {
        let module = Path::new("/usr/lib/hsm.so");
        let ready = UserPin {
            initialized: true,
            ..UserPin::default()
        };
        may_log_in(ready, module, "hub").unwrap();

        let err = may_log_in(
            UserPin {
                final_try: true,
                ..ready
            },
            module,
            "hub",
        )
        .unwrap_err();
        assert!(
            matches!(err, KeyStoreError::Pkcs11 { op: "login", .. }),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "pkcs#11 login failed: not tried: the user pin of token `hub` is at its final try, \
             and a wrong pin would lock the token; log in once by hand with the right pin (e.g. \
             `pkcs11-tool --module /usr/lib/hsm.so --token-label 'hub' --login --list-objects`), \
             which resets the count, or have the token's security officer reset the pin"
        );

        let err = may_log_in(
            UserPin {
                locked: true,
                final_try: true,
                ..ready
            },
            module,
            "hub",
        )
        .unwrap_err();
        assert!(matches!(&err, KeyStoreError::PinLocked { token } if token == "hub"));
        let err = may_log_in(UserPin::default(), module, "hub").unwrap_err();
        assert_eq!(
            err.to_string(),
            "pkcs#11 login failed: the user pin of token `hub` is not initialized"
        );
    }

    #[test]
    fn return_codes_get_their_ckr_names() {
        assert_eq!(rv_name(RvError::PinIncorrect), "CKR_PIN_INCORRECT");
        assert_eq!(rv_name(RvError::KeyHandleInvalid), "CKR_KEY_HANDLE_INVALID");
        assert_eq!(
            describe(&CkError::Pkcs11(
                RvError::EncryptedDataInvalid,
                Function::Decrypt
            )),
            "C_Decrypt returned CKR_ENCRYPTED_DATA_INVALID"
        );
    }

    #[test]
    fn config_from_values() {
        assert!(
            Pkcs11Config::from_values(None, None, None)
                .unwrap()
                .is_none()
        );
        let err = Pkcs11Config::from_values(os(""), os(""), os("")).unwrap_err();
        assert!(
            err.to_string().contains(
                "`ENTENTE_PKCS11_MODULE` and `ENTENTE_PKCS11_TOKEN` and `ENTENTE_PKCS11_PIN` are not set (or empty)"
            ),
            "{err}"
        );
        let config = Pkcs11Config::from_values(os("/m.so"), os("hub token"), os("12 34"))
            .unwrap()
            .unwrap();
        assert_eq!(config.module, Path::new("/m.so"));
        assert_eq!(config.token_label, "hub token");
        assert_eq!(config.pin.as_str(), "12 34");
    }

    #[test]
    fn config_missing_values_are_named_without_values() {
        let err = Pkcs11Config::from_values(os("/m.so"), None, os("secret-pin")).unwrap_err();
        assert!(matches!(err, KeyStoreError::Config(_)));
        assert_eq!(
            err.to_string(),
            "invalid keystore configuration: a pkcs#11 keystore needs `ENTENTE_PKCS11_MODULE`, \
             `ENTENTE_PKCS11_TOKEN` and `ENTENTE_PKCS11_PIN`; `ENTENTE_PKCS11_TOKEN` is not set (or empty)"
        );
        let err = Pkcs11Config::from_values(None, None, os("secret-pin")).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.ends_with(
                "`ENTENTE_PKCS11_MODULE` and `ENTENTE_PKCS11_TOKEN` are not set (or empty)"
            ),
            "{msg}"
        );
        assert!(!msg.contains("secret-pin"));
    }

    #[cfg(unix)]
    #[test]
    fn config_non_utf8_values_are_refused() {
        use std::os::unix::ffi::OsStringExt;
        let bad = || Some(OsString::from_vec(vec![0xff, 0xfe]));
        let err = Pkcs11Config::from_values(os("/m.so"), bad(), os("1234")).unwrap_err();
        assert!(
            err.to_string()
                .contains("`ENTENTE_PKCS11_TOKEN` is not valid UTF-8")
        );
        let err = Pkcs11Config::from_values(os("/m.so"), os("t"), bad()).unwrap_err();
        assert!(
            err.to_string()
                .contains("`ENTENTE_PKCS11_PIN` is not valid UTF-8")
        );
        // A module path need not be UTF-8.
        assert!(
            Pkcs11Config::from_values(bad(), os("t"), os("1234"))
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn config_debug_hides_the_pin() {
        let config = Pkcs11Config {
            module: PathBuf::from("/m.so"),
            token_label: "hub".to_owned(),
            pin: Zeroizing::new("hunter2".to_owned()),
        };
        let debug = format!("{config:?} {config:#?}");
        assert!(!debug.contains("hunter2"));
        assert!(debug.contains("redacted"));
        assert!(debug.contains("/m.so"));
    }

    #[test]
    fn token_not_found_lists_the_labels() {
        let err = KeyStoreError::TokenNotFound {
            label: "hub".to_owned(),
            found: vec!["ca".to_owned(), "audit".to_owned()],
        };
        assert_eq!(
            err.to_string(),
            "no pkcs#11 token labelled `hub`; tokens found: `ca`, `audit`"
        );
        let err = KeyStoreError::TokenNotFound {
            label: "hub".to_owned(),
            found: Vec::new(),
        };
        assert_eq!(
            err.to_string(),
            "no pkcs#11 token labelled `hub`; the module has no initialized token"
        );
    }
}
