//! Rolling the intermediate CA over on a live hub whose CA issues four-second certificates:
//! agents connected before the rollover stay connected and keep exchanging sealed messages
//! through staging, activation and retirement; an agent enrolled after activation talks with
//! them; the old key is deleted, its serial revoked, every step audited, and a restarted hub
//! carries on with the new intermediate.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::time::{Duration, Instant};

use entente_audit::Event;
use entente_ca::{Ca, INTERMEDIATE_KEY, IntermediateRole, IssuedSvid};
use entente_client::{Client, Subscription};
use entente_hub::client_tls::HubServerVerifier;
use entente_hub::{AuditConfig, CaRollover};
use entente_keystore::KeyName;
use entente_store::Store;
use entente_testkit::TestHub;
use entente_types::Principal;
use futures_util::StreamExt as _;
use rustls::client::danger::ServerCertVerifier as _;
use rustls_pki_types::{ServerName, UnixTime};
use x509_parser::prelude::{FromDer, X509Certificate};

const POLICIES: &str = r#"
    @cross_segment
    permit (principal in Segment::"shop",
            action in [Action::"publish", Action::"subscribe"],
            resource in Namespace::"orders");
"#;

/// Every certificate's lifetime.
const TTL: Duration = Duration::from_secs(4);
/// Each rollover phase: at least the certificate lifetime.
const OVERLAP: Duration = Duration::from_secs(5);

async fn start(dir: &tempfile::TempDir) -> TestHub {
    let audit = dir.path().join("audit");
    TestHub::builder()
        .policies(POLICIES)
        .svid_ttl(TTL)
        .config(move |c| {
            c.ca_rollover = CaRollover {
                overlap: OVERLAP,
                lead: Duration::from_secs(30 * 24 * 3600),
                automatic: false,
            };
            c.audit = Some(AuditConfig {
                seal_interval: Duration::from_millis(50),
                ..AuditConfig::new(audit)
            });
        })
        .start()
        .await
        .unwrap()
}

/// An SVID for the hub's own ID, issued by `ca`'s signing intermediate.
fn hub_svid(ca: &Ca, now: std::time::SystemTime) -> IssuedSvid {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap();
    let hub = Principal::from(entente_hub::hub_id(ca.trust_domain()).unwrap());
    ca.issue_svid(csr.der(), &hub, now).unwrap()
}

fn roles(hub: &TestHub) -> Vec<IntermediateRole> {
    hub.hub()
        .ca()
        .intermediates()
        .iter()
        .map(|i| i.role)
        .collect()
}

async fn receive(subscription: &mut Subscription) -> Vec<u8> {
    tokio::time::timeout(Duration::from_secs(10), subscription.next())
        .await
        .expect("a message in time")
        .expect("the subscription is open")
        .expect("a verified message")
        .payload
}

/// `from` publishes on `channel`, `to` receives it: a sealed message whose recipients' key
/// bundles `from` verified, and whose sender's bundle `to` verified.
async fn exchange(from: &Client, to: &mut Subscription, channel: &str, text: &str) {
    from.publish(channel, text.to_owned()).await.unwrap();
    assert_eq!(receive(to).await, text.as_bytes());
}

/// Keeps bob → alice traffic going until `done` holds, counting messages; every one arrives.
async fn traffic_until(
    bob: &Client,
    orders: &mut Subscription,
    sent: &mut u32,
    deadline: Duration,
    mut done: impl FnMut() -> bool,
) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < deadline, "the rollover step did not come");
        exchange(bob, orders, "orders.eu", &format!("order {sent}")).await;
        *sent += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rollover_disconnects_no_agent_and_loses_no_message() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start(&dir).await;
    let first = hub.hub().ca();
    let old_signer = first.signer_id();
    let old_serial = {
        let (_, cert) = X509Certificate::from_der(first.intermediate_cert()).unwrap();
        cert.raw_serial().to_vec()
    };

    // What someone holding the old intermediate's key (leaked) could present as the hub.
    let forged_at = std::time::SystemTime::now();
    let forged = hub_svid(&first, forged_at);

    let alice = hub.connect_agent("shop", "alice").await.unwrap();
    let bob = hub.connect_agent("shop", "bob").await.unwrap();
    let mut orders = alice.subscribe("orders.eu").await.unwrap();
    let mut sent = 0u32;
    exchange(&bob, &mut orders, "orders.eu", "before").await;

    // Stage: the new intermediate is trusted, the old one still signs.
    let staged = hub.hub().stage_intermediate().await.unwrap();
    assert!(staged.starts_with("staged intermediate"), "{staged}");
    assert_eq!(
        roles(&hub),
        [IntermediateRole::Active, IntermediateRole::Staged]
    );
    assert_eq!(hub.hub().ca().signer_id(), old_signer);
    let err = hub.hub().stage_intermediate().await.unwrap_err();
    assert!(err.to_string().contains("in progress"), "{err}");

    // Activation, an overlap later, while messages flow.
    traffic_until(&bob, &mut orders, &mut sent, 4 * OVERLAP, || {
        roles(&hub) == [IntermediateRole::Active, IntermediateRole::Retiring]
    })
    .await;
    let new_signer = hub.hub().ca().signer_id();
    assert_ne!(new_signer, old_signer);
    // Every stored key bundle is signed by the new intermediate now.
    for name in ["alice", "bob"] {
        let principal = hub.agent_id("shop", name).unwrap().to_string();
        let (_, bytes) = hub
            .store()
            .latest_key_bundle(&principal)
            .await
            .unwrap()
            .unwrap();
        let bundle: entente_wire::KeyBundle =
            entente_wire::decode(&bytes, &entente_wire::Limits::default()).unwrap();
        assert_eq!(bundle.signer, new_signer.to_vec(), "{name}");
    }

    // Carol enrolls under the new intermediate and talks with agents enrolled under the old.
    let carol = hub.connect_agent("shop", "carol").await.unwrap();
    assert_eq!(
        X509Certificate::from_der(&carol.identity().chain()[1])
            .unwrap()
            .1
            .public_key()
            .raw,
        X509Certificate::from_der(&hub.hub().ca().intermediates()[0].cert)
            .unwrap()
            .1
            .public_key()
            .raw,
    );
    let mut carols = carol.subscribe("orders.us").await.unwrap();
    exchange(&alice, &mut carols, "orders.us", "alice to carol").await;
    exchange(&carol, &mut orders, "orders.eu", "carol to alice").await;

    // Retirement, another overlap later.
    traffic_until(&bob, &mut orders, &mut sent, 4 * OVERLAP, || {
        roles(&hub) == [IntermediateRole::Active]
    })
    .await;
    assert_eq!(
        hub.hub().trust_bundle().roots(),
        hub.hub().ca().trust_bundle().roots()
    );
    assert_eq!(hub.hub().ca().trust_bundle().intermediates().len(), 1);
    let old_key = KeyName::new(INTERMEDIATE_KEY).unwrap();
    assert!(!hub.hub().ca().keystore().contains(&old_key).unwrap());
    let list = hub.hub().revocations().expect("a revocation list");
    assert!(list.is_serial_revoked(&old_serial));
    // An agent's bundle no longer lists the old intermediate: a server chain through it is
    // refused, presented or not, even at a time its leaf was valid; the new one's is taken.
    let trust = hub.hub().ca().trust_bundle().clone();
    let verify = |verifier: HubServerVerifier, svid: &IssuedSvid, at: std::time::SystemTime| {
        let at = UnixTime::since_unix_epoch(at.duration_since(std::time::UNIX_EPOCH).unwrap());
        let name = ServerName::try_from("hub").unwrap();
        verifier.verify_server_cert(&svid.chain_der[0], &svid.chain_der[1..], &name, &[], at)
    };
    let err = verify(
        HubServerVerifier::new(trust.clone()).unwrap(),
        &forged,
        forged_at,
    )
    .unwrap_err();
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    // (Taken only by an enrollment, whose bundle came out of band, from the intermediates a
    // server presents.)
    let verifier = HubServerVerifier::new(trust.clone()).unwrap();
    assert!(verify(verifier.with_presented_intermediates(), &forged, forged_at).is_ok());
    let now = std::time::SystemTime::now();
    let current = hub_svid(&hub.hub().ca(), now);
    verify(
        HubServerVerifier::new(trust.clone()).unwrap(),
        &current,
        now,
    )
    .unwrap();
    // A bundle of roots alone (as an operator may hand out for enrollment) has nothing of its
    // own to build with, and takes the presented intermediate.
    let roots = entente_ca::TrustBundle::new(trust.roots().to_vec(), Vec::new()).unwrap();
    verify(HubServerVerifier::new(roots).unwrap(), &current, now).unwrap();

    // Nobody was disconnected, nothing was lost, and traffic still flows every way.
    for client in [&alice, &bob, &carol] {
        assert!(!client.is_closed());
        assert_eq!(client.stats().renewal_failures, 0);
    }
    assert!(sent > 10, "{sent}");
    exchange(&bob, &mut orders, "orders.eu", "after").await;
    exchange(&alice, &mut carols, "orders.us", "after, to carol").await;

    // Every step is in the audit log.
    let records = hub.audit_records().await.unwrap();
    let steps: Vec<String> = records
        .iter()
        .filter_map(|r| match &r.event {
            Event::Admin(a) => a
                .operation
                .as_clear()
                .filter(|op| op.ends_with("-intermediate"))
                .map(str::to_owned),
            _ => None,
        })
        .collect();
    assert_eq!(
        steps,
        [
            "stage-intermediate",
            "stage-intermediate",
            "activate-intermediate",
            "retire-intermediate"
        ]
    );

    // A restarted hub carries on with the new intermediate; the renewed agents reconnect.
    let alice_identity = alice.identity();
    let carol_identity = carol.identity();
    for client in [alice, bob, carol] {
        client.close().await;
    }
    let hub = hub.restart().await.unwrap();
    assert_eq!(hub.hub().ca().signer_id(), new_signer);
    assert_eq!(roles(&hub), [IntermediateRole::Active]);
    let alice = hub.connect(alice_identity).await.unwrap();
    let carol = hub.connect(carol_identity).await.unwrap();
    let mut carols = carol.subscribe("orders.us").await.unwrap();
    exchange(&alice, &mut carols, "orders.us", "after the restart").await;
    hub.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_an_intermediate_ends_the_connections_made_through_it() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start(&dir).await;
    let old_serial = {
        let first = hub.hub().ca();
        let (_, cert) = X509Certificate::from_der(first.intermediate_cert()).unwrap();
        cert.raw_serial().to_vec()
    };
    // Alice connects through the intermediate in use, and renews in place (every two
    // seconds) across the rollover; Bob connects once the new one signs. So does an
    // administrator, before the rollover.
    let alice = hub.connect_agent("shop", "alice").await.unwrap();
    let admin = hub.connect(hub.admin().unwrap()).await.unwrap();
    hub.hub().stage_intermediate().await.unwrap();
    let started = Instant::now();
    while roles(&hub) != [IntermediateRole::Active, IntermediateRole::Retiring] {
        assert!(started.elapsed() < 4 * OVERLAP, "no activation");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let bob = hub.connect_agent("shop", "bob").await.unwrap();
    tokio::time::sleep(TTL).await;
    assert!(!alice.is_closed());

    // The administrator can't revoke it over a connection made through it.
    let refused = admin
        .revoke(&[], std::slice::from_ref(&old_serial))
        .await
        .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("nor an intermediate its own connection"),
        "{refused}"
    );
    // The old intermediate's key leaked: its serial revoked now ends what was authenticated
    // through it, renewed since or not (a leaf minted with the key renews too); Bob stays.
    let ca = hub.hub().ca();
    let mut revocations = entente_ca::Revocations::new();
    revocations.revoke_serial(&old_serial).unwrap();
    let now = std::time::SystemTime::now();
    let list = entente_ca::VerifiedRevocationList::verify(
        ca.sign_revocations(&revocations, now).unwrap(),
        ca.trust_bundle(),
        now,
    )
    .unwrap();
    let closed = hub.hub().revoke(list).await.unwrap();
    assert!(closed >= 1, "{closed}");
    let started = Instant::now();
    while !alice.is_closed() {
        assert!(
            started.elapsed() < 2 * TTL,
            "alice's connection stayed open"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!bob.is_closed());
    bob.close().await;
    hub.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_stored_rollover_state_stops_the_hub_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start(&dir).await;
    hub.hub().stage_intermediate().await.unwrap();
    hub.store()
        .put_config(entente_hub::CA_ROLLOVER_KEY, b"\x08\x01\x12\xff garbage")
        .await
        .unwrap();
    let err = hub.restart().await.unwrap_err();
    assert!(
        format!("{err:#}").contains("stored rollover state"),
        "{err:#}"
    );
}

/// A staging whose store was reported failed, but landed (a sync that failed after the
/// write), never took effect: the next start counts its overlap from then, not from when it
/// was stored, so it is not activated before agents could learn the new intermediate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_stored_but_never_in_force_counts_its_overlap_from_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start(&dir).await;
    // What the failed store left: a staging, stored two overlaps ago, never handed out.
    let staged = hub
        .hub()
        .ca()
        .stage_intermediate(std::time::SystemTime::now())
        .unwrap();
    let pem = staged.to_pem();
    let long_ago = u64::try_from(
        (std::time::SystemTime::now() - 2 * OVERLAP)
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    let stored = entente_wire::StoredCaRollover {
        version: 1,
        intermediate: pem.intermediate,
        staged: pem.staged.unwrap(),
        staged_at_ms: long_ago,
        ..entente_wire::StoredCaRollover::default()
    };
    hub.store()
        .put_config(entente_hub::CA_ROLLOVER_KEY, &entente_wire::encode(&stored))
        .await
        .unwrap();
    assert_eq!(roles(&hub), [IntermediateRole::Active]);

    let hub = hub.restart().await.unwrap();
    // Staged from the restart on: not activated at once, a whole overlap to come.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        roles(&hub),
        [IntermediateRole::Active, IntermediateRole::Staged]
    );
    // That time is stored and noted: the next start counts from it, not from itself again
    // (restarts more often than the overlap would put the step off for ever).
    let staged_at = async |hub: &TestHub| {
        let config = async |key: &str| hub.store().config(key).await.unwrap().unwrap();
        let stored = config(entente_hub::CA_ROLLOVER_KEY).await;
        let stored: entente_wire::StoredCaRollover =
            entente_wire::decode(&stored, &entente_wire::Limits::default()).unwrap();
        let noted = config(entente_hub::CA_ROLLOVER_APPLIED_KEY).await;
        assert_eq!(noted[..8], stored.staged_at_ms.to_be_bytes());
        stored.staged_at_ms
    };
    let first = staged_at(&hub).await;
    assert!(first > long_ago + 2 * OVERLAP.as_millis() as u64 - 1_000);
    let hub = hub.restart().await.unwrap();
    assert_eq!(staged_at(&hub).await, first);
    hub.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overlap_shorter_than_the_certificate_lifetime_is_refused() {
    let err = TestHub::builder()
        .svid_ttl(Duration::from_secs(60))
        .config(|c| {
            c.ca_rollover.overlap = Duration::from_secs(30);
        })
        .start()
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("overlap"), "{err:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_handed_over_mid_rollover_waits_a_whole_overlap() {
    let ca = entente_testkit::TestCa::with_options(entente_ca::CaOptions {
        svid_ttl: TTL,
        ..entente_ca::CaOptions::default()
    })
    .unwrap();
    let staged = std::sync::Arc::new(
        ca.ca()
            .stage_intermediate(std::time::SystemTime::now())
            .unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let store =
        std::sync::Arc::new(entente_store::EmbeddedStore::open(dir.path().join("r.redb")).unwrap());
    let config = entente_hub::HubConfig {
        ca_rollover: CaRollover {
            overlap: OVERLAP,
            lead: Duration::from_secs(30 * 24 * 3600),
            automatic: false,
        },
        ..entente_hub::HubConfig::default()
    };
    let hub = entente_hub::Hub::start(config, staged, store)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let roles: Vec<_> = hub.ca().intermediates().iter().map(|i| i.role).collect();
    assert_eq!(roles, [IntermediateRole::Active, IntermediateRole::Staged]);
    hub.shutdown().await.unwrap();
}
