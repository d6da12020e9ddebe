//! Anomaly-driven throttling and quarantine on a real hub on 127.0.0.1:0, through the SDK
//! (docs/ANOMALY.md): an administrator quarantines and releases an agent, and the quarantine
//! outlives a restart; the detector throttles then quarantines a scanning agent while a
//! normal agent goes on losing nothing; a policy reading `context.risk` denies a risky agent
//! until its risk falls.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use entente_audit::{Event, Outcome, QuarantineAction};
use entente_client::{Client, ClientOptions, ErrorKind, SessionTransport};
use entente_hub::{HubConfig, Webhook};
use entente_testkit::TestHub;
use entente_types::Principal;
use entente_wire::{QuarantineRequest, QuarantineResponse};
use futures_util::StreamExt as _;
use http_body_util::BodyExt as _;
use hyper_util::rt::TokioIo;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tempfile::TempDir;
use tokio::sync::mpsc;

const POLICIES: &str = entente_testkit::SHOP_ORDERS;

async fn start(dir: &TempDir, policies: &str, change: impl FnOnce(&mut HubConfig)) -> TestHub {
    TestHub::builder()
        .policies(policies)
        .audited(&dir.path().join("audit"))
        .config(change)
        .start()
        .await
        .unwrap()
}

/// Windows of a second, a baseline after three.
fn quick(c: &mut HubConfig) {
    c.anomaly.window = Duration::from_secs(1);
    c.anomaly.warmup = 3;
}

/// A real HTTPS webhook on 127.0.0.1 (a certificate for `localhost`): it answers its first
/// request 503 and every later one 200, and hands over each body with its path. Returns its
/// [`Webhook`] (with a secret in the path) and the bodies.
async fn webhook() -> (
    Webhook,
    mpsc::UnboundedReceiver<(String, serde_json::Value)>,
) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::unbounded_channel();
    let served = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (acceptor, tx, served) = (acceptor.clone(), tx.clone(), served.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    move |request: http::Request<hyper::body::Incoming>| {
                        let (tx, served) = (tx.clone(), served.clone());
                        async move {
                            let path = request.uri().path().to_owned();
                            let body = request.into_body().collect().await.unwrap().to_bytes();
                            let status = if served.fetch_add(1, Ordering::Relaxed) == 0 {
                                503
                            } else {
                                let _ = tx.send((path, serde_json::from_slice(&body).unwrap()));
                                200
                            };
                            let response = http::Response::builder()
                                .status(status)
                                .body(http_body_util::Full::new(bytes::Bytes::new()))
                                .unwrap();
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    let hook = Webhook {
        url: format!("https://localhost:{port}/hooks/s3cret"),
        roots_pem: Some(cert.cert.pem().into_bytes()),
    };
    (hook, rx)
}

async fn list(admin: &Client) -> QuarantineResponse {
    admin
        .quarantine(QuarantineRequest::default())
        .await
        .unwrap()
}

/// The quarantine records of the log: (actor, principal, action, risk, evidence).
async fn quarantine_records(hub: &TestHub) -> Vec<(String, String, QuarantineAction, u32, String)> {
    let records = hub.audit_records().await.unwrap();
    let text = |t: &entente_audit::Text| t.as_clear().unwrap_or_default().to_owned();
    records
        .into_iter()
        .filter_map(|r| match r.event {
            Event::Quarantine(q) => {
                assert_eq!(r.outcome, Outcome::Success);
                Some((
                    r.actor.clone(),
                    text(&q.principal),
                    q.action,
                    q.risk,
                    text(&q.evidence),
                ))
            }
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn an_administrator_quarantines_an_agent_and_only_an_administrator_lifts_it() {
    let dir = TempDir::new().unwrap();
    let (hook, mut notices) = webhook().await;
    let hub = start(&dir, POLICIES, |c| c.quarantine_webhook = Some(hook)).await;
    let alice_identity = hub.enroll("shop", "alice").await.unwrap();
    let alice_id = alice_identity.principal().to_string();
    let alice = hub.connect(alice_identity.clone()).await.unwrap();
    let bob = hub.connect_agent("shop", "bob").await.unwrap();
    let mut orders = bob.subscribe("orders.>").await.unwrap();
    let admin = hub.connect(hub.admin().unwrap()).await.unwrap();
    assert!(list(&admin).await.quarantined.is_empty());

    // A reason is required; agents are not administrators.
    let request = |impose: &str, release: &str, reason: &str| QuarantineRequest {
        impose: impose.to_owned(),
        release: release.to_owned(),
        reason: reason.to_owned(),
    };
    let err = admin
        .quarantine(request(&alice_id, "", "  "))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("reason"), "{err}");
    // Nor may it disguise what it says (a second line, a reordering mark).
    for disguised in ["fine\nquarantine lifted by admin", "key \u{202e}leaked"] {
        let err = admin
            .quarantine(request(&alice_id, "", disguised))
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("invisible formatting characters"),
            "{err}"
        );
    }
    assert!(list(&admin).await.quarantined.is_empty());
    let err = bob
        .quarantine(QuarantineRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Denied, "{err}");

    let imposed = admin
        .quarantine(request(&alice_id, "", "its key was seen on a paste site"))
        .await
        .unwrap();
    assert_eq!(imposed.closed_connections, 1);
    let [entry] = imposed.quarantined.as_slice() else {
        panic!("{imposed:?}");
    };
    assert_eq!(entry.principal, alice_id);
    assert_eq!(entry.by, hub.admin_principal().unwrap().to_string());
    assert_eq!(entry.evidence, "its key was seen on a paste site");
    assert_eq!(hub.stats().quarantines, 1);
    // The webhook is told (after a refused first try).
    let (path, notice) = notices.recv().await.unwrap();
    assert_eq!(path, "/hooks/s3cret");
    assert_eq!(notice["event"], "quarantine");
    assert_eq!(notice["action"], "imposed");
    assert_eq!(notice["principal"], alice_id.as_str());
    assert_eq!(notice["evidence"], "its key was seen on a paste site");
    assert_eq!(notice["by"], entry.by.as_str());
    entente_testkit::eventually("the webhook's answer", || hub.stats().webhook_sent == 1)
        .await
        .unwrap();
    assert_eq!(hub.stats().webhook_failures, 0);

    // Alice's connection is closed, saying why; she can't come back.
    let err = alice.publish("orders.eu", "after").await.unwrap_err();
    assert!(err.to_string().contains("quarantined"), "{err}");
    let err = hub.connect(alice_identity.clone()).await.unwrap_err();
    assert!(format!("{err:#}").contains("quarantined"), "{err:#}");
    assert!(hub.stats().quarantined_refusals >= 1);
    // A session over HTTP/2 is refused the same way, its status the connect's error.
    let before = hub.stats().quarantined_refusals;
    let http2 = ClientOptions::new().session_transport(SessionTransport::Http2);
    let err = Client::connect(alice_identity.clone(), hub.addr(), http2)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Denied, "{err}");
    assert!(err.to_string().contains("quarantined"), "{err}");
    assert_eq!(hub.stats().quarantined_refusals, before + 1);
    // Others go on.
    bob.publish("orders.eu", "bob").await.unwrap();
    let got = orders.next().await.unwrap().unwrap();
    assert_eq!(got.payload, b"bob");
    // Twice is refused.
    let err = admin
        .quarantine(request(&alice_id, "", "again"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("quarantined already"), "{err}");

    // The quarantine outlives a restart.
    drop((admin, bob));
    let hub = hub.restart().await.unwrap();
    let admin = hub.connect(hub.admin().unwrap()).await.unwrap();
    assert_eq!(list(&admin).await.quarantined.len(), 1);
    let err = hub.connect(alice_identity.clone()).await.unwrap_err();
    assert!(format!("{err:#}").contains("quarantined"), "{err:#}");

    let released = admin
        .quarantine(request("", &alice_id, "the key was rotated"))
        .await
        .unwrap();
    assert_eq!(released.released.unwrap().principal, alice_id);
    assert!(released.quarantined.is_empty());
    let (_, notice) = notices.recv().await.unwrap();
    assert_eq!(notice["action"], "lifted");
    assert_eq!(notice["evidence"], "the key was rotated");
    let alice = hub.connect(alice_identity).await.unwrap();
    alice.publish("orders.eu", "back").await.unwrap();
    let err = admin
        .quarantine(request("", &alice_id, "again"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not quarantined"), "{err}");

    let admin_id = hub.admin_principal().unwrap().to_string();
    let records = quarantine_records(&hub).await;
    assert_eq!(
        records,
        vec![
            (
                admin_id.clone(),
                alice_id.clone(),
                QuarantineAction::Imposed,
                0,
                "its key was seen on a paste site".to_owned()
            ),
            (
                admin_id,
                alice_id,
                QuarantineAction::Lifted,
                0,
                "the key was rotated".to_owned()
            ),
        ]
    );
}

/// An administrator by policy quarantines agents the hub knows, not a listed (break-glass)
/// administrator, whom nobody could then lift it for, nor made-up names, which would fill the
/// stored list; a listed administrator may quarantine a name not seen yet.
#[tokio::test]
async fn an_administrator_by_policy_quarantines_neither_a_listed_one_nor_a_made_up_name() {
    let dir = TempDir::new().unwrap();
    let policies = format!(
        r#"{POLICIES}
        @id("ann-admin")
        permit (principal == Human::"spiffe://{td}/human/ann", action == Action::"admin",
                resource == Hub::"hub");"#,
        td = entente_testkit::TRUST_DOMAIN
    );
    let root = Principal::parse(&format!(
        "spiffe://{}/human/root",
        entente_testkit::TRUST_DOMAIN
    ))
    .unwrap();
    let listed = root.clone();
    let hub = start(&dir, &policies, move |c| c.admins.push(listed)).await;
    let ann = hub.connect_human("ann").await.unwrap();
    let admin = hub.connect(hub.admin().unwrap()).await.unwrap();
    let alice = hub.enroll("shop", "alice").await.unwrap();
    let request = |impose: &str| QuarantineRequest {
        impose: impose.to_owned(),
        release: String::new(),
        reason: "a test".to_owned(),
    };
    let admin_id = hub.admin_principal().unwrap().to_string();
    let err = ann.quarantine(request(&admin_id)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Denied, "{err}");
    assert!(
        err.to_string()
            .contains("only another listed administrator"),
        "{err}"
    );
    let made_up = format!(
        "spiffe://{}/agent/shop/nobody",
        entente_testkit::TRUST_DOMAIN
    );
    let err = ann.quarantine(request(&made_up)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Denied, "{err}");
    assert!(err.to_string().contains("unknown to the hub"), "{err}");
    let err = ann
        .quarantine(request("spiffe://elsewhere.org/agent/shop/alice"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("trust domain"), "{err}");
    assert!(list(&admin).await.quarantined.is_empty());

    // An agent the hub enrolled, yes; a name not seen yet, by a listed administrator.
    let imposed = ann
        .quarantine(request(alice.principal().as_str()))
        .await
        .unwrap();
    assert_eq!(imposed.quarantined.len(), 1);
    let imposed = admin.quarantine(request(&made_up)).await.unwrap();
    assert_eq!(imposed.quarantined.len(), 2);

    // A listed administrator quarantined by another (its key stolen, say): lifted by a listed
    // one only, not by an administrator by policy.
    let imposed = admin.quarantine(request(root.as_str())).await.unwrap();
    assert_eq!(imposed.quarantined.len(), 3);
    let lift = QuarantineRequest {
        impose: String::new(),
        release: root.as_str().to_owned(),
        reason: "a test".to_owned(),
    };
    let err = ann.quarantine(lift.clone()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Denied, "{err}");
    assert!(
        err.to_string()
            .contains("only another listed administrator may lift"),
        "{err}"
    );
    assert_eq!(list(&admin).await.quarantined.len(), 3);
    let lifted = admin.quarantine(lift).await.unwrap();
    assert_eq!(lifted.quarantined.len(), 2);
}

/// The quarantine list stays within what the hub reads back at start and sends in one answer:
/// an imposition past that is refused, and the hub starts again with the list it kept.
#[tokio::test]
async fn the_quarantine_list_stays_within_what_the_hub_reads_back() {
    let dir = TempDir::new().unwrap();
    let hub = start(&dir, POLICIES, |c| c.limits.max_frame_bytes = 16 * 1024).await;
    let admin = hub.connect(hub.admin().unwrap()).await.unwrap();
    let reason = "r".repeat(1000);
    let mut imposed = 0;
    let refused = loop {
        let name = format!(
            "spiffe://{}/agent/shop/a{imposed}",
            entente_testkit::TRUST_DOMAIN
        );
        let request = QuarantineRequest {
            impose: name,
            release: String::new(),
            reason: reason.clone(),
        };
        match admin.quarantine(request).await {
            Ok(_) => imposed += 1,
            Err(e) => break e,
        }
        assert!(imposed < 100, "never refused");
    };
    assert!(
        refused.to_string().contains("RESOURCE_EXHAUSTED")
            && refused.to_string().contains("release some first"),
        "{refused}"
    );
    assert!(imposed >= 10, "{imposed}");
    assert_eq!(list(&admin).await.quarantined.len(), imposed);
    drop(admin);
    let hub = hub.restart().await.unwrap();
    let admin = hub.connect(hub.admin().unwrap()).await.unwrap();
    assert_eq!(list(&admin).await.quarantined.len(), imposed);
}

/// Probing through RPCs (the directory of channels one may not publish to) counts as
/// probing through frames: the prober is quarantined.
#[tokio::test]
async fn an_agent_probing_the_directory_is_quarantined() {
    let dir = TempDir::new().unwrap();
    let hub = start(&dir, POLICIES, |c| {
        c.anomaly.window = Duration::from_secs(1);
        c.anomaly.warmup = 3;
    })
    .await;
    let scanner = hub.connect_agent("shop", "scanner").await.unwrap();
    for _ in 0..35 {
        scanner.publish("orders.us", "ordinary").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let started = Instant::now();
    let (mut probes, mut limited) = (0u32, 0u32);
    let last = loop {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the scanner was never quarantined"
        );
        // The directory refuses the lookup: no frame is ever sent. Throttled, the scanner's
        // lookups are held to its throttled rate too. Quarantined, its connections are closed
        // under its next lookup.
        match scanner
            .publish(&format!("pay.secrets.p{probes}"), "x")
            .await
        {
            Ok(()) => panic!("a probe was allowed"),
            Err(e) if e.kind() == ErrorKind::Denied && !e.to_string().contains("quarantined") => {}
            Err(e) if e.kind() == ErrorKind::Limited => {
                if e.to_string().contains("anomaly-throttle") {
                    limited += 1;
                }
            }
            Err(e) if e.kind() == ErrorKind::Closed || e.to_string().contains("quarantined") => {
                break e;
            }
            // Anything else (a lookup slow on a loaded machine): probing goes on.
            Err(_) => {}
        }
        probes += 1;
    };
    assert!(
        limited > 0,
        "the throttled scanner's lookups were never limited"
    );
    let admin = hub.connect(hub.admin().unwrap()).await.unwrap();
    let quarantined = list(&admin).await.quarantined;
    let [entry] = quarantined.as_slice() else {
        panic!("only the scanner: {quarantined:?} (the last probe: {last})");
    };
    assert_eq!(entry.principal, scanner.principal().to_string());
    assert_eq!(entry.by, "hub");
}

/// A listed administrator probing as the scanner above does is throttled, never quarantined:
/// the break-glass administrators are who lifts quarantines.
#[tokio::test]
async fn the_detector_throttles_a_listed_administrator_but_never_quarantines_it() {
    let dir = TempDir::new().unwrap();
    let hub = start(&dir, POLICIES, quick).await;
    let admin = hub.connect(hub.admin().unwrap()).await.unwrap();
    let started = Instant::now();
    let mut throttled_since: Option<Instant> = None;
    let mut probes = 0u32;
    // Probing on for six windows once throttled: the scanner above is quarantined in two.
    while throttled_since.is_none_or(|since| since.elapsed() < Duration::from_secs(6)) {
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "the administrator was never throttled"
        );
        match admin.publish(&format!("pay.secrets.p{probes}"), "x").await {
            Ok(()) => panic!("a probe was allowed"),
            Err(e)
                if e.kind() == ErrorKind::Limited && e.to_string().contains("anomaly-throttle") =>
            {
                throttled_since.get_or_insert_with(Instant::now);
            }
            Err(e) => assert!(
                e.kind() != ErrorKind::Closed && !e.to_string().contains("quarantined"),
                "{e}"
            ),
        }
        probes += 1;
    }
    // Still throttled: the listing waits for the bucket.
    let listed = loop {
        match admin.quarantine(QuarantineRequest::default()).await {
            Err(e) if e.kind() == ErrorKind::Limited => {
                tokio::time::sleep(e.retry_after().unwrap_or(Duration::from_millis(100))).await;
            }
            other => break other.unwrap(),
        }
    };
    assert!(listed.quarantined.is_empty());
    assert_eq!(hub.stats().quarantines, 0);
}

#[tokio::test]
async fn the_detector_throttles_then_quarantines_a_scanner_and_a_normal_agent_loses_nothing() {
    let dir = TempDir::new().unwrap();
    // Windows of a second: however fast this machine lets the scanner go, a throttled window
    // still holds enough refusals to quarantine it.
    let hub = start(&dir, POLICIES, |c| {
        c.anomaly.window = Duration::from_secs(1);
        c.anomaly.warmup = 3;
    })
    .await;
    let normal = hub.connect_agent("shop", "normal").await.unwrap();
    let scanner = hub.connect_agent("shop", "scanner").await.unwrap();
    let scanner_id = scanner.principal().to_string();
    let carol = hub.connect_agent("shop", "carol").await.unwrap();
    let mut orders = carol.subscribe("orders.>").await.unwrap();

    // The normal agent publishes steadily throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let steady = {
        let (stop, sent) = (stop.clone(), sent.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let n = sent.load(Ordering::Relaxed);
                normal
                    .publish("orders.eu", format!("order {n}"))
                    .await
                    .unwrap();
                sent.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            normal
        })
    };
    // The scanner behaves for the warm-up, then probes channels it may not read.
    const ORDINARY: usize = 35;
    for _ in 0..ORDINARY {
        scanner.publish("orders.us", "ordinary").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let started = Instant::now();
    let mut probes = 0u32;
    let closed = loop {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the scanner was never quarantined"
        );
        match scanner.subscribe(&format!("pay.secrets.p{probes}")).await {
            Ok(_) => panic!("a probe was allowed"),
            Err(e) if e.kind() == ErrorKind::Denied && !e.to_string().contains("quarantined") => {}
            // Throttled (seen only if this machine lets the scanner probe faster than the
            // throttled rate; `throttled_agents` below says it was, either way).
            Err(e) if e.kind() == ErrorKind::Limited => {
                assert!(e.to_string().contains("anomaly-throttle"), "{e}");
            }
            Err(e) => break e,
        }
        probes += 1;
    };
    assert!(closed.to_string().contains("quarantined"), "{closed}");
    stop.store(true, Ordering::Relaxed);
    let _normal = steady.await.unwrap();

    let admin = hub.connect(hub.admin().unwrap()).await.unwrap();
    let quarantined = list(&admin).await.quarantined;
    let [entry] = quarantined.as_slice() else {
        panic!("only the scanner: {quarantined:?}");
    };
    assert_eq!(entry.principal, scanner_id);
    assert_eq!(entry.by, "hub");
    assert!(entry.risk >= 85, "{entry:?}");
    assert!(entry.evidence.contains("refused requests"), "{entry:?}");
    let stats = hub.stats();
    assert_eq!(stats.quarantines, 1);
    assert!(stats.throttled_agents >= 1);

    // Every order of the normal agent arrived, once, in order.
    let sent = sent.load(Ordering::Relaxed);
    assert!(sent > 50, "{sent}");
    let mut got = Vec::new();
    while got.len() < sent as usize + ORDINARY {
        match tokio::time::timeout(Duration::from_secs(2), orders.next()).await {
            Ok(Some(message)) => got.push(String::from_utf8(message.unwrap().payload).unwrap()),
            _ => break,
        }
    }
    let normal_orders: Vec<String> = got
        .iter()
        .filter(|p| p.starts_with("order "))
        .cloned()
        .collect();
    let expected: Vec<String> = (0..sent).map(|n| format!("order {n}")).collect();
    assert_eq!(normal_orders, expected);

    let records = quarantine_records(&hub).await;
    let [(actor, principal, action, risk, evidence)] = records.as_slice() else {
        panic!("{records:?}");
    };
    assert_eq!(actor, "hub");
    assert_eq!(principal, &scanner_id);
    assert_eq!(*action, QuarantineAction::Imposed);
    assert!(*risk >= 85);
    assert_eq!(evidence, &entry.evidence);
}

#[tokio::test]
async fn a_policy_reading_the_risk_score_denies_a_risky_agent_until_it_falls() {
    let dir = TempDir::new().unwrap();
    let policies = format!(
        "{POLICIES}\n@id(\"no-risky-publishers\")\n\
         forbid (principal, action == Action::\"publish\", resource) when {{ context.risk >= 40 }};\n"
    );
    // Windows of a second: the probes below, sent at once, fall in one window or two however
    // slow the machine, and the risk they raise lasts a window.
    let hub = start(&dir, &policies, quick).await;
    let eve = hub.connect_agent("shop", "eve").await.unwrap();
    eve.publish("orders.eu", "before").await.unwrap();
    // 25 refused probes, in the warm-up: a risk from 40 to 59 (over at most two windows),
    // under the throttle.
    let probes = (0..25).map(|k| {
        let eve = &eve;
        async move { eve.subscribe(&format!("pay.secrets.k{k}")).await }
    });
    for probe in futures_util::future::join_all(probes).await {
        let err = probe.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Denied, "{err}");
    }
    // Denied once the probes' window is scored. (A try every 100 ms: what passes before is
    // in the warm-up's windows.)
    let deadline = Instant::now() + entente_testkit::WAIT;
    let denied = loop {
        match eve.publish("orders.eu", "risky").await {
            Ok(()) => {
                assert!(Instant::now() < deadline, "never denied");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => break e,
        }
    };
    assert_eq!(denied.kind(), ErrorKind::Denied, "{denied}");
    assert!(
        denied.to_string().contains("no-risky-publishers"),
        "{denied}"
    );
    // Quiet windows halve the risk: she may publish again soon. (A try every 400 ms: the
    // few a window, denied, are no deviation of their own.)
    let deadline = Instant::now() + entente_testkit::WAIT;
    loop {
        tokio::time::sleep(Duration::from_millis(400)).await;
        if eve.publish("orders.eu", "calm").await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "never allowed again");
    }
    assert_eq!(hub.stats().quarantines, 0);
}
