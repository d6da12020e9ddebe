//! Remote administration (CreateToken, Revoke) through a real hub on 127.0.0.1:0 over real
//! mutual TLS, with an `EmbeddedStore` in a temporary directory: by the administrators the
//! config lists, and by principals the policies permit `enroll` and `revoke`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use entente_ca::{Revocations, VerifiedRevocationList};
use entente_hub::{
    CHECK_POLICY_PATH, CREATE_TOKEN_PATH, DEFAULT_TOKEN_TTL, Hub, HubConfig, HubError, KEYS_PATH,
    LOAD_POLICIES_PATH, MAX_TOKEN_TTL, QUARANTINE_PATH, REVOKE_PATH, SHOW_POLICIES_PATH,
};
use entente_store::Store as _;
use entente_types::{HumanId, Principal, TrustDomain};
use entente_wire::{
    CheckPolicyRequest, CheckPolicyResponse, CreateTokenRequest, CreateTokenResponse,
    EnrollResponse, KeysRequest, KeysResponse, LoadPoliciesRequest, LoadPoliciesResponse,
    PolicySource, QuarantineRequest, QuarantineResponse, RenewRequest, RenewResponse,
    RevokeRequest, RevokeResponse, ShowPoliciesRequest, ShowPoliciesResponse,
};
use support::{
    Agent, Client, Enrollment, FlakyStore, SessionExt, TestCa, ack, enroll_raw, eventually, now_ms,
    probe, start_with_store,
};
use tonic::{Code, Status};

/// The admin human identity `entente hub start` creates.
fn admin_principal(ca: &TestCa, name: &str) -> Principal {
    Principal::from(HumanId::new(&ca.td, name).unwrap())
}

fn admin(ca: &TestCa, name: &str) -> Agent {
    ca.identity(admin_principal(ca, name), SystemTime::now())
}

/// The tests' usual config, with `admins`.
fn config_with_admins(admins: Vec<Principal>) -> HubConfig {
    HubConfig {
        admins,
        ..support::config()
    }
}

async fn create_token(
    client: &Client,
    agent: &str,
    ttl_seconds: u64,
) -> Result<CreateTokenResponse, Status> {
    client
        .unary(
            CREATE_TOKEN_PATH,
            CreateTokenRequest {
                agent: agent.to_owned(),
                ttl_seconds,
            },
        )
        .await
}

async fn revoke(
    client: &Client,
    principals: &[&Principal],
    serials: &[&[u8]],
) -> Result<RevokeResponse, Status> {
    client
        .unary(
            REVOKE_PATH,
            RevokeRequest {
                principals: principals.iter().map(|p| p.to_string()).collect(),
                serials: serials.iter().map(|s| s.to_vec()).collect(),
            },
        )
        .await
}

/// The list of a `RevokeResponse`, verified against the CA as any receiver would.
fn verified(ca: &TestCa, response: &RevokeResponse) -> VerifiedRevocationList {
    VerifiedRevocationList::verify(
        response.revocations.clone().unwrap(),
        ca.trust(),
        SystemTime::now(),
    )
    .unwrap()
}

fn assert_refused(result: Result<impl std::fmt::Debug, Status>, code: Code, says: &str) {
    let status = result.expect_err("refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(status.message().contains(says), "{status:?}");
}

/// Whether `agent` is refused at the handshake as revoked.
async fn refused_as_revoked(ca: &TestCa, hub: &entente_hub::HubHandle, agent: &Agent) -> bool {
    let name = format!("hub.{}", support::TD);
    match probe(hub.local_addr(), agent.client_config(ca.trust()), &name).await {
        Ok(()) => false,
        Err(err) => err.contains("CertificateRevoked"),
    }
}

// === CreateToken ===

/// The join tokens stored are bounded (`max_join_tokens`), used ones included until they
/// expire: one more is refused, clearly, to a remote administrator and to the operator; one
/// that expires makes room.
#[tokio::test]
async fn join_tokens_stored_are_bounded_and_the_expired_make_room() {
    let ca = TestCa::new();
    let root = admin(&ca, "admin");
    let config = HubConfig {
        max_join_tokens: 2,
        ..config_with_admins(vec![root.principal.clone()])
    };
    let (hub, _store) = start_with_store(&ca, config).await;
    let client = root.connect(&hub).await;
    let short = create_token(&client, ca.principal("shop", "alice").as_str(), 1)
        .await
        .unwrap();
    let used = hub
        .create_token(ca.principal("shop", "bob"), DEFAULT_TOKEN_TTL)
        .await
        .unwrap();
    enroll_raw(&hub, Enrollment::new().request(used.as_str()))
        .await
        .unwrap();
    let carol = ca.principal("shop", "carol");
    let status = create_token(&client, carol.as_str(), 0).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("join tokens: 2 are stored"),
        "{status:?}"
    );
    let err = hub
        .create_token(carol.clone(), DEFAULT_TOKEN_TTL)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            HubError::Store(entente_store::StoreError::Full { max: 2, .. })
        ),
        "{err:?}"
    );
    // The unused one still enrolls: nothing was lost to the refusals.
    assert!(short.expires_at_ms > now_ms());
    // Once the one-second token has expired, it makes room.
    tokio::time::sleep(std::time::Duration::from_millis(
        short.expires_at_ms.saturating_sub(now_ms()) + 50,
    ))
    .await;
    let response = create_token(&client, carol.as_str(), 0).await.unwrap();
    enroll_raw(&hub, Enrollment::new().request(&response.token))
        .await
        .unwrap();
}

#[tokio::test]
async fn an_admin_creates_a_token_and_an_agent_enrolls_with_it() {
    let ca = TestCa::new();
    let root = admin(&ca, "admin");
    let (hub, _store) =
        start_with_store(&ca, config_with_admins(vec![root.principal.clone()])).await;
    let client = root.connect(&hub).await;
    let alice = ca.principal("shop", "alice");

    // ttl 0: the default, ten minutes.
    let before = now_ms();
    let response = create_token(&client, alice.as_str(), 0).await.unwrap();
    let default_ms = u64::try_from(DEFAULT_TOKEN_TTL.as_millis()).unwrap();
    assert!(response.expires_at_ms >= before + default_ms - 1000);
    assert!(response.expires_at_ms <= now_ms() + default_ms);

    // The agent enrolls with it and connects.
    let enrollment = Enrollment::new();
    let enrolled = enroll_raw(&hub, enrollment.request(&response.token))
        .await
        .unwrap();
    let agent = enrollment.into_agent(&enrolled, ca.trust());
    assert_eq!(agent.principal, alice);
    let mut session = agent.session(&hub).await;
    assert_eq!(session.subscribe(1, "orders.eu").await, ack(1));

    // A chosen lifetime, and the longest one allowed.
    let before = now_ms();
    let response = create_token(&client, ca.principal("shop", "bob").as_str(), 120)
        .await
        .unwrap();
    assert!(response.expires_at_ms >= before + 119_000);
    assert!(response.expires_at_ms <= now_ms() + 120_000);
    create_token(
        &client,
        ca.principal("shop", "carol").as_str(),
        MAX_TOKEN_TTL.as_secs(),
    )
    .await
    .unwrap();

    let stats = hub.stats();
    assert_eq!((stats.admin_actions, stats.admin_refusals), (3, 0));
    assert_eq!(stats.enrollments, 1);
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_admin_creates_a_token_for_a_human_who_enrolls_as_one() {
    let ca = TestCa::new();
    let root = admin(&ca, "admin");
    let (hub, store) =
        start_with_store(&ca, config_with_admins(vec![root.principal.clone()])).await;
    let client = root.connect(&hub).await;
    let ann = "spiffe://example.org/human/ann";
    let response = create_token(&client, ann, 0).await.unwrap();
    let enrollment = Enrollment::new();
    let enrolled = enroll_raw(&hub, enrollment.request(&response.token))
        .await
        .unwrap();
    let human = enrollment.into_agent(&enrolled, ca.trust());
    assert_eq!(human.principal.as_str(), ann);
    // Recorded like an agent, without a segment; its key bundle is in the registry.
    let record = store.agent(ann).await.unwrap().unwrap();
    assert_eq!(record.segment, None);
    assert_eq!(store.latest_key_bundle(ann).await.unwrap().unwrap().0, 1);
    // It connects and owns its direct channel.
    let mut session = human.session(&hub).await;
    assert_eq!(session.subscribe(1, "_direct.human:ann").await, ack(1));
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_principal_not_listed_as_admin_is_refused() {
    let ca = TestCa::new();
    let root = admin(&ca, "admin");
    let (hub, _store) =
        start_with_store(&ca, config_with_admins(vec![root.principal.clone()])).await;
    let alice = ca.agent("shop", "alice");
    let bob = ca.agent("shop", "bob");
    let mut bob_session = bob.session(&hub).await;
    assert_eq!(bob_session.subscribe(1, "orders.eu").await, ack(1));

    // An agent, even one that could name itself anything in a request, is not an admin, and
    // no policy permits it anything administrative.
    let client = alice.connect(&hub).await;
    assert_refused(
        create_token(&client, ca.principal("shop", "mallory").as_str(), 0).await,
        Code::PermissionDenied,
        "creating a join token for `spiffe://example.org/agent/shop/mallory` is denied: no policy permits it",
    );
    assert_refused(
        revoke(&client, &[&bob.principal], &[]).await,
        Code::PermissionDenied,
        "revoking `spiffe://example.org/agent/shop/bob` is denied: no policy permits it",
    );
    // Another human is not either.
    let other = admin(&ca, "eve").connect(&hub).await;
    assert_refused(
        revoke(&other, &[&bob.principal], &[]).await,
        Code::PermissionDenied,
        "no policy permits it",
    );
    // Nothing was revoked; Bob carries on.
    assert!(hub.revocations().is_none());
    assert_eq!(bob_session.subscribe(2, "orders.us").await, ack(2));
    let stats = hub.stats();
    assert_eq!((stats.admin_actions, stats.admin_refusals), (0, 3));
    hub.shutdown().await.unwrap();

    // With no admins configured (the default), only the policies could let anyone.
    let (hub, _store) = start_with_store(&ca, support::config()).await;
    let client = root.connect(&hub).await;
    assert_refused(
        create_token(&client, ca.principal("shop", "alice").as_str(), 0).await,
        Code::PermissionDenied,
        "no policy permits it",
    );
}

#[tokio::test]
async fn bad_token_requests_are_refused() {
    let ca = TestCa::new();
    let root = admin(&ca, "admin");
    let (hub, _store) =
        start_with_store(&ca, config_with_admins(vec![root.principal.clone()])).await;
    let client = root.connect(&hub).await;

    for (agent, says) in [
        ("alice", "not an agent or human id"),
        (
            "spiffe://example.org/agent/shop",
            "not an agent or human id",
        ),
        (
            "spiffe://example.org/robot/alice",
            "not an agent or human id",
        ),
        ("spiffe://elsewhere.org/agent/shop/alice", "trust domain"),
        ("spiffe://elsewhere.org/human/alice", "trust domain"),
        ("spiffe://example.org/agent/system/hub", "reserved"),
        ("spiffe://example.org/agent/system/backup", "reserved"),
    ] {
        assert_refused(
            create_token(&client, agent, 60).await,
            Code::InvalidArgument,
            says,
        );
    }
    assert_refused(
        create_token(
            &client,
            ca.principal("shop", "alice").as_str(),
            MAX_TOKEN_TTL.as_secs() + 1,
        )
        .await,
        Code::InvalidArgument,
        "ttl_seconds",
    );
    assert_refused(
        create_token(&client, ca.principal("shop", "alice").as_str(), u64::MAX).await,
        Code::InvalidArgument,
        "ttl_seconds",
    );
    let stats = hub.stats();
    assert_eq!((stats.admin_actions, stats.admin_refusals), (0, 9));
    // The connection is unaffected.
    create_token(&client, ca.principal("shop", "alice").as_str(), 60)
        .await
        .unwrap();
}

// === Revoke ===

/// A revocation whose list would no longer fit, within the decoding bounds, in the largest
/// answer that carries it (an enrollment's) is refused, and the list in force stays: else no
/// agent could enroll any more.
#[tokio::test]
async fn a_revocation_list_too_large_for_an_enrollment_answer_is_refused() {
    // Too costly to decode: each principal revoked is an element.
    let budget = 24 * entente_wire::DECODED_ELEMENT_COST;
    revoke_until_refused(|limits| limits.max_decoded_overhead = budget, 8, 1).await;
    // Too large: long principals, many at a time.
    revoke_until_refused(|limits| limits.max_frame_bytes = 160 * 1024, 64, 10).await;
}

/// Revokes `per_call` principals of `name_len`-byte names at a time on a hub with `limits`
/// until it refuses, then enrolls an agent and checks its answer against the bounds.
async fn revoke_until_refused(
    limits: impl FnOnce(&mut entente_wire::Limits),
    name_len: usize,
    per_call: usize,
) {
    let ca = TestCa::new();
    let root = admin(&ca, "admin");
    let mut config = config_with_admins(vec![root.principal.clone()]);
    limits(&mut config.limits);
    let limits = config.limits;
    let (hub, _store) = start_with_store(&ca, config).await;
    let client = root.connect(&hub).await;
    let mut refused = None;
    for call in 0..400 {
        let gone: Vec<Principal> = (0..per_call)
            .map(|i| {
                let name = format!("{:0>name_len$}", call * per_call + i);
                Principal::from(entente_types::AgentId::new(&ca.td, "shop", &name).unwrap())
            })
            .collect();
        if let Err(status) = revoke(&client, &gone.iter().collect::<Vec<_>>(), &[]).await {
            refused = Some((call * per_call, status));
            break;
        }
    }
    let (revoked, status) = refused.expect("a bound");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    // Refused by the bounds, or while there is still room for the hub's own revocations (a
    // rollover's serials: a principal may cost more than the room kept for one).
    let message = status.message();
    assert!(
        message.contains("no room for the hub's own revocations")
            || message.contains("decoding bounds"),
        "{status:?}"
    );
    assert!(revoked > 0);
    let list = hub.revocations().unwrap();
    assert_eq!(list.to_wire().principals.len(), revoked);
    // The hub can still add what it needs for itself (a retired intermediate's serial):
    // eight serials of the longest kind, in the largest enrollment answer.
    let mut room = list.to_wire().clone();
    room.serials
        .extend((0..8u8).map(|i| vec![i; entente_wire::MAX_SERIAL_BYTES]));
    let largest = entente_wire::encode(&EnrollResponse {
        certificate_chain: vec![
            vec![0; entente_wire::MAX_CERTIFICATE_BYTES];
            entente_wire::MAX_CHAIN_CERTIFICATES
        ],
        key_bundle: Some(entente_wire::KeyBundle {
            principal: "p".repeat(entente_wire::MAX_ID_BYTES),
            signature: vec![0; entente_wire::MAX_SIGNATURE_BYTES],
            ..entente_wire::KeyBundle::default()
        }),
        trust_bundle_pem: "c".repeat(entente_wire::MAX_TRUST_BUNDLE_BYTES),
        revocations: Some(room),
    });
    assert!(largest.len() <= limits.max_frame_bytes);
    <EnrollResponse as entente_wire::Bounded>::scan(&largest, &limits).unwrap();

    // An agent enrolls, and its answer, with the list in force, decodes within the bounds.
    let agent = entente_types::AgentId::new(&ca.td, "shop", "late").unwrap();
    let token = hub
        .create_token(agent, std::time::Duration::from_secs(600))
        .await
        .unwrap();
    let response = enroll_raw(&hub, Enrollment::new().request(token.as_str()))
        .await
        .unwrap();
    assert_eq!(response.revocations.as_ref(), Some(list.to_wire()));
    let bytes = entente_wire::encode(&response);
    assert!(bytes.len() <= limits.max_frame_bytes);
    <EnrollResponse as entente_wire::Bounded>::scan(&bytes, &limits).unwrap();
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_admin_revokes_an_agent_by_principal_and_its_live_session_ends() {
    let ca = TestCa::new();
    let root = admin(&ca, "admin");
    let (hub, _store) =
        start_with_store(&ca, config_with_admins(vec![root.principal.clone()])).await;
    let client = root.connect(&hub).await;
    let alice = ca.agent("shop", "alice");
    let bob = ca.agent("shop", "bob");
    let mut alice_session = alice.session(&hub).await;
    assert_eq!(alice_session.subscribe(1, "orders.eu").await, ack(1));
    let mut bob_session = bob.session(&hub).await;
    assert_eq!(bob_session.subscribe(1, "orders.eu").await, ack(1));

    let response = revoke(&client, &[&alice.principal], &[]).await.unwrap();
    assert_eq!(response.closed_connections, 1);
    let list = verified(&ca, &response);
    assert!(list.is_principal_revoked(&alice.principal));
    assert!(!list.is_principal_revoked(&bob.principal));
    assert_eq!(hub.revocations().as_ref(), Some(&list));

    // Alice's live session ends; she cannot come back.
    let status = alice_session.status().await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(refused_as_revoked(&ca, &hub, &alice).await);
    // Bob is untouched.
    assert_eq!(bob_session.subscribe(2, "orders.us").await, ack(2));

    let stats = hub.stats();
    assert_eq!((stats.admin_actions, stats.admin_refusals), (1, 0));
    assert_eq!(stats.revoked_disconnects, 1);
    eventually("alice's connection is gone", || hub.connections() == 2).await;
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_admin_revokes_a_certificate_by_serial() {
    let ca = TestCa::new();
    let root = admin(&ca, "admin");
    let (hub, _store) =
        start_with_store(&ca, config_with_admins(vec![root.principal.clone()])).await;
    let client = root.connect(&hub).await;
    let alice = ca.agent("shop", "alice");
    let mut session = alice.session(&hub).await;
    assert_eq!(session.subscribe(1, "orders.eu").await, ack(1));

    let response = revoke(&client, &[], &[&alice.svid.serial]).await.unwrap();
    assert_eq!(response.closed_connections, 1);
    let list = verified(&ca, &response);
    assert!(list.is_serial_revoked(&alice.svid.serial));
    assert!(!list.is_principal_revoked(&alice.principal));
    assert_eq!(session.status().await.code(), Code::PermissionDenied);
    assert!(refused_as_revoked(&ca, &hub, &alice).await);

    // Only that certificate: a new one for the same principal gets in.
    let renewed = ca.agent("shop", "alice");
    let mut session = renewed.session(&hub).await;
    assert_eq!(session.subscribe(1, "orders.eu").await, ack(1));

    // The intermediate that signs is rolled over, never revoked (it would refuse every
    // certificate the hub issues).
    let intermediate = {
        use x509_parser::prelude::{FromDer as _, X509Certificate};
        let signing = hub.ca();
        let (_, cert) = X509Certificate::from_der(signing.intermediate_cert()).unwrap();
        cert.raw_serial().to_vec()
    };
    assert_refused(
        revoke(&client, &[], &[&intermediate]).await,
        Code::InvalidArgument,
        "roll it over",
    );
    assert_eq!(session.subscribe(2, "orders.us").await, ack(2));
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn successive_revocations_add_to_what_is_in_force() {
    let ca = TestCa::new();
    let root = admin(&ca, "admin");
    let config = config_with_admins(vec![root.principal.clone()]);
    let (hub, store) = start_with_store(&ca, config.clone()).await;
    let client = root.connect(&hub).await;
    let [alice, bob, carol] = ["alice", "bob", "carol"].map(|name| ca.agent("shop", name));

    // The operator revokes Carol through the handle, with a list of its own.
    let mut operator = Revocations::new();
    operator.revoke_principal(&carol.principal);
    let first = ca
        .ca
        .sign_revocations(&operator, SystemTime::now())
        .unwrap();
    let first = VerifiedRevocationList::verify(first, ca.trust(), SystemTime::now()).unwrap();
    hub.revoke(first.clone()).await.unwrap();

    // Two remote revocations: each adds to the list in force, none replaces it.
    let second = verified(
        &ca,
        &revoke(&client, &[&alice.principal], &[]).await.unwrap(),
    );
    let third = verified(
        &ca,
        &revoke(&client, &[], &[&bob.svid.serial]).await.unwrap(),
    );
    assert!(first.version() < second.version() && second.version() < third.version());
    for list in [&second, &third] {
        assert!(list.is_principal_revoked(&carol.principal));
        assert!(list.is_principal_revoked(&alice.principal));
    }
    assert!(third.is_serial_revoked(&bob.svid.serial));
    for agent in [&alice, &bob, &carol] {
        assert!(
            refused_as_revoked(&ca, &hub, agent).await,
            "{}",
            agent.principal
        );
    }

    // Revoking what is revoked already changes nothing and signs nothing new.
    let again = revoke(&client, &[&alice.principal], &[&bob.svid.serial])
        .await
        .unwrap();
    assert_eq!(again.closed_connections, 0);
    assert_eq!(again.revocations.as_ref(), Some(third.to_wire()));

    // The operator's own list is now stale: the hub refuses to go back.
    let mut stale = operator.clone();
    stale.revoke_principal(&ca.principal("shop", "dave"));
    let stale = ca.ca.sign_revocations(&stale, SystemTime::now()).unwrap();
    let stale = VerifiedRevocationList::verify(stale, ca.trust(), SystemTime::now()).unwrap();
    assert!(matches!(
        hub.revoke(stale).await,
        Err(HubError::StaleRevocations { .. })
    ));
    hub.shutdown().await.unwrap();

    // After a restart, the whole list is in force, and the next remote revocation builds on it.
    let hub = Hub::start(config, ca.ca.clone(), store).await.unwrap();
    assert_eq!(hub.revocations().as_ref(), Some(&third));
    let client = root.connect(&hub).await;
    let dave = ca.agent("shop", "dave");
    let fourth = verified(
        &ca,
        &revoke(&client, &[&dave.principal], &[]).await.unwrap(),
    );
    assert!(fourth.version() > third.version());
    for agent in [&alice, &bob, &carol, &dave] {
        assert!(
            refused_as_revoked(&ca, &hub, agent).await,
            "{}",
            agent.principal
        );
    }
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_admin_cannot_revoke_itself_but_another_admin_can() {
    let ca = TestCa::new();
    let root = admin(&ca, "admin");
    let deputy = admin(&ca, "deputy");
    let (hub, _store) = start_with_store(
        &ca,
        config_with_admins(vec![root.principal.clone(), deputy.principal.clone()]),
    )
    .await;
    let client = root.connect(&hub).await;
    let alice = ca.principal("shop", "alice");

    // By principal, by the serial of this connection's certificate, or within a larger
    // request: refused, and nothing is revoked.
    assert_refused(
        revoke(&client, &[&root.principal], &[]).await,
        Code::FailedPrecondition,
        "cannot revoke itself",
    );
    assert_refused(
        revoke(&client, &[], &[&root.svid.serial]).await,
        Code::FailedPrecondition,
        "cannot revoke itself",
    );
    assert_refused(
        revoke(&client, &[&alice, &root.principal], &[]).await,
        Code::FailedPrecondition,
        "cannot revoke itself",
    );
    assert!(hub.revocations().is_none());
    let stats = hub.stats();
    assert_eq!((stats.admin_actions, stats.admin_refusals), (0, 3));

    // Still an admin, still connected.
    create_token(&client, alice.as_str(), 0).await.unwrap();

    // Another admin may revoke it, deliberately: its connection is closed.
    let deputy_client = deputy.connect(&hub).await;
    let response = revoke(&deputy_client, &[&root.principal], &[])
        .await
        .unwrap();
    assert_eq!(response.closed_connections, 1);
    assert!(create_token(&client, alice.as_str(), 0).await.is_err());
    assert!(refused_as_revoked(&ca, &hub, &root).await);
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_revoke_requests_are_refused() {
    let ca = TestCa::new();
    let root = admin(&ca, "admin");
    let (hub, _store) =
        start_with_store(&ca, config_with_admins(vec![root.principal.clone()])).await;
    let client = root.connect(&hub).await;
    let raw = |principals: &[&str], serials: &[&[u8]]| RevokeRequest {
        principals: principals.iter().map(|p| (*p).to_owned()).collect(),
        serials: serials.iter().map(|s| s.to_vec()).collect(),
    };
    let cases: [(RevokeRequest, &str); 6] = [
        (raw(&[], &[]), "nothing to revoke"),
        (raw(&["alice"], &[]), "principals"),
        (raw(&["spiffe://example.org/shop/alice"], &[]), "principals"),
        (
            raw(&["spiffe://elsewhere.org/agent/shop/alice"], &[]),
            "trust domain",
        ),
        (
            raw(&["spiffe://example.org/agent/system/hub"], &[]),
            "cannot be revoked",
        ),
        (raw(&[], &[&[]]), "serial"),
    ];
    for (request, says) in cases {
        assert_refused(
            client
                .unary::<_, RevokeResponse>(REVOKE_PATH, request)
                .await,
            Code::InvalidArgument,
            says,
        );
    }
    // A serial over 21 bytes fails bounded decoding.
    assert_refused(
        client
            .unary::<_, RevokeResponse>(REVOKE_PATH, raw(&[], &[&[7; 22]]))
            .await,
        Code::InvalidArgument,
        "serials",
    );
    assert!(hub.revocations().is_none());
    assert_eq!(hub.stats().admin_refusals, 6);
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn admin_paths_are_not_served_on_the_enroll_name() {
    let ca = TestCa::new();
    let root = admin(&ca, "admin");
    let (hub, _store) =
        start_with_store(&ca, config_with_admins(vec![root.principal.clone()])).await;
    let client = support::enroll_client(&hub).await;
    assert_refused(
        create_token(&client, ca.principal("shop", "alice").as_str(), 0).await,
        Code::Unimplemented,
        "",
    );
    assert_refused(
        revoke(&client, &[&ca.principal("shop", "alice")], &[]).await,
        Code::Unimplemented,
        "",
    );
    let stats = hub.stats();
    assert_eq!((stats.admin_actions, stats.admin_refusals), (0, 0));
}

#[tokio::test]
async fn admins_of_another_trust_domain_are_refused_at_start() {
    let ca = TestCa::new();
    let foreign = TrustDomain::new("elsewhere.org").unwrap();
    let config = config_with_admins(vec![Principal::from(
        HumanId::new(&foreign, "admin").unwrap(),
    )]);
    let err = Hub::start(config, ca.ca.clone(), ca.store())
        .await
        .unwrap_err();
    assert!(matches!(err, HubError::Config(_)), "{err:?}");
}

// === authorized by the policies ===

/// `spiffe://example.org/human/ann`, whom the tests below permit administrative acts by
/// policy; she is not in `HubConfig::admins`.
const ANN: &str = "spiffe://example.org/human/ann";

/// The tests' usual config, with `root` listed and `policies` added to the usual ones.
fn config_with_policies(root: &Agent, policies: &str) -> HubConfig {
    HubConfig {
        admins: vec![root.principal.clone()],
        policies: vec![
            ("shop.cedar".to_owned(), support::SHOP.to_owned()),
            ("admin.cedar".to_owned(), policies.to_owned()),
        ],
        ..HubConfig::default()
    }
}

#[tokio::test]
async fn a_human_permitted_enroll_on_a_segment_creates_tokens_for_its_agents_only() {
    let ca = TestCa::new();
    let root = admin(&ca, "admin");
    let policies = format!(
        r#"
        @id("ann-enrolls-shop")
        permit (principal == Human::"{ANN}", action == Action::"enroll",
                resource in Segment::"shop");
        @id("ann-enrolls-humans")
        permit (principal == Human::"{ANN}", action == Action::"enroll", resource is Human);
        "#
    );
    let (hub, _store) = start_with_store(&ca, config_with_policies(&root, &policies)).await;
    let ann = admin(&ca, "ann");
    assert_eq!(ann.principal.as_str(), ANN);
    let client = ann.connect(&hub).await;

    // An agent of segment shop: a token, with which it enrolls.
    let response = create_token(&client, ca.principal("shop", "alice").as_str(), 0)
        .await
        .unwrap();
    let enrollment = Enrollment::new();
    let enrolled = enroll_raw(&hub, enrollment.request(&response.token))
        .await
        .unwrap();
    let alice = enrollment.into_agent(&enrolled, ca.trust());
    assert_eq!(alice.principal, ca.principal("shop", "alice"));

    // An agent of segment lab: no policy permits it.
    assert_refused(
        create_token(&client, ca.principal("lab", "eve").as_str(), 0).await,
        Code::PermissionDenied,
        "creating a join token for `spiffe://example.org/agent/lab/eve` is denied: no policy permits it",
    );
    // A human the policies name: yes; a listed administrator: never by policy (a token for
    // it would be its powers).
    create_token(&client, "spiffe://example.org/human/carol", 0)
        .await
        .unwrap();
    assert_refused(
        create_token(&client, root.principal.as_str(), 0).await,
        Code::PermissionDenied,
        "is an administrator the hub's configuration lists",
    );
    // Bad input is still bad input, before any decision.
    assert_refused(
        create_token(&client, "spiffe://example.org/agent/system/x", 0).await,
        Code::InvalidArgument,
        "reserved",
    );
    // Whom no policy permits to act learns nothing of who the listed administrators are.
    let refused = revoke(&client, &[&root.principal], &[]).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(
        refused.message().contains("no policy permits it")
            && !refused.message().contains("administrator"),
        "{refused:?}"
    );
    let stats = hub.stats();
    assert_eq!((stats.admin_actions, stats.admin_refusals), (2, 4));
    assert_eq!(stats.enrollments, 1);
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_human_permitted_revoke_on_an_agent_revokes_it_and_nothing_else() {
    let ca = TestCa::new();
    let root = admin(&ca, "admin");
    let policies = format!(
        r#"
        @id("ann-revokes-bob-and-dave")
        permit (principal == Human::"{ANN}", action == Action::"revoke", resource is Agent)
        when {{ resource == Agent::"spiffe://example.org/agent/shop/bob"
                || resource == Agent::"spiffe://example.org/agent/shop/dave" }};
        @id("ann-revokes-humans")
        permit (principal == Human::"{ANN}", action == Action::"revoke", resource is Human);
        "#
    );
    let (hub, _store) = start_with_store(&ca, config_with_policies(&root, &policies)).await;
    let ann = admin(&ca, "ann");
    let client = ann.connect(&hub).await;
    let [alice, bob, dave] = ["alice", "bob", "dave"].map(|name| ca.agent("shop", name));
    let mut alice_session = alice.session(&hub).await;
    assert_eq!(alice_session.subscribe(1, "orders.eu").await, ack(1));
    let mut bob_session = bob.session(&hub).await;
    assert_eq!(bob_session.subscribe(1, "orders.eu").await, ack(1));

    // All or nothing: dave is permitted, alice is not, so neither is revoked.
    assert_refused(
        revoke(&client, &[&dave.principal, &alice.principal], &[]).await,
        Code::PermissionDenied,
        "revoking `spiffe://example.org/agent/shop/alice` is denied: no policy permits it",
    );
    assert!(hub.revocations().is_none());
    // Dave is hers to revoke, but the hub has never seen him (neither enrolled nor connected):
    // the list only grows, and made-up names would fill it.
    assert_refused(
        revoke(&client, &[&dave.principal], &[]).await,
        Code::PermissionDenied,
        "is unknown to the hub",
    );
    assert!(hub.revocations().is_none());
    // A serial names no principal a policy could scope: the listed administrators' alone,
    // even for a serial of a principal she may revoke.
    assert_refused(
        revoke(&client, &[], &[&bob.svid.serial]).await,
        Code::PermissionDenied,
        "reserved to the administrators the hub's configuration lists",
    );
    assert_refused(
        revoke(&client, &[&bob.principal], &[&bob.svid.serial]).await,
        Code::PermissionDenied,
        "revoking by certificate serial is reserved",
    );
    // A listed administrator is not hers to revoke, whatever the policies say; and she
    // cannot revoke herself either.
    assert_refused(
        revoke(&client, &[&root.principal], &[]).await,
        Code::PermissionDenied,
        "is an administrator the hub's configuration lists",
    );
    assert_refused(
        revoke(&client, &[&ann.principal], &[]).await,
        Code::FailedPrecondition,
        "cannot revoke itself",
    );
    assert!(hub.revocations().is_none());

    // Bob, by principal: revoked, his session ends.
    let response = revoke(&client, &[&bob.principal], &[]).await.unwrap();
    assert_eq!(response.closed_connections, 1);
    let list = verified(&ca, &response);
    assert!(list.is_principal_revoked(&bob.principal));
    assert!(!list.is_principal_revoked(&alice.principal));
    assert_eq!(bob_session.status().await.code(), Code::PermissionDenied);
    assert!(refused_as_revoked(&ca, &hub, &bob).await);
    // Alice carries on.
    assert_eq!(alice_session.subscribe(2, "orders.us").await, ack(2));

    let stats = hub.stats();
    assert_eq!((stats.admin_actions, stats.admin_refusals), (1, 6));
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn listed_admins_do_everything_with_no_policy_at_all() {
    let ca = TestCa::new();
    let root = admin(&ca, "admin");
    let config = HubConfig {
        admins: vec![root.principal.clone()],
        policies: Vec::new(),
        ..HubConfig::default()
    };
    let (hub, _store) = start_with_store(&ca, config).await;
    let client = root.connect(&hub).await;
    let alice = ca.agent("shop", "alice");
    let bob = ca.agent("shop", "bob");

    create_token(&client, ca.principal("lab", "eve").as_str(), 0)
        .await
        .unwrap();
    create_token(&client, "spiffe://example.org/human/carol", 0)
        .await
        .unwrap();
    let list = verified(
        &ca,
        &revoke(&client, &[&alice.principal], &[&bob.svid.serial])
            .await
            .unwrap(),
    );
    assert!(list.is_principal_revoked(&alice.principal));
    assert!(list.is_serial_revoked(&bob.svid.serial));

    let shown: ShowPoliciesResponse = client
        .unary(SHOW_POLICIES_PATH, ShowPoliciesRequest {})
        .await
        .unwrap();
    assert_eq!(shown.sources.len(), 1, "only the base policies run");
    let check: CheckPolicyResponse = client
        .unary(
            CHECK_POLICY_PATH,
            CheckPolicyRequest {
                principal: root.principal.to_string(),
                action: "admin".into(),
                resource_type: "hub".into(),
                resource: "hub".into(),
            },
        )
        .await
        .unwrap();
    // No policy permits the listed administrator anything: it needs none.
    assert!(!check.allowed, "{}", check.explanation);
    let loaded: LoadPoliciesResponse = client
        .unary(
            LOAD_POLICIES_PATH,
            LoadPoliciesRequest {
                sources: vec![PolicySource {
                    name: "shop.cedar".into(),
                    text: support::SHOP.into(),
                }],
            },
        )
        .await
        .unwrap();
    assert_eq!(loaded.policies, 3);
    let stats = hub.stats();
    assert_eq!((stats.admin_actions, stats.admin_refusals), (6, 0));
    // No policy was asked on its behalf.
    assert_eq!(stats.policy_allows + stats.policy_denials, 0);
    hub.shutdown().await.unwrap();
}

// === Quarantine ===

async fn quarantine(
    client: &Client,
    impose: &str,
    release: &str,
) -> Result<QuarantineResponse, Status> {
    client
        .unary(
            QUARANTINE_PATH,
            QuarantineRequest {
                impose: impose.to_owned(),
                release: release.to_owned(),
                reason: "a test".to_owned(),
            },
        )
        .await
}

/// A hub with `root` listed as administrator, over a store that fails on demand (its
/// directory lives as long as the `TempDir`).
async fn start_flaky(
    ca: &TestCa,
    root: &Agent,
) -> (entente_hub::HubHandle, Arc<FlakyStore>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FlakyStore::new(dir.path()));
    let config = config_with_admins(vec![root.principal.clone()]);
    let hub = Hub::start(config, ca.ca.clone(), store.clone())
        .await
        .unwrap();
    (hub, store, dir)
}

#[tokio::test]
async fn a_quarantine_the_store_refuses_stays_in_force_until_it_can_be_lifted() {
    let ca = TestCa::new();
    let root = admin(&ca, "admin");
    let (hub, store, _dir) = start_flaky(&ca, &root).await;
    let client = root.connect(&hub).await;
    let eve = ca.principal("shop", "eve").to_string();

    // Imposed while the store fails: in force here (the hub fails closed), the caller told
    // that it is not kept.
    store.fail_config.store(true, Ordering::SeqCst);
    assert_refused(quarantine(&client, &eve, "").await, Code::Unavailable, "");
    let listed = quarantine(&client, "", "").await.unwrap();
    assert_eq!(listed.quarantined.len(), 1);
    // Lifted while the store fails: refused, and still in force.
    assert_refused(quarantine(&client, "", &eve).await, Code::Unavailable, "");
    assert_eq!(
        quarantine(&client, "", "").await.unwrap().quarantined.len(),
        1
    );
    // The store is back: imposing it again keeps it ("quarantined already"), across a restart.
    store.fail_config.store(false, Ordering::SeqCst);
    assert_refused(
        quarantine(&client, &eve, "").await,
        Code::FailedPrecondition,
        "quarantined already",
    );
    hub.shutdown().await.unwrap();
    let hub = Hub::start(
        config_with_admins(vec![root.principal.clone()]),
        ca.ca.clone(),
        store.clone(),
    )
    .await
    .unwrap();
    let client = root.connect(&hub).await;
    assert_eq!(
        quarantine(&client, "", "").await.unwrap().quarantined.len(),
        1
    );
    // It is lifted, and stays lifted across a restart.
    let lifted = quarantine(&client, "", &eve).await.unwrap();
    assert!(lifted.quarantined.is_empty());
    assert_eq!(lifted.released.unwrap().principal, eve);
    hub.shutdown().await.unwrap();
    let hub = Hub::start(
        config_with_admins(vec![root.principal.clone()]),
        ca.ca.clone(),
        store,
    )
    .await
    .unwrap();
    let client = root.connect(&hub).await;
    assert!(
        quarantine(&client, "", "")
            .await
            .unwrap()
            .quarantined
            .is_empty()
    );
    hub.shutdown().await.unwrap();
}

/// A quarantine the store refused is stored again by the hub at its next window, without
/// anyone imposing it again (the detector never does), and so outlives a restart.
#[tokio::test]
async fn a_quarantine_the_store_refused_is_kept_once_the_store_takes_it() {
    let ca = TestCa::new();
    let root = admin(&ca, "admin");
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FlakyStore::new(dir.path()));
    let config = || {
        let mut config = config_with_admins(vec![root.principal.clone()]);
        config.anomaly.window = std::time::Duration::from_millis(100);
        config
    };
    let hub = Hub::start(config(), ca.ca.clone(), store.clone())
        .await
        .unwrap();
    let client = root.connect(&hub).await;
    let eve = ca.principal("shop", "eve").to_string();
    store.fail_config.store(true, Ordering::SeqCst);
    assert_refused(quarantine(&client, &eve, "").await, Code::Unavailable, "");
    store.fail_config.store(false, Ordering::SeqCst);
    // Kept at a window to come: the stored list names eve.
    let kept = || async {
        let stored = store.config(entente_hub::QUARANTINE_KEY).await.unwrap();
        stored.is_some_and(|bytes| String::from_utf8_lossy(&bytes).contains(&eve))
    };
    let started = std::time::Instant::now();
    while !kept().await {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "never kept"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    hub.shutdown().await.unwrap();
    let hub = Hub::start(config(), ca.ca.clone(), store).await.unwrap();
    let client = root.connect(&hub).await;
    let listed = quarantine(&client, "", "").await.unwrap();
    assert_eq!(listed.quarantined.len(), 1);
    hub.shutdown().await.unwrap();
}

/// A certificate renewed over `client`'s connection: its chain and the new TLS key.
async fn renewed(client: &Client, ca: &TestCa) -> (Vec<Vec<u8>>, Vec<u8>) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap();
    let response: RenewResponse = client
        .unary(
            entente_hub::RENEW_PATH,
            RenewRequest {
                csr: csr.der().to_vec(),
            },
        )
        .await
        .unwrap();
    let chain: Vec<rustls_pki_types::CertificateDer<'static>> = response
        .certificate_chain
        .iter()
        .map(|c| c.clone().into())
        .collect();
    ca.trust()
        .verify_svid(&chain, SystemTime::now(), None)
        .unwrap();
    (response.certificate_chain, key.serialize_der())
}

/// A client configuration presenting `chain` and `key`, and the hub's server name.
fn presenting(
    hub: &entente_hub::HubHandle,
    ca: &TestCa,
    chain: &[Vec<u8>],
    key: &[u8],
) -> (rustls::ClientConfig, String) {
    let config = entente_hub::client_tls::client_config(
        ca.trust(),
        chain.iter().map(|c| c.clone().into()).collect(),
        rustls_pki_types::PrivateKeyDer::Pkcs8(key.to_vec().into()),
    )
    .unwrap();
    (
        config,
        entente_hub::hub_server_name(hub.trust_bundle().trust_domain()),
    )
}

/// Whether a connection presenting `chain` and `key` is accepted.
async fn accepted(
    hub: &entente_hub::HubHandle,
    ca: &TestCa,
    chain: &[Vec<u8>],
    key: &[u8],
) -> bool {
    let (config, name) = presenting(hub, ca, chain, key);
    probe(hub.local_addr(), config, &name).await.is_ok()
}

/// A stolen certificate renewed before its serial is revoked does not live on in its
/// renewals: revoking the serial revokes every certificate renewed from it, generation after
/// generation; a renewal of the same agent from another certificate stays.
#[tokio::test]
async fn revoking_a_serial_revokes_the_certificates_renewed_from_it() {
    let ca = TestCa::new();
    let root = admin(&ca, "admin");
    let (hub, _store) =
        start_with_store(&ca, config_with_admins(vec![root.principal.clone()])).await;
    let admin_client = root.connect(&hub).await;
    // Alice's own certificate, and one a thief took: both hers, issued apart.
    let alice = ca.agent("shop", "alice");
    let stolen = ca.agent("shop", "alice");
    let own = alice.connect(&hub).await;
    let thief = stolen.connect(&hub).await;
    // The thief renews, reconnects with the renewal and renews again; Alice renews too.
    let (first, first_key) = renewed(&thief, &ca).await;
    let thief_again = {
        let (config, name) = presenting(&hub, &ca, &first, &first_key);
        Client::connect(hub.local_addr(), config, &name)
            .await
            .unwrap()
    };
    let (second, second_key) = renewed(&thief_again, &ca).await;
    let (mine, mine_key) = renewed(&own, &ca).await;
    assert!(accepted(&hub, &ca, &second, &second_key).await);

    // The stolen certificate's serial alone is revoked: both renewals go with it.
    let response = revoke(&admin_client, &[], &[&stolen.svid.serial])
        .await
        .unwrap();
    let list = verified(&ca, &response);
    assert!(!list.is_principal_revoked(&alice.principal));
    assert!(!accepted(&hub, &ca, &first, &first_key).await);
    assert!(!accepted(&hub, &ca, &second, &second_key).await);
    // Alice's own lineage is untouched.
    assert!(accepted(&hub, &ca, &mine, &mine_key).await);
    assert!(
        accepted(
            &hub,
            &ca,
            &alice.chain().iter().map(|c| c.to_vec()).collect::<Vec<_>>(),
            alice.key().secret_der()
        )
        .await
    );
    hub.shutdown().await.unwrap();
}

/// An administrator can't revoke a serial its own live connection's certificate was renewed
/// from: the revocation would take that certificate along, and close the connection asking.
#[tokio::test]
async fn a_serial_the_callers_own_certificate_was_renewed_from_is_not_revoked() {
    let ca = TestCa::new();
    let root = admin(&ca, "admin");
    let dir = tempfile::TempDir::new().unwrap();
    let mut config = config_with_admins(vec![root.principal.clone()]);
    config.audit = Some(entente_hub::AuditConfig::new(dir.path().join("audit")));
    let (hub, _store) = start_with_store(&ca, config).await;
    // Renewed over a first connection, the administrator comes back with the renewal.
    let first = root.connect(&hub).await;
    let (chain, key) = renewed(&first, &ca).await;
    drop(first);
    let (config, name) = presenting(&hub, &ca, &chain, &key);
    let client = Client::connect(hub.local_addr(), config, &name)
        .await
        .unwrap();
    assert_refused(
        revoke(&client, &[], &[&root.svid.serial]).await,
        Code::FailedPrecondition,
        "",
    );
    // The connection asking is still served.
    revoke(&client, &[&ca.principal("shop", "mallory")], &[])
        .await
        .unwrap();
    // The refusal's record names the serial it was asked for.
    let (records, _) = hub.audit_records(0, 100_000).await.unwrap().unwrap();
    let serial: String = root
        .svid
        .serial
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(
        records.iter().any(|r| matches!(&r.event,
            entente_audit::Event::Admin(a) if a.operation.as_clear() == Some("revoke")
                && a.target.as_clear() == Some(&*format!("serial:{serial}")))
            && r.outcome != entente_audit::Outcome::Success),
        "{records:?}"
    );
    hub.shutdown().await.unwrap();
}

/// A rotation of the data keys' wrapping key whose store refuses to record it is refused; the
/// new key stays in the key store (a store that failed may still have written the list
/// naming it: deleting the key would leave the data keys wrapped under nothing), the old one
/// still wraps them, and the next rotation goes through.
#[tokio::test]
async fn a_wrapping_key_rotation_the_store_refuses_keeps_both_keys() {
    let ca = TestCa::new();
    let root = admin(&ca, "admin");
    let (hub, store, _dir) = start_flaky(&ca, &root).await;
    let client = root.connect(&hub).await;
    let keks = || {
        let mut names: Vec<String> = ca
            .ca
            .keystore()
            .list()
            .unwrap()
            .into_iter()
            .map(|(name, _)| name.to_string())
            .filter(|name| name.starts_with("data-kek"))
            .collect();
        names.sort();
        names
    };
    let rotate = || {
        client.unary::<_, KeysResponse>(
            KEYS_PATH,
            KeysRequest {
                rotate: "data-kek".to_owned(),
            },
        )
    };
    assert_eq!(keks(), ["data-kek"]);
    store.fail_config.store(true, Ordering::SeqCst);
    assert_refused(rotate().await, Code::Unavailable, "");
    assert_eq!(keks().len(), 2, "{:?}", keks());
    store.fail_config.store(false, Ordering::SeqCst);
    rotate().await.unwrap();
    // The old key went; the one the failed rotation made stays, unused.
    let after = keks();
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(!after.contains(&"data-kek".to_owned()), "{after:?}");
    hub.shutdown().await.unwrap();
}

/// A keys answer that would not fit in a frame (more data keys than the frame limit holds) is
/// refused, saying so and that the rotation asked for was made, not cut.
#[tokio::test]
async fn a_keys_answer_over_the_frame_limit_says_so() {
    let ca = TestCa::new();
    let root = admin(&ca, "admin");
    let mut config = config_with_admins(vec![root.principal.clone()]);
    config.limits.max_frame_bytes = 4096;
    let (hub, _store) = start_with_store(&ca, config).await;
    let client = root.connect(&hub).await;
    let keys = |rotate: &str| {
        client.unary::<_, KeysResponse>(
            KEYS_PATH,
            KeysRequest {
                rotate: rotate.to_owned(),
            },
        )
    };
    assert_eq!(keys("").await.unwrap().data_keys.len(), 1);
    for _ in 0..400 {
        hub.rotate_data_key().await.unwrap();
    }
    assert_refused(
        keys("").await,
        Code::ResourceExhausted,
        "do not fit in one answer",
    );
    assert_refused(
        keys("data").await,
        Code::ResourceExhausted,
        "the rotation asked for was made: data v402",
    );
    hub.shutdown().await.unwrap();
}

/// An enrollment refused once its token is spent (here: the principal is revoked) is recorded
/// under whoever the token was made for, with the token's ID, not as anonymous: the token
/// identified them.
#[tokio::test]
async fn an_enrollment_refused_after_its_token_is_spent_names_who_it_was_for() {
    let ca = TestCa::new();
    let dir = tempfile::TempDir::new().unwrap();
    let mut config = support::config();
    config.audit = Some(entente_hub::AuditConfig::new(dir.path().join("audit")));
    let (hub, _store) = start_with_store(&ca, config).await;
    let alice = ca.principal("shop", "alice");
    let mut revocations = Revocations::new();
    revocations.revoke_principal(&alice);
    let list = ca
        .ca
        .sign_revocations(&revocations, SystemTime::now())
        .unwrap();
    let list = VerifiedRevocationList::verify(list, ca.trust(), SystemTime::now()).unwrap();
    hub.revoke(list).await.unwrap();
    let token = hub
        .create_token(alice.clone(), DEFAULT_TOKEN_TTL)
        .await
        .unwrap();
    let status = enroll_raw(&hub, Enrollment::new().request(token.as_str()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    let (records, _) = hub.audit_records(0, 100_000).await.unwrap().unwrap();
    let refused: Vec<_> = records
        .iter()
        .filter_map(|r| match &r.event {
            entente_audit::Event::Admin(a) if a.operation.as_clear() == Some("enroll") => {
                Some((r, a))
            }
            _ => None,
        })
        .collect();
    let [(record, admin)] = refused.as_slice() else {
        panic!("{refused:?}");
    };
    assert_eq!(record.actor, alice.as_str());
    assert_eq!(record.outcome, entente_audit::Outcome::Denied);
    assert_eq!(admin.target.as_clear(), Some(alice.as_str()));
    let id: String = token
        .hash()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    let detail = admin.detail.as_clear().unwrap();
    assert!(detail.starts_with(&format!("token {id}: ")), "{detail}");
    assert!(detail.contains("revoked"), "{detail}");
    hub.shutdown().await.unwrap();
}

/// Enrollment needs no credential, so refusals of it are recorded one by one only up to a
/// few a second, the rest together once the second is over: a flood of bad tokens can't fill
/// the log's disk, and every refusal is still counted in it.
#[tokio::test]
async fn a_flood_of_refused_enrollments_is_recorded_in_runs() {
    let ca = TestCa::new();
    let dir = tempfile::TempDir::new().unwrap();
    let mut config = support::config();
    config.audit = Some(entente_hub::AuditConfig {
        seal_interval: std::time::Duration::from_millis(50),
        ..entente_hub::AuditConfig::new(dir.path().join("audit"))
    });
    let (hub, store) = start_with_store(&ca, config.clone()).await;
    const FLOOD: u64 = 64;
    flood_enrollments(&hub, FLOOD).await;
    // The run's record comes once its second is over.
    let deadline = tokio::time::Instant::now() + entente_testkit::WAIT;
    let (alone, together) = loop {
        let (alone, together) = enrollment_refusals(&hub).await;
        let recorded = alone + together.iter().sum::<u64>();
        if recorded == FLOOD {
            break (alone, together);
        }
        assert!(
            recorded < FLOOD && tokio::time::Instant::now() < deadline,
            "{alone} alone, {together:?} together"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(!together.is_empty(), "{alone} alone");
    assert!(alone < FLOOD, "{alone}");
    assert_eq!(hub.stats().enroll_refusals, FLOOD);

    // A shutdown within the second records what it held back.
    flood_enrollments(&hub, FLOOD).await;
    hub.shutdown().await.unwrap();
    let hub = entente_hub::Hub::start(config, ca.ca.clone(), store)
        .await
        .unwrap();
    let (alone, together) = enrollment_refusals(&hub).await;
    assert_eq!(
        alone + together.iter().sum::<u64>(),
        2 * FLOOD,
        "{together:?}"
    );
    hub.shutdown().await.unwrap();
}

/// Sends `count` enrollments with a bad token, each refused: from several connections at
/// once, one after the other on each (an enrollment connection takes a few streams at once),
/// so that they come as a flood on a slow machine too.
async fn flood_enrollments(hub: &entente_hub::HubHandle, count: u64) {
    const CLIENTS: u64 = 16;
    let clients =
        futures_util::future::join_all((0..CLIENTS).map(|_| support::enroll_client(hub))).await;
    let sends = (0..CLIENTS).zip(&clients).map(|(i, client)| async move {
        let mine = count / CLIENTS + u64::from(i < count % CLIENTS);
        for _ in 0..mine {
            let request = Enrollment::new().request("ent_not-a-token");
            let status = client
                .unary::<_, EnrollResponse>(entente_hub::ENROLL_PATH, request)
                .await
                .unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        }
    });
    futures_util::future::join_all(sends).await;
}

/// The refused enrollments in `hub`'s audit log: how many recorded alone, and the counts of
/// the records of several.
async fn enrollment_refusals(hub: &entente_hub::HubHandle) -> (u64, Vec<u64>) {
    let (records, _) = hub.audit_records(0, 100_000).await.unwrap().unwrap();
    let alone = records
        .iter()
        .filter(|r| {
            matches!(&r.event, entente_audit::Event::Admin(a) if a.operation.as_clear() == Some("enroll"))
        })
        .count() as u64;
    let together = records
        .iter()
        .filter_map(|r| match &r.event {
            entente_audit::Event::Limit(l) if l.limit.as_clear() == Some("enroll-refusals") => {
                Some(l.count)
            }
            _ => None,
        })
        .collect();
    (alone, together)
}
