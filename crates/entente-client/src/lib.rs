//! Entente's Rust SDK.
//!
//! - [`Identity`]: an enrolled principal's credentials — its X509-SVID chain and TLS key, its
//!   message keys, its CA-signed key bundle and the trust bundle — checked for consistency when
//!   made or loaded, and kept in an identity directory (private files 0600, written atomically).
#![forbid(unsafe_code)]

mod identity;

pub use identity::{IDENTITY_VERSION, Identity, IdentityError};
