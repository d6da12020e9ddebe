//! Sender-key epochs: a 32-byte secret per (sender, channel, epoch), wrapped with HPKE
//! (RFC 9180 base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM) to each
//! recipient's X25519 key, the whole list signed by the sender (PROTOCOL.md §5).

use aws_lc_rs::{
    aead::{AES_256_GCM, LessSafeKey, UnboundKey},
    hkdf::{HKDF_SHA256, KeyType, Prk},
    hmac,
};
use entente_types::{Channel, Principal};
use entente_wire as wire;
use hpke::{
    Deserializable, OpModeR, OpModeS, Serializable, aead::AesGcm256, kdf::HkdfSha256,
    kem::X25519HkdfSha256,
};
use zeroize::Zeroizing;

use crate::{
    KEY_LEN, MessageKeys, VerifiedKeyBundle,
    canon::{Canon, label},
    envelope::{OpenError, SealError},
};

/// The sender-key format version.
pub(crate) const SENDER_KEY_VERSION: u32 = 1;

/// An epoch secret, wiped on drop.
pub(crate) type EpochSecret = Zeroizing<[u8; KEY_LEN]>;

/// The AES-256-GCM key and base IV derived from an epoch secret, for the channel its sender
/// key names: one per epoch, which a reply namespace root's epoch uses for every reply channel
/// under the root (PROTOCOL.md §4.1, §5.4).
#[derive(Debug)]
pub(crate) struct PayloadKey {
    pub(crate) key: LessSafeKey,
    pub(crate) iv: [u8; 12],
}

impl PayloadKey {
    /// HKDF-SHA256: PRK = Extract(salt = empty, secret); key and IV expanded with labels bound
    /// to (sender, channel, epoch).
    pub(crate) fn derive(
        secret: &[u8; KEY_LEN],
        sender: &str,
        channel: &str,
        epoch: u64,
    ) -> Result<Self, aws_lc_rs::error::Unspecified> {
        let (key, iv) = Self::derive_raw(secret, sender, channel, epoch)?;
        let key = Zeroizing::new(key);
        Ok(Self {
            key: LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &*key)?),
            iv,
        })
    }

    /// The raw key and IV (the caller wipes the key).
    pub(crate) fn derive_raw(
        secret: &[u8; KEY_LEN],
        sender: &str,
        channel: &str,
        epoch: u64,
    ) -> Result<([u8; 32], [u8; 12]), aws_lc_rs::error::Unspecified> {
        // Extracted here rather than by `Salt::extract`, whose PRK extracts again at each
        // expansion. aws-lc-rs' `Prk` is wiped on drop.
        let mut prk = Zeroizing::new([0u8; KEY_LEN]);
        hmac::sign_to_buffer(&hmac::Key::new(hmac::HMAC_SHA256, &[]), secret, &mut *prk)?;
        let prk = Prk::new_less_safe(HKDF_SHA256, &*prk);
        // The two `info` strings differ only in their labels: the context after them is
        // written once (two length prefixes and the epoch, sized once).
        let mut ctx = Canon::with_capacity(sender.len() + channel.len() + 16);
        ctx.str(sender).str(channel).u64(epoch);
        let info = |label: &'static str| [label.as_bytes(), &[0], ctx.as_bytes()];
        let mut key = [0u8; 32];
        prk.expand(&info(label::PAYLOAD_KEY), Len(32))?
            .fill(&mut key)?;
        let mut iv = [0u8; 12];
        prk.expand(&info(label::PAYLOAD_IV), Len(12))?
            .fill(&mut iv)?;
        Ok((key, iv))
    }

    /// The nonce of sequence number `seq`: the IV XOR the big-endian seq in its last 8 bytes.
    pub(crate) fn nonce(&self, seq: u64) -> [u8; 12] {
        let mut nonce = self.iv;
        for (n, s) in nonce.iter_mut().skip(4).zip(seq.to_be_bytes()) {
            *n ^= s;
        }
        nonce
    }
}

/// A decoded sender key whose signature has not been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderKeyIn {
    sender: Principal,
    channel: Channel,
    wire: wire::SenderKey,
}

impl SenderKeyIn {
    /// Decodes protobuf bytes (bounded by `limits`).
    pub fn decode(bytes: &[u8], limits: &wire::Limits) -> Result<Self, OpenError> {
        Self::from_wire(wire::decode(bytes, limits)?)
    }

    /// Checks field formats of an already decoded sender key.
    pub fn from_wire(wire: wire::SenderKey) -> Result<Self, OpenError> {
        if wire.version != SENDER_KEY_VERSION {
            return Err(OpenError::UnsupportedVersion(wire.version));
        }
        if wire.expires_at_ms < wire.issued_at_ms {
            return Err(OpenError::Malformed(
                "sender key expires before it is issued",
            ));
        }
        if wire.signature.len() != 64 {
            return Err(OpenError::Malformed("signature length"));
        }
        for r in &wire.recipients {
            if r.enc.len() != KEY_LEN || r.ciphertext.len() != KEY_LEN + 16 {
                return Err(OpenError::Malformed("wrapped key length"));
            }
        }
        Ok(Self {
            sender: Principal::parse(&wire.sender)?,
            channel: Channel::parse(&wire.channel)?,
            wire,
        })
    }

    /// The claimed sender.
    pub fn sender(&self) -> &Principal {
        &self.sender
    }

    /// The channel.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// The sender-key epoch.
    pub fn epoch(&self) -> u64 {
        self.wire.epoch
    }

    /// The recipients the secret is wrapped to.
    pub fn recipients(&self) -> impl Iterator<Item = &str> {
        self.wire.recipients.iter().map(|r| r.recipient.as_str())
    }

    /// The wire form, to forward.
    pub fn to_wire(&self) -> &wire::SenderKey {
        &self.wire
    }

    /// Checks the sender's signature and unwraps the secret addressed to `me`.
    pub(crate) fn open(
        &self,
        sender_bundle: &VerifiedKeyBundle,
        me: &Principal,
        my_key_epoch: u64,
        my_keys: &MessageKeys,
        now_ms: u64,
    ) -> Result<EpochSecret, OpenError> {
        check_signer(sender_bundle, &self.sender, self.wire.key_epoch, now_ms)?;
        let input = sender_key_signing_input(&self.wire);
        verify_ed25519(sender_bundle, &input, &self.wire.signature)
            .map_err(|()| OpenError::BadSenderKeySignature)?;
        if now_ms > self.wire.expires_at_ms {
            return Err(OpenError::EpochExpired);
        }
        // The entry naming `me` at its current bundle epoch: a sender may also wrap to an
        // older bundle of the same principal (while a new one spreads), listed first.
        let wrapped = self
            .wire
            .recipients
            .iter()
            .find(|r| r.recipient == me.as_str() && r.recipient_key_epoch == my_key_epoch)
            .ok_or(OpenError::NotARecipient)?;
        let enc = <X25519HkdfSha256 as hpke::Kem>::EncappedKey::from_bytes(&wrapped.enc)
            .map_err(|_| OpenError::Malformed("encapsulated key"))?;
        let info = hpke_info(self.sender.as_str(), self.channel.as_str(), self.wire.epoch);
        let aad = wrap_aad(me.as_str(), my_key_epoch);
        let plain = Zeroizing::new(
            hpke::single_shot_open::<AesGcm256, HkdfSha256, X25519HkdfSha256>(
                &OpModeR::Base,
                my_keys.x25519_secret(),
                &enc,
                info.as_bytes(),
                &wrapped.ciphertext,
                aad.as_bytes(),
            )
            .map_err(|_| OpenError::Unwrap)?,
        );
        let mut secret = Zeroizing::new([0u8; KEY_LEN]);
        if plain.len() != KEY_LEN {
            return Err(OpenError::Unwrap);
        }
        secret.copy_from_slice(&plain);
        Ok(secret)
    }

    pub(crate) fn issued_at_ms(&self) -> u64 {
        self.wire.issued_at_ms
    }

    pub(crate) fn expires_at_ms(&self) -> u64 {
        self.wire.expires_at_ms
    }
}

/// Everything a sealer needs to build a sender key.
#[derive(Debug)]
pub(crate) struct NewSenderKey<'a> {
    pub(crate) sender: &'a str,
    pub(crate) channel: &'a str,
    pub(crate) epoch: u64,
    pub(crate) issued_at_ms: u64,
    pub(crate) expires_at_ms: u64,
    pub(crate) key_epoch: u64,
}

impl NewSenderKey<'_> {
    /// Wraps `secret` to every recipient and signs the result.
    pub(crate) fn seal(
        &self,
        secret: &[u8; KEY_LEN],
        recipients: &[VerifiedKeyBundle],
        keys: &MessageKeys,
        now_ms: u64,
    ) -> Result<wire::SenderKey, SealError> {
        let info = hpke_info(self.sender, self.channel, self.epoch);
        let mut wrapped = Vec::with_capacity(recipients.len());
        for bundle in recipients {
            if !bundle.is_valid_at(now_ms) {
                return Err(SealError::RecipientExpired(bundle.principal().to_string()));
            }
            let pk = <X25519HkdfSha256 as hpke::Kem>::PublicKey::from_bytes(
                &bundle.body().x25519_public,
            )
            .map_err(|_| SealError::Crypto("recipient key"))?;
            let aad = wrap_aad(bundle.principal().as_str(), bundle.epoch());
            let (enc, ciphertext) =
                hpke::single_shot_seal::<AesGcm256, HkdfSha256, X25519HkdfSha256, _>(
                    &OpModeS::Base,
                    &pk,
                    info.as_bytes(),
                    secret,
                    aad.as_bytes(),
                    &mut rand_core::UnwrapErr(rand_core::OsRng),
                )
                .map_err(|_| SealError::Crypto("hpke seal"))?;
            wrapped.push(wire::WrappedKey {
                recipient: bundle.principal().as_str().to_owned(),
                recipient_key_epoch: bundle.epoch(),
                enc: enc.to_bytes().to_vec(),
                ciphertext,
            });
        }
        let mut out = wire::SenderKey {
            version: SENDER_KEY_VERSION,
            sender: self.sender.to_owned(),
            channel: self.channel.to_owned(),
            epoch: self.epoch,
            issued_at_ms: self.issued_at_ms,
            expires_at_ms: self.expires_at_ms,
            key_epoch: self.key_epoch,
            recipients: wrapped,
            signature: Vec::new(),
        };
        out.signature = keys.sign(&sender_key_signing_input(&out)).to_vec();
        Ok(out)
    }
}

/// The exact bytes a sender signs for a sender key (PROTOCOL.md §5.3).
pub fn sender_key_signing_input(sk: &wire::SenderKey) -> Vec<u8> {
    let mut c = Canon::new(label::SENDER_KEY);
    c.u32(sk.version)
        .str(&sk.sender)
        .str(&sk.channel)
        .u64(sk.epoch)
        .u64(sk.issued_at_ms)
        .u64(sk.expires_at_ms)
        .u64(sk.key_epoch)
        .u32(u32::try_from(sk.recipients.len()).unwrap_or(u32::MAX));
    for r in &sk.recipients {
        c.str(&r.recipient)
            .u64(r.recipient_key_epoch)
            .bytes(&r.enc)
            .bytes(&r.ciphertext);
    }
    c.into_bytes()
}

/// Checks that `bundle` is the sender's, of the signing key epoch, and valid now.
pub(crate) fn check_signer(
    bundle: &VerifiedKeyBundle,
    sender: &Principal,
    key_epoch: u64,
    now_ms: u64,
) -> Result<(), OpenError> {
    if bundle.principal() != sender {
        return Err(OpenError::WrongSenderBundle);
    }
    if bundle.epoch() != key_epoch {
        return Err(OpenError::KeyEpochMismatch {
            expected: bundle.epoch(),
            got: key_epoch,
        });
    }
    if !bundle.is_valid_at(now_ms) {
        return Err(OpenError::SenderBundleExpired);
    }
    Ok(())
}

pub(crate) fn verify_ed25519(
    bundle: &VerifiedKeyBundle,
    message: &[u8],
    signature: &[u8],
) -> Result<(), ()> {
    aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::ED25519,
        &bundle.body().ed25519_public,
    )
    .verify(message, signature)
    .map_err(|_| ())
}

fn context(label: &str, sender: &str, channel: &str, epoch: u64) -> Canon {
    let mut c = Canon::new(label);
    c.str(sender).str(channel).u64(epoch);
    c
}

fn hpke_info(sender: &str, channel: &str, epoch: u64) -> Canon {
    context(label::SENDER_KEY, sender, channel, epoch)
}

fn wrap_aad(recipient: &str, recipient_key_epoch: u64) -> Canon {
    let mut c = Canon::new(label::WRAP_AAD);
    c.str(recipient).u64(recipient_key_epoch);
    c
}

struct Len(usize);

impl KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use aws_lc_rs::hkdf::Salt;

    use super::*;

    #[test]
    fn the_payload_key_is_hkdf_with_an_empty_salt_extracted_once() {
        let secret = [7u8; KEY_LEN];
        let (sender, channel, epoch) = ("spiffe://td/agent/s/a", "orders.eu", 9);
        let (key, iv) = PayloadKey::derive_raw(&secret, sender, channel, epoch).unwrap();
        // The textbook form: extract and expand per output, through aws-lc-rs' HKDF.
        let prk = Salt::new(HKDF_SHA256, &[]).extract(&secret);
        let expand = |label: &str, out: &mut [u8]| {
            let info = context(label, sender, channel, epoch);
            prk.expand(&[info.as_bytes()], Len(out.len()))
                .unwrap()
                .fill(out)
                .unwrap();
        };
        let (mut want_key, mut want_iv) = ([0u8; 32], [0u8; 12]);
        expand(label::PAYLOAD_KEY, &mut want_key);
        expand(label::PAYLOAD_IV, &mut want_iv);
        assert_eq!((key, iv), (want_key, want_iv));
        let other = PayloadKey::derive_raw(&secret, sender, "orders.us", epoch).unwrap();
        assert_ne!(other.0, key);
        assert_ne!(
            PayloadKey::derive_raw(&secret, sender, channel, epoch + 1)
                .unwrap()
                .0,
            key
        );
    }
}
