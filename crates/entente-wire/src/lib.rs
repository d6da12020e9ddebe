//! Entente's wire messages and their bounded decoding. No I/O.
//!
//! Every decode goes through [`decode`], which first walks the protobuf bytes against a schema
//! of [`Limits`] — total size, the length of every string and byte field, the number of every
//! repeated field, no duplicate singular fields, at most one member of a `oneof`, no groups, and
//! a budget for the memory the decoded values will take (each nested message or repeated
//! element is charged [`DECODED_ELEMENT_COST`] against [`Limits::max_decoded_overhead`]) — and
//! only then lets `prost` build values. A hostile frame therefore never panics the decoder and
//! cannot make it allocate more than a small multiple of its own size (each string or bytes
//! field is its own allocation, and a repeated field may hold spare capacity) plus about that
//! budget (8 MiB by default), however many tiny elements it packs. Semantic checks (exact key lengths, SPIFFE IDs, channel names)
//! belong to the crates that turn these `*In` values into verified ones.
#![forbid(unsafe_code)]

mod messages;
mod scan;

pub use messages::*;

use prost::Message;

/// Bounds applied while decoding. Defaults suit the hub and the SDK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest encoded message or frame accepted, in bytes.
    pub max_frame_bytes: usize,
    /// Largest envelope ciphertext (payload plus 16-byte tag), in bytes.
    pub max_ciphertext_bytes: usize,
    /// Most envelopes in one signed batch.
    pub max_batch_envelopes: usize,
    /// Most recipients of one sender key.
    pub max_recipients: usize,
    /// Most signed batches or sender keys in one frame.
    pub max_items_per_frame: usize,
    /// Most entries in each of a revocation list's `serials` and `principals`.
    pub max_revocations: usize,
    /// Most memory a decoded message may take beyond its encoded bytes: every nested message
    /// and repeated element is charged [`DECODED_ELEMENT_COST`] bytes against this budget.
    pub max_decoded_overhead: usize,
}

/// What the pre-scan charges for each nested message or repeated element: at least the size of
/// the Rust value prost builds for it (a `GrantInfo`, one of the largest, takes 184 bytes),
/// but for a held message's (296 bytes: such an answer may take up to about 16 % more).
pub const DECODED_ELEMENT_COST: usize = 256;

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_bytes: 4 << 20,
            max_ciphertext_bytes: (1 << 20) + 16,
            max_batch_envelopes: 1024,
            max_recipients: 4096,
            max_items_per_frame: 256,
            max_revocations: 1 << 20,
            max_decoded_overhead: 8 << 20,
        }
    }
}

/// Longest SPIFFE ID, in bytes (SPIFFE ID standard).
pub const MAX_ID_BYTES: usize = 2048;
/// Longest channel name or pattern, in bytes.
pub const MAX_CHANNEL_BYTES: usize = 255;
/// Longest refusal reason, in bytes.
pub const MAX_REASON_BYTES: usize = 1024;
/// Longest signature field (ECDSA P-256 DER is at most 72 bytes, Ed25519 64).
pub const MAX_SIGNATURE_BYTES: usize = 80;
/// Longest public key, digest, encapsulated key or identifier field.
pub const MAX_KEY_BYTES: usize = 64;
/// Longest certificate serial number (RFC 5280: 20 octets, plus a sign byte).
pub const MAX_SERIAL_BYTES: usize = 21;
/// Longest join token text.
pub const MAX_TOKEN_BYTES: usize = 128;
/// Longest certificate signing request (DER).
pub const MAX_CSR_BYTES: usize = 4096;
/// Longest certificate (DER).
pub const MAX_CERTIFICATE_BYTES: usize = 8192;
/// Most certificates in a chain.
pub const MAX_CHAIN_CERTIFICATES: usize = 4;
/// Longest trust bundle (PEM).
pub const MAX_TRUST_BUNDLE_BYTES: usize = 64 * 1024;
/// Most policy sources in one policy set.
pub const MAX_POLICY_SOURCES: usize = 256;
/// Longest policy source name, in bytes.
pub const MAX_POLICY_SOURCE_NAME_BYTES: usize = 255;
/// Longest policy source text, in bytes.
pub const MAX_POLICY_TEXT_BYTES: usize = 1 << 20;
/// Most policies in one policy set (and deciding policies in one answer).
pub const MAX_POLICIES: usize = 16 * 1024;
/// Longest policy ID, in bytes.
pub const MAX_POLICY_ID_BYTES: usize = 256;
/// Longest action name or resource type, in bytes.
pub const MAX_ACTION_BYTES: usize = 32;
/// Longest explanation of a policy decision, in bytes.
pub const MAX_EXPLANATION_BYTES: usize = 64 * 1024;
/// Longest grant name, grant or request ID, or approval object ID, in bytes.
pub const MAX_OBJECT_ID_BYTES: usize = 128;
/// Most grants, or requests, in one answer.
pub const MAX_GRANT_RECORDS: usize = 16 * 1024;
/// Most approvals of one request, or approvers of one grant, in one message.
pub const MAX_APPROVAL_RECORDS: usize = 32;
/// Most audit records in one answer.
pub const MAX_AUDIT_RECORDS: usize = 1000;
/// Longest audit record, in bytes (as `entente-audit` encodes them).
pub const MAX_AUDIT_RECORD_BYTES: usize = 64 * 1024;
/// Longest signed checkpoint note, or verifier key, in bytes.
pub const MAX_AUDIT_NOTE_BYTES: usize = 16 * 1024;
/// Most hashes in one Merkle proof (a path in a tree of up to 2^64 leaves, or a consistency
/// proof between two such trees).
pub const MAX_PROOF_HASHES: usize = 128;

/// Why bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The whole input exceeds [`Limits::max_frame_bytes`].
    #[error("message of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Input length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The bytes are not valid protobuf for the expected message.
    #[error("malformed {message}: {reason}")]
    Malformed {
        /// Message being decoded.
        message: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// A string or bytes field is longer than allowed.
    #[error("field `{field}` of {message} is {len} bytes, more than {max}")]
    FieldTooLong {
        /// Message holding the field.
        message: &'static str,
        /// Field name.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The message would decode into more memory than [`Limits::max_decoded_overhead`] allows
    /// (many tiny elements).
    #[error("{message} would decode into more than {max} bytes of values")]
    TooExpensive {
        /// Message being decoded.
        message: &'static str,
        /// The limit.
        max: usize,
    },
    /// A repeated field has too many entries, or a singular field appears twice.
    #[error("field `{field}` of {message} occurs more than {max} times")]
    TooMany {
        /// Message holding the field.
        message: &'static str,
        /// Field name.
        field: &'static str,
        /// The limit.
        max: usize,
    },
}

/// A message that can be decoded with [`decode`].
pub trait Bounded: Message + Default {
    /// Checks `bytes` against the limits without building the message.
    fn scan(bytes: &[u8], limits: &Limits) -> Result<(), WireError>;
}

/// Decodes `bytes` as `M` after checking every bound in `limits`.
pub fn decode<M: Bounded>(bytes: &[u8], limits: &Limits) -> Result<M, WireError> {
    if bytes.len() > limits.max_frame_bytes {
        return Err(WireError::TooLarge {
            len: bytes.len(),
            max: limits.max_frame_bytes,
        });
    }
    M::scan(bytes, limits)?;
    M::decode(bytes).map_err(|e| WireError::Malformed {
        message: std::any::type_name::<M>()
            .rsplit("::")
            .next()
            .unwrap_or("message"),
        reason: e.to_string(),
    })
}

/// Encodes a message to a new buffer.
pub fn encode<M: Message>(message: &M) -> Vec<u8> {
    message.encode_to_vec()
}

macro_rules! bounded {
    ($($ty:ident => $schema:path),* $(,)?) => {$(
        impl Bounded for $ty {
            fn scan(bytes: &[u8], limits: &Limits) -> Result<(), WireError> {
                scan::scan(bytes, &$schema, limits, 0, &mut 0)
            }
        }
    )*};
}

bounded! {
    KeyBundle => scan::KEY_BUNDLE,
    Envelope => scan::ENVELOPE,
    SignedBatch => scan::SIGNED_BATCH,
    WrappedKey => scan::WRAPPED_KEY,
    SenderKey => scan::SENDER_KEY,
    RevocationList => scan::REVOCATION_LIST,
    ClientFrame => scan::CLIENT_FRAME,
    ServerFrame => scan::SERVER_FRAME,
    Publish => scan::PUBLISH,
    Deliver => scan::DELIVER,
    Subscribe => scan::SUBSCRIBE,
    EnrollRequest => scan::ENROLL_REQUEST,
    EnrollResponse => scan::ENROLL_RESPONSE,
    RenewRequest => scan::RENEW_REQUEST,
    RenewResponse => scan::RENEW_RESPONSE,
    DirectoryRequest => scan::DIRECTORY_REQUEST,
    DirectoryResponse => scan::DIRECTORY_RESPONSE,
    CreateTokenRequest => scan::CREATE_TOKEN_REQUEST,
    CreateTokenResponse => scan::CREATE_TOKEN_RESPONSE,
    RevokeRequest => scan::REVOKE_REQUEST,
    RevokeResponse => scan::REVOKE_RESPONSE,
    SubscriptionEnded => scan::SUBSCRIPTION_ENDED,
    SessionEnd => scan::SESSION_END,
    PolicySource => scan::POLICY_SOURCE,
    LoadPoliciesRequest => scan::LOAD_POLICIES_REQUEST,
    LoadPoliciesResponse => scan::LOAD_POLICIES_RESPONSE,
    ShowPoliciesRequest => scan::SHOW_POLICIES_REQUEST,
    ShowPoliciesResponse => scan::SHOW_POLICIES_RESPONSE,
    CheckPolicyRequest => scan::CHECK_POLICY_REQUEST,
    CheckPolicyResponse => scan::CHECK_POLICY_RESPONSE,
    StoredPolicies => scan::STORED_POLICIES,
    GrantInfo => scan::GRANT_INFO,
    GrantRequestInfo => scan::GRANT_REQUEST_INFO,
    GrantRequest => scan::GRANT_REQUEST,
    GrantResponse => scan::GRANT_RESPONSE,
    ListGrantsRequest => scan::LIST_GRANTS_REQUEST,
    ListGrantsResponse => scan::LIST_GRANTS_RESPONSE,
    RequestGrantRequest => scan::REQUEST_GRANT_REQUEST,
    RequestGrantResponse => scan::REQUEST_GRANT_RESPONSE,
    ApprovalStatement => scan::APPROVAL_STATEMENT,
    ApproveRequest => scan::APPROVE_REQUEST,
    ApproveResponse => scan::APPROVE_RESPONSE,
    HeldMessage => scan::HELD_MESSAGE,
    ListHeldRequest => scan::LIST_HELD_REQUEST,
    ListHeldResponse => scan::LIST_HELD_RESPONSE,
    RevokeGrantRequest => scan::REVOKE_GRANT_REQUEST,
    RevokeGrantResponse => scan::REVOKE_GRANT_RESPONSE,
    StoredHold => scan::STORED_HOLD,
    AuditRecordsRequest => scan::AUDIT_RECORDS_REQUEST,
    AuditRecordsResponse => scan::AUDIT_RECORDS_RESPONSE,
    AuditExportRequest => scan::AUDIT_EXPORT_REQUEST,
    AuditExportResponse => scan::AUDIT_EXPORT_RESPONSE,
    AuditProofRequest => scan::AUDIT_PROOF_REQUEST,
    AuditProofResponse => scan::AUDIT_PROOF_RESPONSE,
    KeysRequest => scan::KEYS_REQUEST,
    QuarantineRequest => scan::QUARANTINE_REQUEST,
    QuarantinedAgent => scan::QUARANTINED_AGENT,
    QuarantineResponse => scan::QUARANTINE_RESPONSE,
    StoredQuarantine => scan::STORED_QUARANTINE,
    KeysResponse => scan::KEYS_RESPONSE,
    StoredCaRollover => scan::STORED_CA_ROLLOVER,
}

#[cfg(test)]
mod tests;
