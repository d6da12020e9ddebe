//! Entente's Rust SDK: connect to a hub as an enrolled principal, publish and subscribe to
//! sealed messages that the hub routes but cannot read.
//!
//! - [`Identity`]: an enrolled principal's credentials — its X509-SVID chain and TLS key, its
//!   message keys, its CA-signed key bundle and the trust bundle — checked for consistency when
//!   made or loaded, and kept in an identity directory (private files 0600, written atomically).
//! - [`Client`]: a cheap-to-clone handle on one session to the hub over mutual TLS (framed, or
//!   over HTTP/2: [`SessionTransport`]),
//!   made by [`Client::connect`] with [`ClientOptions`]. [`Client::publish`] and
//!   [`Client::publish_to`] seal, batch and sign, and wait for the hub's ack;
//!   [`Client::enqueue`] returns once queued, with a [`PublishAck`] to await later;
//!   [`Client::subscribe`] returns a
//!   [`Subscription`], a `Stream` of verified [`Message`]s — and of errors for what did not
//!   verify, which is reported, never silently dropped.
//! - Direct messages and request/reply: [`Client::direct`] seals for one principal alone and
//!   sends on its direct channel (`_direct.S.N`), read with [`Client::subscribe_direct`];
//!   [`Client::request`] sends a direct whose `reply_to` is a fresh channel of the requester's
//!   own reply namespace (`_reply.S.N.…`) and waits for the target's one reply, which the
//!   target sends with the [`Responder`] of a [`Request`] from [`Client::serve_direct`] or
//!   [`Client::serve`] ([`Responder::reply`] waits for the hub's ack,
//!   [`Responder::enqueue_reply`] returns a [`PublishAck`] once the reply is queued, so one
//!   task can answer a stream of requests). Never a shared `_INBOX`: only the requester can
//!   read its namespace, and the hub lets only the request's recipient answer, once.
//! - Grants and just-in-time elevation: [`Client::grant`] gives a principal a named, time-bound
//!   grant its policies test; [`Client::request_grant`] asks for one, which principals other
//!   than the requester approve with statements they sign ([`Client::approve`],
//!   [`Client::reject`]); [`Client::grants`] lists what the caller may see.
//! - Messages held for approval: [`Client::publish_with_purpose`] publishes one message with
//!   a purpose and says whether the hub holds it; approvers list held messages with
//!   [`Client::held`] (sealed) and decide them with [`Client::approve`] and
//!   [`Client::reject`], signing over the envelope's hash ([`held_hash`]).
//! - [`Error`]: one error type with a small [`ErrorKind`] to match on.
//!
//! Certificates are short-lived (an hour by default). A connected client renews its own over
//! the connection at half-life, with a fresh TLS key, and the session stays up; an identity
//! loaded from a directory gets the renewed certificate written back there
//! ([`ClientOptions::renew`], [`Client::certificate_not_after`]). Renewal and enrollment are
//! also how an intermediate CA rollover reaches agents: the hub's trust bundle contributes the
//! intermediates a root the agent already trusts signed — never roots — and the agent's key
//! bundle re-signed by the new intermediate is taken if it carries the same keys
//! ([`Identity::renewed_with`]).
//!
//! Key bundles of other principals are verified against the identity's trust bundle, never
//! taken on the hub's word: pre-fill them with [`Client::trust_key_bundle`], or let the client
//! fetch them from the hub's directory.
//!
//! ```no_run
//! use std::{path::Path, time::SystemTime};
//!
//! use entente_client::{Client, ClientOptions, Identity, Principal};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let identity = Identity::load(Path::new("bob"), SystemTime::now())?;
//! let bob = Client::connect(identity, "127.0.0.1:7443", ClientOptions::new()).await?;
//!
//! // Seal for Alice only: her key bundle is verified against Bob's trust bundle.
//! let alice = Principal::parse("spiffe://example.org/agent/shop/alice")?;
//! let alice_bundle = bob.key_bundle(&alice).await?;
//! bob.publish_to("orders.eu", "two espressos", &[alice_bundle]).await?;
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

mod audit;
mod bundles;
mod client;
pub mod danger;
mod enroll;
mod error;
mod grants;
mod identity;
mod inbox;
mod options;
mod outbox;
mod renew;
mod request;
mod room;
mod stats;
mod subscription;
mod transport;

pub use audit::AuditExport;
pub use client::{Client, PublishAck};
pub use enroll::enroll;
pub use error::{Error, ErrorKind};
pub use grants::{ApprovalOutcome, held_hash, request_hash};
pub use identity::{IDENTITY_VERSION, Identity, IdentityError, Renewed};
pub use inbox::{DurableDelivery, Message};
pub use options::{ClientOptions, SessionTransport};
pub use request::{Request, Requests, Responder};
pub use stats::ClientStats;
pub use subscription::Subscription;

pub use entente_ca::TrustBundle;
pub use entente_crypto::VerifiedKeyBundle;
pub use entente_hub::RefusalCode;
pub use entente_types::{Channel, ChannelPattern, MessageId, Principal};
pub use entente_wire::{
    ApprovalInfo, GrantInfo, GrantRequestInfo, Held, HeldMessage, ListGrantsResponse,
};
