//! A bounds check over protobuf bytes, run before `prost` allocates anything.
//!
//! The walk is linear in the input, allocation-free, and recursion is limited by the schemas
//! (at most four levels). Unknown fields are skipped, as protobuf requires, but still bounded by
//! the frame size; groups (wire types 3 and 4) are refused.

use prost::encoding::decode_varint;

use crate::{
    DECODED_ELEMENT_COST, Limits, MAX_ACTION_BYTES, MAX_APPROVAL_RECORDS, MAX_AUDIT_NOTE_BYTES,
    MAX_AUDIT_RECORD_BYTES, MAX_AUDIT_RECORDS, MAX_CERTIFICATE_BYTES, MAX_CHAIN_CERTIFICATES,
    MAX_CHANNEL_BYTES, MAX_CSR_BYTES, MAX_EXPLANATION_BYTES, MAX_GRANT_RECORDS, MAX_ID_BYTES,
    MAX_KEY_BYTES, MAX_OBJECT_ID_BYTES, MAX_POLICIES, MAX_POLICY_ID_BYTES,
    MAX_POLICY_SOURCE_NAME_BYTES, MAX_POLICY_SOURCES, MAX_POLICY_TEXT_BYTES, MAX_PROOF_HASHES,
    MAX_REASON_BYTES, MAX_SERIAL_BYTES, MAX_SIGNATURE_BYTES, MAX_TOKEN_BYTES,
    MAX_TRUST_BUNDLE_BYTES, WireError,
};

/// Checks `bytes` as a message of `schema`.
///
/// `cost` accumulates [`DECODED_ELEMENT_COST`] for every nested message and repeated element
/// across the whole walk; it may not exceed `limits.max_decoded_overhead`.
pub(crate) fn scan(
    mut bytes: &[u8],
    schema: &Schema,
    limits: &Limits,
    depth: usize,
    cost: &mut usize,
) -> Result<(), WireError> {
    if depth > MAX_DEPTH {
        return Err(malformed(schema, "nested too deeply"));
    }
    let mut counts = [0usize; MAX_FIELDS];
    let mut oneof_seen = false;
    while !bytes.is_empty() {
        let key = read_varint(&mut bytes).map_err(|_| malformed(schema, "bad field key"))?;
        let number = u32::try_from(key >> 3).map_err(|_| malformed(schema, "bad field number"))?;
        let wire_type = key & 7;
        let Some((index, field)) = schema.field(number) else {
            skip(&mut bytes, wire_type, schema)?;
            continue;
        };
        if schema.oneof {
            if oneof_seen && counts.get(index).is_none_or(|c| *c == 0) {
                return Err(malformed(schema, "more than one member of a oneof"));
            }
            oneof_seen = true;
        }
        if matches!(field.kind, Kind::Message(_)) || !matches!(field.count, Count::One) {
            *cost += DECODED_ELEMENT_COST;
            if *cost > limits.max_decoded_overhead {
                return Err(WireError::TooExpensive {
                    message: schema.name,
                    max: limits.max_decoded_overhead,
                });
            }
        }
        // A schema of more fields than are counted refuses what it can't count (fail closed:
        // its messages' tests show it at once).
        let count = counts
            .get_mut(index)
            .ok_or_else(|| malformed(schema, "a field beyond those the scan counts"))?;
        *count += 1;
        let max = field.count.max(limits);
        if *count > max {
            return Err(WireError::TooMany {
                message: schema.name,
                field: field.name,
                max,
            });
        }
        match field.kind {
            Kind::Varint => {
                if wire_type != WIRE_VARINT {
                    return Err(malformed(schema, "wrong wire type"));
                }
                read_varint(&mut bytes).map_err(|_| malformed(schema, "bad varint"))?;
            }
            Kind::Bytes(len) => {
                let value = length_delimited(&mut bytes, wire_type, schema)?;
                let max = len.max(limits);
                if value.len() > max {
                    return Err(WireError::FieldTooLong {
                        message: schema.name,
                        field: field.name,
                        len: value.len(),
                        max,
                    });
                }
            }
            Kind::Message(inner) => {
                let value = length_delimited(&mut bytes, wire_type, schema)?;
                scan(value, inner, limits, depth + 1, cost)?;
            }
        }
    }
    Ok(())
}

/// The fields of one message.
#[derive(Debug)]
pub(crate) struct Schema {
    name: &'static str,
    fields: &'static [Field],
    /// The fields are members of one `oneof`: at most one of them may appear.
    oneof: bool,
}

impl Schema {
    /// The field numbered `number`, with its index. Fields are declared in number order and
    /// mostly numbered from 1 without a gap, so the field at `number - 1` is tried first.
    fn field(&self, number: u32) -> Option<(usize, &Field)> {
        let guess = usize::try_from(number).ok()?.checked_sub(1)?;
        match self.fields.get(guess) {
            Some(field) if field.number == number => Some((guess, field)),
            _ => self
                .fields
                .iter()
                .enumerate()
                .find(|(_, f)| f.number == number),
        }
    }
}

/// A varint, read in place when it is one byte (every field key here, most lengths and small
/// values); longer ones through prost's decoder, which refuses what it refuses. The bounds
/// scan and the envelopes' one-pass reading both read varints with it.
#[inline]
pub(crate) fn read_varint(bytes: &mut &[u8]) -> Result<u64, prost::DecodeError> {
    match bytes.split_first() {
        Some((&byte, rest)) if byte < 0x80 => {
            *bytes = rest;
            Ok(u64::from(byte))
        }
        _ => decode_varint(bytes),
    }
}

#[derive(Debug)]
struct Field {
    number: u32,
    name: &'static str,
    kind: Kind,
    count: Count,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Varint,
    Bytes(Len),
    Message(&'static Schema),
}

#[derive(Debug, Clone, Copy)]
enum Len {
    Token,
    Csr,
    Certificate,
    TrustBundle,
    Id,
    Channel,
    Key,
    Signature,
    Serial,
    Reason,
    Ciphertext,
    SourceName,
    PolicyText,
    PolicyId,
    Action,
    Explanation,
    ObjectId,
    Frame,
    AuditRecord,
    AuditNote,
}

impl Len {
    fn max(self, limits: &Limits) -> usize {
        match self {
            Self::Token => MAX_TOKEN_BYTES,
            Self::Csr => MAX_CSR_BYTES,
            Self::Certificate => MAX_CERTIFICATE_BYTES,
            Self::TrustBundle => MAX_TRUST_BUNDLE_BYTES,
            Self::Id => MAX_ID_BYTES,
            Self::Channel => MAX_CHANNEL_BYTES,
            Self::Key => MAX_KEY_BYTES,
            Self::Signature => MAX_SIGNATURE_BYTES,
            Self::Serial => MAX_SERIAL_BYTES,
            Self::Reason => MAX_REASON_BYTES,
            Self::Ciphertext => limits.max_ciphertext_bytes,
            Self::SourceName => MAX_POLICY_SOURCE_NAME_BYTES,
            Self::PolicyText => MAX_POLICY_TEXT_BYTES,
            Self::PolicyId => MAX_POLICY_ID_BYTES,
            Self::Action => MAX_ACTION_BYTES,
            Self::Explanation => MAX_EXPLANATION_BYTES,
            Self::ObjectId => MAX_OBJECT_ID_BYTES,
            Self::Frame => limits.max_frame_bytes,
            Self::AuditRecord => MAX_AUDIT_RECORD_BYTES,
            Self::AuditNote => MAX_AUDIT_NOTE_BYTES,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Count {
    One,
    Chain,
    Envelopes,
    Recipients,
    Items,
    Revocations,
    Sources,
    Policies,
    Grants,
    Approvals,
    AuditRecords,
    ProofHashes,
}

impl Count {
    fn max(self, limits: &Limits) -> usize {
        match self {
            Self::One => 1,
            Self::Chain => MAX_CHAIN_CERTIFICATES,
            Self::Envelopes => limits.max_batch_envelopes,
            Self::Recipients => limits.max_recipients,
            Self::Items => limits.max_items_per_frame,
            Self::Revocations => limits.max_revocations,
            Self::Sources => MAX_POLICY_SOURCES,
            Self::Policies => MAX_POLICIES,
            Self::Grants => MAX_GRANT_RECORDS,
            Self::Approvals => MAX_APPROVAL_RECORDS,
            Self::AuditRecords => MAX_AUDIT_RECORDS,
            Self::ProofHashes => MAX_PROOF_HASHES,
        }
    }
}

const MAX_DEPTH: usize = 4;
/// Most fields of one schema (each counted, for duplicates and repeated bounds).
const MAX_FIELDS: usize = 20;
const WIRE_VARINT: u64 = 0;
const WIRE_FIXED64: u64 = 1;
const WIRE_LEN: u64 = 2;
const WIRE_FIXED32: u64 = 5;

const fn field(number: u32, name: &'static str, kind: Kind, count: Count) -> Field {
    Field {
        number,
        name,
        kind,
        count,
    }
}

const fn varint(number: u32, name: &'static str) -> Field {
    field(number, name, Kind::Varint, Count::One)
}

const fn bytes(number: u32, name: &'static str, len: Len) -> Field {
    field(number, name, Kind::Bytes(len), Count::One)
}

pub(crate) static KEY_BUNDLE: Schema = Schema {
    name: "KeyBundle",
    oneof: false,
    fields: &[
        varint(1, "version"),
        bytes(2, "principal", Len::Id),
        bytes(3, "ed25519_public", Len::Key),
        bytes(4, "x25519_public", Len::Key),
        varint(5, "epoch"),
        varint(6, "not_before_ms"),
        varint(7, "not_after_ms"),
        bytes(8, "signer", Len::Key),
        bytes(9, "signature", Len::Signature),
    ],
};

pub(crate) static ENVELOPE: Schema = Schema {
    name: "Envelope",
    oneof: false,
    fields: &[
        varint(1, "epoch"),
        varint(2, "seq"),
        bytes(3, "message_id", Len::Key),
        varint(4, "issued_at_ms"),
        varint(5, "expires_at_ms"),
        bytes(6, "reply_to", Len::Channel),
        bytes(7, "ciphertext", Len::Ciphertext),
        bytes(8, "channel", Len::Channel),
    ],
};

pub(crate) static SIGNED_BATCH: Schema = Schema {
    name: "SignedBatch",
    oneof: false,
    fields: &[
        bytes(1, "sender", Len::Id),
        bytes(2, "channel", Len::Channel),
        varint(3, "key_epoch"),
        field(4, "envelopes", Kind::Message(&ENVELOPE), Count::Envelopes),
        bytes(5, "signature", Len::Signature),
    ],
};

pub(crate) static WRAPPED_KEY: Schema = Schema {
    name: "WrappedKey",
    oneof: false,
    fields: &[
        bytes(1, "recipient", Len::Id),
        varint(2, "recipient_key_epoch"),
        bytes(3, "enc", Len::Key),
        bytes(4, "ciphertext", Len::Key),
    ],
};

pub(crate) static SENDER_KEY: Schema = Schema {
    name: "SenderKey",
    oneof: false,
    fields: &[
        varint(1, "version"),
        bytes(2, "sender", Len::Id),
        bytes(3, "channel", Len::Channel),
        varint(4, "epoch"),
        varint(5, "issued_at_ms"),
        varint(6, "expires_at_ms"),
        varint(7, "key_epoch"),
        field(
            8,
            "recipients",
            Kind::Message(&WRAPPED_KEY),
            Count::Recipients,
        ),
        bytes(9, "signature", Len::Signature),
    ],
};

pub(crate) static REVOCATION_LIST: Schema = Schema {
    name: "RevocationList",
    oneof: false,
    fields: &[
        varint(1, "version"),
        varint(2, "issued_at_ms"),
        field(3, "serials", Kind::Bytes(Len::Serial), Count::Revocations),
        field(4, "principals", Kind::Bytes(Len::Id), Count::Revocations),
        bytes(5, "signer", Len::Key),
        bytes(6, "signature", Len::Signature),
    ],
};

pub(crate) static PUBLISH: Schema = Schema {
    name: "Publish",
    oneof: false,
    fields: &[
        varint(1, "request_id"),
        field(2, "sender_keys", Kind::Message(&SENDER_KEY), Count::Items),
        field(3, "batches", Kind::Message(&SIGNED_BATCH), Count::Items),
        bytes(4, "purpose", Len::Reason),
    ],
};

pub(crate) static DELIVER: Schema = Schema {
    name: "Deliver",
    oneof: false,
    fields: &[
        varint(1, "subscription_id"),
        field(2, "sender_keys", Kind::Message(&SENDER_KEY), Count::Items),
        field(3, "batches", Kind::Message(&SIGNED_BATCH), Count::Items),
        varint(4, "sequence"),
        varint(5, "attempt"),
    ],
};

pub(crate) static SUBSCRIBE: Schema = Schema {
    name: "Subscribe",
    oneof: false,
    fields: &[
        varint(1, "subscription_id"),
        bytes(2, "pattern", Len::Channel),
        bytes(3, "durable", Len::ObjectId),
    ],
};

static DURABLE_ACK: Schema = Schema {
    name: "DurableAck",
    oneof: false,
    fields: &[
        varint(1, "subscription_id"),
        field(2, "sequences", Kind::Varint, Count::Items),
    ],
};

static UNSUBSCRIBE: Schema = Schema {
    name: "Unsubscribe",
    oneof: false,
    fields: &[varint(1, "subscription_id")],
};

static CREDIT: Schema = Schema {
    name: "Credit",
    oneof: false,
    fields: &[varint(1, "messages")],
};

static ACK: Schema = Schema {
    name: "Ack",
    oneof: false,
    fields: &[
        varint(1, "request_id"),
        field(2, "held", Kind::Message(&HELD), Count::Items),
    ],
};

static HELD: Schema = Schema {
    name: "Held",
    oneof: false,
    fields: &[
        bytes(1, "message_id", Len::ObjectId),
        bytes(2, "channel", Len::Channel),
        varint(3, "expires_at_ms"),
    ],
};

pub(crate) static HELD_MESSAGE: Schema = Schema {
    name: "HeldMessage",
    oneof: false,
    fields: &[
        bytes(1, "message_id", Len::ObjectId),
        bytes(2, "sender", Len::Id),
        bytes(3, "channel", Len::Channel),
        varint(4, "size"),
        varint(5, "published_at_ms"),
        varint(6, "expires_at_ms"),
        bytes(7, "purpose", Len::Reason),
        field(8, "batch", Kind::Message(&SIGNED_BATCH), Count::One),
        bytes(9, "state", Len::Action),
        field(
            10,
            "approvals",
            Kind::Message(&APPROVAL_INFO),
            Count::Approvals,
        ),
        bytes(11, "reason", Len::Reason),
    ],
};

pub(crate) static STORED_HOLD: Schema = Schema {
    name: "StoredHold",
    oneof: false,
    fields: &[
        varint(1, "version"),
        bytes(2, "message_id", Len::ObjectId),
        bytes(3, "sender", Len::Id),
        bytes(4, "channel", Len::Channel),
        bytes(5, "body", Len::Frame),
        field(6, "batch", Kind::Message(&SIGNED_BATCH), Count::One),
        bytes(7, "hash", Len::Key),
        bytes(8, "purpose", Len::Reason),
        varint(9, "size"),
        varint(10, "envelope_expires_at_ms"),
        varint(11, "published_at_ms"),
        varint(12, "expires_at_ms"),
        field(
            13,
            "approvals",
            Kind::Message(&APPROVAL_INFO),
            Count::Approvals,
        ),
        field(14, "approvers", Kind::Bytes(Len::Id), Count::Approvals),
        field(15, "seen", Kind::Bytes(Len::Key), Count::Approvals),
        bytes(16, "state", Len::Action),
        field(
            17,
            "credentials",
            Kind::Message(&HELD_CREDENTIALS),
            Count::Approvals,
        ),
    ],
};

static HELD_CREDENTIALS: Schema = Schema {
    name: "HeldCredentials",
    oneof: false,
    fields: &[
        bytes(1, "principal", Len::Id),
        field(2, "serials", Kind::Bytes(Len::Serial), Count::Approvals),
    ],
};

pub(crate) static AUDIT_RECORDS_REQUEST: Schema = Schema {
    name: "AuditRecordsRequest",
    oneof: false,
    fields: &[varint(1, "from"), varint(2, "max")],
};

pub(crate) static AUDIT_RECORDS_RESPONSE: Schema = Schema {
    name: "AuditRecordsResponse",
    oneof: false,
    fields: &[
        field(
            1,
            "records",
            Kind::Bytes(Len::AuditRecord),
            Count::AuditRecords,
        ),
        varint(2, "from"),
        varint(3, "total"),
        bytes(4, "checkpoint", Len::AuditNote),
        bytes(5, "verifier_key", Len::AuditNote),
    ],
};

pub(crate) static AUDIT_EXPORT_REQUEST: Schema = Schema {
    name: "AuditExportRequest",
    oneof: false,
    fields: &[varint(1, "snapshot"), varint(2, "offset")],
};

pub(crate) static AUDIT_EXPORT_RESPONSE: Schema = Schema {
    name: "AuditExportResponse",
    oneof: false,
    fields: &[
        varint(1, "snapshot"),
        varint(2, "total"),
        bytes(3, "chunk", Len::Frame),
        bytes(4, "checkpoint", Len::AuditNote),
    ],
};

pub(crate) static AUDIT_PROOF_REQUEST: Schema = Schema {
    name: "AuditProofRequest",
    oneof: false,
    fields: &[varint(1, "index"), varint(2, "old_size")],
};

pub(crate) static AUDIT_PROOF_RESPONSE: Schema = Schema {
    name: "AuditProofResponse",
    oneof: false,
    fields: &[
        bytes(1, "checkpoint", Len::AuditNote),
        bytes(2, "record", Len::AuditRecord),
        varint(3, "leaf_index"),
        bytes(4, "leaf", Len::AuditNote),
        field(5, "record_path", Kind::Bytes(Len::Key), Count::ProofHashes),
        field(6, "log_path", Kind::Bytes(Len::Key), Count::ProofHashes),
        field(7, "consistency", Kind::Bytes(Len::Key), Count::ProofHashes),
    ],
};

pub(crate) static QUARANTINE_REQUEST: Schema = Schema {
    name: "QuarantineRequest",
    oneof: false,
    fields: &[
        bytes(1, "release", Len::Id),
        bytes(2, "impose", Len::Id),
        bytes(3, "reason", Len::Reason),
    ],
};

pub(crate) static QUARANTINED_AGENT: Schema = Schema {
    name: "QuarantinedAgent",
    oneof: false,
    fields: &[
        bytes(1, "principal", Len::Id),
        varint(2, "since_ms"),
        varint(3, "risk"),
        bytes(4, "evidence", Len::Explanation),
        bytes(5, "by", Len::Id),
    ],
};

pub(crate) static QUARANTINE_RESPONSE: Schema = Schema {
    name: "QuarantineResponse",
    oneof: false,
    fields: &[
        field(
            1,
            "quarantined",
            Kind::Message(&QUARANTINED_AGENT),
            Count::Grants,
        ),
        varint(2, "closed_connections"),
        field(3, "released", Kind::Message(&QUARANTINED_AGENT), Count::One),
    ],
};

pub(crate) static STORED_QUARANTINE: Schema = Schema {
    name: "StoredQuarantine",
    oneof: false,
    fields: &[field(
        1,
        "quarantined",
        Kind::Message(&QUARANTINED_AGENT),
        Count::Grants,
    )],
};

pub(crate) static KEYS_REQUEST: Schema = Schema {
    name: "KeysRequest",
    oneof: false,
    fields: &[bytes(1, "rotate", Len::Action)],
};

static DATA_KEY_INFO: Schema = Schema {
    name: "DataKeyInfo",
    oneof: false,
    fields: &[
        varint(1, "version"),
        varint(2, "created_ms"),
        varint(3, "current"),
    ],
};

pub(crate) static KEYS_RESPONSE: Schema = Schema {
    name: "KeysResponse",
    oneof: false,
    fields: &[
        field(1, "data_keys", Kind::Message(&DATA_KEY_INFO), Count::Grants),
        bytes(2, "audit_key", Len::AuditNote),
        field(
            3,
            "audit_trusted",
            Kind::Bytes(Len::AuditNote),
            Count::Grants,
        ),
        bytes(4, "rotated", Len::AuditNote),
        field(
            5,
            "intermediates",
            Kind::Message(&INTERMEDIATE_INFO),
            Count::Chain,
        ),
        bytes(6, "rollover_next", Len::Action),
        varint(7, "rollover_next_ms"),
        bytes(8, "ca_key_store", Len::Action),
        bytes(9, "audit_key_store", Len::Action),
        bytes(10, "data_key_store", Len::Action),
        bytes(11, "data_kek", Len::Id),
    ],
};

static INTERMEDIATE_INFO: Schema = Schema {
    name: "IntermediateInfo",
    oneof: false,
    fields: &[
        bytes(1, "role", Len::Action),
        bytes(2, "signer", Len::Key),
        varint(3, "not_before_ms"),
        varint(4, "not_after_ms"),
        bytes(5, "key", Len::Id),
    ],
};

pub(crate) static STORED_CA_ROLLOVER: Schema = Schema {
    name: "StoredCaRollover",
    oneof: false,
    fields: &[
        varint(1, "version"),
        bytes(2, "intermediate", Len::TrustBundle),
        bytes(3, "staged", Len::TrustBundle),
        bytes(4, "retiring", Len::TrustBundle),
        varint(5, "staged_at_ms"),
        varint(6, "activated_at_ms"),
    ],
};

pub(crate) static LIST_HELD_REQUEST: Schema = Schema {
    name: "ListHeldRequest",
    oneof: false,
    fields: &[bytes(1, "message_id", Len::ObjectId)],
};

pub(crate) static LIST_HELD_RESPONSE: Schema = Schema {
    name: "ListHeldResponse",
    oneof: false,
    fields: &[field(
        1,
        "held",
        Kind::Message(&HELD_MESSAGE),
        Count::Grants,
    )],
};

static REFUSAL: Schema = Schema {
    name: "Refusal",
    oneof: false,
    fields: &[
        varint(1, "request_id"),
        varint(2, "code"),
        bytes(3, "reason", Len::Reason),
        varint(4, "retry_after_ms"),
    ],
};

pub(crate) static CLIENT_FRAME: Schema = Schema {
    name: "ClientFrame",
    oneof: true,
    fields: &[
        field(1, "publish", Kind::Message(&PUBLISH), Count::One),
        field(2, "subscribe", Kind::Message(&SUBSCRIBE), Count::One),
        field(3, "unsubscribe", Kind::Message(&UNSUBSCRIBE), Count::One),
        field(4, "credit", Kind::Message(&CREDIT), Count::One),
        field(5, "durable_ack", Kind::Message(&DURABLE_ACK), Count::One),
    ],
};

pub(crate) static SERVER_FRAME: Schema = Schema {
    name: "ServerFrame",
    oneof: true,
    fields: &[
        field(1, "deliver", Kind::Message(&DELIVER), Count::One),
        field(2, "ack", Kind::Message(&ACK), Count::One),
        field(3, "refusal", Kind::Message(&REFUSAL), Count::One),
        field(4, "credit", Kind::Message(&CREDIT), Count::One),
        field(
            5,
            "subscription_ended",
            Kind::Message(&SUBSCRIPTION_ENDED),
            Count::One,
        ),
        field(6, "session_end", Kind::Message(&SESSION_END), Count::One),
    ],
};

pub(crate) static SESSION_END: Schema = Schema {
    name: "SessionEnd",
    oneof: false,
    fields: &[varint(1, "code"), bytes(2, "message", Len::Reason)],
};

pub(crate) static SUBSCRIPTION_ENDED: Schema = Schema {
    name: "SubscriptionEnded",
    oneof: false,
    fields: &[
        varint(1, "subscription_id"),
        varint(2, "code"),
        bytes(3, "reason", Len::Reason),
    ],
};

pub(crate) static ENROLL_REQUEST: Schema = Schema {
    name: "EnrollRequest",
    oneof: false,
    fields: &[
        bytes(1, "token", Len::Token),
        bytes(2, "csr", Len::Csr),
        bytes(3, "ed25519_public", Len::Key),
        bytes(4, "x25519_public", Len::Key),
    ],
};

pub(crate) static ENROLL_RESPONSE: Schema = Schema {
    name: "EnrollResponse",
    oneof: false,
    fields: &[
        field(
            1,
            "certificate_chain",
            Kind::Bytes(Len::Certificate),
            Count::Chain,
        ),
        field(2, "key_bundle", Kind::Message(&KEY_BUNDLE), Count::One),
        bytes(3, "trust_bundle_pem", Len::TrustBundle),
        field(
            4,
            "revocations",
            Kind::Message(&REVOCATION_LIST),
            Count::One,
        ),
    ],
};

pub(crate) static RENEW_REQUEST: Schema = Schema {
    name: "RenewRequest",
    oneof: false,
    fields: &[bytes(1, "csr", Len::Csr)],
};

pub(crate) static RENEW_RESPONSE: Schema = Schema {
    name: "RenewResponse",
    oneof: false,
    fields: &[
        field(
            1,
            "certificate_chain",
            Kind::Bytes(Len::Certificate),
            Count::Chain,
        ),
        bytes(2, "trust_bundle_pem", Len::TrustBundle),
        field(3, "key_bundle", Kind::Message(&KEY_BUNDLE), Count::One),
    ],
};

pub(crate) static DIRECTORY_REQUEST: Schema = Schema {
    name: "DirectoryRequest",
    oneof: false,
    fields: &[
        field(1, "principals", Kind::Bytes(Len::Id), Count::Recipients),
        bytes(2, "channel", Len::Channel),
    ],
};

pub(crate) static DIRECTORY_RESPONSE: Schema = Schema {
    name: "DirectoryResponse",
    oneof: false,
    fields: &[field(
        1,
        "bundles",
        Kind::Message(&KEY_BUNDLE),
        Count::Recipients,
    )],
};

pub(crate) static CREATE_TOKEN_REQUEST: Schema = Schema {
    name: "CreateTokenRequest",
    oneof: false,
    fields: &[bytes(1, "agent", Len::Id), varint(2, "ttl_seconds")],
};

pub(crate) static CREATE_TOKEN_RESPONSE: Schema = Schema {
    name: "CreateTokenResponse",
    oneof: false,
    fields: &[bytes(1, "token", Len::Token), varint(2, "expires_at_ms")],
};

pub(crate) static REVOKE_REQUEST: Schema = Schema {
    name: "RevokeRequest",
    oneof: false,
    fields: &[
        field(1, "principals", Kind::Bytes(Len::Id), Count::Recipients),
        field(2, "serials", Kind::Bytes(Len::Serial), Count::Recipients),
    ],
};

pub(crate) static REVOKE_RESPONSE: Schema = Schema {
    name: "RevokeResponse",
    oneof: false,
    fields: &[
        field(
            1,
            "revocations",
            Kind::Message(&REVOCATION_LIST),
            Count::One,
        ),
        varint(2, "closed_connections"),
    ],
};

pub(crate) static POLICY_SOURCE: Schema = Schema {
    name: "PolicySource",
    oneof: false,
    fields: &[
        bytes(1, "name", Len::SourceName),
        bytes(2, "text", Len::PolicyText),
    ],
};

pub(crate) static LOAD_POLICIES_REQUEST: Schema = Schema {
    name: "LoadPoliciesRequest",
    oneof: false,
    fields: &[field(
        1,
        "sources",
        Kind::Message(&POLICY_SOURCE),
        Count::Sources,
    )],
};

pub(crate) static LOAD_POLICIES_RESPONSE: Schema = Schema {
    name: "LoadPoliciesResponse",
    oneof: false,
    fields: &[varint(1, "epoch"), varint(2, "policies")],
};

pub(crate) static SHOW_POLICIES_REQUEST: Schema = Schema {
    name: "ShowPoliciesRequest",
    oneof: false,
    fields: &[],
};

pub(crate) static POLICY_SUMMARY: Schema = Schema {
    name: "PolicySummary",
    oneof: false,
    fields: &[
        bytes(1, "id", Len::PolicyId),
        bytes(2, "source", Len::SourceName),
        varint(3, "line"),
        varint(4, "column"),
        varint(5, "forbid"),
        varint(6, "cross_segment"),
    ],
};

pub(crate) static SHOW_POLICIES_RESPONSE: Schema = Schema {
    name: "ShowPoliciesResponse",
    oneof: false,
    fields: &[
        varint(1, "epoch"),
        field(2, "sources", Kind::Message(&POLICY_SOURCE), Count::Sources),
        field(
            3,
            "policies",
            Kind::Message(&POLICY_SUMMARY),
            Count::Policies,
        ),
    ],
};

pub(crate) static CHECK_POLICY_REQUEST: Schema = Schema {
    name: "CheckPolicyRequest",
    oneof: false,
    fields: &[
        bytes(1, "principal", Len::Id),
        bytes(2, "action", Len::Action),
        bytes(3, "resource_type", Len::Action),
        bytes(4, "resource", Len::Id),
    ],
};

pub(crate) static CHECK_POLICY_RESPONSE: Schema = Schema {
    name: "CheckPolicyResponse",
    oneof: false,
    fields: &[
        varint(1, "allowed"),
        field(2, "policies", Kind::Bytes(Len::PolicyId), Count::Policies),
        bytes(3, "reason", Len::Reason),
        varint(4, "cross_segment"),
        varint(5, "epoch"),
        bytes(6, "explanation", Len::Explanation),
    ],
};

pub(crate) static STORED_POLICIES: Schema = Schema {
    name: "StoredPolicies",
    oneof: false,
    fields: &[
        varint(1, "version"),
        field(2, "sources", Kind::Message(&POLICY_SOURCE), Count::Sources),
    ],
};

pub(crate) static GRANT_INFO: Schema = Schema {
    name: "GrantInfo",
    oneof: false,
    fields: &[
        bytes(1, "id", Len::ObjectId),
        bytes(2, "name", Len::ObjectId),
        bytes(3, "principal", Len::Id),
        varint(4, "not_before_ms"),
        varint(5, "not_after_ms"),
        bytes(6, "reason", Len::Reason),
        bytes(7, "granter", Len::Id),
        bytes(8, "request", Len::ObjectId),
        field(9, "approvers", Kind::Bytes(Len::Id), Count::Approvals),
    ],
};

static APPROVAL_INFO: Schema = Schema {
    name: "ApprovalInfo",
    oneof: false,
    fields: &[
        bytes(1, "approver", Len::Id),
        bytes(2, "verdict", Len::Action),
        varint(3, "signed_at_ms"),
    ],
};

pub(crate) static GRANT_REQUEST_INFO: Schema = Schema {
    name: "GrantRequestInfo",
    oneof: false,
    fields: &[
        bytes(1, "id", Len::ObjectId),
        bytes(2, "requester", Len::Id),
        bytes(3, "name", Len::ObjectId),
        varint(4, "duration_ms"),
        bytes(5, "reason", Len::Reason),
        varint(6, "created_at_ms"),
        varint(7, "expires_at_ms"),
        varint(8, "required"),
        field(
            9,
            "approvals",
            Kind::Message(&APPROVAL_INFO),
            Count::Approvals,
        ),
        bytes(10, "state", Len::Action),
        bytes(11, "grant", Len::ObjectId),
    ],
};

pub(crate) static GRANT_REQUEST: Schema = Schema {
    name: "GrantRequest",
    oneof: false,
    fields: &[
        bytes(1, "principal", Len::Id),
        bytes(2, "name", Len::ObjectId),
        varint(3, "duration_ms"),
        varint(4, "not_after_ms"),
        bytes(5, "reason", Len::Reason),
    ],
};

pub(crate) static GRANT_RESPONSE: Schema = Schema {
    name: "GrantResponse",
    oneof: false,
    fields: &[field(1, "grant", Kind::Message(&GRANT_INFO), Count::One)],
};

pub(crate) static LIST_GRANTS_REQUEST: Schema = Schema {
    name: "ListGrantsRequest",
    oneof: false,
    fields: &[bytes(1, "principal", Len::Id)],
};

pub(crate) static LIST_GRANTS_RESPONSE: Schema = Schema {
    name: "ListGrantsResponse",
    oneof: false,
    fields: &[
        field(1, "grants", Kind::Message(&GRANT_INFO), Count::Grants),
        field(
            2,
            "requests",
            Kind::Message(&GRANT_REQUEST_INFO),
            Count::Grants,
        ),
        varint(3, "now_ms"),
    ],
};

pub(crate) static REQUEST_GRANT_REQUEST: Schema = Schema {
    name: "RequestGrantRequest",
    oneof: false,
    fields: &[
        bytes(1, "name", Len::ObjectId),
        varint(2, "duration_ms"),
        bytes(3, "reason", Len::Reason),
    ],
};

pub(crate) static REVOKE_GRANT_REQUEST: Schema = Schema {
    name: "RevokeGrantRequest",
    oneof: false,
    fields: &[
        bytes(1, "id", Len::ObjectId),
        bytes(2, "reason", Len::Reason),
    ],
};

pub(crate) static REVOKE_GRANT_RESPONSE: Schema = Schema {
    name: "RevokeGrantResponse",
    oneof: false,
    fields: &[field(1, "grant", Kind::Message(&GRANT_INFO), Count::One)],
};

pub(crate) static REQUEST_GRANT_RESPONSE: Schema = Schema {
    name: "RequestGrantResponse",
    oneof: false,
    fields: &[field(
        1,
        "request",
        Kind::Message(&GRANT_REQUEST_INFO),
        Count::One,
    )],
};

pub(crate) static APPROVAL_STATEMENT: Schema = Schema {
    name: "ApprovalStatement",
    oneof: false,
    fields: &[
        bytes(1, "verdict", Len::Action),
        bytes(2, "kind", Len::Action),
        bytes(3, "object_id", Len::ObjectId),
        bytes(4, "object_hash", Len::Key),
        bytes(5, "approver", Len::Id),
        varint(6, "key_epoch"),
        varint(7, "signed_at_ms"),
    ],
};

pub(crate) static APPROVE_REQUEST: Schema = Schema {
    name: "ApproveRequest",
    oneof: false,
    fields: &[
        field(
            1,
            "statement",
            Kind::Message(&APPROVAL_STATEMENT),
            Count::One,
        ),
        bytes(2, "signature", Len::Signature),
        field(3, "key_bundle", Kind::Message(&KEY_BUNDLE), Count::One),
    ],
};

pub(crate) static APPROVE_RESPONSE: Schema = Schema {
    name: "ApproveResponse",
    oneof: false,
    fields: &[
        bytes(1, "outcome", Len::Action),
        varint(2, "approvals"),
        varint(3, "required"),
        field(4, "grant", Kind::Message(&GRANT_INFO), Count::One),
    ],
};

fn malformed(schema: &Schema, reason: &str) -> WireError {
    WireError::Malformed {
        message: schema.name,
        reason: reason.to_owned(),
    }
}

fn length_delimited<'a>(
    bytes: &mut &'a [u8],
    wire_type: u64,
    schema: &Schema,
) -> Result<&'a [u8], WireError> {
    if wire_type != WIRE_LEN {
        return Err(malformed(schema, "wrong wire type"));
    }
    let len = read_varint(bytes).map_err(|_| malformed(schema, "bad length"))?;
    let len = usize::try_from(len).map_err(|_| malformed(schema, "truncated"))?;
    let (value, rest) = bytes
        .split_at_checked(len)
        .ok_or_else(|| malformed(schema, "truncated"))?;
    *bytes = rest;
    Ok(value)
}

fn skip(bytes: &mut &[u8], wire_type: u64, schema: &Schema) -> Result<(), WireError> {
    let width = match wire_type {
        WIRE_VARINT => {
            read_varint(bytes).map_err(|_| malformed(schema, "bad varint"))?;
            return Ok(());
        }
        WIRE_LEN => {
            length_delimited(bytes, wire_type, schema)?;
            return Ok(());
        }
        WIRE_FIXED64 => 8,
        WIRE_FIXED32 => 4,
        _ => return Err(malformed(schema, "unsupported wire type")),
    };
    let rest = bytes
        .get(width..)
        .ok_or_else(|| malformed(schema, "truncated"))?;
    *bytes = rest;
    Ok(())
}

#[cfg(test)]
impl Schema {
    pub(crate) fn name(&self) -> &'static str {
        self.name
    }

    pub(crate) fn field_list(&self) -> Vec<(String, u32)> {
        self.fields
            .iter()
            .map(|f| (f.name.to_owned(), f.number))
            .collect()
    }
}

/// Field numbers present at the top level of `bytes` (test helper).
#[cfg(test)]
pub(crate) fn top_level_numbers(mut bytes: &[u8]) -> Vec<u32> {
    let schema = Schema {
        name: "any",
        fields: &[],
        oneof: false,
    };
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let Ok(key) = decode_varint(&mut bytes) else {
            break;
        };
        out.push((key >> 3) as u32);
        if skip(&mut bytes, key & 7, &schema).is_err() {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_found_by_number_with_or_without_gaps() {
        static GAPPED: Schema = Schema {
            name: "gapped",
            fields: &[varint(2, "b"), varint(5, "e"), varint(6, "f")],
            oneof: false,
        };
        let found = |number| GAPPED.field(number).map(|(index, f)| (index, f.name));
        assert_eq!(found(2), Some((0, "b")));
        assert_eq!(found(5), Some((1, "e")));
        assert_eq!(found(6), Some((2, "f")));
        for absent in [0, 1, 3, 4, 7, u32::MAX] {
            assert_eq!(found(absent), None, "{absent}");
        }
        for (index, f) in SIGNED_BATCH.fields.iter().enumerate() {
            assert_eq!(SIGNED_BATCH.field(f.number).map(|(i, _)| i), Some(index));
        }
    }

    #[test]
    fn a_field_beyond_those_counted_is_refused_not_let_through_uncounted() {
        static WIDE: Schema = Schema {
            name: "wide",
            fields: &[
                varint(1, "a"),
                varint(2, "b"),
                varint(3, "c"),
                varint(4, "d"),
                varint(5, "e"),
                varint(6, "f"),
                varint(7, "g"),
                varint(8, "h"),
                varint(9, "i"),
                varint(10, "j"),
                varint(11, "k"),
                varint(12, "l"),
                varint(13, "m"),
                varint(14, "n"),
                varint(15, "o"),
                varint(16, "p"),
                varint(17, "q"),
                varint(18, "r"),
                varint(19, "s"),
                varint(20, "t"),
                varint(21, "u"),
            ],
            oneof: false,
        };
        assert_eq!(MAX_FIELDS, 20);
        let scan = |bytes: &[u8]| scan(bytes, &WIDE, &Limits::default(), 0, &mut 0);
        // Field 20, the last counted, once; twice is a duplicate.
        assert_eq!(scan(&[0xa0, 0x01, 1]), Ok(()));
        assert!(scan(&[0xa0, 0x01, 1, 0xa0, 0x01, 1]).is_err());
        // Field 21 can't be counted, and is refused even once.
        let err = scan(&[0xa8, 0x01, 1]);
        assert!(
            err.as_ref()
                .is_err_and(|e| e.to_string().contains("beyond")),
            "{err:?}"
        );
    }

    #[test]
    fn varints_of_one_byte_and_more_are_read() {
        for value in [0, 1, 0x7f, 0x80, 300, u64::MAX] {
            let mut bytes = Vec::new();
            prost::encoding::encode_varint(value, &mut bytes);
            bytes.push(0xaa);
            let mut rest = bytes.as_slice();
            assert_eq!(read_varint(&mut rest).ok(), Some(value));
            assert_eq!(rest, [0xaa]);
        }
        assert!(read_varint(&mut [0x80].as_slice()).is_err());
        assert!(read_varint(&mut [].as_slice()).is_err());
    }
}
