//! Building trust bundles from certificates and PEM.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::{RcgenCa, new_ca, now, p256_csr};
use entente_ca::{TrustBundle, TrustBundleError};
use entente_crypto::signer_id;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

#[test]
fn pem_round_trip_keeps_roots_intermediates_and_trust_domain() {
    let f = new_ca("example.org");
    let bundle = f.ca.trust_bundle();
    assert_eq!(bundle.roots(), std::slice::from_ref(f.ca.root_cert()));
    assert_eq!(
        bundle.intermediates(),
        std::slice::from_ref(f.ca.intermediate_cert())
    );
    let pem = bundle.to_pem();
    assert_eq!(pem.matches("-----BEGIN CERTIFICATE-----").count(), 2);

    let again = TrustBundle::from_pem(&pem).unwrap();
    assert_eq!(again.roots(), bundle.roots());
    assert_eq!(again.intermediates(), bundle.intermediates());
    assert_eq!(again.trust_domain().as_str(), "example.org");
    assert_eq!(again.to_pem(), pem);

    // Order in the PEM does not matter; other blocks are skipped.
    let ca_pem = f.ca.to_pem();
    let shuffled = format!(
        "{}-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n{}",
        ca_pem.intermediate, ca_pem.root
    );
    let again = TrustBundle::from_pem(&shuffled).unwrap();
    assert_eq!(again.roots(), bundle.roots());
    assert_eq!(again.intermediates(), bundle.intermediates());
}

#[test]
fn authority_lists_every_ca_key_under_its_spki_hash() {
    let f = new_ca("example.org");
    let authority = f.ca.trust_bundle().authority();
    assert_eq!(authority.len(), 2);
    let (_, intermediate) = X509Certificate::from_der(f.ca.intermediate_cert()).unwrap();
    assert_eq!(signer_id(intermediate.public_key().raw), f.ca.signer_id());
}

#[test]
fn bundles_with_several_cas_of_one_trust_domain_verify_each() {
    let a = new_ca("example.org");
    let b = new_ca("example.org");
    let pem = format!(
        "{}{}",
        a.ca.trust_bundle().to_pem(),
        b.ca.trust_bundle().to_pem()
    );
    let bundle = TrustBundle::from_pem(&pem).unwrap();
    assert_eq!(bundle.roots().len(), 2);
    assert_eq!(bundle.authority().len(), 4);
    let (_key, csr) = p256_csr();
    for f in [&a, &b] {
        let svid = f.ca.issue_svid(&csr, &f.agent("x", "y"), now()).unwrap();
        assert!(bundle.verify_svid(&svid.chain_der, now(), None).is_ok());
    }
}

#[test]
fn malformed_bundles_are_refused() {
    let f = new_ca("example.org");
    let other = new_ca("example.org");
    let root = f.ca.root_cert().clone();
    let intermediate = f.ca.intermediate_cert().clone();

    assert_eq!(
        TrustBundle::new(vec![], vec![intermediate.clone()]).unwrap_err(),
        TrustBundleError::NoRoot
    );
    assert_eq!(
        TrustBundle::from_pem(&f.ca.to_pem().intermediate).unwrap_err(),
        TrustBundleError::NoRoot
    );
    assert_eq!(
        TrustBundle::new(vec![intermediate.clone()], vec![]).unwrap_err(),
        TrustBundleError::BadSelfSignature { index: 0 }
    );
    assert_eq!(
        TrustBundle::new(
            vec![root.clone()],
            vec![other.ca.intermediate_cert().clone()]
        )
        .unwrap_err(),
        TrustBundleError::NotChained { index: 1 }
    );

    // A leaf is not a CA.
    let (_key, csr) = p256_csr();
    let svid = f.ca.issue_svid(&csr, &f.agent("a", "b"), now()).unwrap();
    assert_eq!(
        TrustBundle::new(vec![root.clone()], vec![svid.cert_der]).unwrap_err(),
        TrustBundleError::NotCa { index: 1 }
    );

    // Two trust domains in one bundle.
    let foreign = new_ca("other.org");
    assert!(matches!(
        TrustBundle::new(vec![root.clone(), foreign.ca.root_cert().clone()], vec![]).unwrap_err(),
        TrustBundleError::TrustDomainMismatch { .. }
    ));

    assert!(matches!(
        TrustBundle::new(
            vec![root, rustls_pki_types::CertificateDer::from(vec![1, 2, 3])],
            vec![]
        )
        .unwrap_err(),
        TrustBundleError::Malformed { index: 1, .. }
    ));
    assert!(matches!(
        TrustBundle::from_pem("-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n")
            .unwrap_err(),
        TrustBundleError::Pem(_)
    ));
    assert_eq!(
        TrustBundle::from_pem("").unwrap_err(),
        TrustBundleError::NoRoot
    );
}

#[test]
fn roots_without_a_spiffe_trust_domain_are_refused() {
    let ca = RcgenCa::new("example.org");
    assert_eq!(ca.bundle().trust_domain().as_str(), "example.org");

    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let anonymous = params.self_signed(&key).unwrap();
    assert_eq!(
        TrustBundle::new(vec![anonymous.der().clone()], vec![]).unwrap_err(),
        TrustBundleError::NoTrustDomain
    );
    // Nor can an anonymous root ride along with a proper one.
    let proper = ca.bundle().roots()[0].clone();
    assert_eq!(
        TrustBundle::new(vec![proper, anonymous.der().clone()], vec![]).unwrap_err(),
        TrustBundleError::NoTrustDomain
    );
}
