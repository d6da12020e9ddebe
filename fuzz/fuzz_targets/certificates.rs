//! Certificates from bytes. The first byte picks what the rest is:
//!
//! - 0: a trust bundle in PEM, as an agent receives it at enrollment and renewal: parsed,
//!   written again, and offered to the fixture's bundle to adopt its intermediates (and the
//!   other way round);
//! - 1: a DER intermediate certificate, checked against the fixture's roots;
//! - 2: a DER client certificate (X509-SVID), verified as the hub verifies what a client
//!   presents in the TLS handshake: chain, validity, SPIFFE ID, revocation;
//! - 3: the same as a server certificate, as an agent verifies the hub's.
#![no_main]

use entente_ca::TrustBundle;
use entente_fuzz::Fixture;
use libfuzzer_sys::fuzz_target;
use rustls_pki_types::CertificateDer;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    let fixture = entente_fuzz::fixture();
    match selector % 4 {
        0 => trust_bundle(fixture, bytes),
        1 => {
            let der = CertificateDer::from(bytes.to_vec());
            let _ = TrustBundle::new(fixture.trust.roots().to_vec(), vec![der]);
        }
        2 => {
            let chain = [CertificateDer::from(bytes)];
            let _ = fixture.trust.verify_svid(&chain, entente_fuzz::now(), None);
            let _ =
                fixture
                    .trust
                    .verify_svid(&chain, entente_fuzz::now(), Some(&fixture.revocations));
        }
        _ => {
            let chain = [CertificateDer::from(bytes)];
            let _ = fixture
                .trust
                .verify_server_svid(&chain, entente_fuzz::now(), None);
        }
    }
});

fn trust_bundle(fixture: &Fixture, bytes: &[u8]) {
    let Ok(pem) = std::str::from_utf8(bytes) else {
        return;
    };
    let Ok(offered) = TrustBundle::from_pem(pem) else {
        return;
    };
    let _ = TrustBundle::from_pem(&offered.to_pem());
    let _ = (offered.trust_domain(), offered.authority());
    let _ = fixture.trust.adopt_intermediates(&offered);
    let _ = offered.adopt_intermediates(&fixture.trust);
}
