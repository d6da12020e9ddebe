//! The handshake: who gets in and who is refused, against a real hub on 127.0.0.1:0. The
//! refusals every hub must make (no certificate, another CA's, expired, revoked, TLS 1.2) are
//! in `entente-testkit`'s `tests/bad_input.rs`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod support;

use std::time::SystemTime;

use entente_hub::client_tls::HubServerVerifier;
use entente_hub::{HUB_NAME, HUB_SEGMENT};
use rustls::client::danger::ServerCertVerifier;
use rustls_pki_types::{ServerName, UnixTime};
use support::{TD, TestCa, config, eventually, probe, start};

fn hub_name() -> String {
    format!("hub.{TD}")
}

#[tokio::test]
async fn an_agent_with_a_valid_svid_gets_in() {
    let ca = TestCa::new();
    let hub = start(&ca, config()).await;
    let alice = ca.agent("shop", "alice");
    probe(
        hub.local_addr(),
        alice.client_config(ca.trust()),
        &hub_name(),
    )
    .await
    .unwrap();
    eventually("the connection is registered", || hub.connections() == 1).await;
    assert_eq!(hub.stats().connections, 1);
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_client_certificate_naming_the_hub_is_refused() {
    let ca = TestCa::new();
    let hub = start(&ca, config()).await;
    let impostor = ca.identity(ca.principal(HUB_SEGMENT, HUB_NAME), SystemTime::now());
    let err = probe(
        hub.local_addr(),
        impostor.client_config(ca.trust()),
        &hub_name(),
    )
    .await
    .unwrap_err();
    assert!(err.contains("alert"), "{err}");
}

#[tokio::test]
async fn garbage_instead_of_a_client_hello_is_counted_and_harmless() {
    use tokio::io::AsyncWriteExt;
    let ca = TestCa::new();
    let hub = start(&ca, config()).await;
    let mut tcp = tokio::net::TcpStream::connect(hub.local_addr())
        .await
        .unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    eventually("the failure is counted", || {
        hub.stats().handshakes_failed == 1
    })
    .await;
    let alice = ca.agent("shop", "alice");
    probe(
        hub.local_addr(),
        alice.client_config(ca.trust()),
        &hub_name(),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn the_enroll_name_is_reachable_without_a_certificate_and_serves_only_enrollment() {
    let ca = TestCa::new();
    let hub = start(&ca, config()).await;
    let client = support::enroll_client(&hub).await;
    let err = client
        .session()
        .await
        .expect_err("no session without identity");
    assert_eq!(err.code(), tonic::Code::Unimplemented);
    for path in [entente_hub::RENEW_PATH, entente_hub::DIRECTORY_PATH] {
        let err = client
            .open(path)
            .await
            .expect_err("no renewal or directory without identity");
        assert_eq!(err.code(), tonic::Code::Unimplemented, "{path}");
    }
    // An enrollment connection is not an authenticated one.
    assert_eq!(hub.connections(), 0);
}

#[tokio::test]
async fn enrollment_is_not_served_over_mutual_tls() {
    let ca = TestCa::new();
    let hub = start(&ca, config()).await;
    let client = ca.agent("shop", "alice").connect(&hub).await;
    let request = support::Enrollment::new().request(&format!("ent_{}", "ab".repeat(32)));
    let err = client
        .unary::<_, entente_wire::EnrollResponse>(entente_hub::ENROLL_PATH, request)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);
    assert_eq!(hub.stats().enroll_refusals, 0);
}

#[tokio::test]
async fn clients_accept_only_the_hub_of_their_trust_domain() {
    let ca = TestCa::new();
    let alice = ca.agent("shop", "alice");
    let hub_cert = ca.identity(ca.principal(HUB_SEGMENT, HUB_NAME), SystemTime::now());
    let verifier = HubServerVerifier::new(ca.trust().clone()).unwrap();
    let name = ServerName::try_from("hub.example.org").unwrap();
    let now = UnixTime::now();
    let verify = |chain: &[rustls_pki_types::CertificateDer<'static>]| {
        verifier.verify_server_cert(&chain[0], &chain[1..], &name, &[], now)
    };
    verify(&hub_cert.chain()).unwrap();
    // An agent's SVID, valid but not the hub's: refused.
    let err = verify(&alice.chain()).unwrap_err();
    assert_eq!(
        err,
        rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)
    );
    // The hub of another CA: refused.
    let other = TestCa::new();
    let foreign = other.identity(other.principal(HUB_SEGMENT, HUB_NAME), SystemTime::now());
    assert!(verify(&foreign.chain()).is_err());
}
