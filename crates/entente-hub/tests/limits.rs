//! Rate and connection limits of a real hub on 127.0.0.1:0, through the SDK: an agent over
//! its rate is refused whole with `RATE_LIMITED` and a retry-after while other agents go on,
//! nothing refused is delivered and nothing passed is lost; a channel class is shared by
//! every agent; connections beyond an agent's or the hub's limit are refused with a clear
//! error; every limit hit is counted and recorded in the audit log.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::time::{Duration, Instant};

use entente_audit::{Event, Outcome, Record};
use entente_client::{Client, ClientOptions, ErrorKind, Identity, RefusalCode, Subscription};
use entente_hub::{ChannelRate, Rate};
use entente_testkit::{TestHub, raw};
use entente_types::ChannelPattern;
use futures_util::StreamExt as _;
use tempfile::TempDir;

const POLICIES: &str = entente_testkit::SHOP_ORDERS;

async fn start(dir: &TempDir, change: impl FnOnce(&mut entente_hub::HubConfig)) -> TestHub {
    TestHub::builder()
        .policies(POLICIES)
        .audited(&dir.path().join("audit"))
        .config(change)
        .start()
        .await
        .unwrap()
}

async fn records(hub: &TestHub) -> Vec<Record> {
    hub.audit_records().await.unwrap()
}

/// The limit records of the log: (principal, limit, scope, count).
async fn limit_records(hub: &TestHub) -> Vec<(String, String, String, u64)> {
    let text = |t: &entente_audit::Text| t.as_clear().unwrap_or_default().to_owned();
    records(hub)
        .await
        .into_iter()
        .filter_map(|r| match r.event {
            Event::Limit(l) => {
                assert_eq!(r.outcome, Outcome::Denied);
                Some((text(&l.principal), text(&l.limit), text(&l.scope), l.count))
            }
            _ => None,
        })
        .collect()
}

/// Reads what `subscription` has until it has been quiet for a moment.
async fn drain(subscription: &mut Subscription) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    while let Ok(Some(message)) =
        tokio::time::timeout(Duration::from_millis(500), subscription.next()).await
    {
        got.push(message.unwrap().payload);
    }
    got
}

#[tokio::test]
async fn an_agent_over_its_rate_is_refused_with_a_retry_after_and_others_go_on() {
    let dir = TempDir::new().unwrap();
    // Bursts of 10, then one message a second.
    let hub = start(&dir, |c| {
        c.rate_limits.agent_messages = Some(Rate {
            per_second: 1,
            burst: 10,
        });
    })
    .await;
    let alice = hub.connect_agent("shop", "alice").await.unwrap();
    let bob = hub.connect_agent("shop", "bob").await.unwrap();
    let carol = hub.connect_agent("shop", "carol").await.unwrap();
    let mut orders = carol.subscribe("orders.>").await.unwrap();

    let start = Instant::now();
    let mut passed = Vec::new();
    let refused = loop {
        let payload = format!("alice {}", passed.len());
        match alice.publish("orders.eu", payload.clone()).await {
            Ok(()) => passed.push(payload.into_bytes()),
            Err(e) => break e,
        }
        assert!(passed.len() < 100, "alice was never limited");
    };
    // The burst, and what the rate gave back meanwhile.
    let allowed = 10 + start.elapsed().as_secs() as usize + 1;
    assert!(
        (10..=allowed).contains(&passed.len()),
        "{} passed",
        passed.len()
    );
    assert_eq!(refused.kind(), ErrorKind::Limited, "{refused}");
    assert_eq!(refused.refusal_code(), Some(RefusalCode::RateLimited));
    let retry_after = refused.retry_after().expect("a retry-after");
    assert!(
        retry_after > Duration::ZERO && retry_after <= Duration::from_secs(1),
        "{retry_after:?}"
    );
    assert!(refused.to_string().contains("agent-messages"), "{refused}");

    // Bob has a bucket of his own.
    for i in 0..10 {
        bob.publish("orders.eu", format!("bob {i}")).await.unwrap();
    }
    // Alice passes again once the time she was given is over.
    tokio::time::sleep(retry_after).await;
    alice.publish("orders.eu", "alice again").await.unwrap();

    // Everything that passed arrives, once; nothing refused does.
    let got = drain(&mut orders).await;
    let mut expected = passed.clone();
    expected.extend((0..10).map(|i| format!("bob {i}").into_bytes()));
    expected.push(b"alice again".to_vec());
    let (mut got_sorted, mut expected_sorted) = (got.clone(), expected.clone());
    got_sorted.sort();
    expected_sorted.sort();
    assert_eq!(got_sorted, expected_sorted);

    assert!(hub.stats().rate_limited >= 1);
    let limits = limit_records(&hub).await;
    let alice_id = alice.principal().to_string();
    let recorded: u64 = limits
        .iter()
        .filter(|(p, l, s, _)| *p == alice_id && l == "agent-messages" && s.is_empty())
        .map(|(.., count)| count)
        .sum();
    assert!(recorded >= 1, "{limits:?}");
    assert!(limits.iter().all(|(p, ..)| *p == alice_id), "{limits:?}");
}

#[tokio::test]
async fn an_agents_calls_are_limited_with_a_retry_after_and_every_refusal_is_recorded() {
    let dir = TempDir::new().unwrap();
    // Bursts of 3 calls, then one a second.
    let hub = start(&dir, |c| {
        c.rate_limits.agent_calls = Some(Rate {
            per_second: 1,
            burst: 3,
        });
    })
    .await;
    let admin = hub.connect(hub.admin().unwrap()).await.unwrap();
    let alice = hub.connect_agent("shop", "alice").await.unwrap();
    let bob = hub.connect_agent("shop", "bob").await.unwrap();

    let start = Instant::now();
    let mut passed = 0;
    let refused = loop {
        match admin.policies().await {
            Ok(_) => passed += 1,
            Err(e) => break e,
        }
        assert!(passed < 100, "the calls were never limited");
    };
    let allowed = 3 + start.elapsed().as_secs() as usize + 1;
    assert!((3..=allowed).contains(&passed), "{passed} passed");
    assert_eq!(refused.kind(), ErrorKind::Limited, "{refused}");
    assert!(refused.to_string().contains("agent-calls"), "{refused}");
    let retry_after = refused.retry_after().expect("a retry-after");
    assert!(
        retry_after > Duration::ZERO && retry_after <= Duration::from_secs(1),
        "{retry_after:?}"
    );
    // Four more refusals, at once: recorded with the first, not lost. (The bucket gives one
    // back a second: on a slow machine a call may pass meanwhile, no more than that allows.)
    let mut refused = 1;
    while refused < 5 {
        match admin.policies().await {
            Ok(_) => passed += 1,
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Limited, "{e}");
                refused += 1;
            }
        }
        let allowed = 3 + start.elapsed().as_secs() as usize + 1;
        assert!(passed <= allowed, "{passed} passed");
    }
    // Another agent's calls are its own.
    alice.key_bundle(bob.principal()).await.unwrap();
    tokio::time::sleep(retry_after).await;
    admin.policies().await.unwrap();

    assert!(hub.stats().rate_limited >= refused);
    let admin_id = admin.principal().to_string();
    let deadline = Instant::now() + entente_testkit::WAIT;
    loop {
        let limits = limit_records(&hub).await;
        let recorded: u64 = limits
            .iter()
            .filter(|(p, l, s, _)| *p == admin_id && l == "agent-calls" && s.is_empty())
            .map(|(.., count)| count)
            .sum();
        assert!(limits.iter().all(|(p, ..)| *p == admin_id), "{limits:?}");
        if recorded == refused {
            // The first at once, the rest together: a record a second at most since the
            // first refusal.
            assert_eq!(limits[0].3, 1, "{limits:?}");
            let most = 1 + start.elapsed().as_secs() as usize;
            assert!(
                (2..=most).contains(&limits.len()),
                "{} records within {:?}: {limits:?}",
                limits.len(),
                start.elapsed()
            );
            break;
        }
        assert!(
            recorded < refused && Instant::now() < deadline,
            "{limits:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Refusals a run left unrecorded when the hub stops are recorded as it stops.
#[tokio::test]
async fn refused_calls_left_unrecorded_are_recorded_at_shutdown() {
    let dir = TempDir::new().unwrap();
    let hub = start(&dir, |c| {
        c.rate_limits.agent_calls = Some(Rate {
            per_second: 1,
            burst: 1,
        });
    })
    .await;
    let admin = hub.connect(hub.admin().unwrap()).await.unwrap();
    let admin_id = admin.principal().to_string();
    let start = Instant::now();
    admin.policies().await.unwrap();
    // The first refusal is recorded at once, the next two would wait for the second's end.
    // (The bucket gives one back a second: on a slow machine a call may pass meanwhile, no
    // more than that allows.)
    let (mut passed, mut refused) = (1, 0);
    while refused < 3 {
        match admin.policies().await {
            Ok(_) => passed += 1,
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Limited, "{e}");
                refused += 1;
            }
        }
        let allowed = 1 + start.elapsed().as_secs() + 1;
        assert!(passed <= allowed, "{passed} passed");
    }
    drop(admin);
    let hub = hub.restart().await.unwrap();
    let recorded: u64 = limit_records(&hub)
        .await
        .iter()
        .filter(|(p, l, ..)| *p == admin_id && l == "agent-calls")
        .map(|(.., count)| count)
        .sum();
    assert_eq!(recorded, refused);
}

/// A hub whose channel class `orders.bulk.>` takes 1 message a second, 5 at once.
async fn start_with_bulk_class(dir: &TempDir) -> TestHub {
    start(dir, |c| {
        c.rate_limits.channels = vec![ChannelRate {
            pattern: ChannelPattern::parse("orders.bulk.>").unwrap(),
            rate: Rate {
                per_second: 1,
                burst: 5,
            },
        }];
    })
    .await
}

#[tokio::test]
async fn a_channel_class_is_shared_by_every_agent_and_other_channels_are_free() {
    let dir = TempDir::new().unwrap();
    let hub = start_with_bulk_class(&dir).await;
    let alice = hub.connect_agent("shop", "alice").await.unwrap();
    let bob = hub.connect_agent("shop", "bob").await.unwrap();
    let start = Instant::now();
    let mut sent = 0;
    let refused = loop {
        match alice.publish("orders.bulk.eu", "bulk").await {
            Ok(()) => sent += 1,
            Err(e) => break e,
        }
        assert!(sent < 50, "the class never limited");
    };
    assert!(sent >= 5, "{sent}");
    assert_eq!(refused.kind(), ErrorKind::Limited, "{refused}");
    assert!(refused.to_string().contains("`orders.bulk.>`"), "{refused}");
    // Bob shares the class's bucket: refused too, having had at most what it gave back
    // meanwhile (a bucket of his own would have let his first 5 pass).
    let shared = loop {
        match bob.publish("orders.bulk.us", "bulk").await {
            Ok(()) => sent += 1,
            Err(e) => break e,
        }
        assert!(sent < 50, "the class never limited bob");
    };
    assert_eq!(shared.refusal_code(), Some(RefusalCode::RateLimited));
    let allowed = 5 + start.elapsed().as_secs() as usize + 1;
    assert!(sent <= allowed, "{sent} passed");
    // Other channels are not in the class.
    for _ in 0..20 {
        alice.publish("orders.eu", "plain").await.unwrap();
    }
    let limits = limit_records(&hub).await;
    assert!(
        limits
            .iter()
            .any(|(_, l, s, _)| l == "channel-messages" && s == "orders.bulk.>"),
        "{limits:?}"
    );
}

/// A class's bucket is shared by its publishers: one that may not publish there is denied,
/// and takes nothing from it.
#[tokio::test]
async fn a_publisher_denied_a_channel_takes_nothing_from_its_class() {
    let dir = TempDir::new().unwrap();
    let hub = start_with_bulk_class(&dir).await;
    let eve = hub.connect_agent("lab", "eve").await.unwrap();
    for _ in 0..10 {
        let denied = eve
            .publish_to("orders.bulk.eu", "junk", &[])
            .await
            .unwrap_err();
        assert_eq!(denied.kind(), ErrorKind::Denied, "{denied}");
    }
    let alice = hub.connect_agent("shop", "alice").await.unwrap();
    for _ in 0..5 {
        alice.publish("orders.bulk.eu", "bulk").await.unwrap();
    }
}

/// Connects `identity` through the SDK, with the SDK's error.
async fn connect(hub: &TestHub, identity: &Identity) -> Result<Client, entente_client::Error> {
    Client::connect(identity.clone(), hub.addr(), ClientOptions::new()).await
}

#[tokio::test]
async fn connections_beyond_an_agents_or_the_hubs_limit_are_refused_clearly() {
    let dir = TempDir::new().unwrap();
    let hub = start(&dir, |c| {
        c.max_connections_per_agent = 2;
        c.max_connections = 3;
    })
    .await;
    let alice = hub.enroll("shop", "alice").await.unwrap();
    let first = hub.connect(alice.clone()).await.unwrap();
    let _second = hub.connect(alice.clone()).await.unwrap();
    let third = connect(&hub, &alice).await.unwrap_err();
    assert_eq!(third.kind(), ErrorKind::Limited, "{third}");
    assert!(
        third.to_string().contains("already has 2 connections"),
        "{third}"
    );
    // Two more at once: the first refusal was recorded at once, these wait for the run's
    // next record, together.
    for _ in 0..2 {
        let again = connect(&hub, &alice).await.unwrap_err();
        assert_eq!(again.kind(), ErrorKind::Limited, "{again}");
    }
    // The third connection of the hub is bob's; carol's would be a fourth.
    let _bob = hub.connect_agent("shop", "bob").await.unwrap();
    let carol = hub.enroll("shop", "carol").await.unwrap();
    let refused = connect(&hub, &carol).await.unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Limited, "{refused}");
    assert!(
        refused.to_string().contains("serves 3 connections"),
        "{refused}"
    );
    assert_eq!(hub.stats().connection_limit_hits, 4);

    // A closed connection makes room again.
    first.close().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match connect(&hub, &carol).await {
            Ok(_) => break,
            Err(e) if e.kind() == ErrorKind::Limited && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }

    // Alice's three refusals in two records (the run's first, then the rest within a
    // second), carol's one.
    let deadline = Instant::now() + Duration::from_secs(10);
    let limits = loop {
        let limits = limit_records(&hub).await;
        let counts = |name: &str, who: &str| -> Vec<u64> {
            limits
                .iter()
                .filter(|(p, l, ..)| l == name && p.ends_with(who))
                .map(|(.., n)| *n)
                .collect()
        };
        let alice = counts("connections-per-agent", "/alice");
        if alice.iter().sum::<u64>() == 3 {
            assert_eq!(alice, [1, 2], "{limits:?}");
            // (Carol may have been refused again while the closed connection went.)
            assert_eq!(
                counts("connections", "/carol").first(),
                Some(&1),
                "{limits:?}"
            );
            break limits;
        }
        assert!(Instant::now() < deadline, "{limits:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!limits.is_empty());
}

#[tokio::test]
async fn an_idle_connection_is_closed_and_one_with_a_session_is_not() {
    // Long enough that a connection just opened is not cut before its first request.
    const IDLE: Duration = Duration::from_millis(1500);
    let dir = TempDir::new().unwrap();
    let hub = start(&dir, |c| c.idle_timeout = IDLE).await;
    // The SDK opens its session as it connects: never idle.
    let alice = hub.connect_agent("shop", "alice").await.unwrap();
    // A raw connection that opens nothing.
    let bob = hub.enroll("shop", "bob").await.unwrap();
    let config = raw::client_config(&bob, hub.trust()).unwrap();
    let idle = raw::Client::connect(hub.addr(), config, &hub.server_name())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while hub.stats().idle_disconnects == 0 {
        assert!(Instant::now() < deadline, "the idle connection was kept");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(idle.session().await.is_err());
    // Alice's connection, as old, outlives two more idle timeouts.
    tokio::time::sleep(2 * IDLE + IDLE / 2).await;
    assert_eq!(hub.stats().idle_disconnects, 1);
    // (The publish's directory lookup opens a calls connection of its own, which may go idle
    // in turn: counted before it.)
    alice.publish("orders.eu", "still here").await.unwrap();
}

#[tokio::test]
async fn a_permits_rate_caps_what_it_allows_per_agent_and_survives_a_reload() {
    let dir = TempDir::new().unwrap();
    // Both permits allow publishing on `orders.eu`; the rated one caps it (a rate only ever
    // restricts). Subscriptions to `orders.>` are rated too.
    let policies = format!(
        r#"{POLICIES}
        @id("orders-eu-capped")
        @rate("1/min") @burst("5")
        @cross_segment
        permit (principal in Segment::"shop", action == Action::"publish",
                resource == Channel::"orders.eu");
        @id("orders-subscribe-capped")
        @rate("1/h") @burst("2")
        @cross_segment
        permit (principal in Segment::"shop", action == Action::"subscribe",
                resource == Channel::"orders.>");
        "#
    );
    let hub = TestHub::builder()
        .policies(&policies)
        .audited(&dir.path().join("audit"))
        .start()
        .await
        .unwrap();
    let alice = hub.connect_agent("shop", "alice").await.unwrap();
    let bob = hub.connect_agent("shop", "bob").await.unwrap();
    let carol = hub.connect_agent("shop", "carol").await.unwrap();
    let mut orders = carol.subscribe("orders.>").await.unwrap();

    for i in 0..5 {
        alice
            .publish("orders.eu", format!("alice {i}"))
            .await
            .unwrap();
    }
    let refused = alice.publish("orders.eu", "alice 5").await.unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Limited, "{refused}");
    assert_eq!(refused.refusal_code(), Some(RefusalCode::RateLimited));
    let retry_after = refused.retry_after().expect("a retry-after");
    assert!(
        retry_after > Duration::from_secs(50) && retry_after <= Duration::from_secs(60),
        "{retry_after:?}"
    );
    let said = refused.to_string();
    assert!(
        said.contains("policy-rate") && said.contains("`orders-eu-capped` (1/min, bursts of 5)"),
        "{said}"
    );
    // Another channel the rated permit does not cover is free; another agent has its own
    // bucket.
    alice.publish("orders.us", "alice us").await.unwrap();
    for i in 0..5 {
        bob.publish("orders.eu", format!("bob {i}")).await.unwrap();
    }

    // Loading the same rate again keeps the bucket; taking the rate away frees alice.
    hub.hub()
        .load_policies(vec![("p.cedar".to_owned(), policies.clone())])
        .await
        .unwrap();
    let again = alice.publish("orders.eu", "alice 6").await.unwrap_err();
    assert_eq!(again.refusal_code(), Some(RefusalCode::RateLimited));
    hub.hub()
        .load_policies(vec![("p.cedar".to_owned(), POLICIES.to_owned())])
        .await
        .unwrap();
    alice.publish("orders.eu", "alice 7").await.unwrap();

    // The rate came back with a full bucket (it was gone meanwhile): carol's two
    // subscriptions pass, a third is refused, another agent's is not.
    hub.hub()
        .load_policies(vec![("p.cedar".to_owned(), policies.clone())])
        .await
        .unwrap();
    let _second = carol.subscribe("orders.>").await.unwrap();
    let _third = carol.subscribe("orders.>").await.unwrap();
    let refused = carol.subscribe("orders.>").await.unwrap_err();
    assert_eq!(
        refused.refusal_code(),
        Some(RefusalCode::RateLimited),
        "{refused}"
    );
    assert!(
        refused.to_string().contains("orders-subscribe-capped"),
        "{refused}"
    );
    bob.subscribe("orders.>").await.unwrap();

    // What passed arrived, once; what was refused did not.
    let mut got: Vec<String> = drain(&mut orders)
        .await
        .into_iter()
        .map(|p| String::from_utf8(p).unwrap())
        .collect();
    got.sort();
    let mut expected: Vec<String> = (0..5)
        .map(|i| format!("alice {i}"))
        .chain((0..5).map(|i| format!("bob {i}")))
        .chain(["alice us".to_owned(), "alice 7".to_owned()])
        .collect();
    expected.sort();
    assert_eq!(got, expected);

    // Every hit is recorded (a run of them at the latest when the session ends), under the
    // permit's ID, and nothing else was limited.
    assert_eq!(hub.stats().rate_limited, 3);
    let (alice_id, carol_id) = (alice.principal().to_string(), carol.principal().to_string());
    alice.close().await;
    carol.close().await;
    let expected = vec![
        (alice_id, "orders-eu-capped".to_owned(), 2),
        (carol_id, "orders-subscribe-capped".to_owned(), 1),
    ];
    let deadline = Instant::now() + entente_testkit::WAIT;
    loop {
        let mut recorded: Vec<(String, String, u64)> = Vec::new();
        for (who, limit, scope, n) in limit_records(&hub).await {
            assert_eq!(limit, "policy-rate");
            match recorded
                .iter_mut()
                .find(|(p, s, _)| *p == who && *s == scope)
            {
                Some((.., total)) => *total += n,
                None => recorded.push((who, scope, n)),
            }
        }
        recorded.sort();
        if recorded == expected {
            break;
        }
        assert!(Instant::now() < deadline, "{recorded:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
