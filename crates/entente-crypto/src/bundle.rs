//! CA-signed key bundles: `{principal, Ed25519 key, X25519 key, epoch, not_before, not_after}`.
//!
//! Receivers verify a bundle against the trust bundle (through a [`BundleAuthority`]), never on
//! the hub's word. Only [`KeyBundleIn::verify`] makes a [`VerifiedKeyBundle`].

use std::collections::HashMap;
use std::sync::Arc;

use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1, UnparsedPublicKey};
use entente_types::{IdError, Principal};
use entente_wire as wire;

use crate::{
    KEY_LEN,
    canon::{Canon, label},
};

/// The key-bundle format version this crate writes and accepts.
pub const KEY_BUNDLE_VERSION: u32 = 1;

/// Why a key bundle was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// Decoding failed.
    #[error("key bundle: {0}")]
    Wire(#[from] wire::WireError),
    /// A field has the wrong length.
    #[error("key bundle field `{0}` has the wrong length")]
    BadLength(&'static str),
    /// The format version is not 1.
    #[error("key bundle version {0} is not supported")]
    UnsupportedVersion(u32),
    /// The principal is not a valid agent or human ID.
    #[error("key bundle principal: {0}")]
    Principal(#[from] IdError),
    /// `not_before` is after `not_after`.
    #[error("key bundle validity period is empty")]
    EmptyValidity,
    /// No trusted CA key has this signer ID.
    #[error("key bundle is signed by an unknown CA")]
    UnknownSigner,
    /// The CA signature does not verify.
    #[error("key bundle signature is invalid")]
    BadSignature,
    /// The bundle is not valid yet.
    #[error("key bundle is not valid yet")]
    NotYetValid,
    /// The bundle has expired.
    #[error("key bundle has expired")]
    Expired,
    /// The signing CA certificate is not valid at this time.
    #[error("the CA that signed the key bundle is not valid at this time")]
    SignerNotValid,
    /// The principal belongs to a trust domain the authority does not vouch for.
    #[error("key bundle principal is outside the trust domain of the CA")]
    ForeignTrustDomain,
}

/// The signed content of a key bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyBundleBody {
    /// Whose keys these are.
    pub principal: Principal,
    /// Ed25519 public key.
    pub ed25519_public: [u8; KEY_LEN],
    /// X25519 public key.
    pub x25519_public: [u8; KEY_LEN],
    /// Message-key generation.
    pub epoch: u64,
    /// Start of validity, Unix milliseconds.
    pub not_before_ms: u64,
    /// End of validity, Unix milliseconds.
    pub not_after_ms: u64,
}

impl KeyBundleBody {
    /// The exact bytes the CA signs (PROTOCOL.md §3), for a CA key with ID `signer`.
    pub fn signing_input(&self, signer: &[u8]) -> Vec<u8> {
        signing_input(
            self.principal.as_str(),
            &self.ed25519_public,
            &self.x25519_public,
            self.epoch,
            self.not_before_ms,
            self.not_after_ms,
            signer,
        )
    }

    /// Signs the body with `sign`, which must produce an ECDSA P-256 SHA-256 (ASN.1 DER)
    /// signature by the CA key whose ID is `signer`.
    pub fn sign<E>(
        self,
        signer: [u8; 32],
        sign: impl FnOnce(&[u8]) -> Result<Vec<u8>, E>,
    ) -> Result<wire::KeyBundle, E> {
        let signature = sign(&self.signing_input(&signer))?;
        Ok(wire::KeyBundle {
            version: KEY_BUNDLE_VERSION,
            principal: self.principal.as_str().to_owned(),
            ed25519_public: self.ed25519_public.to_vec(),
            x25519_public: self.x25519_public.to_vec(),
            epoch: self.epoch,
            not_before_ms: self.not_before_ms,
            not_after_ms: self.not_after_ms,
            signer: signer.to_vec(),
            signature,
        })
    }
}

/// Checks a CA signature over bytes, for a CA key identified by `signer`, at time `now_ms`.
///
/// `entente-ca` implements it from the X.509 trust bundle; [`EcdsaAuthority`] is the plain
/// key-set implementation it builds on.
pub trait BundleAuthority {
    /// Verifies `signature` over `message` by the CA key `signer`.
    fn verify_ca_signature(
        &self,
        signer: &[u8],
        message: &[u8],
        signature: &[u8],
        now_ms: u64,
    ) -> Result<(), BundleError>;

    /// The trust domain whose principals these CA keys vouch for, or `None` for a bare key set
    /// that vouches for any. [`KeyBundleIn::verify`] refuses a bundle whose principal is in
    /// another trust domain ([`BundleError::ForeignTrustDomain`]).
    fn trust_domain(&self) -> Option<&str>;
}

/// A set of trusted CA public keys (ECDSA P-256), each with its validity period, optionally
/// bound to one trust domain.
#[derive(Debug, Clone, Default)]
pub struct EcdsaAuthority {
    keys: HashMap<[u8; 32], TrustedKey>,
    trust_domain: Option<String>,
}

#[derive(Debug, Clone)]
struct TrustedKey {
    public_key: Vec<u8>,
    not_before_ms: u64,
    not_after_ms: u64,
}

impl EcdsaAuthority {
    /// An empty set, not bound to a trust domain: it vouches for principals of any trust
    /// domain. Relying parties use [`EcdsaAuthority::for_trust_domain`] (as a trust bundle does).
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty set whose keys vouch only for principals of `trust_domain`.
    pub fn for_trust_domain(trust_domain: &str) -> Self {
        Self {
            keys: HashMap::new(),
            trust_domain: Some(trust_domain.to_owned()),
        }
    }

    /// Trusts `public_key` (an uncompressed SEC1 P-256 point) under `signer` for the period.
    pub fn insert(
        &mut self,
        signer: [u8; 32],
        public_key: Vec<u8>,
        not_before_ms: u64,
        not_after_ms: u64,
    ) {
        self.keys.insert(
            signer,
            TrustedKey {
                public_key,
                not_before_ms,
                not_after_ms,
            },
        );
    }

    /// How many keys are trusted.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is trusted.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl BundleAuthority for EcdsaAuthority {
    fn verify_ca_signature(
        &self,
        signer: &[u8],
        message: &[u8],
        signature: &[u8],
        now_ms: u64,
    ) -> Result<(), BundleError> {
        let id: [u8; 32] = signer.try_into().map_err(|_| BundleError::UnknownSigner)?;
        let key = self.keys.get(&id).ok_or(BundleError::UnknownSigner)?;
        if now_ms < key.not_before_ms || now_ms > key.not_after_ms {
            return Err(BundleError::SignerNotValid);
        }
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &key.public_key)
            .verify(message, signature)
            .map_err(|_| BundleError::BadSignature)
    }

    fn trust_domain(&self) -> Option<&str> {
        self.trust_domain.as_deref()
    }
}

/// A decoded key bundle whose signature has not been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyBundleIn {
    body: KeyBundleBody,
    wire: wire::KeyBundle,
}

impl KeyBundleIn {
    /// Decodes protobuf bytes (bounded by `limits`).
    pub fn decode(bytes: &[u8], limits: &wire::Limits) -> Result<Self, BundleError> {
        Self::from_wire(wire::decode(bytes, limits)?)
    }

    /// Checks field formats of an already decoded bundle.
    pub fn from_wire(wire: wire::KeyBundle) -> Result<Self, BundleError> {
        if wire.version != KEY_BUNDLE_VERSION {
            return Err(BundleError::UnsupportedVersion(wire.version));
        }
        let body = KeyBundleBody {
            principal: Principal::parse(&wire.principal)?,
            ed25519_public: key(&wire.ed25519_public, "ed25519_public")?,
            x25519_public: key(&wire.x25519_public, "x25519_public")?,
            epoch: wire.epoch,
            not_before_ms: wire.not_before_ms,
            not_after_ms: wire.not_after_ms,
        };
        if body.not_before_ms > body.not_after_ms {
            return Err(BundleError::EmptyValidity);
        }
        if wire.signer.len() != 32 {
            return Err(BundleError::BadLength("signer"));
        }
        Ok(Self { body, wire })
    }

    /// The unverified content.
    pub fn body(&self) -> &KeyBundleBody {
        &self.body
    }

    /// Verifies that the principal is in the authority's trust domain, the CA signature, and
    /// the validity period at `now_ms`.
    pub fn verify(
        self,
        authority: &impl BundleAuthority,
        now_ms: u64,
    ) -> Result<VerifiedKeyBundle, BundleError> {
        if authority
            .trust_domain()
            .is_some_and(|td| td != self.body.principal.trust_domain())
        {
            return Err(BundleError::ForeignTrustDomain);
        }
        let input = self.body.signing_input(&self.wire.signer);
        authority.verify_ca_signature(&self.wire.signer, &input, &self.wire.signature, now_ms)?;
        if now_ms < self.body.not_before_ms {
            return Err(BundleError::NotYetValid);
        }
        if now_ms > self.body.not_after_ms {
            return Err(BundleError::Expired);
        }
        Ok(VerifiedKeyBundle(Arc::new(Verified {
            body: self.body,
            wire: self.wire,
        })))
    }
}

/// A key bundle whose CA signature and validity were checked. Cloning it is cheap (a
/// reference count): clients hand the bundles of their peers to every message they seal for
/// them and every batch they open from them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedKeyBundle(Arc<Verified>);

#[derive(Debug, PartialEq, Eq)]
struct Verified {
    body: KeyBundleBody,
    wire: wire::KeyBundle,
}

impl VerifiedKeyBundle {
    /// Whose keys these are.
    pub fn principal(&self) -> &Principal {
        &self.0.body.principal
    }

    /// The verified content.
    pub fn body(&self) -> &KeyBundleBody {
        &self.0.body
    }

    /// Message-key generation.
    pub fn epoch(&self) -> u64 {
        self.0.body.epoch
    }

    /// The bundle as signed, to pass on.
    pub fn to_wire(&self) -> &wire::KeyBundle {
        &self.0.wire
    }

    /// Whether the bundle is still within its validity period.
    pub fn is_valid_at(&self, now_ms: u64) -> bool {
        let body = &self.0.body;
        body.not_before_ms <= now_ms && now_ms <= body.not_after_ms
    }
}

fn signing_input(
    principal: &str,
    ed25519: &[u8],
    x25519: &[u8],
    epoch: u64,
    not_before_ms: u64,
    not_after_ms: u64,
    signer: &[u8],
) -> Vec<u8> {
    let mut c = Canon::new(label::KEY_BUNDLE);
    c.u32(KEY_BUNDLE_VERSION)
        .str(principal)
        .bytes(ed25519)
        .bytes(x25519)
        .u64(epoch)
        .u64(not_before_ms)
        .u64(not_after_ms)
        .bytes(signer);
    c.into_bytes()
}

fn key(bytes: &[u8], field: &'static str) -> Result<[u8; KEY_LEN], BundleError> {
    bytes.try_into().map_err(|_| BundleError::BadLength(field))
}
