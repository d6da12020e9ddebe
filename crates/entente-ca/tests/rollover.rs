//! Rolling the intermediate CA over with overlap: staged, active, retiring.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::time::Duration;

use common::{new_ca, now, p256_csr, unix_ms};
use entente_ca::{
    Ca, CaError, CaOptions, INTERMEDIATE_KEY, IntermediateRole, ROOT_KEY, TrustBundleError,
};
use entente_crypto::{BundleError, KeyBundleBody, KeyBundleIn};
use entente_keystore::KeyName;
use entente_types::Principal;

const HOUR_MS: u64 = 3_600_000;

fn body(principal: Principal) -> KeyBundleBody {
    KeyBundleBody {
        principal,
        ed25519_public: [1; 32],
        x25519_public: [2; 32],
        epoch: 1,
        not_before_ms: unix_ms(now()),
        not_after_ms: unix_ms(now()) + 24 * HOUR_MS,
    }
}

fn roles(ca: &Ca) -> Vec<IntermediateRole> {
    ca.intermediates().iter().map(|i| i.role).collect()
}

#[test]
fn a_full_rollover_keeps_everything_signed_verifiable_until_retirement() {
    let f = new_ca("example.org");
    let agent = f.agent("research", "summarizer");
    let before = f.ca.trust_bundle().clone();
    let old_signer = f.ca.signer_id();
    let old_bundle = f.ca.sign_key_bundle(body(agent.clone())).unwrap();

    // Staged: trusted, not signing.
    let staged = f.ca.stage_intermediate(now()).unwrap();
    assert_eq!(
        roles(&staged),
        [IntermediateRole::Active, IntermediateRole::Staged]
    );
    assert_eq!(staged.signer_id(), old_signer);
    assert_eq!(staged.trust_bundle().intermediates().len(), 2);
    let new_key = staged.intermediates()[1].key.clone().unwrap();
    assert!(
        new_key.as_str().starts_with("ca-intermediate-"),
        "{new_key}"
    );
    assert!(f.keystore.contains(&new_key).unwrap());
    let new_signer = staged.intermediates()[1].signer_id;
    assert_ne!(new_signer, old_signer);

    // Active: the new key signs; the old one is still trusted.
    let active = staged.activate_staged().unwrap();
    assert_eq!(
        roles(&active),
        [IntermediateRole::Active, IntermediateRole::Retiring]
    );
    assert_eq!(active.signer_id(), new_signer);
    let (_key, csr) = p256_csr();
    let svid = active.issue_svid(&csr, &agent, now()).unwrap();
    assert_eq!(&svid.chain_der[1], &active.intermediates()[0].cert);
    // A relying party that never heard of the new intermediate still verifies the SVID: the
    // chain presents it, and the root signed it.
    assert!(before.verify_svid(&svid.chain_der, now(), None).is_ok());
    let new_bundle = active.sign_key_bundle(body(agent.clone())).unwrap();
    assert_eq!(new_bundle.signer, new_signer.to_vec());
    let at = unix_ms(now()) + HOUR_MS;
    // Key bundles are verified against the trust bundle's keys: the new one needs the bundle
    // that lists the new intermediate — which is why it is staged first.
    let unknown = KeyBundleIn::from_wire(new_bundle.clone())
        .unwrap()
        .verify(&before, at)
        .unwrap_err();
    assert!(matches!(unknown, BundleError::UnknownSigner), "{unknown:?}");
    for trust in [staged.trust_bundle(), active.trust_bundle()] {
        for bundle in [&old_bundle, &new_bundle] {
            assert!(
                KeyBundleIn::from_wire(bundle.clone())
                    .unwrap()
                    .verify(trust, at)
                    .is_ok()
            );
        }
    }

    // Retired: the old intermediate leaves the trust bundle; its key is named for deletion.
    let (retired, old_key) = active.retire_previous().unwrap();
    assert_eq!(roles(&retired), [IntermediateRole::Active]);
    assert_eq!(old_key, Some(KeyName::new(INTERMEDIATE_KEY).unwrap()));
    assert_eq!(retired.trust_bundle().intermediates().len(), 1);
    let gone = KeyBundleIn::from_wire(old_bundle)
        .unwrap()
        .verify(retired.trust_bundle(), at)
        .unwrap_err();
    assert!(matches!(gone, BundleError::UnknownSigner), "{gone:?}");
    f.keystore.delete(&old_key.unwrap()).unwrap();

    // The state survives a reload, with the first key gone.
    let reloaded =
        Ca::from_pem(f.keystore.clone(), &retired.to_pem(), CaOptions::default()).unwrap();
    assert_eq!(reloaded.signer_id(), new_signer);
    assert_eq!(reloaded.intermediates()[0].key, Some(new_key.clone()));
    let svid = reloaded.issue_svid(&csr, &agent, now()).unwrap();
    assert!(before.verify_svid(&svid.chain_der, now(), None).is_ok());

    // And the next rollover starts from there.
    let again = reloaded.stage_intermediate(now()).unwrap();
    let third = again.intermediates()[1].key.clone().unwrap();
    assert_ne!(third, new_key);
}

#[test]
fn every_phase_reloads_from_its_pem() {
    let f = new_ca("example.org");
    let staged = f.ca.stage_intermediate(now()).unwrap();
    let active = staged.activate_staged().unwrap();
    for ca in [&staged, &active] {
        let pem = ca.to_pem();
        let reloaded = Ca::from_pem(f.keystore.clone(), &pem, CaOptions::default()).unwrap();
        assert_eq!(reloaded.intermediates(), ca.intermediates());
        assert_eq!(reloaded.to_pem(), pem);
    }
    // A retiring intermediate need not have its key any more.
    f.keystore
        .delete(&KeyName::new(INTERMEDIATE_KEY).unwrap())
        .unwrap();
    let reloaded =
        Ca::from_pem(f.keystore.clone(), &active.to_pem(), CaOptions::default()).unwrap();
    assert_eq!(reloaded.intermediates()[1].key, None);
    let (_, key) = reloaded.retire_previous().unwrap();
    assert_eq!(key, None);

    // A staged one must have it.
    let f = new_ca("example.org");
    let staged = f.ca.stage_intermediate(now()).unwrap();
    let key = staged.intermediates()[1].key.clone().unwrap();
    f.keystore.delete(&key).unwrap();
    assert!(Ca::from_pem(f.keystore.clone(), &staged.to_pem(), CaOptions::default()).is_err());
}

#[test]
fn a_stored_state_naming_one_intermediate_in_two_roles_is_refused() {
    let f = new_ca("example.org");
    let active =
        f.ca.stage_intermediate(now())
            .unwrap()
            .activate_staged()
            .unwrap();
    let pem = active.to_pem();
    // Retiring it would revoke, and delete the key of, the intermediate that signs.
    let mut twice = pem.clone();
    twice.retiring = Some(twice.intermediate.clone());
    let mut staged_twice = pem.clone();
    staged_twice.retiring = None;
    staged_twice.staged = Some(staged_twice.intermediate.clone());
    for corrupt in [twice, staged_twice] {
        let err = Ca::from_pem(f.keystore.clone(), &corrupt, CaOptions::default()).unwrap_err();
        assert!(matches!(err, CaError::Rollover(_)), "{err}");
        assert!(err.to_string().contains("two roles"), "{err}");
    }
    assert!(Ca::from_pem(f.keystore.clone(), &pem, CaOptions::default()).is_ok());
}

#[test]
fn steps_out_of_order_are_refused_and_change_nothing() {
    let f = new_ca("example.org");
    assert!(matches!(f.ca.activate_staged(), Err(CaError::Rollover(_))));
    assert!(matches!(f.ca.retire_previous(), Err(CaError::Rollover(_))));
    let staged = f.ca.stage_intermediate(now()).unwrap();
    let keys = f.keystore.list().unwrap().len();
    assert!(matches!(
        staged.stage_intermediate(now()),
        Err(CaError::Rollover(_))
    ));
    assert!(matches!(
        staged.retire_previous(),
        Err(CaError::Rollover(_))
    ));
    let active = staged.activate_staged().unwrap();
    assert!(matches!(
        active.stage_intermediate(now()),
        Err(CaError::Rollover(_))
    ));
    assert!(matches!(
        active.activate_staged(),
        Err(CaError::Rollover(_))
    ));
    assert_eq!(f.keystore.list().unwrap().len(), keys, "no key was made");
}

#[test]
fn staging_needs_the_root_key() {
    let f = new_ca("example.org");
    let pem = f.ca.to_pem();
    f.keystore.delete(&KeyName::new(ROOT_KEY).unwrap()).unwrap();
    let offline = Ca::from_pem(f.keystore.clone(), &pem, CaOptions::default()).unwrap();
    let keys = f.keystore.list().unwrap().len();
    assert!(matches!(
        offline.stage_intermediate(now()),
        Err(CaError::RootKeyOffline)
    ));
    assert_eq!(f.keystore.list().unwrap().len(), keys);
}

#[test]
fn the_new_intermediate_is_cut_to_the_root_and_starts_now() {
    let f = new_ca("example.org");
    let later = now() + Duration::from_secs(100 * 24 * 3600);
    let staged = f.ca.stage_intermediate(later).unwrap();
    let new = &staged.intermediates()[1];
    assert_eq!(new.not_before, later - Duration::from_secs(60));
    assert_eq!(
        new.not_after,
        later + CaOptions::default().intermediate_validity
    );
    // Staging past the root's end is refused.
    let too_late = now() + CaOptions::default().root_validity + Duration::from_secs(3600);
    assert!(f.ca.stage_intermediate(too_late).is_err());
}

#[test]
fn relying_parties_adopt_intermediates_only_under_their_roots() {
    let f = new_ca("example.org");
    let before = f.ca.trust_bundle().clone();
    let staged = f.ca.stage_intermediate(now()).unwrap();
    let adopted = before.adopt_intermediates(staged.trust_bundle()).unwrap();
    assert_eq!(adopted.roots(), before.roots());
    assert_eq!(
        adopted.intermediates(),
        staged.trust_bundle().intermediates()
    );

    // A bundle of another CA of the same trust domain brings nothing under our roots.
    let other = new_ca("example.org");
    let err = before
        .adopt_intermediates(other.ca.trust_bundle())
        .unwrap_err();
    assert!(
        matches!(err, TrustBundleError::NotChained { .. }),
        "{err:?}"
    );
    // Nor may a bundle mixing its own root with ours add that root.
    let mixed = entente_ca::TrustBundle::from_pem(&format!(
        "{}{}",
        staged.trust_bundle().to_pem(),
        other.ca.trust_bundle().to_pem()
    ))
    .unwrap();
    let adopted = before.adopt_intermediates(&mixed).unwrap();
    assert_eq!(adopted.roots(), before.roots());
    assert_eq!(adopted.intermediates().len(), 2);

    // Another trust domain is refused.
    let foreign = new_ca("other.org");
    assert!(matches!(
        before.adopt_intermediates(foreign.ca.trust_bundle()),
        Err(TrustBundleError::TrustDomainMismatch { .. })
    ));
}
