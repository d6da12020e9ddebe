//! Issuing X509-SVIDs from CSRs and verifying them against the trust bundle.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::time::Duration;

use common::{RcgenCa, csr_with, leaf_params, new_ca, now, p256_csr, uri};
use entente_ca::{IssueError, Revocations, SvidError, VerifiedRevocationList};
use entente_types::{AgentId, Principal, TrustDomain};
use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType};
use rustls_pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::OID_X509_EXT_SUBJECT_ALT_NAME;
use x509_parser::prelude::FromDer;

#[test]
fn issued_svid_verifies_as_client_and_server() {
    let f = new_ca("example.org");
    let principal = f.agent("research", "summarizer");
    let (_key, csr) = p256_csr();
    let svid = f.ca.issue_svid(&csr, &principal, now()).unwrap();

    assert_eq!(svid.chain_der.len(), 2);
    assert_eq!(svid.chain_der[0], svid.cert_der);
    assert_eq!(&svid.chain_der[1], f.ca.intermediate_cert());
    assert_eq!(svid.not_after, now() + Duration::from_secs(3600));

    let bundle = f.ca.trust_bundle();
    let verified = bundle.verify_svid(&svid.chain_der, now(), None).unwrap();
    assert_eq!(verified.principal(), &principal);
    assert_eq!(verified.serial(), svid.serial.as_slice());
    assert_eq!(verified.not_after(), svid.not_after);

    let server = bundle
        .verify_server_svid(&svid.chain_der, now(), None)
        .unwrap();
    assert_eq!(server, verified);

    // Humans get SVIDs too.
    let human = f.human("alice");
    let svid = f.ca.issue_svid(&csr, &human, now()).unwrap();
    let verified = bundle.verify_svid(&svid.chain_der, now(), None).unwrap();
    assert_eq!(verified.principal(), &human);
}

#[test]
fn leaf_alone_verifies_through_the_bundle_intermediate() {
    let f = new_ca("example.org");
    let (_key, csr) = p256_csr();
    let svid = f.ca.issue_svid(&csr, &f.agent("a", "b"), now()).unwrap();
    let verified =
        f.ca.trust_bundle()
            .verify_svid(std::slice::from_ref(&svid.cert_der), now(), None)
            .unwrap();
    assert_eq!(verified.principal(), &f.agent("a", "b"));
}

#[test]
fn certificate_has_the_svid_profile() {
    let f = new_ca("example.org");
    let principal = f.agent("research", "summarizer");
    let (key, csr) = p256_csr();
    let svid = f.ca.issue_svid(&csr, &principal, now()).unwrap();
    let (rest, cert) = X509Certificate::from_der(&svid.cert_der).unwrap();
    assert!(rest.is_empty());

    // Exactly one SAN, a URI, the principal; critical because the subject is empty.
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert!(san.critical);
    assert_eq!(
        san.value.general_names,
        vec![GeneralName::URI(principal.as_str())]
    );
    assert_eq!(cert.subject().iter_attributes().count(), 0);

    // cA=false, present and critical.
    let bc = cert.basic_constraints().unwrap().unwrap();
    assert!(bc.critical);
    assert!(!bc.value.ca);
    assert!(!cert.is_ca());

    // KU digitalSignature only.
    let ku = cert.key_usage().unwrap().unwrap();
    assert!(ku.critical);
    assert!(ku.value.digital_signature());
    assert_eq!(ku.value.flags, 1, "only digitalSignature");

    // EKU clientAuth + serverAuth only.
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && eku.server_auth);
    assert!(!eku.any && !eku.code_signing && !eku.email_protection && eku.other.is_empty());

    // Random positive 16-byte serial.
    assert_eq!(svid.serial.len(), 16);
    assert!(svid.serial[0] & 0x80 == 0 && svid.serial[0] != 0);
    assert_eq!(cert.raw_serial(), svid.serial.as_slice());
    let other = f.ca.issue_svid(&csr, &principal, now()).unwrap();
    assert_ne!(other.serial, svid.serial);

    // Validity: backdated one minute, TTL one hour.
    let secs =
        |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let validity = cert.validity();
    assert_eq!(
        validity.not_before.timestamp(),
        i64::try_from(secs(now()) - 60).unwrap()
    );
    assert_eq!(
        validity.not_after.timestamp(),
        i64::try_from(secs(now()) + 3600).unwrap()
    );

    // The key is the CSR's, the issuer the intermediate, ECDSA P-256 with SHA-256.
    assert_eq!(
        cert.public_key().subject_public_key.data.as_ref(),
        key.public_key_raw()
    );
    let (_, intermediate) = X509Certificate::from_der(f.ca.intermediate_cert()).unwrap();
    assert_eq!(cert.issuer(), intermediate.subject());
    assert!(
        cert.verify_signature(Some(intermediate.public_key()))
            .is_ok()
    );
}

#[test]
fn names_asked_for_in_the_csr_are_ignored() {
    let f = new_ca("example.org");
    let principal = f.agent("ops", "deployer");

    let mut params = CertificateParams::new(vec!["evil.example".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "admin");
    params
        .subject_alt_names
        .push(uri("spiffe://example.org/agent/ops/root"));
    params
        .subject_alt_names
        .push(uri("spiffe://evil.example/agent/x/y"));
    params
        .subject_alt_names
        .push(SanType::Rfc822Name("a@b.example".try_into().unwrap()));
    params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
    let (_key, csr) = csr_with(params);

    let svid = f.ca.issue_svid(&csr, &principal, now()).unwrap();
    let (_, cert) = X509Certificate::from_der(&svid.cert_der).unwrap();
    let sans: Vec<_> = cert
        .extensions()
        .iter()
        .filter(|e| e.oid == OID_X509_EXT_SUBJECT_ALT_NAME)
        .collect();
    assert_eq!(sans.len(), 1);
    let ParsedExtension::SubjectAlternativeName(san) = sans[0].parsed_extension() else {
        panic!("SAN did not parse");
    };
    assert_eq!(
        san.general_names,
        vec![GeneralName::URI(principal.as_str())]
    );
    assert_eq!(cert.subject().iter_attributes().count(), 0);
    assert!(!cert.is_ca());
    assert_eq!(cert.key_usage().unwrap().unwrap().value.flags, 1);
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && eku.server_auth && !eku.code_signing);

    let verified =
        f.ca.trust_bundle()
            .verify_svid(&svid.chain_der, now(), None)
            .unwrap();
    assert_eq!(verified.principal(), &principal);
}

#[test]
fn csr_with_a_tampered_signature_is_refused() {
    let f = new_ca("example.org");
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "tamper-me");
    let (_key, mut csr) = csr_with(params);
    let at = csr.windows(9).position(|w| w == b"tamper-me").unwrap();
    csr[at] ^= 0x01;
    let err =
        f.ca.issue_svid(&csr, &f.agent("a", "b"), now())
            .unwrap_err();
    assert!(matches!(err, IssueError::BadCsrSignature), "{err:?}");

    // And a flipped bit in the signature itself.
    let (_key, mut csr) = p256_csr();
    let last = csr.len() - 1;
    csr[last] ^= 0x01;
    let err =
        f.ca.issue_svid(&csr, &f.agent("a", "b"), now())
            .unwrap_err();
    assert!(matches!(err, IssueError::BadCsrSignature), "{err:?}");
}

#[test]
fn non_p256_csrs_are_refused() {
    let f = new_ca("example.org");
    for alg in [&rcgen::PKCS_ED25519, &rcgen::PKCS_ECDSA_P384_SHA384] {
        let key = KeyPair::generate_for(alg).unwrap();
        let csr = CertificateParams::default()
            .serialize_request(&key)
            .unwrap();
        let err =
            f.ca.issue_svid(csr.der(), &f.agent("a", "b"), now())
                .unwrap_err();
        assert!(matches!(err, IssueError::UnsupportedKey), "{err:?}");
    }
    let err =
        f.ca.issue_svid(b"not a csr", &f.agent("a", "b"), now())
            .unwrap_err();
    assert!(matches!(err, IssueError::MalformedCsr), "{err:?}");
}

#[test]
fn principal_of_another_trust_domain_is_not_issued() {
    let f = new_ca("example.org");
    let other = TrustDomain::new("other.org").unwrap();
    let principal = Principal::from(AgentId::new(&other, "a", "b").unwrap());
    let (_key, csr) = p256_csr();
    let err = f.ca.issue_svid(&csr, &principal, now()).unwrap_err();
    assert!(matches!(err, IssueError::ForeignPrincipal(_)), "{err:?}");
}

#[test]
fn certificate_from_another_ca_is_refused() {
    let ours = new_ca("example.org");
    let theirs = new_ca("example.org");
    let (_key, csr) = p256_csr();
    let svid = theirs
        .ca
        .issue_svid(&csr, &theirs.agent("a", "b"), now())
        .unwrap();
    let err = ours
        .ca
        .trust_bundle()
        .verify_svid(&svid.chain_der, now(), None)
        .unwrap_err();
    assert_eq!(err, SvidError::UnknownIssuer);

    // Presenting their chain with our intermediate appended doesn't help.
    let mut chain = svid.chain_der.clone();
    chain.push(ours.ca.intermediate_cert().clone());
    let err = ours
        .ca
        .trust_bundle()
        .verify_svid(&chain, now(), None)
        .unwrap_err();
    assert_eq!(err, SvidError::UnknownIssuer);
}

#[test]
fn expired_and_not_yet_valid_certificates_are_refused() {
    let f = new_ca("example.org");
    let (_key, csr) = p256_csr();
    let svid = f.ca.issue_svid(&csr, &f.agent("a", "b"), now()).unwrap();
    let bundle = f.ca.trust_bundle();
    assert!(
        bundle
            .verify_svid(&svid.chain_der, svid.not_after, None)
            .is_ok()
    );
    let err = bundle
        .verify_svid(
            &svid.chain_der,
            svid.not_after + Duration::from_secs(1),
            None,
        )
        .unwrap_err();
    assert_eq!(err, SvidError::Expired);
    let err = bundle
        .verify_svid(&svid.chain_der, now() - Duration::from_secs(120), None)
        .unwrap_err();
    assert_eq!(err, SvidError::NotYetValid);
    // The one-minute backdate covers a slow relying-party clock.
    assert!(
        bundle
            .verify_svid(&svid.chain_der, now() - Duration::from_secs(59), None)
            .is_ok()
    );
}

#[test]
fn revoked_serial_and_revoked_principal_are_refused() {
    let f = new_ca("example.org");
    let (_key, csr) = p256_csr();
    let alice = f.agent("team", "alice");
    let bob = f.agent("team", "bob");
    let alice_svid = f.ca.issue_svid(&csr, &alice, now()).unwrap();
    let bob_svid = f.ca.issue_svid(&csr, &bob, now()).unwrap();
    let bundle = f.ca.trust_bundle();

    let verify_list = |revocations: &Revocations| {
        let list = f.ca.sign_revocations(revocations, now()).unwrap();
        VerifiedRevocationList::verify(list, bundle, now()).unwrap()
    };

    let mut revocations = Revocations::new();
    let empty = verify_list(&revocations);
    assert!(
        bundle
            .verify_svid(&alice_svid.chain_der, now(), Some(&empty))
            .is_ok()
    );

    assert!(revocations.revoke_serial(&alice_svid.serial).unwrap());
    let list = verify_list(&revocations);
    assert_eq!(
        bundle
            .verify_svid(&alice_svid.chain_der, now(), Some(&list))
            .unwrap_err(),
        SvidError::RevokedSerial
    );
    assert!(
        bundle
            .verify_svid(&bob_svid.chain_der, now(), Some(&list))
            .is_ok()
    );
    // A fresh certificate for alice is not covered by the serial.
    let alice_again = f.ca.issue_svid(&csr, &alice, now()).unwrap();
    assert!(
        bundle
            .verify_svid(&alice_again.chain_der, now(), Some(&list))
            .is_ok()
    );

    assert!(revocations.revoke_principal(&bob));
    let list = verify_list(&revocations);
    assert_eq!(
        bundle
            .verify_svid(&bob_svid.chain_der, now(), Some(&list))
            .unwrap_err(),
        SvidError::RevokedPrincipal(bob.to_string())
    );
    assert_eq!(
        bundle
            .verify_server_svid(&bob_svid.chain_der, now(), Some(&list))
            .unwrap_err(),
        SvidError::RevokedPrincipal(bob.to_string())
    );
}

#[test]
fn revoking_the_intermediate_serial_refuses_its_leaves() {
    let f = new_ca("example.org");
    let (_key, csr) = p256_csr();
    let svid = f.ca.issue_svid(&csr, &f.agent("a", "b"), now()).unwrap();
    let (_, intermediate) = X509Certificate::from_der(f.ca.intermediate_cert()).unwrap();
    let mut revocations = Revocations::new();
    revocations
        .revoke_serial(intermediate.raw_serial())
        .unwrap();
    let list = f.ca.sign_revocations(&revocations, now()).unwrap();
    let list = VerifiedRevocationList::verify(list, f.ca.trust_bundle(), now()).unwrap();
    assert_eq!(
        f.ca.trust_bundle()
            .verify_svid(&svid.chain_der, now(), Some(&list))
            .unwrap_err(),
        SvidError::RevokedSerial
    );
}

#[test]
fn empty_chain_and_ca_certificates_are_refused() {
    let f = new_ca("example.org");
    let bundle = f.ca.trust_bundle();
    assert_eq!(
        bundle.verify_svid(&[], now(), None).unwrap_err(),
        SvidError::EmptyChain
    );
    let err = bundle
        .verify_svid(&[f.ca.intermediate_cert().clone()], now(), None)
        .unwrap_err();
    assert_eq!(err, SvidError::NotALeaf);
    let err = bundle
        .verify_svid(&[CertificateDer::from(vec![0x30, 0x00])], now(), None)
        .unwrap_err();
    assert!(matches!(err, SvidError::Rejected(_)), "{err:?}");
}

#[test]
fn spiffe_rules_are_enforced_on_certificates_from_other_issuers() {
    let ca = RcgenCa::new("example.org");
    let bundle = ca.bundle();
    let at = now();

    let good = ca.issue(&leaf_params(vec![uri("spiffe://example.org/agent/s/n")]));
    assert_eq!(
        bundle
            .verify_svid(&good, at, None)
            .unwrap()
            .principal()
            .as_str(),
        "spiffe://example.org/agent/s/n"
    );

    let two = ca.issue(&leaf_params(vec![
        uri("spiffe://example.org/agent/s/n"),
        uri("spiffe://example.org/agent/s/m"),
    ]));
    assert_eq!(
        bundle.verify_svid(&two, at, None).unwrap_err(),
        SvidError::UriSanCount(2)
    );

    let none = ca.issue(&leaf_params(vec![SanType::DnsName(
        "host.example.org".try_into().unwrap(),
    )]));
    assert_eq!(
        bundle.verify_svid(&none, at, None).unwrap_err(),
        SvidError::UriSanCount(0)
    );

    let workload = ca.issue(&leaf_params(vec![uri(
        "spiffe://example.org/ns/default/sa/web",
    )]));
    assert!(matches!(
        bundle.verify_svid(&workload, at, None).unwrap_err(),
        SvidError::BadSpiffeId(_)
    ));

    let foreign = ca.issue(&leaf_params(vec![uri("spiffe://other.org/agent/s/n")]));
    assert!(matches!(
        bundle.verify_svid(&foreign, at, None).unwrap_err(),
        SvidError::ForeignTrustDomain { .. }
    ));

    let mut signer = leaf_params(vec![uri("spiffe://example.org/agent/s/n")]);
    signer.key_usages.push(KeyUsagePurpose::KeyCertSign);
    assert_eq!(
        bundle
            .verify_svid(&ca.issue(&signer), at, None)
            .unwrap_err(),
        SvidError::NotALeaf
    );

    let mut client_only = leaf_params(vec![uri("spiffe://example.org/agent/s/n")]);
    client_only.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let chain = ca.issue(&client_only);
    assert!(bundle.verify_svid(&chain, at, None).is_ok());
    assert!(matches!(
        bundle.verify_server_svid(&chain, at, None).unwrap_err(),
        SvidError::Rejected(_)
    ));
}
