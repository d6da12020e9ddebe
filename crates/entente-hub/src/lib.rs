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
//! 4. **Authorize** (`authz`, [Authorization](#authorization)): the hub's structural rules,
//!    then Cedar policies ([`entente_policy`]) through a per-session decision cache, default
//!    deny.
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
//! # Authorization
//!
//! Structural rules, in code, come first: a principal may always subscribe to its own
//! `_direct` channel and `_reply` namespace and nobody else may; publishing into a `_reply`
//! namespace needs a reply grant (below); a wildcard first token never matches a system
//! channel. Everything else is decided by the running Cedar policy set, default deny
//! (docs/POLICY.md):
//!
//! | what | action | resource |
//! |---|---|---|
//! | `Subscribe{pattern}` | `subscribe` | `Channel::"<pattern>"` |
//! | a publish group on a `_direct` channel | `direct` | `Channel::"<channel>"` |
//! | a publish group on any other channel | `publish` | `Channel::"<channel>"` |
//! | a publish group carrying a request (`reply_to`) | `request` (and `direct`/`publish` if it also carries envelopes that are not requests) | `Channel::"<channel>"` |
//! | a directory lookup by channel | `publish`/`direct`, or else `request` | `Channel::"<channel>"` |
//!
//! A publish is decided once per channel group of its frame; each session keeps one
//! `Subject` (its principal, no roles yet) and one decision cache, so a repeated decision is
//! a hash lookup. A denial is `DENIED` (`PERMISSION_DENIED` for the directory) whose reason
//! names the deciding policies, or says that no policy permits it (and when the request
//! crossed segments). Decisions are counted ([`HubStats::policy_allows`],
//! [`HubStats::policy_denials`]).
//!
//! The running set is the base policies ([`entente_policy::BASE_POLICIES`], source `base`)
//! plus the loaded sources. At start it is the set the store holds, or else
//! [`HubConfig::policies`] (then stored); a stored set that no longer loads is a start error
//! ([`HubError::StoredPolicies`]), never a silent fallback. [`HubHandle::load_policies`] and
//! the administrators' [`LOAD_POLICIES_PATH`] replace it all or nothing: validated, stored,
//! put in force, the policy epoch bumped. A revocation bumps the epoch too. **Whenever the
//! epoch changes, every session decides its subscriptions again** and ends each one no longer
//! allowed with `SubscriptionEnded{subscription_id, code: DENIED, reason}`
//! ([`HubStats::subscriptions_ended`]).
//!
//! # The registry
//!
//! [`Hub::start`] takes an [`entente_store::Store`]: join tokens (their hashes), agent records,
//! key bundles, the revocation list, the policy sources (config key `policies`) and the grant
//! book live there. `Hub::start` is generic over the store; the
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
//!    intermediate CA's validity, and signed again so by a renewal past half its life); the
//!    bundle and the agent record (segment, serial, epoch) are
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
//!   hub, through [`Router::subscribers`](router::Router::subscribers) — besides the caller,
//!   who seals to them and to itself.
//!
//! Revoked principals are omitted. At most `limits.max_recipients` principals are asked or
//! answered (one fewer for a channel: the caller is a sender key's recipient too) and the
//! answer must fit in one frame (else `RESOURCE_EXHAUSTED`; nothing is cut silently).
//! Receivers verify every bundle against their trust bundle.
//!
//! # Administration
//!
//! Six unary RPCs over mutual TLS. The caller is the connection's principal. The principals
//! listed in [`HubConfig::admins`] (default none; `entente hub start` lists its admin human,
//! `spiffe://TD/human/admin`) are the break-glass: they may do every administrative act
//! whatever the policies say, so no policy load can lock every administrator out. Anyone else
//! is **authorized by the running policies**, decided at each call:
//!
//! | RPC | Cedar |
//! |---|---|
//! | [`CREATE_TOKEN_PATH`] for `P` | `enroll` on `P` (`Agent::"…"`, in its segment, or `Human::"…"`) |
//! | [`REVOKE_PATH`] | `revoke` on each principal named, all or nothing; serials: listed administrators only |
//! | [`LOAD_POLICIES_PATH`], [`SHOW_POLICIES_PATH`], [`CHECK_POLICY_PATH`], [`QUARANTINE_PATH`] | `admin` on `Hub::"hub"`, which is in no segment (an agent needs a `@cross_segment` permit naming it) |
//!
//! Only a listed administrator may create a token for, or revoke, a listed administrator. A
//! refusal is `PERMISSION_DENIED` naming the deciding policies, or saying that none permits
//! it. Under [`enroll_server_name`] all are `UNIMPLEMENTED`. Each answer is counted
//! ([`HubStats::admin_actions`], [`HubStats::admin_refusals`]).
//!
//! **CreateToken** ([`CREATE_TOKEN_PATH`]). `CreateTokenRequest{agent, ttl_seconds}` →
//! `CreateTokenResponse{token, expires_at_ms}`. `agent` must be an agent ID
//! (`spiffe://TD/agent/SEGMENT/NAME`) of the hub's trust domain, not of the reserved segment
//! [`HUB_SEGMENT`], or a human ID (`spiffe://TD/human/NAME`), who enrolls the same way; `ttl_seconds` 0 means [`DEFAULT_TOKEN_TTL`] (10 minutes), and more than
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
//! everyone out by mistake (`FAILED_PRECONDITION`; another administrator may). Every entry is
//! authorized before anything is revoked: one refused, none revoked. Then, one
//! revocation at a time: the entries are added to the list in force, the CA signs the next
//! version, and the list goes through the same path as [`HubHandle::revoke`] — stored, put in
//! force, live connections it revokes closed. A remote revocation only ever adds: the second
//! never un-revokes the first, whether the list in force came from a remote revocation, the
//! operator's handle or the store at start. The response carries the signed list and how
//! many connections were closed. If everything asked is revoked already, nothing is signed:
//! the answer is the list in force and 0. A store holding a newer list than the one in force
//! (another writer) refuses the write: `ABORTED`, retry. A list that would exceed the decoding
//! bounds is `RESOURCE_EXHAUSTED`; a store or CA failure `UNAVAILABLE`. Every revocation
//! bumps the policy epoch.
//!
//! **LoadPolicies** ([`LOAD_POLICIES_PATH`]). `LoadPoliciesRequest{sources}` →
//! `LoadPoliciesResponse{epoch, policies}`: the same path as [`HubHandle::load_policies`].
//! Invalid policies, a source named `base`, two sources of one name, or a set outside the
//! bounds are `INVALID_ARGUMENT` with a message whose first line sums up and each further line
//! is one problem, `file:line:col: …` (at most 64 listed); the running set and epoch are
//! unchanged. A store failure is `UNAVAILABLE`.
//!
//! **ShowPolicies** ([`SHOW_POLICIES_PATH`]). `ShowPoliciesRequest{}` →
//! `ShowPoliciesResponse{epoch, sources, policies}`: the running sources (`base` first) and
//! each policy's ID, source, line, column, effect and `@cross_segment` mark.
//!
//! **CheckPolicy** ([`CHECK_POLICY_PATH`]). `CheckPolicyRequest{principal, action,
//! resource_type, resource}` → `CheckPolicyResponse{allowed, policies, reason,
//! cross_segment, epoch, explanation}`: how the hub would decide, structural rules first, with
//! the principal's facts now (its active grants). `resource_type` is `channel` (a pattern for
//! `subscribe`), `agent`, `human`, `segment` or `hub` (the resource then [`HUB_NAME`]), in any
//! case; a malformed field or an action that does not apply to the resource is
//! `INVALID_ARGUMENT`.
//!
//! **Quarantine** ([`QUARANTINE_PATH`]; `admin` on `Hub::"hub"`). `QuarantineRequest{release,
//! impose, reason}` → `QuarantineResponse{quarantined, closed_connections, released}`: the
//! quarantined agents, after lifting or imposing one quarantine (docs/ANOMALY.md).
//!
//! # Anomaly detection and quarantine
//!
//! The hub counts each agent's traffic in windows ([`AnomalyConfig::window`]) and scores it
//! against a baseline learned online into a risk score, 0 to 100, that policies read as
//! `context.risk`. At [`AnomalyConfig::throttle_at`] the agent is held to
//! [`AnomalyConfig::throttled`] (limit `anomaly-throttle`); at
//! [`AnomalyConfig::quarantine_at`] it is quarantined: its connections close with
//! [`CloseReason::Quarantined`], it can't reconnect, renew or enroll until an administrator
//! lifts it, the quarantine is stored and audited, and [`HubConfig::quarantine_webhook`] is
//! told. docs/ANOMALY.md has the scoring.
//!
//! # Grants and just-in-time elevation
//!
//! The hub holds a grant book ([`entente_policy::GrantBook`]; [`HubHandle::grant_book`]):
//! named, time-bound grants its policies test with `context.grants.contains("NAME")`, and
//! just-in-time requests that principals other than the requester approve with signed
//! statements. Four unary RPCs over mutual TLS serve it, **authorized by the policies**, not by
//! [`HubConfig::admins`]: [`GRANT_PATH`] (`grant` on the receiver), [`REQUEST_GRANT_PATH`]
//! (for the caller itself; no permit needed), [`APPROVE_PATH`] (a statement signed by the
//! caller, verified against its CA-signed key bundle; `approve` on the requester) and
//! [`LIST_GRANTS_PATH`] (its own, and others' with `admin`). The book enforces separation of
//! duties whatever the policies say. Every change is stored before it is in force and refused
//! whole if the store fails; a grant change bumps the policy epoch, so sessions read their
//! grants again and decide their subscriptions again. A task expires grants on time: a
//! subscription a grant opened ends with `SubscriptionEnded(DENIED)` when it ends, with nobody
//! acting. A stored book that does not decode is a start error ([`HubError::StoredGrants`]).
//! docs/POLICY.md ("Grants in the hub") and docs/PROTOCOL.md §9 have the details; counters are
//! [`HubStats::grant_actions`], [`HubStats::grant_refusals`], [`HubStats::grants_expired`] and
//! [`HubStats::grant_store_failures`].
//!
//! # Session semantics
//!
//! One `Session` stream ([`SESSION_PATH`]) carries `ClientFrame`s in and `ServerFrame`s out.
//! Refusal codes are [`RefusalCode`].
//!
//! - `Subscribe{subscription_id, pattern}`: the pattern must parse and be authorized
//!   ([Authorization](#authorization)); the ID must be unused on this session and the session under its
//!   subscription limit. Answer: `Ack{request_id: subscription_id}` or
//!   `Refusal{request_id: subscription_id, ..}`. The subscription takes effect before the
//!   `Ack` is sent (which may wait for the audit log), so its first deliveries may come
//!   before it; a durable subscription's deliveries start only once its `Ack` is queued.
//! - `Unsubscribe{subscription_id}`: `Ack` or `Refusal(UNKNOWN_SUBSCRIPTION)`.
//! - `Publish{request_id, sender_keys, batches}`: every sender key and batch must parse, name
//!   the connection's principal as sender (else `FORGED_SENDER`), and each channel group must
//!   be authorized (else `DENIED`); no envelope may be a replay of
//!   its (sender, channel, epoch) (else `REPLAY`, the whole publish refused, nothing routed).
//!   A sender key for a reply namespace root (`_reply.S.N`, one key for every reply to one
//!   requester) travels only with a reply into that namespace, and is delivered with it (else
//!   `DENIED`).
//!   Then the sender keys and batches of each channel are delivered, unchanged, as one
//!   `Deliver{subscription_id, ..}` to every subscription matching the channel (other
//!   connections of the same agent included, and this session's own subscriptions), and the
//!   publisher gets `Ack{request_id}` — or `Refusal(DELIVERY_FAILED)` saying how many
//!   deliveries failed. Any refusal of a publish refuses all of it.
//! - Replays: the hub keeps a replay window per (sender, channel, epoch), shared by every
//!   connection of the sender, over the newest 64 epochs of each (sender, channel) and up to
//!   1024 most recently used channels of each sender, 4096 epochs in all (the least recently
//!   used eighth of the channels forgotten at once when either is reached); an older epoch is
//!   refused as a replay, and so is a message whose ID is already held for approval. Every
//!   refused replay is counted ([`HubStats::replays`]). Receivers keep their own windows and
//!   do not rely on the hub's. After `DELIVERY_FAILED` the envelopes' sequence numbers are
//!   recorded (the publish reached the other subscribers), so resending them is a replay.
//! - `Credit` is accepted and ignored for now: flow control is the bounded queues and HTTP/2
//!   windows.
//! - `SubscriptionEnded{subscription_id, code, reason}` (hub to client): the hub ended a
//!   subscription it had accepted, because authorization changed; nothing more is delivered
//!   for it and the ID is free again.
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
//! - **Direct.** A publish on a direct channel is the action `direct`; the base policies let
//!   an agent message the agents of its own segment; across segments, from or to a human, a
//!   policy must permit it. A direct channel no session is subscribed to refuses the publish
//!   (`NO_RECIPIENT`, nothing routed) instead of dropping it.
//! - **Request.** An envelope whose header carries `reply_to` R is a request. R must lie in
//!   the sender's own reply namespace (else `DENIED`: nobody can aim replies at someone
//!   else), and the policies must permit `request` on its channel. Before routing, the hub grants every principal subscribed to the request's
//!   channel — for a direct, its one target — the right to publish one batch on R, until
//!   the envelope's `expires_at` or [`MAX_REPLY_WAIT`] (60 s) from now, whichever is first.
//!   A session holds at most [`MAX_REPLY_GRANTS`] (1024) outstanding grants; a request beyond
//!   is refused (`TOO_MANY_REPLY_GRANTS`, nothing routed). Grants end with the requesting
//!   session.
//! - **Reply.** Publishing on a `_reply` channel needs a live grant for the connection's
//!   principal on that exact channel; policies never open one. The publish must carry
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
//! hub.shutdown().await?;
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

mod admin;
mod anomaly;
mod audit;
mod audit_rpc;
mod authz;
mod calls;
pub mod client_tls;
pub mod codec;
mod commit;
mod config;
mod connections;
mod control;
mod csr;
pub mod danger;
pub mod datakeys;
mod directory;
mod durable;
mod enroll;
mod error;
pub mod framed;
mod grant_state;
mod grants;
pub mod handoff;
mod held;
mod identity;
mod keys;
mod limits;
mod metrics;
mod notify;
mod otlp;
mod policies;
mod post;
mod quarantine;
pub mod queue;
mod refusal;
mod registry;
mod renew;
mod replay;
mod reply;
mod rollover;
pub mod router;
mod rpc;
mod server;
mod session;
mod stats;
mod tls;
mod tls_stream;
mod unauth;
mod verifier;

pub use admin::{CREATE_TOKEN_PATH, DEFAULT_TOKEN_TTL, MAX_TOKEN_TTL, REVOKE_PATH};
pub use anomaly::AnomalyConfig;
pub use audit::{AUDIT_KEK, AUDIT_SIGNING_KEY, AuditConfig};
pub use audit_rpc::{AUDIT_EXPORT_PATH, AUDIT_PROOF_PATH, AUDIT_RECORDS_PATH};
pub use authz::{BASE_SOURCE, LoadPoliciesError, PolicyOrigin, RunningPolicies};
pub use config::{CaRollover, HubConfig, KeyStores};
pub use control::{CloseReason, ConnectionControl};
pub use durable::{StreamConfig, StreamSync};
pub use error::HubError;
pub use grants::{
    APPROVE_PATH, GRANT_PATH, LIST_GRANTS_PATH, REQUEST_GRANT_PATH, REVOKE_GRANT_PATH,
};
pub use held::{
    KEEP_DECIDED, LIST_HELD_PATH, MAX_HELD_BYTES, MAX_HELD_BYTES_PER_SEGMENT,
    MAX_HELD_BYTES_PER_SENDER, MAX_HOLD, MAX_KEPT, MAX_KEPT_PER_SENDER, MAX_PENDING,
    MAX_PENDING_PER_SEGMENT, MAX_PENDING_PER_SENDER, MAX_STATEMENTS,
};
pub use identity::{HUB_NAME, HUB_SEGMENT, enroll_server_name, hub_id, hub_server_name};
pub use keys::KEYS_PATH;
pub use limits::{ChannelRate, Limit, Rate, RateLimits};
pub use notify::Webhook;
pub use otlp::{
    DEFAULT_INTERVAL as OTLP_DEFAULT_INTERVAL, MAX_HEADERS as OTLP_MAX_HEADERS,
    MIN_INTERVAL as OTLP_MIN_INTERVAL, OtlpExport,
};
pub use policies::{CHECK_POLICY_PATH, LOAD_POLICIES_PATH, SHOW_POLICIES_PATH};
pub use quarantine::{MAX_QUARANTINED, QUARANTINE_KEY, QUARANTINE_PATH};
pub use refusal::RefusalCode;
pub use reply::{MAX_REPLY_GRANTS, MAX_REPLY_WAIT};
pub use rollover::{CA_ROLLOVER_APPLIED_KEY, CA_ROLLOVER_KEY, load_ca};
pub use rpc::{DIRECTORY_PATH, ENROLL_PATH, RENEW_PATH};
pub use server::{Hub, HubHandle, MAX_ENROLL_REQUEST_BYTES, SESSION_PATH};
pub use stats::HubStats;
