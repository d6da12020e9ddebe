//! Entente's built-in certificate authority (DESIGN.md §3.1).
//!
//! - [`Ca`]: a root and an intermediate CA, ECDSA P-256, whose private keys live only in a
//!   [`KeyStore`](entente_keystore::KeyStore). It issues X509-SVIDs from CSRs
//!   ([`Ca::issue_svid`]), signs key bundles ([`Ca::sign_key_bundle`]) and revocation lists
//!   ([`Ca::sign_revocations`]). Certificates are built by rcgen, which asks the key store for
//!   every signature and never sees a private key.
//! - [`TrustBundle`]: the CA certificates a relying party trusts. It verifies SVID chains with
//!   rustls-webpki ([`TrustBundle::verify_svid`]) and is the [`BundleAuthority`] that key
//!   bundles and revocation lists verify against.
//! - [`JoinTokens`]: one-time enrollment secrets bound to an agent or human ID; only their
//!   SHA-256 is stored.
//! - [`Revocations`] and [`VerifiedRevocationList`]: the CA's list of revoked serials and
//!   principals, and the signed form every hub and SDK checks.
//!
//! Every function that depends on the time takes `now`; nothing here reads the clock.
//!
//! ```
//! use std::{sync::Arc, time::SystemTime};
//!
//! use entente_ca::{Ca, CaOptions};
//! use entente_keystore::local::{Argon2Params, LocalKeyStore, Unlock};
//! use entente_types::{AgentId, Principal, TrustDomain};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! let unlock = Unlock::passphrase("correct horse battery staple");
//! let keystore = LocalKeyStore::create(
//!     &dir.path().join("keys"),
//!     &unlock,
//!     Argon2Params::danger_fast_for_tests(),
//! )?;
//! let td = TrustDomain::new("example.org")?;
//! let now = SystemTime::now();
//! let ca = Ca::init(Arc::new(keystore), &td, CaOptions::default(), now)?;
//!
//! // The agent makes a key pair and a CSR; the names it asks for are ignored.
//! let agent_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
//! let csr = rcgen::CertificateParams::default().serialize_request(&agent_key)?;
//!
//! let principal = Principal::from(AgentId::new(&td, "research", "summarizer")?);
//! let svid = ca.issue_svid(csr.der(), &principal, now)?;
//!
//! let verified = ca.trust_bundle().verify_svid(&svid.chain_der, now, None)?;
//! assert_eq!(verified.principal(), &principal);
//! # Ok(())
//! # }
//! ```
//!
//! [`BundleAuthority`]: entente_crypto::BundleAuthority

#![forbid(unsafe_code)]

mod ca;
mod clock;
mod csr;
mod pem;
mod revocation;
mod signer;
mod token;
mod trust;

pub use ca::{
    Ca, CaError, CaOptions, CaPem, INTERMEDIATE_KEY, IntermediateInfo, IntermediateRole,
    IssueError, IssuedSvid, ROOT_KEY,
};
pub use revocation::{RevocationError, Revocations, VerifiedRevocationList};
pub use token::{JoinToken, JoinTokens, RESERVED_SEGMENT, TOKEN_PREFIX, TokenError, TokenInfo};
pub use trust::{SvidError, TrustBundle, TrustBundleError, VerifiedSvid};
