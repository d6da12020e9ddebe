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
//!
//! The directory is created 0700 and every file 0600; files are replaced atomically, so a crash
//! during a renewal leaves the old certificate or the new one. Loading checks everything
//! fits together: the chain verifies against the trust bundle for the recorded principal, the
//! TLS key is the certificate's key, and the key bundle verifies and carries the message keys.

use std::{
    path::Path,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
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
}

/// An enrolled principal's credentials.
pub struct Identity {
    principal: Principal,
    chain: Vec<CertificateDer<'static>>,
    tls_key: Zeroizing<Vec<u8>>,
    message_keys: Arc<MessageKeys>,
    key_bundle: VerifiedKeyBundle,
    trust: TrustBundle,
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
        check_tls_key(&chain, &tls_key_pkcs8)?;
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
        })
    }

    /// Loads and checks the identity in `dir`.
    pub fn load(dir: &Path, now: SystemTime) -> Result<Self, IdentityError> {
        files::check_dir(dir)?;
        let meta: Meta = serde_json::from_slice(&files::read_private(&dir.join(META))?)
            .map_err(|e| malformed(META, e))?;
        if meta.version != IDENTITY_VERSION {
            return Err(IdentityError::UnsupportedVersion(meta.version));
        }
        let principal = Principal::parse(&meta.principal).map_err(|e| malformed(META, e))?;
        let chain = CertificateDer::pem_slice_iter(&files::read_private(&dir.join(CHAIN))?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| malformed(CHAIN, e))?;
        let key_pem = Zeroizing::new(files::read_private(&dir.join(TLS_KEY))?);
        let tls_key = Zeroizing::new(
            rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(&key_pem)
                .map_err(|e| malformed(TLS_KEY, e))?
                .secret_pkcs8_der()
                .to_vec(),
        );
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
        Self::new(
            principal,
            chain,
            tls_key,
            message_keys,
            key_bundle,
            trust,
            now,
        )
    }

    /// Writes the identity to `dir` (created 0700 if missing), each file atomically.
    pub fn save(&self, dir: &Path) -> Result<(), IdentityError> {
        files::create_private_dir_all(dir)?;
        let rng = SystemRandom::new();
        let meta = serde_json::to_vec_pretty(&Meta {
            version: IDENTITY_VERSION,
            principal: self.principal.to_string(),
        })
        .map_err(|e| malformed(META, e))?;
        files::replace(dir, CHAIN, self.chain_pem().as_bytes(), &rng)?;
        let key_pem = Zeroizing::new(pem::encode_config(
            &pem::Pem::new("PRIVATE KEY", self.tls_key.to_vec()),
            pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
        ));
        files::replace(dir, TLS_KEY, key_pem.as_bytes(), &rng)?;
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

    /// Replaces the certificate chain and TLS key after a renewal (checked like [`Identity::new`]).
    pub fn renewed(
        &self,
        chain: Vec<CertificateDer<'static>>,
        tls_key_pkcs8: Zeroizing<Vec<u8>>,
        now: SystemTime,
    ) -> Result<Self, IdentityError> {
        let secret = self
            .message_keys
            .to_secret_bytes()
            .map_err(|e| malformed(MESSAGE_KEYS, e))?;
        let message_keys =
            MessageKeys::from_secret_bytes(&secret).map_err(|e| malformed(MESSAGE_KEYS, e))?;
        Self::new(
            self.principal.clone(),
            chain,
            tls_key_pkcs8,
            message_keys,
            self.key_bundle.to_wire().clone(),
            self.trust.clone(),
            now,
        )
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
            .finish_non_exhaustive()
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Meta {
    version: u32,
    principal: String,
}

fn check_tls_key(chain: &[CertificateDer<'static>], pkcs8: &[u8]) -> Result<(), IdentityError> {
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
    Ok(())
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
