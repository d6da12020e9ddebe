//! Revocation: the CA's list of revoked certificate serials and principals ([`Revocations`]),
//! and the signed list every hub and SDK checks ([`VerifiedRevocationList`]).
//!
//! The signed form is [`entente_wire::RevocationList`]; its signing input is
//! [`entente_crypto::revocation::signing_input`] over lists sorted strictly ascending (bytes for
//! serials, UTF-8 bytes for principals). [`Ca::sign_revocations`](crate::Ca::sign_revocations)
//! signs one; [`VerifiedRevocationList::verify`] checks one against a [`TrustBundle`].

use std::collections::BTreeSet;
use std::time::SystemTime;

use entente_crypto::{BundleAuthority, BundleError, revocation};
use entente_types::{IdError, Principal};
use entente_wire as wire;

use crate::{TrustBundle, clock};

/// The CA's revocation state. Every change bumps [`version`](Self::version), so a newer list
/// always has a higher version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revocations {
    version: u64,
    serials: BTreeSet<Vec<u8>>,
    principals: BTreeSet<String>,
}

/// A revocation list whose CA signature and entries were checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedRevocationList {
    serials: BTreeSet<Vec<u8>>,
    principals: BTreeSet<String>,
    wire: wire::RevocationList,
}

/// Why a revocation entry or list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RevocationError {
    /// Decoding failed.
    #[error("revocation list: {0}")]
    Wire(#[from] wire::WireError),
    /// A serial number is empty or longer than 21 bytes.
    #[error("a certificate serial number must be 1 to {max} bytes, not {len}", max = wire::MAX_SERIAL_BYTES)]
    BadSerial {
        /// Its length.
        len: usize,
    },
    /// A principal is not a valid agent or human ID.
    #[error("revocation list principal: {0}")]
    BadPrincipal(#[from] IdError),
    /// Serials or principals are not sorted strictly ascending (unsorted or duplicated).
    #[error("revocation list entries are not sorted or contain duplicates")]
    Unsorted,
    /// No CA of the trust bundle has this signer ID.
    #[error("revocation list is signed by an unknown ca")]
    UnknownSigner,
    /// The signing CA certificate is not valid at this time.
    #[error("the ca that signed the revocation list is not valid at this time")]
    SignerNotValid,
    /// The CA signature does not verify.
    #[error("revocation list signature is invalid")]
    BadSignature,
}

// === impl Revocations ===

impl Revocations {
    /// An empty list at version 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds a persisted state.
    pub fn from_parts(
        version: u64,
        serials: impl IntoIterator<Item = Vec<u8>>,
        principals: impl IntoIterator<Item = Principal>,
    ) -> Result<Self, RevocationError> {
        let serials = serials
            .into_iter()
            .map(|serial| check_serial(&serial).map(|()| serial))
            .collect::<Result<_, _>>()?;
        let principals = principals
            .into_iter()
            .map(|p| p.as_str().to_owned())
            .collect();
        Ok(Self {
            version,
            serials,
            principals,
        })
    }

    /// Revokes a certificate by serial number (the content bytes of its DER INTEGER, as in
    /// [`IssuedSvid::serial`](crate::IssuedSvid::serial)). Returns whether it was new; the
    /// version is bumped only then.
    pub fn revoke_serial(&mut self, serial: &[u8]) -> Result<bool, RevocationError> {
        check_serial(serial)?;
        let added = self.serials.insert(serial.to_vec());
        self.bump(added);
        Ok(added)
    }

    /// Revokes every certificate of `principal`. Returns whether it was new; the version is
    /// bumped only then.
    pub fn revoke_principal(&mut self, principal: &Principal) -> bool {
        let added = self.principals.insert(principal.as_str().to_owned());
        self.bump(added);
        added
    }

    /// The version, bumped by every change.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Revoked serials, ascending.
    pub fn serials(&self) -> impl Iterator<Item = &[u8]> {
        self.serials.iter().map(Vec::as_slice)
    }

    /// Revoked principals, ascending by their bytes.
    pub fn principals(&self) -> impl Iterator<Item = &str> {
        self.principals.iter().map(String::as_str)
    }

    /// The fields of a list signed at `issued_at_ms`, in signing order.
    pub(crate) fn unsigned_list(&self, issued_at_ms: u64, signer: &[u8]) -> wire::RevocationList {
        wire::RevocationList {
            version: self.version,
            issued_at_ms,
            serials: self.serials.iter().cloned().collect(),
            principals: self.principals.iter().cloned().collect(),
            signer: signer.to_vec(),
            signature: Vec::new(),
        }
    }

    fn bump(&mut self, changed: bool) {
        if changed {
            self.version = self.version.saturating_add(1);
        }
    }
}

// === impl VerifiedRevocationList ===

impl VerifiedRevocationList {
    /// Decodes (bounded by `limits`) and verifies a revocation list.
    pub fn decode(
        bytes: &[u8],
        limits: &wire::Limits,
        trust: &TrustBundle,
        now: SystemTime,
    ) -> Result<Self, RevocationError> {
        Self::verify(wire::decode(bytes, limits)?, trust, now)
    }

    /// Verifies a decoded list: entries sorted strictly ascending, serials 1 to 21 bytes,
    /// principals valid, and an ECDSA P-256 signature by a CA of `trust` valid at `now`.
    pub fn verify(
        list: wire::RevocationList,
        trust: &TrustBundle,
        now: SystemTime,
    ) -> Result<Self, RevocationError> {
        if !revocation::is_strictly_sorted(&list.serials)
            || !revocation::is_strictly_sorted(&list.principals)
        {
            return Err(RevocationError::Unsorted);
        }
        for serial in &list.serials {
            check_serial(serial)?;
        }
        for principal in &list.principals {
            Principal::parse(principal)?;
        }
        let input = signing_input(&list);
        trust
            .verify_ca_signature(&list.signer, &input, &list.signature, clock::unix_ms(now))
            .map_err(|e| match e {
                BundleError::UnknownSigner => RevocationError::UnknownSigner,
                BundleError::SignerNotValid => RevocationError::SignerNotValid,
                _ => RevocationError::BadSignature,
            })?;
        Ok(Self {
            serials: list.serials.iter().cloned().collect(),
            principals: list.principals.iter().cloned().collect(),
            wire: list,
        })
    }

    /// Whether `serial` or `principal` is revoked.
    pub fn is_revoked(&self, serial: &[u8], principal: &Principal) -> bool {
        self.is_serial_revoked(serial) || self.is_principal_revoked(principal)
    }

    /// Whether the certificate with this serial is revoked.
    pub fn is_serial_revoked(&self, serial: &[u8]) -> bool {
        self.serials.contains(serial)
    }

    /// Whether every certificate of `principal` is revoked.
    pub fn is_principal_revoked(&self, principal: &Principal) -> bool {
        self.principals.contains(principal.as_str())
    }

    /// The list's version; a receiver keeps the highest it has verified.
    pub fn version(&self) -> u64 {
        self.wire.version
    }

    /// When the CA signed the list, Unix milliseconds.
    pub fn issued_at_ms(&self) -> u64 {
        self.wire.issued_at_ms
    }

    /// The list as signed, to pass on.
    pub fn to_wire(&self) -> &wire::RevocationList {
        &self.wire
    }

    /// The list as signed, encoded for the wire.
    pub fn encode(&self) -> Vec<u8> {
        wire::encode(&self.wire)
    }
}

/// The bytes the CA signs for `list` (its `signature` field is ignored).
pub(crate) fn signing_input(list: &wire::RevocationList) -> Vec<u8> {
    revocation::signing_input(
        list.version,
        list.issued_at_ms,
        &list.serials,
        &list.principals,
        &list.signer,
    )
}

fn check_serial(serial: &[u8]) -> Result<(), RevocationError> {
    if serial.is_empty() || serial.len() > wire::MAX_SERIAL_BYTES {
        return Err(RevocationError::BadSerial { len: serial.len() });
    }
    Ok(())
}
