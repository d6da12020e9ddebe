//! gRPC codecs whose decoder goes through [`entente_wire::decode`], so every inbound message is
//! walked against [`Limits`] before `prost` allocates.
//!
//! A message that fails the walk or the decode becomes `Status::invalid_argument` with the
//! [`WireError`](entente_wire::WireError) text; tonic then ends that stream with the status.
//! The hub is not affected.

use std::marker::PhantomData;

use bytes::{Buf, BufMut, Bytes};
use entente_wire::{Bounded, ClientFrame, Limits, ServerFrame};
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

pub use crate::queue::Budget;

/// A codec that encodes `E` with prost and decodes `D` through the bounded decoder: what a
/// client uses (`BoundedCodec<ClientFrame, ServerFrame>`).
#[derive(Debug, Clone, Copy)]
pub struct BoundedCodec<E, D> {
    limits: Limits,
    _types: PhantomData<fn() -> (E, D)>,
}

/// Decodes one gRPC message as `D` through [`entente_wire::decode`].
#[derive(Debug, Clone, Copy)]
pub struct BoundedDecoder<D> {
    limits: Limits,
    buffers: BufferSettings,
    _type: PhantomData<fn() -> D>,
}

/// The first size of a session stream's encode and decode buffers. They grow to the largest
/// frame a session carries and keep that size, so a busy session reads and writes as with
/// tonic's default (8 KiB); an idle one holds 14 KiB less of buffer capacity (about 6 KiB
/// less resident memory measured, BENCHMARKS.md, Scale).
const SESSION_BUFFER: usize = 1024;
/// Encoded frames gathered before tonic hands them to HTTP/2 (tonic's default).
const SESSION_YIELD_THRESHOLD: usize = 32 * 1024;

fn session_buffers() -> BufferSettings {
    BufferSettings::new(SESSION_BUFFER, SESSION_YIELD_THRESHOLD)
}

/// Encodes a prost message.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProstEncoder<E> {
    _type: PhantomData<fn(E)>,
}

/// A frame on its way from the hub to a session: a whole [`ServerFrame`], or a `Deliver` whose
/// sender keys and batches were encoded once for every subscriber.
#[derive(Debug, Clone, PartialEq)]
pub enum Outbound {
    /// A frame encoded as is (acks, refusals).
    Frame(ServerFrame),
    /// `ServerFrame { deliver: Deliver { subscription_id, <body> } }`.
    Deliver {
        /// The subscriber's subscription.
        subscription_id: u64,
        /// Encoded `Deliver` fields 2 and 3 (sender keys and batches), shared between
        /// subscribers.
        body: Bytes,
        /// What it holds of its queue's byte budget while queued.
        budget: Budget,
    },
}

impl Outbound {
    /// A delivery built from `body` for `subscription_id`, holding nothing of a budget yet.
    pub fn deliver(subscription_id: u64, body: Bytes) -> Self {
        Self::Deliver {
            subscription_id,
            body,
            budget: Budget::default(),
        }
    }

    /// Makes a delivery hold `held` of its queue's budget (what it held before is given
    /// back); other frames hold nothing.
    pub(crate) fn hold(&mut self, held: Budget) {
        if let Self::Deliver { budget, .. } = self {
            *budget = held;
        }
    }
}

/// The hub's session codec: encodes [`Outbound`], decodes bounded [`ClientFrame`]s.
#[derive(Debug, Clone, Copy)]
pub struct SessionCodec {
    limits: Limits,
}

/// Encodes [`Outbound`] frames.
#[derive(Debug, Clone, Copy, Default)]
pub struct OutboundEncoder;

// === impl BoundedCodec ===

impl<E, D> BoundedCodec<E, D> {
    /// A codec decoding under `limits`.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            _types: PhantomData,
        }
    }
}

impl<E, D> Codec for BoundedCodec<E, D>
where
    E: Message + Send + 'static,
    D: Bounded + Send + 'static,
{
    type Encode = E;
    type Decode = D;
    type Encoder = ProstEncoder<E>;
    type Decoder = BoundedDecoder<D>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder { _type: PhantomData }
    }

    fn decoder(&mut self) -> Self::Decoder {
        BoundedDecoder::new(self.limits)
    }
}

// === impl BoundedDecoder ===

impl<D> BoundedDecoder<D> {
    /// A decoder under `limits`.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            buffers: BufferSettings::default(),
            _type: PhantomData,
        }
    }
}

impl<D: Bounded> Decoder for BoundedDecoder<D> {
    type Item = D;
    type Error = Status;

    fn buffer_settings(&self) -> BufferSettings {
        self.buffers
    }

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<D>, Status> {
        let len = src.remaining();
        // The buffer is contiguous in practice; copy only if it is not.
        let decoded = if src.chunk().len() == len {
            let decoded = entente_wire::decode::<D>(src.chunk(), &self.limits);
            src.advance(len);
            decoded
        } else {
            let bytes = src.copy_to_bytes(len);
            entente_wire::decode::<D>(&bytes, &self.limits)
        };
        decoded
            .map(Some)
            .map_err(|e| Status::invalid_argument(e.to_string()))
    }
}

// === impl ProstEncoder ===

impl<E: Message> Encoder for ProstEncoder<E> {
    type Item = E;
    type Error = Status;

    fn encode(&mut self, item: E, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        // A client's publish is up to a batch of envelopes (~80 KiB for 256 of 256 B): one
        // reservation costs a second length walk and saves the growth copies (measured,
        // docs/BENCHMARKS.md, "The allocator").
        dst.reserve(item.encoded_len());
        item.encode(dst)
            .map_err(|_| Status::internal("encoding a message failed"))
    }
}

// === impl SessionCodec ===

impl SessionCodec {
    /// A codec decoding under `limits`.
    pub fn new(limits: Limits) -> Self {
        Self { limits }
    }
}

impl Codec for SessionCodec {
    type Encode = Outbound;
    type Decode = ClientFrame;
    type Encoder = OutboundEncoder;
    type Decoder = BoundedDecoder<ClientFrame>;

    fn encoder(&mut self) -> Self::Encoder {
        OutboundEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        BoundedDecoder {
            buffers: session_buffers(),
            ..BoundedDecoder::new(self.limits)
        }
    }
}

impl Encoder for OutboundEncoder {
    type Item = Outbound;
    type Error = Status;

    fn buffer_settings(&self) -> BufferSettings {
        session_buffers()
    }

    fn encode(&mut self, item: Outbound, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        match item {
            Outbound::Frame(frame) => frame
                .encode(dst)
                .map_err(|_| Status::internal("encoding a frame failed")),
            Outbound::Deliver {
                subscription_id,
                body,
                budget: _,
            } => {
                // One allocation of the frame's size (known without a walk), not a doubling
                // from the buffer's first size: tonic froze the previous frame's bytes.
                dst.reserve(max_deliver_len(body.len()));
                encode_deliver(subscription_id, &body, dst);
                Ok(())
            }
        }
    }
}

// === Deliver framing ===

/// Field number of `deliver` in `ServerFrame` and of `subscription_id` in `Deliver`.
const DELIVER_TAG: u32 = 1;

/// Writes `ServerFrame { deliver: Deliver { subscription_id, <body> } }`, where `body` holds
/// encoded `Deliver` fields 2 (sender keys) and 3 (batches).
pub(crate) fn encode_deliver(subscription_id: u64, body: &[u8], dst: &mut impl BufMut) {
    encode_deliver_head(subscription_id, body.len(), dst);
    dst.put_slice(body);
}

/// Writes what [`encode_deliver`] writes before the body, for a body of `body_len` bytes.
pub(crate) fn encode_deliver_head(subscription_id: u64, body_len: usize, dst: &mut impl BufMut) {
    let inner = key_len(DELIVER_TAG) + encoded_len_varint(subscription_id) + body_len;
    encode_key(DELIVER_TAG, WireType::LengthDelimited, dst);
    encode_varint(inner as u64, dst);
    encode_key(DELIVER_TAG, WireType::Varint, dst);
    encode_varint(subscription_id, dst);
}

/// The encoded size of a `Deliver` frame for `subscription_id` with a body of `body_len` bytes.
pub(crate) fn deliver_len(subscription_id: u64, body_len: usize) -> usize {
    let inner = key_len(DELIVER_TAG) + encoded_len_varint(subscription_id) + body_len;
    key_len(DELIVER_TAG) + encoded_len_varint(inner as u64) + inner
}

/// The largest encoded size of a `Deliver` frame with a body of `body_len` bytes, whatever its
/// subscription ID.
pub(crate) fn max_deliver_len(body_len: usize) -> usize {
    let inner = key_len(DELIVER_TAG) + 10 + body_len;
    key_len(DELIVER_TAG) + encoded_len_varint(inner as u64) + inner
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )]

    use entente_wire::{Deliver, Envelope, Publish, SenderKey, SignedBatch, server_frame};

    use super::*;

    fn batch(channel: &str) -> SignedBatch {
        SignedBatch {
            sender: "spiffe://example.org/agent/a/b".into(),
            channel: channel.into(),
            key_epoch: 3,
            envelopes: vec![Envelope {
                epoch: 1,
                seq: 2,
                message_id: [7; 16].into(),
                issued_at_ms: 5,
                expires_at_ms: 6,
                reply_to: Default::default(),
                ciphertext: vec![9; 40],
                channel: Default::default(),
            }],
            signature: vec![1; 64],
        }
    }

    #[test]
    fn pre_encoded_deliver_decodes_as_a_server_frame() {
        let sender_keys = vec![SenderKey {
            version: 1,
            sender: "spiffe://example.org/agent/a/b".into(),
            channel: "x".into(),
            ..SenderKey::default()
        }];
        let batches = vec![batch("x"), batch("x")];
        // Deliver fields 2 and 3 are Publish fields 2 and 3, and request_id 0 is not encoded.
        let body = Publish {
            request_id: 0,
            sender_keys: sender_keys.clone(),
            batches: batches.clone(),
            purpose: String::new(),
        }
        .encode_to_vec();
        for subscription_id in [0, 1, 300, u64::MAX] {
            let mut out = Vec::new();
            encode_deliver(subscription_id, &body, &mut out);
            assert!(out.len() <= max_deliver_len(body.len()));
            let frame: ServerFrame = entente_wire::decode(&out, &Limits::default()).unwrap();
            assert_eq!(
                frame.kind,
                Some(server_frame::Kind::Deliver(Deliver {
                    subscription_id,
                    sender_keys: sender_keys.clone(),
                    batches: batches.clone(),
                    ..Deliver::default()
                }))
            );
        }
    }
}
