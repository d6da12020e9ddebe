//! A check of an enrollment CSR made before the join token is spent, so that an agent whose
//! CSR is unusable learns it without losing its token.
//!
//! It mirrors the CA's own check (`entente-ca`, which stays authoritative: the CA checks the
//! CSR again when it issues): a PKCS#10 request in DER with nothing after it, an ECDSA P-256
//! key, an `ecdsa-with-SHA256` signature without parameters, and a self-signature that
//! verifies.

use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::OID_SIG_ECDSA_WITH_SHA256;
use x509_parser::prelude::FromDer;

/// The DER prefix of a SubjectPublicKeyInfo holding an uncompressed P-256 point (id-ecPublicKey,
/// prime256v1, a bit string starting with `0x04`), followed by the 64 coordinate bytes.
const P256_SPKI_PREFIX: [u8; 27] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00, 0x04,
];
const P256_SPKI_LEN: usize = 91;

/// Why a CSR would be refused by the CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CsrProblem {
    /// Not one DER PKCS#10 request.
    #[error("the csr is not a valid pkcs#10 request")]
    Malformed,
    /// The key is not ECDSA P-256.
    #[error("the csr key is not an ecdsa p-256 key")]
    UnsupportedKey,
    /// The signature algorithm is not `ecdsa-with-SHA256`.
    #[error("the csr is not signed with ecdsa-with-sha256")]
    UnsupportedSignatureAlgorithm,
    /// The self-signature does not verify.
    #[error("the csr signature does not verify")]
    BadSignature,
}

/// Checks `der` as the CA will.
pub(crate) fn precheck(der: &[u8]) -> Result<(), CsrProblem> {
    let (rest, csr) = X509CertificationRequest::from_der(der).map_err(|_| CsrProblem::Malformed)?;
    if !rest.is_empty() {
        return Err(CsrProblem::Malformed);
    }
    let spki = csr.certification_request_info.subject_pki.raw;
    if spki.len() != P256_SPKI_LEN || !spki.starts_with(&P256_SPKI_PREFIX) {
        return Err(CsrProblem::UnsupportedKey);
    }
    let algorithm = &csr.signature_algorithm;
    if algorithm.algorithm != OID_SIG_ECDSA_WITH_SHA256 || algorithm.parameters.is_some() {
        return Err(CsrProblem::UnsupportedSignatureAlgorithm);
    }
    if csr.signature_value.unused_bits != 0 {
        return Err(CsrProblem::BadSignature);
    }
    csr.verify_signature().map_err(|_| CsrProblem::BadSignature)
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

    fn csr(alg: &'static rcgen::SignatureAlgorithm) -> Vec<u8> {
        let key = KeyPair::generate_for(alg).unwrap();
        CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .der()
            .to_vec()
    }

    #[test]
    fn accepts_what_the_ca_accepts_and_refuses_the_rest() {
        let good = csr(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert_eq!(precheck(&good), Ok(()));

        assert_eq!(
            precheck(&csr(&rcgen::PKCS_ECDSA_P384_SHA384)),
            Err(CsrProblem::UnsupportedKey)
        );
        assert_eq!(precheck(&[]), Err(CsrProblem::Malformed));
        assert_eq!(precheck(b"not a csr"), Err(CsrProblem::Malformed));
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(precheck(&trailing), Err(CsrProblem::Malformed));
        // Flip a bit of the signature (the last bytes of the DER).
        let mut tampered = good;
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(precheck(&tampered), Err(CsrProblem::BadSignature));
    }
}
