//! The hub's TLS: two rustls server configurations chosen by SNI, and the hub's own
//! certificate.
//!
//! - The main configuration requires a client X509-SVID ([`SvidClientVerifier`]).
//! - The enrollment configuration, chosen only when the ClientHello names
//!   [`enroll_server_name`](crate::enroll_server_name), asks for no client certificate; a
//!   connection made with it serves nothing but enrollment.
//!
//! Both are TLS 1.3 only with the aws-lc-rs provider, offer ALPN `h2`, and present the hub's
//! X509-SVID (`spiffe://TD/agent/system/hub`, leaf and intermediate). The hub's TLS key is an
//! in-memory P-256 key made at start (not a CA key); its certificate is re-issued by the CA at
//! half its lifetime and swapped in without a restart.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::SystemTime;

use entente_ca::Ca;
use entente_types::Principal;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::HubError;
use crate::verifier::SvidClientVerifier;

/// The server configurations of a hub.
#[derive(Debug, Clone)]
pub(crate) struct TlsConfigs {
    pub(crate) mtls: Arc<ServerConfig>,
    pub(crate) enroll: Arc<ServerConfig>,
    pub(crate) enroll_name: String,
}

/// Which configuration a connection was accepted with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Listener {
    /// Mutual TLS: the client presented a verified X509-SVID.
    Mtls,
    /// Enrollment: no client certificate.
    Enroll,
}

/// Serves the hub's current certificate; [`replace`](Self::replace) swaps it.
#[derive(Debug)]
pub(crate) struct HubCertResolver {
    current: RwLock<Arc<CertifiedKey>>,
}

/// The crypto provider of every hub and client configuration: aws-lc-rs.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

// === impl TlsConfigs ===

impl TlsConfigs {
    pub(crate) fn new(
        verifier: Arc<SvidClientVerifier>,
        resolver: Arc<HubCertResolver>,
        enroll_name: String,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, HubError> {
        let tls = |e: rustls::Error| HubError::Tls(e.to_string());
        let mut mtls = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls)?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(resolver.clone());
        mtls.alpn_protocols = vec![b"h2".to_vec()];
        let mut enroll = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls)?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
        enroll.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            mtls: Arc::new(mtls),
            enroll: Arc::new(enroll),
            enroll_name,
        })
    }

    /// The configuration for a ClientHello naming `server_name`.
    pub(crate) fn select(&self, server_name: Option<&str>) -> (Listener, Arc<ServerConfig>) {
        match server_name {
            Some(name) if name.eq_ignore_ascii_case(&self.enroll_name) => {
                (Listener::Enroll, self.enroll.clone())
            }
            _ => (Listener::Mtls, self.mtls.clone()),
        }
    }
}

// === impl HubCertResolver ===

impl HubCertResolver {
    pub(crate) fn new(key: Arc<CertifiedKey>) -> Self {
        Self {
            current: RwLock::new(key),
        }
    }

    pub(crate) fn replace(&self, key: Arc<CertifiedKey>) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = key;
    }
}

impl ResolvesServerCert for HubCertResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

// === hub certificate ===

/// Makes a fresh P-256 key and has the CA issue an X509-SVID for `hub` to it. Returns the key
/// with its chain (leaf, intermediate) and when the certificate expires.
pub(crate) fn issue_hub_cert(
    ca: &Ca,
    hub: &Principal,
    provider: &CryptoProvider,
    now: SystemTime,
) -> Result<(Arc<CertifiedKey>, SystemTime), HubError> {
    let cert_error = |e: &dyn std::fmt::Display| HubError::Certificate(e.to_string());
    let key =
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| cert_error(&e))?;
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .map_err(|e| cert_error(&e))?;
    let svid = ca
        .issue_svid(csr.der(), hub, now)
        .map_err(|e| cert_error(&e))?;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing_key = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| cert_error(&e))?;
    Ok((
        Arc::new(CertifiedKey::new(svid.chain_der, signing_key)),
        svid.not_after,
    ))
}
