//! TLS 1.3 session resumption on the mutual-TLS listener: a resumed connection is the agent
//! whose certificate made the ticket, and resumption never lets a revoked or expired
//! certificate back in. Against a real hub on 127.0.0.1:0; the client keeps its tickets in
//! rustls' in-memory store, shared by the clones of one configuration.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::Arc;
use std::time::Duration;

use entente_client::Identity;
use entente_testkit::{TestHub, eventually, raw};
use rustls::client::Resumption;
use rustls::{ClientConfig, HandshakeKind};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// An HTTP/2 client preface and an empty SETTINGS frame: the hub answers with its own SETTINGS
/// once it serves the connection.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// How a connection went: the kind of handshake the client saw, and either the open
/// connection (the hub served it) or why not.
struct Attempt {
    kind: Option<HandshakeKind>,
    served: Result<TlsStream<TcpStream>, String>,
}

/// A client configuration for `identity` that keeps the tickets it gets for later connections.
fn resuming_config(hub: &TestHub, identity: &Identity) -> Arc<ClientConfig> {
    let mut config = raw::client_config(identity, hub.trust()).unwrap();
    config.resumption = Resumption::in_memory_sessions(16);
    Arc::new(config)
}

async fn attempt(hub: &TestHub, config: &Arc<ClientConfig>) -> Attempt {
    let tcp = TcpStream::connect(hub.addr()).await.unwrap();
    let name = ServerName::try_from(hub.server_name()).unwrap();
    let mut tls = match TlsConnector::from(config.clone()).connect(name, tcp).await {
        Ok(tls) => tls,
        Err(e) => {
            return Attempt {
                kind: None,
                served: Err(e.to_string()),
            };
        }
    };
    let kind = tls.get_ref().1.handshake_kind();
    let served = async {
        tls.write_all(PREFACE).await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 64];
        match tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf)).await {
            Ok(Ok(0)) => Err("closed".to_owned()),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".to_owned()),
        }
    }
    .await;
    Attempt {
        kind,
        served: served.map(|()| tls),
    }
}

#[tokio::test]
async fn a_resumed_connection_is_the_agent_that_made_the_ticket() {
    let hub = TestHub::start().await.unwrap();
    let alice = hub.enroll("shop", "alice").await.unwrap();
    let config = resuming_config(&hub, &alice);
    // Enrollment connections count too.
    let before = hub.stats().connections;

    let first = attempt(&hub, &config).await;
    assert_eq!(first.kind, Some(HandshakeKind::Full));
    drop(first.served.unwrap());

    let resumed = attempt(&hub, &config).await;
    assert_eq!(resumed.kind, Some(HandshakeKind::Resumed));
    let open = resumed.served.unwrap();
    eventually("the resumed connection is registered", || {
        hub.stats().connections == before + 2
    })
    .await
    .unwrap();
    // The hub knows the resumed connection as Alice's: revoking her closes it.
    let principal = alice.principal().clone();
    assert_eq!(hub.revoke(&principal).await.unwrap(), 1);
    drop(open);
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_revoked_agent_cannot_resume() {
    let hub = TestHub::start().await.unwrap();
    let alice = hub.enroll("shop", "alice").await.unwrap();
    let config = resuming_config(&hub, &alice);
    drop(attempt(&hub, &config).await.served.unwrap());
    let served = hub.stats().connections;
    // The client now holds a ticket from before the revocation.
    hub.revoke(alice.principal()).await.unwrap();

    let after = attempt(&hub, &config).await;
    // The ticket is refused: a full handshake, and the verifier's alert.
    assert_eq!(after.kind, Some(HandshakeKind::Full));
    let Err(err) = after.served else {
        panic!("a revoked agent was served");
    };
    assert!(err.contains("CertificateRevoked"), "{err}");
    assert_eq!(hub.stats().connections, served);
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_revocation_makes_every_agent_handshake_in_full_again() {
    let hub = TestHub::start().await.unwrap();
    let alice = hub.enroll("shop", "alice").await.unwrap();
    let bob = hub.enroll("shop", "bob").await.unwrap();
    let config = resuming_config(&hub, &bob);
    drop(attempt(&hub, &config).await.served.unwrap());
    hub.revoke(alice.principal()).await.unwrap();

    // Bob's ticket was made under the previous revocation list: not resumed, but Bob gets in.
    let again = attempt(&hub, &config).await;
    assert_eq!(again.kind, Some(HandshakeKind::Full));
    drop(again.served.unwrap());
    // And the ticket made now resumes.
    let resumed = attempt(&hub, &config).await;
    assert_eq!(resumed.kind, Some(HandshakeKind::Resumed));
    drop(resumed.served.unwrap());
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_resumed_session_whose_certificate_expired_is_not_served() {
    const TTL: Duration = Duration::from_secs(3);
    let hub = TestHub::builder().svid_ttl(TTL).start().await.unwrap();
    let alice = hub.enroll("shop", "alice").await.unwrap();
    let config = resuming_config(&hub, &alice);
    drop(attempt(&hub, &config).await.served.unwrap());
    let failed_before = hub.stats().handshakes_failed;

    // The ticket is still young and no revocation came, so the session resumes; but the
    // certificate it carries has expired, and the hub's check after the handshake refuses it.
    let until = alice.not_after() + Duration::from_secs(1);
    if let Ok(wait) = until.duration_since(std::time::SystemTime::now()) {
        tokio::time::sleep(wait).await;
    }
    let tcp = TcpStream::connect(hub.addr()).await.unwrap();
    let name = ServerName::try_from(hub.server_name()).unwrap();
    let tls = TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(
        tls.get_ref().1.handshake_kind(),
        Some(HandshakeKind::Resumed)
    );
    // Served nothing but why: every request is refused, saying so.
    let client = raw::Client::over(tls, &hub.server_name()).await.unwrap();
    let refused = client.session().await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    assert!(
        refused.message().contains("the certificate is refused"),
        "{refused:?}"
    );
    // Registered nowhere, it counts as not yet authenticated while it is told, no longer.
    assert_eq!(hub.hub().unauthenticated_connections(), 1);
    drop(client);
    eventually("the refused connection is let go", || {
        hub.hub().unauthenticated_connections() == 0
    })
    .await
    .unwrap();
    eventually("the refusal is counted", || {
        hub.stats().handshakes_failed > failed_before
    })
    .await
    .unwrap();
    hub.shutdown().await.unwrap();
}
