//! Sealing and opening envelopes (PROTOCOL.md §4): the [`Sealer`] of one sender on one channel,
//! and the [`Opener`] of one recipient.

use std::{collections::HashMap, sync::Arc};

use aws_lc_rs::{
    aead::{Aad, Nonce},
    digest::{SHA256, digest},
    rand::{SecureRandom, SystemRandom},
};
use entente_types::{
    Channel, ChannelError, IdError, MessageId, MessageIdError, Principal, namespace,
};
use entente_wire as wire;
use zeroize::Zeroizing;

use crate::{
    KEY_LEN, MessageKeys, ReplayError, ReplayWindow, SenderKeyIn, VerifiedKeyBundle,
    canon::{Canon, label},
    sender_key::{EpochSecret, NewSenderKey, PayloadKey, check_signer, verify_ed25519},
};

/// The envelope suite this crate implements.
pub const SUITE_V1: u8 = 1;

/// Length of the AES-256-GCM tag appended to every ciphertext.
pub const TAG_LEN: usize = 16;

/// Random bytes in a UUIDv7 message ID.
const ID_RANDOM_LEN: usize = 10;

// === errors ===

/// Why sealing failed. These are caller or environment errors, never peer input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The current epoch reached its message or age limit, or the clock went back before it
    /// began: call [`Sealer::rotate`].
    #[error("the sender-key epoch is exhausted; rotate it")]
    EpochExhausted,
    /// The payload is larger than the wire limit.
    #[error("payload of {len} bytes exceeds the limit of {max}")]
    PayloadTooLarge {
        /// Payload length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A batch must hold 1 to `max_batch_envelopes` envelopes.
    #[error("a batch must hold between 1 and {max} envelopes, not {len}")]
    BatchSize {
        /// Envelopes given.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// More recipients than the wire limit.
    #[error("{len} recipients exceed the limit of {max}")]
    TooManyRecipients {
        /// Recipients given.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A recipient's key bundle is outside its validity period.
    #[error("the key bundle of `{0}` is not valid now")]
    RecipientExpired(String),
    /// The channel is outside what the sealer's sender key covers: its own channel, and for
    /// a sealer of a reply namespace root, the reply channels under it.
    #[error("`{channel}` is outside what the sender key of `{scope}` covers")]
    OutOfScope {
        /// The channel asked for.
        channel: String,
        /// The sealer's channel.
        scope: String,
    },
    /// The random source or a primitive failed.
    #[error("cryptographic failure: {0}")]
    Crypto(&'static str),
}

/// Why a sender key, a batch or one of its envelopes was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// Decoding failed.
    #[error("{0}")]
    Wire(#[from] wire::WireError),
    /// A field is malformed.
    #[error("malformed: {0}")]
    Malformed(&'static str),
    /// An unsupported format version.
    #[error("version {0} is not supported")]
    UnsupportedVersion(u32),
    /// A principal ID is malformed.
    #[error("bad principal: {0}")]
    Id(#[from] IdError),
    /// A channel name is malformed.
    #[error("bad channel: {0}")]
    Channel(#[from] ChannelError),
    /// A message ID is malformed.
    #[error("bad message id: {0}")]
    MessageId(#[from] MessageIdError),
    /// The key bundle given is not the claimed sender's.
    #[error("the key bundle is not the sender's")]
    WrongSenderBundle,
    /// The sender signed with another generation of its keys.
    #[error("signed with key epoch {got}, but the sender's bundle is epoch {expected}")]
    KeyEpochMismatch {
        /// The bundle's epoch.
        expected: u64,
        /// The epoch named by the message.
        got: u64,
    },
    /// The sender's key bundle is not valid now.
    #[error("the sender's key bundle is not valid now")]
    SenderBundleExpired,
    /// The batch signature does not verify.
    #[error("batch signature is invalid")]
    BadBatchSignature,
    /// The sender-key signature does not verify.
    #[error("sender-key signature is invalid")]
    BadSenderKeySignature,
    /// The sender key is not wrapped to this recipient (or to its current keys).
    #[error("not a recipient of this sender key")]
    NotARecipient,
    /// HPKE could not unwrap the epoch secret.
    #[error("the sender key could not be unwrapped")]
    Unwrap,
    /// A sender key for a reply namespace root other than the recipient's own.
    #[error("a sender key for another principal's reply namespace")]
    ForeignReplyNamespace,
    /// A different secret was already accepted for this (sender, channel, epoch).
    #[error("a different sender key exists for this epoch")]
    EpochConflict,
    /// No sender key is known for this envelope's epoch.
    #[error("no sender key for epoch {0}")]
    UnknownEpoch(u64),
    /// The sender key's lifetime is over, or the envelope was issued after it.
    #[error("the sender-key epoch has expired")]
    EpochExpired,
    /// Authenticated decryption failed: ciphertext or header tampered.
    #[error("authentication failed")]
    Decrypt,
    /// A replayed or too old sequence number.
    #[error("{0}")]
    Replay(#[from] ReplayError),
    /// The envelope's `expires_at` has passed.
    #[error("the envelope has expired")]
    Expired,
    /// The envelope claims to be issued in the future beyond the allowed clock skew.
    #[error("the envelope is issued in the future")]
    NotYetValid,
    /// The sender was forgotten ([`Opener::forget_sender`]); its epochs are refused.
    #[error("the sender was forgotten; its sender-key epochs are refused")]
    Forgotten,
    /// The opener holds as many epochs as allowed.
    #[error("too many sender-key epochs held ({0})")]
    TooManyEpochs(usize),
    /// The opener holds as many epochs of this sender as one sender may take
    /// ([`OpenerOptions::max_epochs_per_sender`]).
    #[error("too many sender-key epochs held for this sender ({0})")]
    TooManySenderEpochs(usize),
}

// === impl Sealer ===

/// Options of a [`Sealer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealerOptions {
    /// Lifetime of each envelope (`expires_at - issued_at`).
    pub message_ttl_ms: u64,
    /// Envelopes sealed under one epoch before rotation is required.
    pub epoch_max_messages: u64,
    /// Age of an epoch after which rotation is required.
    pub epoch_max_age_ms: u64,
    /// Wire limits (payload size, batch length, recipients).
    pub limits: wire::Limits,
}

impl Default for SealerOptions {
    fn default() -> Self {
        Self {
            message_ttl_ms: 10 * 60 * 1000,
            epoch_max_messages: 1 << 24,
            epoch_max_age_ms: 60 * 60 * 1000,
            limits: wire::Limits::default(),
        }
    }
}

/// Seals and signs the envelopes of one sender on one channel.
#[derive(Debug)]
pub struct Sealer {
    sender: Principal,
    channel: Channel,
    key_epoch: u64,
    keys: Arc<MessageKeys>,
    options: SealerOptions,
    epoch: u64,
    /// The epoch's payload key, for the sealer's channel; a sealer of a reply namespace root
    /// seals every reply channel under the root with it (PROTOCOL.md §5.4).
    payload: PayloadKey,
    next_seq: u64,
    epoch_started_ms: u64,
    scratch: Canon,
    /// Hashes the headers on `channel` from the state after their shared start.
    hasher: HeaderHasher,
    rng: SystemRandom,
}

impl Sealer {
    /// Starts the first epoch for `recipients` and returns the sender key to distribute.
    ///
    /// `key_epoch` is the epoch of the sender's own key bundle holding `keys`' public halves.
    pub fn new(
        sender: Principal,
        key_epoch: u64,
        keys: Arc<MessageKeys>,
        channel: Channel,
        recipients: &[VerifiedKeyBundle],
        options: SealerOptions,
        now_ms: u64,
    ) -> Result<(Self, wire::SenderKey), SealError> {
        let rng = SystemRandom::new();
        let epoch = next_epoch(&rng, 0, now_ms)?;
        Self::on_epoch(
            (sender, key_epoch, keys),
            channel,
            recipients,
            options,
            now_ms,
            epoch,
        )
    }

    /// [`new`](Self::new), on `epoch` rather than one drawn (for
    /// [`crate::danger::danger_sealer_on_epoch`]).
    pub(crate) fn on_epoch(
        (sender, key_epoch, keys): (Principal, u64, Arc<MessageKeys>),
        channel: Channel,
        recipients: &[VerifiedKeyBundle],
        options: SealerOptions,
        now_ms: u64,
        epoch: u64,
    ) -> Result<(Self, wire::SenderKey), SealError> {
        let rng = SystemRandom::new();
        let secret = random_secret(&rng)?;
        let payload = PayloadKey::derive(&secret, sender.as_str(), channel.as_str(), epoch)
            .map_err(|_| SealError::Crypto("key derivation"))?;
        let hasher = HeaderHasher::new(sender.as_str(), channel.as_str());
        let sealer = Self {
            sender,
            channel,
            key_epoch,
            keys,
            options,
            epoch,
            payload,
            next_seq: 0,
            epoch_started_ms: now_ms,
            scratch: Canon::default(),
            hasher,
            rng,
        };
        let sender_key = sealer.sender_key(epoch, &secret, recipients, now_ms)?;
        Ok((sealer, sender_key))
    }

    /// Starts a new epoch (membership changed, or the old one is exhausted) and returns its
    /// sender key. Envelopes sealed afterwards are readable only by `recipients`.
    pub fn rotate(
        &mut self,
        recipients: &[VerifiedKeyBundle],
        now_ms: u64,
    ) -> Result<wire::SenderKey, SealError> {
        let secret = random_secret(&self.rng)?;
        let epoch = next_epoch(&self.rng, self.epoch, now_ms)?;
        let payload =
            PayloadKey::derive(&secret, self.sender.as_str(), self.channel.as_str(), epoch)
                .map_err(|_| SealError::Crypto("key derivation"))?;
        // Build the sender key first: if it fails (a recipient's bundle expired, too many
        // recipients), the sealer stays on its current epoch instead of switching to a secret
        // that nobody received.
        let sender_key = self.sender_key(epoch, &secret, recipients, now_ms)?;
        self.payload = payload;
        self.epoch = epoch;
        self.next_seq = 0;
        self.epoch_started_ms = now_ms;
        Ok(sender_key)
    }

    /// Whether the current epoch must be rotated before sealing at `now_ms`: its message
    /// count or age is reached, or the clock went back before it began (an envelope issued
    /// before its sender key is refused by every recipient, PROTOCOL.md §4.5).
    pub fn needs_rotation(&self, now_ms: u64) -> bool {
        self.next_seq >= self.options.epoch_max_messages
            || now_ms < self.epoch_started_ms
            || now_ms - self.epoch_started_ms >= self.options.epoch_max_age_ms
    }

    /// The current sender-key epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The channel sealed for.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Seals `payloads` and signs them as one batch.
    pub fn seal_batch(
        &mut self,
        payloads: &[&[u8]],
        reply_to: Option<&Channel>,
        now_ms: u64,
    ) -> Result<wire::SignedBatch, SealError> {
        self.seal_batch_each(payloads.iter().map(|&p| (p, reply_to)), now_ms)
    }

    /// Seals `messages`, each with its own `reply_to`, and signs them as one batch: requests
    /// to one channel, each naming its own reply channel, share one signature.
    pub fn seal_batch_each<'m>(
        &mut self,
        messages: impl ExactSizeIterator<Item = (&'m [u8], Option<&'m Channel>)>,
        now_ms: u64,
    ) -> Result<wire::SignedBatch, SealError> {
        self.seal_batch_with(None, messages, now_ms)
    }

    /// Seals `messages` as one batch on `channel`: the sealer's own channel, or, for a sealer
    /// of a reply namespace root (`_reply.S.N`), any reply channel under it, sealed under the
    /// root's payload key with the channel in its header (PROTOCOL.md §5.4). One sender key
    /// then serves every reply to one requester; sequence numbers run across all of them.
    pub fn seal_batch_on<'m>(
        &mut self,
        channel: &Channel,
        messages: impl ExactSizeIterator<Item = (&'m [u8], Option<&'m Channel>)>,
        now_ms: u64,
    ) -> Result<wire::SignedBatch, SealError> {
        if *channel == self.channel {
            return self.seal_batch_with(None, messages, now_ms);
        }
        let out_of_scope = || SealError::OutOfScope {
            channel: channel.as_str().to_owned(),
            scope: self.channel.as_str().to_owned(),
        };
        if !namespace::is_reply_channel_under(&self.channel, channel) {
            return Err(out_of_scope());
        }
        self.seal_batch_with(Some(channel), messages, now_ms)
    }

    /// Seals and signs on the sealer's channel, or on `target` (a reply channel under it).
    fn seal_batch_with<'m>(
        &mut self,
        target: Option<&Channel>,
        messages: impl ExactSizeIterator<Item = (&'m [u8], Option<&'m Channel>)>,
        now_ms: u64,
    ) -> Result<wire::SignedBatch, SealError> {
        let count = messages.len();
        let random = self.batch_randomness(count)?;
        let mut envelopes = Vec::with_capacity(count);
        let mut hashes = Vec::with_capacity(count * 32);
        for ((payload, reply_to), random) in messages.zip(random.chunks_exact(ID_RANDOM_LEN)) {
            let (envelope, hash) =
                self.seal_one(target, false, payload, reply_to, now_ms, random)?;
            hashes.extend_from_slice(&hash);
            envelopes.push(envelope);
        }
        let channel = target.unwrap_or(&self.channel);
        Ok(self.signed(channel, envelopes, &hashes))
    }

    /// Seals replies to one requester as one batch on the sealer's channel, the requester's
    /// reply namespace root (`_reply.S.N`): each message goes on its own reply channel under
    /// the root, named in its envelope and its header, sealed under the root's payload key
    /// (PROTOCOL.md §5.5), and one signature covers them all. `messages` are (reply channel,
    /// payload, `reply_to`).
    pub fn seal_replies<'m>(
        &mut self,
        messages: impl ExactSizeIterator<Item = (&'m Channel, &'m [u8], Option<&'m Channel>)>,
        now_ms: u64,
    ) -> Result<wire::SignedBatch, SealError> {
        let count = messages.len();
        let random = self.batch_randomness(count)?;
        let mut envelopes = Vec::with_capacity(count);
        let mut hashes = Vec::with_capacity(count * 32);
        for ((channel, payload, reply_to), random) in
            messages.zip(random.chunks_exact(ID_RANDOM_LEN))
        {
            if !namespace::is_reply_channel_under(&self.channel, channel) {
                return Err(SealError::OutOfScope {
                    channel: channel.as_str().to_owned(),
                    scope: self.channel.as_str().to_owned(),
                });
            }
            let (envelope, hash) =
                self.seal_one(Some(channel), true, payload, reply_to, now_ms, random)?;
            hashes.extend_from_slice(&hash);
            envelopes.push(envelope);
        }
        Ok(self.signed(&self.channel, envelopes, &hashes))
    }

    /// Seals one envelope, to be signed with others by [`Sealer::sign`].
    pub fn seal(
        &mut self,
        payload: &[u8],
        reply_to: Option<&Channel>,
        now_ms: u64,
    ) -> Result<wire::Envelope, SealError> {
        let mut random = [0u8; ID_RANDOM_LEN];
        self.rng
            .fill(&mut random)
            .map_err(|_| SealError::Crypto("random"))?;
        Ok(self
            .seal_one(None, false, payload, reply_to, now_ms, &random)?
            .0)
    }

    /// Signs envelopes sealed by this sealer as one batch.
    pub fn sign(&mut self, envelopes: Vec<wire::Envelope>) -> Result<wire::SignedBatch, SealError> {
        let max = self.options.limits.max_batch_envelopes;
        if envelopes.is_empty() || envelopes.len() > max {
            return Err(SealError::BatchSize {
                len: envelopes.len(),
                max,
            });
        }
        let mut hashes = Vec::with_capacity(envelopes.len() * 32);
        for envelope in &envelopes {
            hashes.extend_from_slice(&self.hash_current(envelope));
        }
        Ok(self.signed(&self.channel, envelopes, &hashes))
    }

    /// Seals one envelope on the sealer's channel, or on `target` (naming the channel in the
    /// envelope if `named`: a reply in a batch on the root), and returns it with its hash
    /// (PROTOCOL.md §4.4).
    fn seal_one(
        &mut self,
        target: Option<&Channel>,
        named: bool,
        payload: &[u8],
        reply_to: Option<&Channel>,
        now_ms: u64,
        random: &[u8],
    ) -> Result<(wire::Envelope, [u8; 32]), SealError> {
        let max = self
            .options
            .limits
            .max_ciphertext_bytes
            .saturating_sub(TAG_LEN);
        if payload.len() > max {
            return Err(SealError::PayloadTooLarge {
                len: payload.len(),
                max,
            });
        }
        if self.needs_rotation(now_ms) {
            return Err(SealError::EpochExhausted);
        }
        let seq = self.next_seq;
        let random: [u8; ID_RANDOM_LEN] =
            random.try_into().map_err(|_| SealError::Crypto("random"))?;
        let message_id = MessageId::from_parts(now_ms, random);
        let mut envelope = wire::Envelope {
            epoch: self.epoch,
            seq,
            message_id: (*message_id.as_bytes()).into(),
            issued_at_ms: now_ms,
            expires_at_ms: now_ms.saturating_add(self.options.message_ttl_ms),
            reply_to: reply_to
                .map(Channel::to_shared)
                .map(wire::Name::from)
                .unwrap_or_default(),
            ciphertext: Vec::with_capacity(payload.len() + TAG_LEN),
            channel: wire::Name::default(),
        };
        let channel = target.unwrap_or(&self.channel);
        if named {
            envelope.channel = channel.to_shared().into();
        }
        write_aad(
            &mut self.scratch,
            self.sender.as_str(),
            channel.as_str(),
            &envelope,
        );
        envelope.ciphertext.extend_from_slice(payload);
        let key = &self.payload;
        key.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(key.nonce(seq)),
                Aad::from(self.scratch.as_bytes()),
                &mut envelope.ciphertext,
            )
            .map_err(|_| SealError::Crypto("seal"))?;
        self.next_seq += 1;
        let hash = self.hasher.hash(&mut self.scratch, 0, &envelope.ciphertext);
        Ok((envelope, hash))
    }

    fn hash_current(&mut self, envelope: &wire::Envelope) -> [u8; 32] {
        write_aad(
            &mut self.scratch,
            self.sender.as_str(),
            self.channel.as_str(),
            envelope,
        );
        self.hasher.hash(&mut self.scratch, 0, &envelope.ciphertext)
    }

    /// Checks a batch's size and draws the randomness of all its message IDs at once.
    fn batch_randomness(&self, count: usize) -> Result<Vec<u8>, SealError> {
        let max = self.options.limits.max_batch_envelopes;
        if count == 0 || count > max {
            return Err(SealError::BatchSize { len: count, max });
        }
        let mut random = vec![0u8; count * ID_RANDOM_LEN];
        self.rng
            .fill(&mut random)
            .map_err(|_| SealError::Crypto("random"))?;
        Ok(random)
    }

    /// `envelopes`, whose hashes are `hashes`, as a batch on `channel` signed by this sender.
    fn signed(
        &self,
        channel: &Channel,
        envelopes: Vec<wire::Envelope>,
        hashes: &[u8],
    ) -> wire::SignedBatch {
        let signature = self.sign_hashes(channel, hashes, envelopes.len());
        wire::SignedBatch {
            sender: self.sender.as_str().to_owned(),
            channel: channel.as_str().to_owned(),
            key_epoch: self.key_epoch,
            envelopes,
            signature,
        }
    }

    fn sign_hashes(&self, channel: &Channel, hashes: &[u8], count: usize) -> Vec<u8> {
        let input = batch_input(
            self.sender.as_str(),
            channel.as_str(),
            self.key_epoch,
            count,
            hashes,
        );
        self.keys.sign(&input).to_vec()
    }

    fn sender_key(
        &self,
        epoch: u64,
        secret: &[u8; KEY_LEN],
        recipients: &[VerifiedKeyBundle],
        now_ms: u64,
    ) -> Result<wire::SenderKey, SealError> {
        let max = self.options.limits.max_recipients;
        if recipients.len() > max {
            return Err(SealError::TooManyRecipients {
                len: recipients.len(),
                max,
            });
        }
        NewSenderKey {
            sender: self.sender.as_str(),
            channel: self.channel.as_str(),
            epoch,
            issued_at_ms: now_ms,
            expires_at_ms: now_ms
                .saturating_add(self.options.epoch_max_age_ms)
                .saturating_add(self.options.message_ttl_ms),
            key_epoch: self.key_epoch,
        }
        .seal(secret, recipients, &self.keys, now_ms)
    }
}

// === impl SignedBatchIn ===

/// A decoded batch whose signature has not been checked. The hub routes these by their
/// header fields; only an [`Opener`] turns one into [`VerifiedEnvelope`]s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedBatchIn {
    sender: Principal,
    channel: Channel,
    key_epoch: u64,
    envelopes: Vec<EnvelopeIn>,
    signature: [u8; 64],
}

/// One unverified envelope of a [`SignedBatchIn`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeIn {
    epoch: u64,
    seq: u64,
    message_id: MessageId,
    issued_at_ms: u64,
    expires_at_ms: u64,
    reply_to: Option<Channel>,
    ciphertext: Vec<u8>,
    /// Its own reply channel, in a batch on a reply namespace root; `None` otherwise.
    channel: Option<Channel>,
}

impl SignedBatchIn {
    /// Decodes protobuf bytes (bounded by `limits`).
    pub fn decode(bytes: &[u8], limits: &wire::Limits) -> Result<Self, OpenError> {
        Self::from_wire(wire::decode(bytes, limits)?)
    }

    /// Checks the field formats of a decoded batch.
    pub fn from_wire(batch: wire::SignedBatch) -> Result<Self, OpenError> {
        if batch.envelopes.is_empty() {
            return Err(OpenError::Malformed("empty batch"));
        }
        let signature = batch
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| OpenError::Malformed("signature length"))?;
        let envelopes: Vec<EnvelopeIn> = batch
            .envelopes
            .into_iter()
            .map(EnvelopeIn::from_wire)
            .collect::<Result<_, _>>()?;
        let channel = Channel::parse(&batch.channel)?;
        // A batch on a reply namespace root carries replies, each naming its reply channel
        // under the root; any other batch's envelopes are on its channel.
        let root = namespace::is_reply_root(&channel);
        for e in &envelopes {
            match (&e.channel, root) {
                (None, false) => {}
                (Some(own), true) if namespace::is_reply_channel_under(&channel, own) => {}
                (None, true) => {
                    return Err(OpenError::Malformed(
                        "an envelope of a batch on a reply namespace root names no reply channel",
                    ));
                }
                (Some(_), true) => {
                    return Err(OpenError::Malformed(
                        "an envelope's channel is not under its batch's reply namespace root",
                    ));
                }
                (Some(_), false) => {
                    return Err(OpenError::Malformed(
                        "an envelope names a channel outside a batch on a reply namespace root",
                    ));
                }
            }
        }
        Ok(Self {
            sender: Principal::parse(&batch.sender)?,
            channel,
            key_epoch: batch.key_epoch,
            envelopes,
            signature,
        })
    }

    /// The claimed sender (the hub checks it against the connection's identity).
    pub fn sender(&self) -> &Principal {
        &self.sender
    }

    /// The channel of every envelope, or, for a batch of replies, the reply namespace root
    /// above each envelope's own channel ([`EnvelopeIn::channel`]).
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Whether this is a batch of replies on a reply namespace root, each envelope naming its
    /// own reply channel (PROTOCOL.md §5.5).
    pub fn is_replies(&self) -> bool {
        self.envelopes.first().is_some_and(|e| e.channel.is_some())
    }

    /// The sender's key epoch that signed.
    pub fn key_epoch(&self) -> u64 {
        self.key_epoch
    }

    /// The unverified envelopes.
    pub fn envelopes(&self) -> &[EnvelopeIn] {
        &self.envelopes
    }

    /// Checks the batch signature against the sender's key bundle without opening anything:
    /// the bundle must be the sender's, of the signing key epoch, valid at `now_ms`, and the
    /// signature must cover exactly these envelopes (PROTOCOL.md §4.4). For who sees sealed
    /// envelopes without their keys, such as the approvers of a held message.
    pub fn verify_signature(
        &self,
        sender_bundle: &VerifiedKeyBundle,
        now_ms: u64,
    ) -> Result<(), OpenError> {
        check_signer(sender_bundle, &self.sender, self.key_epoch, now_ms)?;
        let hashes = self.envelope_hashes().concat();
        let input = batch_input(
            self.sender.as_str(),
            self.channel.as_str(),
            self.key_epoch,
            self.envelopes.len(),
            &hashes,
        );
        verify_ed25519(sender_bundle, &input, &self.signature)
            .map_err(|()| OpenError::BadBatchSignature)
    }

    /// Each envelope's hash, `hash_i` of PROTOCOL.md §4.4, in batch order: what the batch
    /// signature covers, and what the hub's audit record of a delivered batch commits to.
    pub fn envelope_hashes(&self) -> Vec<[u8; 32]> {
        let room = self
            .envelopes
            .first()
            .map_or(0, |e| hash_room(&e.ciphertext));
        let mut aad = Canon::with_capacity(room);
        let hasher = HeaderHasher::new(self.sender.as_str(), self.channel.as_str());
        self.envelopes
            .iter()
            .map(|e| {
                aad.clear();
                write_aad_in(&mut aad, self.sender.as_str(), self.channel.as_str(), e);
                hasher.hash(&mut aad, 0, &e.ciphertext)
            })
            .collect()
    }

    /// Re-encodes to the wire form.
    pub fn to_wire(&self) -> wire::SignedBatch {
        wire::SignedBatch {
            sender: self.sender.as_str().to_owned(),
            channel: self.channel.as_str().to_owned(),
            key_epoch: self.key_epoch,
            envelopes: self.envelopes.iter().map(EnvelopeIn::to_wire).collect(),
            signature: self.signature.to_vec(),
        }
    }
}

impl EnvelopeIn {
    fn from_wire(e: wire::Envelope) -> Result<Self, OpenError> {
        if e.ciphertext.len() < TAG_LEN {
            return Err(OpenError::Malformed("ciphertext shorter than the tag"));
        }
        if e.expires_at_ms < e.issued_at_ms {
            return Err(OpenError::Malformed("envelope expires before it is issued"));
        }
        let reply_to = if e.reply_to.is_empty() {
            None
        } else {
            Some(Channel::from_shared(e.reply_to.into_shared())?)
        };
        let channel = if e.channel.is_empty() {
            None
        } else {
            Some(Channel::from_shared(e.channel.into_shared())?)
        };
        Ok(Self {
            epoch: e.epoch,
            seq: e.seq,
            message_id: MessageId::from_slice(e.message_id.as_slice())?,
            issued_at_ms: e.issued_at_ms,
            expires_at_ms: e.expires_at_ms,
            reply_to,
            ciphertext: e.ciphertext,
            channel,
        })
    }

    fn to_wire(&self) -> wire::Envelope {
        wire::Envelope {
            epoch: self.epoch,
            seq: self.seq,
            message_id: (*self.message_id.as_bytes()).into(),
            issued_at_ms: self.issued_at_ms,
            expires_at_ms: self.expires_at_ms,
            reply_to: self
                .reply_to
                .as_ref()
                .map(Channel::to_shared)
                .map(wire::Name::from)
                .unwrap_or_default(),
            ciphertext: self.ciphertext.clone(),
            channel: self
                .channel
                .as_ref()
                .map(Channel::to_shared)
                .map(wire::Name::from)
                .unwrap_or_default(),
        }
    }

    /// Sender-key epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Sequence number.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Message ID.
    pub fn message_id(&self) -> MessageId {
        self.message_id
    }

    /// Unix milliseconds.
    pub fn issued_at_ms(&self) -> u64 {
        self.issued_at_ms
    }

    /// Unix milliseconds.
    pub fn expires_at_ms(&self) -> u64 {
        self.expires_at_ms
    }

    /// Where replies go, if anywhere.
    pub fn reply_to(&self) -> Option<&Channel> {
        self.reply_to.as_ref()
    }

    /// Its own reply channel, in a batch of replies on a reply namespace root (PROTOCOL.md
    /// §5.5); `None` in any other batch, whose envelopes are all on its channel.
    pub fn channel(&self) -> Option<&Channel> {
        self.channel.as_ref()
    }

    /// Ciphertext length including the tag.
    pub fn ciphertext_len(&self) -> usize {
        self.ciphertext.len()
    }
}

// === impl VerifiedEnvelope ===

/// An envelope whose batch signature, AEAD tag, replay window and expiry were all checked.
/// There is no other way to make one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedEnvelope {
    sender: Arc<Principal>,
    channel: Arc<Channel>,
    epoch: u64,
    seq: u64,
    message_id: MessageId,
    issued_at_ms: u64,
    expires_at_ms: u64,
    reply_to: Option<Channel>,
    payload: Vec<u8>,
}

impl VerifiedEnvelope {
    /// The authenticated sender.
    pub fn sender(&self) -> &Principal {
        &self.sender
    }

    /// The channel.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Sender-key epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Sequence number.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Message ID.
    pub fn message_id(&self) -> MessageId {
        self.message_id
    }

    /// Unix milliseconds.
    pub fn issued_at_ms(&self) -> u64 {
        self.issued_at_ms
    }

    /// Unix milliseconds.
    pub fn expires_at_ms(&self) -> u64 {
        self.expires_at_ms
    }

    /// Where replies go, if anywhere.
    pub fn reply_to(&self) -> Option<&Channel> {
        self.reply_to.as_ref()
    }

    /// The plaintext.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// Takes the plaintext.
    pub fn into_payload(self) -> Vec<u8> {
        self.payload
    }
}

// === impl Opener ===

/// Options of an [`Opener`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenerOptions {
    /// Most sender-key epochs held at once. When it is reached, epochs whose keys expired
    /// longer ago than [`max_clock_skew_ms`](Self::max_clock_skew_ms) are dropped before a new
    /// sender key is refused.
    pub max_epochs: usize,
    /// Most sender-key epochs held at once for one sender, so that one sender (which may send
    /// sender keys that expire late, and many of them) can't take every place and keep others'
    /// keys out. When it is reached, that sender's epochs whose keys expired longer ago than
    /// the clock skew allowed are dropped before its new sender key is refused.
    pub max_epochs_per_sender: usize,
    /// How far in the future an envelope's `issued_at` may be.
    pub max_clock_skew_ms: u64,
}

impl Default for OpenerOptions {
    fn default() -> Self {
        Self {
            max_epochs: 65_536,
            max_epochs_per_sender: 8_192,
            max_clock_skew_ms: 60_000,
        }
    }
}

/// The result of opening a batch whose signature verified: the envelopes that passed, and
/// each one refused (replayed, expired, unknown epoch, …) with its index in the batch.
#[derive(Debug, Default)]
pub struct OpenedBatch {
    /// Envelopes that passed every check.
    pub delivered: Vec<VerifiedEnvelope>,
    /// Envelopes refused, by index in the batch.
    pub rejected: Vec<(usize, OpenError)>,
}

/// Opens what is sent to one recipient.
#[derive(Debug)]
pub struct Opener {
    me: Principal,
    key_epoch: u64,
    keys: Arc<MessageKeys>,
    options: OpenerOptions,
    /// By sender.
    epochs: HashMap<String, SenderEpochs>,
    /// Epochs held, of all senders.
    held: usize,
    /// When expired epochs are next dropped as a sender key is taken ([`PURGE_INTERVAL_MS`]).
    next_purge_ms: u64,
    scratch: Canon,
}

/// How often an [`Opener`] taking sender keys drops the epochs that expired, so that what a
/// long-lived receiver holds follows the keys in use rather than growing to its bounds.
const PURGE_INTERVAL_MS: u64 = 60_000;

/// The epochs held of one sender: by channel, then by epoch.
#[derive(Debug, Default)]
struct SenderEpochs {
    channels: HashMap<String, HashMap<u64, EpochState>>,
    /// Epochs held, of all channels.
    held: usize,
}

impl SenderEpochs {
    /// Drops the epochs whose sender keys expired more than `skew` before `now_ms`, and says
    /// how many went.
    fn purge(&mut self, now_ms: u64, skew: u64) -> usize {
        let mut removed = 0;
        for epochs in self.channels.values_mut() {
            let before = epochs.len();
            epochs.retain(|_, s| s.expires_at_ms.saturating_add(skew) >= now_ms);
            removed += before - epochs.len();
        }
        self.channels.retain(|_, e| !e.is_empty());
        self.held -= removed;
        removed
    }
}

#[derive(Debug)]
struct EpochState {
    secret_hash: [u8; 32],
    /// `None` once the sender was forgotten: the entry stays, refusing the epoch's sender key
    /// and envelopes, until it expires and [`Opener::purge_expired`] drops it.
    payload: Option<PayloadKey>,
    issued_at_ms: u64,
    expires_at_ms: u64,
    window: ReplayWindow,
}

impl Opener {
    /// An opener for `me`, whose key bundle of epoch `key_epoch` holds `keys`' public halves.
    pub fn new(
        me: Principal,
        key_epoch: u64,
        keys: Arc<MessageKeys>,
        options: OpenerOptions,
    ) -> Self {
        Self {
            me,
            key_epoch,
            keys,
            options,
            epochs: HashMap::new(),
            held: 0,
            next_purge_ms: 0,
            scratch: Canon::default(),
        }
    }

    /// Verifies a sender key against its sender's bundle and keeps the epoch's payload key
    /// (for an epoch of our own reply namespace root, the key of every reply channel under
    /// it). Receiving the same sender key twice is harmless; a different secret for a known
    /// epoch is refused.
    pub fn accept_sender_key(
        &mut self,
        sender_key: &SenderKeyIn,
        sender_bundle: &VerifiedKeyBundle,
        now_ms: u64,
    ) -> Result<(), OpenError> {
        // A reply namespace root's key serves only its owner, who reads every reply under it.
        let root = namespace::is_reply_root(sender_key.channel());
        if root && *sender_key.channel() != namespace::reply_root(&self.me) {
            return Err(OpenError::ForeignReplyNamespace);
        }
        let secret: EpochSecret =
            sender_key.open(sender_bundle, &self.me, self.key_epoch, &self.keys, now_ms)?;
        let secret_hash = sha256(&*secret);
        let sender = sender_key.sender().as_str();
        let channel = sender_key.channel().as_str();
        let epoch = sender_key.epoch();
        if let Some(existing) = self.state(sender, channel, epoch) {
            return if existing.payload.is_none() {
                Err(OpenError::Forgotten)
            } else if existing.secret_hash == secret_hash {
                Ok(())
            } else {
                Err(OpenError::EpochConflict)
            };
        }
        // Expired epochs go every minute, and when a bound is reached (only the sender's, when
        // only its share is full: a sender flooding keys makes no walk over others').
        let purged = now_ms >= self.next_purge_ms;
        if purged {
            self.purge_expired(now_ms);
        }
        if self.held >= self.options.max_epochs {
            if !purged {
                self.purge_expired(now_ms);
            }
            if self.held >= self.options.max_epochs {
                return Err(OpenError::TooManyEpochs(self.held));
            }
        }
        let of_sender = |opener: &Self| opener.epochs.get(sender).map_or(0, |s| s.held);
        if of_sender(self) >= self.options.max_epochs_per_sender {
            self.purge_sender(sender, now_ms);
            let held = of_sender(self);
            if held >= self.options.max_epochs_per_sender {
                return Err(OpenError::TooManySenderEpochs(held));
            }
        }
        let payload =
            PayloadKey::derive(&secret, sender, channel, epoch).map_err(|_| OpenError::Unwrap)?;
        let of_sender = self.epochs.entry(sender.to_owned()).or_default();
        of_sender.held += 1;
        of_sender
            .channels
            .entry(channel.to_owned())
            .or_default()
            .insert(
                epoch,
                EpochState {
                    secret_hash,
                    payload: Some(payload),
                    issued_at_ms: sender_key.issued_at_ms(),
                    expires_at_ms: sender_key.expires_at_ms(),
                    window: ReplayWindow::new(),
                },
            );
        self.held += 1;
        Ok(())
    }

    /// Verifies the batch signature with the sender's bundle, then opens each envelope.
    ///
    /// A bad signature refuses the whole batch; otherwise each envelope is delivered or
    /// refused on its own (replay, expiry, unknown epoch, failed decryption).
    pub fn open(
        &mut self,
        batch: SignedBatchIn,
        sender_bundle: &VerifiedKeyBundle,
        now_ms: u64,
    ) -> Result<OpenedBatch, OpenError> {
        check_signer(sender_bundle, &batch.sender, batch.key_epoch, now_ms)?;
        // A batch of replies (on a reply namespace root) is only ever ours to read.
        let replies = batch.is_replies();
        if replies && batch.channel != namespace::reply_root(&self.me) {
            return Err(OpenError::ForeignReplyNamespace);
        }
        let SignedBatchIn {
            sender,
            channel,
            key_epoch,
            envelopes,
            signature,
        } = batch;
        // Each header is written once: its bytes serve as the hash input and the AEAD's AAD.
        let aads = &mut self.scratch;
        aads.clear();
        let mut spans = Vec::with_capacity(envelopes.len());
        let mut hashes = Vec::with_capacity(envelopes.len() * 32);
        let hasher = HeaderHasher::new(sender.as_str(), channel.as_str());
        for e in &envelopes {
            let start = aads.len();
            write_aad_in(aads, sender.as_str(), channel.as_str(), e);
            spans.push(start..aads.len());
            hashes.extend_from_slice(&hasher.hash(aads, start, &e.ciphertext));
        }
        let input = batch_input(
            sender.as_str(),
            channel.as_str(),
            key_epoch,
            envelopes.len(),
            &hashes,
        );
        verify_ed25519(sender_bundle, &input, &signature)
            .map_err(|()| OpenError::BadBatchSignature)?;

        let mut opened = OpenedBatch {
            delivered: Vec::with_capacity(envelopes.len()),
            rejected: Vec::new(),
        };
        let max_issued = now_ms.saturating_add(self.options.max_clock_skew_ms);
        let sender = Arc::new(sender);
        let channel = Arc::new(channel);
        // A batch of replies on our reply namespace root is read under the root's epochs, and
        // so is a reply channel of ours without epochs of its own, if the sender sent a key for
        // the root.
        let held = self.epochs.get_mut(sender.as_str());
        let scope = match namespace::reply_root_of(&channel) {
            _ if replies => Scope::Root(Channel::clone(&channel)),
            Some(root)
                if namespace::is_reply_channel_of(&self.me, &channel)
                    && !held
                        .as_ref()
                        .is_some_and(|s| s.channels.contains_key(channel.as_str())) =>
            {
                Scope::Root(root)
            }
            _ => Scope::Channel,
        };
        let mut epochs = held.and_then(|s| match &scope {
            Scope::Channel => s.channels.get_mut(channel.as_str()),
            Scope::Root(root) => s.channels.get_mut(root.as_str()),
        });
        // The envelopes of a batch are mostly of one epoch: its state is looked up again only
        // when the epoch changes.
        let mut current: Option<(u64, Option<&mut EpochState>)> = None;
        for (index, (mut e, span)) in envelopes.into_iter().zip(spans).enumerate() {
            let aad = self.scratch.as_bytes().get(span).unwrap_or_default();
            // A reply in a batch of replies is on the channel it names.
            let own = e.channel.take();
            if current.as_ref().is_none_or(|(epoch, _)| *epoch != e.epoch) {
                let state = epochs.as_deref_mut().and_then(|c| c.get_mut(&e.epoch));
                current = Some((e.epoch, state));
            }
            let state = current.as_mut().and_then(|(_, state)| state.as_deref_mut());
            let outcome = open_one(state, aad, e, now_ms, max_issued);
            match outcome {
                Ok((e, payload)) => opened.delivered.push(VerifiedEnvelope {
                    sender: Arc::clone(&sender),
                    channel: own.map_or_else(|| Arc::clone(&channel), Arc::new),
                    epoch: e.epoch,
                    seq: e.seq,
                    message_id: e.message_id,
                    issued_at_ms: e.issued_at_ms,
                    expires_at_ms: e.expires_at_ms,
                    reply_to: e.reply_to,
                    payload,
                }),
                Err(err) => opened.rejected.push((index, err)),
            }
        }
        Ok(opened)
    }

    /// Drops the keys of every epoch of `sender` (revoked, or left the channel): its envelopes
    /// are refused from now on ([`OpenError::Forgotten`]).
    ///
    /// Each epoch stays recorded, without its key, until it expires, so that a replayed sender
    /// key can't bring it back with a fresh replay window; [`Opener::purge_expired`] then frees
    /// it. A sender key of an epoch this opener did not hold is taken as any other: a sender
    /// that comes back does so with a new epoch.
    pub fn forget_sender(&mut self, sender: &Principal) {
        if let Some(of_sender) = self.epochs.get_mut(sender.as_str()) {
            for state in of_sender
                .channels
                .values_mut()
                .flat_map(HashMap::values_mut)
            {
                state.payload = None;
            }
        }
    }

    /// Drops epochs whose sender keys expired longer ago than the clock skew allowed
    /// ([`OpenerOptions::max_clock_skew_ms`]): a receiver's clock set back by up to that much
    /// can't make a dropped epoch's replayed sender key valid again, with an empty replay
    /// window. The next periodic drop, as sender keys are taken, is due a minute later.
    pub fn purge_expired(&mut self, now_ms: u64) {
        let skew = self.options.max_clock_skew_ms;
        let mut removed = 0;
        for of_sender in self.epochs.values_mut() {
            removed += of_sender.purge(now_ms, skew);
        }
        self.epochs.retain(|_, s| !s.channels.is_empty());
        self.held -= removed;
        self.next_purge_ms = now_ms.saturating_add(PURGE_INTERVAL_MS);
    }

    /// [`purge_expired`](Self::purge_expired) for one sender's epochs.
    fn purge_sender(&mut self, sender: &str, now_ms: u64) {
        let skew = self.options.max_clock_skew_ms;
        if let Some(of_sender) = self.epochs.get_mut(sender) {
            self.held -= of_sender.purge(now_ms, skew);
            if of_sender.channels.is_empty() {
                self.epochs.remove(sender);
            }
        }
    }

    /// How many sender-key epochs are held, counting forgotten ones, and expired ones not
    /// dropped yet.
    pub fn epochs_held(&self) -> usize {
        self.held
    }

    fn state(&self, sender: &str, channel: &str, epoch: u64) -> Option<&EpochState> {
        self.epochs.get(sender)?.channels.get(channel)?.get(&epoch)
    }
}

/// Where a batch's epochs were found: under its own channel, or under our reply namespace
/// root.
enum Scope {
    Channel,
    Root(Channel),
}

/// Opens one envelope of a verified batch, whose header bytes are `aad`, under its epoch's
/// payload key (a reply namespace root's, for a reply channel under it).
fn open_one(
    state: Option<&mut EpochState>,
    aad: &[u8],
    mut e: EnvelopeIn,
    now_ms: u64,
    max_issued: u64,
) -> Result<(EnvelopeIn, Vec<u8>), OpenError> {
    if now_ms > e.expires_at_ms {
        return Err(OpenError::Expired);
    }
    if e.issued_at_ms > max_issued {
        return Err(OpenError::NotYetValid);
    }
    let state = state.ok_or(OpenError::UnknownEpoch(e.epoch))?;
    let payload = state.payload.as_ref().ok_or(OpenError::Forgotten)?;
    if e.issued_at_ms > state.expires_at_ms || e.issued_at_ms < state.issued_at_ms {
        return Err(OpenError::EpochExpired);
    }
    state.window.check(e.seq)?;
    let mut ciphertext = std::mem::take(&mut e.ciphertext);
    let len = payload
        .key
        .open_in_place(
            Nonce::assume_unique_for_key(payload.nonce(e.seq)),
            Aad::from(aad),
            &mut ciphertext,
        )
        .map_err(|_| OpenError::Decrypt)?
        .len();
    ciphertext.truncate(len);
    state.window.accept(e.seq);
    Ok((e, ciphertext))
}

// === canonical inputs ===

/// The associated data of an envelope: its header in canonical form (PROTOCOL.md §4.2), on
/// `channel` or, if the envelope names one (a reply in a batch of replies, §5.5), on its own.
pub fn envelope_aad(sender: &str, channel: &str, envelope: &wire::Envelope) -> Vec<u8> {
    let mut c = Canon::default();
    write_aad(&mut c, sender, channel, envelope);
    c.into_bytes()
}

/// An envelope's hash, `hash_i` of PROTOCOL.md §4.4: what the batch signature covers, and what
/// an approval of an envelope held for approval names (§11). Like [`envelope_aad`], on the
/// envelope's own channel if it names one.
pub fn envelope_digest(sender: &str, channel: &str, envelope: &wire::Envelope) -> [u8; 32] {
    let mut c = Canon::with_capacity(hash_room(&envelope.ciphertext));
    write_aad(&mut c, sender, channel, envelope);
    envelope_hash(sha2::Sha256::default(), &mut c, 0, &envelope.ciphertext)
}

/// The bytes a sender signs for a batch (PROTOCOL.md §4.4).
pub fn batch_signing_input(batch: &wire::SignedBatch) -> Vec<u8> {
    let mut c = Canon::with_capacity(
        batch
            .envelopes
            .first()
            .map_or(0, |e| hash_room(&e.ciphertext)),
    );
    let mut hashes = Vec::with_capacity(batch.envelopes.len() * 32);
    let hasher = HeaderHasher::new(&batch.sender, &batch.channel);
    for e in &batch.envelopes {
        write_aad(&mut c, &batch.sender, &batch.channel, e);
        hashes.extend_from_slice(&hasher.hash(&mut c, 0, &e.ciphertext));
    }
    batch_input(
        &batch.sender,
        &batch.channel,
        batch.key_epoch,
        batch.envelopes.len(),
        &hashes,
    )
}

/// The start of every header of `sender` on `channel`, up to the channel.
fn write_header_start(c: &mut Canon, sender: &str, channel: &str) {
    c.label(label::ENVELOPE)
        .u8(SUITE_V1)
        .str(sender)
        .str(channel);
}

#[expect(
    clippy::too_many_arguments,
    reason = "one field of the canonical header each"
)]
fn write_header(
    c: &mut Canon,
    sender: &str,
    channel: &str,
    epoch: u64,
    seq: u64,
    message_id: &[u8],
    issued_at_ms: u64,
    expires_at_ms: u64,
    reply_to: &str,
) {
    write_header_start(c, sender, channel);
    c.u64(epoch)
        .u64(seq)
        .bytes(message_id)
        .u64(issued_at_ms)
        .u64(expires_at_ms)
        .str(reply_to);
}

/// Replaces the buffer's content with the header of `e`, on `channel` (its batch's) or the
/// reply channel it names.
fn write_aad(c: &mut Canon, sender: &str, channel: &str, e: &wire::Envelope) {
    c.clear();
    write_header(
        c,
        sender,
        if e.channel.is_empty() {
            channel
        } else {
            &e.channel
        },
        e.epoch,
        e.seq,
        e.message_id.as_slice(),
        e.issued_at_ms,
        e.expires_at_ms,
        &e.reply_to,
    );
}

/// Appends the header of `e` to the buffer, on `channel` (its batch's) or the reply channel it
/// names.
fn write_aad_in(c: &mut Canon, sender: &str, channel: &str, e: &EnvelopeIn) {
    write_header(
        c,
        sender,
        e.channel.as_ref().map_or(channel, Channel::as_str),
        e.epoch,
        e.seq,
        e.message_id.as_bytes(),
        e.issued_at_ms,
        e.expires_at_ms,
        e.reply_to.as_ref().map_or("", |r| r.as_str()),
    );
}

/// Hashes the headers of one sender on one channel, which all start with the same bytes
/// (label, suite, sender, channel, [`write_header_start`]): SHA-256 takes in the whole 64-byte
/// blocks of that start once, and each envelope's hash goes on from a copy of its state. With
/// IDs of common length that is one block of the seven of a 256-byte message's hash, ~30 ns
/// (docs/BENCHMARKS.md). A header whose start differs within those whole blocks (an envelope
/// on a reply channel of its own in a batch of replies, unless the sender's ID alone fills
/// them) is hashed whole.
#[derive(Clone, Debug)]
struct HeaderHasher {
    /// The whole blocks of the shared start.
    start: Vec<u8>,
    /// SHA-256's state after `start`.
    state: sha2::Sha256,
}

impl HeaderHasher {
    /// SHA-256 block length.
    const BLOCK: usize = 64;

    fn new(sender: &str, channel: &str) -> Self {
        use sha2::Digest as _;
        let mut c = Canon::default();
        write_header_start(&mut c, sender, channel);
        let mut start = c.into_bytes();
        start.truncate(start.len() / Self::BLOCK * Self::BLOCK);
        let state = sha2::Sha256::new_with_prefix(&start);
        Self { start, state }
    }

    /// `hash_i` of the header written to `c` from `from` to its end and `ciphertext`
    /// ([`envelope_hash`]).
    fn hash(&self, c: &mut Canon, from: usize, ciphertext: &[u8]) -> [u8; 32] {
        let header = c.as_bytes().get(from..).unwrap_or_default();
        if header.starts_with(&self.start) {
            envelope_hash(self.state.clone(), c, from + self.start.len(), ciphertext)
        } else {
            envelope_hash(sha2::Sha256::default(), c, from, ciphertext)
        }
    }
}

/// `hash_i` of PROTOCOL.md §4.4, SHA-256(AAD ‖ u32(len(ciphertext)) ‖ ciphertext), of the
/// header written to `c` from `from` to its end, hashed on from `state` (which has taken in
/// the header's bytes before `from`, if any). A ciphertext of up to [`HASHED_IN_ONE_RUN`] bytes
/// is put after the header for the time of the hash and taken off again, so that SHA-256 reads
/// one run of bytes: hashed in two parts, each ending inside a block, a 256-byte message took
/// ~14–22 ns more than with the copy (docs/BENCHMARKS.md). A longer one is hashed in parts: it
/// would gain relatively less, and the buffers a sealer and an opener keep would keep its room.
fn envelope_hash(
    mut state: sha2::Sha256,
    c: &mut Canon,
    from: usize,
    ciphertext: &[u8],
) -> [u8; 32] {
    use sha2::Digest as _;
    let end = c.len();
    if ciphertext.len() <= HASHED_IN_ONE_RUN {
        c.bytes(ciphertext);
        state.update(c.as_bytes().get(from..).unwrap_or_default());
        c.truncate(end);
        return state.finalize().into();
    }
    state.update(c.as_bytes().get(from..).unwrap_or_default());
    state.update(
        u32::try_from(ciphertext.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    state.update(ciphertext);
    state.finalize().into()
}

/// The longest ciphertext [`envelope_hash`] copies after its header.
const HASHED_IN_ONE_RUN: usize = 1024;

/// Room for a header and a ciphertext hashed in one run after it, for a buffer made for one
/// hash: without it, the ciphertext's copy would grow the buffer, and copy the header again.
fn hash_room(ciphertext: &[u8]) -> usize {
    HEADER_ROOM + ciphertext.len().min(HASHED_IN_ONE_RUN) + 4
}

/// Room for a typical envelope header (a header is ~100–200 bytes with IDs of common length).
const HEADER_ROOM: usize = 256;

/// The batch signing input (PROTOCOL.md §4.4): the envelope hashes enter it through one
/// SHA-256 over all of them, so Ed25519 (whose SHA-512 hashes its input twice to sign, once to
/// verify) hashes a short string whatever the batch's length.
fn batch_input(
    sender: &str,
    channel: &str,
    key_epoch: u64,
    count: usize,
    hashes: &[u8],
) -> Vec<u8> {
    use sha2::Digest as _;
    let digest: [u8; 32] = sha2::Sha256::digest(hashes).into();
    let mut c = Canon::new(label::BATCH);
    c.str(sender)
        .str(channel)
        .u64(key_epoch)
        .u32(u32::try_from(count).unwrap_or(u32::MAX))
        .raw(&digest);
    c.into_bytes()
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, bytes).as_ref());
    out
}

/// The epoch after `previous` (0 for none) at `now_ms` (PROTOCOL.md §4.3): the time in
/// milliseconds times 2^16 plus 16 random bits, or `previous + 1` if that is not above it.
/// The random bits keep sealers of one sender that start in the same millisecond (sessions of
/// one identity, each sealing the same channel or reply namespace) from drawing one epoch with
/// two secrets, which every recipient but the first key's would refuse.
fn next_epoch(rng: &SystemRandom, previous: u64, now_ms: u64) -> Result<u64, SealError> {
    let mut low = [0u8; 2];
    rng.fill(&mut low)
        .map_err(|_| SealError::Crypto("random"))?;
    let drawn = now_ms
        .saturating_mul(EPOCH_TIME_SCALE)
        .saturating_add(u64::from(u16::from_be_bytes(low)));
    Ok(drawn.max(previous.saturating_add(1)))
}

/// What an epoch's time in milliseconds is multiplied by: room for 16 random bits.
const EPOCH_TIME_SCALE: u64 = 1 << 16;

fn random_secret(rng: &SystemRandom) -> Result<EpochSecret, SealError> {
    let mut secret = Zeroizing::new([0u8; KEY_LEN]);
    rng.fill(&mut *secret)
        .map_err(|_| SealError::Crypto("random"))?;
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Epochs drawn in one millisecond differ by their random bits and stay within that
    /// millisecond's range; one not above the previous epoch is the previous one plus one; a
    /// later millisecond draws above any earlier one.
    #[test]
    #[expect(clippy::unwrap_used, reason = "a unit test")]
    fn epochs_are_the_time_and_random_bits_and_always_rise() {
        let rng = SystemRandom::new();
        let now = 1_800_000_000_000;
        let drawn: std::collections::HashSet<u64> =
            (0..64).map(|_| next_epoch(&rng, 0, now).unwrap()).collect();
        assert!(drawn.len() > 1, "{drawn:?}");
        let range = now * EPOCH_TIME_SCALE..(now + 1) * EPOCH_TIME_SCALE;
        assert!(drawn.iter().all(|e| range.contains(e)), "{drawn:?}");
        let ahead = (now + 5) * EPOCH_TIME_SCALE;
        assert_eq!(next_epoch(&rng, ahead, now).unwrap(), ahead + 1);
        let later = next_epoch(&rng, range.end - 1, now + 1).unwrap();
        assert!(later >= range.end, "{later}");
        assert_eq!(next_epoch(&rng, u64::MAX - 1, 0).unwrap(), u64::MAX);
    }

    /// Whether the ciphertext is copied after the header or hashed apart, the hash is
    /// SHA-256 of header ‖ u32(length) ‖ ciphertext, and the buffer is left as it was.
    #[test]
    fn envelope_hashes_are_the_same_copied_or_in_parts() {
        use sha2::Digest as _;
        for len in [0, 16, 272, HASHED_IN_ONE_RUN, HASHED_IN_ONE_RUN + 1, 70_000] {
            let ciphertext: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut c = Canon::new("before");
            let start = c.len();
            c.str("a header").u64(7);
            let written = c.as_bytes().to_vec();
            let header = written.get(start..).unwrap_or_default().to_vec();
            let mut whole = header;
            whole.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
            whole.extend_from_slice(&ciphertext);
            let expected: [u8; 32] = sha2::Sha256::digest(&whole).into();
            assert_eq!(
                envelope_hash(sha2::Sha256::default(), &mut c, start, &ciphertext),
                expected,
                "{len}"
            );
            assert_eq!(c.as_bytes(), written, "{len}");
        }
    }

    /// A hash that goes on from the state after the headers' shared start is the hash of the
    /// whole header, whether that start has no whole block or several, short or long
    /// ciphertexts; a header whose start differs within those blocks (another channel, with a
    /// short sender ID) is hashed whole, and one that matches is hashed from the state (a
    /// wrong state shows it); the buffer is left as it was.
    #[test]
    fn headers_hashed_on_from_their_shared_start_hash_as_whole_headers() {
        use sha2::Digest as _;
        let mut starts = Vec::new();
        let mut from_state = 0;
        for sender_len in [1, 26, 30, 100, 200] {
            let sender = "s".repeat(sender_len);
            let hasher = HeaderHasher::new(&sender, "orders.eu");
            starts.push(hasher.start.len());
            let mut wrong = hasher.clone();
            wrong.state = sha2::Sha256::new_with_prefix(b"another start");
            for channel in ["orders.eu", "orders.eu.1", "other"] {
                for len in [272, HASHED_IN_ONE_RUN + 1] {
                    let ciphertext = vec![7u8; len];
                    let mut c = Canon::new("before");
                    let from = c.len();
                    write_header(&mut c, &sender, channel, 1, 2, &[3; 16], 4, 5, "");
                    let written = c.as_bytes().to_vec();
                    let header = written.get(from..).unwrap_or_default();
                    let mut whole = header.to_vec();
                    whole.extend_from_slice(&u32::try_from(len).unwrap_or(0).to_be_bytes());
                    whole.extend_from_slice(&ciphertext);
                    let expected: [u8; 32] = sha2::Sha256::digest(&whole).into();
                    let what = format!("{sender_len} {channel} {len}");
                    assert_eq!(hasher.hash(&mut c, from, &ciphertext), expected, "{what}");
                    assert_eq!(c.as_bytes(), written, "{what}");
                    let used = header.starts_with(&hasher.start);
                    from_state += usize::from(used);
                    assert_eq!(
                        wrong.hash(&mut c, from, &ciphertext) != expected,
                        used,
                        "{what}"
                    );
                }
            }
        }
        assert_eq!(starts, [0, 64, 64, 128, 192]);
        // Both ways were taken: from the state, and whole.
        assert!(from_state > 0 && from_state < 30, "{from_state}");
    }
}
