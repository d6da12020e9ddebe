//! Direct messages and request/reply against a real hub on 127.0.0.1:0: directs within a
//! segment, refused across segments and to nobody; request/reply round trips; timeouts and
//! late replies; nobody but the target may answer into a requester's reply namespace.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod support;

use std::time::Duration;

use entente_client::{Client, ClientOptions, ErrorKind, Principal, RefusalCode, Requests};
use support::{TestHub, WAIT, message, options, quiet};
use tokio_stream::StreamExt;

async fn next_request(requests: &mut Requests) -> entente_client::Request {
    tokio::time::timeout(WAIT, requests.next())
        .await
        .expect("no request in time")
        .expect("the stream ended")
        .expect("an error item")
}

/// Alice and Bob of segment `shop` connected, Bob serving his direct channel: Alice's
/// client, Bob's, Bob's principal and his requests.
async fn alice_asks_bob(hub: &TestHub) -> (Client, Client, Principal, Requests) {
    alice_asks_bob_with(hub, options(), options()).await
}

/// [`alice_asks_bob`], Alice's client with `alice_options` and Bob's with `bob_options`.
async fn alice_asks_bob_with(
    hub: &TestHub,
    alice_options: ClientOptions,
    bob_options: ClientOptions,
) -> (Client, Client, Principal, Requests) {
    let (alice, bob) = (
        hub.agent("shop", "alice").await,
        hub.agent("shop", "bob").await,
    );
    let bob_id = bob.principal.clone();
    let alice = hub.connect_with(alice.identity, alice_options).await;
    let bob = hub.connect_with(bob.identity, bob_options).await;
    let requests = bob.serve_direct().await.unwrap();
    (alice, bob, bob_id, requests)
}

/// Signed batches sent: Alice's of requests, Bob's of replies.
#[derive(Debug, PartialEq, Eq)]
struct Batches {
    requests: u64,
    replies: u64,
}

/// Alice sends Bob `count` requests at once (`q0`, `q1`, …); Bob takes them all, then queues
/// a reply to each (its request upper-cased) one after the other and waits for their acks.
/// How many signed batches each sent, and the replies Alice got (each from Bob), sorted.
async fn bob_answers_in_a_row(
    alice: &Client,
    bob: &Client,
    bob_id: &Principal,
    requests: &mut Requests,
    count: usize,
) -> (Batches, Vec<Vec<u8>>) {
    let asking = alice.stats();
    let asked: Vec<_> = (0..count)
        .map(|i| {
            let (alice, bob_id) = (alice.clone(), bob_id.clone());
            tokio::spawn(async move { alice.request(&bob_id, format!("q{i}"), WAIT).await })
        })
        .collect();
    let mut taken = Vec::new();
    for _ in 0..count {
        taken.push(next_request(requests).await);
    }
    let requests = alice.stats().batches_sent - asking.batches_sent;
    let before = bob.stats();
    let mut acks = Vec::new();
    for request in taken {
        let answer = request.message.payload.to_ascii_uppercase();
        acks.push(request.responder.enqueue_reply(answer).await.unwrap());
    }
    for ack in acks {
        tokio::time::timeout(WAIT, ack).await.unwrap().unwrap();
    }
    let batches = Batches {
        requests,
        replies: bob.stats().batches_sent - before.batches_sent,
    };
    let mut replies = Vec::new();
    for asked in asked {
        let reply = asked.await.unwrap().unwrap();
        assert_eq!(&reply.sender, bob_id);
        replies.push(reply.payload);
    }
    replies.sort();
    (batches, replies)
}

/// One round trip from Alice to Bob: it makes Alice's reply subscription and finds Bob's key
/// bundle, so that her requests after it are queued without waiting for the hub.
async fn warm_up(alice: &Client, bob_id: &Principal, requests: &mut Requests) {
    let first = {
        let (alice, bob_id) = (alice.clone(), bob_id.clone());
        tokio::spawn(async move { alice.request(&bob_id, "warm", WAIT).await })
    };
    let request = next_request(requests).await;
    request.responder.reply("up").await.unwrap();
    first.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_direct_reaches_its_target_alone() {
    let hub = TestHub::start().await;
    let (alice, bob, carol) = (
        hub.agent("shop", "alice").await,
        hub.agent("shop", "bob").await,
        hub.agent("shop", "carol").await,
    );
    let (alice_id, bob_id) = (alice.principal.clone(), bob.principal.clone());
    let alice = hub.connect(alice.identity).await;
    let bob = hub.connect(bob.identity).await;
    let carol = hub.connect(carol.identity).await;

    let mut inbox = bob.subscribe_direct().await.unwrap();
    assert_eq!(inbox.pattern().as_str(), "_direct.shop.bob");
    // Nobody else may listen there.
    let err = carol.subscribe("_direct.shop.bob").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Denied);

    alice.direct(&bob_id, "just for you").await.unwrap();
    let m = message(&mut inbox).await;
    assert_eq!(m.sender, alice_id);
    assert_eq!(m.channel.as_str(), "_direct.shop.bob");
    assert_eq!(m.payload, b"just for you");
    assert_eq!(m.reply_to, None);

    // A direct to an agent nobody listens for is refused, not silently dropped.
    let carol_id = carol.principal().clone();
    let err = alice.direct(&carol_id, "anyone?").await.unwrap_err();
    assert_eq!(err.refusal_code(), Some(RefusalCode::NoRecipient));
}

/// A target that enrolled again with new keys (the remedy for a leaked key) is sealed for
/// under its new key bundle once the one held is older than the directory TTL, not under the
/// old one for as long as that stays valid.
#[tokio::test]
async fn directs_follow_a_target_that_enrolled_again_with_new_keys() {
    let hub = TestHub::start().await;
    let (alice, bob) = (
        hub.agent("shop", "alice").await,
        hub.agent("shop", "bob").await,
    );
    let (bob_id, old_epoch) = (bob.principal.clone(), bob.bundle.epoch());
    // A TTL of zero: every direct refreshes its target's bundle (by default, every 30 s).
    let alice = hub
        .connect_with(alice.identity, options().directory_ttl(Duration::ZERO))
        .await;
    let old = hub.connect(bob.identity).await;
    let mut inbox = old.subscribe_direct().await.unwrap();
    alice.direct(&bob_id, "before").await.unwrap();
    assert_eq!(message(&mut inbox).await.payload, b"before");
    old.close().await;

    let again = hub.agent("shop", "bob").await;
    let new_epoch = again.bundle.epoch();
    assert!(new_epoch > old_epoch);
    let bob = hub.connect(again.identity).await;
    let mut inbox = bob.subscribe_direct().await.unwrap();
    alice.direct(&bob_id, "after").await.unwrap();
    assert_eq!(message(&mut inbox).await.payload, b"after");
    assert_eq!(alice.key_bundle(&bob_id).await.unwrap().epoch(), new_epoch);
}

#[tokio::test]
async fn a_direct_across_segments_is_denied_by_default() {
    let hub = TestHub::start().await;
    let (bob, eve) = (
        hub.agent("shop", "bob").await,
        hub.agent("lab", "eve").await,
    );
    let bob_id = bob.principal.clone();
    let bob = hub.connect(bob.identity).await;
    let eve = hub.connect(eve.identity).await;
    let _inbox = bob.subscribe_direct().await.unwrap();

    let err = eve.direct(&bob_id, "hello from the lab").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Denied);
    let err = eve
        .request(&bob_id, "hello?", Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Denied);
}

#[tokio::test]
async fn requests_get_their_replies() {
    let hub = TestHub::start().await;
    let (alice, bob, bob_id, mut requests) = alice_asks_bob(&hub).await;
    let alice_id = alice.principal().clone();
    let server = tokio::spawn(async move {
        for _ in 0..3 {
            let request = next_request(&mut requests).await;
            assert_eq!(request.responder.requester(), &alice_id);
            let reply_to = request.responder.reply_to().unwrap().as_str().to_owned();
            assert!(reply_to.starts_with("_reply.shop.alice."), "{reply_to}");
            let answer = request.message.payload.to_ascii_uppercase();
            request.responder.reply(answer).await.unwrap();
        }
        // A plain direct is delivered, but can't be answered.
        let plain = next_request(&mut requests).await;
        assert_eq!(plain.message.payload, b"no answer needed");
        let err = plain.responder.reply("x").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    });

    let mut channels = Vec::new();
    for word in ["ping", "pong", "again"] {
        let reply = alice
            .request(&bob_id, word, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(reply.sender, bob_id);
        assert_eq!(reply.payload, word.to_ascii_uppercase().as_bytes());
        channels.push(reply.channel.to_string());
    }
    // One reply channel per request.
    channels.sort();
    channels.dedup();
    assert_eq!(channels.len(), 3);
    alice.direct(&bob_id, "no answer needed").await.unwrap();
    server.await.unwrap();
    let stats = alice.stats();
    assert_eq!(stats.replies_dropped, 0);
    // Bob's replies to Alice share one sender key for her reply namespace: each reply carried
    // it, and she unwrapped it once.
    assert_eq!(stats.sender_keys_accepted, 1);
    assert_eq!(stats.sender_keys_rejected, 0);
    assert_eq!(bob.stats().sender_keys_sent, 3);
}

#[tokio::test]
async fn replies_queued_one_after_the_other_share_a_batch_and_their_acks_resolve() {
    let hub = TestHub::start().await;
    let (alice, bob, bob_id, mut requests) = alice_asks_bob(&hub).await;
    // Each reply is queued without waiting for the hub: the three go out in one batch.
    let (batches, replies) = bob_answers_in_a_row(&alice, &bob, &bob_id, &mut requests, 3).await;
    assert_eq!(batches.replies, 1);
    assert_eq!(replies, [b"Q0", b"Q1", b"Q2"]);
    let after = bob.stats();

    // A message that asked for no reply can't be answered, queued or not.
    alice.direct(&bob_id, "no answer needed").await.unwrap();
    let plain = next_request(&mut requests).await;
    let err = plain.responder.enqueue_reply("x").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert_eq!(bob.stats().batches_sent, after.batches_sent);
}

#[tokio::test]
async fn replies_go_in_batches_of_the_round_trip_limit() {
    let hub = TestHub::start().await;
    // Alice's requests each go alone, and Bob has no requests of his own in flight: his
    // limit for replies is the least, 2. Five replies queued in a row (the writer takes them
    // at once): batches of 2, 2 and 1.
    let alice_options = options().batch_max(1);
    let bob_options = options().round_trip_batch_min(2);
    let (alice, bob, bob_id, mut requests) =
        alice_asks_bob_with(&hub, alice_options, bob_options).await;
    let (batches, replies) = bob_answers_in_a_row(&alice, &bob, &bob_id, &mut requests, 5).await;
    assert_eq!(
        batches,
        Batches {
            requests: 5,
            replies: 3
        }
    );
    assert_eq!(replies, [b"Q0", b"Q1", b"Q2", b"Q3", b"Q4"]);
}

#[tokio::test]
async fn replies_go_back_in_batches_as_large_as_their_requests_came() {
    let hub = TestHub::start().await;
    // Alice's five requests go in one batch; Bob's least limit is 2, but his replies go back
    // as the requests came: in one batch.
    let bob_options = options().round_trip_batch_min(2);
    let (alice, bob, bob_id, mut requests) =
        alice_asks_bob_with(&hub, options(), bob_options).await;
    warm_up(&alice, &bob_id, &mut requests).await;
    let (batches, replies) = bob_answers_in_a_row(&alice, &bob, &bob_id, &mut requests, 5).await;
    assert_eq!(
        batches,
        Batches {
            requests: 1,
            replies: 1
        }
    );
    assert_eq!(replies, [b"Q0", b"Q1", b"Q2", b"Q3", b"Q4"]);
}

#[tokio::test]
async fn a_request_times_out_and_its_late_reply_is_dropped() {
    let hub = TestHub::start().await;
    let (alice, _bob, bob_id, mut requests) = alice_asks_bob(&hub).await;

    let err = alice
        .request(&bob_id, "slow?", Duration::from_millis(500))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert!(err.to_string().contains("no reply"), "{err}");

    // Bob answers late: the hub still accepts it (the grant lives on), Alice drops it.
    let request = next_request(&mut requests).await;
    request.responder.reply("too late").await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while alice.stats().replies_dropped == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the late reply never came"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// However a request ends — answered, timed out, or dropped by its caller — it stops waiting:
/// the client keeps nothing for it.
#[tokio::test]
async fn a_request_waits_for_its_reply_only_until_it_ends() {
    let hub = TestHub::start().await;
    let (alice, _bob, bob_id, mut requests) = alice_asks_bob(&hub).await;
    let awaiting = |client: &Client| client.stats().awaiting_replies;

    // Answered: three asked at once wait until answered, and none waits after.
    let asking: Vec<_> = (0..3)
        .map(|i| {
            let (alice, bob_id) = (alice.clone(), bob_id.clone());
            tokio::spawn(async move {
                alice
                    .request(&bob_id, format!("q{i}"), Duration::from_secs(10))
                    .await
            })
        })
        .collect();
    for _ in 0..3 {
        let request = next_request(&mut requests).await;
        assert!(awaiting(&alice) >= 1);
        let answer = request.message.payload.clone();
        request.responder.reply(answer).await.unwrap();
    }
    for asked in asking {
        asked.await.unwrap().unwrap();
    }
    assert_eq!(awaiting(&alice), 0);

    // Timed out.
    let err = alice
        .request(&bob_id, "slow?", Duration::from_millis(300))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert_eq!(awaiting(&alice), 0);
    next_request(&mut requests).await;

    // Dropped by its caller while it waits.
    let asking = {
        let (alice, bob_id) = (alice.clone(), bob_id.clone());
        tokio::spawn(async move {
            alice
                .request(&bob_id, "never mind", Duration::from_secs(10))
                .await
        })
    };
    next_request(&mut requests).await;
    assert_eq!(awaiting(&alice), 1);
    asking.abort();
    assert!(asking.await.unwrap_err().is_cancelled());
    assert_eq!(awaiting(&alice), 0);
}

#[tokio::test]
async fn only_the_target_may_answer_once() {
    let hub = TestHub::start().await;
    let (alice, bob, carol) = (
        hub.agent("shop", "alice").await,
        hub.agent("shop", "bob").await,
        hub.agent("shop", "carol").await,
    );
    let (alice_bundle, bob_id) = (alice.bundle.clone(), bob.principal.clone());
    let alice = hub.connect(alice.identity).await;
    let bob = hub.connect(bob.identity).await;
    let carol = hub.connect(carol.identity).await;
    let mut requests = bob.serve_direct().await.unwrap();

    let asking = {
        let alice = alice.clone();
        let bob_id = bob_id.clone();
        tokio::spawn(async move {
            alice
                .request(&bob_id, "who?", Duration::from_secs(10))
                .await
        })
    };
    let request = next_request(&mut requests).await;
    let reply_to = request.responder.reply_to().unwrap().to_string();

    // Carol knows the reply channel, but received no request: the hub refuses her.
    let err = carol
        .publish_to(
            &reply_to,
            "it's me, bob",
            std::slice::from_ref(&alice_bundle),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Denied, "{err}");
    let err = carol
        .publish_to(
            "_reply.shop.alice.guess",
            "anything",
            std::slice::from_ref(&alice_bundle),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Denied, "{err}");

    request.responder.reply("bob here").await.unwrap();
    let reply = asking.await.unwrap().unwrap();
    assert_eq!(reply.sender, bob_id);
    assert_eq!(reply.payload, b"bob here");

    // A second answer to the same request is refused: the grant was used.
    let err = bob
        .publish_to(&reply_to, "and again", std::slice::from_ref(&alice_bundle))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Denied, "{err}");
    assert_eq!(alice.stats().replies_dropped, 0);
}

#[tokio::test]
async fn replies_written_together_share_a_batch_and_a_refused_batch_is_sent_again_reply_by_reply() {
    let hub = TestHub::start().await;
    let (alice, bob) = (
        hub.agent("shop", "alice").await,
        hub.agent("shop", "bob").await,
    );
    let bob_id = bob.principal.clone();
    let first = hub.connect(alice.identity.clone()).await;
    // Alice's second session sends messages that expire after a second.
    let hasty = options().message_ttl(Duration::from_secs(1));
    let second = hub.connect_with(alice.identity, hasty).await;
    let bob = hub.connect(bob.identity).await;
    let mut requests = bob.serve_direct().await.unwrap();
    let ask = |client: &entente_client::Client, word: &str, wait: Duration| {
        let (client, bob_id, word) = (client.clone(), bob_id.clone(), word.to_owned());
        tokio::spawn(async move { client.request(&bob_id, word, wait).await })
    };

    // Three requests in flight, answered together: one batch of replies, one signature.
    let asked: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|w| ask(&first, w, WAIT))
        .collect();
    let (r1, r2, r3) = (
        next_request(&mut requests).await,
        next_request(&mut requests).await,
        next_request(&mut requests).await,
    );
    let upper = |r: &entente_client::Request| r.message.payload.to_ascii_uppercase();
    let (u1, u2, u3) = (upper(&r1), upper(&r2), upper(&r3));
    // Alice also listens on the second request's reply channel alone: of the batch, that
    // subscription gets its own reply only.
    let only = r2.responder.reply_to().unwrap().clone();
    let mut literal = first.subscribe(only.as_str()).await.unwrap();
    let before = bob.stats();
    let u2_copy = u2.clone();
    let (a, b, c) = tokio::join!(
        r1.responder.reply(u1),
        r2.responder.reply(u2),
        r3.responder.reply(u3)
    );
    for answered in [a, b, c] {
        answered.unwrap();
    }
    let after = bob.stats();
    assert_eq!(after.batches_sent - before.batches_sent, 1);
    assert_eq!(after.publish_frames - before.publish_frames, 1);
    for (asked, word) in asked.into_iter().zip(["A", "B", "C"]) {
        let reply = asked.await.unwrap().unwrap();
        assert_eq!(reply.payload, word.as_bytes());
        assert_eq!(reply.sender, bob_id);
    }
    let got = message(&mut literal).await;
    assert_eq!((got.channel, got.payload), (only, u2_copy));
    quiet(&mut literal).await;
    let got = first.stats();
    assert_eq!((got.replies_dropped, got.rejected), (0, 0));
    assert_eq!(got.replies_unmatched, 2);

    // One request of each of Alice's sessions; the second's expires after a second, and its
    // reply grant with it. The batch answering both is refused for that one; each reply is
    // then sent again alone: the first session's arrives, the other is refused.
    let kept = ask(&first, "kept", WAIT);
    let lost = ask(&second, "lost", Duration::from_secs(2));
    let (r1, r2) = (
        next_request(&mut requests).await,
        next_request(&mut requests).await,
    );
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let (u1, u2) = (upper(&r1), upper(&r2));
    let lost_first = r1.message.payload == b"lost";
    let (a, b) = tokio::join!(r1.responder.reply(u1), r2.responder.reply(u2));
    let (lost_reply, kept_reply) = if lost_first { (a, b) } else { (b, a) };
    assert_eq!(
        lost_reply.unwrap_err().refusal_code(),
        Some(RefusalCode::Denied)
    );
    kept_reply.unwrap();
    assert_eq!(kept.await.unwrap().unwrap().payload, b"KEPT");
    let err = lost.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    let stats = bob.stats();
    assert_eq!(stats.replies_resent, 2);
    assert_eq!(stats.publish_refused, 1);
}
