//! Errors of starting and operating the hub.

use std::io;
use std::net::SocketAddr;

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
    /// A revocation list is not newer than the one in force.
    #[error("revocation list version {got} is not newer than version {held} in force")]
    StaleRevocations {
        /// The version in force.
        held: u64,
        /// The version offered.
        got: u64,
    },
}
