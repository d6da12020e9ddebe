//! The audit log of a real hub on 127.0.0.1:0: decisions, enrollments, administrative acts
//! and routed batches are recorded, the export verifies offline, the log carries on across a
//! restart, a tampered log stops the hub at start, a hub whose log fails refuses what it
//! can't record, and group commits are spaced by the commit interval (one out of bounds is
//! refused).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::path::PathBuf;
use std::time::Duration;

use entente_audit::{Event, Outcome, Record, Verifier, VerifierKey, verify_export};
use entente_client::{Client, ErrorKind, RefusalCode};
use entente_hub::AuditConfig;
use entente_testkit::TestHub;
use futures_util::StreamExt as _;
use tempfile::TempDir;

const POLICIES: &str = entente_testkit::SHOP_ORDERS;

async fn start(dir: &TempDir) -> TestHub {
    start_with(dir, POLICIES, |a| {
        a.seal_interval = Duration::from_millis(50)
    })
    .await
}

/// A hub running `policies`, its audit log in `dir`, configured as `audit` changes it.
async fn start_with(
    dir: &TempDir,
    policies: &str,
    audit: impl FnOnce(&mut AuditConfig) + Send + 'static,
) -> TestHub {
    let mut config = AuditConfig::new(audit_dir(dir));
    audit(&mut config);
    TestHub::builder()
        .policies(policies)
        .config(move |c| c.audit = Some(config))
        .start()
        .await
        .unwrap()
}

fn audit_dir(dir: &TempDir) -> PathBuf {
    dir.path().join("audit")
}

async fn records(hub: &TestHub) -> Vec<Record> {
    let (records, count) = hub.hub().audit_records(0, 100_000).await.unwrap().unwrap();
    assert_eq!(records.len() as u64, count);
    records
}

async fn receive(subscription: &mut entente_client::Subscription) -> Vec<u8> {
    tokio::time::timeout(Duration::from_secs(10), subscription.next())
        .await
        .expect("a message in time")
        .expect("the subscription is open")
        .expect("a verified message")
        .payload
}

/// `alice` subscribes to `orders.eu`, `bob` publishes `n` messages there.
async fn traffic(hub: &TestHub, n: usize) -> (Client, Client) {
    let alice = hub.connect_agent("shop", "alice").await.unwrap();
    let mut orders = alice.subscribe("orders.eu").await.unwrap();
    let bob = hub.connect_agent("shop", "bob").await.unwrap();
    for i in 0..n {
        bob.publish("orders.eu", format!("order {i}"))
            .await
            .unwrap();
    }
    for i in 0..n {
        assert_eq!(
            receive(&mut orders).await,
            format!("order {i}").into_bytes()
        );
    }
    (alice, bob)
}

fn decisions<'r>(
    records: &'r [Record],
    principal: &str,
    action: &str,
) -> impl Iterator<Item = (&'r entente_audit::Decision, Outcome)> {
    let (principal, action) = (principal.to_owned(), action.to_owned());
    records.iter().filter_map(move |r| match &r.event {
        Event::Decision(d)
            if d.principal.as_clear() == Some(principal.as_str())
                && d.action.as_clear() == Some(action.as_str()) =>
        {
            Some((d, r.outcome))
        }
        _ => None,
    })
}

/// A session's decision is recorded once when the engine makes it (not again as it is
/// judged), and a cached denial once more each time it refuses.
#[tokio::test]
async fn a_sessions_decision_is_recorded_once() {
    let dir = TempDir::new().unwrap();
    let hub = start_with(&dir, POLICIES, |_| {}).await;
    let alice = hub.connect_agent("shop", "alice").await.unwrap();
    let _orders = alice.subscribe("orders.eu").await.unwrap();
    for _ in 0..2 {
        let denied = alice.subscribe("payments.eu").await.unwrap_err();
        assert_eq!(denied.kind(), ErrorKind::Denied);
    }
    let alice_id = hub.agent_id("shop", "alice").unwrap().to_string();
    let records = records(&hub).await;
    let on = |channel: &str| {
        decisions(&records, &alice_id, "subscribe")
            .filter(|(d, _)| d.resource.as_clear() == Some(&*format!("Channel::\"{channel}\"")))
            .count()
    };
    assert_eq!(on("orders.eu"), 1);
    // Decided once, refused twice: the decision, then the cached denial's refusal.
    assert_eq!(on("payments.eu"), 2);
}

/// What a wildcard subscription asks of each channel it carries is whether a forbid covers it:
/// with no forbid that may apply to subscribing, nothing is decided, nor recorded, channel by
/// channel (a publisher cycling through new channels can't make every wildcard subscriber's
/// session decide and record each); with one, each new channel is decided once and recorded.
#[tokio::test]
async fn wildcard_deliveries_are_decided_channel_by_channel_only_when_a_forbid_may_apply() {
    const CHANNELS: usize = 5;
    let forbid = r#"
        @id("no-payroll")
        forbid (principal, action == Action::"subscribe", resource in Namespace::"payroll");"#;
    for (policies, per_channel) in [
        (POLICIES.to_owned(), 0),
        (format!("{POLICIES}{forbid}"), CHANNELS),
    ] {
        let dir = TempDir::new().unwrap();
        let hub = start_with(&dir, &policies, |_| {}).await;
        let alice = hub.connect_agent("shop", "alice").await.unwrap();
        let mut orders = alice.subscribe("orders.>").await.unwrap();
        let bob = hub.connect_agent("shop", "bob").await.unwrap();
        for round in 0..2 {
            for i in 0..CHANNELS {
                bob.publish(&format!("orders.c{i}"), format!("order {round} {i}"))
                    .await
                    .unwrap();
                assert_eq!(
                    receive(&mut orders).await,
                    format!("order {round} {i}").into_bytes()
                );
            }
        }
        let alice_id = hub.agent_id("shop", "alice").unwrap().to_string();
        let records = records(&hub).await;
        let subscribes: Vec<_> = decisions(&records, &alice_id, "subscribe").collect();
        let channels = subscribes
            .iter()
            .filter(|(d, _)| {
                d.resource
                    .as_clear()
                    .is_some_and(|r| r.contains("orders.c"))
            })
            .count();
        assert_eq!(channels, per_channel, "{policies}: {subscribes:#?}");
        assert!(
            subscribes.iter().any(|(d, _)| d
                .resource
                .as_clear()
                .is_some_and(|r| r.contains("orders.>"))),
            "{subscribes:#?}"
        );
    }
}

#[tokio::test]
async fn decisions_enrollments_and_routed_batches_are_recorded_and_the_export_verifies() {
    let dir = TempDir::new().unwrap();
    let hub = start(&dir).await;
    let (_alice, bob) = traffic(&hub, 3).await;
    let alice_id = hub.agent_id("shop", "alice").unwrap().to_string();
    let bob_id = hub.agent_id("shop", "bob").unwrap().to_string();

    // A denial, answered only once recorded.
    let denied = bob.publish("payments.eu", "no").await.unwrap_err();
    assert_eq!(denied.kind(), ErrorKind::Denied);

    let records = records(&hub).await;
    // Each agent's enrollment, with the certificate it got.
    for id in [&alice_id, &bob_id] {
        assert!(
            records.iter().any(|r| matches!(&r.event,
                Event::Enrollment(e) if e.principal.as_clear() == Some(id.as_str())
                    && e.segment.as_clear() == Some("shop")
                    && e.not_after_ms > 0)
                && r.outcome == Outcome::Success
                && r.actor == *id),
            "no enrollment record of {id}"
        );
    }
    // The subscription's decision (the session's, and the directory's when it listed alice
    // as a member to bob).
    let subscribes: Vec<_> = decisions(&records, &alice_id, "subscribe").collect();
    assert!(!subscribes.is_empty());
    for (subscribe, outcome) in subscribes {
        assert!(subscribe.allowed && outcome == Outcome::Success);
        assert_eq!(
            subscribe.resource.as_clear(),
            Some("Channel::\"orders.eu\"")
        );
        assert!(subscribe.policies.iter().any(|p| p == "shop-orders"));
        assert!(subscribe.policy_epoch >= 1);
    }
    // Bob's publish decided (by his session, then cached, and by the directory when it
    // listed the members to seal to), and its denial on `payments.eu`.
    let publishes: Vec<_> = decisions(&records, &bob_id, "publish").collect();
    assert!(
        publishes
            .iter()
            .any(|(d, _)| d.allowed && d.resource.as_clear() == Some("Channel::\"orders.eu\"")),
        "{publishes:?}"
    );
    assert!(publishes.iter().any(|(d, outcome)| {
        !d.allowed
            && *outcome == Outcome::Denied
            && d.resource.as_clear() == Some("Channel::\"payments.eu\"")
            && d.reason
                .as_clear()
                .unwrap()
                .contains("no policy permits it")
    }));
    // Every routed message is in a batch record of its sender and channel.
    let routed: u32 = records
        .iter()
        .filter_map(|r| match &r.event {
            Event::DeliveredBatch(b)
                if b.sender.as_clear() == Some(bob_id.as_str())
                    && b.channel.as_clear() == Some("orders.eu") =>
            {
                assert_eq!(r.actor, bob_id);
                assert!(b.bytes > 0);
                Some(b.count)
            }
            _ => None,
        })
        .sum();
    assert_eq!(routed, 3);
    assert!(hub.stats().audit_records >= records.len() as u64);

    // The export verifies offline under the hub's checkpoint key, every record in it.
    let export = dir.path().join("audit.export");
    let checkpoint = hub.hub().export_audit(&export).await.unwrap().unwrap();
    let key = VerifierKey::parse(&hub.hub().audit_verifier_key().unwrap()).unwrap();
    assert_eq!(key.name(), format!("{}/audit", hub.trust_domain()));
    let verified = verify_export(&export, &Verifier::new(key)).unwrap();
    assert!(verified.record_count() >= records.len() as u64);
    assert_eq!(verified.checkpoint().unwrap().as_str(), checkpoint);
    for record in &records {
        assert!(verified.find_record(record).unwrap().is_some());
    }
}

#[tokio::test]
async fn the_log_goes_on_across_a_restart_and_a_tampered_log_stops_the_hub() {
    let dir = TempDir::new().unwrap();
    let hub = start(&dir).await;
    drop(traffic(&hub, 2).await);
    let before = records(&hub).await;
    let hub = hub.restart().await.unwrap();
    let bob = hub.connect_agent("shop", "carol").await.unwrap();
    drop(bob);
    let after = records(&hub).await;
    assert!(after.len() > before.len());
    assert_eq!(&after[..before.len()], &before[..]);
    let (ca, config, store) = stop_keeping_state(hub).await;

    // One byte of one record changed: the hub refuses to start, naming where.
    let records_file = audit_dir(&dir).join("records");
    let mut bytes = std::fs::read(&records_file).unwrap();
    bytes[20] ^= 0x01;
    std::fs::write(&records_file, bytes).unwrap();
    let err = entente_hub::Hub::start(config, ca, store)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("audit log: "), "{err}");
    assert!(err.contains("record 0"), "{err}");
}

/// A log gone (deleted, or its volume not mounted) is not replaced quietly: the hub starts a
/// new one whose first record says the old one is missing.
#[tokio::test]
async fn a_missing_log_is_said_by_the_new_ones_first_record() {
    let dir = TempDir::new().unwrap();
    let hub = start(&dir).await;
    drop(traffic(&hub, 1).await);
    assert!(records(&hub).await.len() > 1);
    let (ca, mut config, store) = stop_keeping_state(hub).await;
    std::fs::remove_dir_all(audit_dir(&dir)).unwrap();
    // However its path is spelled now.
    let spelled = dir.path().join(".").join("audit");
    if let Some(audit) = config.audit.as_mut() {
        audit.dir = spelled;
    }
    let hub = entente_hub::Hub::start(config, ca, store).await.unwrap();
    let (records, _) = hub.audit_records(0, 10).await.unwrap().unwrap();
    let first = records.first().expect("a record");
    assert_eq!(first.outcome, Outcome::Failed);
    match &first.event {
        Event::Admin(a) => assert_eq!(a.operation.as_clear(), Some("audit-log-missing")),
        other => panic!("{other:?}"),
    }
    hub.shutdown().await.unwrap();
}

/// Stops `hub` cleanly, keeping what starts it again (its CA, configuration and store).
async fn stop_keeping_state(
    hub: TestHub,
) -> (
    std::sync::Arc<entente_ca::Ca>,
    entente_hub::HubConfig,
    std::sync::Arc<entente_store::EmbeddedStore>,
) {
    let kept = (
        hub.ca().ca().clone(),
        hub.config().clone(),
        hub.store().clone(),
    );
    hub.shutdown().await.unwrap();
    kept
}

/// A log that ends in an incomplete write is cut at start, and not quietly: the first record
/// after the old ones says what was cut and where its bytes were kept.
#[tokio::test]
async fn a_repaired_log_says_so_in_its_next_record() {
    let dir = TempDir::new().unwrap();
    let hub = start(&dir).await;
    drop(traffic(&hub, 1).await);
    let before = records(&hub).await;
    let (ca, config, store) = stop_keeping_state(hub).await;
    let records_file = audit_dir(&dir).join("records");
    let len = std::fs::metadata(&records_file).unwrap().len();
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&records_file)
        .unwrap();
    std::io::Write::write_all(&mut file, &[0, 0, 1]).unwrap();
    drop(file);

    let hub = entente_hub::Hub::start(config, ca, store).await.unwrap();
    let (after, _) = hub.audit_records(0, 100_000).await.unwrap().unwrap();
    assert_eq!(&after[..before.len()], &before[..]);
    let first = &after[before.len()];
    assert_eq!(first.outcome, Outcome::Failed);
    let Event::Admin(a) = &first.event else {
        panic!("{:?}", first.event)
    };
    assert_eq!(a.operation.as_clear(), Some("audit-log-repaired"));
    let detail = a.detail.as_clear().unwrap();
    assert!(
        detail.contains(&format!("records from offset {len}")),
        "{detail}"
    );
    let kept = audit_dir(&dir).join(format!("records.cut-{len}-0"));
    assert!(detail.contains(&kept.display().to_string()), "{detail}");
    assert_eq!(std::fs::read(&kept).unwrap(), vec![0, 0, 1]);
    hub.shutdown().await.unwrap();
}

/// A clean stop seals every record: records found unsealed at the next start were left by a
/// crash, or added by someone with write access to the directory (a record frame is checked
/// by a hash anyone can compute). They are sealed like the rest, but said first.
#[tokio::test]
async fn records_found_unsealed_at_start_are_recorded_as_such() {
    let dir = TempDir::new().unwrap();
    let hub = start(&dir).await;
    drop(traffic(&hub, 1).await);
    let before = records(&hub).await;
    let (ca, config, store) = stop_keeping_state(hub).await;
    // A well-formed frame appended: the last one again.
    let records_file = audit_dir(&dir).join("records");
    let bytes = std::fs::read(&records_file).unwrap();
    let mut at = 0;
    let mut last = 0..0;
    while at < bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        last = at..at + 4 + len + 8;
        at = last.end;
    }
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&records_file)
        .unwrap();
    std::io::Write::write_all(&mut file, &bytes[last]).unwrap();
    drop(file);

    let hub = entente_hub::Hub::start(config, ca, store).await.unwrap();
    let (after, _) = hub.audit_records(0, 100_000).await.unwrap().unwrap();
    let n = before.len();
    assert_eq!(&after[..n], &before[..]);
    assert_eq!(after[n], before[n - 1], "the added record, sealed now");
    let Event::Admin(a) = &after[n + 1].event else {
        panic!("{:?}", after[n + 1].event)
    };
    assert_eq!(a.operation.as_clear(), Some("audit-log-pending-at-open"));
    let detail = a.detail.as_clear().unwrap();
    assert!(detail.contains(&format!("records {n} to {n}")), "{detail}");
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn group_commits_under_load_are_spaced_by_the_commit_interval() {
    const INTERVAL: Duration = Duration::from_millis(200);
    let dir = TempDir::new().unwrap();
    let hub = start_with(&dir, POLICIES, |a| {
        a.seal_interval = 2 * INTERVAL;
        a.commit_interval = INTERVAL;
    })
    .await;
    let (_alice, bob) = traffic(&hub, 1).await;

    // Each publish is acknowledged once its records are durable, so each of these needs a
    // commit after the previous one's: one commit each, and none sooner than the interval
    // after the one before.
    let publishes = 5;
    let before = hub.stats().audit_commits;
    let started = std::time::Instant::now();
    for i in 0..publishes {
        bob.publish("orders.eu", format!("paced {i}"))
            .await
            .unwrap();
    }
    let elapsed = started.elapsed();
    let commits = hub.stats().audit_commits - before;
    assert!(commits >= publishes, "{commits} commits");
    let most = u64::try_from(elapsed.as_millis() / INTERVAL.as_millis()).unwrap() + 1;
    assert!(
        commits <= most,
        "{commits} commits in {elapsed:?}: at most {most} with {INTERVAL:?} between them"
    );

    // Under that load, records waited for the interval.
    assert!(hub.stats().audit_commits_held > 0, "{:?}", hub.stats());
    // After a quiet spell, a record is committed at once, not held for the interval (a
    // record the hub made by itself meanwhile may have started an interval: tried again).
    let mut tries = 0;
    loop {
        tries += 1;
        tokio::time::sleep(2 * INTERVAL).await;
        let held = hub.stats().audit_commits_held;
        bob.publish("orders.eu", "after a pause").await.unwrap();
        if hub.stats().audit_commits_held == held {
            break;
        }
        assert!(tries < 5, "held after every quiet spell: {:?}", hub.stats());
    }
    let publishes = publishes + tries - 1;

    // Nothing was lost on the way: every one of them is recorded (once sealed).
    let bob_id = bob.principal().as_str().to_owned();
    let mut routed = 0;
    for _ in 0..100 {
        routed = records(&hub)
            .await
            .iter()
            .filter(|r| matches!(&r.event, Event::DeliveredBatch(_)) && r.actor == bob_id)
            .count();
        if routed == 2 + publishes as usize {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(routed, 2 + publishes as usize);

    // A commit interval longer than a second, or than the seal interval, would hold answers
    // or seals too long: refused at start.
    for (commit_interval, seal_interval) in [
        (Duration::from_secs(2), Duration::from_secs(5)),
        (Duration::from_millis(200), Duration::from_millis(100)),
    ] {
        let refused = TestHub::builder()
            .config(|c| {
                c.audit = Some(AuditConfig {
                    commit_interval,
                    seal_interval,
                    ..AuditConfig::new(dir.path().join("other"))
                });
            })
            .start()
            .await
            .expect_err("refused");
        let refused = format!("{refused:#}");
        assert!(refused.contains("commit_interval"), "{refused}");
    }
}

/// A log with nothing sealed yet has no export to name (exports are numbered by their tree
/// size, and 0 asks for a new one): the hub says so, and once a record is sealed it exports.
#[tokio::test]
async fn an_empty_log_is_not_exported_and_says_why() {
    let dir = TempDir::new().unwrap();
    let hub = start(&dir).await;
    let admin = hub.connect(hub.admin().unwrap()).await.unwrap();
    let out = dir.path().join("audit.export");
    let refused = admin.audit_export(&out).await.unwrap_err();
    assert!(
        refused.to_string().contains("nothing to export"),
        "{refused}"
    );
    assert!(!out.exists());
    // The refusal is on the record: the next export holds it.
    let exported = admin.audit_export(&out).await.unwrap();
    assert!(exported.bytes > 0, "{exported:?}");
}

#[tokio::test]
async fn a_hub_whose_log_fails_refuses_what_it_cannot_record() {
    let dir = TempDir::new().unwrap();
    let hub = start(&dir).await;
    let (alice, bob) = traffic(&hub, 1).await;
    let carol = hub.enroll("shop", "carol").await.unwrap();

    // The log's records file disappears under the running hub: the next write fails.
    std::fs::remove_file(audit_dir(&dir).join("records")).unwrap();
    let refused = bob.publish("orders.eu", "unrecorded").await.unwrap_err();
    assert_eq!(
        refused.refusal_code(),
        Some(RefusalCode::Unavailable),
        "{refused}"
    );
    assert!(refused.to_string().contains("audit log"), "{refused}");
    assert_eq!(hub.stats().audit_failures, 1);

    // From then on, nothing that would be recorded is done.
    let refused = bob.publish("orders.eu", "again").await.unwrap_err();
    assert_eq!(
        refused.refusal_code(),
        Some(RefusalCode::Unavailable),
        "{refused}"
    );
    let refused = alice.subscribe("orders.us").await.unwrap_err();
    assert!(refused.to_string().contains("audit log"), "{refused}");
    // A directory lookup (a channel bob has not published on) is not decided either: the
    // hub is unavailable, not denying bob (no denial counted, none held against bob).
    let denials = hub.stats().denials;
    let refused = bob.publish("orders.us", "unlisted").await.unwrap_err();
    assert!(
        refused.to_string().contains("directory lookup")
            && refused.to_string().contains("UNAVAILABLE: the audit log"),
        "{refused}"
    );
    assert_ne!(refused.kind(), ErrorKind::Denied, "{refused}");
    assert_eq!(hub.stats().denials, denials);
    // Nor a lookup by principal, which no policy decides.
    let refused = alice.key_bundle(carol.principal()).await.unwrap_err();
    assert!(refused.to_string().contains("audit log"), "{refused}");
    let admin = hub.connect(hub.admin().unwrap()).await;
    let refused = match admin {
        Ok(admin) => admin
            .create_token(
                &hub.agent_id("shop", "dave").unwrap(),
                Duration::from_secs(60),
            )
            .await
            .unwrap_err()
            .to_string(),
        // Enrollment of the admin itself is refused: the same refusal, one step earlier.
        Err(e) => e.to_string(),
    };
    assert!(refused.contains("audit log"), "{refused}");

    // The hub stops, and says it did not stop cleanly (an exit status for an operator).
    drop((alice, bob));
    let stopped = hub.shutdown().await.unwrap_err();
    let stopped = format!("{stopped:#}");
    assert!(
        stopped.contains("stopped with failures") && stopped.contains("the audit log failed"),
        "{stopped}"
    );
}

#[tokio::test]
async fn administrative_acts_and_revocations_are_recorded_with_their_actor() {
    let dir = TempDir::new().unwrap();
    let hub = start(&dir).await;
    let admin = hub.connect(hub.admin().unwrap()).await.unwrap();
    let admin_id = hub.admin_principal().unwrap().to_string();
    let dave = hub.agent_id("shop", "dave").unwrap();
    let (token, _) = admin
        .create_token(&dave, Duration::from_secs(60))
        .await
        .unwrap();
    entente_client::enroll(hub.addr(), hub.trust(), &token)
        .await
        .unwrap();
    // A refused act is recorded too, with its reason.
    let eve = hub.connect_agent("shop", "eve").await.unwrap();
    let refused = eve
        .create_token(
            &hub.agent_id("shop", "mallory").unwrap(),
            Duration::from_secs(60),
        )
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("denied"), "{refused}");
    let revoked = hub.agent_id("shop", "eve").unwrap();
    hub.revoke(&revoked.clone().into()).await.unwrap();

    let records = records(&hub).await;
    let admin_acts: Vec<_> = records
        .iter()
        .filter_map(|r| match &r.event {
            Event::Admin(a) if a.operation.as_clear() == Some("create-token") => {
                Some((r.actor.as_str(), r.outcome, a))
            }
            _ => None,
        })
        .collect();
    // The token's creation names the token as the enrollment that used it does.
    let used = records
        .iter()
        .find_map(|r| match &r.event {
            Event::Enrollment(e) if e.principal.as_clear() == Some(dave.as_str()) => {
                e.token_id.as_clear().map(str::to_owned)
            }
            _ => None,
        })
        .unwrap();
    assert!(
        admin_acts
            .iter()
            .any(|(actor, outcome, a)| *actor == admin_id
                && *outcome == Outcome::Success
                && a.target.as_clear() == Some(dave.as_str())
                && a.detail.as_clear() == Some(format!("token {used}").as_str())),
        "{admin_acts:?}"
    );
    assert!(
        admin_acts
            .iter()
            .any(|(actor, outcome, a)| *actor == revoked.as_str()
                && *outcome == Outcome::Denied
                && a.detail.as_clear().unwrap().contains("denied"))
    );
    assert!(records.iter().any(|r| matches!(&r.event,
        Event::Revocation(v) if v.principal.as_clear() == Some(revoked.as_str()) && v.list_version >= 1)
        && r.actor == "hub"));
}

/// A record proof as the hub's `Proof` RPC sends it, rebuilt and checked against the
/// checkpoint it came with.
fn check_proof(
    proof: &entente_wire::AuditProofResponse,
    index: u64,
    verifier: &Verifier,
) -> entente_audit::Checkpoint {
    use entente_audit::{Checkpoint, Hash, InclusionProof, Leaf, RecordProof};
    let checkpoint = Checkpoint::parse(&proof.checkpoint, verifier).unwrap();
    let leaf = Leaf::from_bytes(&proof.leaf).unwrap();
    let hashes = |path: &[Vec<u8>]| -> Vec<Hash> {
        path.iter()
            .map(|h| Hash(h.as_slice().try_into().unwrap()))
            .collect()
    };
    let record = Record::from_bytes(&proof.record).unwrap();
    let rebuilt = RecordProof {
        index,
        leaf_index: proof.leaf_index,
        record_path: InclusionProof {
            index: index - leaf.first_record,
            size: u64::from(leaf.count),
            path: hashes(&proof.record_path),
        },
        log_path: InclusionProof {
            index: proof.leaf_index,
            size: checkpoint.size(),
            path: hashes(&proof.log_path),
        },
        leaf,
    };
    rebuilt
        .verify(&record.hash().unwrap(), &checkpoint)
        .unwrap();
    checkpoint
}

#[tokio::test]
async fn administrators_read_export_and_prove_the_log_over_rpc_and_others_may_not() {
    let dir = TempDir::new().unwrap();
    let hub = start(&dir).await;
    let (_alice, bob) = traffic(&hub, 2).await;
    let admin = hub.connect(hub.admin().unwrap()).await.unwrap();

    // Records, page by page, as the hub holds them.
    let first = admin.audit_records(0, 3).await.unwrap();
    assert_eq!(first.from, 0);
    assert_eq!(first.records.len(), 3);
    assert!(first.total >= 3);
    let key = VerifierKey::parse(&first.verifier_key).unwrap();
    assert_eq!(first.verifier_key, hub.hub().audit_verifier_key().unwrap());
    let verifier = Verifier::new(key);
    let local = records(&hub).await;
    for (i, bytes) in first.records.iter().enumerate() {
        assert_eq!(Record::from_bytes(bytes).unwrap(), local[i]);
    }
    let past_end = admin.audit_records(first.total + 10, 5).await.unwrap();
    assert!(past_end.records.is_empty());

    // A proof of the first record, then, after more traffic, of the newest one together
    // with the log's consistency with the first checkpoint.
    let proof = admin.audit_proof(0, 0).await.unwrap();
    let old = check_proof(&proof, 0, &verifier);
    assert!(proof.consistency.is_empty());
    bob.publish("orders.eu", "more").await.unwrap();
    let newest = admin.audit_records(0, 1).await.unwrap().total - 1;
    let proof = admin.audit_proof(newest, old.size()).await.unwrap();
    let new = check_proof(&proof, newest, &verifier);
    assert!(new.size() > old.size());
    let consistency = entente_audit::ConsistencyProof {
        old: old.size(),
        new: new.size(),
        path: proof
            .consistency
            .iter()
            .map(|h| entente_audit::Hash(h.as_slice().try_into().unwrap()))
            .collect(),
    };
    entente_audit::verify_consistency(&old, &new, &consistency).unwrap();
    let bad = admin.audit_proof(newest + 1_000, 0).await.unwrap_err();
    assert_eq!(bad.kind(), ErrorKind::InvalidInput, "{bad}");

    // An export over the network verifies offline, and is the hub's.
    let out = dir.path().join("over-rpc.export");
    let exported = admin.audit_export(&out).await.unwrap();
    assert_eq!(std::fs::metadata(&out).unwrap().len(), exported.bytes);
    let verified = verify_export(&out, &verifier).unwrap();
    assert_eq!(verified.checkpoint().unwrap().as_str(), exported.checkpoint);
    assert!(verified.record_count() > newest);
    // A copy of the whole log leaving is on the record, with who took it (a listed
    // administrator, whom no policy decision records).
    let admin_id = admin.principal().to_string();
    let exports = records(&hub)
        .await
        .iter()
        .filter(|r| {
            r.actor == admin_id
                && matches!(&r.event, Event::Admin(a)
                    if a.operation.as_clear() == Some("audit-export"))
        })
        .count();
    assert_eq!(exports, 1);

    // Only `data`, `audit` and `intermediate` rotate; anything else is refused, and agents
    // may not.
    let bad = admin.keys(Some("root")).await.unwrap_err();
    assert_eq!(bad.kind(), ErrorKind::InvalidInput, "{bad}");
    let denied = bob.keys(None).await.unwrap_err();
    assert_eq!(denied.kind(), ErrorKind::Denied, "{denied}");

    // Agents are no administrators.
    let denied = bob.audit_records(0, 10).await.unwrap_err();
    assert_eq!(denied.kind(), ErrorKind::Denied, "{denied}");
    let denied = bob.audit_export(dir.path().join("nope")).await.unwrap_err();
    assert_eq!(denied.kind(), ErrorKind::Denied, "{denied}");
    assert!(!dir.path().join("nope").exists());
    assert!(!dir.path().join("nope.part").exists());
}

#[tokio::test]
async fn data_keys_rotate_on_time_and_on_demand_and_each_rotation_is_recorded() {
    let dir = TempDir::new().unwrap();
    let audit = audit_dir(&dir);
    let hub = TestHub::builder()
        .config(move |c| {
            c.audit = Some(AuditConfig::new(audit));
            c.data_key_rotation = Duration::from_secs(1);
        })
        .start()
        .await
        .unwrap();
    let keys = hub.hub().data_keys();
    let first = keys.current_version();
    let sealed = keys.seal(b"context", b"kept at rest").unwrap();
    assert_eq!(keys.open(b"context", &sealed).unwrap(), b"kept at rest");

    // On demand: a new version encrypts from now on.
    let manual = hub.hub().rotate_data_key().await.unwrap();
    assert_eq!(manual, first + 1);
    assert_eq!(
        entente_hub::datakeys::DataKeys::version_of(&keys.seal(b"c", b"v").unwrap()),
        Some(manual)
    );

    // On time: within a couple of seconds another one, and the older ones (nothing kept at
    // rest needs them) are retired. The loop makes the new version, then retires: both are
    // waited for, and the status is the one seen with both done (the next rotation, a second
    // later, may be under way by the time of another look).
    let deadline = tokio::time::Instant::now() + entente_testkit::WAIT;
    let status = loop {
        let version = keys.current_version();
        let status = keys.status();
        if version > manual && status.len() == 1 {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no rotation on time with the older versions retired: version {version}, {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status[0].current, "{status:?}");
    assert!(status[0].version > manual, "{status:?}");
    assert!(matches!(
        keys.open(b"context", &sealed),
        Err(entente_hub::datakeys::DataKeyError::UnknownVersion(v)) if v == first
    ));

    // The rotation on time is recorded once it is done (submitted to the log, not waited
    // for): the manual one and at least that one.
    let deadline = tokio::time::Instant::now() + entente_testkit::WAIT;
    let rotations = loop {
        let rotations: Vec<_> = records(&hub)
            .await
            .into_iter()
            .filter(|r| {
                matches!(&r.event,
                Event::Admin(a) if a.operation.as_clear() == Some("rotate-data-key"))
            })
            .collect();
        if rotations.len() >= 2 {
            break rotations;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rotation on time was not recorded: {rotations:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        rotations
            .iter()
            .all(|r| r.actor == "hub" && r.outcome == Outcome::Success)
    );
}

#[tokio::test]
async fn the_checkpoint_key_rotates_with_a_record_and_the_log_verifies_across_restarts() {
    let dir = TempDir::new().unwrap();
    let hub = start(&dir).await;
    drop(traffic(&hub, 1).await);
    let old = hub.hub().audit_verifier_key().unwrap();
    let new = hub.hub().rotate_audit_key().await.unwrap();
    assert_ne!(old, new);
    assert_eq!(hub.hub().audit_verifier_key().unwrap(), new);
    let old_key = VerifierKey::parse(&old).unwrap();
    let new_key = VerifierKey::parse(&new).unwrap();
    assert_eq!(old_key.name(), new_key.name(), "one log, one origin");

    // Sealed and signed with the new key from now on; the rotation is on record.
    let hub = hub.restart().await.unwrap();
    assert_eq!(hub.hub().audit_verifier_key().unwrap(), new);
    drop(hub.connect_agent("shop", "carol").await.unwrap());
    let records = records(&hub).await;
    assert!(records.iter().any(|r| matches!(&r.event,
        Event::Admin(a) if a.operation.as_clear() == Some("rotate-audit-key")
            && a.target.as_clear() == Some(new.as_str())
            && a.detail.as_clear() == Some(format!("after {old}").as_str()))));
    let export = dir.path().join("rotated.export");
    let checkpoint = hub.hub().export_audit(&export).await.unwrap().unwrap();
    let mut both = Verifier::new(new_key.clone());
    both.add(old_key.clone());
    let verified = verify_export(&export, &both).unwrap();
    assert_eq!(verified.checkpoint().unwrap().as_str(), checkpoint);
    assert_eq!(
        verified.checkpoint().unwrap().signed_by(),
        std::slice::from_ref(&new_key)
    );
    // Either key alone falls short: the old one can't check what the new one signed, and
    // the other way round.
    assert!(verify_export(&export, &Verifier::new(old_key)).is_err());
    assert!(verify_export(&export, &Verifier::new(new_key)).is_err());
}

/// Subscriptions decided again while the log is failed (after a revocation, which stays in
/// force) end `UNAVAILABLE`, not `DENIED`: nothing was decided.
#[tokio::test]
async fn subscriptions_decided_again_while_the_log_is_failed_end_unavailable() {
    let dir = TempDir::new().unwrap();
    let hub = start(&dir).await;
    let (alice, bob) = traffic(&hub, 1).await;
    let mut orders = alice.subscribe("orders.us").await.unwrap();
    std::fs::remove_file(audit_dir(&dir).join("records")).unwrap();
    assert!(bob.publish("orders.eu", "unrecorded").await.is_err());
    let mut revocations = entente_ca::Revocations::new();
    revocations.revoke_principal(&hub.agent_id("shop", "dave").unwrap().into());
    let now = std::time::SystemTime::now();
    let list = hub.hub().ca().sign_revocations(&revocations, now).unwrap();
    let list = entente_ca::VerifiedRevocationList::verify(list, hub.trust(), now).unwrap();
    assert!(hub.hub().revoke(list).await.is_err(), "its record fails");
    let ended = tokio::time::timeout(Duration::from_secs(10), orders.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(
        ended.refusal_code(),
        Some(RefusalCode::Unavailable),
        "{ended}"
    );
}

/// A renewal is recorded with the certificate it issued (its SHA-256 and expiry), linking the
/// certificate to its principal; a refused one with its reason.
#[tokio::test]
async fn a_renewal_is_recorded_with_its_certificate() {
    let dir = TempDir::new().unwrap();
    let hub = start(&dir).await;
    let bob = hub.enroll("shop", "bob").await.unwrap();
    let config = entente_testkit::raw::client_config(&bob, hub.trust()).unwrap();
    let client = entente_testkit::raw::Client::connect(hub.addr(), config, &hub.server_name())
        .await
        .unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap();
    let renewed: entente_wire::RenewResponse = client
        .unary(
            entente_hub::RENEW_PATH,
            entente_wire::RenewRequest {
                csr: csr.der().to_vec(),
            },
        )
        .await
        .unwrap();
    let leaf = &renewed.certificate_chain[0];
    let hash: [u8; 32] = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, leaf)
        .as_ref()
        .try_into()
        .unwrap();
    let refused = client
        .unary::<_, entente_wire::RenewResponse>(
            entente_hub::RENEW_PATH,
            entente_wire::RenewRequest { csr: vec![1, 2, 3] },
        )
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    let bob_id = bob.principal().to_string();
    let records = records(&hub).await;
    let renewals: Vec<_> = records
        .iter()
        .filter_map(|r| match &r.event {
            Event::Renewal(renewal) if r.actor == bob_id => Some((renewal, r.outcome)),
            _ => None,
        })
        .collect();
    let [(renewal, outcome)] = renewals.as_slice() else {
        panic!("{renewals:?}")
    };
    assert_eq!(*outcome, Outcome::Success);
    assert_eq!(renewal.principal.as_clear(), Some(bob_id.as_str()));
    assert_eq!(renewal.certificate.0, hash);
    assert!(renewal.not_after_ms > 0);
    assert!(records.iter().any(|r| r.actor == bob_id
        && r.outcome != Outcome::Success
        && matches!(&r.event, Event::Admin(a) if a.operation.as_clear() == Some("renew")
            && a.detail.as_clear().is_some_and(|d| d.contains("csr")))));
}

/// A copy of the log is read from its start, which is on the record, and on only by whoever
/// started it: another administrator can't take an export unrecorded by skipping its first
/// byte, nor start a new one anywhere but at offset 0.
#[tokio::test]
async fn an_export_is_read_from_its_recorded_start() {
    let dir = TempDir::new().unwrap();
    let policies = format!(
        r#"{POLICIES}
        @id("ann-admin")
        permit (principal == Human::"spiffe://{td}/human/ann", action == Action::"admin",
                resource);"#,
        td = entente_testkit::TRUST_DOMAIN
    );
    let hub = start_with(&dir, &policies, |_| {}).await;
    let admin = hub.connect(hub.admin().unwrap()).await.unwrap();
    drop(traffic(&hub, 1).await);
    let exported = admin
        .audit_export(dir.path().join("admin.export"))
        .await
        .unwrap();
    let ann = hub.enroll_human("ann").await.unwrap();
    let config = entente_testkit::raw::client_config(&ann, hub.trust()).unwrap();
    let ann = entente_testkit::raw::Client::connect(hub.addr(), config, &hub.server_name())
        .await
        .unwrap();
    let export = |snapshot, offset| {
        ann.unary::<_, entente_wire::AuditExportResponse>(
            entente_hub::AUDIT_EXPORT_PATH,
            entente_wire::AuditExportRequest { snapshot, offset },
        )
    };
    let refused = export(0, 1).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    // Exports are numbered by their tree size: the checkpoint's second line.
    let snapshot: u64 = exported.checkpoint.lines().nth(1).unwrap().parse().unwrap();
    let refused = export(snapshot, 1).await.unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert!(refused.message().contains("offset 0 first"), "{refused:?}");
    assert_eq!(export(snapshot, 0).await.unwrap().snapshot, snapshot);
    assert_eq!(export(snapshot, 1).await.unwrap().snapshot, snapshot);
    let ann_id = format!("spiffe://{}/human/ann", entente_testkit::TRUST_DOMAIN);
    let starts = records(&hub)
        .await
        .iter()
        .filter(|r| {
            matches!(&r.event, Event::Admin(a)
                if a.operation.as_clear() == Some("audit-export"))
                && r.outcome == Outcome::Success
        })
        .map(|r| r.actor.clone())
        .collect::<Vec<_>>();
    assert_eq!(starts.len(), 2, "{starts:?}");
    assert!(starts.contains(&ann_id), "{starts:?}");
    // The refused reads are on the record too.
    let refused = records(&hub)
        .await
        .iter()
        .filter(|r| {
            r.actor == ann_id
                && r.outcome != Outcome::Success
                && matches!(&r.event, Event::Admin(a)
                    if a.operation.as_clear() == Some("audit-export"))
        })
        .count();
    assert_eq!(refused, 2);
}

/// A seal a proof asks for that fails fails the log at once, as the writer's own seals do:
/// nothing is done meanwhile that could not be recorded.
#[tokio::test]
async fn a_seal_failing_under_a_proof_fails_the_log_at_once() {
    let dir = TempDir::new().unwrap();
    let hub = start_with(&dir, POLICIES, |a| {
        a.seal_interval = Duration::from_secs(3600)
    })
    .await;
    let admin = hub.connect(hub.admin().unwrap()).await.unwrap();
    drop(traffic(&hub, 1).await);
    std::fs::remove_file(audit_dir(&dir).join("tree")).unwrap();
    let refused = admin.audit_proof(0, 0).await.unwrap_err();
    assert!(refused.to_string().contains("audit log"), "{refused}");
    assert_eq!(hub.stats().audit_failures, 1);
    let refused = admin
        .create_token(
            &hub.agent_id("shop", "dave").unwrap(),
            Duration::from_secs(60),
        )
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("audit log"), "{refused}");
}

/// Two rotations of the checkpoint key at once are made one after the other: each trusts the
/// key before it, the records chain, and the hub starts again on the log they signed.
#[tokio::test]
async fn rotations_of_the_checkpoint_key_at_once_chain_and_the_log_opens_again() {
    let dir = TempDir::new().unwrap();
    let hub = start(&dir).await;
    let first = hub.hub().audit_verifier_key().unwrap();
    let (a, b) = tokio::join!(hub.hub().rotate_audit_key(), hub.hub().rotate_audit_key());
    let (a, b) = (a.unwrap(), b.unwrap());
    drop(traffic(&hub, 1).await);
    let rotations: Vec<(String, String)> = records(&hub)
        .await
        .iter()
        .filter_map(|r| match &r.event {
            Event::Admin(a) if a.operation.as_clear() == Some("rotate-audit-key") => Some((
                a.target.as_clear()?.to_owned(),
                a.detail.as_clear()?.to_owned(),
            )),
            _ => None,
        })
        .collect();
    assert_eq!(rotations.len(), 2, "{rotations:?}");
    let [(one, after_first), (two, after_one)] = rotations.as_slice() else {
        panic!("{rotations:?}")
    };
    assert_eq!(after_first, &format!("after {first}"));
    assert_eq!(after_one, &format!("after {one}"));
    let mut made = [a, b];
    made.sort();
    let mut chained = [one.clone(), two.clone()];
    chained.sort();
    assert_eq!(made, chained);
    let hub = hub.restart().await.unwrap();
    assert_eq!(&hub.hub().audit_verifier_key().unwrap(), two);
}

/// What a caller may see of others' grants is decided as every decision is: recorded, and
/// denied once the log has failed (others' grants and reasons withheld).
#[tokio::test]
async fn what_a_grant_listing_shows_of_others_is_decided_on_the_record() {
    let dir = TempDir::new().unwrap();
    let policies = format!(
        r#"{POLICIES}
        @id("orders-read")
        @grant("orders-read")
        @max_duration("1h")
        permit (principal, action == Action::"subscribe", resource in Namespace::"orders")
        when {{ context.grants.contains("orders-read") }};

        @id("ann-sees")
        permit (principal == Human::"spiffe://{td}/human/ann",
                action in [Action::"admin", Action::"approve"], resource);"#,
        td = entente_testkit::TRUST_DOMAIN
    );
    let hub = start_with(&dir, &policies, |a| {
        a.seal_interval = Duration::from_millis(50);
    })
    .await;
    let eve = hub.connect_agent("ops", "eve").await.unwrap();
    eve.request_grant("orders-read", Duration::from_secs(60), "INC-7")
        .await
        .unwrap();
    let ann = hub.connect_human("ann").await.unwrap();
    assert_eq!(ann.grants().await.unwrap().requests.len(), 1);
    let eve_id = hub.agent_id("ops", "eve").unwrap().to_string();
    let recorded = records(&hub).await.iter().any(|r| match &r.event {
        Event::Decision(d) => {
            d.action.as_clear() == Some("admin")
                && d.resource.as_clear().is_some_and(|r| r.contains(&eve_id))
                && d.principal
                    .as_clear()
                    .is_some_and(|p| p.ends_with("/human/ann"))
        }
        _ => false,
    });
    assert!(recorded, "ann's view of eve's request is on the record");

    // The log fails: ann sees nothing of others.
    let bob = hub.connect_agent("shop", "bob").await.unwrap();
    std::fs::remove_file(audit_dir(&dir).join("records")).unwrap();
    // Refused in the session, or at the directory lookup before it (whichever comes first
    // after the log's writer finds the file gone): unavailable either way, not denied.
    let refused = bob.publish("orders.eu", "unrecorded").await.unwrap_err();
    assert!(refused.to_string().contains("audit log"), "{refused}");
    assert_ne!(refused.kind(), ErrorKind::Denied, "{refused}");
    let shown = ann.grants().await.map(|g| g.requests.len());
    assert!(matches!(shown, Ok(0) | Err(_)), "{shown:?}");
}
