//! Protobuf messages of `proto/entente/v1/entente.proto`, written out with `prost` derives
//! (but for [`Envelope`]'s and [`SignedBatch`]'s `prost::Message`, written out by hand).
//!
//! The `.proto` file is the reference for field numbers; `tests::field_numbers_match_proto`
//! checks that every field declared there is declared here with the same number.

use std::sync::Arc;

use crate::MAX_KEY_BYTES;
use crate::scan::read_varint;

/// A CA-signed binding of a principal to its message keys.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct KeyBundle {
    /// Format version, 1.
    #[prost(uint32, tag = "1")]
    pub version: u32,
    /// SPIFFE ID of the agent or human.
    #[prost(string, tag = "2")]
    pub principal: String,
    /// Ed25519 public key, 32 bytes.
    #[prost(bytes = "vec", tag = "3")]
    pub ed25519_public: Vec<u8>,
    /// X25519 public key, 32 bytes.
    #[prost(bytes = "vec", tag = "4")]
    pub x25519_public: Vec<u8>,
    /// Message-key generation of this principal.
    #[prost(uint64, tag = "5")]
    pub epoch: u64,
    /// Start of validity, Unix milliseconds.
    #[prost(uint64, tag = "6")]
    pub not_before_ms: u64,
    /// End of validity, Unix milliseconds.
    #[prost(uint64, tag = "7")]
    pub not_after_ms: u64,
    /// SHA-256 of the signing CA certificate's SubjectPublicKeyInfo DER.
    #[prost(bytes = "vec", tag = "8")]
    pub signer: Vec<u8>,
    /// ECDSA P-256 SHA-256 signature, ASN.1 DER.
    #[prost(bytes = "vec", tag = "9")]
    pub signature: Vec<u8>,
}

/// One sealed message; sender and channel are carried by its batch (the channel by the
/// envelope itself in a batch of replies, PROTOCOL.md §5.5).
///
/// Its `prost::Message` is written out rather than derived: the derive decodes a `bytes`
/// field into a `Vec<u8>` through a `Bytes` of its own (every ciphertext allocated and copied
/// twice on its way in), `merge_vec` here once; the message ID into room of its own
/// ([`IdBytes`]), no allocation; and the names straight into shared strings. The encoding is
/// the derive's (fields in number order, defaults left out).
#[derive(Clone, PartialEq, Eq, Default, Debug)]
pub struct Envelope {
    /// Sender-key epoch.
    pub epoch: u64,
    /// Sequence number, strictly increasing per (sender, channel, epoch).
    pub seq: u64,
    /// UUIDv7, 16 bytes.
    pub message_id: IdBytes,
    /// Unix milliseconds.
    pub issued_at_ms: u64,
    /// Unix milliseconds.
    pub expires_at_ms: u64,
    /// Channel for replies; empty if none. Shared: the name decoded is the channel made of it,
    /// and the channel a sender names is sent as is.
    pub reply_to: Name,
    /// AES-256-GCM ciphertext followed by the 16-byte tag.
    pub ciphertext: Vec<u8>,
    /// Empty, except in a batch on a reply namespace root (`_reply.S.N`), where it names this
    /// envelope's reply channel under the root (PROTOCOL.md §5.5). Shared, as `reply_to`.
    pub channel: Name,
}

impl prost::Message for Envelope {
    fn encode_raw(&self, buf: &mut impl prost::bytes::BufMut) {
        use prost::encoding::{bytes, uint64};
        if self.epoch != 0 {
            uint64::encode(1, &self.epoch, buf);
        }
        if self.seq != 0 {
            uint64::encode(2, &self.seq, buf);
        }
        if !self.message_id.is_empty() {
            encode_bytes(3, self.message_id.as_slice(), buf);
        }
        if self.issued_at_ms != 0 {
            uint64::encode(4, &self.issued_at_ms, buf);
        }
        if self.expires_at_ms != 0 {
            uint64::encode(5, &self.expires_at_ms, buf);
        }
        if !self.reply_to.is_empty() {
            encode_bytes(6, self.reply_to.as_bytes(), buf);
        }
        if !self.ciphertext.is_empty() {
            bytes::encode(7, &self.ciphertext, buf);
        }
        if !self.channel.is_empty() {
            encode_bytes(8, self.channel.as_bytes(), buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl prost::bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        use prost::encoding::{skip_field, uint64};
        let (result, field) = match tag {
            1 => (uint64::merge(wire_type, &mut self.epoch, buf, ctx), "epoch"),
            2 => (uint64::merge(wire_type, &mut self.seq, buf, ctx), "seq"),
            3 => (
                merge_id(wire_type, &mut self.message_id, buf, ctx),
                "message_id",
            ),
            4 => (
                uint64::merge(wire_type, &mut self.issued_at_ms, buf, ctx),
                "issued_at_ms",
            ),
            5 => (
                uint64::merge(wire_type, &mut self.expires_at_ms, buf, ctx),
                "expires_at_ms",
            ),
            6 => (
                merge_shared_str(wire_type, &mut self.reply_to, buf, ctx),
                "reply_to",
            ),
            7 => (
                merge_vec(wire_type, &mut self.ciphertext, buf, ctx),
                "ciphertext",
            ),
            8 => (
                merge_shared_str(wire_type, &mut self.channel, buf, ctx),
                "channel",
            ),
            _ => return skip_field(wire_type, tag, buf, ctx),
        };
        in_field(result, "Envelope", field)
    }

    fn encoded_len(&self) -> usize {
        use prost::encoding::{bytes, uint64};
        let scalar = |tag, value: &u64| {
            if *value == 0 {
                0
            } else {
                uint64::encoded_len(tag, value)
            }
        };
        let vec = |tag, value: &Vec<u8>| {
            if value.is_empty() {
                0
            } else {
                bytes::encoded_len(tag, value)
            }
        };
        let text = |tag, value: &Name| {
            if value.is_empty() {
                0
            } else {
                encoded_bytes_len(tag, value.as_bytes())
            }
        };
        let id = if self.message_id.is_empty() {
            0
        } else {
            encoded_bytes_len(3, self.message_id.as_slice())
        };
        scalar(1, &self.epoch)
            + scalar(2, &self.seq)
            + id
            + scalar(4, &self.issued_at_ms)
            + scalar(5, &self.expires_at_ms)
            + text(6, &self.reply_to)
            + vec(7, &self.ciphertext)
            + text(8, &self.channel)
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

impl Envelope {
    /// Reads an envelope's bytes in one pass, if they are as Entente encodes them: only known
    /// fields, each with its one-byte key. `None` for anything else (unknown fields, a
    /// malformed varint, a name that is not UTF-8, truncation), which prost's own decoding
    /// then reads or refuses. A field given twice takes its last value, as in prost's.
    pub(crate) fn read_plain(mut bytes: &[u8]) -> Option<Self> {
        let mut envelope = Self::default();
        while let Some((&key, rest)) = bytes.split_first() {
            bytes = rest;
            match key {
                0x08 => envelope.epoch = read_varint(&mut bytes).ok()?,
                0x10 => envelope.seq = read_varint(&mut bytes).ok()?,
                0x1a => envelope.message_id = IdBytes::new(read_delimited(&mut bytes)?),
                0x20 => envelope.issued_at_ms = read_varint(&mut bytes).ok()?,
                0x28 => envelope.expires_at_ms = read_varint(&mut bytes).ok()?,
                0x32 => envelope.reply_to = Name::from(read_text(&mut bytes)?),
                0x3a => envelope.ciphertext = read_delimited(&mut bytes)?.to_vec(),
                0x42 => envelope.channel = Name::from(read_text(&mut bytes)?),
                _ => return None,
            }
        }
        Some(envelope)
    }
}

/// A length-delimited value at the start of `bytes`; `None` if malformed or truncated.
#[inline]
fn read_delimited<'a>(bytes: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = usize::try_from(read_varint(bytes).ok()?).ok()?;
    let (value, rest) = bytes.split_at_checked(len)?;
    *bytes = rest;
    Some(value)
}

/// A length-delimited UTF-8 string at the start of `bytes`; `None` if malformed.
#[inline]
fn read_text<'a>(bytes: &mut &'a [u8]) -> Option<&'a str> {
    std::str::from_utf8(read_delimited(bytes)?).ok()
}

/// A name an envelope carries (its reply channel, its own channel): shared, and empty without
/// an allocation. Every envelope has two, most of them empty; `Arc::<str>::default` would
/// allocate for each.
#[derive(Clone, Default)]
pub struct Name(Option<Arc<str>>);

impl Name {
    /// The name as a shared string (a new empty one if it is empty).
    pub fn into_shared(self) -> Arc<str> {
        self.0.unwrap_or_else(|| Arc::from(""))
    }
}

impl std::ops::Deref for Name {
    type Target = str;

    fn deref(&self) -> &str {
        self.0.as_deref().unwrap_or_default()
    }
}

impl From<Arc<str>> for Name {
    fn from(name: Arc<str>) -> Self {
        Self((!name.is_empty()).then_some(name))
    }
}

impl From<&str> for Name {
    fn from(name: &str) -> Self {
        Self((!name.is_empty()).then(|| Arc::from(name)))
    }
}

impl From<String> for Name {
    fn from(name: String) -> Self {
        Self((!name.is_empty()).then(|| Arc::from(name)))
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for Name {}

impl std::fmt::Debug for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self)
    }
}

/// A field's decoding error, with the field's place in the message (as prost's derives say it).
fn in_field(
    result: Result<(), prost::DecodeError>,
    message: &'static str,
    field: &'static str,
) -> Result<(), prost::DecodeError> {
    result.map_err(|mut error| {
        error.push(message, field);
        error
    })
}

/// A message ID's bytes as they arrived, kept inline rather than in an allocation of their
/// own: the 16 of a UUIDv7 when well formed. Anything else is kept as it came, for the
/// receiver to refuse (inline up to [`MAX_KEY_BYTES`], the decoding bound of IDs, PROTOCOL.md
/// §8; beyond, only where a message is decoded without that bound).
#[derive(Clone, PartialEq, Eq)]
pub struct IdBytes(IdRepr);

#[derive(Clone, PartialEq, Eq)]
enum IdRepr {
    Inline { len: u8, bytes: [u8; MAX_KEY_BYTES] },
    Long(Vec<u8>),
}

impl IdBytes {
    /// These bytes.
    pub fn new(bytes: &[u8]) -> Self {
        let mut room = [0; MAX_KEY_BYTES];
        match (room.get_mut(..bytes.len()), u8::try_from(bytes.len())) {
            (Some(start), Ok(len)) => {
                start.copy_from_slice(bytes);
                Self(IdRepr::Inline { len, bytes: room })
            }
            _ => Self(IdRepr::Long(bytes.to_vec())),
        }
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        match &self.0 {
            IdRepr::Inline { len, bytes } => bytes.get(..usize::from(*len)).unwrap_or_default(),
            IdRepr::Long(bytes) => bytes,
        }
    }

    /// Whether there are none (the field is absent).
    pub fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }
}

impl Default for IdBytes {
    fn default() -> Self {
        Self::new(&[])
    }
}

impl From<[u8; 16]> for IdBytes {
    fn from(id: [u8; 16]) -> Self {
        Self::new(&id)
    }
}

impl std::fmt::Debug for IdBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

/// Decodes a `bytes` field into `value`, inline when it fits; what does not (or is malformed)
/// goes through prost's own decoding, which says what is wrong.
fn merge_id(
    wire_type: prost::encoding::WireType,
    value: &mut IdBytes,
    buf: &mut impl prost::bytes::Buf,
    ctx: prost::encoding::DecodeContext,
) -> Result<(), prost::DecodeError> {
    if let Some((prefix, len)) = length_delimited(wire_type, buf)
        && len <= MAX_KEY_BYTES
        && let Some(bytes) = buf.chunk().get(prefix..prefix + len)
    {
        *value = IdBytes::new(bytes);
        buf.advance(prefix + len);
        return Ok(());
    }
    let mut bytes = Vec::new();
    merge_vec(wire_type, &mut bytes, buf, ctx)?;
    *value = IdBytes::new(&bytes);
    Ok(())
}

/// Decodes a `string` field into a shared name of its own, with one allocation (prost's
/// decodes into a `String`, which a shared name would then copy); what is malformed goes
/// through prost's own decoding, which says what is wrong.
fn merge_shared_str(
    wire_type: prost::encoding::WireType,
    value: &mut Name,
    buf: &mut impl prost::bytes::Buf,
    ctx: prost::encoding::DecodeContext,
) -> Result<(), prost::DecodeError> {
    if let Some((prefix, len)) = length_delimited(wire_type, buf)
        && let Some(Ok(text)) = buf
            .chunk()
            .get(prefix..prefix + len)
            .map(std::str::from_utf8)
    {
        *value = Name::from(text);
        buf.advance(prefix + len);
        return Ok(());
    }
    let mut text = String::new();
    prost::encoding::string::merge(wire_type, &mut text, buf, ctx)?;
    *value = Name::from(text);
    Ok(())
}

/// A length-delimited field's prefix and length, read from the buffer's first chunk, if it is
/// one, well formed, and its length is what is left at most. `None` leaves the field (and the
/// error) to prost's own decoding.
fn length_delimited(
    wire_type: prost::encoding::WireType,
    buf: &impl prost::bytes::Buf,
) -> Option<(usize, usize)> {
    if wire_type != prost::encoding::WireType::LengthDelimited {
        return None;
    }
    let mut chunk = buf.chunk();
    let whole = chunk.len();
    let len = usize::try_from(prost::encoding::decode_varint(&mut chunk).ok()?).ok()?;
    let prefix = whole - chunk.len();
    (len <= buf.remaining() - prefix).then_some((prefix, len))
}

/// The encoding of a `bytes` field (as prost's, which takes a `Vec` or `Bytes`).
fn encode_bytes(tag: u32, value: &[u8], buf: &mut impl prost::bytes::BufMut) {
    use prost::encoding::{WireType, encode_key, encode_varint};
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(value.len() as u64, buf);
    buf.put_slice(value);
}

/// The encoded length of [`encode_bytes`]'s field.
fn encoded_bytes_len(tag: u32, value: &[u8]) -> usize {
    use prost::encoding::{encoded_len_varint, key_len};
    key_len(tag) + encoded_len_varint(value.len() as u64) + value.len()
}

/// Decodes a `bytes` field into `value` with one allocation and one copy (the derive's
/// decoding copies it into a `Bytes` first, then into the `Vec`). A length prefix that is
/// malformed, longer than what is left, or not whole in the buffer's first chunk goes to
/// prost's own decoding, which says what is wrong.
fn merge_vec(
    wire_type: prost::encoding::WireType,
    value: &mut Vec<u8>,
    buf: &mut impl prost::bytes::Buf,
    ctx: prost::encoding::DecodeContext,
) -> Result<(), prost::DecodeError> {
    use prost::bytes::BufMut as _;
    if let Some((prefix, len)) = length_delimited(wire_type, buf) {
        buf.advance(prefix);
        value.clear();
        value.reserve_exact(len);
        value.put(prost::bytes::Buf::take(&mut *buf, len));
        return Ok(());
    }
    let mut bytes = prost::bytes::Bytes::new();
    prost::encoding::bytes::merge(wire_type, &mut bytes, buf, ctx)?;
    *value = Vec::from(bytes);
    Ok(())
}

/// Envelopes of one sender on one channel under one Ed25519 signature.
///
/// Its `prost::Message` is written out rather than derived, for its envelopes: each one
/// encoded as Entente encodes them (one-byte keys of known fields only) is read in one pass
/// over its bytes, when the buffer holds it whole; any other goes through prost's own
/// decoding, field by field, which gives the same value or says what is wrong. The encoding is
/// the derive's.
#[derive(Clone, PartialEq, Eq, Default, Debug)]
pub struct SignedBatch {
    /// SPIFFE ID of the sender.
    pub sender: String,
    /// Channel of every envelope in the batch.
    pub channel: String,
    /// Epoch of the sender's key bundle whose key signed.
    pub key_epoch: u64,
    /// The envelopes.
    pub envelopes: Vec<Envelope>,
    /// Ed25519 signature, 64 bytes.
    pub signature: Vec<u8>,
}

impl prost::Message for SignedBatch {
    fn encode_raw(&self, buf: &mut impl prost::bytes::BufMut) {
        use prost::encoding::{bytes, message, string, uint64};
        if !self.sender.is_empty() {
            string::encode(1, &self.sender, buf);
        }
        if !self.channel.is_empty() {
            string::encode(2, &self.channel, buf);
        }
        if self.key_epoch != 0 {
            uint64::encode(3, &self.key_epoch, buf);
        }
        for envelope in &self.envelopes {
            message::encode(4, envelope, buf);
        }
        if !self.signature.is_empty() {
            bytes::encode(5, &self.signature, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl prost::bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        use prost::encoding::{message, skip_field, string, uint64};
        let (result, field) = match tag {
            1 => (
                string::merge(wire_type, &mut self.sender, buf, ctx),
                "sender",
            ),
            2 => (
                string::merge(wire_type, &mut self.channel, buf, ctx),
                "channel",
            ),
            3 => (
                uint64::merge(wire_type, &mut self.key_epoch, buf, ctx),
                "key_epoch",
            ),
            4 => {
                if let Some((prefix, len)) = length_delimited(wire_type, buf)
                    && let Some(envelope) = buf
                        .chunk()
                        .get(prefix..prefix + len)
                        .and_then(Envelope::read_plain)
                {
                    self.envelopes.push(envelope);
                    buf.advance(prefix + len);
                    return Ok(());
                }
                (
                    message::merge_repeated(wire_type, &mut self.envelopes, buf, ctx),
                    "envelopes",
                )
            }
            5 => (
                merge_vec(wire_type, &mut self.signature, buf, ctx),
                "signature",
            ),
            _ => return skip_field(wire_type, tag, buf, ctx),
        };
        in_field(result, "SignedBatch", field)
    }

    fn encoded_len(&self) -> usize {
        use prost::encoding::{bytes, message, string, uint64};
        (if self.sender.is_empty() {
            0
        } else {
            string::encoded_len(1, &self.sender)
        }) + (if self.channel.is_empty() {
            0
        } else {
            string::encoded_len(2, &self.channel)
        }) + (if self.key_epoch == 0 {
            0
        } else {
            uint64::encoded_len(3, &self.key_epoch)
        }) + message::encoded_len_repeated(4, &self.envelopes)
            + (if self.signature.is_empty() {
                0
            } else {
                bytes::encoded_len(5, &self.signature)
            })
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

/// An epoch secret wrapped with HPKE to one recipient.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct WrappedKey {
    /// SPIFFE ID of the recipient.
    #[prost(string, tag = "1")]
    pub recipient: String,
    /// Epoch of the recipient's key bundle whose X25519 key was used.
    #[prost(uint64, tag = "2")]
    pub recipient_key_epoch: u64,
    /// HPKE encapsulated key, 32 bytes.
    #[prost(bytes = "vec", tag = "3")]
    pub enc: Vec<u8>,
    /// Sealed epoch secret, 48 bytes.
    #[prost(bytes = "vec", tag = "4")]
    pub ciphertext: Vec<u8>,
}

/// A sender's epoch secret for one channel, wrapped to each recipient.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct SenderKey {
    /// Format version, 1.
    #[prost(uint32, tag = "1")]
    pub version: u32,
    /// SPIFFE ID of the sender.
    #[prost(string, tag = "2")]
    pub sender: String,
    /// The channel this epoch is for.
    #[prost(string, tag = "3")]
    pub channel: String,
    /// Sender-key epoch.
    #[prost(uint64, tag = "4")]
    pub epoch: u64,
    /// Unix milliseconds.
    #[prost(uint64, tag = "5")]
    pub issued_at_ms: u64,
    /// Unix milliseconds; no envelope of this epoch is accepted after it.
    #[prost(uint64, tag = "6")]
    pub expires_at_ms: u64,
    /// Epoch of the sender's key bundle whose key signed.
    #[prost(uint64, tag = "7")]
    pub key_epoch: u64,
    /// One wrapped secret per recipient.
    #[prost(message, repeated, tag = "8")]
    pub recipients: Vec<WrappedKey>,
    /// Ed25519 signature, 64 bytes.
    #[prost(bytes = "vec", tag = "9")]
    pub signature: Vec<u8>,
}

/// A signed, versioned list of revoked certificates and principals.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RevocationList {
    /// Strictly increasing version.
    #[prost(uint64, tag = "1")]
    pub version: u64,
    /// Unix milliseconds.
    #[prost(uint64, tag = "2")]
    pub issued_at_ms: u64,
    /// Revoked certificate serial numbers, big-endian.
    #[prost(bytes = "vec", repeated, tag = "3")]
    pub serials: Vec<Vec<u8>>,
    /// Revoked SPIFFE IDs.
    #[prost(string, repeated, tag = "4")]
    pub principals: Vec<String>,
    /// SHA-256 of the signing CA certificate's SubjectPublicKeyInfo DER.
    #[prost(bytes = "vec", tag = "5")]
    pub signer: Vec<u8>,
    /// ECDSA P-256 SHA-256 signature, ASN.1 DER.
    #[prost(bytes = "vec", tag = "6")]
    pub signature: Vec<u8>,
}

/// A frame from an agent to the hub.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ClientFrame {
    /// What the frame carries.
    #[prost(oneof = "client_frame::Kind", tags = "1, 2, 3, 4, 5")]
    pub kind: Option<client_frame::Kind>,
}

/// The variants of [`ClientFrame`].
pub mod client_frame {
    /// What a client frame carries.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        /// Sender keys and signed batches to route.
        #[prost(message, tag = "1")]
        Publish(super::Publish),
        /// Start a subscription.
        #[prost(message, tag = "2")]
        Subscribe(super::Subscribe),
        /// End a subscription.
        #[prost(message, tag = "3")]
        Unsubscribe(super::Unsubscribe),
        /// Flow-control credit.
        #[prost(message, tag = "4")]
        Credit(super::Credit),
        /// Entries of a durable subscription the client is done with.
        #[prost(message, tag = "5")]
        DurableAck(super::DurableAck),
    }
}

/// A frame from the hub to an agent.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ServerFrame {
    /// What the frame carries.
    #[prost(oneof = "server_frame::Kind", tags = "1, 2, 3, 4, 5, 6")]
    pub kind: Option<server_frame::Kind>,
}

/// The variants of [`ServerFrame`].
pub mod server_frame {
    /// What a server frame carries.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        /// Batches for a subscription.
        #[prost(message, tag = "1")]
        Deliver(super::Deliver),
        /// A publish was accepted.
        #[prost(message, tag = "2")]
        Ack(super::Ack),
        /// A publish or subscription was refused.
        #[prost(message, tag = "3")]
        Refusal(super::Refusal),
        /// Flow-control credit.
        #[prost(message, tag = "4")]
        Credit(super::Credit),
        /// The hub ended a subscription it had accepted.
        #[prost(message, tag = "5")]
        SubscriptionEnded(super::SubscriptionEnded),
        /// Why the hub ended a framed session: its last frame (never sent on HTTP/2).
        #[prost(message, tag = "6")]
        SessionEnd(super::SessionEnd),
    }
}

/// Sender keys and batches to route.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Publish {
    /// Echoed in the `Ack` or `Refusal`.
    #[prost(uint64, tag = "1")]
    pub request_id: u64,
    /// Sender keys, routed before the batches.
    #[prost(message, repeated, tag = "2")]
    pub sender_keys: Vec<SenderKey>,
    /// Signed batches.
    #[prost(message, repeated, tag = "3")]
    pub batches: Vec<SignedBatch>,
    /// Why, for the approvers of a channel that holds messages; at most
    /// [`MAX_REASON_BYTES`](crate::MAX_REASON_BYTES) bytes.
    #[prost(string, tag = "4")]
    pub purpose: String,
}

/// Start a subscription.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Subscribe {
    /// Chosen by the client, unique on its connection.
    #[prost(uint64, tag = "1")]
    pub subscription_id: u64,
    /// Channel pattern with `*` and `>` wildcards.
    #[prost(string, tag = "2")]
    pub pattern: String,
    /// A durable consumer's name (docs/DURABLE.md); empty for a live subscription.
    #[prost(string, tag = "3")]
    pub durable: String,
}

/// Entries of a durable subscription the client is done with.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct DurableAck {
    /// The durable subscription.
    #[prost(uint64, tag = "1")]
    pub subscription_id: u64,
    /// The entries' sequences (not packed: each is bounded as it is read).
    #[prost(uint64, repeated, packed = "false", tag = "2")]
    pub sequences: Vec<u64>,
}

/// End a subscription.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Unsubscribe {
    /// The subscription to end.
    #[prost(uint64, tag = "1")]
    pub subscription_id: u64,
}

/// Flow-control credit.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Credit {
    /// How many more messages the peer may send.
    #[prost(uint32, tag = "1")]
    pub messages: u32,
}

/// Batches for one subscription.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Deliver {
    /// The subscription they match.
    #[prost(uint64, tag = "1")]
    pub subscription_id: u64,
    /// Sender keys addressed to this subscriber.
    #[prost(message, repeated, tag = "2")]
    pub sender_keys: Vec<SenderKey>,
    /// Signed batches.
    #[prost(message, repeated, tag = "3")]
    pub batches: Vec<SignedBatch>,
    /// Durable subscriptions: the entry's sequence in its stream; 0 otherwise.
    #[prost(uint64, tag = "4")]
    pub sequence: u64,
    /// Durable subscriptions: which delivery of the entry this is, from 1; 0 otherwise.
    #[prost(uint32, tag = "5")]
    pub attempt: u32,
}

/// A publish was accepted.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Ack {
    /// The publish's request ID.
    #[prost(uint64, tag = "1")]
    pub request_id: u64,
    /// The messages of the publish the hub holds for approval.
    #[prost(message, repeated, tag = "2")]
    pub held: Vec<Held>,
}

/// A message the hub holds for approval instead of routing it.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Held {
    /// The envelope's message ID as UUID text: the hold's ID.
    #[prost(string, tag = "1")]
    pub message_id: String,
    /// Its channel.
    #[prost(string, tag = "2")]
    pub channel: String,
    /// When the hold lapses undecided, Unix milliseconds.
    #[prost(uint64, tag = "3")]
    pub expires_at_ms: u64,
}

/// A publish or subscription was refused.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Refusal {
    /// The request (or subscription) ID refused.
    #[prost(uint64, tag = "1")]
    pub request_id: u64,
    /// A stable numeric code.
    #[prost(uint32, tag = "2")]
    pub code: u32,
    /// For humans; never payload or secrets.
    #[prost(string, tag = "3")]
    pub reason: String,
    /// `RATE_LIMITED`: milliseconds after which the same request would pass; zero when it
    /// never would, and for every other code.
    #[prost(uint64, tag = "4")]
    pub retry_after_ms: u64,
}

/// The hub ended a subscription it had accepted, because authorization changed.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct SubscriptionEnded {
    /// The subscription ended.
    #[prost(uint64, tag = "1")]
    pub subscription_id: u64,
    /// A refusal code: `DENIED` when the subscription is no longer allowed.
    #[prost(uint32, tag = "2")]
    pub code: u32,
    /// For humans: what decided it.
    #[prost(string, tag = "3")]
    pub reason: String,
}

/// Why the hub ended a framed session: the status an HTTP/2 session would end with.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct SessionEnd {
    /// A gRPC status code (`PERMISSION_DENIED` is 7).
    #[prost(uint32, tag = "1")]
    pub code: u32,
    /// For humans: why.
    #[prost(string, tag = "2")]
    pub message: String,
}

/// A join token, a CSR and message keys, exchanged for a certificate and a key bundle. Its
/// `Debug` leaves the token out.
#[derive(Clone, PartialEq, Eq, prost::Message)]
#[prost(skip_debug)]
pub struct EnrollRequest {
    /// The one-time join token.
    #[prost(string, tag = "1")]
    pub token: String,
    /// PKCS#10 DER, ECDSA P-256; the names it requests are ignored.
    #[prost(bytes = "vec", tag = "2")]
    pub csr: Vec<u8>,
    /// Ed25519 public key, 32 bytes.
    #[prost(bytes = "vec", tag = "3")]
    pub ed25519_public: Vec<u8>,
    /// X25519 public key, 32 bytes.
    #[prost(bytes = "vec", tag = "4")]
    pub x25519_public: Vec<u8>,
}

impl std::fmt::Debug for EnrollRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollRequest")
            .field("token", &Redacted(&self.token))
            .field("csr", &self.csr)
            .field("ed25519_public", &self.ed25519_public)
            .field("x25519_public", &self.x25519_public)
            .finish()
    }
}

/// A secret in a `Debug` output: whether it is set, not what it is.
struct Redacted<'a>(&'a str);

impl std::fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "<redacted>"
        })
    }
}

/// The credentials an enrolled agent receives.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct EnrollResponse {
    /// DER certificates: the SVID, then the intermediate.
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub certificate_chain: Vec<Vec<u8>>,
    /// The CA-signed key bundle.
    #[prost(message, optional, tag = "2")]
    pub key_bundle: Option<KeyBundle>,
    /// The CA certificates agents verify against, PEM.
    #[prost(string, tag = "3")]
    pub trust_bundle_pem: String,
    /// The current revocation list, if any.
    #[prost(message, optional, tag = "4")]
    pub revocations: Option<RevocationList>,
}

/// A CSR for a new certificate of the connection's principal.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RenewRequest {
    /// PKCS#10 DER, ECDSA P-256.
    #[prost(bytes = "vec", tag = "1")]
    pub csr: Vec<u8>,
}

/// A renewed certificate.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RenewResponse {
    /// DER certificates: the SVID, then the intermediate.
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub certificate_chain: Vec<Vec<u8>>,
    /// The CA certificates agents verify against, PEM: during an intermediate rollover, the
    /// new intermediate reaches connected agents here before it signs anything.
    #[prost(string, tag = "2")]
    pub trust_bundle_pem: String,
    /// The principal's key bundle as the hub now serves it (re-signed after a rollover).
    #[prost(message, optional, tag = "3")]
    pub key_bundle: Option<KeyBundle>,
}

/// Key bundles wanted: named principals, or the members of a channel.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct DirectoryRequest {
    /// Principals whose bundles are wanted.
    #[prost(string, repeated, tag = "1")]
    pub principals: Vec<String>,
    /// A channel whose addressable members are wanted; empty if none.
    #[prost(string, tag = "2")]
    pub channel: String,
}

/// Key bundles, each to be verified against the trust bundle by the receiver.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct DirectoryResponse {
    /// The bundles.
    #[prost(message, repeated, tag = "1")]
    pub bundles: Vec<KeyBundle>,
}

/// Asks the hub for a one-time join token for an agent.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct CreateTokenRequest {
    /// The SPIFFE ID to enroll: an agent's (`spiffe://TD/agent/SEGMENT/NAME`) or a human's
    /// (`spiffe://TD/human/NAME`).
    #[prost(string, tag = "1")]
    pub agent: String,
    /// Lifetime in seconds; 0 for the hub's default.
    #[prost(uint64, tag = "2")]
    pub ttl_seconds: u64,
}

/// A join token, shown once. Its `Debug` leaves the token out.
#[derive(Clone, PartialEq, Eq, prost::Message)]
#[prost(skip_debug)]
pub struct CreateTokenResponse {
    /// The token; the hub keeps only its hash.
    #[prost(string, tag = "1")]
    pub token: String,
    /// When it expires, Unix milliseconds.
    #[prost(uint64, tag = "2")]
    pub expires_at_ms: u64,
}

impl std::fmt::Debug for CreateTokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateTokenResponse")
            .field("token", &Redacted(&self.token))
            .field("expires_at_ms", &self.expires_at_ms)
            .finish()
    }
}

/// Revokes principals and certificates.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RevokeRequest {
    /// SPIFFE IDs to revoke.
    #[prost(string, repeated, tag = "1")]
    pub principals: Vec<String>,
    /// Certificate serial numbers to revoke, big-endian.
    #[prost(bytes = "vec", repeated, tag = "2")]
    pub serials: Vec<Vec<u8>>,
}

/// The revocation list now in force.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RevokeResponse {
    /// The signed list.
    #[prost(message, optional, tag = "1")]
    pub revocations: Option<RevocationList>,
    /// Live connections closed by it.
    #[prost(uint32, tag = "2")]
    pub closed_connections: u32,
}

/// One source of Cedar policies: a file's name and its text.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct PolicySource {
    /// The source's name, e.g. `orders.cedar`.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Cedar policies.
    #[prost(string, tag = "2")]
    pub text: String,
}

/// Replaces the hub's running policy set.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct LoadPoliciesRequest {
    /// The whole new set; the hub adds its base policies.
    #[prost(message, repeated, tag = "1")]
    pub sources: Vec<PolicySource>,
}

/// The policy set now running.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct LoadPoliciesResponse {
    /// The policy epoch the new set runs at.
    #[prost(uint64, tag = "1")]
    pub epoch: u64,
    /// How many policies run, the base policies included.
    #[prost(uint32, tag = "2")]
    pub policies: u32,
}

/// Asks for the running policy set.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ShowPoliciesRequest {}

/// One running policy.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct PolicySummary {
    /// Its ID: `@id`, or `<source>#<n>`.
    #[prost(string, tag = "1")]
    pub id: String,
    /// The source it came from.
    #[prost(string, tag = "2")]
    pub source: String,
    /// Where it starts in its source, 1-based.
    #[prost(uint32, tag = "3")]
    pub line: u32,
    /// The column it starts at, 1-based.
    #[prost(uint32, tag = "4")]
    pub column: u32,
    /// Whether it is a forbid (else a permit).
    #[prost(bool, tag = "5")]
    pub forbid: bool,
    /// Whether it is marked `@cross_segment`.
    #[prost(bool, tag = "6")]
    pub cross_segment: bool,
}

/// The running policy set.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ShowPoliciesResponse {
    /// The policy epoch.
    #[prost(uint64, tag = "1")]
    pub epoch: u64,
    /// The sources: `base` first, then the loaded ones in load order.
    #[prost(message, repeated, tag = "2")]
    pub sources: Vec<PolicySource>,
    /// The policies, in the same order.
    #[prost(message, repeated, tag = "3")]
    pub policies: Vec<PolicySummary>,
}

/// Asks how the running policies decide one request.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct CheckPolicyRequest {
    /// The principal's SPIFFE ID.
    #[prost(string, tag = "1")]
    pub principal: String,
    /// The action's name, e.g. `publish`.
    #[prost(string, tag = "2")]
    pub action: String,
    /// `channel`, `agent`, `human` or `segment`.
    #[prost(string, tag = "3")]
    pub resource_type: String,
    /// The channel (a pattern for `subscribe`), the agent's or human's SPIFFE ID, or the
    /// segment name.
    #[prost(string, tag = "4")]
    pub resource: String,
}

/// How the running policies decide a request.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct CheckPolicyResponse {
    /// Whether it is allowed.
    #[prost(bool, tag = "1")]
    pub allowed: bool,
    /// The deciding policies (empty for the default deny).
    #[prost(string, repeated, tag = "2")]
    pub policies: Vec<String>,
    /// Why, in words.
    #[prost(string, tag = "3")]
    pub reason: String,
    /// Whether the principal is an agent and the resource belongs to another segment.
    #[prost(bool, tag = "4")]
    pub cross_segment: bool,
    /// The policy epoch decided at.
    #[prost(uint64, tag = "5")]
    pub epoch: u64,
    /// The decision explained, with the text of each deciding policy.
    #[prost(string, tag = "6")]
    pub explanation: String,
}

/// A grant a principal holds: a named entitlement its policies test with
/// `context.grants.contains("<name>")`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct GrantInfo {
    /// `g-<n>`.
    #[prost(string, tag = "1")]
    pub id: String,
    /// The grant's name, defined by a policy's `@grant("<name>")`.
    #[prost(string, tag = "2")]
    pub name: String,
    /// Who holds it.
    #[prost(string, tag = "3")]
    pub principal: String,
    /// Start, Unix milliseconds (inclusive).
    #[prost(uint64, tag = "4")]
    pub not_before_ms: u64,
    /// End, Unix milliseconds (exclusive).
    #[prost(uint64, tag = "5")]
    pub not_after_ms: u64,
    /// Why it was given.
    #[prost(string, tag = "6")]
    pub reason: String,
    /// Who gave it directly; empty when a request's approvals made it.
    #[prost(string, tag = "7")]
    pub granter: String,
    /// The just-in-time request it came from (`r-<n>`), or empty.
    #[prost(string, tag = "8")]
    pub request: String,
    /// That request's approvers.
    #[prost(string, repeated, tag = "9")]
    pub approvers: Vec<String>,
}

/// One signed approval or rejection of a just-in-time request, as the hub keeps it.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ApprovalInfo {
    /// The approver's SPIFFE ID.
    #[prost(string, tag = "1")]
    pub approver: String,
    /// `approve` or `reject`.
    #[prost(string, tag = "2")]
    pub verdict: String,
    /// When the approver signed, Unix milliseconds.
    #[prost(uint64, tag = "3")]
    pub signed_at_ms: u64,
}

/// A just-in-time grant request. Fields 1 to 7 are what an approver hashes (PROTOCOL.md
/// §11.2).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct GrantRequestInfo {
    /// `r-<n>`.
    #[prost(string, tag = "1")]
    pub id: String,
    /// Who asks, and will hold the grant.
    #[prost(string, tag = "2")]
    pub requester: String,
    /// The grant asked for.
    #[prost(string, tag = "3")]
    pub name: String,
    /// How long the grant lasts once approved, milliseconds.
    #[prost(uint64, tag = "4")]
    pub duration_ms: u64,
    /// The requester's words.
    #[prost(string, tag = "5")]
    pub reason: String,
    /// When it was made, Unix milliseconds.
    #[prost(uint64, tag = "6")]
    pub created_at_ms: u64,
    /// When it lapses undecided, Unix milliseconds (exclusive).
    #[prost(uint64, tag = "7")]
    pub expires_at_ms: u64,
    /// Approvals it needs.
    #[prost(uint32, tag = "8")]
    pub required: u32,
    /// Approvals and rejection received so far, in order.
    #[prost(message, repeated, tag = "9")]
    pub approvals: Vec<ApprovalInfo>,
    /// `pending`, `granted`, `rejected` or `expired`.
    #[prost(string, tag = "10")]
    pub state: String,
    /// The grant it became (`g-<n>`), once granted.
    #[prost(string, tag = "11")]
    pub grant: String,
}

/// Gives a principal a grant directly, from now until `duration_ms` from now or until
/// `not_after_ms` (exactly one of the two).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct GrantRequest {
    /// The agent or human receiving it.
    #[prost(string, tag = "1")]
    pub principal: String,
    /// The grant's name.
    #[prost(string, tag = "2")]
    pub name: String,
    /// How long, milliseconds.
    #[prost(uint64, tag = "3")]
    pub duration_ms: u64,
    /// Or until when, Unix milliseconds.
    #[prost(uint64, tag = "4")]
    pub not_after_ms: u64,
    /// Why.
    #[prost(string, tag = "5")]
    pub reason: String,
}

/// The grant given.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct GrantResponse {
    /// The grant.
    #[prost(message, optional, tag = "1")]
    pub grant: Option<GrantInfo>,
}

/// Asks for the grants and requests the caller may see.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ListGrantsRequest {
    /// Only this principal's (holder or requester); empty for all.
    #[prost(string, tag = "1")]
    pub principal: String,
}

/// The grants and requests the caller may see.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ListGrantsResponse {
    /// Active grants.
    #[prost(message, repeated, tag = "1")]
    pub grants: Vec<GrantInfo>,
    /// Pending, decided and lapsed requests still kept.
    #[prost(message, repeated, tag = "2")]
    pub requests: Vec<GrantRequestInfo>,
    /// The hub's clock when it answered, Unix milliseconds.
    #[prost(uint64, tag = "3")]
    pub now_ms: u64,
}

/// Asks, for the caller, a grant that approvers must approve.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RequestGrantRequest {
    /// The grant's name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// How long it should last once approved, milliseconds.
    #[prost(uint64, tag = "2")]
    pub duration_ms: u64,
    /// Why.
    #[prost(string, tag = "3")]
    pub reason: String,
}

/// The request made.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RequestGrantResponse {
    /// The pending request.
    #[prost(message, optional, tag = "1")]
    pub request: Option<GrantRequestInfo>,
}

/// A signed approval statement (PROTOCOL.md §11.1), field for field.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ApprovalStatement {
    /// `approve` or `reject`.
    #[prost(string, tag = "1")]
    pub verdict: String,
    /// `grant-request`.
    #[prost(string, tag = "2")]
    pub kind: String,
    /// The request's ID, `r-<n>`.
    #[prost(string, tag = "3")]
    pub object_id: String,
    /// SHA-256 of the request's canonical bytes, 32 bytes.
    #[prost(bytes = "vec", tag = "4")]
    pub object_hash: Vec<u8>,
    /// The approver's SPIFFE ID.
    #[prost(string, tag = "5")]
    pub approver: String,
    /// The epoch of the approver's key bundle whose key signed.
    #[prost(uint64, tag = "6")]
    pub key_epoch: u64,
    /// When the approver signed, Unix milliseconds.
    #[prost(uint64, tag = "7")]
    pub signed_at_ms: u64,
}

/// Approves or rejects a just-in-time request with a signed statement.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ApproveRequest {
    /// The statement.
    #[prost(message, optional, tag = "1")]
    pub statement: Option<ApprovalStatement>,
    /// Ed25519 over the statement's signing input, 64 bytes.
    #[prost(bytes = "vec", tag = "2")]
    pub signature: Vec<u8>,
    /// The approver's own CA-signed key bundle, used only if the hub's registry holds none.
    #[prost(message, optional, tag = "3")]
    pub key_bundle: Option<KeyBundle>,
}

/// What an approval or rejection did.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ApproveResponse {
    /// `pending`, `granted` or `rejected`.
    #[prost(string, tag = "1")]
    pub outcome: String,
    /// Distinct approvals so far.
    #[prost(uint32, tag = "2")]
    pub approvals: u32,
    /// Approvals needed.
    #[prost(uint32, tag = "3")]
    pub required: u32,
    /// The grant, when granted.
    #[prost(message, optional, tag = "4")]
    pub grant: Option<GrantInfo>,
}

/// The policy sources a hub runs, as it keeps them in its store. Not sent on the wire.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct StoredPolicies {
    /// Format version, 1.
    #[prost(uint32, tag = "1")]
    pub version: u32,
    /// The loaded sources, without the base policies.
    #[prost(message, repeated, tag = "2")]
    pub sources: Vec<PolicySource>,
}

/// A held message as approvers see it: everything but the payload, which stays sealed.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct HeldMessage {
    /// UUID text: the hold's ID, and an approval statement's `object_id`.
    #[prost(string, tag = "1")]
    pub message_id: String,
    /// The sender's SPIFFE ID.
    #[prost(string, tag = "2")]
    pub sender: String,
    /// The channel.
    #[prost(string, tag = "3")]
    pub channel: String,
    /// Ciphertext bytes.
    #[prost(uint32, tag = "4")]
    pub size: u32,
    /// When the hub received it, Unix milliseconds.
    #[prost(uint64, tag = "5")]
    pub published_at_ms: u64,
    /// When the hold lapses undecided, Unix milliseconds.
    #[prost(uint64, tag = "6")]
    pub expires_at_ms: u64,
    /// The sender's stated purpose.
    #[prost(string, tag = "7")]
    pub purpose: String,
    /// The sender's signed batch of one envelope: approvers hash it themselves.
    #[prost(message, optional, tag = "8")]
    pub batch: Option<SignedBatch>,
    /// `pending`, `released`, `rejected` or `expired`.
    #[prost(string, tag = "9")]
    pub state: String,
    /// Approvals and rejections received so far, in order.
    #[prost(message, repeated, tag = "10")]
    pub approvals: Vec<ApprovalInfo>,
    /// Why it was rejected or expired, for humans.
    #[prost(string, tag = "11")]
    pub reason: String,
}

/// Asks for the held messages the caller may see.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ListHeldRequest {
    /// Only this one (UUID text), with its signed batch; empty for every one, without batches.
    #[prost(string, tag = "1")]
    pub message_id: String,
}

/// The held messages the caller may see: its own, and those it may approve.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ListHeldResponse {
    /// Newest last.
    #[prost(message, repeated, tag = "1")]
    pub held: Vec<HeldMessage>,
}

/// Ends a grant now, before its time.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RevokeGrantRequest {
    /// The grant's ID, `g-<n>`.
    #[prost(string, tag = "1")]
    pub id: String,
    /// Why; required.
    #[prost(string, tag = "2")]
    pub reason: String,
}

/// The grant a `RevokeGrant` ended, as it was.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RevokeGrantResponse {
    /// The grant.
    #[prost(message, optional, tag = "1")]
    pub grant: Option<GrantInfo>,
}

/// Asks for records of the hub's audit log.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct AuditRecordsRequest {
    /// The index of the first record.
    #[prost(uint64, tag = "1")]
    pub from: u64,
    /// At most this many, 1 to [`MAX_AUDIT_RECORDS`](crate::MAX_AUDIT_RECORDS).
    #[prost(uint32, tag = "2")]
    pub max: u32,
}

/// Records of the hub's audit log.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct AuditRecordsResponse {
    /// Each record in its canonical encoding (docs/AUDIT.md §2).
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub records: Vec<Vec<u8>>,
    /// The index of the first one.
    #[prost(uint64, tag = "2")]
    pub from: u64,
    /// How many records the log holds.
    #[prost(uint64, tag = "3")]
    pub total: u64,
    /// The latest signed checkpoint.
    #[prost(string, tag = "4")]
    pub checkpoint: String,
    /// The checkpoint key, `<origin>+<key id>+<base64>`.
    #[prost(string, tag = "5")]
    pub verifier_key: String,
}

/// Asks for a chunk of an export of the audit log.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct AuditExportRequest {
    /// The export's number; 0 for a new one.
    #[prost(uint64, tag = "1")]
    pub snapshot: u64,
    /// The offset of the chunk.
    #[prost(uint64, tag = "2")]
    pub offset: u64,
}

/// A chunk of an export of the audit log.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct AuditExportResponse {
    /// The export's number.
    #[prost(uint64, tag = "1")]
    pub snapshot: u64,
    /// The export's size in bytes.
    #[prost(uint64, tag = "2")]
    pub total: u64,
    /// Its bytes from the offset asked for; empty at the end.
    #[prost(bytes = "vec", tag = "3")]
    pub chunk: Vec<u8>,
    /// The checkpoint the export ends with.
    #[prost(string, tag = "4")]
    pub checkpoint: String,
}

/// Asks for the proof that a record is in the audit log.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct AuditProofRequest {
    /// The record's index.
    #[prost(uint64, tag = "1")]
    pub index: u64,
    /// The tree size of an earlier checkpoint to prove consistency with; 0 for none.
    #[prost(uint64, tag = "2")]
    pub old_size: u64,
}

/// The proof that a record is in the audit log, and that the log is consistent with an
/// earlier checkpoint.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct AuditProofResponse {
    /// The checkpoint the proofs lead to.
    #[prost(string, tag = "1")]
    pub checkpoint: String,
    /// The record.
    #[prost(bytes = "vec", tag = "2")]
    pub record: Vec<u8>,
    /// The index of the leaf that seals it.
    #[prost(uint64, tag = "3")]
    pub leaf_index: u64,
    /// That leaf.
    #[prost(bytes = "vec", tag = "4")]
    pub leaf: Vec<u8>,
    /// The record's path in the leaf's tree of records: 32-byte hashes.
    #[prost(bytes = "vec", repeated, tag = "5")]
    pub record_path: Vec<Vec<u8>>,
    /// The leaf's path in the log's tree.
    #[prost(bytes = "vec", repeated, tag = "6")]
    pub log_path: Vec<Vec<u8>>,
    /// The consistency proof from the earlier checkpoint's size.
    #[prost(bytes = "vec", repeated, tag = "7")]
    pub consistency: Vec<Vec<u8>>,
}

/// Lists the quarantined agents, after lifting or imposing one quarantine (at most one of
/// the two, with a reason).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct QuarantineRequest {
    /// The SPIFFE ID of an agent whose quarantine to lift.
    #[prost(string, tag = "1")]
    pub release: String,
    /// The SPIFFE ID of an agent to quarantine.
    #[prost(string, tag = "2")]
    pub impose: String,
    /// Why; required with `release` or `impose`.
    #[prost(string, tag = "3")]
    pub reason: String,
}

/// A quarantined agent.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct QuarantinedAgent {
    /// Its SPIFFE ID.
    #[prost(string, tag = "1")]
    pub principal: String,
    /// Since when, Unix milliseconds.
    #[prost(uint64, tag = "2")]
    pub since_ms: u64,
    /// Its risk score then, 0 to 100.
    #[prost(uint32, tag = "3")]
    pub risk: u32,
    /// What the detector saw, or the administrator's reason.
    #[prost(string, tag = "4")]
    pub evidence: String,
    /// `hub` (the detector) or the administrator's SPIFFE ID.
    #[prost(string, tag = "5")]
    pub by: String,
}

/// The quarantined agents, after the change asked for.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct QuarantineResponse {
    /// Oldest first.
    #[prost(message, repeated, tag = "1")]
    pub quarantined: Vec<QuarantinedAgent>,
    /// The connections `impose` closed.
    #[prost(uint32, tag = "2")]
    pub closed_connections: u32,
    /// What `release` lifted.
    #[prost(message, optional, tag = "3")]
    pub released: Option<QuarantinedAgent>,
}

/// The quarantined agents as the hub stores them.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct StoredQuarantine {
    /// Oldest first.
    #[prost(message, repeated, tag = "1")]
    pub quarantined: Vec<QuarantinedAgent>,
}

/// Asks for the hub's keys, and a rotation.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct KeysRequest {
    /// Empty (status only), `data` or `audit`.
    #[prost(string, tag = "1")]
    pub rotate: String,
}

/// One data key's version.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct DataKeyInfo {
    /// Its version.
    #[prost(uint32, tag = "1")]
    pub version: u32,
    /// When it was made, Unix milliseconds.
    #[prost(uint64, tag = "2")]
    pub created_ms: u64,
    /// Whether it encrypts now.
    #[prost(bool, tag = "3")]
    pub current: bool,
}

/// The hub's keys.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct KeysResponse {
    /// Active data keys, oldest first.
    #[prost(message, repeated, tag = "1")]
    pub data_keys: Vec<DataKeyInfo>,
    /// The audit checkpoint verifier key in force; empty without an audit log.
    #[prost(string, tag = "2")]
    pub audit_key: String,
    /// Earlier checkpoint keys still trusted.
    #[prost(string, repeated, tag = "3")]
    pub audit_trusted: Vec<String>,
    /// What a rotation made.
    #[prost(string, tag = "4")]
    pub rotated: String,
    /// The intermediate CAs: the active one first, then a staged or a retiring one.
    #[prost(message, repeated, tag = "5")]
    pub intermediates: Vec<IntermediateInfo>,
    /// The next step of the intermediate rollover: `stage`, `activate` or `retire`.
    #[prost(string, tag = "6")]
    pub rollover_next: String,
    /// When that step is due, Unix milliseconds.
    #[prost(uint64, tag = "7")]
    pub rollover_next_ms: u64,
    /// The backend of the key store holding the CA keys: `local` or `pkcs11`.
    #[prost(string, tag = "8")]
    pub ca_key_store: String,
    /// The backend of the key store holding the audit checkpoint keys.
    #[prost(string, tag = "9")]
    pub audit_key_store: String,
    /// The backend of the key store holding the data keys' wrapping key.
    #[prost(string, tag = "10")]
    pub data_key_store: String,
    /// The name of the data keys' wrapping key in its key store.
    #[prost(string, tag = "11")]
    pub data_kek: String,
}

/// One intermediate CA, as the keys RPC lists them.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct IntermediateInfo {
    /// `active` (signs), `staged` (trusted, not signing yet) or `retiring` (trusted, no longer
    /// signing).
    #[prost(string, tag = "1")]
    pub role: String,
    /// SHA-256 of its SubjectPublicKeyInfo: the signer ID key bundles name.
    #[prost(bytes = "vec", tag = "2")]
    pub signer: Vec<u8>,
    /// Start of its validity, Unix milliseconds.
    #[prost(uint64, tag = "3")]
    pub not_before_ms: u64,
    /// End of its validity, Unix milliseconds.
    #[prost(uint64, tag = "4")]
    pub not_after_ms: u64,
    /// Its key's name in the key store; empty if the key is not there.
    #[prost(string, tag = "5")]
    pub key: String,
}

/// The intermediate CAs of a rollover in progress or done, as the hub keeps them in its store
/// (config key `ca_rollover`), with when each step was taken.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct StoredCaRollover {
    /// The record's version: 1.
    #[prost(uint32, tag = "1")]
    pub version: u32,
    /// The active intermediate, PEM.
    #[prost(string, tag = "2")]
    pub intermediate: String,
    /// The staged intermediate, PEM; empty if none.
    #[prost(string, tag = "3")]
    pub staged: String,
    /// The retiring intermediate, PEM; empty if none.
    #[prost(string, tag = "4")]
    pub retiring: String,
    /// When the staged intermediate was staged, Unix milliseconds (0: none staged).
    #[prost(uint64, tag = "5")]
    pub staged_at_ms: u64,
    /// When the active intermediate was activated, Unix milliseconds.
    #[prost(uint64, tag = "6")]
    pub activated_at_ms: u64,
}

/// A message held for approval, as the hub keeps it in its store so that a restart loses none.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct StoredHold {
    /// The record's version: 1.
    #[prost(uint32, tag = "1")]
    pub version: u32,
    /// The envelope's message ID, UUID text.
    #[prost(string, tag = "2")]
    pub message_id: String,
    /// The sender's SPIFFE ID.
    #[prost(string, tag = "3")]
    pub sender: String,
    /// The channel.
    #[prost(string, tag = "4")]
    pub channel: String,
    /// The `Deliver` body to route once released: sender keys and the batch.
    #[prost(bytes = "vec", tag = "5")]
    pub body: Vec<u8>,
    /// Unused: the batch is in `body`.
    #[prost(message, optional, tag = "6")]
    pub batch: Option<SignedBatch>,
    /// The envelope's hash, 32 bytes.
    #[prost(bytes = "vec", tag = "7")]
    pub hash: Vec<u8>,
    /// The sender's stated purpose.
    #[prost(string, tag = "8")]
    pub purpose: String,
    /// Ciphertext bytes.
    #[prost(uint32, tag = "9")]
    pub size: u32,
    /// The envelope's own expiry, Unix milliseconds.
    #[prost(uint64, tag = "10")]
    pub envelope_expires_at_ms: u64,
    /// When the hub received it, Unix milliseconds.
    #[prost(uint64, tag = "11")]
    pub published_at_ms: u64,
    /// When the hold lapses, Unix milliseconds.
    #[prost(uint64, tag = "12")]
    pub expires_at_ms: u64,
    /// Approvals and rejections received, in order.
    #[prost(message, repeated, tag = "13")]
    pub approvals: Vec<ApprovalInfo>,
    /// The distinct approvers so far.
    #[prost(string, repeated, tag = "14")]
    pub approvers: Vec<String>,
    /// Digests of the statements applied, 32 bytes each.
    #[prost(bytes = "vec", repeated, tag = "15")]
    pub seen: Vec<Vec<u8>>,
    /// `pending`, or `released`: stored before it is routed, and never routed again.
    #[prost(string, tag = "16")]
    pub state: String,
    /// The credentials the sender published it with, and each approver approved it with.
    #[prost(message, repeated, tag = "17")]
    pub credentials: Vec<HeldCredentials>,
}

/// The certificates a principal acted with on a held message (publishing it, approving it):
/// the serials of its connection's certificates (the one presented and those renewed over it),
/// not of their intermediates. A revocation of any of them voids what it did there.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct HeldCredentials {
    /// The principal's SPIFFE ID.
    #[prost(string, tag = "1")]
    pub principal: String,
    /// Certificate serials, at most [`MAX_APPROVAL_RECORDS`](crate::MAX_APPROVAL_RECORDS).
    #[prost(bytes = "vec", repeated, tag = "2")]
    pub serials: Vec<Vec<u8>>,
}
