//! Entente's end-to-end envelope scheme, suite v1 (docs/PROTOCOL.md).
//!
//! - [`MessageKeys`]: an agent's Ed25519 signing key and X25519 HPKE key.
//! - [`bundle`]: CA-signed key bundles; [`KeyBundleIn::verify`] makes a [`VerifiedKeyBundle`].
//! - [`Sealer`]: the sending side — sender-key epochs wrapped with HPKE (RFC 9180, DHKEM
//!   X25519 + HKDF-SHA256 + AES-256-GCM) to each recipient, payloads sealed with AES-256-GCM
//!   under the epoch key with the header as associated data, Ed25519 signatures over batches.
//! - [`Opener`]: the receiving side — verifies signatures, unwraps sender keys, opens payloads,
//!   enforces replay windows and expiry. Only it makes a [`VerifiedEnvelope`].
//! - [`ReplayWindow`]: the sliding window, also usable by the hub on headers alone.
//! - [`approval`]: signed approval statements; only [`ApprovalIn::verify`] makes a
//!   [`VerifiedApproval`].
//!
//! Primitives come from aws-lc-rs and the `hpke` crate; nothing is hand-rolled. No I/O.
#![forbid(unsafe_code)]

pub mod approval;
pub mod bundle;
mod canon;
pub mod danger;
mod envelope;
mod keys;
mod replay;
pub mod revocation;
mod sender_key;

pub use approval::{
    ApprovalError, ApprovalIn, ApprovalStatement, GrantRequestBody, ObjectKind, SignedApproval,
    Verdict, VerifiedApproval,
};
pub use bundle::{
    BundleAuthority, BundleError, EcdsaAuthority, KeyBundleBody, KeyBundleIn, VerifiedKeyBundle,
};
pub use envelope::{
    EnvelopeIn, OpenError, OpenedBatch, Opener, OpenerOptions, SealError, Sealer, SealerOptions,
    SignedBatchIn, VerifiedEnvelope, batch_signing_input, envelope_aad, envelope_digest,
};
pub use envelope::{SUITE_V1, TAG_LEN};
pub use keys::{KEY_LEN, KeyError, MessageKeys};
pub use replay::{REPLAY_WINDOW, ReplayError, ReplayWindow};
pub use sender_key::{SenderKeyIn, sender_key_signing_input};

/// SHA-256 of a certificate's SubjectPublicKeyInfo DER: the ID of a CA key in key bundles and
/// revocation lists.
pub fn signer_id(spki_der: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, spki_der);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}
