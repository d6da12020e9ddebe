//! Identity directories.
//!
//! An identity directory holds one principal's credentials, each in its own file:
//!
//! | file | content |
//! |---|---|
//! | `identity.json` | `{"version": 1, "principal": "spiffe://…"}` |
//! | `chain.pem` | the X509-SVID, then the intermediate CA certificate |
//! | `tls-key.pem` | the TLS private key, PKCS#8 (`PRIVATE KEY`), ECDSA P-256 |
//! | `message-keys.bin` | 64 bytes: the Ed25519 seed, then the X25519 secret |
//! | `key-bundle.pb` | the CA-signed key bundle (protobuf `KeyBundle`) |
//! | `ca.pem` | the trust bundle: the CA certificates to verify against |
//! | `tls-key.next.pem` | only while a renewal is being written: the new TLS key |
//! | `identity.lock` | empty: locked while the directory is written or loaded |
//!
//! The directory is created 0700 and every file 0600, and each file is replaced atomically.
//! Writing holds an exclusive advisory lock on `identity.lock` and loading a shared one, so that
//! clients sharing the directory (two processes of one agent renewing at the same moment)
//! neither interleave their writes nor load one half-way.
//!
//! A renewal ([`Identity::renewed_with`]) brings a new certificate and TLS key, and may bring
//! what the hub's answer offers during an intermediate CA rollover: the hub's trust bundle,
//! whose intermediates are adopted only if a root this identity already trusts signed them
//! ([`TrustBundle::adopt_intermediates`]: the hub never changes the roots), and this
//! principal's key bundle re-signed by the new intermediate, taken only if it verifies and
//! carries the same principal, message keys and epoch. What is refused leaves the current
//! trust bundle or key bundle in place; the certificate is renewed all the same.
//!
//! Writing a renewal ([`Identity::save_renewal`]) replaces only what changed, in an order
//! such that a crash at any step leaves a directory that loads:
//!
//! 1. if the trust bundle changed, `ca.pem` first becomes the old and new intermediates
//!    together, so that the key bundle on disk, old or new, verifies against it;
//! 2. if the key bundle changed, `key-bundle.pb` is replaced;
//! 3. the certificate and its TLS key, which live in two files, in four steps: the new key
//!    goes to `tls-key.next.pem`, then `chain.pem` is replaced (the moment the renewal takes
//!    effect on disk), then `tls-key.pem`, and `tls-key.next.pem` is removed. Loading takes
//!    `tls-key.next.pem` when it, and not `tls-key.pem`, is the chain's key, so a crash
//!    leaves the old certificate with its key or the new one with its key, never a mix;
//! 4. `ca.pem` becomes the adopted trust bundle (dropping an intermediate the hub retired).
//!
//! Loading checks everything fits together: the chain verifies against the trust bundle for
//! the recorded principal, the TLS key is the certificate's key, and the key bundle verifies
//! and carries the message keys.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use aws_lc_rs::{
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair},
};
use entente_ca::TrustBundle;
use entente_crypto::{KeyBundleIn, MessageKeys, VerifiedKeyBundle};
use entente_keystore::{KeyStoreError, local::files};
use entente_types::Principal;
use entente_wire as wire;
use rustls_pki_types::{CertificateDer, pem::PemObject};
use zeroize::Zeroizing;

/// The identity-directory format version.
pub const IDENTITY_VERSION: u32 = 1;

const META: &str = "identity.json";
const CHAIN: &str = "chain.pem";
const TLS_KEY: &str = "tls-key.pem";
const MESSAGE_KEYS: &str = "message-keys.bin";
const KEY_BUNDLE: &str = "key-bundle.pb";
const TRUST: &str = "ca.pem";
const TLS_KEY_NEXT: &str = "tls-key.next.pem";
const LOCK: &str = "identity.lock";

/// Why an identity could not be made, loaded or saved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// A file could not be read or written, or has unsafe permissions.
    #[error("{0}")]
    Files(#[from] KeyStoreError),
    /// A file is malformed.
    #[error("`{file}` is malformed: {reason}")]
    Malformed {
        /// The file name.
        file: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The directory was written by a newer version.
    #[error("identity format version {0} is not supported")]
    UnsupportedVersion(u32),
    /// The certificate chain does not verify against the trust bundle.
    #[error("the certificate does not verify: {0}")]
    Certificate(#[from] entente_ca::SvidError),
    /// The certificate is for another principal than the one recorded.
    #[error("the certificate is for `{found}`, not `{expected}`")]
    WrongPrincipal {
        /// The recorded principal.
        expected: String,
        /// The certificate's.
        found: String,
    },
    /// The TLS private key is not the certificate's key.
    #[error("the TLS key does not match the certificate")]
    KeyMismatch,
    /// The key bundle does not verify, or does not carry these message keys.
    #[error("the key bundle does not match: {0}")]
    KeyBundle(String),
    /// An offered trust bundle is not adopted: it is malformed, of another trust domain, has
    /// no intermediate signed by a root of this identity's trust bundle, or would leave this
    /// identity's key bundle unverifiable.
    #[error("the offered trust bundle is not adopted: {0}")]
    TrustBundle(String),
}

/// A renewed identity ([`Identity::renewed_with`]), and what of the hub's offer it refused.
///
/// A refusal does not stop the renewal: the identity has the new certificate and keeps its
/// current trust bundle or key bundle in place of the refused one.
#[derive(Debug)]
#[non_exhaustive]
pub struct Renewed {
    /// The identity with the new certificate, and the adopted trust bundle and key bundle.
    pub identity: Identity,
    /// Why the offered trust bundle was not adopted; `None` when it was, or none was offered.
    pub trust_refused: Option<IdentityError>,
    /// Why the offered key bundle was not taken; `None` when it was, or none was offered.
    pub key_bundle_refused: Option<IdentityError>,
}

/// An enrolled principal's credentials.
///
/// Cloning copies the credentials (the private keys included, each copy zeroized on drop).
#[derive(Clone)]
pub struct Identity {
    principal: Principal,
    chain: Vec<CertificateDer<'static>>,
    tls_key: Zeroizing<Vec<u8>>,
    message_keys: Arc<MessageKeys>,
    key_bundle: VerifiedKeyBundle,
    trust: TrustBundle,
    /// The certificate's validity.
    not_before: SystemTime,
    not_after: SystemTime,
    /// The identity directory renewed certificates are written to.
    dir: Option<PathBuf>,
}

impl Identity {
    /// Assembles an identity, checking every part against the others at time `now`.
    pub fn new(
        principal: Principal,
        chain: Vec<CertificateDer<'static>>,
        tls_key_pkcs8: Zeroizing<Vec<u8>>,
        message_keys: MessageKeys,
        key_bundle: wire::KeyBundle,
        trust: TrustBundle,
        now: SystemTime,
    ) -> Result<Self, IdentityError> {
        let verified = trust.verify_svid(&chain, now, None)?;
        if verified.principal() != &principal {
            return Err(IdentityError::WrongPrincipal {
                expected: principal.to_string(),
                found: verified.principal().to_string(),
            });
        }
        let (not_before, not_after) = check_leaf(&chain, &tls_key_pkcs8)?;
        let key_bundle = KeyBundleIn::from_wire(key_bundle)
            .and_then(|b| b.verify(&trust, unix_ms(now)))
            .map_err(|e| IdentityError::KeyBundle(e.to_string()))?;
        let body = key_bundle.body();
        if body.principal != principal
            || body.ed25519_public != message_keys.ed25519_public()
            || body.x25519_public != message_keys.x25519_public()
        {
            return Err(IdentityError::KeyBundle(
                "it is not for this principal and these message keys".into(),
            ));
        }
        Ok(Self {
            principal,
            chain,
            tls_key: tls_key_pkcs8,
            message_keys: Arc::new(message_keys),
            key_bundle,
            trust,
            not_before,
            not_after,
            dir: None,
        })
    }

    /// Loads and checks the identity in `dir`, and remembers `dir`: a
    /// [`Client`](crate::Client) connected with this identity writes its renewed certificates
    /// there (see [`Identity::dir`]).
    ///
    /// ```no_run
    /// use std::{path::Path, time::SystemTime};
    ///
    /// # fn run() -> Result<(), entente_client::IdentityError> {
    /// let identity = entente_client::Identity::load(Path::new("alice"), SystemTime::now())?;
    /// assert!(identity.dir().is_some_and(|dir| dir.ends_with("alice")));
    /// println!("{} until {:?}", identity.principal(), identity.not_after());
    /// # Ok(())
    /// # }
    /// ```
    pub fn load(dir: &Path, now: SystemTime) -> Result<Self, IdentityError> {
        files::check_dir(dir)?;
        let _lock = DirLock::shared(dir)?;
        let meta: Meta = serde_json::from_slice(&files::read_private(&dir.join(META))?)
            .map_err(|e| malformed(META, e))?;
        if meta.version != IDENTITY_VERSION {
            return Err(IdentityError::UnsupportedVersion(meta.version));
        }
        let principal = Principal::parse(&meta.principal).map_err(|e| malformed(META, e))?;
        let chain = CertificateDer::pem_slice_iter(&files::read_private(&dir.join(CHAIN))?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| malformed(CHAIN, e))?;
        let tls_key = load_tls_key(dir, &chain)?;
        let secret = Zeroizing::new(files::read_private(&dir.join(MESSAGE_KEYS))?);
        let message_keys =
            MessageKeys::from_secret_bytes(&secret).map_err(|e| malformed(MESSAGE_KEYS, e))?;
        let key_bundle = wire::decode::<wire::KeyBundle>(
            &files::read_private(&dir.join(KEY_BUNDLE))?,
            &wire::Limits::default(),
        )
        .map_err(|e| malformed(KEY_BUNDLE, e))?;
        let trust_pem = files::read_private(&dir.join(TRUST))?;
        let trust = std::str::from_utf8(&trust_pem)
            .map_err(|e| malformed(TRUST, e))
            .and_then(|pem| TrustBundle::from_pem(pem).map_err(|e| malformed(TRUST, e)))?;
        let identity = Self::new(
            principal,
            chain,
            tls_key,
            message_keys,
            key_bundle,
            trust,
            now,
        )?;
        // Absolute, so that renewals land here whatever the working directory becomes.
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
        Ok(identity.with_dir(Some(dir)))
    }

    /// Writes the identity to `dir` (created 0700 if missing), each file atomically.
    pub fn save(&self, dir: &Path) -> Result<(), IdentityError> {
        files::create_private_dir_all(dir)?;
        let _lock = DirLock::exclusive(dir)?;
        let rng = SystemRandom::new();
        let meta = serde_json::to_vec_pretty(&Meta {
            version: IDENTITY_VERSION,
            principal: self.principal.to_string(),
        })
        .map_err(|e| malformed(META, e))?;
        self.write_certificate(dir, &rng)?;
        let secret = self
            .message_keys
            .to_secret_bytes()
            .map_err(|e| malformed(MESSAGE_KEYS, e))?;
        files::replace(dir, MESSAGE_KEYS, &secret, &rng)?;
        files::replace(
            dir,
            KEY_BUNDLE,
            &wire::encode(self.key_bundle.to_wire()),
            &rng,
        )?;
        files::replace(dir, TRUST, self.trust.to_pem().as_bytes(), &rng)?;
        // Last: a directory without `identity.json` is not an identity yet.
        files::replace(dir, META, &meta, &rng)?;
        Ok(())
    }

    /// Writes what a renewal changes to the identity directory `dir`, which must hold this
    /// principal's identity: the trust bundle and the key bundle if they differ from the
    /// files, and the certificate chain and TLS key, in an order that a crash at any step
    /// leaves a directory that loads (see the module documentation).
    ///
    /// ```no_run
    /// # fn run(
    /// #     identity: entente_client::Identity,
    /// #     chain: Vec<rustls_pki_types::CertificateDer<'static>>,
    /// #     tls_key: zeroize::Zeroizing<Vec<u8>>,
    /// #     response: entente_wire::RenewResponse,
    /// # ) -> Result<(), entente_client::IdentityError> {
    /// use std::time::SystemTime;
    ///
    /// let renewed = identity.renewed_with(
    ///     chain,
    ///     tls_key,
    ///     &response.trust_bundle_pem,
    ///     response.key_bundle,
    ///     SystemTime::now(),
    /// )?;
    /// if let Some(dir) = renewed.identity.dir() {
    ///     renewed.identity.save_renewal(dir)?;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn save_renewal(&self, dir: &Path) -> Result<(), IdentityError> {
        files::check_dir(dir)?;
        let _lock = DirLock::exclusive(dir)?;
        let meta: Meta = serde_json::from_slice(&files::read_private(&dir.join(META))?)
            .map_err(|e| malformed(META, e))?;
        if meta.version != IDENTITY_VERSION {
            return Err(IdentityError::UnsupportedVersion(meta.version));
        }
        if meta.principal != self.principal.as_str() {
            return Err(IdentityError::WrongPrincipal {
                expected: self.principal.to_string(),
                found: meta.principal,
            });
        }
        let key_bundle = wire::encode(self.key_bundle.to_wire());
        let on_disk = files::read_private(&dir.join(KEY_BUNDLE))?;
        let bundle_changed = on_disk != key_bundle;
        if bundle_changed {
            // The directory may hold another enrollment of this principal now (one swapped in
            // while this identity ran): its keys are never written over with these.
            let held = wire::decode::<wire::KeyBundle>(&on_disk, &wire::Limits::default())
                .map_err(|e| malformed(KEY_BUNDLE, e))?;
            let ours = self.key_bundle.to_wire();
            if (&held.ed25519_public, &held.x25519_public, held.epoch)
                != (&ours.ed25519_public, &ours.x25519_public, ours.epoch)
            {
                return Err(IdentityError::KeyBundle(format!(
                    "the directory holds the message keys of another enrollment of `{}` \
                     (key epoch {}): this identity's renewal (key epoch {}) is not written \
                     over them",
                    self.principal, held.epoch, ours.epoch
                )));
            }
        }
        let rng = SystemRandom::new();
        let trust_pem = self.trust.to_pem();
        let trust_on_disk = files::read_private(&dir.join(TRUST))?;
        let mut trust_changed = trust_on_disk != trust_pem.as_bytes();
        if trust_changed {
            // The key bundle on disk may be signed by an intermediate the new trust bundle
            // dropped: until it is replaced, the bundle on disk keeps both.
            let both = std::str::from_utf8(&trust_on_disk)
                .ok()
                .and_then(|pem| TrustBundle::from_pem(pem).ok())
                .and_then(|old| with_intermediates_of(&self.trust, &old))
                .map(|both| both.to_pem());
            if let Some(both) = both {
                files::replace(dir, TRUST, both.as_bytes(), &rng)?;
                // Nothing was dropped: this is already the new bundle.
                trust_changed = both != trust_pem;
            }
        }
        if bundle_changed {
            files::replace(dir, KEY_BUNDLE, &key_bundle, &rng)?;
        }
        self.write_certificate(dir, &rng)?;
        if trust_changed {
            files::replace(dir, TRUST, trust_pem.as_bytes(), &rng)?;
        }
        Ok(())
    }

    /// Replaces the certificate chain and TLS key after a renewal (checked like
    /// [`Identity::new`]: the chain verifies against the trust bundle at `now`, names this
    /// principal, and carries the public key of `tls_key_pkcs8`), keeping the trust bundle
    /// and key bundle. The directory is kept. [`Identity::renewed_with`] also takes what the
    /// hub's renewal answer offers.
    pub fn renewed(
        &self,
        chain: Vec<CertificateDer<'static>>,
        tls_key_pkcs8: Zeroizing<Vec<u8>>,
        now: SystemTime,
    ) -> Result<Self, IdentityError> {
        self.renewed_with(chain, tls_key_pkcs8, "", None, now)
            .map(|renewed| renewed.identity)
    }

    /// Replaces the certificate chain and TLS key after a renewal, and takes what the hub's
    /// renewal answer offers besides (`RenewResponse`), as far as it checks out:
    ///
    /// - `offered_trust_pem` (empty: nothing offered): the hub's trust bundle. Its
    ///   intermediates signed by a root of this identity's trust bundle replace this
    ///   bundle's intermediates; the roots never change
    ///   ([`TrustBundle::adopt_intermediates`]). Refused, keeping the current trust bundle, if
    ///   it does not parse, is of another trust domain, has no intermediate under these roots,
    ///   or would leave the key bundle kept unverifiable.
    /// - `offered_key_bundle`: this principal's key bundle as the hub serves it (re-signed by
    ///   a new intermediate after a rollover). Taken only if it verifies against the (adopted)
    ///   trust bundle at `now` and carries the same principal, Ed25519 key, X25519 key and
    ///   epoch as the current one; refused otherwise, keeping the current one.
    ///
    /// The new chain is checked like [`Identity::new`] against the (adopted) trust bundle;
    /// that failing fails the renewal. A refused offer does not: [`Renewed`] says why it was
    /// refused. The directory is kept.
    pub fn renewed_with(
        &self,
        chain: Vec<CertificateDer<'static>>,
        tls_key_pkcs8: Zeroizing<Vec<u8>>,
        offered_trust_pem: &str,
        offered_key_bundle: Option<wire::KeyBundle>,
        now: SystemTime,
    ) -> Result<Renewed, IdentityError> {
        let (mut trust, mut trust_refused) = if offered_trust_pem.trim().is_empty() {
            (self.trust.clone(), None)
        } else {
            match adopt_intermediates(&self.trust, offered_trust_pem) {
                Ok(adopted) => (adopted, None),
                Err(e) => (self.trust.clone(), Some(e)),
            }
        };
        let (key_bundle, key_bundle_refused) = match offered_key_bundle {
            None => (self.key_bundle.to_wire().clone(), None),
            Some(offered) => match self.check_own_key_bundle(offered, &trust, now) {
                Ok(offered) => (offered, None),
                Err(e) => (self.key_bundle.to_wire().clone(), Some(e)),
            },
        };
        // Keeping the current key bundle under an adopted trust bundle that dropped its
        // signer would leave this identity unable to prove its keys: keep the current one.
        if trust_refused.is_none()
            && KeyBundleIn::from_wire(key_bundle.clone())
                .and_then(|b| b.verify(&trust, unix_ms(now)))
                .is_err()
        {
            trust = self.trust.clone();
            trust_refused = Some(IdentityError::TrustBundle(
                "it drops the intermediate that signed this identity's key bundle, and no key \
                 bundle re-signed under it was taken"
                    .into(),
            ));
        }
        let secret = self
            .message_keys
            .to_secret_bytes()
            .map_err(|e| malformed(MESSAGE_KEYS, e))?;
        let message_keys =
            MessageKeys::from_secret_bytes(&secret).map_err(|e| malformed(MESSAGE_KEYS, e))?;
        let identity = Self::new(
            self.principal.clone(),
            chain,
            tls_key_pkcs8,
            message_keys,
            key_bundle,
            trust,
            now,
        )?
        .with_dir(self.dir.clone());
        Ok(Renewed {
            identity,
            trust_refused,
            key_bundle_refused,
        })
    }

    /// Sets the identity directory a [`Client`](crate::Client) writes renewed certificates to:
    /// `None` keeps them in memory only. [`Identity::load`] sets the directory it loaded from;
    /// after [`Identity::save`], set it here to keep that directory current.
    ///
    /// ```no_run
    /// # async fn run(trust: entente_ca::TrustBundle) -> Result<(), Box<dyn std::error::Error>> {
    /// use std::path::Path;
    ///
    /// let identity = entente_client::enroll("127.0.0.1:7443", &trust, "ent_…").await?;
    /// identity.save(Path::new("alice"))?;
    /// let identity = identity.with_dir(Some(Path::new("alice").to_owned()));
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.dir = dir;
        self
    }

    /// The identity directory a [`Client`](crate::Client) writes renewed certificates to, if
    /// any (see [`Identity::with_dir`]).
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// When the certificate became valid.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// When the certificate expires.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Whose identity this is.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// The certificate chain: the SVID, then the intermediate.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The TLS private key, PKCS#8 DER.
    pub fn tls_key_pkcs8(&self) -> &[u8] {
        &self.tls_key
    }

    /// The message keys.
    pub fn message_keys(&self) -> &Arc<MessageKeys> {
        &self.message_keys
    }

    /// The verified key bundle.
    pub fn key_bundle(&self) -> &VerifiedKeyBundle {
        &self.key_bundle
    }

    /// The trust bundle.
    pub fn trust(&self) -> &TrustBundle {
        &self.trust
    }

    /// `offered` if it verifies against `trust` at `now` and differs from this identity's
    /// key bundle at most in its validity and signature.
    fn check_own_key_bundle(
        &self,
        offered: wire::KeyBundle,
        trust: &TrustBundle,
        now: SystemTime,
    ) -> Result<wire::KeyBundle, IdentityError> {
        let verified = KeyBundleIn::from_wire(offered)
            .and_then(|b| b.verify(trust, unix_ms(now)))
            .map_err(|e| IdentityError::KeyBundle(format!("the offered key bundle: {e}")))?;
        let (offered, current) = (verified.body(), self.key_bundle.body());
        if offered.principal != current.principal {
            return Err(IdentityError::KeyBundle(format!(
                "the offered key bundle is for `{}`, not `{}`",
                offered.principal, current.principal
            )));
        }
        if offered.ed25519_public != current.ed25519_public
            || offered.x25519_public != current.x25519_public
            || offered.epoch != current.epoch
        {
            return Err(IdentityError::KeyBundle(format!(
                "the offered key bundle carries other message keys (epoch {}) than this \
                 identity's (epoch {})",
                offered.epoch, current.epoch
            )));
        }
        Ok(verified.to_wire().clone())
    }

    /// Writes the chain and TLS key so that a crash leaves the old pair or the new one.
    fn write_certificate(&self, dir: &Path, rng: &SystemRandom) -> Result<(), IdentityError> {
        let key_pem = Zeroizing::new(pem::encode_config(
            &pem::Pem::new("PRIVATE KEY", self.tls_key.to_vec()),
            pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
        ));
        files::replace(dir, TLS_KEY_NEXT, key_pem.as_bytes(), rng)?;
        files::replace(dir, CHAIN, self.chain_pem().as_bytes(), rng)?;
        files::replace(dir, TLS_KEY, key_pem.as_bytes(), rng)?;
        files::remove(&dir.join(TLS_KEY_NEXT))?;
        Ok(())
    }

    fn chain_pem(&self) -> String {
        self.chain
            .iter()
            .map(|c| {
                pem::encode_config(
                    &pem::Pem::new("CERTIFICATE", c.as_ref().to_vec()),
                    pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
                )
            })
            .collect()
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("principal", &self.principal)
            .field("key_epoch", &self.key_bundle.epoch())
            .field("not_after", &self.not_after)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// An advisory lock on an identity directory's `identity.lock` (made 0600 if missing), held
/// until dropped. Only for the directory's own writers and readers: nothing else is kept out.
struct DirLock(
    /// Unlocked as it is closed.
    #[expect(dead_code, reason = "held for its lock, never read")]
    Option<std::fs::File>,
);

impl DirLock {
    /// The lock for writing `dir`: no one else writes or loads it meanwhile.
    fn exclusive(dir: &Path) -> Result<Self, IdentityError> {
        let path = dir.join(LOCK);
        let file = Self::open(&path).map_err(|e| lock_error(&path, e))?;
        match file.lock() {
            Ok(()) => Ok(Self(Some(file))),
            // A file system without locks: as before there were any.
            Err(e) if e.kind() == std::io::ErrorKind::Unsupported => Ok(Self(None)),
            Err(e) => Err(lock_error(&path, e)),
        }
    }

    /// The lock for loading `dir`: no one writes it meanwhile. A directory this process may
    /// not write to (a read-only mount) has no writer to wait for, and loads without one.
    fn shared(dir: &Path) -> Result<Self, IdentityError> {
        use std::io::ErrorKind;

        let path = dir.join(LOCK);
        let file = match Self::open(&path) {
            Ok(file) => file,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem
                ) =>
            {
                return Ok(Self(None));
            }
            Err(e) => return Err(lock_error(&path, e)),
        };
        match file.lock_shared() {
            Ok(()) => Ok(Self(Some(file))),
            Err(e) if e.kind() == ErrorKind::Unsupported => Ok(Self(None)),
            Err(e) => Err(lock_error(&path, e)),
        }
    }

    fn open(path: &Path) -> std::io::Result<std::fs::File> {
        use std::os::unix::fs::OpenOptionsExt as _;

        // Not through a link someone put there (the directory is checked to be this user's).
        if std::fs::symlink_metadata(path).is_ok_and(|m| !m.file_type().is_file()) {
            return Err(std::io::Error::other("not a regular file"));
        }
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
    }
}

fn lock_error(path: &Path, source: std::io::Error) -> IdentityError {
    IdentityError::Files(KeyStoreError::Io {
        path: path.to_owned(),
        source,
    })
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Meta {
    version: u32,
    principal: String,
}

/// Checks that `pkcs8` is the key of the chain's leaf certificate; returns the leaf's validity.
fn check_leaf(
    chain: &[CertificateDer<'static>],
    pkcs8: &[u8],
) -> Result<(SystemTime, SystemTime), IdentityError> {
    let leaf = chain
        .first()
        .ok_or_else(|| malformed(CHAIN, "no certificate"))?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| malformed(CHAIN, e))?;
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8)
        .map_err(|e| malformed(TLS_KEY, e))?;
    if cert.public_key().subject_public_key.data.as_ref() != key.public_key().as_ref() {
        return Err(IdentityError::KeyMismatch);
    }
    let validity = cert.validity();
    Ok((
        unix_time(validity.not_before.timestamp()),
        unix_time(validity.not_after.timestamp()),
    ))
}

/// The TLS key of `chain` in `dir`: `tls-key.pem`, or `tls-key.next.pem` when a renewal was
/// interrupted after its chain was written. A mismatch is left for [`Identity::new`] to report.
fn load_tls_key(
    dir: &Path,
    chain: &[CertificateDer<'static>],
) -> Result<Zeroizing<Vec<u8>>, IdentityError> {
    let key = read_tls_key(dir, TLS_KEY)?;
    if !matches!(check_leaf(chain, &key), Err(IdentityError::KeyMismatch)) {
        return Ok(key);
    }
    match read_tls_key(dir, TLS_KEY_NEXT) {
        Ok(next) if check_leaf(chain, &next).is_ok() => Ok(next),
        _ => Ok(key),
    }
}

fn read_tls_key(dir: &Path, file: &'static str) -> Result<Zeroizing<Vec<u8>>, IdentityError> {
    let pem = Zeroizing::new(files::read_private(&dir.join(file))?);
    Ok(Zeroizing::new(
        rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(&pem)
            .map_err(|e| malformed(file, e))?
            .secret_pkcs8_der()
            .to_vec(),
    ))
}

/// `trust` with the intermediates of `offered_pem` that a root of `trust` signed, instead of
/// its own.
fn adopt_intermediates(
    trust: &TrustBundle,
    offered_pem: &str,
) -> Result<TrustBundle, IdentityError> {
    let offered = TrustBundle::from_pem(offered_pem)
        .map_err(|e| IdentityError::TrustBundle(format!("it does not parse: {e}")))?;
    trust
        .adopt_intermediates(&offered)
        .map_err(|e| IdentityError::TrustBundle(e.to_string()))
}

/// `trust` with, besides its own, the intermediates of `other` that a root of `trust` signed;
/// `None` if `other` has none.
fn with_intermediates_of(trust: &TrustBundle, other: &TrustBundle) -> Option<TrustBundle> {
    let adopted = trust.adopt_intermediates(other).ok()?;
    let mut intermediates = trust.intermediates().to_vec();
    for cert in adopted.intermediates() {
        if !intermediates.contains(cert) {
            intermediates.push(cert.clone());
        }
    }
    TrustBundle::new(trust.roots().to_vec(), intermediates).ok()
}

/// The trust bundle a freshly enrolled identity uses: `out_of_band` with the intermediates the
/// hub offered in `offered_pem` adopted (an agent enrolling during a rollover learns the
/// staged intermediate), as long as `key_bundle` still verifies against it at `now`;
/// `out_of_band` otherwise.
pub(crate) fn enrollment_trust(
    out_of_band: &TrustBundle,
    offered_pem: &str,
    key_bundle: &wire::KeyBundle,
    now: SystemTime,
) -> TrustBundle {
    if offered_pem.trim().is_empty() {
        return out_of_band.clone();
    }
    adopt_intermediates(out_of_band, offered_pem)
        .ok()
        .filter(|adopted| {
            KeyBundleIn::from_wire(key_bundle.clone())
                .and_then(|b| b.verify(adopted, unix_ms(now)))
                .is_ok()
        })
        .unwrap_or_else(|| out_of_band.clone())
}

/// Certificate times are years 1950 to 9999; earlier counts as the epoch.
fn unix_time(seconds: i64) -> SystemTime {
    let since = Duration::from_secs(u64::try_from(seconds).unwrap_or(0));
    UNIX_EPOCH.checked_add(since).unwrap_or(UNIX_EPOCH)
}

fn malformed(file: &'static str, reason: impl std::fmt::Display) -> IdentityError {
    IdentityError::Malformed {
        file,
        reason: reason.to_string(),
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use entente_ca::{Ca, CaOptions};
    use entente_crypto::KeyBundleBody;
    use entente_keystore::local::{Argon2Params, LocalKeyStore, Unlock};
    use entente_types::{AgentId, TrustDomain};

    use super::*;

    /// A CA in `tmp`, and an identity it issued with the body of its key bundle.
    fn issued(tmp: &Path) -> (Ca, Identity, KeyBundleBody) {
        let keystore = LocalKeyStore::create(
            &tmp.join("keys"),
            &Unlock::passphrase("identity tests"),
            Argon2Params::danger_fast_for_tests(),
        )
        .unwrap();
        let td = TrustDomain::new("acme.internal").unwrap();
        let now = SystemTime::now();
        let ca = Ca::init(Arc::new(keystore), &td, CaOptions::default(), now).unwrap();
        let principal = Principal::from(AgentId::new(&td, "ops", "alice").unwrap());
        let keys = MessageKeys::generate().unwrap();
        let ms = unix_ms(now);
        let body = KeyBundleBody {
            principal: principal.clone(),
            ed25519_public: keys.ed25519_public(),
            x25519_public: keys.x25519_public(),
            epoch: 1,
            not_before_ms: ms - 60_000,
            not_after_ms: ms + 3_600_000,
        };
        let bundle = ca.sign_key_bundle(body.clone()).unwrap();
        let (chain, key) = certificate(&ca, &principal);
        let identity = Identity::new(
            principal,
            chain,
            key,
            keys,
            bundle,
            ca.trust_bundle().clone(),
            now,
        )
        .unwrap();
        (ca, identity, body)
    }

    /// A fresh certificate chain and TLS key for `principal` from `ca`.
    fn certificate(
        ca: &Ca,
        principal: &Principal,
    ) -> (Vec<CertificateDer<'static>>, Zeroizing<Vec<u8>>) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&key)
            .unwrap();
        let svid = ca
            .issue_svid(csr.der(), principal, SystemTime::now())
            .unwrap();
        (svid.chain_der, Zeroizing::new(key.serialize_der()))
    }

    /// A CA in `tmp`, an identity it issued, and the same identity renewed.
    fn identity_and_renewal(tmp: &Path) -> (Identity, Identity) {
        let (ca, first, _) = issued(tmp);
        let (chain, key) = certificate(&ca, first.principal());
        let renewed = first.renewed(chain, key, SystemTime::now()).unwrap();
        (first, renewed)
    }

    fn key_pem(identity: &Identity) -> String {
        pem::encode(&pem::Pem::new("PRIVATE KEY", identity.tls_key.to_vec()))
    }

    #[test]
    fn an_interrupted_renewal_leaves_the_old_certificate_or_the_new_one() {
        let tmp = tempfile::tempdir().unwrap();
        let (old, new) = identity_and_renewal(tmp.path());
        let dir = tmp.path().join("alice");
        let rng = SystemRandom::new();
        let loaded_chain = || Identity::load(&dir, SystemTime::now()).unwrap().chain;

        // Interrupted after the new key was staged: the old pair.
        old.save(&dir).unwrap();
        files::replace(&dir, TLS_KEY_NEXT, key_pem(&new).as_bytes(), &rng).unwrap();
        assert_eq!(loaded_chain(), old.chain);

        // After the chain: the new pair, its key from the staged file.
        files::replace(&dir, CHAIN, new.chain_pem().as_bytes(), &rng).unwrap();
        assert_eq!(loaded_chain(), new.chain);

        // After the key, before the staged file was removed: the new pair.
        files::replace(&dir, TLS_KEY, key_pem(&new).as_bytes(), &rng).unwrap();
        assert_eq!(loaded_chain(), new.chain);

        // A stale staged key (an earlier attempt stopped before its chain) is ignored.
        old.save(&dir).unwrap();
        files::replace(&dir, TLS_KEY_NEXT, key_pem(&new).as_bytes(), &rng).unwrap();
        assert_eq!(loaded_chain(), old.chain);

        // A mismatched pair without a staged key that fits is still refused.
        files::remove(&dir.join(TLS_KEY_NEXT)).unwrap();
        files::replace(&dir, CHAIN, new.chain_pem().as_bytes(), &rng).unwrap();
        assert!(matches!(
            Identity::load(&dir, SystemTime::now()).unwrap_err(),
            IdentityError::KeyMismatch
        ));
    }

    #[test]
    fn a_saved_renewal_replaces_the_pair_and_keeps_the_rest() {
        let tmp = tempfile::tempdir().unwrap();
        let (old, new) = identity_and_renewal(tmp.path());
        let dir = tmp.path().join("alice");
        old.save(&dir).unwrap();
        let loaded = Identity::load(&dir, SystemTime::now()).unwrap();
        assert!(
            loaded
                .dir()
                .is_some_and(|d| d.is_absolute() && d.ends_with("alice"))
        );
        let renewed = loaded
            .renewed(new.chain.clone(), new.tls_key.clone(), SystemTime::now())
            .unwrap();
        assert_eq!(renewed.dir(), loaded.dir());
        renewed.save_renewal(&dir).unwrap();
        let again = Identity::load(&dir, SystemTime::now()).unwrap();
        assert_eq!(again.chain, new.chain);
        assert_eq!(again.tls_key_pkcs8(), new.tls_key_pkcs8());
        assert_eq!(again.key_bundle(), old.key_bundle());
        assert!(!dir.join(TLS_KEY_NEXT).exists());
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [TRUST, CHAIN, META, LOCK, KEY_BUNDLE, MESSAGE_KEYS, TLS_KEY]
        );
    }

    /// Two clients sharing the directory renew at the same moment, again and again, while a
    /// third loads it: every load finds a certificate with its key, and so does the last.
    #[test]
    fn renewals_written_at_once_never_leave_a_mismatched_pair() {
        const ROUNDS: usize = 40;
        let tmp = tempfile::tempdir().unwrap();
        let (ca, old, _) = issued(tmp.path());
        let renewal = || {
            let (chain, key) = certificate(&ca, old.principal());
            old.renewed(chain, key, SystemTime::now()).unwrap()
        };
        let (one, two) = (renewal(), renewal());
        let dir = tmp.path().join("alice");
        old.save(&dir).unwrap();
        let writing = std::sync::atomic::AtomicUsize::new(2);
        std::thread::scope(|scope| {
            for renewed in [&one, &two] {
                let (dir, writing) = (&dir, &writing);
                scope.spawn(move || {
                    for _ in 0..ROUNDS {
                        renewed.save_renewal(dir).unwrap();
                    }
                    writing.fetch_sub(1, std::sync::atomic::Ordering::Release);
                });
            }
            let mut loads = 0;
            while writing.load(std::sync::atomic::Ordering::Acquire) > 0 || loads == 0 {
                let loaded = Identity::load(&dir, SystemTime::now());
                assert!(loaded.is_ok(), "load {loads}: {:?}", loaded.err());
                loads += 1;
            }
        });
        let last = Identity::load(&dir, SystemTime::now()).unwrap();
        assert!(last.chain == one.chain || last.chain == two.chain);
        assert!(!dir.join(TLS_KEY_NEXT).exists());
        let mode = |name: &str| {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::metadata(dir.join(name))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(LOCK), 0o600);
    }

    #[test]
    fn a_renewal_is_not_written_over_another_principals_identity() {
        let tmp = tempfile::tempdir().unwrap();
        let (old, new) = identity_and_renewal(tmp.path());
        let dir = tmp.path().join("alice");
        old.save(&dir).unwrap();
        files::replace(
            &dir,
            META,
            br#"{"version": 1, "principal": "spiffe://acme.internal/agent/ops/bob"}"#,
            &SystemRandom::new(),
        )
        .unwrap();
        assert!(matches!(
            new.save_renewal(&dir).unwrap_err(),
            IdentityError::WrongPrincipal { .. }
        ));
        assert_eq!(
            files::read_private(&dir.join(CHAIN)).unwrap(),
            old.chain_pem().into_bytes()
        );
    }

    /// A directory that holds another enrollment of the same principal now (swapped in while
    /// the first ran) is not written over by the first one's renewal.
    #[test]
    fn a_renewal_is_not_written_over_another_enrollment_of_its_principal() {
        let tmp = tempfile::tempdir().unwrap();
        let (_old, renewed) = identity_and_renewal(&tmp.path().join("first"));
        let (_, other, _) = issued(&tmp.path().join("second"));
        assert_eq!(other.principal(), renewed.principal());
        let dir = tmp.path().join("alice");
        other.save(&dir).unwrap();
        let err = renewed.save_renewal(&dir).unwrap_err();
        assert!(
            matches!(&err, IdentityError::KeyBundle(why) if why.contains("another enrollment")),
            "{err}"
        );
        for (file, kept) in [
            (KEY_BUNDLE, wire::encode(other.key_bundle.to_wire())),
            (CHAIN, other.chain_pem().into_bytes()),
        ] {
            assert_eq!(
                files::read_private(&dir.join(file)).unwrap(),
                kept,
                "{file}"
            );
        }
    }

    /// A CA in `tmp` and an identity it issued, and the same identity renewed after the CA's
    /// intermediate was rolled over and the old one retired: new certificate, trust bundle
    /// without the old intermediate, key bundle re-signed by the new one.
    fn identity_and_rollover(tmp: &Path) -> (Identity, Identity) {
        let (ca, old, body) = issued(tmp);
        let now = SystemTime::now();
        let (retired, _) = ca
            .stage_intermediate(now)
            .unwrap()
            .activate_staged()
            .unwrap()
            .retire_previous()
            .unwrap();
        let (chain, key) = certificate(&retired, old.principal());
        let renewed = old
            .renewed_with(
                chain,
                key,
                &retired.trust_bundle().to_pem(),
                Some(retired.sign_key_bundle(body).unwrap()),
                now,
            )
            .unwrap();
        assert!(renewed.trust_refused.is_none() && renewed.key_bundle_refused.is_none());
        (old, renewed.identity)
    }

    #[test]
    fn an_interrupted_rollover_write_leaves_a_directory_that_loads() {
        let tmp = tempfile::tempdir().unwrap();
        let (old, new) = identity_and_rollover(tmp.path());
        let dir = tmp.path().join("alice");
        let rng = SystemRandom::new();
        let load = || Identity::load(&dir, SystemTime::now());
        old.save(&dir).unwrap();
        let both = with_intermediates_of(&new.trust, &old.trust).unwrap();
        assert_eq!(both.intermediates().len(), 2);
        assert_eq!(new.trust.intermediates().len(), 1);

        // Why step 1 exists: the new trust bundle alone does not verify the old key bundle.
        files::replace(&dir, TRUST, new.trust.to_pem().as_bytes(), &rng).unwrap();
        assert!(matches!(load().unwrap_err(), IdentityError::KeyBundle(_)));

        // 1. Both intermediates: the old key bundle verifies.
        files::replace(&dir, TRUST, both.to_pem().as_bytes(), &rng).unwrap();
        assert_eq!(load().unwrap().key_bundle(), old.key_bundle());
        // 2. The new key bundle.
        let bundle = wire::encode(new.key_bundle.to_wire());
        files::replace(&dir, KEY_BUNDLE, &bundle, &rng).unwrap();
        assert_eq!(load().unwrap().key_bundle(), new.key_bundle());
        assert_eq!(load().unwrap().chain, old.chain);
        // 3. The certificate.
        new.write_certificate(&dir, &rng).unwrap();
        assert_eq!(load().unwrap().chain, new.chain);
        // 4. The new trust bundle.
        files::replace(&dir, TRUST, new.trust.to_pem().as_bytes(), &rng).unwrap();
        assert_eq!(load().unwrap().trust.to_pem(), new.trust.to_pem());

        // And `save_renewal` ends there, from the old directory, with no file left over.
        old.save(&dir).unwrap();
        new.save_renewal(&dir).unwrap();
        let loaded = load().unwrap();
        assert_eq!(loaded.trust.to_pem(), new.trust.to_pem());
        assert_eq!(loaded.key_bundle(), new.key_bundle());
        assert_eq!(loaded.chain, new.chain);
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [TRUST, CHAIN, META, LOCK, KEY_BUNDLE, MESSAGE_KEYS, TLS_KEY]
        );
    }

    #[test]
    fn validity_is_the_leaf_certificates() {
        let tmp = tempfile::tempdir().unwrap();
        let (old, _) = identity_and_renewal(tmp.path());
        let lifetime = old.not_after().duration_since(old.not_before()).unwrap();
        // One hour, backdated one minute.
        assert_eq!(lifetime, Duration::from_secs(3660));
    }
}
