#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::{Agent, DAY, NOW, TestCa};
use entente_crypto::{
    BundleError, KeyBundleBody, KeyBundleIn, OpenError, ReplayError, SealError, Sealer,
    SealerOptions, SenderKeyIn, SignedBatchIn, danger,
};
use entente_wire as wire;
use proptest::prelude::*;

struct Pair {
    alice: Agent,
    bob: Agent,
    sealer: Sealer,
    sender_key: wire::SenderKey,
}

fn pair() -> Pair {
    let ca = TestCa::new();
    let alice = Agent::new(&ca, "alice");
    let bob = Agent::new(&ca, "bob");
    let (sealer, sender_key) = alice.sealer("orders.eu", &[&bob]);
    Pair {
        alice,
        bob,
        sealer,
        sender_key,
    }
}

fn deliver(
    p: &Pair,
    opener: &mut entente_crypto::Opener,
    batch: wire::SignedBatch,
    now: u64,
) -> Result<entente_crypto::OpenedBatch, OpenError> {
    let bytes = wire::encode(&batch);
    let batch = SignedBatchIn::decode(&bytes, &wire::Limits::default())?;
    opener.open(batch, &p.alice.bundle, now)
}

fn accept_key(p: &Pair, opener: &mut entente_crypto::Opener) {
    let sk = SenderKeyIn::from_wire(p.sender_key.clone()).unwrap();
    opener.accept_sender_key(&sk, &p.alice.bundle, NOW).unwrap();
}

#[test]
fn seal_then_open_a_batch() {
    let mut p = pair();
    let mut opener = p.bob.opener();
    accept_key(&p, &mut opener);
    let reply: entente_types::Channel = "_reply.ops.alice".parse().unwrap();
    let batch = p
        .sealer
        .seal_batch(&[b"one", b"two", b""], Some(&reply), NOW)
        .unwrap();
    let opened = deliver(&p, &mut opener, batch, NOW).unwrap();
    assert!(opened.rejected.is_empty());
    let payloads: Vec<_> = opened
        .delivered
        .iter()
        .map(|e| e.payload().to_vec())
        .collect();
    assert_eq!(payloads, [b"one".to_vec(), b"two".to_vec(), Vec::new()]);
    let first = &opened.delivered[0];
    assert_eq!(first.sender(), &p.alice.id);
    assert_eq!(first.channel().as_str(), "orders.eu");
    assert_eq!(first.reply_to(), Some(&reply));
    assert_eq!(first.seq(), 0);
    assert_eq!(opened.delivered[2].seq(), 2);
}

#[test]
fn envelopes_sealed_one_by_one_sign_as_a_batch() {
    let mut p = pair();
    let mut opener = p.bob.opener();
    accept_key(&p, &mut opener);
    let envelopes = (0..5)
        .map(|i| {
            p.sealer
                .seal(format!("m{i}").as_bytes(), None, NOW)
                .unwrap()
        })
        .collect();
    let batch = p.sealer.sign(envelopes).unwrap();
    let opened = deliver(&p, &mut opener, batch, NOW).unwrap();
    assert_eq!(opened.delivered.len(), 5);
    assert_eq!(opened.delivered[4].payload(), b"m4");
}

#[test]
fn the_hub_sees_headers_but_not_payloads() {
    let mut p = pair();
    let batch = p
        .sealer
        .seal_batch(&[b"top secret payload"], None, NOW)
        .unwrap();
    let bytes = wire::encode(&batch);
    assert!(!bytes.windows(6).any(|w| w == b"secret"));
    let parsed = SignedBatchIn::decode(&bytes, &wire::Limits::default()).unwrap();
    assert_eq!(parsed.sender(), &p.alice.id);
    assert_eq!(parsed.envelopes()[0].seq(), 0);
}

#[test]
fn tampered_ciphertext_is_refused() {
    let mut p = pair();
    let mut opener = p.bob.opener();
    accept_key(&p, &mut opener);
    let mut batch = p.sealer.seal_batch(&[b"hello"], None, NOW).unwrap();
    batch.envelopes[0].ciphertext[0] ^= 1;
    assert_eq!(
        deliver(&p, &mut opener, batch, NOW).unwrap_err(),
        OpenError::BadBatchSignature
    );
}

#[test]
fn tampered_header_is_refused() {
    let mut p = pair();
    let mut opener = p.bob.opener();
    accept_key(&p, &mut opener);
    let mut batch = p.sealer.seal_batch(&[b"hello"], None, NOW).unwrap();
    batch.envelopes[0].expires_at_ms += 1;
    assert_eq!(
        deliver(&p, &mut opener, batch, NOW).unwrap_err(),
        OpenError::BadBatchSignature
    );
}

#[test]
fn tampered_signature_is_refused() {
    let mut p = pair();
    let mut opener = p.bob.opener();
    accept_key(&p, &mut opener);
    let mut batch = p.sealer.seal_batch(&[b"hello"], None, NOW).unwrap();
    batch.signature[10] ^= 0x80;
    assert_eq!(
        deliver(&p, &mut opener, batch, NOW).unwrap_err(),
        OpenError::BadBatchSignature
    );
}

#[test]
fn a_forged_sender_is_refused() {
    // Mallory signs with her own key but claims to be Alice.
    let mut p = pair();
    let ca_mallory = TestCa::new();
    let mallory = Agent::new(&ca_mallory, "alice");
    let (mut forged, _) = mallory.sealer("orders.eu", &[&p.bob]);
    let mut opener = p.bob.opener();
    accept_key(&p, &mut opener);
    let batch = forged.seal_batch(&[b"pay mallory"], None, NOW).unwrap();
    assert_eq!(
        deliver(&p, &mut opener, batch, NOW).unwrap_err(),
        OpenError::BadBatchSignature
    );
    // And a bundle that is not the claimed sender's is refused before any crypto.
    let batch = p.sealer.seal_batch(&[b"x"], None, NOW).unwrap();
    let parsed = SignedBatchIn::from_wire(batch).unwrap();
    assert_eq!(
        opener.open(parsed, &p.bob.bundle, NOW).unwrap_err(),
        OpenError::WrongSenderBundle
    );
}

#[test]
fn a_batch_signature_verifies_without_opening_and_not_once_changed() {
    let mut p = pair();
    let batch = p.sealer.seal_batch(&[b"pay 42"], None, NOW).unwrap();
    let genuine = SignedBatchIn::from_wire(batch.clone()).unwrap();
    genuine.verify_signature(&p.alice.bundle, NOW).unwrap();
    assert_eq!(
        genuine.verify_signature(&p.bob.bundle, NOW).unwrap_err(),
        OpenError::WrongSenderBundle
    );
    let mut changed = batch.clone();
    changed.envelopes[0].ciphertext[0] ^= 1;
    let changed = SignedBatchIn::from_wire(changed).unwrap();
    assert_eq!(
        changed.verify_signature(&p.alice.bundle, NOW).unwrap_err(),
        OpenError::BadBatchSignature
    );
    let mut later = batch;
    later.envelopes[0].expires_at_ms += 1;
    let later = SignedBatchIn::from_wire(later).unwrap();
    assert_eq!(
        later.verify_signature(&p.alice.bundle, NOW).unwrap_err(),
        OpenError::BadBatchSignature
    );
}

/// A batch signed the way an earlier draft of version 1 signed batches — over the envelope
/// hashes themselves, under the label `entente/v1/batch` (PROTOCOL.md §4.4, §10) — is refused
/// with `BadBatchSignature`, by the signature check alone and by the opener, although its
/// signature is the sender's own over that input.
#[test]
fn a_batch_signed_over_the_hash_list_is_refused() {
    use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};

    let mut p = pair();
    let sealed = p
        .sealer
        .seal_batch(&[b"pay 42", b"pay 43"], None, NOW)
        .unwrap();
    // The earlier input: label, sender, channel, key epoch, count, then each envelope's hash.
    let mut input = b"entente/v1/batch\0".to_vec();
    for field in [sealed.sender.as_bytes(), sealed.channel.as_bytes()] {
        input.extend_from_slice(&u32::try_from(field.len()).unwrap().to_be_bytes());
        input.extend_from_slice(field);
    }
    input.extend_from_slice(&sealed.key_epoch.to_be_bytes());
    input.extend_from_slice(&u32::try_from(sealed.envelopes.len()).unwrap().to_be_bytes());
    for envelope in &sealed.envelopes {
        input.extend_from_slice(&entente_crypto::envelope_digest(
            &sealed.sender,
            &sealed.channel,
            envelope,
        ));
    }
    let secret = p.alice.keys.to_secret_bytes().unwrap();
    let signer = Ed25519KeyPair::from_seed_unchecked(&secret[..32]).unwrap();
    assert_eq!(
        signer.public_key().as_ref(),
        p.alice.keys.ed25519_public().as_slice()
    );
    let mut old = sealed.clone();
    old.signature = signer.sign(&input).as_ref().to_vec();
    UnparsedPublicKey::new(&ED25519, p.alice.keys.ed25519_public())
        .verify(&input, &old.signature)
        .expect("the sender's own signature over the earlier input");

    let checked = SignedBatchIn::from_wire(old.clone()).unwrap();
    assert_eq!(
        checked.verify_signature(&p.alice.bundle, NOW).unwrap_err(),
        OpenError::BadBatchSignature
    );
    let mut opener = p.bob.opener();
    accept_key(&p, &mut opener);
    assert_eq!(
        deliver(&p, &mut opener, old, NOW).unwrap_err(),
        OpenError::BadBatchSignature
    );
    // The same envelopes as sealed, signed over the current input, open.
    let opened = deliver(&p, &mut opener, sealed, NOW).unwrap();
    assert_eq!(opened.delivered.len(), 2);
    assert!(opened.rejected.is_empty());
}

#[test]
fn a_replayed_sequence_is_refused() {
    let mut p = pair();
    let mut opener = p.bob.opener();
    accept_key(&p, &mut opener);
    let batch = p.sealer.seal_batch(&[b"a", b"b"], None, NOW).unwrap();
    assert_eq!(
        deliver(&p, &mut opener, batch.clone(), NOW)
            .unwrap()
            .delivered
            .len(),
        2
    );
    let again = deliver(&p, &mut opener, batch, NOW).unwrap();
    assert!(again.delivered.is_empty());
    assert_eq!(
        again.rejected,
        [
            (0, OpenError::Replay(ReplayError::Duplicate(0))),
            (1, OpenError::Replay(ReplayError::Duplicate(1)))
        ]
    );
}

#[test]
fn an_expired_envelope_is_refused() {
    let mut p = pair();
    let mut opener = p.bob.opener();
    accept_key(&p, &mut opener);
    let batch = p.sealer.seal_batch(&[b"late"], None, NOW).unwrap();
    let ttl = SealerOptions::default().message_ttl_ms;
    let opened = deliver(&p, &mut opener, batch, NOW + ttl + 1).unwrap();
    assert_eq!(opened.rejected, [(0, OpenError::Expired)]);
}

#[test]
fn an_envelope_from_the_future_is_refused() {
    let mut p = pair();
    let mut opener = p.bob.opener();
    accept_key(&p, &mut opener);
    let batch = p
        .sealer
        .seal_batch(&[b"early"], None, NOW + 120_000)
        .unwrap();
    let opened = deliver(&p, &mut opener, batch, NOW).unwrap();
    assert_eq!(opened.rejected, [(0, OpenError::NotYetValid)]);
}

#[test]
fn a_non_recipient_cannot_unwrap_or_read() {
    let mut p = pair();
    let ca = TestCa::new();
    let eve = Agent::new(&ca, "eve");
    let mut opener = eve.opener();
    let sk = SenderKeyIn::from_wire(p.sender_key.clone()).unwrap();
    assert_eq!(
        opener
            .accept_sender_key(&sk, &p.alice.bundle, NOW)
            .unwrap_err(),
        OpenError::NotARecipient
    );
    let batch = p.sealer.seal_batch(&[b"hello"], None, NOW).unwrap();
    let opened = deliver(&p, &mut opener, batch, NOW).unwrap();
    assert!(matches!(
        opened.rejected[..],
        [(0, OpenError::UnknownEpoch(_))]
    ));
}

/// A sender key wrapped to two bundles of one recipient (an older one listed first, as while
/// a new bundle spreads) opens with the keys of either, each by its own entry.
#[test]
fn a_recipient_finds_its_entry_at_its_current_bundle_epoch() {
    let ca = TestCa::new();
    let alice = Agent::new(&ca, "alice");
    let old = Agent::new(&ca, "bob");
    let keys = entente_crypto::MessageKeys::generate().unwrap();
    let body = entente_crypto::KeyBundleBody {
        principal: old.id.clone(),
        ed25519_public: keys.ed25519_public(),
        x25519_public: keys.x25519_public(),
        epoch: 2,
        not_before_ms: NOW - DAY,
        not_after_ms: NOW + DAY,
    };
    let new_bundle = entente_crypto::KeyBundleIn::from_wire(ca.sign_bundle(body))
        .unwrap()
        .verify(&ca.authority, NOW)
        .unwrap();
    let (mut sealer, sender_key) = entente_crypto::Sealer::new(
        alice.id.clone(),
        1,
        alice.keys.clone(),
        "orders.eu".parse().unwrap(),
        &[old.bundle.clone(), new_bundle],
        Default::default(),
        NOW,
    )
    .unwrap();
    let batch = sealer.seal_batch(&[b"to bob"], None, NOW).unwrap();
    let openers = [
        old.opener(),
        entente_crypto::Opener::new(
            old.id.clone(),
            2,
            std::sync::Arc::new(keys),
            Default::default(),
        ),
    ];
    for mut opener in openers {
        let sk = SenderKeyIn::from_wire(sender_key.clone()).unwrap();
        opener.accept_sender_key(&sk, &alice.bundle, NOW).unwrap();
        let bytes = wire::encode(&batch);
        let batch = SignedBatchIn::decode(&bytes, &wire::Limits::default()).unwrap();
        let opened = opener.open(batch, &alice.bundle, NOW).unwrap();
        assert!(opened.rejected.is_empty(), "{:?}", opened.rejected);
        assert_eq!(opened.delivered[0].payload(), b"to bob");
    }
}

/// A clock that steps back before the epoch began asks for a new epoch (whose epoch number
/// still rises) rather than sealing envelopes issued before their sender key, which every
/// recipient would refuse.
#[test]
fn a_clock_gone_back_asks_for_a_new_epoch() {
    let mut p = pair();
    let back = NOW - 60_000;
    assert!(!p.sealer.needs_rotation(NOW));
    assert!(p.sealer.needs_rotation(back));
    assert_eq!(
        p.sealer.seal(b"early", None, back).unwrap_err(),
        SealError::EpochExhausted
    );
    let first = p.sealer.epoch();
    let sender_key = p
        .sealer
        .rotate(std::slice::from_ref(&p.bob.bundle), back)
        .unwrap();
    assert!(p.sealer.epoch() > first);
    let mut opener = p.bob.opener();
    let sk = SenderKeyIn::from_wire(sender_key).unwrap();
    opener
        .accept_sender_key(&sk, &p.alice.bundle, back)
        .unwrap();
    let batch = p.sealer.seal_batch(&[b"late"], None, back).unwrap();
    let opened = deliver(&p, &mut opener, batch, back).unwrap();
    assert!(opened.rejected.is_empty(), "{:?}", opened.rejected);
}

#[test]
fn a_wrapped_key_moved_to_another_recipient_fails_to_unwrap() {
    let p = pair();
    let ca = TestCa::new();
    let eve = Agent::new(&ca, "eve");
    let mut sk = p.sender_key.clone();
    sk.recipients[0].recipient = eve.id.as_str().to_owned();
    // The sender signed the original list, so the signature catches the edit first.
    let parsed = SenderKeyIn::from_wire(sk).unwrap();
    assert_eq!(
        eve.opener()
            .accept_sender_key(&parsed, &p.alice.bundle, NOW)
            .unwrap_err(),
        OpenError::BadSenderKeySignature
    );
}

#[test]
fn rotation_excludes_a_removed_member() {
    let ca = TestCa::new();
    let alice = Agent::new(&ca, "alice");
    let bob = Agent::new(&ca, "bob");
    let carol = Agent::new(&ca, "carol");
    let (mut sealer, first) = alice.sealer("team", &[&bob, &carol]);
    let mut carol_opener = carol.opener();
    let sk = SenderKeyIn::from_wire(first).unwrap();
    carol_opener
        .accept_sender_key(&sk, &alice.bundle, NOW)
        .unwrap();

    let second = sealer
        .rotate(std::slice::from_ref(&bob.bundle), NOW + 1)
        .unwrap();
    assert!(sealer.epoch() > sk.epoch());
    let sk2 = SenderKeyIn::from_wire(second).unwrap();
    assert_eq!(
        carol_opener
            .accept_sender_key(&sk2, &alice.bundle, NOW + 1)
            .unwrap_err(),
        OpenError::NotARecipient
    );
    let batch = sealer
        .seal_batch(&[b"after carol left"], None, NOW + 1)
        .unwrap();
    let opened = carol_opener
        .open(
            SignedBatchIn::from_wire(batch).unwrap(),
            &alice.bundle,
            NOW + 1,
        )
        .unwrap();
    assert!(opened.delivered.is_empty());
    assert!(matches!(
        opened.rejected[..],
        [(0, OpenError::UnknownEpoch(_))]
    ));
}

#[test]
fn a_conflicting_sender_key_for_a_known_epoch_is_refused() {
    let mut p = pair();
    let mut opener = p.bob.opener();
    accept_key(&p, &mut opener);
    accept_key(&p, &mut opener); // the same key twice is fine
    // A second sealer on the same epoch number, with a secret of its own.
    let (_, other) = p
        .alice
        .sealer_on_epoch("orders.eu", &[&p.bob], p.sealer.epoch());
    let sk = SenderKeyIn::from_wire(other).unwrap();
    assert_eq!(
        opener
            .accept_sender_key(&sk, &p.alice.bundle, NOW)
            .unwrap_err(),
        OpenError::EpochConflict
    );
    let _ = p.sealer.seal(b"x", None, NOW).unwrap();
}

#[test]
fn an_exhausted_epoch_must_rotate() {
    let ca = TestCa::new();
    let alice = Agent::new(&ca, "alice");
    let bob = Agent::new(&ca, "bob");
    let options = SealerOptions {
        epoch_max_messages: 2,
        ..SealerOptions::default()
    };
    let (mut sealer, _) = Sealer::new(
        alice.id.clone(),
        1,
        alice.keys.clone(),
        "c".parse().unwrap(),
        std::slice::from_ref(&bob.bundle),
        options,
        NOW,
    )
    .unwrap();
    sealer.seal_batch(&[b"1", b"2"], None, NOW).unwrap();
    assert_eq!(
        sealer.seal(b"3", None, NOW).unwrap_err(),
        SealError::EpochExhausted
    );
    assert!(sealer.needs_rotation(NOW));
    sealer
        .rotate(std::slice::from_ref(&bob.bundle), NOW)
        .unwrap();
    sealer.seal(b"3", None, NOW).unwrap();
    assert!(sealer.needs_rotation(NOW + options.epoch_max_age_ms));
}

#[test]
fn a_forgotten_sender_cannot_be_replayed_back() {
    let mut p = pair();
    let mut opener = p.bob.opener();
    accept_key(&p, &mut opener);
    let batch = p.sealer.seal_batch(&[b"once"], None, NOW).unwrap();
    assert_eq!(
        deliver(&p, &mut opener, batch.clone(), NOW)
            .unwrap()
            .delivered
            .len(),
        1
    );
    opener.forget_sender(&p.alice.id);
    // A hub replaying the sender key and the batch must not get a fresh replay window.
    let sk = SenderKeyIn::from_wire(p.sender_key.clone()).unwrap();
    assert_eq!(
        opener
            .accept_sender_key(&sk, &p.alice.bundle, NOW + 1)
            .unwrap_err(),
        OpenError::Forgotten
    );
    let again = deliver(&p, &mut opener, batch, NOW + 1).unwrap();
    assert!(again.delivered.is_empty());
    assert_eq!(again.rejected, [(0, OpenError::Forgotten)]);
    // Once the epoch has expired by more than the clock skew allowed, the entry is purged; the
    // sender key is then refused as expired.
    let expires = sk.to_wire().expires_at_ms;
    let skew = entente_crypto::OpenerOptions::default().max_clock_skew_ms;
    assert_eq!(opener.epochs_held(), 1);
    opener.purge_expired(expires + skew);
    assert_eq!(opener.epochs_held(), 1);
    opener.purge_expired(expires + skew + 1);
    assert_eq!(opener.epochs_held(), 0);
    assert_eq!(
        opener
            .accept_sender_key(&sk, &p.alice.bundle, expires + 1)
            .unwrap_err(),
        OpenError::EpochExpired
    );
}

#[test]
fn the_opener_holds_a_bounded_number_of_epochs() {
    let ca = TestCa::new();
    let alice = Agent::new(&ca, "alice");
    let bob = Agent::new(&ca, "bob");
    let mut opener = entente_crypto::Opener::new(
        bob.id.clone(),
        1,
        bob.keys.clone(),
        entente_crypto::OpenerOptions {
            max_epochs: 1,
            ..Default::default()
        },
    );
    let (mut sealer, first) = alice.sealer("a", &[&bob]);
    let first = SenderKeyIn::from_wire(first).unwrap();
    opener
        .accept_sender_key(&first, &alice.bundle, NOW)
        .unwrap();
    let second = sealer
        .rotate(std::slice::from_ref(&bob.bundle), NOW + 120_000)
        .unwrap();
    let second = SenderKeyIn::from_wire(second).unwrap();
    assert_eq!(
        opener
            .accept_sender_key(&second, &alice.bundle, NOW + 120_000)
            .unwrap_err(),
        OpenError::TooManyEpochs(1)
    );
    // After the first epoch expired (by more than the clock skew allowed), it makes room: a
    // full opener drops it though the periodic drop is not due (it just ran).
    let skew = entente_crypto::OpenerOptions::default().max_clock_skew_ms;
    let later = first.to_wire().expires_at_ms + skew + 1;
    assert!(later <= second.to_wire().expires_at_ms);
    opener.purge_expired(later - 1);
    assert_eq!(opener.epochs_held(), 1);
    opener
        .accept_sender_key(&second, &alice.bundle, later)
        .unwrap();
    assert_eq!(opener.epochs_held(), 1);
}

/// Expired epochs are dropped as new sender keys come, long before the opener is full: what a
/// long-lived receiver holds follows the keys in use.
#[test]
fn expired_epochs_are_dropped_as_keys_come() {
    let ca = TestCa::new();
    let alice = Agent::new(&ca, "alice");
    let bob = Agent::new(&ca, "bob");
    let mut opener = bob.opener();
    let (mut sealer, first) = alice.sealer("a", &[&bob]);
    let first = SenderKeyIn::from_wire(first).unwrap();
    opener
        .accept_sender_key(&first, &alice.bundle, NOW)
        .unwrap();
    let skew = entente_crypto::OpenerOptions::default().max_clock_skew_ms;
    let later = first.to_wire().expires_at_ms + skew + 1;
    let second = sealer
        .rotate(std::slice::from_ref(&bob.bundle), later)
        .unwrap();
    let second = SenderKeyIn::from_wire(second).unwrap();
    opener
        .accept_sender_key(&second, &alice.bundle, later)
        .unwrap();
    assert_eq!(opener.epochs_held(), 1);
}

/// One sender can't take every place: past its share, on any of its channels, its sender
/// keys are refused while another sender's are still taken, and its expired epochs make room.
#[test]
fn one_sender_holds_at_most_its_share_of_epochs() {
    let ca = TestCa::new();
    let alice = Agent::new(&ca, "alice");
    let carol = Agent::new(&ca, "carol");
    let bob = Agent::new(&ca, "bob");
    let mut opener = entente_crypto::Opener::new(
        bob.id.clone(),
        1,
        bob.keys.clone(),
        entente_crypto::OpenerOptions {
            max_epochs: 4,
            max_epochs_per_sender: 2,
            ..Default::default()
        },
    );
    let (mut on_a, first) = alice.sealer("a", &[&bob]);
    let first = SenderKeyIn::from_wire(first).unwrap();
    opener
        .accept_sender_key(&first, &alice.bundle, NOW)
        .unwrap();
    let second = on_a
        .rotate(std::slice::from_ref(&bob.bundle), NOW + 120_000)
        .unwrap();
    let second = SenderKeyIn::from_wire(second).unwrap();
    opener
        .accept_sender_key(&second, &alice.bundle, NOW + 120_000)
        .unwrap();
    let (mut on_b, other) = alice.sealer("b", &[&bob]);
    let other = SenderKeyIn::from_wire(other).unwrap();
    assert_eq!(
        opener
            .accept_sender_key(&other, &alice.bundle, NOW + 120_000)
            .unwrap_err(),
        OpenError::TooManySenderEpochs(2)
    );
    let (_, carols) = carol.sealer("a", &[&bob]);
    let carols = SenderKeyIn::from_wire(carols).unwrap();
    opener
        .accept_sender_key(&carols, &carol.bundle, NOW + 120_000)
        .unwrap();
    assert_eq!(opener.epochs_held(), 3);
    // Once alice's first epoch (and carol's) expired by more than the clock skew allowed, a
    // new one of hers takes its place, her second still held: her share full, her own expired
    // epochs are dropped though the periodic drop is not due (it just ran), and only hers.
    let skew = entente_crypto::OpenerOptions::default().max_clock_skew_ms;
    let later = first.to_wire().expires_at_ms + skew + 1;
    assert!(later <= second.to_wire().expires_at_ms);
    opener.purge_expired(later - 1);
    assert_eq!(opener.epochs_held(), 3);
    let again = on_b
        .rotate(std::slice::from_ref(&bob.bundle), later)
        .unwrap();
    let again = SenderKeyIn::from_wire(again).unwrap();
    opener
        .accept_sender_key(&again, &alice.bundle, later)
        .unwrap();
    assert_eq!(opener.epochs_held(), 3);
}

#[test]
fn a_failed_rotation_keeps_the_current_epoch() {
    let ca = TestCa::new();
    let alice = Agent::new(&ca, "alice");
    let bob = Agent::new(&ca, "bob");
    let (mut sealer, first) = alice.sealer("a", &[&bob]);
    let epoch = sealer.epoch();
    // Bob's bundle has expired by then: the rotation fails and must not switch the sealer to
    // a secret that no recipient received.
    let err = sealer
        .rotate(std::slice::from_ref(&bob.bundle), NOW + 2 * DAY)
        .unwrap_err();
    assert!(matches!(err, SealError::RecipientExpired(_)), "{err:?}");
    assert_eq!(sealer.epoch(), epoch);
    let mut opener = bob.opener();
    let sk = SenderKeyIn::from_wire(first).unwrap();
    opener.accept_sender_key(&sk, &alice.bundle, NOW).unwrap();
    let batch = sealer.seal_batch(&[b"still readable"], None, NOW).unwrap();
    let opened = opener
        .open(SignedBatchIn::from_wire(batch).unwrap(), &alice.bundle, NOW)
        .unwrap();
    assert_eq!(opened.delivered.len(), 1);
}

#[test]
fn batch_size_and_payload_size_are_bounded() {
    let mut p = pair();
    assert!(matches!(
        p.sealer.seal_batch(&[], None, NOW).unwrap_err(),
        SealError::BatchSize { len: 0, .. }
    ));
    let big = vec![0u8; wire::Limits::default().max_ciphertext_bytes];
    assert!(matches!(
        p.sealer.seal(&big, None, NOW).unwrap_err(),
        SealError::PayloadTooLarge { .. }
    ));
}

#[test]
fn key_bundle_checks() {
    let ca = TestCa::new();
    let other = TestCa::new();
    let alice = Agent::new(&ca, "alice");
    let wire_bundle = alice.bundle.to_wire().clone();

    // signed by another CA
    let err = KeyBundleIn::from_wire(wire_bundle.clone())
        .unwrap()
        .verify(&other.authority, NOW)
        .unwrap_err();
    assert_eq!(err, BundleError::UnknownSigner);

    // tampered key
    let mut tampered = wire_bundle.clone();
    tampered.x25519_public[0] ^= 1;
    let err = KeyBundleIn::from_wire(tampered)
        .unwrap()
        .verify(&ca.authority, NOW)
        .unwrap_err();
    assert_eq!(err, BundleError::BadSignature);

    // expired and not yet valid
    let b = KeyBundleIn::from_wire(wire_bundle.clone()).unwrap();
    assert_eq!(
        b.clone().verify(&ca.authority, NOW + 2 * DAY).unwrap_err(),
        BundleError::Expired
    );
    assert_eq!(
        b.verify(&ca.authority, NOW - 2 * DAY).unwrap_err(),
        BundleError::NotYetValid
    );

    // a principal of another trust domain, validly signed by this CA's key
    let foreign = KeyBundleBody {
        principal: "spiffe://other.example/agent/ops/alice".parse().unwrap(),
        ..alice.bundle.body().clone()
    };
    let foreign = KeyBundleIn::from_wire(ca.sign_bundle(foreign)).unwrap();
    assert_eq!(
        foreign.clone().verify(&ca.authority, NOW).unwrap_err(),
        BundleError::ForeignTrustDomain
    );
    // an authority bound to no trust domain is a bare key set and vouches for any
    let mut unbound = entente_crypto::EcdsaAuthority::new();
    unbound.insert(ca.signer, ca.key_public(), 0, u64::MAX);
    assert!(foreign.verify(&unbound, NOW).is_ok());

    // wrong lengths and versions
    let mut short = wire_bundle.clone();
    short.ed25519_public.pop();
    assert_eq!(
        KeyBundleIn::from_wire(short).unwrap_err(),
        BundleError::BadLength("ed25519_public")
    );
    let mut v2 = wire_bundle.clone();
    v2.version = 2;
    assert_eq!(
        KeyBundleIn::from_wire(v2).unwrap_err(),
        BundleError::UnsupportedVersion(2)
    );
    let mut bad_id = wire_bundle.clone();
    bad_id.principal = "spiffe://acme.internal/service/x".into();
    assert!(matches!(
        KeyBundleIn::from_wire(bad_id).unwrap_err(),
        BundleError::Principal(_)
    ));

    // truncated and oversized protobuf
    let bytes = wire::encode(&wire_bundle);
    assert!(matches!(
        KeyBundleIn::decode(&bytes[..bytes.len() - 3], &wire::Limits::default()).unwrap_err(),
        BundleError::Wire(_)
    ));
    let tiny = wire::Limits {
        max_frame_bytes: 50,
        ..Default::default()
    };
    assert!(matches!(
        KeyBundleIn::decode(&bytes, &tiny).unwrap_err(),
        BundleError::Wire(wire::WireError::TooLarge { .. })
    ));
}

#[test]
fn a_bundle_signed_by_the_authority_for_another_principal_cannot_sign_for_alice() {
    let ca = TestCa::new();
    let alice = Agent::new(&ca, "alice");
    let mut p = pair();
    let batch = p.sealer.seal_batch(&[b"x"], None, NOW).unwrap();
    let mut opener = alice.opener();
    let body = KeyBundleBody {
        principal: p.alice.id.clone(),
        ..alice.bundle.body().clone()
    };
    // Same principal, other keys: a bundle the sender never had.
    let bundle = KeyBundleIn::from_wire(ca.sign_bundle(body))
        .unwrap()
        .verify(&ca.authority, NOW)
        .unwrap();
    assert_eq!(
        opener
            .open(SignedBatchIn::from_wire(batch).unwrap(), &bundle, NOW)
            .unwrap_err(),
        OpenError::BadBatchSignature
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn round_trip(payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..600), 1..20)) {
        let mut p = pair();
        let mut opener = p.bob.opener();
        accept_key(&p, &mut opener);
        let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        let batch = p.sealer.seal_batch(&refs, None, NOW).unwrap();
        let opened = deliver(&p, &mut opener, batch, NOW).unwrap();
        let got: Vec<Vec<u8>> = opened.delivered.into_iter().map(|e| e.into_payload()).collect();
        prop_assert_eq!(got, payloads);
    }
}

/// Any single-bit flip anywhere in an encoded batch is rejected: the bytes fail to decode or
/// parse, or the batch fails verification, or no envelope is delivered. Every bit of a small
/// batch is tried.
#[test]
fn every_single_bit_flip_is_rejected() {
    let mut p = pair();
    let batch = p
        .sealer
        .seal_batch(
            &[b"flip me", b"and me"],
            Some(&"_r.x".parse().unwrap()),
            NOW,
        )
        .unwrap();
    let bytes = wire::encode(&batch);
    let mut opener = p.bob.opener();
    accept_key(&p, &mut opener);
    for bit in 0..bytes.len() * 8 {
        let mut flipped = bytes.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        let Ok(parsed) = SignedBatchIn::decode(&flipped, &wire::Limits::default()) else {
            continue;
        };
        match opener.open(parsed, &p.alice.bundle, NOW) {
            Err(_) => {}
            Ok(opened) => assert!(
                opened.delivered.is_empty(),
                "bit {bit} flipped went through"
            ),
        }
    }
    // The unflipped batch still opens: the loop did not pass by burning the window.
    let opened = deliver(&p, &mut opener, batch, NOW).unwrap();
    assert_eq!(opened.delivered.len(), 2);
}

/// The same for sender keys: no flipped sender key is accepted.
#[test]
fn every_single_bit_flip_of_a_sender_key_is_rejected() {
    let p = pair();
    let bytes = wire::encode(&p.sender_key);
    for bit in 0..bytes.len() * 8 {
        let mut flipped = bytes.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        let Ok(sk) = SenderKeyIn::decode(&flipped, &wire::Limits::default()) else {
            continue;
        };
        let mut opener = p.bob.opener();
        assert!(
            opener.accept_sender_key(&sk, &p.alice.bundle, NOW).is_err(),
            "bit {bit}"
        );
    }
}

fn channel(s: &str) -> entente_types::Channel {
    s.parse().unwrap()
}

fn open_from(
    sender: &Agent,
    opener: &mut entente_crypto::Opener,
    batch: wire::SignedBatch,
) -> Result<entente_crypto::OpenedBatch, OpenError> {
    let bytes = wire::encode(&batch);
    let batch = SignedBatchIn::decode(&bytes, &wire::Limits::default())?;
    opener.open(batch, &sender.bundle, NOW)
}

#[test]
fn one_reply_namespace_key_serves_every_reply_to_its_requester() {
    let ca = TestCa::new();
    let alice = Agent::new(&ca, "alice");
    let bob = Agent::new(&ca, "bob");
    // Bob answers Alice's requests under one sender key for her reply namespace root.
    let (mut sealer, sender_key) = bob.sealer("_reply.ops.alice", &[&alice]);
    let mut opener = alice.opener();
    let sk = SenderKeyIn::from_wire(sender_key).unwrap();
    opener.accept_sender_key(&sk, &bob.bundle, NOW).unwrap();

    let (r1, r2) = (
        channel("_reply.ops.alice.r1"),
        channel("_reply.ops.alice.r2"),
    );
    let one = sealer
        .seal_batch_on(&r1, [(&b"first"[..], None)].into_iter(), NOW)
        .unwrap();
    let two = sealer
        .seal_batch_on(&r2, [(&b"second"[..], None)].into_iter(), NOW)
        .unwrap();
    assert_eq!(
        (one.channel.as_str(), two.channel.as_str()),
        (r1.as_str(), r2.as_str())
    );
    // Sequence numbers run across the epoch, under the root's one payload key.
    assert_eq!((one.envelopes[0].seq, two.envelopes[0].seq), (0, 1));

    for (batch, reply, payload) in [(one.clone(), &r1, &b"first"[..]), (two, &r2, b"second")] {
        let opened = open_from(&bob, &mut opener, batch).unwrap();
        assert!(opened.rejected.is_empty(), "{:?}", opened.rejected);
        let message = &opened.delivered[0];
        assert_eq!(message.channel(), reply);
        assert_eq!(message.sender(), &bob.id);
        assert_eq!(message.payload(), payload);
    }
    // The replay window is the epoch's, across channels.
    let opened = open_from(&bob, &mut opener, one.clone()).unwrap();
    assert!(matches!(opened.rejected[..], [(0, OpenError::Replay(_))]));

    // A reply moved to another reply channel: the signature covers the channel, and even
    // signed again on it by its sender, its header (the AEAD's associated data) names the
    // channel it was sealed on.
    let unopened = sealer
        .seal_batch_on(&r1, [(&b"third"[..], None)].into_iter(), NOW)
        .unwrap();
    let mut moved = unopened.clone();
    moved.channel = "_reply.ops.alice.r3".to_owned();
    assert_eq!(
        open_from(&bob, &mut opener, moved.clone()).unwrap_err(),
        OpenError::BadBatchSignature
    );
    danger::danger_sign_batch(&bob.keys, &mut moved);
    let opened = open_from(&bob, &mut opener, moved).unwrap();
    assert!(
        matches!(opened.rejected[..], [(0, OpenError::Decrypt)]),
        "{:?}",
        opened.rejected
    );
    // On its own channel, the same envelope opens.
    let opened = open_from(&bob, &mut opener, unopened).unwrap();
    assert!(opened.rejected.is_empty(), "{:?}", opened.rejected);
    assert_eq!(opened.delivered[0].payload(), b"third");

    // Forgetting the sender forgets its root keys too.
    opener.forget_sender(&bob.id);
    let three = sealer
        .seal_batch_on(
            &channel("_reply.ops.alice.r4"),
            [(&b"late"[..], None)].into_iter(),
            NOW,
        )
        .unwrap();
    let opened = open_from(&bob, &mut opener, three).unwrap();
    assert!(matches!(opened.rejected[..], [(0, OpenError::Forgotten)]));
}

#[test]
fn a_reply_namespace_key_is_scoped_to_its_namespace_and_owner() {
    let ca = TestCa::new();
    let alice = Agent::new(&ca, "alice");
    let bob = Agent::new(&ca, "bob");
    let carol = Agent::new(&ca, "carol");
    let (mut sealer, sender_key) = bob.sealer("_reply.ops.alice", &[&alice, &carol]);
    for outside in ["_reply.ops.carol.r1", "orders.eu", "_reply.ops.alicex.r1"] {
        let err = sealer
            .seal_batch_on(&channel(outside), [(&b"x"[..], None)].into_iter(), NOW)
            .unwrap_err();
        assert!(
            matches!(err, SealError::OutOfScope { .. }),
            "{outside}: {err}"
        );
    }
    // An ordinary channel's sealer seals on its own channel only.
    let (mut plain, _) = bob.sealer("orders.eu", &[&alice]);
    assert!(matches!(
        plain
            .seal_batch_on(
                &channel("orders.eu.x"),
                [(&b"x"[..], None)].into_iter(),
                NOW
            )
            .unwrap_err(),
        SealError::OutOfScope { .. }
    ));

    // Only the owner of the namespace takes the key, even when it is wrapped for others.
    let sk = SenderKeyIn::from_wire(sender_key.clone()).unwrap();
    assert_eq!(
        carol
            .opener()
            .accept_sender_key(&sk, &bob.bundle, NOW)
            .unwrap_err(),
        OpenError::ForeignReplyNamespace
    );
    // Nor does a reply channel of someone else open under a root key: Alice's opener, given
    // a batch on Carol's reply channel, finds no epoch for it.
    let mut opener = alice.opener();
    opener.accept_sender_key(&sk, &bob.bundle, NOW).unwrap();
    let (mut to_carol, _) = bob.sealer("_reply.ops.carol", &[&carol]);
    let batch = to_carol
        .seal_batch_on(
            &channel("_reply.ops.carol.r1"),
            [(&b"x"[..], None)].into_iter(),
            NOW,
        )
        .unwrap();
    let opened = open_from(&bob, &mut opener, batch).unwrap();
    assert!(matches!(
        opened.rejected[..],
        [(0, OpenError::UnknownEpoch(_))]
    ));
    // Another secret claiming the same epoch of the root fails to authenticate.
    let (mut other, _) = bob.sealer_on_epoch("_reply.ops.alice", &[&alice], sealer.epoch());
    let batch = other
        .seal_batch_on(
            &channel("_reply.ops.alice.r1"),
            [(&b"x"[..], None)].into_iter(),
            NOW + 1,
        )
        .unwrap();
    let opened = open_from(&bob, &mut opener, batch).unwrap();
    assert!(
        matches!(opened.rejected[..], [(0, OpenError::Decrypt)]),
        "{:?}",
        opened.rejected
    );
}

#[test]
fn replies_to_one_requester_share_one_signed_batch_on_its_reply_namespace_root() {
    let ca = TestCa::new();
    let alice = Agent::new(&ca, "alice");
    let bob = Agent::new(&ca, "bob");
    let carol = Agent::new(&ca, "carol");
    let (mut sealer, sender_key) = bob.sealer("_reply.ops.alice", &[&alice]);
    let mut opener = alice.opener();
    let sk = SenderKeyIn::from_wire(sender_key).unwrap();
    opener.accept_sender_key(&sk, &bob.bundle, NOW).unwrap();
    let (r1, r2, r3) = (
        channel("_reply.ops.alice.r1"),
        channel("_reply.ops.alice.r2"),
        channel("_reply.ops.alice.r3"),
    );
    let asks = channel("_reply.ops.bob.q");
    let batch = sealer
        .seal_replies(
            [
                (&r1, &b"one"[..], None),
                (&r2, &b"two"[..], Some(&asks)),
                (&r3, &b"three"[..], None),
            ]
            .into_iter(),
            NOW,
        )
        .unwrap();
    // One signature on the root; each envelope names its reply channel.
    assert_eq!(batch.channel, "_reply.ops.alice");
    let named: Vec<&str> = batch.envelopes.iter().map(|e| &*e.channel).collect();
    assert_eq!(named, [r1.as_str(), r2.as_str(), r3.as_str()]);
    let parsed = SignedBatchIn::from_wire(batch.clone()).unwrap();
    assert!(parsed.is_replies());
    assert_eq!(parsed.envelopes()[1].channel(), Some(&r2));
    parsed.verify_signature(&bob.bundle, NOW).unwrap();

    let opened = open_from(&bob, &mut opener, batch.clone()).unwrap();
    assert!(opened.rejected.is_empty(), "{:?}", opened.rejected);
    let got: Vec<(&str, &[u8])> = opened
        .delivered
        .iter()
        .map(|m| (m.channel().as_str(), m.payload()))
        .collect();
    assert_eq!(
        got,
        [
            (r1.as_str(), &b"one"[..]),
            (r2.as_str(), b"two"),
            (r3.as_str(), b"three")
        ]
    );
    assert_eq!(opened.delivered[1].reply_to(), Some(&asks));
    // The root's window: the batch again is a replay, envelope by envelope.
    let again = open_from(&bob, &mut opener, batch.clone()).unwrap();
    assert_eq!(again.rejected.len(), 3);
    assert!(matches!(again.rejected[0], (0, OpenError::Replay(_))));

    // An envelope moved to another reply channel, or two swapped: the signature covers each
    // envelope's channel.
    let mut moved = batch.clone();
    moved.envelopes[0].channel = "_reply.ops.alice.r9".into();
    assert_eq!(
        open_from(&bob, &mut opener, moved).unwrap_err(),
        OpenError::BadBatchSignature
    );
    let mut swapped = batch.clone();
    swapped.envelopes[0].channel = r2.as_str().into();
    swapped.envelopes[1].channel = r1.as_str().into();
    assert_eq!(
        open_from(&bob, &mut opener, swapped).unwrap_err(),
        OpenError::BadBatchSignature
    );

    // Malformed: an envelope without its channel, one outside the root, a channel named in a
    // batch that is not on a root.
    let mut unnamed = batch.clone();
    unnamed.envelopes[2].channel = "".into();
    let mut outside = batch.clone();
    outside.envelopes[2].channel = "_reply.ops.carol.r1".into();
    let (mut plain, _) = bob.sealer("orders.eu", &[&alice]);
    let mut named_plain = plain.seal_batch(&[b"x"], None, NOW).unwrap();
    named_plain.envelopes[0].channel = "orders.eu".into();
    for bad in [unnamed, outside, named_plain] {
        assert!(
            matches!(
                SignedBatchIn::from_wire(bad.clone()),
                Err(OpenError::Malformed(_))
            ),
            "{bad:?}"
        );
    }

    // Only the namespace's owner opens a batch of replies, and only a root's sealer seals one.
    let (mut to_carol, carols) = bob.sealer("_reply.ops.carol", &[&carol]);
    let for_carol = to_carol
        .seal_replies(
            [(&channel("_reply.ops.carol.r1"), &b"x"[..], None)].into_iter(),
            NOW,
        )
        .unwrap();
    assert_eq!(
        open_from(&bob, &mut opener, for_carol.clone()).unwrap_err(),
        OpenError::ForeignReplyNamespace
    );
    let mut carols_opener = carol.opener();
    carols_opener
        .accept_sender_key(&SenderKeyIn::from_wire(carols).unwrap(), &bob.bundle, NOW)
        .unwrap();
    let opened = open_from(&bob, &mut carols_opener, for_carol).unwrap();
    assert_eq!(opened.delivered[0].payload(), b"x");
    for (sealer, reply) in [
        (&mut plain, &r1),
        (&mut sealer, &channel("_reply.ops.carol.r2")),
    ] {
        assert!(matches!(
            sealer
                .seal_replies([(reply, &b"x"[..], None)].into_iter(), NOW)
                .unwrap_err(),
            SealError::OutOfScope { .. }
        ));
    }
}
