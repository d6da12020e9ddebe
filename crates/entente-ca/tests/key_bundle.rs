//! CA-signed key bundles, verified against the trust bundle.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::time::Duration;

use common::{new_ca, new_ca_with, now, unix_ms};
use entente_ca::{CaError, CaOptions, INTERMEDIATE_KEY};
use entente_crypto::{BundleError, KeyBundleBody, KeyBundleIn};
use entente_keystore::KeyName;
use entente_types::{AgentId, Principal, TrustDomain};
use entente_wire as wire;

const HOUR_MS: u64 = 3_600_000;

fn body(principal: Principal) -> KeyBundleBody {
    KeyBundleBody {
        principal,
        ed25519_public: [1; 32],
        x25519_public: [2; 32],
        epoch: 7,
        not_before_ms: unix_ms(now()),
        not_after_ms: unix_ms(now()) + 24 * HOUR_MS,
    }
}

#[test]
fn bundle_signed_by_this_ca_verifies_against_the_trust_bundle() {
    let f = new_ca("example.org");
    let principal = f.agent("research", "summarizer");
    let signed = f.ca.sign_key_bundle(body(principal.clone())).unwrap();
    assert_eq!(signed.signer, f.ca.signer_id().to_vec());

    let authority = f.ca.trust_bundle().authority();
    assert_eq!(authority.len(), 2, "root and intermediate");
    let at = unix_ms(now()) + HOUR_MS;
    let verified = KeyBundleIn::from_wire(signed.clone())
        .unwrap()
        .verify(&authority, at)
        .unwrap();
    assert_eq!(verified.principal(), &principal);
    assert_eq!(verified.epoch(), 7);

    // The trust bundle is itself a BundleAuthority, and the wire form round-trips.
    let bytes = wire::encode(&signed);
    let decoded = KeyBundleIn::decode(&bytes, &wire::Limits::default()).unwrap();
    assert!(decoded.verify(f.ca.trust_bundle(), at).is_ok());
}

#[test]
fn bundle_signed_by_another_ca_is_from_an_unknown_signer() {
    let ours = new_ca("example.org");
    let theirs = new_ca("example.org");
    let signed = theirs
        .ca
        .sign_key_bundle(body(theirs.agent("a", "b")))
        .unwrap();
    let err = KeyBundleIn::from_wire(signed)
        .unwrap()
        .verify(&ours.ca.trust_bundle().authority(), unix_ms(now()))
        .unwrap_err();
    assert_eq!(err, BundleError::UnknownSigner);
}

#[test]
fn tampered_bundle_has_a_bad_signature() {
    let f = new_ca("example.org");
    let signed = f.ca.sign_key_bundle(body(f.agent("a", "b"))).unwrap();
    let authority = f.ca.trust_bundle().authority();

    let mut tampered = signed.clone();
    tampered.epoch += 1;
    let err = KeyBundleIn::from_wire(tampered)
        .unwrap()
        .verify(&authority, unix_ms(now()))
        .unwrap_err();
    assert_eq!(err, BundleError::BadSignature);

    let mut tampered = signed.clone();
    tampered.x25519_public[0] ^= 1;
    let err = KeyBundleIn::from_wire(tampered)
        .unwrap()
        .verify(&authority, unix_ms(now()))
        .unwrap_err();
    assert_eq!(err, BundleError::BadSignature);

    let mut tampered = signed;
    tampered.principal = f.agent("a", "c").to_string();
    let err = KeyBundleIn::from_wire(tampered)
        .unwrap()
        .verify(&authority, unix_ms(now()))
        .unwrap_err();
    assert_eq!(err, BundleError::BadSignature);
}

#[test]
fn expired_bundle_is_refused() {
    let f = new_ca("example.org");
    let b = body(f.agent("a", "b"));
    let not_after = b.not_after_ms;
    let signed = f.ca.sign_key_bundle(b).unwrap();
    let err = KeyBundleIn::from_wire(signed)
        .unwrap()
        .verify(&f.ca.trust_bundle().authority(), not_after + 1)
        .unwrap_err();
    assert_eq!(err, BundleError::Expired);
}

#[test]
fn bundle_outliving_its_signing_intermediate_is_refused() {
    let f = new_ca_with(
        "example.org",
        CaOptions {
            intermediate_validity: Duration::from_secs(2 * 3600),
            ..CaOptions::default()
        },
    );
    let signed = f.ca.sign_key_bundle(body(f.agent("a", "b"))).unwrap();
    let err = KeyBundleIn::from_wire(signed)
        .unwrap()
        .verify(
            &f.ca.trust_bundle().authority(),
            unix_ms(now()) + 3 * HOUR_MS,
        )
        .unwrap_err();
    assert_eq!(err, BundleError::SignerNotValid);
}

#[test]
fn bundle_for_another_trust_domain_is_not_signed() {
    let f = new_ca("example.org");
    let other = TrustDomain::new("other.org").unwrap();
    let principal = Principal::from(AgentId::new(&other, "a", "b").unwrap());
    let err = f.ca.sign_key_bundle(body(principal)).unwrap_err();
    assert!(matches!(err, CaError::ForeignPrincipal(_)), "{err:?}");
}

#[test]
fn bundle_for_another_trust_domain_signed_by_a_trusted_key_is_refused() {
    // A CA key of `example.org` that signs a bundle for `other.org` (misissuance, or a
    // compromised CA of one federated domain speaking for another) must not be believed.
    let f = new_ca("example.org");
    let other = TrustDomain::new("other.org").unwrap();
    let foreign = body(Principal::from(AgentId::new(&other, "a", "b").unwrap()));
    let key = KeyName::new(INTERMEDIATE_KEY).unwrap();
    let signed = foreign
        .sign(f.ca.signer_id(), |input| f.keystore.sign(&key, input))
        .unwrap();
    let at = unix_ms(now()) + HOUR_MS;
    let bundle = KeyBundleIn::from_wire(signed).unwrap();
    assert_eq!(
        bundle.clone().verify(f.ca.trust_bundle(), at).unwrap_err(),
        BundleError::ForeignTrustDomain
    );
    assert_eq!(
        bundle
            .verify(&f.ca.trust_bundle().authority(), at)
            .unwrap_err(),
        BundleError::ForeignTrustDomain
    );
}
