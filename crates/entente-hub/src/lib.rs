//! The Entente hub: agents connect over mutual TLS 1.3, open one gRPC session stream, and
//! exchange sealed envelopes the hub routes but cannot read.
//!
//! The pipeline of one connection:
//!
//! 1. **TLS** (`tls`, `verifier`): rustls with aws-lc-rs, TLS 1.3 only. A client
//!    X509-SVID is required and checked at the handshake against the trust bundle and the live
//!    revocation list: a certificate from another CA, expired, revoked, or without exactly one
//!    SPIFFE ID of the trust domain never completes a handshake. Only the SNI name
//!    [`enroll_server_name`] gets a configuration without client certificates, and serves
//!    nothing but enrollment (not implemented yet: `UNIMPLEMENTED`).
//! 2. **Authenticate**: the certificate's principal becomes the connection's identity, captured
//!    by its service; nothing in a frame can change it.
//! 3. **Decode (bounded)** ([`codec`]): every inbound gRPC message goes through
//!    [`entente_wire::decode`] under [`Limits`](entente_wire::Limits); a bad frame ends that
//!    stream with a status, the hub is unaffected.
//! 4. **Authorize** ([`allow`]): the interim allow list, default deny.
//! 5. **Bind the sender, check replays, route** (`session`, [`router`]): a
//!    batch or sender key naming another sender is refused (`FORGED_SENDER`), a replayed
//!    envelope refuses its publish (`REPLAY`), and what passes is fanned out, unchanged, to the
//!    matching subscriptions through bounded queues. A subscriber whose queue stays full is
//!    disconnected (`RESOURCE_EXHAUSTED`, "slow consumer") and the publisher told
//!    (`DELIVERY_FAILED`): nothing is dropped silently.
//!
//! Revocation takes effect live ([`HubHandle::revoke`]): new handshakes check the list, and every
//! live connection of a revoked principal or certificate is closed at once (`PERMISSION_DENIED`).
//!
//! # Session semantics
//!
//! One `Session` stream ([`SESSION_PATH`]) carries `ClientFrame`s in and `ServerFrame`s out.
//! Refusal codes are [`RefusalCode`].
//!
//! - `Subscribe{subscription_id, pattern}`: the pattern must parse and the allow list must grant
//!   it ([`crate::allow`]); the ID must be unused on this session and the session under its
//!   subscription limit. Answer: `Ack{request_id: subscription_id}` or
//!   `Refusal{request_id: subscription_id, ..}`.
//! - `Unsubscribe{subscription_id}`: `Ack` or `Refusal(UNKNOWN_SUBSCRIPTION)`.
//! - `Publish{request_id, sender_keys, batches}`: every sender key and batch must parse, name
//!   the connection's principal as sender (else `FORGED_SENDER`), and be on a channel the
//!   allow list lets the principal publish to (else `DENIED`); no envelope may be a replay of
//!   its (sender, channel, epoch) (else `REPLAY`, the whole publish refused, nothing routed).
//!   Then the sender keys and batches of each channel are delivered, unchanged, as one
//!   `Deliver{subscription_id, ..}` to every subscription matching the channel (other
//!   connections of the same agent included, and this session's own subscriptions), and the
//!   publisher gets `Ack{request_id}` — or `Refusal(DELIVERY_FAILED)` saying how many
//!   deliveries failed. Any refusal of a publish refuses all of it.
//! - Replays: the hub keeps a replay window per (sender, channel, epoch), shared by every
//!   connection of the sender, over the newest 4 epochs of each (sender, channel) and the 1024
//!   most recently used channels of each sender; an older epoch is refused as a replay. Every
//!   refused replay is counted ([`HubStats::replays`]). Receivers keep their own windows and
//!   do not rely on the hub's. After `DELIVERY_FAILED` the envelopes' sequence numbers are
//!   recorded (the publish reached the other subscribers), so resending them is a replay.
//! - `Credit` is accepted and ignored for now: flow control is the bounded queues and HTTP/2
//!   windows.
//! - A frame with no known kind ends the stream with `INVALID_ARGUMENT`; so does a frame that
//!   fails bounded decoding (by the codec).
//!
//! Request and subscription IDs share the ID space of `Ack` and `Refusal`: a client that wants
//! to tell them apart draws both from one counter.
//!
//! Connection-level ends: revocation (`PERMISSION_DENIED`), slow consumer
//! (`RESOURCE_EXHAUSTED`), certificate expiry (`UNAUTHENTICATED`), hub shutdown
//! (`UNAVAILABLE`); after the statuses the hub sends GOAWAY and closes the connection.
//!
//! The hub's own identity is `spiffe://TD/agent/system/hub` ([`hub_id`]): the CA issues SVIDs to
//! principals only. Clients verify it with [`client_tls`].
//!
//! ```no_run
//! # async fn example(ca: std::sync::Arc<entente_ca::Ca>) -> Result<(), entente_hub::HubError> {
//! use entente_hub::{Hub, HubConfig};
//!
//! let hub = Hub::start(HubConfig::default(), ca).await?;
//! println!("listening on {}", hub.local_addr());
//! hub.shutdown().await;
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

pub mod allow;
pub mod client_tls;
pub mod codec;
mod config;
mod control;
mod error;
mod identity;
mod refusal;
mod replay;
pub mod router;
mod server;
mod session;
mod stats;
mod tls;
mod verifier;

pub use allow::{AllowList, AllowRule, Who};
pub use config::HubConfig;
pub use control::{CloseReason, ConnectionControl};
pub use error::HubError;
pub use identity::{HUB_NAME, HUB_SEGMENT, enroll_server_name, hub_id, hub_server_name};
pub use refusal::RefusalCode;
pub use server::{Hub, HubHandle, SESSION_PATH};
pub use stats::HubStats;
