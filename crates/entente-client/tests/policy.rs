//! The SDK and the hub's Cedar policies, against a real hub on 127.0.0.1:0: a subscription a
//! live policy load no longer allows ends with the hub's code and reason; administrators load,
//! show and check policies.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod support;

use entente_client::{ErrorKind, RefusalCode};
use support::{SHOP_POLICIES, TestHub, message, next};

/// Only `orders.eu`: publish and subscribe, nothing wider.
const EU_ONLY: &str = r#"
    @id("shop-eu")
    @cross_segment
    permit (principal in Segment::"shop", action in [Action::"publish", Action::"subscribe"],
            resource == Channel::"orders.eu");
"#;

#[tokio::test]
async fn a_policy_load_ends_a_subscription_it_no_longer_allows_with_denied() {
    let hub = TestHub::start().await;
    let alice = hub.agent("shop", "alice").await;
    let bob = hub.agent("shop", "bob").await;
    let alice_bundle = alice.bundle.clone();
    let bob_wire = bob.bundle.to_wire().clone();
    let alice = hub.connect(alice.identity).await;
    alice.trust_key_bundle(bob_wire).unwrap();
    let mut wide = alice.subscribe("orders.>").await.unwrap();
    let mut eu = alice.subscribe("orders.eu").await.unwrap();
    let bob = hub.connect(bob.identity).await;

    let epoch = hub
        .hub
        .load_policies(vec![("eu.cedar".to_owned(), EU_ONLY.to_owned())])
        .await
        .unwrap();
    assert!(epoch > 1);

    // The wide subscription ends: an error with the hub's code and reason, then nothing.
    let e = match next(&mut wide).await {
        Some(Err(e)) => e,
        other => panic!("expected the end of the subscription, got {other:?}"),
    };
    assert_eq!(e.kind(), ErrorKind::Denied, "{e}");
    assert_eq!(e.refusal_code(), Some(RefusalCode::Denied));
    let reason = e.refusal_reason().unwrap();
    assert!(
        reason.contains("`orders.>` is no longer allowed"),
        "{reason}"
    );
    assert!(reason.contains("no policy permits it"), "{reason}");
    assert!(
        e.to_string()
            .starts_with("the hub ended the subscription to `orders.>` (DENIED)"),
        "{e}"
    );
    assert!(next(&mut wide).await.is_none());
    // Unsubscribing what the hub ended is a no-op.
    wide.unsubscribe().await.unwrap();

    // The narrower one goes on, and so does the session.
    bob.publish_to("orders.eu", "still here", &[alice_bundle])
        .await
        .unwrap();
    assert_eq!(message(&mut eu).await.payload, b"still here");
    let e = alice.subscribe("orders.>").await.unwrap_err();
    assert_eq!(e.refusal_code(), Some(RefusalCode::Denied), "{e}");
    assert_eq!(hub.hub.stats().subscriptions_ended, 1);
}

#[tokio::test]
async fn an_administrator_loads_shows_and_checks_policies() {
    let admin_principal =
        entente_types::Principal::parse(&format!("spiffe://{}/human/admin", support::TD)).unwrap();
    let admins = vec![admin_principal.clone()];
    let hub = TestHub::start_with(Default::default(), move |c| c.admins = admins).await;
    let admin = hub.test_ca().identity(&admin_principal).unwrap();
    let admin = hub.connect(admin).await;

    // Refused: every problem in the details, the running set unchanged.
    let sources = vec![
        ("ok.cedar".to_owned(), EU_ONLY.to_owned()),
        (
            "bad.cedar".to_owned(),
            "permit (principal is Agent, action == Action::\"fly\", resource);\npermit ("
                .to_owned(),
        ),
    ];
    let e = admin.load_policies(&sources).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(!e.details().is_empty(), "{e}");
    assert!(
        e.details().iter().all(|d| d.starts_with("bad.cedar:")),
        "{:?}",
        e.details()
    );
    assert_eq!(hub.hub.policy_epoch(), 1);

    let (epoch, count) = admin
        .load_policies(&[("eu.cedar".to_owned(), EU_ONLY.to_owned())])
        .await
        .unwrap();
    // The base policies (two) and the loaded one.
    assert_eq!((epoch, count), (2, 3));
    let shown = admin.policies().await.unwrap();
    assert_eq!(shown.epoch, 2);
    assert_eq!(shown.sources[1].name, "eu.cedar");
    assert_eq!(shown.policies[2].id, "shop-eu");
    assert!(shown.policies[2].cross_segment);

    let alice = hub.test_ca().principal("shop", "alice").unwrap();
    let yes = admin
        .check_policy(&alice, "subscribe", "channel", "orders.eu")
        .await
        .unwrap();
    assert!(yes.allowed && yes.cross_segment);
    assert_eq!(yes.policies, ["shop-eu"]);
    let no = admin
        .check_policy(&alice, "subscribe", "channel", "orders.>")
        .await
        .unwrap();
    assert!(!no.allowed);
    assert!(
        no.explanation.contains("no policy permits it"),
        "{}",
        no.explanation
    );

    // Back to the usual set; a non-administrator may not.
    admin
        .load_policies(&[("shop.cedar".to_owned(), SHOP_POLICIES.to_owned())])
        .await
        .unwrap();
    let alice = hub.connect(hub.agent("shop", "alice").await.identity).await;
    let e = alice.policies().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Denied, "{e}");
}

/// A publish the directory refuses is refused again at once for a second, without asking
/// the hub (each refusal there counts against the agent's risk), then asked again.
#[tokio::test]
async fn a_directory_refusal_is_kept_a_second() {
    let hub = TestHub::start().await;
    let eve = hub.agent("lab", "eve").await;
    let eve = hub.connect(eve.identity).await;
    let denied = |e: entente_client::Error| {
        assert_eq!(e.kind(), ErrorKind::Denied, "{e}");
    };
    denied(eve.publish("orders.eu", "x").await.unwrap_err());
    let asked = hub.hub.stats().policy_denials;
    for _ in 0..10 {
        denied(eve.publish("orders.eu", "x").await.unwrap_err());
    }
    assert_eq!(hub.hub.stats().policy_denials, asked, "asked the hub again");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    denied(eve.publish("orders.eu", "x").await.unwrap_err());
    assert!(hub.hub.stats().policy_denials > asked);
}
