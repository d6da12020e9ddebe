//! Enroll, Renew and Directory through a real hub on 127.0.0.1:0 over real TLS, with an
//! `EmbeddedStore` in a temporary directory.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod support;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use entente_ca::{Ca, CaOptions, Revocations, TokenError, TrustBundle, VerifiedRevocationList};
use entente_crypto::KeyBundleIn;
use entente_hub::{CaRollover, DIRECTORY_PATH, Hub, HubConfig, HubError, RENEW_PATH, RefusalCode};
use entente_store::Store;
use entente_types::{AgentId, Principal};
use entente_wire::{
    Deliver, DirectoryRequest, DirectoryResponse, KeyBundle, Limits, RenewRequest, RenewResponse,
    server_frame,
};
use rustls_pki_types::CertificateDer;
use support::{
    Client, Enrollment, SHOP, SessionExt, TestCa, ack, config, enroll, enroll_raw, eventually,
    now_ms, probe, refusal, sources, start_with_store,
};
use tonic::{Code, Status};

const TTL: Duration = Duration::from_secs(600);

fn agent_id(ca: &TestCa, segment: &str, name: &str) -> AgentId {
    AgentId::new(&ca.td, segment, name).unwrap()
}

/// A revocation list signed now, verified as the hub needs it.
fn signed(ca: &TestCa, revocations: &Revocations) -> VerifiedRevocationList {
    let now = SystemTime::now();
    let list = ca.ca.sign_revocations(revocations, now).unwrap();
    VerifiedRevocationList::verify(list, ca.trust(), now).unwrap()
}

fn assert_refused(result: Result<impl std::fmt::Debug, Status>, code: Code, says: &str) {
    let status = result.expect_err("refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(status.message().contains(says), "{status:?}");
}

// === enrollment ===

#[tokio::test]
async fn an_agent_enrolls_end_to_end_then_connects() {
    let ca = TestCa::new();
    let (hub, store) = start_with_store(&ca, config()).await;
    let id = agent_id(&ca, "shop", "alice");
    let token = hub.create_token(id.clone(), TTL).await.unwrap();

    let enrollment = Enrollment::new();
    let response = enroll_raw(&hub, enrollment.request(token.as_str()))
        .await
        .unwrap();
    // The trust bundle handed over is the CA's; there is no revocation list yet.
    let trust = TrustBundle::from_pem(&response.trust_bundle_pem).unwrap();
    assert_eq!(trust.roots(), ca.trust().roots());
    assert_eq!(trust.intermediates(), ca.trust().intermediates());
    assert!(response.revocations.is_none());
    assert_eq!(response.certificate_chain.len(), 2);

    // The chain verifies against it and names the token's agent; so does the key bundle.
    let alice = enrollment.into_agent(&response, &trust);
    assert_eq!(alice.principal, Principal::from(id));
    assert_eq!(alice.bundle.epoch(), 1);
    let body = alice.bundle.body();
    let thirty_days_ms = 30 * 24 * 3600 * 1000;
    assert!(body.not_before_ms <= now_ms() - 59_000);
    assert!(body.not_after_ms >= now_ms() + thirty_days_ms - 60_000);
    assert!(body.not_after_ms <= now_ms() + thirty_days_ms);

    // The agent record and key bundle are stored.
    let record = store
        .agent(alice.principal.as_str())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.segment.as_deref(), Some("shop"));
    assert_eq!(record.certificate_serials, vec![alice.svid.serial.clone()]);
    assert_eq!(record.key_epoch, 1);
    assert!(!record.suspended);
    let (epoch, stored) = store
        .latest_key_bundle(alice.principal.as_str())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(epoch, 1);
    let stored: KeyBundle = entente_wire::decode(&stored, &Limits::default()).unwrap();
    assert_eq!(&stored, alice.bundle.to_wire());

    // The new identity connects over mutual TLS and works.
    let mut session = alice.session(&hub).await;
    assert_eq!(session.subscribe(1, "orders.eu").await, ack(1));
    assert_eq!(hub.stats().enrollments, 1);
    assert_eq!(hub.stats().enroll_refusals, 0);

    // Enrolling again (a new token) moves to the next key epoch and keeps the old serial.
    let again = enroll(&hub, "shop", "alice").await;
    assert_eq!(again.bundle.epoch(), 2);
    let record = store
        .agent(alice.principal.as_str())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        record.certificate_serials,
        [alice.svid.serial.clone(), again.svid.serial.clone()]
    );
    assert_eq!(record.key_epoch, 2);
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_join_token_is_accepted_once() {
    let ca = TestCa::new();
    let (hub, _store) = start_with_store(&ca, config()).await;
    let token = hub
        .create_token(agent_id(&ca, "shop", "alice"), TTL)
        .await
        .unwrap();
    enroll_raw(&hub, Enrollment::new().request(token.as_str()))
        .await
        .unwrap();
    assert_refused(
        enroll_raw(&hub, Enrollment::new().request(token.as_str())).await,
        Code::Unauthenticated,
        "join token already used",
    );
    assert_eq!(hub.stats().enrollments, 1);
    assert_eq!(hub.stats().enroll_refusals, 1);
}

#[tokio::test]
async fn an_expired_token_is_refused() {
    let ca = TestCa::new();
    let (hub, _store) = start_with_store(&ca, config()).await;
    let token = hub
        .create_token(agent_id(&ca, "shop", "alice"), Duration::from_millis(20))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_refused(
        enroll_raw(&hub, Enrollment::new().request(token.as_str())).await,
        Code::Unauthenticated,
        "join token expired",
    );
    assert_eq!(hub.stats().enroll_refusals, 1);
}

#[tokio::test]
async fn unknown_and_malformed_tokens_are_refused() {
    let ca = TestCa::new();
    let (hub, _store) = start_with_store(&ca, config()).await;
    let unknown = format!("ent_{}", "ab".repeat(32));
    assert_refused(
        enroll_raw(&hub, Enrollment::new().request(&unknown)).await,
        Code::Unauthenticated,
        "join token unknown",
    );
    for malformed in [
        "",
        "ent_nope",
        &format!("ent_{}", "AB".repeat(32)),
        &format!("tok_{}", "ab".repeat(32)),
    ] {
        assert_refused(
            enroll_raw(&hub, Enrollment::new().request(malformed)).await,
            Code::InvalidArgument,
            "malformed join token",
        );
    }
    assert_eq!(hub.stats().enroll_refusals, 5);
}

/// Anyone may send an enrollment, so one may not declare more than an enrollment needs
/// (`MAX_ENROLL_REQUEST_BYTES`), whatever the frame limit: a peer with no credential can't have
/// the hub buffer megabytes per stream. A request within it is served.
#[tokio::test]
async fn an_enrollment_request_larger_than_an_enrollment_needs_is_refused() {
    let ca = TestCa::new();
    let (hub, _store) = start_with_store(&ca, config()).await;
    let mut large = Enrollment::new().request("ent_x");
    large.csr = vec![0; entente_hub::MAX_ENROLL_REQUEST_BYTES];
    let status = enroll_raw(&hub, large).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert_eq!(hub.stats().enroll_refusals, 0, "refused before it was read");
    enroll(&hub, "shop", "alice").await;
}

#[tokio::test]
async fn a_bad_csr_or_bad_keys_are_refused_without_spending_the_token() {
    let ca = TestCa::new();
    let (hub, _store) = start_with_store(&ca, config()).await;
    let token = hub
        .create_token(agent_id(&ca, "shop", "alice"), TTL)
        .await
        .unwrap();
    let enrollment = Enrollment::new();

    let mut garbage = enrollment.request(token.as_str());
    garbage.csr = b"not a csr".to_vec();
    assert_refused(
        enroll_raw(&hub, garbage).await,
        Code::InvalidArgument,
        "bad csr",
    );

    let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let mut wrong_curve = enrollment.request(token.as_str());
    wrong_curve.csr = rcgen::CertificateParams::default()
        .serialize_request(&p384)
        .unwrap()
        .der()
        .to_vec();
    assert_refused(
        enroll_raw(&hub, wrong_curve).await,
        Code::InvalidArgument,
        "p-256",
    );

    let mut tampered = enrollment.request(token.as_str());
    let last = tampered.csr.len() - 1;
    tampered.csr[last] ^= 1;
    assert_refused(
        enroll_raw(&hub, tampered).await,
        Code::InvalidArgument,
        "signature",
    );

    let mut short_key = enrollment.request(token.as_str());
    short_key.ed25519_public.pop();
    assert_refused(
        enroll_raw(&hub, short_key).await,
        Code::InvalidArgument,
        "ed25519_public",
    );
    let mut long_key = enrollment.request(token.as_str());
    long_key.x25519_public.push(0);
    assert_refused(
        enroll_raw(&hub, long_key).await,
        Code::InvalidArgument,
        "x25519_public",
    );
    assert_eq!(hub.stats().enroll_refusals, 5);

    // The token is still good.
    let response = enroll_raw(&hub, enrollment.request(token.as_str()))
        .await
        .unwrap();
    enrollment.into_agent(&response, ca.trust());
    assert_eq!(hub.stats().enrollments, 1);
}

#[tokio::test]
async fn create_token_refuses_the_reserved_segment_other_trust_domains_and_zero_ttl() {
    let ca = TestCa::new();
    let (hub, _store) = start_with_store(&ca, config()).await;
    let err = hub
        .create_token(agent_id(&ca, entente_hub::HUB_SEGMENT, "hub"), TTL)
        .await
        .unwrap_err();
    assert!(
        matches!(err, HubError::Token(TokenError::ReservedSegment(_))),
        "{err:?}"
    );
    let err = hub
        .create_token(agent_id(&ca, entente_hub::HUB_SEGMENT, "other"), TTL)
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        HubError::Token(TokenError::ReservedSegment(_))
    ));

    let foreign = entente_types::TrustDomain::new("elsewhere.org").unwrap();
    let err = hub
        .create_token(AgentId::new(&foreign, "shop", "alice").unwrap(), TTL)
        .await
        .unwrap_err();
    assert!(matches!(err, HubError::ForeignAgent(_)), "{err:?}");

    let err = hub
        .create_token(agent_id(&ca, "shop", "alice"), Duration::ZERO)
        .await
        .unwrap_err();
    assert!(matches!(err, HubError::Token(TokenError::InvalidTtl)));
}

#[tokio::test]
async fn a_revoked_principal_cannot_enroll_and_its_token_stays_spent() {
    let ca = TestCa::new();
    let (hub, _store) = start_with_store(&ca, config()).await;
    let alice = ca.principal("shop", "alice");
    let mut revocations = Revocations::new();
    revocations.revoke_principal(&alice);
    let list = signed(&ca, &revocations);
    hub.revoke(list.clone()).await.unwrap();

    let token = hub
        .create_token(agent_id(&ca, "shop", "alice"), TTL)
        .await
        .unwrap();
    assert_refused(
        enroll_raw(&hub, Enrollment::new().request(token.as_str())).await,
        Code::PermissionDenied,
        "token is spent",
    );
    assert_refused(
        enroll_raw(&hub, Enrollment::new().request(token.as_str())).await,
        Code::Unauthenticated,
        "already used",
    );

    // Others enroll, and receive the list in force.
    let token = hub
        .create_token(agent_id(&ca, "shop", "bob"), TTL)
        .await
        .unwrap();
    let response = enroll_raw(&hub, Enrollment::new().request(token.as_str()))
        .await
        .unwrap();
    assert_eq!(response.revocations.as_ref(), Some(list.to_wire()));
}

#[tokio::test]
async fn the_revocation_list_is_stored_and_in_force_after_a_restart() {
    let ca = TestCa::new();
    let (hub, store) = start_with_store(&ca, config()).await;
    let alice = ca.agent("shop", "alice");
    let mut revocations = Revocations::new();
    revocations.revoke_principal(&alice.principal);
    let list = signed(&ca, &revocations);
    hub.revoke(list.clone()).await.unwrap();
    hub.shutdown().await.unwrap();

    let hub = Hub::start(config(), ca.ca.clone(), store.clone())
        .await
        .unwrap();
    let name = format!("hub.{}", support::TD);
    let err = probe(hub.local_addr(), alice.client_config(ca.trust()), &name)
        .await
        .unwrap_err();
    assert!(err.contains("CertificateRevoked"), "{err}");
    // The stored version counts: the same list again is stale.
    assert!(matches!(
        hub.revoke(list).await,
        Err(HubError::StaleRevocations { held: 1, got: 1 })
    ));
}

// === renewal ===

fn chain(der: &[Vec<u8>]) -> Vec<CertificateDer<'static>> {
    der.iter()
        .map(|c| CertificateDer::from(c.clone()))
        .collect()
}

/// A CSR for a fresh P-256 key that asks for `name` as its URI SAN.
fn csr_asking_for(name: &Principal) -> Vec<u8> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(name.as_str().try_into().unwrap())];
    params.serialize_request(&key).unwrap().der().to_vec()
}

async fn renew(client: &Client, csr: Vec<u8>) -> Result<RenewResponse, Status> {
    client.unary(RENEW_PATH, RenewRequest { csr }).await
}

/// An agent renewing its certificate past half its key bundle's life gets the bundle signed
/// again for a fresh validity (same keys, same epoch), stored as its latest, so that it never
/// outlives its bundle; one renewing earlier gets the bundle as it is.
#[tokio::test]
async fn a_renewal_past_half_the_key_bundles_life_extends_it() {
    // Eight-second certificates, a key bundle for two of their lives (the least a hub takes).
    let ca = TestCa::with_options(CaOptions {
        svid_ttl: Duration::from_secs(8),
        ..CaOptions::default()
    });
    let config = HubConfig {
        key_bundle_ttl: Duration::from_secs(16),
        ..config()
    };
    let (hub, store) = start_with_store(&ca, config).await;
    let alice = enroll(&hub, "shop", "alice").await;
    let first = alice.bundle.to_wire().clone();
    let client = alice.connect(&hub).await;
    // At half the certificate's life, as the SDK renews, the bundle is within its first half.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let early = renew(&client, csr_asking_for(&alice.principal))
        .await
        .unwrap();
    assert_eq!(early.key_bundle.as_ref(), Some(&first));

    // At the next renewal, past half the bundle's life (the first renewal came within it, or
    // the bundle already differs and the assertion above failed).
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let later = renew(&client, csr_asking_for(&alice.principal))
        .await
        .unwrap();
    let wire = later.key_bundle.unwrap();
    let bundle = KeyBundleIn::from_wire(wire.clone())
        .unwrap()
        .verify(ca.trust(), now_ms())
        .unwrap();
    assert_eq!(bundle.principal(), &alice.principal);
    assert_eq!(bundle.epoch(), first.epoch);
    assert_eq!(
        (
            wire.ed25519_public.as_slice(),
            wire.x25519_public.as_slice()
        ),
        (
            first.ed25519_public.as_slice(),
            first.x25519_public.as_slice()
        )
    );
    assert!(wire.not_after_ms >= first.not_after_ms + 8000, "{wire:?}");
    let (epoch, stored) = store
        .latest_key_bundle(alice.principal.as_str())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((epoch, stored), (first.epoch, entente_wire::encode(&wire)));
}

#[tokio::test]
async fn renewal_keeps_a_session_up_past_the_first_certificate_and_an_unrenewed_one_expires() {
    // Six-second certificates.
    let ca = TestCa::with_options(CaOptions {
        svid_ttl: Duration::from_secs(6),
        ..CaOptions::default()
    });
    let (hub, store) = start_with_store(&ca, config()).await;
    let alice = ca.agent("shop", "alice");
    let bob = ca.agent("shop", "bob");
    let first_expiry = alice.svid.not_after.max(bob.svid.not_after);

    let alice_client = alice.connect(&hub).await;
    let mut alice_session = alice_client.session().await.unwrap();
    assert_eq!(alice_session.subscribe(1, "orders.eu").await, ack(1));
    let mut bob_session = bob.session(&hub).await;
    assert_eq!(bob_session.subscribe(1, "orders.eu").await, ack(1));

    // Halfway through, Alice renews over her live connection. Her CSR asks for Bob's name;
    // the certificate names the connection's principal.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let renewed = renew(&alice_client, csr_asking_for(&bob.principal))
        .await
        .unwrap();
    let renewed = ca
        .trust()
        .verify_svid(&chain(&renewed.certificate_chain), SystemTime::now(), None)
        .unwrap();
    assert_eq!(renewed.principal(), &alice.principal);
    assert!(renewed.not_after() >= alice.svid.not_after + Duration::from_secs(2));
    let record = store
        .agent(alice.principal.as_str())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.certificate_serials, [renewed.serial().to_vec()]);
    assert_eq!(hub.stats().renewals, 1);

    // Past the first certificates' expiry: Bob, who did not renew, is closed; Alice is not.
    let past = first_expiry + Duration::from_millis(1000);
    tokio::time::sleep(past.duration_since(SystemTime::now()).unwrap_or_default()).await;
    let status = bob_session.status().await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(SystemTime::now() < renewed.not_after());
    assert_eq!(alice_session.subscribe(2, "orders.us").await, ack(2));
    assert_eq!(hub.stats().expired_disconnects, 1);
    eventually("bob's connection is gone", || hub.connections() == 1).await;
}

#[tokio::test]
async fn a_connection_lasts_no_longer_than_a_certificate_the_hub_issues_now() {
    // The agent's certificate is good for an hour (as one minted with a leaked intermediate
    // key may be); the hub, on the same CA keys, issues three-second ones.
    let ca = TestCa::new();
    let short = Ca::from_pem(
        ca.ca.keystore().clone(),
        &ca.ca.to_pem(),
        CaOptions {
            svid_ttl: Duration::from_secs(3),
            ..*ca.ca.options()
        },
    )
    .unwrap();
    let store = ca.store();
    let config = HubConfig {
        ca_rollover: CaRollover {
            overlap: Duration::from_secs(3),
            ..CaRollover::default()
        },
        ..config()
    };
    let hub = Hub::start(config, Arc::new(short), store).await.unwrap();
    let alice = ca.agent("shop", "alice");
    assert!(alice.svid.not_after > SystemTime::now() + Duration::from_secs(600));
    let mut session = alice.session(&hub).await;
    assert_eq!(session.subscribe(1, "orders.eu").await, ack(1));

    // Unrenewed, the connection ends with the hub's certificate lifetime, not the leaf's.
    let status = tokio::time::timeout(Duration::from_secs(20), session.status())
        .await
        .expect("the connection outlived the hub's certificate lifetime");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(hub.stats().expired_disconnects, 1);
    eventually("the connection is gone", || hub.connections() == 0).await;
}

#[tokio::test]
async fn a_bad_renewal_csr_is_refused_and_the_session_carries_on() {
    let ca = TestCa::new();
    let (hub, _store) = start_with_store(&ca, config()).await;
    let alice = ca.agent("shop", "alice");
    let client = alice.connect(&hub).await;
    let mut session = client.session().await.unwrap();
    assert_refused(
        renew(&client, b"garbage".to_vec()).await,
        Code::InvalidArgument,
        "csr",
    );
    assert_eq!(session.subscribe(1, "orders.eu").await, ack(1));
    assert_eq!(hub.stats().renew_refusals, 1);
}

#[tokio::test]
async fn revoking_a_certificate_renewed_over_a_connection_closes_it() {
    let ca = TestCa::new();
    let (hub, _store) = start_with_store(&ca, config()).await;
    let alice = ca.agent("shop", "alice");
    let client = alice.connect(&hub).await;
    let mut session = client.session().await.unwrap();
    assert_eq!(session.subscribe(1, "orders.eu").await, ack(1));
    let renewed = renew(&client, csr_asking_for(&alice.principal))
        .await
        .unwrap();
    let renewed = ca
        .trust()
        .verify_svid(&chain(&renewed.certificate_chain), SystemTime::now(), None)
        .unwrap();

    // Revoke the renewed certificate only (not the presented one, not the principal).
    let mut revocations = Revocations::new();
    revocations.revoke_serial(renewed.serial()).unwrap();
    assert_eq!(hub.revoke(signed(&ca, &revocations)).await.unwrap(), 1);
    assert_eq!(session.status().await.code(), Code::PermissionDenied);
}

// === directory ===

async fn directory(client: &Client, request: DirectoryRequest) -> Result<Vec<KeyBundle>, Status> {
    client
        .unary::<_, DirectoryResponse>(DIRECTORY_PATH, request)
        .await
        .map(|r| r.bundles)
}

/// The principals of `bundles`, each verified against `ca`'s trust bundle.
fn verified(ca: &TestCa, bundles: Vec<KeyBundle>) -> Vec<Principal> {
    bundles
        .into_iter()
        .map(|b| {
            KeyBundleIn::from_wire(b)
                .unwrap()
                .verify(ca.trust(), now_ms())
                .unwrap()
                .principal()
                .clone()
        })
        .collect()
}

fn by_principals(principals: &[&str]) -> DirectoryRequest {
    DirectoryRequest {
        principals: principals.iter().map(|p| (*p).to_owned()).collect(),
        channel: String::new(),
    }
}

fn by_channel(channel: &str) -> DirectoryRequest {
    DirectoryRequest {
        principals: Vec::new(),
        channel: channel.to_owned(),
    }
}

#[tokio::test]
async fn the_directory_answers_by_principal() {
    the_directory_answers_by_principal_with(config()).await;
}

/// An idle timeout as long as a duration goes (never) serves connections as any other.
#[tokio::test]
async fn an_idle_timeout_of_forever_serves() {
    the_directory_answers_by_principal_with(HubConfig {
        idle_timeout: std::time::Duration::MAX,
        ..config()
    })
    .await;
}

async fn the_directory_answers_by_principal_with(config: HubConfig) {
    let ca = TestCa::new();
    let (hub, _store) = start_with_store(&ca, config).await;
    let alice = enroll(&hub, "shop", "alice").await;
    let bob = enroll(&hub, "shop", "bob").await;
    let carol = ca.agent("shop", "carol").connect(&hub).await;

    let unknown = ca.principal("shop", "zed");
    let bundles = directory(
        &carol,
        by_principals(&[
            alice.principal.as_str(),
            unknown.as_str(),
            bob.principal.as_str(),
            alice.principal.as_str(),
            "spiffe://elsewhere.org/agent/shop/alice",
        ]),
    )
    .await
    .unwrap();
    assert_eq!(
        verified(&ca, bundles),
        [alice.principal.clone(), bob.principal.clone()]
    );

    assert_refused(
        directory(&carol, by_principals(&["not an id"])).await,
        Code::InvalidArgument,
        "principal",
    );
    assert_refused(
        directory(&carol, DirectoryRequest::default()).await,
        Code::InvalidArgument,
        "either",
    );
    let mut both = by_principals(&[alice.principal.as_str()]);
    both.channel = "orders.eu".into();
    assert_refused(
        directory(&carol, both).await,
        Code::InvalidArgument,
        "either",
    );

    // A revoked principal is omitted.
    let mut revocations = Revocations::new();
    revocations.revoke_principal(&bob.principal);
    hub.revoke(signed(&ca, &revocations)).await.unwrap();
    let bundles = directory(
        &carol,
        by_principals(&[alice.principal.as_str(), bob.principal.as_str()]),
    )
    .await
    .unwrap();
    assert_eq!(verified(&ca, bundles), vec![alice.principal.clone()]);
}

#[tokio::test]
async fn the_directory_answers_by_channel_for_callers_who_may_publish_there() {
    let ca = TestCa::new();
    let (hub, _store) = start_with_store(&ca, config()).await;
    let alice = enroll(&hub, "shop", "alice").await;
    let bob = enroll(&hub, "shop", "bob").await;
    let dave = enroll(&hub, "shop", "dave").await;
    let mut sessions = Vec::new();
    for (agent, pattern) in [
        (&alice, "orders.eu"),
        (&bob, "orders.>"),
        (&dave, "orders.us"),
    ] {
        let mut session = agent.session(&hub).await;
        assert_eq!(session.subscribe(1, pattern).await, ack(1));
        sessions.push(session);
    }
    // Alice subscribes a second time, on another connection: she is listed once.
    let mut second = alice.session(&hub).await;
    assert_eq!(second.subscribe(7, "orders.*").await, ack(7));

    let carol = ca.agent("shop", "carol").connect(&hub).await;
    let bundles = directory(&carol, by_channel("orders.eu")).await.unwrap();
    let mut members = verified(&ca, bundles);
    members.sort();
    let mut expected = vec![alice.principal.clone(), bob.principal.clone()];
    expected.sort();
    assert_eq!(members, expected);
    let bundles = directory(&carol, by_channel("orders.nobody.here"))
        .await
        .unwrap();
    assert_eq!(verified(&ca, bundles), vec![bob.principal.clone()]);

    // A caller without the right to publish on the channel learns nothing.
    let denials = hub.stats().denials;
    let eve = ca.agent("lab", "eve").connect(&hub).await;
    assert_refused(
        directory(&eve, by_channel("orders.eu")).await,
        Code::PermissionDenied,
        "denied",
    );
    assert_eq!(hub.stats().denials, denials + 1);
    assert_refused(
        directory(&carol, by_channel("bad..channel")).await,
        Code::InvalidArgument,
        "channel",
    );
}

/// A channel's members are answered without the caller, who seals to them and to itself: the
/// answer leaves room for the caller among a sender key's recipients.
#[tokio::test]
async fn a_channel_answer_leaves_the_caller_out_and_room_for_it() {
    let ca = TestCa::new();
    let mut config = config();
    config.limits.max_recipients = 2;
    let (hub, _store) = start_with_store(&ca, config).await;
    let alice = enroll(&hub, "shop", "alice").await;
    let bob = enroll(&hub, "shop", "bob").await;
    let mut sessions = Vec::new();
    for (agent, pattern) in [(&alice, "orders.eu"), (&bob, "orders.>")] {
        let mut session = agent.session(&hub).await;
        assert_eq!(session.subscribe(1, pattern).await, ack(1));
        sessions.push(session);
    }
    // Alice and bob besides carol: three recipients, one too many.
    let carol = ca.agent("shop", "carol").connect(&hub).await;
    assert_refused(
        directory(&carol, by_channel("orders.eu")).await,
        Code::ResourceExhausted,
        "more than 1 members besides you",
    );
    // Bob besides alice: two, alice among them.
    let alice = ca.agent("shop", "alice").connect(&hub).await;
    let bundles = directory(&alice, by_channel("orders.eu")).await.unwrap();
    assert_eq!(verified(&ca, bundles), vec![bob.principal.clone()]);
}

#[tokio::test]
async fn a_forbidden_channel_reaches_no_wider_subscription_and_lists_no_such_member() {
    let ca = TestCa::new();
    let dave_id = ca.principal("shop", "dave");
    let policies = format!(
        r#"{SHOP}
        @id("payroll-is-dave-only")
        forbid (principal, action == Action::"subscribe",
                resource in Namespace::"orders.payroll")
        unless {{ principal == Agent::"{dave_id}" }};"#
    );
    let config = HubConfig {
        policies: sources(&policies),
        ..HubConfig::default()
    };
    let (hub, _store) = start_with_store(&ca, config).await;
    let alice = enroll(&hub, "shop", "alice").await;
    let bob = enroll(&hub, "shop", "bob").await;
    let dave = enroll(&hub, "shop", "dave").await;
    let mut alice_session = alice.session(&hub).await;
    let mut bob_session = bob.session(&hub).await;
    let mut dave_session = dave.session(&hub).await;
    // The wide patterns are allowed: the permit covers them, the forbid is narrower.
    assert_eq!(alice_session.subscribe(1, "orders.*.q1").await, ack(1));
    assert_eq!(bob_session.subscribe(1, "orders.>").await, ack(1));
    assert_eq!(dave_session.subscribe(1, "orders.payroll.>").await, ack(1));
    assert_eq!(
        refusal(bob_session.subscribe(2, "orders.payroll.q1").await),
        (2, RefusalCode::Denied)
    );

    // The directory lists only the member who may receive the channel...
    let carol = ca.agent("shop", "carol");
    let client = carol.connect(&hub).await;
    let members = directory(&client, by_channel("orders.payroll.q1"))
        .await
        .unwrap();
    assert_eq!(
        verified(&ca, members),
        std::slice::from_ref(&dave.principal)
    );

    // ...and the hub delivers to nobody else.
    let mut carol_session = carol.session(&hub).await;
    let (mut payroll, key) = carol.sealer("orders.payroll.q1", &[&dave.bundle]);
    let secret = payroll.seal_batch(&[b"salaries"], None, now_ms()).unwrap();
    assert_eq!(
        carol_session
            .publish(1, vec![key], vec![secret.clone()])
            .await,
        ack(1)
    );
    let server_frame::Kind::Deliver(got) = dave_session.next_kind().await else {
        panic!("dave gets the payroll message");
    };
    assert_eq!(got.batches, [secret]);
    assert_eq!(hub.stats().withheld_deliveries, 2);
    assert_eq!(hub.stats().delivery_failures, 0);

    // Other channels still reach the wide subscriptions; what alice and bob get next is this,
    // so the payroll message never reached them.
    let (mut eu, key) = carol.sealer("orders.eu.q1", &[&alice.bundle, &bob.bundle]);
    let order = eu.seal_batch(&[b"an order"], None, now_ms()).unwrap();
    assert_eq!(
        carol_session
            .publish(2, vec![key], vec![order.clone()])
            .await,
        ack(2)
    );
    for session in [&mut alice_session, &mut bob_session] {
        match session.next_kind().await {
            server_frame::Kind::Deliver(Deliver { batches, .. }) => {
                assert_eq!(batches, std::slice::from_ref(&order));
            }
            other => panic!("expected the order, got {other:?}"),
        }
    }
    let members = directory(&client, by_channel("orders.eu.q1"))
        .await
        .unwrap();
    let mut members = verified(&ca, members);
    members.sort();
    assert_eq!(members, [alice.principal.clone(), bob.principal.clone()]);
    hub.shutdown().await.unwrap();
}
