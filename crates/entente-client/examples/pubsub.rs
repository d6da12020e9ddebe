//! Two agents exchange sealed messages through a hub.
//!
//! To run on its own, the example starts a throwaway hub in-process (a new CA in a temporary
//! directory) and makes both identities on the spot. A real agent loads the identity that
//! `entente enroll` wrote, and dials a running hub:
//!
//! ```text
//! let identity = Identity::load(Path::new("alice"), SystemTime::now())?;
//! let client = Client::connect(identity, "hub.example.org:7443", ClientOptions::new()).await?;
//! ```
//!
//! Run it with `cargo run -p entente-client --example pubsub`.

use std::error::Error;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use entente_ca::{Ca, CaOptions};
use entente_client::{Client, ClientOptions, Identity};
use entente_crypto::{KeyBundleBody, MessageKeys};
use entente_hub::{AllowList, AllowRule, Hub, HubConfig, Who};
use entente_keystore::local::{Argon2Params, LocalKeyStore, Unlock};
use entente_store::{EmbeddedStore, Store};
use entente_types::{AgentId, ChannelPattern, Principal, TrustDomain};
use tokio_stream::StreamExt;
use zeroize::Zeroizing;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    // --- a throwaway hub: CA, registry, allow list (segment `shop` may use `orders.>`) ---
    let dir = tempfile::tempdir()?;
    let keystore = LocalKeyStore::create(
        &dir.path().join("keystore"),
        &Unlock::passphrase("example"),
        // Weak key derivation keeps the example quick; never do this with real keys.
        Argon2Params::danger_fast_for_tests(),
    )?;
    let td = TrustDomain::new("example.org")?;
    let ca = Arc::new(Ca::init(
        Arc::new(keystore),
        &td,
        CaOptions::default(),
        SystemTime::now(),
    )?);
    let store = Arc::new(EmbeddedStore::open(dir.path().join("registry.redb"))?);
    let orders = ChannelPattern::parse("orders.>")?;
    let config = HubConfig {
        allow: AllowList::new().with(AllowRule {
            who: Who::Segment("shop".into()),
            publish: vec![orders.clone()],
            subscribe: vec![orders],
        }),
        ..HubConfig::default()
    };
    let hub = Hub::start(config, ca.clone(), store.clone()).await?;
    println!("hub listening on {}", hub.local_addr());

    // --- two agents ---
    let alice = enroll(&ca, &store, &td, "alice").await?;
    let bob = enroll(&ca, &store, &td, "bob").await?;
    let alice = Client::connect(alice, hub.local_addr(), ClientOptions::new()).await?;
    let bob = Client::connect(bob, hub.local_addr(), ClientOptions::new()).await?;

    // Alice listens; Bob publishes to every member of the channel (from the hub's directory,
    // each key bundle verified against the CA). The hub routes what it cannot read.
    let mut inbox = alice.subscribe("orders.*").await?;
    for order in ["two espressos", "one croissant", "the bill, please"] {
        bob.publish("orders.eu", order).await?;
    }
    for _ in 0..3 {
        match tokio::time::timeout(Duration::from_secs(10), inbox.next()).await? {
            Some(Ok(m)) => println!(
                "{} got from {} on {}: {}",
                alice.principal(),
                m.sender,
                m.channel,
                String::from_utf8_lossy(&m.payload)
            ),
            Some(Err(e)) => println!("refused: {e}"),
            None => break,
        }
    }

    // Not on the allow list: the hub refuses, with its code.
    if let Err(e) = bob.publish_to("payments.eu", "refund", &[]).await {
        println!("as expected: {e} (code {:?})", e.refusal_code());
    }

    println!("bob: {:?}", bob.stats());
    println!("alice: {:?}", alice.stats());
    alice.close().await;
    bob.close().await;
    hub.shutdown().await;
    Ok(())
}

/// What enrollment produces, made in-process: an X509-SVID for a fresh TLS key, fresh message
/// keys and their CA-signed key bundle (registered with the hub, as enrollment does).
async fn enroll(
    ca: &Ca,
    store: &EmbeddedStore,
    td: &TrustDomain,
    name: &str,
) -> Result<Identity, Box<dyn Error>> {
    let principal = Principal::from(AgentId::new(td, "shop", name)?);
    let tls_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let csr = rcgen::CertificateParams::default().serialize_request(&tls_key)?;
    let svid = ca.issue_svid(csr.der(), &principal, SystemTime::now())?;
    let keys = MessageKeys::generate()?;
    let now = u64::try_from(SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis())?;
    let bundle = ca.sign_key_bundle(KeyBundleBody {
        principal: principal.clone(),
        ed25519_public: keys.ed25519_public(),
        x25519_public: keys.x25519_public(),
        epoch: 1,
        not_before_ms: now.saturating_sub(60_000),
        not_after_ms: now + 3_600_000,
    })?;
    store
        .put_key_bundle(
            principal.as_str(),
            bundle.epoch,
            &entente_wire::encode(&bundle),
        )
        .await?;
    Ok(Identity::new(
        principal,
        svid.chain_der,
        Zeroizing::new(tls_key.serialize_der()),
        keys,
        bundle,
        ca.trust_bundle().clone(),
        SystemTime::now(),
    )?)
}
