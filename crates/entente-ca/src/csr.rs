//! Checking a PKCS#10 certificate signing request from an enrolling agent.
//!
//! Only the key and the self-signature matter: the subject and every requested extension are
//! ignored, because the CA decides the name (from the join token) and the profile.

use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1, UnparsedPublicKey};
use rcgen::{PublicKeyData, SignatureAlgorithm};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::OID_SIG_ECDSA_WITH_SHA256;
use x509_parser::prelude::FromDer;

use crate::IssueError;

/// The DER prefix of every SubjectPublicKeyInfo holding an uncompressed P-256 point:
/// `SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING (0 unused bits) 0x04 … }`,
/// after which come the 64 coordinate bytes.
const P256_SPKI_PREFIX: [u8; 27] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00, 0x04,
];
const P256_SPKI_LEN: usize = 91;

/// The public key of a CSR whose self-signature verified: an uncompressed P-256 point.
#[derive(Debug, Clone)]
pub(crate) struct CsrKey {
    point: Vec<u8>,
}

impl PublicKeyData for CsrKey {
    fn der_bytes(&self) -> &[u8] {
        &self.point
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

/// Parses `der` as a CSR, requires an ECDSA P-256 key and an `ecdsa-with-SHA256`
/// self-signature, and verifies that signature.
pub(crate) fn verify(der: &[u8]) -> Result<CsrKey, IssueError> {
    let (rest, csr) =
        X509CertificationRequest::from_der(der).map_err(|_| IssueError::MalformedCsr)?;
    if !rest.is_empty() {
        return Err(IssueError::MalformedCsr);
    }
    let info = &csr.certification_request_info;
    let point = p256_point(info.subject_pki.raw).ok_or(IssueError::UnsupportedKey)?;

    // RFC 5758 §3.2: the parameters of ecdsa-with-SHA256 are absent.
    let alg = &csr.signature_algorithm;
    if alg.algorithm != OID_SIG_ECDSA_WITH_SHA256 || alg.parameters.is_some() {
        return Err(IssueError::UnsupportedSignatureAlgorithm);
    }
    if csr.signature_value.unused_bits != 0 {
        return Err(IssueError::BadCsrSignature);
    }
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, point)
        .verify(info.raw, &csr.signature_value.data)
        .map_err(|_| IssueError::BadCsrSignature)?;
    Ok(CsrKey {
        point: point.to_vec(),
    })
}

/// The uncompressed point (65 bytes, `0x04 || X || Y`) of a P-256 SubjectPublicKeyInfo, or
/// `None` for any other key type or encoding.
pub(crate) fn p256_point(spki_der: &[u8]) -> Option<&[u8]> {
    if spki_der.len() != P256_SPKI_LEN || !spki_der.starts_with(&P256_SPKI_PREFIX) {
        return None;
    }
    spki_der.get(P256_SPKI_PREFIX.len() - 1..)
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )]

    use rcgen::{CertificateParams, KeyPair};

    use super::*;

    #[test]
    fn spki_prefix_matches_rcgen_p256_keys() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let spki = key.subject_public_key_info();
        assert_eq!(spki.len(), P256_SPKI_LEN);
        assert!(spki.starts_with(&P256_SPKI_PREFIX));
    }

    #[test]
    fn accepts_a_p256_csr_and_returns_its_key() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = CertificateParams::default()
            .serialize_request(&key)
            .unwrap();
        let got = verify(csr.der()).unwrap();
        assert_eq!(got.point, key.public_key_raw());
    }

    #[test]
    fn refuses_p384_and_trailing_bytes() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let csr = CertificateParams::default()
            .serialize_request(&key)
            .unwrap();
        assert!(matches!(verify(csr.der()), Err(IssueError::UnsupportedKey)));

        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut der = CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .der()
            .to_vec();
        der.push(0);
        assert!(matches!(verify(&der), Err(IssueError::MalformedCsr)));
        assert!(matches!(verify(&[]), Err(IssueError::MalformedCsr)));
    }
}
