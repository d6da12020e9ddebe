//! A real Entente hub in-process on `127.0.0.1:0`, for tests of the hub, of the SDK and of
//! applications built on it.
//!
//! Nothing is mocked: [`TestHub`] runs the hub of [`entente_hub`] with a real CA (root and
//! intermediate over a local key store) and a real registry ([`EmbeddedStore`]), each in a
//! temporary directory deleted with the hub. Agents join it the way they join any hub: a join
//! token, then [`entente_client::enroll`] over the network ([`TestHub::enroll`]). The only
//! shortcut is the key store's fast key derivation, which protects nothing worth the time in a
//! temporary directory.
//!
//! - [`TestHub`]: start one with [`TestHub::start`] or [`TestHub::builder`] (Cedar policies,
//!   the certificate lifetime, any [`HubConfig`] setting, a shared [`TestCa`]); enroll agents
//!   and humans ([`TestHub::enroll_human`]), connect [`Client`]s, load policies live, revoke,
//!   restart over the same registry (grants included), shut down.
//! - [`TestCa`]: the CA alone, for tests that need certificates without a hub, several hubs
//!   of one CA, or credentials the hub's registry never saw ([`TestCa::identity_at`] issues
//!   them at any time, expired ones included). With [`enroll`] and [`TestCa::revoke`] it also
//!   serves tests that start [`Hub`](entente_hub::Hub)s themselves.
//! - [`raw`]: below the SDK — a TLS probe and a gRPC client that sends whatever bytes it is
//!   given, for testing how a hub treats what no honest client sends.
//!
//! Two agents exchange a sealed message through a test hub:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> anyhow::Result<()> {
//! use anyhow::Context as _;
//! use entente_testkit::TestHub;
//! use tokio_stream::StreamExt as _;
//!
//! let hub = TestHub::builder()
//!     .policies(
//!         r#"permit (principal in Segment::"shop",
//!                    action in [Action::"publish", Action::"subscribe"],
//!                    resource in Namespace::"shop");"#,
//!     )
//!     .start()
//!     .await?;
//! let alice = hub.connect(hub.enroll("shop", "alice").await?).await?;
//! let bob = hub.connect(hub.enroll("shop", "bob").await?).await?;
//!
//! let mut orders = bob.subscribe("shop.orders.>").await?;
//! alice.publish("shop.orders.eu", "two espressos").await?;
//!
//! let message = orders.next().await.context("the subscription ended")??;
//! assert_eq!(message.sender, *alice.principal());
//! assert_eq!(message.payload, b"two espressos");
//! assert_eq!(hub.stats().enrollments, 2);
//!
//! hub.shutdown().await?;
//! # Ok(())
//! # }
//! ```
//!
//! Errors are [`anyhow::Error`]s with a line saying what the kit was doing: a test kit's
//! errors are read by people, not matched on.
#![forbid(unsafe_code)]

mod ca;
mod hub;
pub mod raw;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use ca::{TRUST_DOMAIN, TestCa, certificate_serial};
pub use hub::{
    ADMIN_NAME, TEST_SOURCE, TOKEN_TTL, TestHub, TestHubBuilder, enroll, enroll_human, token,
};

pub use entente_client::{Client, ClientOptions, Identity};
pub use entente_hub::{HubConfig, HubHandle, HubStats};
pub use entente_store::EmbeddedStore;

/// How long the kit waits for anything a test expects to happen: a frame, an answer, a
/// condition of [`eventually`].
pub const WAIT: Duration = Duration::from_secs(15);

/// A policy for tests: segment `shop` may publish and subscribe under `orders.>`, which belongs
/// to segment `orders`.
pub const SHOP_ORDERS: &str = r#"
    @id("shop-orders")
    @cross_segment
    permit (principal in Segment::"shop",
            action in [Action::"publish", Action::"subscribe"],
            resource in Namespace::"orders");
"#;

/// `t` in Unix milliseconds (0 before 1970, saturating far in the future).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Now in Unix milliseconds.
pub fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

/// A sealer of `identity` on `channel` for no recipients, and its sender key: batches the hub
/// checks and routes as any (it never reads payloads), for tests that send them raw.
pub fn sealer(
    identity: &Identity,
    channel: &str,
) -> anyhow::Result<(entente_crypto::Sealer, entente_wire::SenderKey)> {
    let channel = entente_types::Channel::parse(channel)?;
    Ok(entente_crypto::Sealer::new(
        identity.principal().clone(),
        identity.key_bundle().epoch(),
        identity.message_keys().clone(),
        channel,
        &[],
        entente_crypto::SealerOptions::default(),
        now_ms(),
    )?)
}

/// Waits until `condition` holds, polling every 10 ms; fails after [`WAIT`] with `what`.
///
/// For what the hub does after answering, such as counting a refused handshake.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> anyhow::Result<()> {
/// let mut polls = 0;
/// entente_testkit::eventually("three polls", || {
///     polls += 1;
///     polls == 3
/// })
/// .await?;
/// # Ok(())
/// # }
/// ```
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("timed out after {WAIT:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_ms_saturates_instead_of_failing() {
        assert_eq!(unix_ms(UNIX_EPOCH), 0);
        assert_eq!(unix_ms(UNIX_EPOCH - Duration::from_secs(1)), 0);
        assert_eq!(unix_ms(UNIX_EPOCH + Duration::from_millis(1_500)), 1_500);
    }
}
