//! The hub's own names: its SPIFFE ID and the TLS server names clients use.
//!
//! An X509-SVID carries only a URI SAN, so the server name a client connects to is not checked
//! against the certificate; it only selects the TLS configuration (SNI). Clients verify the hub
//! by its SPIFFE ID instead ([`client_tls`](crate::client_tls)).

use entente_types::{AgentId, IdError, TrustDomain};

/// Segment of the hub's agent ID. Enrollment must refuse join tokens for this segment, so that
/// no agent can hold a certificate naming the hub.
pub const HUB_SEGMENT: &str = entente_ca::RESERVED_SEGMENT;

/// Name of the hub's agent ID.
pub const HUB_NAME: &str = "hub";

/// The hub's SPIFFE ID in `trust_domain`: `spiffe://<trust domain>/agent/system/hub`.
///
/// [`Ca::issue_svid`](entente_ca::Ca::issue_svid) issues certificates for principals only, so
/// the hub is an agent of the reserved segment [`HUB_SEGMENT`]. Client certificates naming it
/// are refused by the hub.
pub fn hub_id(trust_domain: &TrustDomain) -> Result<AgentId, IdError> {
    AgentId::new(trust_domain, HUB_SEGMENT, HUB_NAME)
}

/// The server name (SNI) of the hub's mutual-TLS service: `hub.<trust domain>`.
pub fn hub_server_name(trust_domain: &TrustDomain) -> String {
    format!("hub.{trust_domain}")
}

/// The server name (SNI) under which the hub accepts connections without a client
/// certificate, for enrollment only: `enroll.<trust domain>`.
pub fn enroll_server_name(trust_domain: &TrustDomain) -> String {
    format!("enroll.{trust_domain}")
}
