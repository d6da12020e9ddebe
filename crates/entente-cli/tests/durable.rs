//! A durable channel survives its hub being killed (`kill -9`) again and again in the middle
//! of a stream of publishes: every publish the hub acknowledged is delivered to the durable
//! consumer afterwards, at least once.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant, SystemTime};

use entente_client::{Client, ClientOptions, Identity};
use futures_util::StreamExt as _;
use support::{enroll, start, start_at, stop};

/// Crashes during the stream of publishes.
const CRASHES: usize = 12;

/// How long each round publishes before its hub is killed.
const ROUND: Duration = Duration::from_millis(700);

/// Starts `entente hub start` on `data` at `addr` and waits until it listens.
fn run_hub(data: &Path, addr: &str) -> Child {
    start_at(data, addr).0
}

/// `kill -9`: no shutdown, no flush, nothing but what is on disk.
fn crash(mut child: Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

async fn connect(identity: &Path, addr: &str) -> Client {
    let identity = Identity::load(identity, SystemTime::now()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match Client::connect(identity.clone(), addr, ClientOptions::default()).await {
            Ok(client) => return client,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("connecting: {e}"),
        }
    }
}

#[test]
fn every_acknowledged_publish_survives_repeated_kill_9_of_the_hub() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("hub");
    // First start: the data directory, its admin and a port; then the durable channel.
    let (hub, info) = start(&data);
    let addr = info["listening"].as_str().unwrap().to_owned();
    let publisher = enroll(&data, &addr, "demo/publisher", tmp.path());
    let consumer = enroll(&data, &addr, "demo/consumer", tmp.path());
    stop(hub);
    let config = data.join("config.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(
        "\n[[durable]]\nname = \"jobs\"\nchannels = \"demo.jobs.>\"\nack_wait = \"5s\"\n",
    );
    std::fs::write(&config, text).unwrap();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut acknowledged = BTreeSet::new();
    let mut hub = run_hub(&data, &addr);
    runtime.block_on(async {
        // The consumer is made once; from then on the directory lists it as a member.
        let client = connect(&consumer, &addr).await;
        drop(
            client
                .subscribe_durable("demo.jobs.>", "worker")
                .await
                .unwrap(),
        );
        client.close().await;
    });
    for round in 0..CRASHES {
        // A publisher goes on until the hub dies under it; what the hub acknowledged counts.
        // The round's time runs from its first acknowledged publish (a loaded machine may take
        // most of a round to start the hub, connect and look the channel up).
        let (first_ack, acked_once) = std::sync::mpsc::channel();
        let publishing = std::thread::spawn({
            let (addr, publisher) = (addr.clone(), publisher.clone());
            move || {
                let runtime = tokio::runtime::Runtime::new().unwrap();
                runtime.block_on(async {
                    let client = connect(&publisher, &addr).await;
                    let mut acked = Vec::new();
                    for n in (round as u64 * 1_000_000).. {
                        let publish = client.publish("demo.jobs.run", n.to_be_bytes());
                        match tokio::time::timeout(Duration::from_secs(5), publish).await {
                            Ok(Ok(())) => {
                                if acked.is_empty() {
                                    let _ = first_ack.send(());
                                }
                                acked.push(n);
                            }
                            _ => break,
                        }
                    }
                    acked
                })
            }
        });
        let _ = acked_once.recv_timeout(Duration::from_secs(30));
        std::thread::sleep(ROUND);
        crash(hub);
        let acked = publishing.join().unwrap();
        assert!(!acked.is_empty(), "round {round}: nothing was acknowledged");
        acknowledged.extend(acked);
        hub = run_hub(&data, &addr);
    }

    // The consumer reads everything after the last restart.
    let received = runtime.block_on(async {
        let client = connect(&consumer, &addr).await;
        let mut jobs = client
            .subscribe_durable("demo.jobs.>", "worker")
            .await
            .unwrap();
        let mut received = BTreeSet::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !acknowledged.is_subset(&received) && Instant::now() < deadline {
            let Ok(Some(item)) = tokio::time::timeout(Duration::from_secs(10), jobs.next()).await
            else {
                break;
            };
            let message = item.unwrap();
            let n = u64::from_be_bytes(message.payload.as_slice().try_into().unwrap());
            received.insert(n);
            client.ack(&message).await.unwrap();
        }
        received
    });
    stop(hub);
    let lost: Vec<_> = acknowledged.difference(&received).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged publishes lost across {CRASHES} crashes: {:?}",
        lost.len(),
        acknowledged.len(),
        lost.iter().take(20).collect::<Vec<_>>()
    );
    eprintln!(
        "{} acknowledged publishes, all delivered after {CRASHES} kill -9 (plus {} unacknowledged ones that made it)",
        acknowledged.len(),
        received.len() - acknowledged.len()
    );
}
