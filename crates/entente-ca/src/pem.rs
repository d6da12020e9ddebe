//! PEM for certificates (RFC 7468): encoding by the `pem` crate, decoding by rustls-pki-types.

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// Encodes one certificate as a `CERTIFICATE` PEM block ending in a newline.
pub(crate) fn encode_cert(der: &[u8]) -> String {
    let block = pem_crate::Pem::new("CERTIFICATE", der.to_vec());
    pem_crate::encode_config(
        &block,
        pem_crate::EncodeConfig::new().set_line_ending(pem_crate::LineEnding::LF),
    )
}

/// Every `CERTIFICATE` block in `pem`, in order; other block types are skipped.
pub(crate) fn decode_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )]

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn lines_are_at_most_64_columns() {
        let pem = encode_cert(&[7u8; 200]);
        assert!(pem.lines().all(|l| l.len() <= 64));
        assert!(pem.ends_with("-----END CERTIFICATE-----\n"));
    }

    proptest! {
        #[test]
        fn pem_round_trips_through_pki_types(bytes in proptest::collection::vec(any::<u8>(), 1..600)) {
            let pem = encode_cert(&bytes);
            let decoded = decode_certs(&pem).unwrap();
            prop_assert_eq!(decoded.len(), 1);
            prop_assert_eq!(decoded[0].as_ref(), bytes.as_slice());
        }
    }
}
