//! Errors of starting and operating the hub.

use std::io;
use std::net::SocketAddr;

use entente_ca::TokenError;
use entente_store::StoreError;

/// Why the hub could not start, or refused an operator's request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HubError {
    /// A configuration value is unusable.
    #[error("invalid hub configuration: {0}")]
    Config(&'static str),
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The error of the operating system.
        source: io::Error,
    },
    /// The TLS configuration could not be built.
    #[error("tls: {0}")]
    Tls(String),
    /// The hub's own certificate could not be issued.
    #[error("issuing the hub certificate: {0}")]
    Certificate(String),
    /// A join token could not be created: the reserved segment, or a lifetime out of range.
    #[error("join token: {0}")]
    Token(#[from] TokenError),
    /// The agent or human of a join token is not in the hub's trust domain.
    #[error("`{0}` is not in this hub's trust domain")]
    ForeignAgent(String),
    /// The store failed or refused.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The quarantine webhook is unusable (its address, its certificates).
    #[error("{0}")]
    Webhook(String),
    /// The OpenTelemetry export is unusable (its address, certificates, headers or
    /// interval).
    #[error("{0}")]
    Otlp(String),
    /// The quarantine list in the store does not decode.
    #[error("the stored quarantine list does not decode: {0}")]
    StoredQuarantine(String),
    /// The revocation list in the store does not verify against the trust bundle.
    #[error("the stored revocation list does not verify: {0}")]
    StoredRevocations(String),
    /// The policy set in the store no longer loads (it does not decode, or no longer
    /// validates against this hub's schema and rules). The hub does not fall back to another
    /// set: replace it ([`HubConfig::replace_stored_policies`](crate::HubConfig)).
    #[error("the policy set in the store does not load: {0}")]
    StoredPolicies(String),
    /// The grant book in the store does not decode (another version, or a record that breaks
    /// the book's rules). The hub does not start with an empty book instead.
    #[error("the grant book in the store does not load: {0}")]
    StoredGrants(String),
    /// A message held for approval in the store does not decode. The hub does not start
    /// without it.
    #[error("a held message in the store does not load: {0}")]
    StoredHeld(String),
    /// The audit log could not be opened or created: its keys, its directory, or a log that
    /// does not verify (the error names the position). The hub does not run unaudited.
    #[error("audit log: {0}")]
    Audit(String),
    /// A durable channel could not be opened: its stream or a consumer's state is damaged,
    /// or its directory can't be used. The hub does not start without it.
    #[error("durable channels: {0}")]
    Durable(String),
    /// The data keys (what the hub encrypts at rest with) could not be made, stored or
    /// unwrapped.
    #[error("data keys: {0}")]
    Keys(String),
    /// The CA could not be loaded (its certificates, its keys, or the stored state of an
    /// intermediate rollover), or a rollover step failed.
    #[error("ca: {0}")]
    Ca(String),
    /// The initial policy set ([`HubConfig::policies`](crate::HubConfig)) does not load.
    #[error("the initial policy set does not load: {0}")]
    InitialPolicies(String),
    /// A revocation list is not newer than the one in force.
    #[error("revocation list version {got} is not newer than version {held} in force")]
    StaleRevocations {
        /// The version in force.
        held: u64,
        /// The version offered.
        got: u64,
    },
    /// The hub stopped, but not cleanly: the audit log or a durable channel had failed
    /// (while running or at its last seal or save), or a writer panicked. What each failed
    /// part refused since its failure was refused to its senders, never acknowledged.
    #[error("the hub stopped with failures: {}", .0.join("; "))]
    Shutdown(Vec<String>),
}
