//! The attack suite: an attacker against a real hub on 127.0.0.1:0 while honest agents work.
//! Each test plays one attack and checks what the hub promises (docs/THREAT_MODEL.md): the
//! attempt is refused, every attempt is in the audit log (what an identity did; what comes
//! before any identity, at the TLS handshake, is counted instead), the hub stays up, and an
//! honest exchange running meanwhile loses nothing. How much the honest agents' throughput
//! moves under attack is measured by `entente bench --attack` (docs/BENCHMARKS.md), not
//! asserted here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use entente_audit::{Event, Outcome, QuarantineAction, Record};
use entente_client::danger::danger_publish_raw;
use entente_client::{Client, ErrorKind, RefusalCode, Subscription};
use entente_hub::{HubConfig, Rate};
use entente_testkit::{TestHub, WAIT, eventually, now_ms, raw, sealer};
use entente_wire::{Publish, SignedBatch};
use futures_util::StreamExt as _;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::task::JoinHandle;

/// How many messages the honest agents exchange during each attack.
const HONEST: usize = 200;

async fn start(dir: &TempDir, change: impl FnOnce(&mut HubConfig)) -> TestHub {
    TestHub::builder()
        .policies(entente_testkit::SHOP_ORDERS)
        .audited(&dir.path().join("audit"))
        .config(change)
        .start()
        .await
        .unwrap()
}

/// An honest exchange: `honest-sender` publishes [`HONEST`] numbered messages on
/// `orders.honest`, a little apart, while `honest-receiver` reads them.
struct Honest {
    sender: JoinHandle<Client>,
    received: Subscription,
    _receiver: Client,
}

impl Honest {
    async fn start(hub: &TestHub) -> Self {
        let receiver = hub.connect_agent("shop", "honest-receiver").await.unwrap();
        let received = receiver.subscribe("orders.honest").await.unwrap();
        let sender = hub.connect_agent("shop", "honest-sender").await.unwrap();
        let sender = tokio::spawn(async move {
            for i in 0..HONEST {
                sender
                    .publish("orders.honest", format!("h{i}"))
                    .await
                    .unwrap_or_else(|e| panic!("honest message {i} refused: {e}"));
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            sender
        });
        Self {
            sender,
            received,
            _receiver: receiver,
        }
    }

    /// Every honest message was accepted and arrives, once, in order.
    async fn all_arrive(mut self) {
        let _sender = self.sender.await.unwrap();
        for i in 0..HONEST {
            let message = tokio::time::timeout(WAIT, self.received.next())
                .await
                .unwrap_or_else(|_| panic!("honest message {i} never arrived"))
                .unwrap()
                .unwrap();
            assert_eq!(message.payload, format!("h{i}").into_bytes());
        }
    }
}

async fn records(hub: &TestHub) -> Vec<Record> {
    hub.audit_records().await.unwrap()
}

/// The reasons of the refusals recorded for `principal` that no policy decided.
async fn refusals(hub: &TestHub, principal: &str) -> Vec<String> {
    records(hub)
        .await
        .into_iter()
        .filter(|r| r.actor == principal)
        .filter_map(|r| match r.event {
            Event::Decision(d) if !d.allowed && d.policies.is_empty() => {
                assert_eq!(r.outcome, Outcome::Denied);
                Some(d.reason.as_clear().unwrap_or_default().to_owned())
            }
            _ => None,
        })
        .collect()
}

/// Sends `batch` as it is over `client`'s connection; the refusal, if any.
async fn publish_raw(client: &Client, request_id: u64, batch: SignedBatch) -> Option<String> {
    let publish = Publish {
        request_id,
        sender_keys: Vec::new(),
        batches: vec![batch],
        purpose: String::new(),
    };
    danger_publish_raw(client, publish)
        .await
        .err()
        .map(|e| e.to_string())
}

#[tokio::test]
async fn a_message_flood_is_limited_and_recorded_and_honest_agents_lose_nothing() {
    let dir = TempDir::new().unwrap();
    let hub = start(&dir, |c| {
        // 64 KiB a second: the honest sender's small messages stay far below it.
        c.rate_limits.agent_bytes = Some(Rate {
            per_second: 64 << 10,
            burst: 64 << 10,
        });
    })
    .await;
    let honest = Honest::start(&hub).await;
    let mallory = hub.connect_agent("shop", "mallory").await.unwrap();
    let mallory_id = mallory.principal().to_string();
    let mut limited = 0u64;
    let bulk = vec![b'x'; 16 << 10];
    for _ in 0..500 {
        match mallory.publish("orders.flood", bulk.clone()).await {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Limited => limited += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(limited > 250, "{limited}");
    honest.all_arrive().await;
    // The runs of refusals are recorded together, the last when the session ends.
    mallory.close().await;
    let recorded = || async {
        records(&hub)
            .await
            .into_iter()
            .filter_map(|r| match r.event {
                Event::Limit(l) if l.principal.as_clear() == Some(mallory_id.as_str()) => {
                    Some(l.count)
                }
                _ => None,
            })
            .sum::<u64>()
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while recorded().await != limited {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}",
            recorded().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(hub.stats().rate_limited >= limited);
}

#[tokio::test]
async fn a_replay_storm_with_forged_senders_is_refused_recorded_and_quarantined() {
    let dir = TempDir::new().unwrap();
    // Windows of a second: however fast this machine lets mallory go, a throttled window
    // still holds enough refusals to quarantine her.
    let hub = start(&dir, |c| c.anomaly.window = Duration::from_secs(1)).await;
    let honest = Honest::start(&hub).await;
    let mallory_identity = hub.enroll("shop", "mallory").await.unwrap();
    let mallory_id = mallory_identity.principal().to_string();
    let mallory = hub.connect(mallory_identity.clone()).await.unwrap();
    let bob = hub.enroll("shop", "bob").await.unwrap();
    let batch = sealer(&mallory_identity, "orders.eu")
        .unwrap()
        .0
        .seal_batch(&[b"pay 100"], None, now_ms())
        .unwrap();
    let bobs = sealer(&bob, "orders.eu")
        .unwrap()
        .0
        .seal_batch(&[b"pay 200"], None, now_ms())
        .unwrap();
    assert_eq!(publish_raw(&mallory, 1, batch.clone()).await, None);

    let (mut replays, mut forged, mut throttled) = (0usize, 0usize, 0usize);
    let ended = loop {
        let id = (replays + forged + throttled) as u64 + 2;
        assert!(id < 100_000, "mallory was never quarantined");
        let sent = if id.is_multiple_of(10) {
            publish_raw(&mallory, id, bobs.clone()).await
        } else {
            publish_raw(&mallory, id, batch.clone()).await
        };
        match sent {
            Some(e) if e.contains("REPLAY") => replays += 1,
            Some(e) if e.contains("FORGED_SENDER") => forged += 1,
            Some(e) if e.contains("anomaly-throttle") => throttled += 1,
            other => break other.unwrap_or_default(),
        }
    };
    // The connection is closed under her (she may see that or the status saying why).
    assert!(!ended.is_empty());
    assert!(replays > 0 && forged > 0 && throttled > 0);
    assert_eq!(hub.stats().quarantines, 1);
    let again = hub.connect(mallory_identity).await.unwrap_err();
    assert!(format!("{again:#}").contains("quarantined"), "{again:#}");
    honest.all_arrive().await;

    // Every replay and forgery is in the log, as what was refused and why.
    let reasons = refusals(&hub, &mallory_id).await;
    let count = |code: &str| reasons.iter().filter(|r| r.starts_with(code)).count();
    assert_eq!(count("REPLAY: "), replays, "{reasons:?}");
    assert_eq!(count("FORGED_SENDER: "), forged, "{reasons:?}");
    let quarantined = records(&hub).await.into_iter().any(|r| {
        matches!(&r.event, Event::Quarantine(q)
            if q.principal.as_clear() == Some(mallory_id.as_str())
                && q.action == QuarantineAction::Imposed)
    });
    assert!(quarantined);
    assert_eq!(hub.stats().replays as usize, replays);
    assert_eq!(hub.stats().forged_senders as usize, forged);
}

#[tokio::test]
async fn probing_other_namespaces_and_segments_is_denied_and_recorded() {
    let dir = TempDir::new().unwrap();
    let hub = start(&dir, |_| {}).await;
    let honest = Honest::start(&hub).await;
    let mallory = hub.connect_agent("shop", "mallory").await.unwrap();
    let mallory_id = mallory.principal().to_string();
    let victim = "shop.honest-receiver";
    // Another agent's reply namespace and direct channel: a structural rule refuses them.
    for pattern in [
        format!("_reply.{victim}.>"),
        format!("_direct.{victim}"),
        "_reply.>".to_owned(),
    ] {
        let e = mallory.subscribe(&pattern).await.unwrap_err();
        assert_eq!(
            e.refusal_code(),
            Some(RefusalCode::Denied),
            "{pattern}: {e}"
        );
    }
    // Another segment's channels: no policy permits them.
    for pattern in ["payroll.eu", "lab.>"] {
        let e = mallory.subscribe(pattern).await.unwrap_err();
        assert_eq!(
            e.refusal_code(),
            Some(RefusalCode::Denied),
            "{pattern}: {e}"
        );
    }
    honest.all_arrive().await;

    let reasons = refusals(&hub, &mallory_id).await;
    let structural = reasons
        .iter()
        .filter(|r| r.contains("only its owner may subscribe"))
        .count();
    assert_eq!(structural, 3, "{reasons:?}");
    let denied_by_policy = records(&hub)
        .await
        .into_iter()
        .filter(|r| r.actor == mallory_id)
        .filter(|r| matches!(&r.event, Event::Decision(d) if !d.allowed && d.reason.as_clear().is_some_and(|t| t.contains("no policy permits"))))
        .count();
    assert!(denied_by_policy >= 2, "{denied_by_policy}");
}

#[tokio::test]
async fn frames_that_end_their_stream_are_recorded_and_the_hub_serves_on() {
    const MAX: usize = 64 * 1024;
    let dir = TempDir::new().unwrap();
    let hub = start(&dir, |c| c.limits.max_frame_bytes = MAX).await;
    let honest = Honest::start(&hub).await;
    let mallory = hub.enroll("shop", "mallory").await.unwrap();
    let mallory_id = mallory.principal().to_string();
    let config = raw::client_config(&mallory, hub.trust()).unwrap();
    let client = raw::Client::connect(hub.addr(), config, &hub.server_name())
        .await
        .unwrap();
    let frames: [Vec<u8>; 3] = [
        vec![0u8; MAX + 1],                             // oversized
        vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01], // a field claiming 4 GiB
        Vec::new(),                                     // a frame with nothing in it
    ];
    for frame in frames {
        let mut session = client.session().await.unwrap();
        session.send_raw(frame).await.unwrap();
        let status = session.status().await;
        assert_ne!(status.code(), tonic::Code::Ok, "{status:?}");
    }
    honest.all_arrive().await;
    eventually("the three are recorded", || {
        hub.stats().malformed_frames == 3
    })
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let reasons = refusals(&hub, &mallory_id).await;
        let ended = reasons
            .iter()
            .filter(|r| r.starts_with("a frame ended the stream"))
            .count();
        if ended == 3 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{reasons:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn slowloris_and_malformed_tls_are_cut_off_and_counted() {
    let dir = TempDir::new().unwrap();
    let hub = start(&dir, |c| {
        c.handshake_timeout = Duration::from_millis(500);
        c.idle_timeout = Duration::from_secs(1);
    })
    .await;
    let honest = Honest::start(&hub).await;
    // Connections that never finish a handshake, one that sends half a ClientHello, one that
    // sends garbage, and one that finishes mutual TLS but never asks for anything.
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(tokio::net::TcpStream::connect(hub.addr()).await.unwrap());
    }
    let mut half = tokio::net::TcpStream::connect(hub.addr()).await.unwrap();
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
        .await
        .unwrap();
    let mut garbage = tokio::net::TcpStream::connect(hub.addr()).await.unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: hub\r\n\r\n")
        .await
        .unwrap();
    let idle_identity = hub.enroll("shop", "idle").await.unwrap();
    let config = raw::client_config(&idle_identity, hub.trust()).unwrap();
    let idle = raw::Client::connect(hub.addr(), config, &hub.server_name())
        .await
        .unwrap();

    // The hub closes each of them on its own.
    for mut stream in silent.into_iter().chain([half, garbage]) {
        let mut buf = [0u8; 256];
        let closed = tokio::time::timeout(WAIT, async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "a stalled connection was left open");
    }
    // Closed for idling: that one, and the honest clients' connections for calls; their
    // framed sessions stay.
    eventually("the idle connections are closed", || {
        hub.stats().idle_disconnects >= 1 && hub.hub().connections() == 2
    })
    .await
    .unwrap();
    assert!(idle.session().await.is_err());
    honest.all_arrive().await;
    assert!(hub.stats().handshakes_failed >= 22, "{:?}", hub.stats());
    // Still serving newcomers.
    hub.connect_agent("shop", "newcomer").await.unwrap();
}

/// A TCP connection to the hub from `source` (every 127/8 address reaches the loopback).
async fn tcp_from(hub: &TestHub, source: Ipv4Addr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((source, 0))).unwrap();
    socket.connect(hub.addr()).await.unwrap()
}

/// Whether the hub closes `stream` within [`WAIT`].
async fn closed_by_hub(stream: &mut tokio::net::TcpStream) -> bool {
    let mut buf = [0u8; 256];
    let closed = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(WAIT, closed).await.is_ok()
}

#[tokio::test]
async fn connections_not_yet_authenticated_are_bounded_in_all_and_per_source() {
    let dir = TempDir::new().unwrap();
    let hub = start(&dir, |c| {
        c.max_unauthenticated = 3;
        c.max_unauthenticated_per_source = 2;
        // The silent connections below are held for as long as the test needs them.
        c.handshake_timeout = Duration::from_secs(600);
    })
    .await;
    let unauthenticated = || hub.hub().unauthenticated_connections();
    // An agent's connections count while they handshake (enrollment's while open), no longer.
    let _alice = hub.connect_agent("shop", "alice").await.unwrap();
    eventually("alice's connections are authenticated", || {
        unauthenticated() == 0
    })
    .await
    .unwrap();

    // Connections that never handshake: two from one source, then a third from it.
    let ip = |last: u8| Ipv4Addr::new(127, 0, 0, last);
    let mut held = vec![tcp_from(&hub, ip(1)).await, tcp_from(&hub, ip(1)).await];
    eventually("both are held", || unauthenticated() == 2)
        .await
        .unwrap();
    let mut past_its_source = tcp_from(&hub, ip(1)).await;
    assert!(closed_by_hub(&mut past_its_source).await);
    // Another source may hold one more, the hub's third.
    let other = tcp_from(&hub, ip(2)).await;
    eventually("three are held", || unauthenticated() == 3)
        .await
        .unwrap();
    // The hub full, a third source gets in at the expense of the source holding most: its
    // oldest is closed.
    let third = tcp_from(&hub, ip(3)).await;
    assert!(closed_by_hub(&mut held[0]).await);
    assert_eq!(unauthenticated(), 3);
    // Each of three sources holds one: a fourth finds no room.
    let mut past_the_hubs = tcp_from(&hub, ip(4)).await;
    assert!(closed_by_hub(&mut past_the_hubs).await);
    assert_eq!(hub.stats().connection_limit_hits, 3);
    assert_eq!(unauthenticated(), 3);
    let metrics = hub.hub().metrics();
    for (limit, hits) in [("unauthenticated", 2), ("unauthenticated-per-source", 1)] {
        let line = format!("entente_limit_hits_total{{limit=\"{limit}\"}} {hits}");
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }

    // Once they go, others come in.
    drop((held, other, third));
    eventually("the silent connections are let go", || {
        unauthenticated() == 0
    })
    .await
    .unwrap();
    hub.connect_agent("shop", "bob").await.unwrap();

    // Each refusal is recorded: which limit, and which source.
    let wanted = [
        ("unauthenticated-per-source", "127.0.0.1", 1),
        ("unauthenticated", "127.0.0.1", 1),
        ("unauthenticated", "127.0.0.4", 1),
    ]
    .map(|(limit, scope, count)| (limit.to_owned(), scope.to_owned(), count));
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let recorded: Vec<(String, String, u64)> = records(&hub)
            .await
            .into_iter()
            .filter_map(|r| match r.event {
                Event::Limit(hit) if r.actor == "anonymous" => Some((
                    hit.limit.as_clear().unwrap_or_default().to_owned(),
                    hit.scope.as_clear().unwrap_or_default().to_owned(),
                    hit.count,
                )),
                _ => None,
            })
            .collect();
        if recorded == wanted {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{recorded:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_reused_token_and_a_revoked_certificate_are_refused_and_recorded() {
    let dir = TempDir::new().unwrap();
    let hub = start(&dir, |_| {}).await;
    let honest = Honest::start(&hub).await;
    let token = hub.token("shop", "trudy").await.unwrap();
    let trudy = entente_client::enroll(hub.addr(), hub.trust(), token.as_str())
        .await
        .unwrap();
    let again = entente_client::enroll(hub.addr(), hub.trust(), token.as_str()).await;
    assert!(again.unwrap_err().to_string().contains("already used"));
    // Trudy is revoked; her certificate no longer gets in.
    let connected = hub.connect(trudy.clone()).await.unwrap();
    assert_eq!(hub.revoke(trudy.principal()).await.unwrap(), 1);
    assert!(connected.publish("orders.eu", "after").await.is_err());
    let before = hub.stats().handshakes_failed;
    let err = hub.connect(trudy.clone()).await.unwrap_err();
    assert!(format!("{err:#}").contains("CertificateRevoked"), "{err:#}");
    eventually("the refused handshake is counted", || {
        hub.stats().handshakes_failed > before
    })
    .await
    .unwrap();
    honest.all_arrive().await;

    let records = records(&hub).await;
    let reused = records.iter().any(|r| {
        matches!(&r.event, Event::Admin(a)
            if a.operation.as_clear() == Some("enroll")
                && a.detail.as_clear().is_some_and(|d| d.contains("already used")))
    });
    assert!(reused, "the reused token is not in the log");
    let revoked = records.iter().any(|r| {
        matches!(&r.event, Event::Revocation(v)
            if v.principal.as_clear() == Some(trudy.principal().as_str()))
    });
    assert!(revoked);
}
