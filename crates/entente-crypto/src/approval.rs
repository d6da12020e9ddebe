//! Signed approval statements (PROTOCOL.md §11): a principal approves or rejects one object —
//! a just-in-time grant request, or an envelope held on a high-stakes channel — by signing, with
//! the Ed25519 message key of its CA-signed key bundle, a canonical statement that names the
//! object by kind, ID and SHA-256 hash.
//!
//! - [`ApprovalStatement`]: what is signed; [`ApprovalStatement::sign`] makes a
//!   [`SignedApproval`] to send.
//! - [`ApprovalIn`]: a statement and signature received from a peer, unchecked.
//!   [`ApprovalIn::verify`] (against the approver's [`VerifiedKeyBundle`]) or
//!   [`ApprovalIn::verify_with_key`] (against a bare Ed25519 key) make a [`VerifiedApproval`],
//!   the only form a grant book accepts.
//! - [`GrantRequestBody`]: the canonical bytes of a grant request, whose hash a statement about
//!   the request carries.

use std::fmt;

use aws_lc_rs::{
    digest::{SHA256, digest},
    signature::{ED25519, UnparsedPublicKey},
};
use entente_types::Principal;

use crate::{
    KEY_LEN, MessageKeys, VerifiedKeyBundle,
    canon::{Canon, label},
};

/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// The longest object ID a statement may name, in bytes.
pub const MAX_OBJECT_ID_LEN: usize = 128;

/// How far in the future a statement's `signed_at_ms` may be, for clock skew.
pub const MAX_CLOCK_SKEW_MS: u64 = 60_000;

/// Why an approval statement was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApprovalError {
    /// The object ID is empty, too long, or has characters outside `[A-Za-z0-9._:-]`.
    #[error("approval object ID must be 1 to {MAX_OBJECT_ID_LEN} bytes of [A-Za-z0-9._:-]")]
    BadObjectId,
    /// The signature is not 64 bytes.
    #[error("approval signature must be {SIGNATURE_LEN} bytes, not {0}")]
    SignatureLength(usize),
    /// The signature does not verify under the approver's key.
    #[error("approval signature is invalid")]
    BadSignature,
    /// The key bundle (or key) given for verification belongs to another principal than the
    /// statement's approver.
    #[error("approval claims approver `{claimed}` but is checked against the key of `{signer}`")]
    SignerMismatch {
        /// The approver named in the statement.
        claimed: String,
        /// The principal whose key was used.
        signer: String,
    },
    /// The statement names another key-bundle epoch than the bundle given.
    #[error("approval was signed with key epoch {statement}, the bundle has epoch {bundle}")]
    KeyEpochMismatch {
        /// The epoch in the statement.
        statement: u64,
        /// The bundle's epoch.
        bundle: u64,
    },
    /// The approver's key bundle is outside its validity period.
    #[error("the approver's key bundle is not valid now")]
    BundleExpired,
    /// The statement is dated more than [`MAX_CLOCK_SKEW_MS`] in the future.
    #[error("approval is signed at {signed_at_ms}, in the future (now {now_ms})")]
    FromTheFuture {
        /// Its `signed_at_ms`.
        signed_at_ms: u64,
        /// The verifier's clock.
        now_ms: u64,
    },
}

/// Approve or reject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// The approver agrees.
    Approve,
    /// The approver refuses; one rejection ends a request.
    Reject,
}

/// What kind of object a statement is about. Part of the signed bytes, so a statement about a
/// grant request can never pass for one about an envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    /// A just-in-time grant request: the ID is the request's, the hash
    /// [`GrantRequestBody::hash`].
    GrantRequest,
    /// An envelope held on a high-stakes channel.
    Envelope,
}

/// The content of an approval: who says what about which object, when, with which key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalStatement {
    /// Approve or reject.
    pub verdict: Verdict,
    /// The kind of object.
    pub kind: ObjectKind,
    /// The object's ID (a grant request ID, a message ID).
    pub object_id: String,
    /// SHA-256 of the object's canonical bytes, as the approver saw them.
    pub object_hash: [u8; 32],
    /// The approver.
    pub approver: Principal,
    /// The epoch of the approver's key bundle whose Ed25519 key signs.
    pub key_epoch: u64,
    /// When the approver signed, Unix milliseconds.
    pub signed_at_ms: u64,
}

/// A statement with the approver's signature, to send. Made only by
/// [`ApprovalStatement::sign`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedApproval {
    statement: ApprovalStatement,
    signature: [u8; SIGNATURE_LEN],
}

/// A statement and signature from a peer, not verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalIn {
    statement: ApprovalStatement,
    signature: [u8; SIGNATURE_LEN],
}

/// A statement whose signature verified under the key of the approver it names. Made only by
/// [`ApprovalIn::verify`] and [`ApprovalIn::verify_with_key`].
#[derive(Clone, PartialEq, Eq)]
pub struct VerifiedApproval {
    statement: ApprovalStatement,
    signature: [u8; SIGNATURE_LEN],
    digest: [u8; 32],
}

/// The fields of a just-in-time grant request that approvers approve. Its canonical bytes
/// (PROTOCOL.md §11) are hashed into the statements about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantRequestBody<'a> {
    /// The request's ID.
    pub id: &'a str,
    /// Who asks, and will hold the grant.
    pub requester: &'a str,
    /// The grant's name.
    pub name: &'a str,
    /// How long the grant lasts once approved, milliseconds.
    pub duration_ms: u64,
    /// Why, in the requester's words.
    pub reason: &'a str,
    /// When the request was made, Unix milliseconds.
    pub created_at_ms: u64,
    /// When it lapses if not decided, Unix milliseconds.
    pub expires_at_ms: u64,
}

// === impl Verdict, ObjectKind ===

impl Verdict {
    /// Its name in the signed bytes: `approve` or `reject`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Approve => "approve",
            Verdict::Reject => "reject",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ObjectKind {
    /// Its name in the signed bytes: `grant-request` or `envelope`.
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::GrantRequest => "grant-request",
            ObjectKind::Envelope => "envelope",
        }
    }
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl ApprovalStatement ===

impl ApprovalStatement {
    /// The exact bytes the approver signs (PROTOCOL.md §11).
    pub fn signing_input(&self) -> Vec<u8> {
        let mut c = Canon::new(label::APPROVAL);
        c.str(self.verdict.as_str())
            .str(self.kind.as_str())
            .str(&self.object_id)
            .raw(&self.object_hash)
            .str(self.approver.as_str())
            .u64(self.key_epoch)
            .u64(self.signed_at_ms);
        c.into_bytes()
    }

    /// Signs with `keys`, the approver's message keys (of bundle epoch `key_epoch`). Fails only
    /// on a malformed object ID.
    pub fn sign(self, keys: &MessageKeys) -> Result<SignedApproval, ApprovalError> {
        check_object_id(&self.object_id)?;
        let signature = keys.sign(&self.signing_input());
        Ok(SignedApproval {
            statement: self,
            signature,
        })
    }
}

// === impl SignedApproval ===

impl SignedApproval {
    /// What was signed.
    pub fn statement(&self) -> &ApprovalStatement {
        &self.statement
    }

    /// The Ed25519 signature.
    pub fn signature(&self) -> &[u8; SIGNATURE_LEN] {
        &self.signature
    }
}

impl From<SignedApproval> for ApprovalIn {
    fn from(signed: SignedApproval) -> Self {
        Self {
            statement: signed.statement,
            signature: signed.signature,
        }
    }
}

// === impl ApprovalIn ===

impl ApprovalIn {
    /// A statement and signature as received; checks their formats only.
    pub fn new(statement: ApprovalStatement, signature: &[u8]) -> Result<Self, ApprovalError> {
        check_object_id(&statement.object_id)?;
        let signature = signature
            .try_into()
            .map_err(|_| ApprovalError::SignatureLength(signature.len()))?;
        Ok(Self {
            statement,
            signature,
        })
    }

    /// The unverified statement.
    pub fn statement(&self) -> &ApprovalStatement {
        &self.statement
    }

    /// Verifies against the approver's key bundle at `now_ms`: the bundle is the approver's
    /// (same principal), of the statement's key epoch and valid now; the statement is not dated
    /// in the future; the signature verifies under the bundle's Ed25519 key.
    pub fn verify(
        self,
        bundle: &VerifiedKeyBundle,
        now_ms: u64,
    ) -> Result<VerifiedApproval, ApprovalError> {
        if bundle.principal() != &self.statement.approver {
            return Err(ApprovalError::SignerMismatch {
                claimed: self.statement.approver.as_str().to_owned(),
                signer: bundle.principal().as_str().to_owned(),
            });
        }
        if bundle.epoch() != self.statement.key_epoch {
            return Err(ApprovalError::KeyEpochMismatch {
                statement: self.statement.key_epoch,
                bundle: bundle.epoch(),
            });
        }
        if !bundle.is_valid_at(now_ms) {
            return Err(ApprovalError::BundleExpired);
        }
        self.check(&bundle.body().ed25519_public, now_ms)
    }

    /// Verifies against a bare Ed25519 public key that the caller knows to be `signer`'s (the
    /// key epoch is then the caller's business): `signer` is the statement's approver, the
    /// statement is not dated in the future, and the signature verifies.
    pub fn verify_with_key(
        self,
        signer: &Principal,
        ed25519_public: &[u8; KEY_LEN],
        now_ms: u64,
    ) -> Result<VerifiedApproval, ApprovalError> {
        if signer != &self.statement.approver {
            return Err(ApprovalError::SignerMismatch {
                claimed: self.statement.approver.as_str().to_owned(),
                signer: signer.as_str().to_owned(),
            });
        }
        self.check(ed25519_public, now_ms)
    }

    fn check(
        self,
        ed25519_public: &[u8; KEY_LEN],
        now_ms: u64,
    ) -> Result<VerifiedApproval, ApprovalError> {
        let signed_at_ms = self.statement.signed_at_ms;
        if signed_at_ms > now_ms.saturating_add(MAX_CLOCK_SKEW_MS) {
            return Err(ApprovalError::FromTheFuture {
                signed_at_ms,
                now_ms,
            });
        }
        let input = self.statement.signing_input();
        UnparsedPublicKey::new(&ED25519, ed25519_public)
            .verify(&input, &self.signature)
            .map_err(|_| ApprovalError::BadSignature)?;
        Ok(VerifiedApproval {
            digest: sha256(&input),
            statement: self.statement,
            signature: self.signature,
        })
    }
}

// === impl VerifiedApproval ===

impl VerifiedApproval {
    /// The verified statement.
    pub fn statement(&self) -> &ApprovalStatement {
        &self.statement
    }

    /// Approve or reject.
    pub fn verdict(&self) -> Verdict {
        self.statement.verdict
    }

    /// The approver, whose key signed.
    pub fn approver(&self) -> &Principal {
        &self.statement.approver
    }

    /// The signature, for the audit record.
    pub fn signature(&self) -> &[u8; SIGNATURE_LEN] {
        &self.signature
    }

    /// SHA-256 of the signing input: the statement's identity, for refusing replays.
    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }
}

impl fmt::Debug for VerifiedApproval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedApproval")
            .field("statement", &self.statement)
            .finish_non_exhaustive()
    }
}

// === impl GrantRequestBody ===

impl GrantRequestBody<'_> {
    /// The canonical bytes of the request (PROTOCOL.md §11).
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut c = Canon::new(label::GRANT_REQUEST);
        c.str(self.id)
            .str(self.requester)
            .str(self.name)
            .u64(self.duration_ms)
            .str(self.reason)
            .u64(self.created_at_ms)
            .u64(self.expires_at_ms);
        c.into_bytes()
    }

    /// SHA-256 of the canonical bytes: the `object_hash` of statements about the request.
    pub fn hash(&self) -> [u8; 32] {
        sha256(&self.canonical_bytes())
    }
}

// === helpers ===

fn check_object_id(id: &str) -> Result<(), ApprovalError> {
    let ok = (1..=MAX_OBJECT_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ApprovalError::BadObjectId)
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, bytes).as_ref());
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    fn statement(approver: &str) -> ApprovalStatement {
        ApprovalStatement {
            verdict: Verdict::Approve,
            kind: ObjectKind::GrantRequest,
            object_id: "r-1".to_owned(),
            object_hash: [7; 32],
            approver: Principal::parse(approver).unwrap(),
            key_epoch: 1,
            signed_at_ms: 1_000,
        }
    }

    #[test]
    fn signing_input_layout() {
        let s = statement("spiffe://t/human/ann");
        let mut want = b"entente/v1/approval\0".to_vec();
        want.extend_from_slice(b"\0\0\0\x07approve");
        want.extend_from_slice(b"\0\0\0\x0dgrant-request");
        want.extend_from_slice(b"\0\0\0\x03r-1");
        want.extend_from_slice(&[7; 32]);
        want.extend_from_slice(b"\0\0\0\x14spiffe://t/human/ann");
        want.extend_from_slice(&1u64.to_be_bytes());
        want.extend_from_slice(&1_000u64.to_be_bytes());
        assert_eq!(s.signing_input(), want);
    }

    #[test]
    fn object_ids_are_bounded() {
        for bad in ["", "a b", "é", &"x".repeat(MAX_OBJECT_ID_LEN + 1)] {
            assert_eq!(
                check_object_id(bad),
                Err(ApprovalError::BadObjectId),
                "{bad}"
            );
        }
        for good in ["r-1", "0195f0c2-7d4e-7000-8000-000000000000", "a.b:c_d"] {
            check_object_id(good).unwrap();
        }
        let keys = MessageKeys::generate().unwrap();
        let mut s = statement("spiffe://t/human/ann");
        s.object_id = String::new();
        assert_eq!(s.sign(&keys).unwrap_err(), ApprovalError::BadObjectId);
    }

    #[test]
    fn sign_then_verify_with_key() {
        let keys = MessageKeys::generate().unwrap();
        let s = statement("spiffe://t/human/ann");
        let signed = s.clone().sign(&keys).unwrap();
        let approver = s.approver.clone();
        let verified = ApprovalIn::from(signed.clone())
            .verify_with_key(&approver, &keys.ed25519_public(), 1_000)
            .unwrap();
        assert_eq!(verified.statement(), &s);
        assert_eq!(verified.digest(), &sha256(&s.signing_input()));
        assert_eq!(verified.signature(), signed.signature());
    }
}
