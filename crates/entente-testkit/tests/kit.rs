//! The kit itself: administration, restarts, a CA shared by two hubs, identities the registry
//! never saw.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::Arc;
use std::time::Duration;

use entente_client::ErrorKind;
use entente_testkit::{TestCa, TestHub, eventually};

#[tokio::test]
async fn the_admin_creates_tokens_and_revokes_over_its_connection() {
    let hub = TestHub::start().await.unwrap();
    let admin = hub.connect(hub.admin().unwrap()).await.unwrap();

    let carol = hub.agent_id("shop", "carol").unwrap();
    let (token, _expires) = admin
        .create_token(&carol, Duration::from_secs(60))
        .await
        .unwrap();
    let identity = entente_client::enroll(hub.addr(), hub.trust(), &token)
        .await
        .unwrap();
    let connected = hub.connect(identity.clone()).await.unwrap();

    let closed = admin
        .revoke(std::slice::from_ref(identity.principal()), &[])
        .await
        .unwrap();
    assert_eq!(closed, 1);
    eventually("carol is disconnected", || connected.is_closed())
        .await
        .unwrap();
    assert_eq!(hub.stats().admin_actions, 2);
    // Revoking again through the kit adds nothing.
    assert_eq!(hub.revoke(identity.principal()).await.unwrap(), 0);
}

#[tokio::test]
async fn without_admin_the_admin_is_refused() {
    let hub = TestHub::builder().without_admin().start().await.unwrap();
    assert!(hub.config().admins.is_empty());
    let admin = hub.connect(hub.admin().unwrap()).await.unwrap();
    let carol = hub.agent_id("shop", "carol").unwrap();
    let e = admin
        .create_token(&carol, Duration::from_secs(60))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Denied, "{e}");
    assert_eq!(hub.stats().admin_refusals, 1);
}

#[tokio::test]
async fn a_restart_keeps_agents_and_revocations() {
    let hub = TestHub::start().await.unwrap();
    let alice = hub.enroll("shop", "alice").await.unwrap();
    let bob = hub.enroll("shop", "bob").await.unwrap();
    // Not connected: nothing to close.
    assert_eq!(hub.revoke(alice.principal()).await.unwrap(), 0);
    let before = hub.addr();

    let hub = hub.restart().await.unwrap();
    assert_ne!(hub.addr(), before);
    let e = hub.connect(alice.clone()).await.unwrap_err();
    let e = e.downcast::<entente_client::Error>().unwrap();
    assert!(e.to_string().contains("CertificateRevoked"), "{e}");
    // Bob still gets in, and the directory still knows him; revoked Alice it omits.
    let bob_client = hub.connect(bob.clone()).await.unwrap();
    let carol = hub.connect(hub.enroll("shop", "carol").await.unwrap());
    let carol = carol.await.unwrap();
    assert_eq!(
        carol.key_bundle(bob.principal()).await.unwrap().principal(),
        bob.principal()
    );
    assert!(carol.key_bundle(alice.principal()).await.is_err());
    bob_client.close().await;
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn policies_loaded_live_survive_a_restart() {
    let shop = r#"@id("shop-traffic")
        permit (principal in Segment::"shop", action in [Action::"publish", Action::"subscribe"],
                resource in Namespace::"shop");"#;
    let hub = TestHub::builder().policies(shop).start().await.unwrap();
    let alice = hub.enroll("shop", "alice").await.unwrap();
    let client = hub.connect(alice.clone()).await.unwrap();
    client.subscribe("shop.>").await.unwrap();
    client.close().await;

    let lab = r#"@id("lab-traffic")
        permit (principal in Segment::"lab", action == Action::"subscribe",
                resource in Namespace::"lab");"#;
    let epoch = hub.load_policies(lab).await.unwrap();
    assert_eq!(epoch, hub.hub().policy_epoch());
    let e = hub.load_policies("permit (").await.unwrap_err();
    assert!(format!("{e:#}").contains("test.cedar:1:"), "{e:#}");

    // The restarted hub runs the loaded set, not the builder's.
    let hub = hub.restart().await.unwrap();
    assert_eq!(hub.hub().policy_origin(), entente_hub::PolicyOrigin::Stored);
    assert_eq!(hub.hub().policies().sources[0].1, lab);
    let client = hub.connect(alice).await.unwrap();
    let e = client.subscribe("shop.>").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Denied, "{e}");
    let eve = hub.connect(hub.enroll("lab", "eve").await.unwrap());
    eve.await.unwrap().subscribe("lab.>").await.unwrap();
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn hubs_of_one_ca_let_in_each_others_agents() {
    let ca = Arc::new(TestCa::new().unwrap());
    let first = TestHub::builder().ca(ca.clone()).start().await.unwrap();
    let second = TestHub::builder().ca(ca.clone()).start().await.unwrap();
    let alice = first.enroll("shop", "alice").await.unwrap();
    second.connect(alice).await.unwrap();
    assert_eq!(second.stats().connections, 1);
    assert_eq!(first.trust().to_pem(), second.trust().to_pem());
}

#[tokio::test]
async fn an_identity_without_enrollment_gets_in_but_the_directory_does_not_know_it() {
    let hub = TestHub::builder()
        .svid_ttl(Duration::from_secs(120))
        .start()
        .await
        .unwrap();
    let ghost = hub.identity_without_enrollment("shop", "ghost").unwrap();
    let ghost_principal = ghost.principal().clone();
    assert!(ghost.not_after() <= std::time::SystemTime::now() + Duration::from_secs(120));
    hub.connect(ghost).await.unwrap();
    let alice = hub.connect(hub.enroll("shop", "alice").await.unwrap());
    let alice = alice.await.unwrap();
    assert!(alice.key_bundle(&ghost_principal).await.is_err());
    assert_eq!(hub.stats().enrollments, 1);
}

#[tokio::test]
async fn bad_settings_fail_at_start_with_a_reason() {
    let e = TestHub::builder()
        .policies(
            r#"permit (principal in Segment::"shop", action, resource in Namespace::"orders""#,
        )
        .start()
        .await
        .unwrap_err();
    assert!(format!("{e:#}").contains("test.cedar:1:"), "{e:#}");
    let e = TestHub::builder()
        .config(|c| c.queue_capacity = 0)
        .start()
        .await
        .unwrap_err();
    assert!(format!("{e:#}").contains("queue_capacity"), "{e:#}");
    let e = TestHub::builder()
        .config(|c| c.queue_bytes = 0)
        .start()
        .await
        .unwrap_err();
    assert!(format!("{e:#}").contains("queue_bytes"), "{e:#}");
}
