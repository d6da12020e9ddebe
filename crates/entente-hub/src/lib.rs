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
//!    nothing but enrollment ([`ENROLL_PATH`]; every other path `UNIMPLEMENTED`).
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
//! Revocation takes effect live ([`HubHandle::revoke`], or an administrator's [`REVOKE_PATH`]):
//! the list is stored, new handshakes check it, and every live connection of a revoked
//! principal or certificate is closed at once (`PERMISSION_DENIED`). The stored list is in
//! force again after a restart.
//!
//! # The registry
//!
//! [`Hub::start`] takes an [`entente_store::Store`]: join tokens (their hashes), agent records,
//! key bundles and the revocation list live there. `Hub::start` is generic over the store; the
//! hub erases its type once inside, so [`HubHandle`] is one type whatever the backend.
//! Operators create join tokens with [`HubHandle::create_token`]; remote administrators with
//! [`CREATE_TOKEN_PATH`] (see [Administration](#administration)).
//!
//! # Enroll, Renew, Directory
//!
//! Three unary RPCs accompany the session (messages in `entente.proto`, decoded under the same
//! bounds). Statuses are coarse: a store or CA failure says only that the registry or the CA is
//! unavailable (`UNAVAILABLE`; a corrupt record `INTERNAL`).
//!
//! **Enroll** ([`ENROLL_PATH`], only under [`enroll_server_name`], no client certificate;
//! `UNIMPLEMENTED` over mutual TLS). `EnrollRequest{token, csr, ed25519_public,
//! x25519_public}` → `EnrollResponse{certificate_chain, key_bundle, trust_bundle_pem,
//! revocations}`.
//!
//! 1. Checked before the token is spent, so that an agent with a bad request keeps its token:
//!    the token's format (`INVALID_ARGUMENT`, "malformed join token"), both keys 32 bytes
//!    (`INVALID_ARGUMENT`), and the CSR as the CA will check it: PKCS#10 DER, ECDSA P-256,
//!    `ecdsa-with-SHA256`, valid self-signature (`INVALID_ARGUMENT`, "bad csr: …").
//! 2. The token is redeemed atomically, once: unknown (never issued, or purged after expiry),
//!    already used, or expired → `UNAUTHENTICATED` with "join token unknown", "join token
//!    already used", "join token expired". The token decides the principal; the CSR's names
//!    are ignored.
//! 3. Then the CA issues the X509-SVID and signs the key bundle (epoch 1, or one above the
//!    agent's latest; valid from one minute ago for [`HubConfig::key_bundle_ttl`], cut to the
//!    intermediate CA's validity); the bundle and the agent record (segment, serial, epoch) are
//!    stored; the response carries the chain (SVID, intermediate), the bundle, the trust bundle
//!    as PEM and the revocation list in force, if any.
//!
//!    **A failure in step 3 leaves the token spent**: a revoked principal
//!    (`PERMISSION_DENIED`), a suspended agent (`PERMISSION_DENIED`), a token naming an agent
//!    the hub does not enroll (`PERMISSION_DENIED`), the CA or the store failing
//!    (`UNAVAILABLE`). The status says "the join token is spent: ask the operator for a new
//!    one"; the operator issues a new token. Nothing reaches the agent unless both records
//!    were stored; a key bundle stored before a failed agent-record write is superseded by the
//!    next enrollment's.
//!
//! Enrollments and refusals are counted ([`HubStats::enrollments`],
//! [`HubStats::enroll_refusals`]).
//!
//! **Renew** ([`RENEW_PATH`], over mutual TLS). `RenewRequest{csr}` →
//! `RenewResponse{certificate_chain}`: a new X509-SVID for the *connection's* principal (the
//! CSR's names are ignored). Its serial is recorded in the agent record (created if there is
//! none, e.g. for an identity the operator issued directly; the newest 256 serials are kept)
//! and on the connection; the connection's credential expiry moves to the new certificate's
//! `not_after`, so the connection and its sessions stay up across renewals. A connection
//! whose credential expires unrenewed is closed (`UNAUTHENTICATED`,
//! [`HubStats::expired_disconnects`]). A revoked principal or suspended agent cannot renew
//! (`PERMISSION_DENIED`); a bad CSR is `INVALID_ARGUMENT`. Revoking a certificate renewed over
//! a connection closes that connection too.
//!
//! **Directory** ([`DIRECTORY_PATH`], over mutual TLS). `DirectoryRequest{principals |
//! channel}` → `DirectoryResponse{bundles}`, exactly one of the two asked (else
//! `INVALID_ARGUMENT`):
//!
//! - `principals`: the latest key bundle of each, in the order asked, each once; unknown
//!   principals, those of another trust domain, and expired bundles are omitted; a malformed
//!   ID is `INVALID_ARGUMENT`. Key bundles are public keys signed by the CA: any connected
//!   principal may look any up.
//! - `channel`: the caller must be allowed to publish to the channel (else
//!   `PERMISSION_DENIED`, counted in [`HubStats::denials`]); the answer is the latest bundle
//!   of every principal holding a subscription whose pattern matches the channel — on this
//!   hub, through [`Router::subscribers`](router::Router::subscribers).
//!
//! Revoked principals are omitted. At most `limits.max_recipients` principals are asked or
//! answered and the answer must fit in one frame (else `RESOURCE_EXHAUSTED`; nothing is cut
//! silently). Receivers verify every bundle against their trust bundle.
//!
//! # Administration
//!
//! Two unary RPCs over mutual TLS, for the principals listed in [`HubConfig::admins`] (default
//! none; `entente hub start` lists its admin human, `spiffe://TD/human/admin`). The caller is
//! the connection's principal; anyone else is refused with `PERMISSION_DENIED`, "not an
//! administrator". Under [`enroll_server_name`] both are `UNIMPLEMENTED`. Each answer is
//! counted ([`HubStats::admin_actions`], [`HubStats::admin_refusals`]).
//!
//! **CreateToken** ([`CREATE_TOKEN_PATH`]). `CreateTokenRequest{agent, ttl_seconds}` →
//! `CreateTokenResponse{token, expires_at_ms}`. `agent` must be an agent ID
//! (`spiffe://TD/agent/SEGMENT/NAME`) of the hub's trust domain, not of the reserved segment
//! [`HUB_SEGMENT`]; `ttl_seconds` 0 means [`DEFAULT_TOKEN_TTL`] (10 minutes), and more than
//! [`MAX_TOKEN_TTL`] (7 days) is refused. Any of these is `INVALID_ARGUMENT` with a message
//! naming the field. The token is made and stored (its hash only) exactly as by
//! [`HubHandle::create_token`]; it appears in the response and nowhere else.
//!
//! **Revoke** ([`REVOKE_PATH`]). `RevokeRequest{principals, serials}` →
//! `RevokeResponse{revocations, closed_connections}`. At least one entry; each principal an
//! agent or human ID of the hub's trust domain, not of the reserved segment (revoking the
//! hub's own identity would make every client refuse the hub); each serial 1 to 21 bytes
//! (else `INVALID_ARGUMENT`). An administrator may not revoke itself — its principal, or a
//! serial of its live connections or agent record — so that the last administrator can't lock
//! everyone out by mistake (`FAILED_PRECONDITION`; another administrator may). Then, one
//! revocation at a time: the entries are added to the list in force, the CA signs the next
//! version, and the list goes through the same path as [`HubHandle::revoke`] — stored, put in
//! force, live connections it revokes closed. A remote revocation only ever adds: the second
//! never un-revokes the first, whether the list in force came from a remote revocation, the
//! operator's handle or the store at start. The response carries the signed list and how
//! many connections were closed. If everything asked is revoked already, nothing is signed:
//! the answer is the list in force and 0. A store holding a newer list than the one in force
//! (another writer) refuses the write: `ABORTED`, retry. A list that would exceed the decoding
//! bounds is `RESOURCE_EXHAUSTED`; a store or CA failure `UNAVAILABLE`.
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
//! # Direct messages and request/reply
//!
//! No shared `_INBOX`: every principal owns a direct channel and a reply namespace
//! ([`entente_types::namespace`]) — `_direct.S.N` and `_reply.S.N.…` for agent `S/N`,
//! `_direct.human:N` and `_reply.human:N.…` for human `N` — to which only it may subscribe.
//!
//! - **Direct.** A publish on a direct channel is authorized like any other
//!   ([`crate::allow`]), except that an agent may always message agents of its own segment;
//!   across segments, from or to a human, an allow rule must grant publish on the `_direct`
//!   channel. A direct channel no session is subscribed to refuses the publish
//!   (`NO_RECIPIENT`, nothing routed) instead of dropping it.
//! - **Request.** An envelope whose header carries `reply_to` R is a request. R must lie in
//!   the sender's own reply namespace (else `DENIED`: nobody can aim replies at someone
//!   else). Before routing, the hub grants every principal subscribed to the request's
//!   channel — for a direct, its one target — the right to publish one batch on R, until
//!   the envelope's `expires_at` or [`MAX_REPLY_WAIT`] (60 s) from now, whichever is first.
//!   A session holds at most [`MAX_REPLY_GRANTS`] (1024) outstanding grants; a request beyond
//!   is refused (`TOO_MANY_REPLY_GRANTS`, nothing routed). Grants end with the requesting
//!   session.
//! - **Reply.** Publishing on a `_reply` channel needs a live grant for the connection's
//!   principal on that exact channel; allow rules never open one. The publish must carry
//!   exactly one batch there (sender keys optional); it takes the grant, so a second reply, a
//!   late one, or one from anyone else is refused (`DENIED`, counted in
//!   [`HubStats::denials`]).
//!
//! The hub learns who talks to whom, as for any channel; it never reads requests or replies,
//! which are sealed for their one recipient.
//!
//! Connection-level ends: revocation (`PERMISSION_DENIED`), slow consumer
//! (`RESOURCE_EXHAUSTED`), certificate expiry unrenewed (`UNAUTHENTICATED`), hub shutdown
//! (`UNAVAILABLE`); after the statuses the hub sends GOAWAY and closes the connection.
//!
//! The hub's own identity is `spiffe://TD/agent/system/hub` ([`hub_id`]): the CA issues SVIDs to
//! principals only. Clients verify it with [`client_tls`].
//!
//! ```no_run
//! # async fn example(ca: std::sync::Arc<entente_ca::Ca>) -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use entente_hub::{Hub, HubConfig};
//! use entente_store::EmbeddedStore;
//! use entente_types::AgentId;
//!
//! let store = Arc::new(EmbeddedStore::open("/var/lib/entente/registry.redb")?);
//! let hub = Hub::start(HubConfig::default(), ca, store).await?;
//! println!("listening on {}", hub.local_addr());
//!
//! // A one-time join token for an agent, to hand to it out of band.
//! let agent = AgentId::parse("spiffe://example.org/agent/shop/alice")?;
//! let token = hub.create_token(agent, Duration::from_secs(600)).await?;
//! println!("{}", token.as_str());
//!
//! hub.shutdown().await;
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

mod admin;
pub mod allow;
pub mod client_tls;
pub mod codec;
mod config;
mod connections;
mod control;
mod csr;
mod directory;
mod enroll;
mod error;
mod identity;
mod refusal;
mod registry;
mod renew;
mod replay;
mod reply;
pub mod router;
mod rpc;
mod server;
mod session;
mod stats;
mod tls;
mod verifier;

pub use admin::{CREATE_TOKEN_PATH, DEFAULT_TOKEN_TTL, MAX_TOKEN_TTL, REVOKE_PATH};
pub use allow::{AllowList, AllowRule, Who};
pub use config::HubConfig;
pub use control::{CloseReason, ConnectionControl};
pub use error::HubError;
pub use identity::{HUB_NAME, HUB_SEGMENT, enroll_server_name, hub_id, hub_server_name};
pub use refusal::RefusalCode;
pub use reply::{MAX_REPLY_GRANTS, MAX_REPLY_WAIT};
pub use rpc::{DIRECTORY_PATH, ENROLL_PATH, RENEW_PATH};
pub use server::{Hub, HubHandle, SESSION_PATH};
pub use stats::HubStats;
