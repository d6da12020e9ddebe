//! Deterministic sealing, for test vectors and other implementations' conformance tests.
//!
//! DANGER: these functions take the epoch secret and sequence number from the caller. Sealing
//! two payloads with the same secret and sequence number reuses an AES-GCM nonce and destroys
//! confidentiality and integrity. Applications use [`crate::Sealer`], which never does.

use aws_lc_rs::aead::{Aad, Nonce};
use entente_wire as wire;

use crate::{KEY_LEN, SealError, envelope::envelope_aad, sender_key::PayloadKey};

/// The AES-256-GCM key and base IV that an epoch secret yields (PROTOCOL.md §4.1).
pub fn danger_payload_key_and_iv(
    secret: &[u8; KEY_LEN],
    sender: &str,
    channel: &str,
    epoch: u64,
) -> Result<([u8; 32], [u8; 12]), SealError> {
    PayloadKey::derive_raw(secret, sender, channel, epoch)
        .map_err(|_| SealError::Crypto("key derivation"))
}

/// Seals `payload` into `envelope.ciphertext` on `channel` with the given epoch secret of a
/// sender key for `scope`: the same channel, or the reply namespace root of a reply channel
/// (PROTOCOL.md §5.4). The envelope's other fields must already be set.
pub fn danger_seal_with_secret(
    secret: &[u8; KEY_LEN],
    sender: &str,
    scope: &str,
    channel: &str,
    envelope: &mut wire::Envelope,
    payload: &[u8],
) -> Result<(), SealError> {
    let key = PayloadKey::derive(secret, sender, scope, envelope.epoch)
        .map_err(|_| SealError::Crypto("key derivation"))?;
    let aad = envelope_aad(sender, channel, envelope);
    envelope.ciphertext = payload.to_vec();
    key.key
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(key.nonce(envelope.seq)),
            Aad::from(aad.as_slice()),
            &mut envelope.ciphertext,
        )
        .map_err(|_| SealError::Crypto("seal"))
}

/// A sealer as [`crate::Sealer::new`] makes one (a fresh random secret), but on `epoch` rather
/// than on one it draws: for tests of what receivers do with two secrets for one epoch of a
/// sender, which a sealer draws once in 65 536 times at most (PROTOCOL.md §4.3).
#[expect(
    clippy::too_many_arguments,
    reason = "those of `Sealer::new`, and the epoch"
)]
pub fn danger_sealer_on_epoch(
    sender: entente_types::Principal,
    key_epoch: u64,
    keys: std::sync::Arc<crate::MessageKeys>,
    channel: entente_types::Channel,
    recipients: &[crate::VerifiedKeyBundle],
    options: crate::SealerOptions,
    now_ms: u64,
    epoch: u64,
) -> Result<(crate::Sealer, wire::SenderKey), SealError> {
    crate::Sealer::on_epoch(
        (sender, key_epoch, keys),
        channel,
        recipients,
        options,
        now_ms,
        epoch,
    )
}

/// Signs a batch whose envelopes are already sealed, with `keys`.
pub fn danger_sign_batch(keys: &crate::MessageKeys, batch: &mut wire::SignedBatch) {
    batch.signature = keys.sign(&crate::batch_signing_input(batch)).to_vec();
}
