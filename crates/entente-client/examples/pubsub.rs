//! Publish and subscribe between two enrolled agents.
//!
//! Start a hub and enroll `demo/alice` and `demo/bob` as the README's quickstart shows, then:
//!
//! ```sh
//! cargo run -p entente-client --example pubsub -- 127.0.0.1:7443 ./alice ./bob
//! ```
//!
//! Bob subscribes to `demo.examples.>`; Alice publishes three messages there, sealed for the
//! subscribers the hub's directory names (each key bundle verified against Alice's trust
//! bundle). Bob's SDK verifies Alice's batch signature and opens each message; anything that
//! does not verify arrives as an error item, never silently dropped.

use std::{path::Path, time::Duration, time::SystemTime};

use entente_client::{Client, ClientOptions, Identity};
use futures_util::StreamExt as _;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [hub, alice_dir, bob_dir] = args.as_slice() else {
        return Err("usage: pubsub HUB_ADDR ALICE_IDENTITY_DIR BOB_IDENTITY_DIR".into());
    };
    let now = SystemTime::now();
    let alice = Client::connect(
        Identity::load(Path::new(alice_dir), now)?,
        hub.as_str(),
        ClientOptions::new(),
    )
    .await?;
    let bob = Client::connect(
        Identity::load(Path::new(bob_dir), now)?,
        hub.as_str(),
        ClientOptions::new(),
    )
    .await?;

    // Subscribing is acknowledged by the hub before `subscribe` returns, so what Alice
    // publishes next reaches Bob.
    let mut inbox = bob.subscribe("demo.examples.>").await?;

    for (channel, text) in [
        ("demo.examples.greetings", "hello bob"),
        ("demo.examples.orders", "two espressos"),
        ("demo.examples.orders", "and a croissant"),
    ] {
        // Sealed for the channel's subscribers, signed, and acknowledged by the hub.
        alice.publish(channel, text).await?;
    }

    for _ in 0..3 {
        let item = tokio::time::timeout(Duration::from_secs(10), inbox.next())
            .await
            .map_err(|_| "no message within 10 s")?
            .ok_or("the subscription ended")?;
        let message = item?;
        println!(
            "{} on {}: {}",
            message.sender,
            message.channel,
            String::from_utf8_lossy(&message.payload)
        );
    }

    alice.close().await;
    bob.close().await;
    Ok(())
}
