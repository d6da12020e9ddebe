//! Audit records and their canonical encoding (docs/AUDIT.md §2).
//!
//! One [`Record`] type for everything the hub must account for: a kind (the [`Event`]
//! variant), the time, the hub, the actor, the fields of the kind, and an [`Outcome`]. The
//! encoding is deterministic and canonical — every record has exactly one encoding, and
//! [`Record::from_bytes`] accepts only encodings [`Record::to_bytes`] can produce — and its
//! decoder is bounded: sizes and counts are checked before anything is read.

use std::fmt;

use crate::{
    Hash, InclusionProof, MerkleTree, ProofError,
    codec::{Reader, Writer},
    merkle::{leaf_hash, root_of},
};

/// The record format version, the first byte of every encoded record.
pub const RECORD_VERSION: u8 = 1;

/// The longest encoded record, in bytes.
pub const MAX_RECORD_LEN: usize = 64 * 1024;

/// The longest string field, in bytes.
pub const MAX_FIELD_LEN: usize = 4096;

/// The most policy IDs one decision may list.
pub const MAX_POLICIES: usize = 64;

/// Why a record could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The input ends inside a field.
    #[error("{what} at byte {at} is truncated: {needed} more bytes needed")]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Its offset.
        at: usize,
        /// How many bytes are missing.
        needed: usize,
    },
    /// A string is longer than its limit.
    #[error("{what} at byte {at} is {len} bytes, more than the limit of {max}")]
    TooLong {
        /// The field.
        what: &'static str,
        /// Its offset.
        at: usize,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A list has more items than its limit.
    #[error("{what} at byte {at} has {count} items, more than the limit of {max}")]
    TooMany {
        /// The list.
        what: &'static str,
        /// Its offset.
        at: usize,
        /// Its count.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A string is not UTF-8.
    #[error("{what} at byte {at} is not UTF-8")]
    NotUtf8 {
        /// The field.
        what: &'static str,
        /// Its offset.
        at: usize,
    },
    /// A version, kind, tag or enum value is not one this version knows.
    #[error("unknown {what} {value} at byte {at}")]
    Unknown {
        /// The field.
        what: &'static str,
        /// The value found.
        value: u64,
        /// Its offset.
        at: usize,
    },
    /// Bytes follow the end of the value.
    #[error("{len} bytes of trailing data after the {what}")]
    Trailing {
        /// The value.
        what: &'static str,
        /// How many bytes follow it.
        len: usize,
    },
    /// The whole input is longer than [`MAX_RECORD_LEN`].
    #[error("record is {len} bytes, more than the limit of {max}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The fields are well-formed but break a rule of the record format.
    #[error("invalid record: {0}")]
    Invalid(&'static str),
}

/// One audit record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// When it happened, in Unix milliseconds.
    pub time_ms: u64,
    /// The hub that recorded it (non-empty).
    pub hub: String,
    /// Who acted: a principal's SPIFFE ID, or the hub itself (non-empty).
    pub actor: String,
    /// What happened: the kind and its fields.
    pub event: Event,
    /// How it ended.
    pub outcome: Outcome,
}

/// The kind of a record and its fields.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// An authorization decision.
    Decision(Decision),
    /// An agent enrolled with a join token.
    Enrollment(Enrollment),
    /// An agent renewed its certificate.
    Renewal(Renewal),
    /// A grant changed state.
    Grant(Grant),
    /// A message held on a high-stakes channel was approved, rejected or expired.
    Approval(Approval),
    /// A principal was revoked.
    Revocation(Revocation),
    /// A principal was quarantined or released.
    Quarantine(Quarantine),
    /// An administrative action.
    Admin(Admin),
    /// The hub delivered a batch of envelopes.
    DeliveredBatch(DeliveredBatch),
    /// A limit refused what a principal asked (a rate limit, a connection limit).
    Limit(LimitHit),
}

/// The record kinds, with their code in the encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Kind {
    /// [`Event::Decision`].
    Decision = 1,
    /// [`Event::Enrollment`].
    Enrollment = 2,
    /// [`Event::Renewal`].
    Renewal = 3,
    /// [`Event::Grant`].
    Grant = 4,
    /// [`Event::Approval`].
    Approval = 5,
    /// [`Event::Revocation`].
    Revocation = 6,
    /// [`Event::Quarantine`].
    Quarantine = 7,
    /// [`Event::Admin`].
    Admin = 8,
    /// [`Event::DeliveredBatch`].
    DeliveredBatch = 9,
    /// [`Event::Limit`].
    Limit = 10,
}

impl Kind {
    /// Every kind, in code order.
    pub const ALL: [Kind; 10] = [
        Kind::Decision,
        Kind::Enrollment,
        Kind::Renewal,
        Kind::Grant,
        Kind::Approval,
        Kind::Revocation,
        Kind::Quarantine,
        Kind::Admin,
        Kind::DeliveredBatch,
        Kind::Limit,
    ];

    /// The stable name, e.g. `delivered-batch`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Decision => "decision",
            Kind::Enrollment => "enrollment",
            Kind::Renewal => "renewal",
            Kind::Grant => "grant",
            Kind::Approval => "approval",
            Kind::Revocation => "revocation",
            Kind::Quarantine => "quarantine",
            Kind::Admin => "admin",
            Kind::DeliveredBatch => "delivered-batch",
            Kind::Limit => "limit",
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|k| *k as u8 == code)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the recorded operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// It was allowed and done.
    Success = 0,
    /// It was refused (by policy, by a rule, by a person).
    Denied = 1,
    /// It failed (an error; a decision that could not be made denies).
    Failed = 2,
}

/// A string field: in clear, or only its HMAC under the log's key (see
/// [`AuditKey::protect`](crate::AuditKey::protect)).
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Text {
    /// The value itself.
    Clear(String),
    /// `HMAC-SHA256` of the value under the log's key.
    Mac(FieldMac),
}

impl Text {
    /// The value, if it is in clear.
    pub fn as_clear(&self) -> Option<&str> {
        match self {
            Text::Clear(s) => Some(s),
            Text::Mac(_) => None,
        }
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Self {
        Text::Clear(s.to_owned())
    }
}

impl From<String> for Text {
    fn from(s: String) -> Self {
        Text::Clear(s)
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Text::Clear(s) => write!(f, "{s:?}"),
            Text::Mac(m) => write!(f, "{m:?}"),
        }
    }
}

/// The HMAC-SHA256 of a sensitive value under the log's key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct FieldMac(pub [u8; 32]);

impl fmt::Debug for FieldMac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "hmac-sha256:{}", Hash(self.0).to_hex())
    }
}

/// An authorization decision. `allowed` is true exactly when the outcome is
/// [`Outcome::Success`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Who asked.
    pub principal: Text,
    /// The action, e.g. `publish`.
    pub action: Text,
    /// The resource, e.g. a channel.
    pub resource: Text,
    /// The verdict.
    pub allowed: bool,
    /// The IDs of the policies that decided (at most [`MAX_POLICIES`]).
    pub policies: Vec<String>,
    /// Why, in words.
    pub reason: Text,
    /// The policy epoch the decision was made under.
    pub policy_epoch: u64,
}

/// An enrollment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Enrollment {
    /// The enrolled principal.
    pub principal: Text,
    /// Its segment.
    pub segment: Text,
    /// The join token's ID (never the token).
    pub token_id: Text,
    /// SHA-256 of the issued certificate (DER).
    pub certificate: Hash,
    /// The certificate's expiry, Unix ms.
    pub not_after_ms: u64,
}

/// A certificate renewal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Renewal {
    /// The principal.
    pub principal: Text,
    /// SHA-256 of the new certificate (DER).
    pub certificate: Hash,
    /// Its expiry, Unix ms.
    pub not_after_ms: u64,
}

/// A grant's step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GrantStage {
    /// Given directly by an administrator.
    Given = 1,
    /// Requested (just in time), awaiting approval.
    Requested = 2,
    /// Approved: active until it expires.
    Approved = 3,
    /// Rejected.
    Rejected = 4,
    /// Expired.
    Expired = 5,
    /// Withdrawn before it expired.
    Revoked = 6,
}

/// A grant changing state. Its free-text reason is always HMAC'd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The grant's ID.
    pub grant_id: Text,
    /// Which step this is.
    pub stage: GrantStage,
    /// Who receives the permission.
    pub principal: Text,
    /// The action granted.
    pub action: Text,
    /// The resource.
    pub resource: Text,
    /// When it ends, Unix ms.
    pub not_after_ms: u64,
    /// The HMAC of the reason given, if one was given.
    pub reason: Option<FieldMac>,
}

/// The verdict on a held message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Released to its recipients.
    Approved = 1,
    /// Dropped.
    Rejected = 2,
    /// Dropped unanswered.
    Expired = 3,
}

/// A held message approved, rejected or expired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Approval {
    /// The held message's ID.
    pub message_id: Text,
    /// Its sender.
    pub sender: Text,
    /// Its channel.
    pub channel: Text,
    /// The verdict.
    pub verdict: Verdict,
    /// The hash of the held envelope (as in the approval statement).
    pub envelope: Hash,
    /// SHA-256 of the signed approval statement, when a person signed one.
    pub statement: Option<Hash>,
}

/// A revocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revocation {
    /// The revoked principal.
    pub principal: Text,
    /// The version of the revocation list that carries it.
    pub list_version: u64,
    /// Why.
    pub reason: Text,
}

/// A quarantine step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuarantineAction {
    /// The principal was quarantined.
    Imposed = 1,
    /// The quarantine was lifted.
    Lifted = 2,
}

/// A quarantine imposed or lifted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quarantine {
    /// The principal.
    pub principal: Text,
    /// Imposed or lifted.
    pub action: QuarantineAction,
    /// The risk score at the time.
    pub risk: u32,
    /// The evidence, in words.
    pub evidence: Text,
}

/// Refusals by one limit of what one principal asked. Hits in quick succession share a
/// record: `count` is how many it stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitHit {
    /// Who was refused.
    pub principal: Text,
    /// The limit's name, e.g. `agent-messages` or `connections-per-agent`.
    pub limit: Text,
    /// What the limit applies to beyond the principal (a channel class), or empty.
    pub scope: Text,
    /// How many refusals the record stands for (at least one).
    pub count: u64,
    /// The wait the last refusal told the principal, in milliseconds (0: none).
    pub retry_after_ms: u64,
}

/// An administrative action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admin {
    /// The operation, e.g. `policy.reload`.
    pub operation: Text,
    /// What it acted on.
    pub target: Text,
    /// Details.
    pub detail: Text,
}

/// A batch of envelopes the hub delivered.
///
/// `envelopes_root` is the RFC 9162 root of the tree whose leaves are the batch's envelope
/// hashes (PROTOCOL.md §4.4), in batch order: with [`DeliveredBatch::envelope_proof`] one
/// envelope can later be shown to have passed through the hub without disclosing the others.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveredBatch {
    /// The sender.
    pub sender: Text,
    /// The channel.
    pub channel: Text,
    /// How many envelopes (at least one).
    pub count: u32,
    /// Their total ciphertext size.
    pub bytes: u64,
    /// The root over the envelope hashes.
    pub envelopes_root: Hash,
}

impl DeliveredBatch {
    /// The root over `envelope_hashes` (each the 32-byte envelope hash, as a tree leaf).
    pub fn envelopes_root(envelope_hashes: &[Hash]) -> Hash {
        let leaves: Vec<Hash> = envelope_hashes.iter().map(|h| leaf_hash(&h.0)).collect();
        root_of(&leaves)
    }

    /// The proof that envelope `index` is in the batch of `envelope_hashes`.
    pub fn envelope_proof(
        envelope_hashes: &[Hash],
        index: u64,
    ) -> Result<InclusionProof, ProofError> {
        let tree = MerkleTree::from_leaves(envelope_hashes.iter().map(|h| leaf_hash(&h.0)));
        tree.inclusion_proof(index, tree.size())
    }

    /// Checks that the envelope with hash `envelope` is in this batch.
    pub fn verify_envelope(
        &self,
        envelope: &Hash,
        proof: &InclusionProof,
    ) -> Result<(), ProofError> {
        if proof.size != u64::from(self.count) {
            return Err(ProofError::BadSizes {
                old: proof.size,
                new: self.count.into(),
            });
        }
        proof.verify(&leaf_hash(&envelope.0), &self.envelopes_root)
    }
}

// === impl Record ===

impl Record {
    /// This record's kind.
    pub fn kind(&self) -> Kind {
        self.event.kind()
    }

    /// The canonical encoding, or the rule the record breaks.
    pub fn to_bytes(&self) -> Result<Vec<u8>, RecordError> {
        self.check()?;
        let mut w = Writer::with_capacity(256);
        w.u8(RECORD_VERSION)
            .u8(self.kind() as u8)
            .u64(self.time_ms)
            .str(&self.hub)
            .str(&self.actor)
            .u8(self.outcome as u8);
        match &self.event {
            Event::Decision(d) => {
                text(&mut w, &d.principal);
                text(&mut w, &d.action);
                text(&mut w, &d.resource);
                w.u8(d.allowed.into())
                    .u32(u32::try_from(d.policies.len()).unwrap_or(u32::MAX));
                for p in &d.policies {
                    w.str(p);
                }
                text(&mut w, &d.reason);
                w.u64(d.policy_epoch);
            }
            Event::Enrollment(e) => {
                text(&mut w, &e.principal);
                text(&mut w, &e.segment);
                text(&mut w, &e.token_id);
                w.raw(&e.certificate.0).u64(e.not_after_ms);
            }
            Event::Renewal(r) => {
                text(&mut w, &r.principal);
                w.raw(&r.certificate.0).u64(r.not_after_ms);
            }
            Event::Grant(g) => {
                text(&mut w, &g.grant_id);
                w.u8(g.stage as u8);
                text(&mut w, &g.principal);
                text(&mut w, &g.action);
                text(&mut w, &g.resource);
                w.u64(g.not_after_ms);
                optional(&mut w, g.reason.map(|m| m.0));
            }
            Event::Approval(a) => {
                text(&mut w, &a.message_id);
                text(&mut w, &a.sender);
                text(&mut w, &a.channel);
                w.u8(a.verdict as u8).raw(&a.envelope.0);
                optional(&mut w, a.statement.map(|h| h.0));
            }
            Event::Revocation(r) => {
                text(&mut w, &r.principal);
                w.u64(r.list_version);
                text(&mut w, &r.reason);
            }
            Event::Quarantine(q) => {
                text(&mut w, &q.principal);
                w.u8(q.action as u8).u32(q.risk);
                text(&mut w, &q.evidence);
            }
            Event::Admin(a) => {
                text(&mut w, &a.operation);
                text(&mut w, &a.target);
                text(&mut w, &a.detail);
            }
            Event::DeliveredBatch(b) => {
                text(&mut w, &b.sender);
                text(&mut w, &b.channel);
                w.u32(b.count).u64(b.bytes).raw(&b.envelopes_root.0);
            }
            Event::Limit(l) => {
                text(&mut w, &l.principal);
                text(&mut w, &l.limit);
                text(&mut w, &l.scope);
                w.u64(l.count).u64(l.retry_after_ms);
            }
        }
        let bytes = w.into_bytes();
        if bytes.len() > MAX_RECORD_LEN {
            return Err(RecordError::TooLarge {
                len: bytes.len(),
                max: MAX_RECORD_LEN,
            });
        }
        Ok(bytes)
    }

    /// Decodes a canonical encoding, checking every bound before reading.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, RecordError> {
        if bytes.len() > MAX_RECORD_LEN {
            return Err(RecordError::TooLarge {
                len: bytes.len(),
                max: MAX_RECORD_LEN,
            });
        }
        let mut r = Reader::new(bytes);
        let version = r.u8("version")?;
        if version != RECORD_VERSION {
            return Err(RecordError::Unknown {
                what: "record version",
                value: version.into(),
                at: 0,
            });
        }
        let at = r.pos();
        let code = r.u8("kind")?;
        let kind = Kind::from_code(code).ok_or(RecordError::Unknown {
            what: "record kind",
            value: code.into(),
            at,
        })?;
        let time_ms = r.u64("time")?;
        let hub = r.str("hub", MAX_FIELD_LEN)?.to_owned();
        let actor = r.str("actor", MAX_FIELD_LEN)?.to_owned();
        let outcome = enum_value(
            &mut r,
            "outcome",
            &[Outcome::Success, Outcome::Denied, Outcome::Failed],
            |o| *o as u8,
        )?;
        let event = match kind {
            Kind::Decision => Event::Decision(Decision {
                principal: read_text(&mut r, "principal")?,
                action: read_text(&mut r, "action")?,
                resource: read_text(&mut r, "resource")?,
                allowed: r.bool("allowed")?,
                policies: {
                    let at = r.pos();
                    let count = usize::try_from(r.u32("policy count")?).unwrap_or(usize::MAX);
                    if count > MAX_POLICIES {
                        return Err(RecordError::TooMany {
                            what: "policies",
                            at,
                            count,
                            max: MAX_POLICIES,
                        });
                    }
                    let mut policies = Vec::with_capacity(count);
                    for _ in 0..count {
                        policies.push(r.str("policy", MAX_FIELD_LEN)?.to_owned());
                    }
                    policies
                },
                reason: read_text(&mut r, "reason")?,
                policy_epoch: r.u64("policy epoch")?,
            }),
            Kind::Enrollment => Event::Enrollment(Enrollment {
                principal: read_text(&mut r, "principal")?,
                segment: read_text(&mut r, "segment")?,
                token_id: read_text(&mut r, "token ID")?,
                certificate: Hash(r.array("certificate")?),
                not_after_ms: r.u64("not after")?,
            }),
            Kind::Renewal => Event::Renewal(Renewal {
                principal: read_text(&mut r, "principal")?,
                certificate: Hash(r.array("certificate")?),
                not_after_ms: r.u64("not after")?,
            }),
            Kind::Grant => Event::Grant(Grant {
                grant_id: read_text(&mut r, "grant ID")?,
                stage: enum_value(
                    &mut r,
                    "grant stage",
                    &[
                        GrantStage::Given,
                        GrantStage::Requested,
                        GrantStage::Approved,
                        GrantStage::Rejected,
                        GrantStage::Expired,
                        GrantStage::Revoked,
                    ],
                    |s| *s as u8,
                )?,
                principal: read_text(&mut r, "principal")?,
                action: read_text(&mut r, "action")?,
                resource: read_text(&mut r, "resource")?,
                not_after_ms: r.u64("not after")?,
                reason: read_optional(&mut r, "reason")?.map(FieldMac),
            }),
            Kind::Approval => Event::Approval(Approval {
                message_id: read_text(&mut r, "message ID")?,
                sender: read_text(&mut r, "sender")?,
                channel: read_text(&mut r, "channel")?,
                verdict: enum_value(
                    &mut r,
                    "verdict",
                    &[Verdict::Approved, Verdict::Rejected, Verdict::Expired],
                    |v| *v as u8,
                )?,
                envelope: Hash(r.array("envelope")?),
                statement: read_optional(&mut r, "statement")?.map(Hash),
            }),
            Kind::Revocation => Event::Revocation(Revocation {
                principal: read_text(&mut r, "principal")?,
                list_version: r.u64("list version")?,
                reason: read_text(&mut r, "reason")?,
            }),
            Kind::Quarantine => Event::Quarantine(Quarantine {
                principal: read_text(&mut r, "principal")?,
                action: enum_value(
                    &mut r,
                    "quarantine action",
                    &[QuarantineAction::Imposed, QuarantineAction::Lifted],
                    |a| *a as u8,
                )?,
                risk: r.u32("risk")?,
                evidence: read_text(&mut r, "evidence")?,
            }),
            Kind::Admin => Event::Admin(Admin {
                operation: read_text(&mut r, "operation")?,
                target: read_text(&mut r, "target")?,
                detail: read_text(&mut r, "detail")?,
            }),
            Kind::DeliveredBatch => Event::DeliveredBatch(DeliveredBatch {
                sender: read_text(&mut r, "sender")?,
                channel: read_text(&mut r, "channel")?,
                count: r.u32("count")?,
                bytes: r.u64("bytes")?,
                envelopes_root: Hash(r.array("envelopes root")?),
            }),
            Kind::Limit => Event::Limit(LimitHit {
                principal: read_text(&mut r, "principal")?,
                limit: read_text(&mut r, "limit")?,
                scope: read_text(&mut r, "scope")?,
                count: r.u64("count")?,
                retry_after_ms: r.u64("retry after")?,
            }),
        };
        r.finish("record")?;
        let record = Self {
            time_ms,
            hub,
            actor,
            event,
            outcome,
        };
        record.check()?;
        Ok(record)
    }

    /// The record's hash: the RFC 6962 leaf hash of its encoding, `SHA-256(0x00 ‖ bytes)`.
    /// It identifies the record and is its leaf in the tree of its batch.
    pub fn hash(&self) -> Result<Hash, RecordError> {
        Ok(leaf_hash(&self.to_bytes()?))
    }

    /// The rules beyond the byte layout.
    fn check(&self) -> Result<(), RecordError> {
        if self.hub.is_empty() {
            return Err(RecordError::Invalid("hub is empty"));
        }
        if self.actor.is_empty() {
            return Err(RecordError::Invalid("actor is empty"));
        }
        let mut strings: Vec<(&'static str, &str)> =
            vec![("hub", &self.hub), ("actor", &self.actor)];
        let mut texts: Vec<(&'static str, &Text)> = Vec::new();
        match &self.event {
            Event::Decision(d) => {
                if d.allowed != (self.outcome == Outcome::Success) {
                    return Err(RecordError::Invalid(
                        "a decision is allowed exactly when its outcome is success",
                    ));
                }
                if d.policies.len() > MAX_POLICIES {
                    return Err(RecordError::TooMany {
                        what: "policies",
                        at: 0,
                        count: d.policies.len(),
                        max: MAX_POLICIES,
                    });
                }
                strings.extend(d.policies.iter().map(|p| ("policy", p.as_str())));
                texts.extend([
                    ("principal", &d.principal),
                    ("action", &d.action),
                    ("resource", &d.resource),
                    ("reason", &d.reason),
                ]);
            }
            Event::Enrollment(e) => texts.extend([
                ("principal", &e.principal),
                ("segment", &e.segment),
                ("token ID", &e.token_id),
            ]),
            Event::Renewal(r) => texts.push(("principal", &r.principal)),
            Event::Grant(g) => texts.extend([
                ("grant ID", &g.grant_id),
                ("principal", &g.principal),
                ("action", &g.action),
                ("resource", &g.resource),
            ]),
            Event::Approval(a) => texts.extend([
                ("message ID", &a.message_id),
                ("sender", &a.sender),
                ("channel", &a.channel),
            ]),
            Event::Revocation(r) => {
                texts.extend([("principal", &r.principal), ("reason", &r.reason)]);
            }
            Event::Quarantine(q) => {
                texts.extend([("principal", &q.principal), ("evidence", &q.evidence)]);
            }
            Event::Admin(a) => texts.extend([
                ("operation", &a.operation),
                ("target", &a.target),
                ("detail", &a.detail),
            ]),
            Event::DeliveredBatch(b) => {
                if b.count == 0 {
                    return Err(RecordError::Invalid("a delivered batch has no envelopes"));
                }
                texts.extend([("sender", &b.sender), ("channel", &b.channel)]);
            }
            Event::Limit(l) => {
                if l.count == 0 {
                    return Err(RecordError::Invalid("a limit record stands for no refusal"));
                }
                texts.extend([
                    ("principal", &l.principal),
                    ("limit", &l.limit),
                    ("scope", &l.scope),
                ]);
            }
        }
        strings.extend(
            texts
                .iter()
                .filter_map(|(w, t)| t.as_clear().map(|s| (*w, s))),
        );
        for (what, s) in strings {
            if s.len() > MAX_FIELD_LEN {
                return Err(RecordError::TooLong {
                    what,
                    at: 0,
                    len: s.len(),
                    max: MAX_FIELD_LEN,
                });
            }
        }
        Ok(())
    }
}

impl Event {
    /// The kind of this event.
    pub fn kind(&self) -> Kind {
        match self {
            Event::Decision(_) => Kind::Decision,
            Event::Enrollment(_) => Kind::Enrollment,
            Event::Renewal(_) => Kind::Renewal,
            Event::Grant(_) => Kind::Grant,
            Event::Approval(_) => Kind::Approval,
            Event::Revocation(_) => Kind::Revocation,
            Event::Quarantine(_) => Kind::Quarantine,
            Event::Admin(_) => Kind::Admin,
            Event::DeliveredBatch(_) => Kind::DeliveredBatch,
            Event::Limit(_) => Kind::Limit,
        }
    }
}

fn text(w: &mut Writer, t: &Text) {
    match t {
        Text::Clear(s) => {
            w.u8(0).str(s);
        }
        Text::Mac(m) => {
            w.u8(1).raw(&m.0);
        }
    }
}

fn optional(w: &mut Writer, v: Option<[u8; 32]>) {
    match v {
        None => {
            w.u8(0);
        }
        Some(v) => {
            w.u8(1).raw(&v);
        }
    }
}

fn read_text(r: &mut Reader<'_>, what: &'static str) -> Result<Text, RecordError> {
    let at = r.pos();
    match r.u8(what)? {
        0 => Ok(Text::Clear(r.str(what, MAX_FIELD_LEN)?.to_owned())),
        1 => Ok(Text::Mac(FieldMac(r.array(what)?))),
        tag => Err(RecordError::Unknown {
            what: "text tag",
            value: tag.into(),
            at,
        }),
    }
}

fn read_optional(r: &mut Reader<'_>, what: &'static str) -> Result<Option<[u8; 32]>, RecordError> {
    if r.bool(what)? {
        Ok(Some(r.array(what)?))
    } else {
        Ok(None)
    }
}

fn enum_value<T: Copy>(
    r: &mut Reader<'_>,
    what: &'static str,
    values: &[T],
    code: impl Fn(&T) -> u8,
) -> Result<T, RecordError> {
    let at = r.pos();
    let byte = r.u8(what)?;
    values
        .iter()
        .find(|v| code(v) == byte)
        .copied()
        .ok_or(RecordError::Unknown {
            what,
            value: byte.into(),
            at,
        })
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )]

    use proptest::prelude::*;

    use super::*;

    pub(crate) fn decision(i: u64) -> Record {
        Record {
            time_ms: 1_760_000_000_000 + i,
            hub: "hub-1".into(),
            actor: "spiffe://acme.internal/agent/ops/alice".into(),
            event: Event::Decision(Decision {
                principal: "spiffe://acme.internal/agent/ops/alice".into(),
                action: "publish".into(),
                resource: format!("orders.eu.{i}").into(),
                allowed: !i.is_multiple_of(3),
                policies: vec!["ops-namespace".into()],
                reason: "permitted by ops-namespace".into(),
                policy_epoch: 7,
            }),
            outcome: if !i.is_multiple_of(3) {
                Outcome::Success
            } else {
                Outcome::Denied
            },
        }
    }

    fn arb_text() -> impl Strategy<Value = Text> {
        prop_oneof![
            ".{0,40}".prop_map(Text::Clear),
            any::<[u8; 32]>().prop_map(|m| Text::Mac(FieldMac(m))),
        ]
    }

    fn arb_hash() -> impl Strategy<Value = Hash> {
        any::<[u8; 32]>().prop_map(Hash)
    }

    fn arb_event() -> impl Strategy<Value = (Event, Outcome)> {
        let outcome = prop_oneof![
            Just(Outcome::Success),
            Just(Outcome::Denied),
            Just(Outcome::Failed)
        ];
        prop_oneof![
            (
                arb_text(),
                arb_text(),
                arb_text(),
                prop::collection::vec(".{0,20}", 0..5),
                arb_text(),
                any::<u64>(),
                outcome.clone()
            )
                .prop_map(|(p, a, r, policies, reason, epoch, outcome)| (
                    Event::Decision(Decision {
                        principal: p,
                        action: a,
                        resource: r,
                        allowed: outcome == Outcome::Success,
                        policies,
                        reason,
                        policy_epoch: epoch
                    }),
                    outcome
                )),
            (
                arb_text(),
                arb_text(),
                arb_text(),
                arb_hash(),
                any::<u64>(),
                outcome.clone()
            )
                .prop_map(
                    |(principal, segment, token_id, certificate, not_after_ms, o)| (
                        Event::Enrollment(Enrollment {
                            principal,
                            segment,
                            token_id,
                            certificate,
                            not_after_ms
                        }),
                        o
                    )
                ),
            (arb_text(), arb_hash(), any::<u64>(), outcome.clone()).prop_map(
                |(principal, certificate, not_after_ms, o)| (
                    Event::Renewal(Renewal {
                        principal,
                        certificate,
                        not_after_ms
                    }),
                    o
                )
            ),
            (
                arb_text(),
                0usize..6,
                arb_text(),
                arb_text(),
                arb_text(),
                any::<u64>(),
                prop::option::of(any::<[u8; 32]>()),
                outcome.clone()
            )
                .prop_map(
                    |(grant_id, s, principal, action, resource, t, reason, o)| (
                        Event::Grant(Grant {
                            grant_id,
                            stage: [
                                GrantStage::Given,
                                GrantStage::Requested,
                                GrantStage::Approved,
                                GrantStage::Rejected,
                                GrantStage::Expired,
                                GrantStage::Revoked
                            ][s],
                            principal,
                            action,
                            resource,
                            not_after_ms: t,
                            reason: reason.map(FieldMac)
                        }),
                        o
                    )
                ),
            (
                arb_text(),
                arb_text(),
                arb_text(),
                0usize..3,
                arb_hash(),
                prop::option::of(arb_hash()),
                outcome.clone()
            )
                .prop_map(
                    |(message_id, sender, channel, v, envelope, statement, o)| (
                        Event::Approval(Approval {
                            message_id,
                            sender,
                            channel,
                            verdict: [Verdict::Approved, Verdict::Rejected, Verdict::Expired][v],
                            envelope,
                            statement
                        }),
                        o
                    )
                ),
            (arb_text(), any::<u64>(), arb_text(), outcome.clone()).prop_map(
                |(principal, list_version, reason, o)| (
                    Event::Revocation(Revocation {
                        principal,
                        list_version,
                        reason
                    }),
                    o
                )
            ),
            (
                arb_text(),
                any::<bool>(),
                any::<u32>(),
                arb_text(),
                outcome.clone()
            )
                .prop_map(|(principal, lifted, risk, evidence, o)| (
                    Event::Quarantine(Quarantine {
                        principal,
                        action: if lifted {
                            QuarantineAction::Lifted
                        } else {
                            QuarantineAction::Imposed
                        },
                        risk,
                        evidence
                    }),
                    o
                )),
            (arb_text(), arb_text(), arb_text(), outcome.clone()).prop_map(
                |(operation, target, detail, o)| (
                    Event::Admin(Admin {
                        operation,
                        target,
                        detail
                    }),
                    o
                )
            ),
            (
                arb_text(),
                arb_text(),
                1u32..,
                any::<u64>(),
                arb_hash(),
                outcome.clone()
            )
                .prop_map(|(sender, channel, count, bytes, envelopes_root, o)| (
                    Event::DeliveredBatch(DeliveredBatch {
                        sender,
                        channel,
                        count,
                        bytes,
                        envelopes_root
                    }),
                    o
                )),
            (
                arb_text(),
                arb_text(),
                arb_text(),
                1u64..,
                any::<u64>(),
                outcome
            )
                .prop_map(|(principal, limit, scope, count, retry_after_ms, o)| (
                    Event::Limit(LimitHit {
                        principal,
                        limit,
                        scope,
                        count,
                        retry_after_ms
                    }),
                    o
                )),
        ]
    }

    pub(crate) fn arb_record() -> impl Strategy<Value = Record> {
        (any::<u64>(), ".{1,20}", ".{1,60}", arb_event()).prop_map(
            |(time_ms, hub, actor, (event, outcome))| Record {
                time_ms,
                hub,
                actor,
                event,
                outcome,
            },
        )
    }

    proptest! {
        #[test]
        fn records_round_trip(record in arb_record()) {
            let bytes = record.to_bytes().unwrap();
            let back = Record::from_bytes(&bytes).unwrap();
            prop_assert_eq!(&back, &record);
            prop_assert_eq!(back.to_bytes().unwrap(), bytes);
        }

        /// Whatever the decoder accepts re-encodes to the same bytes (the encoding is
        /// canonical), and it never panics on garbage.
        #[test]
        fn garbage_never_panics_and_accepted_input_is_canonical(
            bytes in prop::collection::vec(any::<u8>(), 0..400),
        ) {
            if let Ok(record) = Record::from_bytes(&bytes) {
                prop_assert_eq!(record.to_bytes().unwrap(), bytes);
            }
        }

        /// A valid encoding with one byte changed either fails or decodes to a record that
        /// re-encodes to exactly the changed bytes.
        #[test]
        fn mutations_are_refused_or_canonical(
            record in arb_record(),
            at in any::<usize>(),
            xor in 1u8..,
        ) {
            let mut bytes = record.to_bytes().unwrap();
            let i = at % bytes.len();
            bytes[i] ^= xor;
            if let Ok(other) = Record::from_bytes(&bytes) {
                prop_assert_eq!(other.to_bytes().unwrap(), bytes);
            }
        }
    }

    #[test]
    fn every_truncation_is_refused() {
        let bytes = decision(1).to_bytes().unwrap();
        for n in 0..bytes.len() {
            let err = Record::from_bytes(&bytes[..n]).unwrap_err();
            assert!(matches!(err, RecordError::Truncated { .. }), "{n}: {err:?}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(
            Record::from_bytes(&long).unwrap_err(),
            RecordError::Trailing {
                what: "record",
                len: 1
            }
        );
    }

    #[test]
    fn oversized_input_and_fields_are_refused() {
        assert!(matches!(
            Record::from_bytes(&vec![1; MAX_RECORD_LEN + 1]),
            Err(RecordError::TooLarge { .. })
        ));
        let mut r = decision(1);
        r.hub = "h".repeat(MAX_FIELD_LEN + 1);
        assert!(matches!(
            r.to_bytes(),
            Err(RecordError::TooLong { what: "hub", .. })
        ));
        let mut r = decision(1);
        if let Event::Decision(d) = &mut r.event {
            d.policies = vec!["p".into(); MAX_POLICIES + 1];
        }
        assert!(matches!(r.to_bytes(), Err(RecordError::TooMany { .. })));

        // A length prefix claiming 4 GiB is refused before anything is allocated.
        let mut bytes = vec![RECORD_VERSION, Kind::Admin as u8];
        bytes.extend_from_slice(&0u64.to_be_bytes());
        bytes.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            Record::from_bytes(&bytes),
            Err(RecordError::TooLong {
                what: "hub",
                at: 10,
                ..
            })
        ));
        // So is a policy count beyond the limit.
        let good = decision(1).to_bytes().unwrap();
        let at = good.windows(4).position(|w| w == [0, 0, 0, 1]).unwrap();
        let mut bad = good.clone();
        bad[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(Record::from_bytes(&bad).is_err());
    }

    #[test]
    fn unknown_codes_and_broken_rules_are_refused() {
        let good = decision(1).to_bytes().unwrap();
        let mut bad = good.clone();
        bad[0] = 2;
        assert!(matches!(
            Record::from_bytes(&bad),
            Err(RecordError::Unknown {
                what: "record version",
                ..
            })
        ));
        let mut bad = good.clone();
        bad[1] = 0;
        assert!(matches!(
            Record::from_bytes(&bad),
            Err(RecordError::Unknown {
                what: "record kind",
                ..
            })
        ));
        let mut r = decision(1);
        r.outcome = Outcome::Denied;
        assert_eq!(
            r.to_bytes().unwrap_err(),
            RecordError::Invalid("a decision is allowed exactly when its outcome is success")
        );
        let mut r = decision(1);
        r.actor.clear();
        assert!(r.to_bytes().is_err());
    }

    #[test]
    fn envelopes_can_be_proven_in_a_delivered_batch() {
        let hashes: Vec<Hash> = (0u8..5).map(|i| Hash::of(&[i])).collect();
        let batch = DeliveredBatch {
            sender: "s".into(),
            channel: "c".into(),
            count: 5,
            bytes: 1280,
            envelopes_root: DeliveredBatch::envelopes_root(&hashes),
        };
        for (i, h) in hashes.iter().enumerate() {
            let proof = DeliveredBatch::envelope_proof(&hashes, i as u64).unwrap();
            batch.verify_envelope(h, &proof).unwrap();
            assert!(batch.verify_envelope(&Hash::of(b"other"), &proof).is_err());
        }
    }
}
