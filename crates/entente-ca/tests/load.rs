//! Creating, persisting and reloading the CA.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::time::Duration;

use common::{create_keystore, new_ca, now, open_keystore, p256_csr};
use entente_ca::{Ca, CaError, CaOptions, INTERMEDIATE_KEY, IssueError, ROOT_KEY, TrustBundle};
use entente_keystore::{KeyAlgorithm, KeyName, KeyStoreError};
use entente_types::TrustDomain;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

#[test]
fn ca_certificates_have_the_ca_profile() {
    let f = new_ca("example.org");
    let (_, root) = X509Certificate::from_der(f.ca.root_cert()).unwrap();
    let (_, intermediate) = X509Certificate::from_der(f.ca.intermediate_cert()).unwrap();

    let bc = root.basic_constraints().unwrap().unwrap().value;
    assert!(bc.ca && bc.path_len_constraint.is_none());
    let bc = intermediate.basic_constraints().unwrap().unwrap().value;
    assert!(bc.ca && bc.path_len_constraint == Some(0));
    for cert in [&root, &intermediate] {
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign() && !ku.digital_signature());
        let san = cert.subject_alternative_name().unwrap().unwrap().value;
        assert_eq!(
            san.general_names,
            vec![x509_parser::extensions::GeneralName::URI(
                "spiffe://example.org"
            )]
        );
    }
    assert_eq!(root.subject(), root.issuer());
    assert_eq!(intermediate.issuer(), root.subject());
    assert!(
        intermediate
            .verify_signature(Some(root.public_key()))
            .is_ok()
    );

    let year = 365 * 24 * 3600;
    let start = root.validity().not_before.timestamp();
    assert_eq!(
        root.validity().not_after.timestamp() - start,
        10 * year + 60
    );
    assert_eq!(
        intermediate.validity().not_after.timestamp() - start,
        year + 60
    );
    assert_eq!(f.ca.trust_domain().as_str(), "example.org");
}

#[test]
fn reloaded_ca_issues_certificates_the_original_bundle_accepts() {
    let f = new_ca("example.org");
    let original_bundle = f.ca.trust_bundle().clone();
    let pem = f.ca.to_pem();
    let dir = f.keystore_dir();
    drop(f.ca);
    drop(f.keystore);

    let reopened = open_keystore(&dir);
    let ca = Ca::load(reopened, &pem.root, &pem.intermediate, CaOptions::default()).unwrap();
    assert_eq!(ca.to_pem(), pem);
    assert_eq!(ca.trust_domain().as_str(), "example.org");

    let principal = f.td.clone();
    let principal = entente_types::Principal::from(
        entente_types::AgentId::new(&principal, "research", "summarizer").unwrap(),
    );
    let (_key, csr) = p256_csr();
    let svid = ca.issue_svid(&csr, &principal, now()).unwrap();
    let verified = original_bundle
        .verify_svid(&svid.chain_der, now(), None)
        .unwrap();
    assert_eq!(verified.principal(), &principal);

    // And the bundle survives its own PEM round trip.
    let bundle = TrustBundle::from_pem(&original_bundle.to_pem()).unwrap();
    assert!(bundle.verify_svid(&svid.chain_der, now(), None).is_ok());
}

#[test]
fn a_keystore_with_other_keys_is_refused() {
    let f = new_ca("example.org");
    let pem = f.ca.to_pem();
    let other = new_ca("example.org");
    let err = Ca::load(
        other.keystore.clone(),
        &pem.root,
        &pem.intermediate,
        CaOptions::default(),
    )
    .unwrap_err();
    assert!(
        matches!(err, CaError::KeyMismatch(ref name) if name == ROOT_KEY),
        "{err:?}"
    );

    // Without the root key, the intermediate key is still checked.
    other
        .keystore
        .delete(&KeyName::new(ROOT_KEY).unwrap())
        .unwrap();
    let err = Ca::load(
        other.keystore,
        &pem.root,
        &pem.intermediate,
        CaOptions::default(),
    )
    .unwrap_err();
    assert!(
        matches!(err, CaError::KeyMismatch(ref name) if name == INTERMEDIATE_KEY),
        "{err:?}"
    );

    // An empty keystore has no intermediate key at all.
    let dir = tempfile::tempdir().unwrap();
    let empty = create_keystore(&dir.path().join("ks"));
    let err = Ca::load(empty, &pem.root, &pem.intermediate, CaOptions::default()).unwrap_err();
    assert!(
        matches!(err, CaError::KeyStore(KeyStoreError::KeyNotFound { .. })),
        "{err:?}"
    );
}

#[test]
fn root_key_may_be_kept_offline() {
    let f = new_ca("example.org");
    let pem = f.ca.to_pem();
    f.keystore.delete(&KeyName::new(ROOT_KEY).unwrap()).unwrap();
    let ca = Ca::load(
        f.keystore.clone(),
        &pem.root,
        &pem.intermediate,
        CaOptions::default(),
    )
    .unwrap();
    let (_key, csr) = p256_csr();
    let svid = ca.issue_svid(&csr, &f.agent("a", "b"), now()).unwrap();
    assert!(
        f.ca.trust_bundle()
            .verify_svid(&svid.chain_der, now(), None)
            .is_ok()
    );
}

#[test]
fn bad_pem_inputs_are_refused() {
    let f = new_ca("example.org");
    let pem = f.ca.to_pem();
    let load = |root: &str, intermediate: &str| {
        Ca::load(f.keystore.clone(), root, intermediate, CaOptions::default())
    };
    assert!(matches!(
        load("", &pem.intermediate),
        Err(CaError::Pem("root"))
    ));
    let both = format!("{}{}", pem.root, pem.intermediate);
    assert!(matches!(
        load(&pem.root, &both),
        Err(CaError::Pem("intermediate"))
    ));
    // Swapped: the "root" is not self-signed.
    assert!(matches!(
        load(&pem.intermediate, &pem.root),
        Err(CaError::TrustBundle(_))
    ));
    // An intermediate from another CA.
    let other = new_ca("example.org");
    assert!(matches!(
        load(&pem.root, &other.ca.to_pem().intermediate),
        Err(CaError::TrustBundle(_))
    ));
}

#[test]
fn init_never_replaces_existing_keys() {
    let f = new_ca("example.org");
    let err = Ca::init(f.keystore.clone(), &f.td, CaOptions::default(), now()).unwrap_err();
    assert!(
        matches!(err, CaError::KeyStore(KeyStoreError::KeyExists { .. })),
        "{err:?}"
    );
    // The existing CA still works.
    let (_key, csr) = p256_csr();
    assert!(f.ca.issue_svid(&csr, &f.agent("a", "b"), now()).is_ok());

    // If only the intermediate name is taken, the new root key is cleaned up again.
    let dir = tempfile::tempdir().unwrap();
    let keystore = create_keystore(&dir.path().join("ks"));
    keystore
        .generate(
            &KeyName::new(INTERMEDIATE_KEY).unwrap(),
            KeyAlgorithm::EcdsaP256Sha256,
        )
        .unwrap();
    let td = TrustDomain::new("example.org").unwrap();
    assert!(Ca::init(keystore.clone(), &td, CaOptions::default(), now()).is_err());
    assert!(!keystore.contains(&KeyName::new(ROOT_KEY).unwrap()).unwrap());
}

#[test]
fn invalid_options_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let keystore = create_keystore(&dir.path().join("ks"));
    let td = TrustDomain::new("example.org").unwrap();
    let zero_ttl = CaOptions {
        svid_ttl: Duration::ZERO,
        ..CaOptions::default()
    };
    assert!(matches!(
        Ca::init(keystore.clone(), &td, zero_ttl, now()),
        Err(CaError::InvalidOptions(_))
    ));
    let forever = CaOptions {
        root_validity: Duration::from_secs(u64::MAX / 4),
        ..CaOptions::default()
    };
    assert!(matches!(
        Ca::init(keystore.clone(), &td, forever, now()),
        Err(CaError::InvalidOptions(_))
    ));
    assert!(keystore.list().unwrap().is_empty());
}

#[test]
fn svids_stop_at_the_intermediate_lifetime() {
    let options = CaOptions {
        intermediate_validity: Duration::from_secs(1800),
        ..CaOptions::default()
    };
    let f = common::new_ca_with("example.org", options);
    let (_, intermediate) = X509Certificate::from_der(f.ca.intermediate_cert()).unwrap();
    let (_key, csr) = p256_csr();
    let svid = f.ca.issue_svid(&csr, &f.agent("a", "b"), now()).unwrap();
    let (_, leaf) = X509Certificate::from_der(&svid.cert_der).unwrap();
    assert_eq!(leaf.validity().not_after, intermediate.validity().not_after);

    let err =
        f.ca.issue_svid(&csr, &f.agent("a", "b"), now() + Duration::from_secs(1800))
            .unwrap_err();
    assert!(matches!(err, IssueError::CaNotValid), "{err:?}");
}

#[test]
fn a_ca_key_of_the_wrong_algorithm_is_refused() {
    let f = new_ca("example.org");
    let pem = f.ca.to_pem();
    let dir = tempfile::tempdir().unwrap();
    let keystore = create_keystore(&dir.path().join("ks"));
    keystore
        .generate(
            &KeyName::new(INTERMEDIATE_KEY).unwrap(),
            KeyAlgorithm::Ed25519,
        )
        .unwrap();
    let err = Ca::load(keystore, &pem.root, &pem.intermediate, CaOptions::default()).unwrap_err();
    assert!(
        matches!(err, CaError::WrongKeyAlgorithm(ref name) if name == INTERMEDIATE_KEY),
        "{err:?}"
    );
}
